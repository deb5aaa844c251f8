/**
 * Container images for machines with Docker: the testcontainers harness and `docker-compose.yml`
 * use these same images (a unit test checks the compose file against this list). The versions
 * match the local stack's (stack/pom.xml).
 */
export const IMAGES = Object.freeze({
  kafka: "apache/kafka:4.1.1",
  registry: "apicurio/apicurio-registry:3.3.3",
  postgres: "postgres:15-alpine",
} as const);
