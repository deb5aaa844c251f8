/**
 * `mcp-observatory ui`: a small web server over PostgreSQL (and, for live alert transitions, the
 * alerts topic). It serves the pages (plain HTML, ES modules and CSS from ui/public, no build
 * step), uPlot from its package, and a JSON API whose every query is parameterised (./queries.ts).
 * Loopback by default; with a password, every request needs HTTP basic authentication.
 *
 * @module
 */
import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import fastifyStatic from "@fastify/static";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type pg from "pg";

import type { AlertEvent } from "../avro/generated.js";
import { parseDuration } from "../cli/config.js";
import {
  endpointOptionsOf,
  parseUiConfig,
  readSecret,
  redactSecrets,
  rememberSecret,
  type UiConfig,
  type UiConfigInput,
} from "../config/index.js";
import { localUrl, type OpsLogger } from "../ops/index.js";
import { subscribeAlerts, type AlertSubscription } from "../processor/subscribe.js";
import { openPool } from "../sink/writer.js";
import { pipelineHealth } from "./pipeline.js";
import { alertsView, fleetView, serviceView, traceView } from "./queries.js";

/** Variables of the password, when not given as options. */
export const UI_PASSWORD_ENV = "MCPO_UI_PASSWORD";
export const UI_PASSWORD_FILE_ENV = "MCPO_UI_PASSWORD_FILE";

/** Options of {@link UiServer}: the `ui` settings, connection settings and a logger. */
export type UiOptions = UiConfigInput & { readonly logger?: OpsLogger };

/** Where the pages are: next to this file in the sources, ui/public of the package when built. */
export function publicDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const beside = join(here, "public");
  return existsSync(beside) ? beside : join(here, "..", "..", "ui", "public");
}

/** uPlot's files, resolved from wherever the package manager put it. */
function vendorFiles(): Readonly<Record<string, string>> {
  const require = createRequire(import.meta.url);
  return {
    "uPlot.esm.js": require.resolve("uplot/dist/uPlot.esm.js"),
    "uPlot.min.css": require.resolve("uplot/dist/uPlot.min.css"),
  };
}

const MAX_RANGE_MS = 31 * 24 * 3600 * 1000;

/** A duration query parameter (`6h`, `5m`), within bounds, else the default. */
export function durationParam(
  raw: unknown,
  fallback: number,
  name: string,
  min = 1000,
  max = MAX_RANGE_MS,
): number {
  if (raw === undefined || raw === "") return fallback;
  const days = typeof raw === "string" ? /^\s*(\d+)\s*d\s*$/.exec(raw) : null;
  const value = days?.[1] ? Number(days[1]) * 86_400_000 : parseDuration(raw);
  if (value === undefined || !Number.isFinite(value) || value < min || value > max)
    throw new BadRequest(
      `${name}: expected a duration such as 30m, 6h or 7d (got ${JSON.stringify(raw)})`,
    );
  return value;
}

class BadRequest extends Error {}

const sha256 = (bytes: Buffer): Buffer => createHash("sha256").update(bytes).digest();

/** The web UI's server. */
export class UiServer {
  readonly config: UiConfig;
  private readonly logger: OpsLogger;
  private readonly credentials: Buffer | undefined;
  private readonly app: FastifyInstance;
  private pool: pg.Pool | undefined;
  private subscription: AlertSubscription | undefined;
  private readonly streams = new Set<FastifyReply>();
  private transitions = 0;

  /** @throws {ConfigError} naming the setting that is invalid. */
  constructor(options: UiOptions = {}, env: NodeJS.ProcessEnv = process.env) {
    const { logger, ...settings } = options;
    this.config = parseUiConfig(settings);
    this.logger = logger ?? {
      info: () => undefined,
      warn: () => undefined,
      error: () => undefined,
    };
    const given = (option: string | undefined, variable: string, key: string) => {
      const value = option ?? env[variable];
      return value !== undefined && value !== "" ? { value, key } : undefined;
    };
    const secret = readSecret(
      given(this.config.password, UI_PASSWORD_ENV, `password (${UI_PASSWORD_ENV}, ui.password)`),
      given(
        this.config.passwordFile,
        UI_PASSWORD_FILE_ENV,
        `passwordFile (${UI_PASSWORD_FILE_ENV}, ui.passwordFile)`,
      ),
    );
    if (secret) rememberSecret(secret.bytes.toString("utf8"));
    // Compared as digests: equal lengths, constant time, whatever was sent.
    this.credentials =
      secret && sha256(Buffer.concat([Buffer.from(`${this.config.user}:`, "utf8"), secret.bytes]));
    // On stop every connection is closed, the live streams' (which a page would hold open) too.
    this.app = Fastify({ logger: false, forceCloseConnections: true });
    this.routes();
  }

  /** The address the pages are served at, once started. */
  get url(): string {
    const bound = this.app.server.address();
    if (typeof bound !== "object" || bound === null) throw new Error("the UI is not started");
    return localUrl(bound.address, bound.port, "/");
  }

  /** Alert transitions pushed to pages so far. */
  get pushed(): number {
    return this.transitions;
  }

