# The mcp-observatory command line as an image: `docker build -t mcp-observatory .`, then
# `docker run --rm mcp-observatory <command>` (processor, sink, ingest, alerts forward, migrate, …).
# docker-compose.yml runs the pipeline's services from it.

# Build: every dependency, TypeScript compiled to dist/.
FROM node:20-bookworm AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build

# Run: production dependencies and the files the package ships, as the unprivileged node user.
FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY avro/*.avsc avro/*.md ./avro/
COPY schema ./schema
COPY stack/pom.xml ./stack/pom.xml
COPY ui/public ./ui/public
USER node
ENTRYPOINT ["node", "dist/cli/main.js"]
CMD ["--help"]