  private authorized(request: FastifyRequest): boolean {
    if (!this.credentials) return true;
    const header = request.headers.authorization ?? "";
    const match = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header);
    if (!match?.[1]) return false;
    return timingSafeEqual(sha256(Buffer.from(match[1], "base64")), this.credentials);
  }

  private db(): pg.Pool {
    if (!this.pool) throw new Error("the UI is not started");
    return this.pool;
  }

  private routes(): void {
    const app = this.app;
    app.addHook("onRequest", async (request, reply) => {
      if (this.authorized(request)) return;
      await reply
        .code(401)
        .header("www-authenticate", 'Basic realm="mcp-observatory", charset="UTF-8"')
        .send({ error: "authentication required" });
    });
    app.addHook("onSend", async (_request, reply, payload) => {
      reply.header("x-content-type-options", "nosniff");
      reply.header("referrer-policy", "no-referrer");
      reply.header(
        "content-security-policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'",
      );
      return payload;
    });
    app.setErrorHandler(async (error, _request, reply) => {
      if (error instanceof BadRequest) return reply.code(400).send({ error: error.message });
      this.logger.error("request failed", { error: redactSecrets(String(error)) });
      return reply.code(500).send({ error: "the request failed; see the server's log" });
    });
    void app.register(fastifyStatic, { root: publicDir(), prefix: "/", index: "index.html" });
    const vendor = vendorFiles();
    for (const [name, path] of Object.entries(vendor))
      app.get(`/vendor/${name}`, async (_request, reply) =>
        reply.sendFile(path.slice(dirname(path).length + 1), dirname(path)),
      );

    app.get("/api/fleet", async (request) => {
      const query = request.query as Record<string, string | undefined>;
      return fleetView(this.db(), durationParam(query.range, 3600_000, "range"));
    });
    app.get("/api/service/:service", async (request, reply) => {
      const { service } = request.params as { service: string };
      const query = request.query as Record<string, string | undefined>;
      const rangeMs = durationParam(query.range, 6 * 3600_000, "range");
      const bucketMs = durationParam(query.bucket, Math.max(1000, rangeMs / 120), "bucket");
      if (rangeMs / bucketMs > 5000)
        throw new BadRequest("bucket: at most 5000 buckets in the range; choose a larger bucket");
      const view = await serviceView(this.db(), service, rangeMs, bucketMs);
      if (!view) return reply.code(404).send({ error: `no rollups for service ${service}` });
      return view;
    });
    app.get("/api/trace/:id", async (request, reply) => {
      const { id } = request.params as { id: string };
      if (!/^[0-9a-f]{1,64}$/i.test(id)) throw new BadRequest("id: expected a trace or span id");
      const view = await traceView(this.db(), id.toLowerCase());
      if (view.spans.length === 0) return reply.code(404).send({ error: `no spans for ${id}` });
      return view;
    });
    app.get("/api/alerts", async (request) => {
      const query = request.query as Record<string, string | undefined>;
      const pick = (value: string | undefined) => (value ? value : undefined);
      return alertsView(this.db(), {
        ...(pick(query.service) ? { service: query.service } : {}),
        ...(pick(query.rule) ? { rule: query.rule } : {}),
        ...(pick(query.state) ? { state: query.state } : {}),
      });
    });
    app.get("/api/pipeline", async () => ({
      endpoints: await pipelineHealth(this.config.metricsUrl),
    }));
    app.get("/api/alerts/stream", (request, reply) => {
      reply.hijack();
      reply.raw.writeHead(200, {
        "content-type": "text/event-stream",
        "cache-control": "no-store",
        connection: "keep-alive",
        "x-content-type-options": "nosniff",
      });
      reply.raw.write(`: live ${this.subscription ? "on" : "off"}\n\n`);
      this.streams.add(reply);
      request.raw.on("close", () => this.streams.delete(reply));
    });
  }

  private push(alert: AlertEvent): void {
    const data = JSON.stringify({
      alertId: alert.alert_id,
      service: alert.service,
      rule: alert.rule,
      metric: alert.metric,
      state: alert.state,
      threshold: alert.threshold,
      observedValue: alert.observed_value,
      emittedAt: Math.floor(alert.emitted_at / 1000),
    });
    this.transitions++;
    for (const stream of this.streams) stream.raw.write(`event: alert\ndata: ${data}\n\n`);
  }

  /** Opens the pool, subscribes to the alerts topic (with liveAlerts) and listens. */
  async start(): Promise<void> {
    const connection = this.config.connection;
    this.pool = openPool(connection.databaseUrl, {
      max: 4,
      onLost: (error) => {
        this.logger.warn("a database connection was lost", { error: error.message });
      },
    });
    if (this.config.liveAlerts)
      try {
        this.subscription = await subscribeAlerts(
          {
            // A group of its own: every UI sees every transition from now on.
            groupId: `mcpo-ui-${randomUUID().slice(0, 8)}`,
            fromBeginning: false,
            ...endpointOptionsOf(connection),
            onError: (error) => {
              this.logger.warn("live alerts", { error: redactSecrets(error.message) });
            },
          },
          (alert) => {
            this.push(alert);
          },
        );
      } catch (error) {
        this.logger.warn("live alerts are off: the alerts topic could not be read", {
          error: redactSecrets(error instanceof Error ? error.message : String(error)),
        });
      }
    await this.app.listen({ host: this.config.host, port: this.config.port });
    this.logger.info("web UI listening", { url: this.url, auth: this.credentials !== undefined });
  }

  /** Ends the live streams, stops listening, unsubscribes and closes the pool. */
  async stop(): Promise<void> {
    for (const stream of this.streams) stream.raw.end();
    this.streams.clear();
    await this.app.close();
    await this.subscription?.stop();
    this.subscription = undefined;
    await this.pool?.end();
    this.pool = undefined;
  }
}
