/**
 * `mcp-observatory ingest`: an OTLP/HTTP trace receiver. `POST /v1/traces` takes an
 * `ExportTraceServiceRequest` as protobuf (`application/x-protobuf`) or OTLP/JSON
 * (`application/json`), plain or gzip (`Content-Encoding: gzip`); each span that follows the GenAI
 * or MCP semantic conventions becomes a ModelCallEvent (see ./semconv.ts) built by the same code
 * as the library's interceptor — its checks, limits, token handling and prices — and published to
 * model-calls, keyed by service. A request is answered 200 only once Kafka acknowledged its
 * events, so nothing a client was told is stored can be lost.
 *
 * Answers, as the OTLP/HTTP specification has them: 200, with a partial success (how many spans
 * were rejected and why, naming the first few) when some spans are not model calls or MCP requests
 * or hold impossible values; 400 for a body that cannot be decoded (the message says what and
 * where); 401 without the bearer token when one is configured; 404/405 for other paths and
 * methods; 408 for a request that does not arrive in time; 413 for a body over `maxBodyBytes`
 * (also after decompression); 415 for another content type or encoding; 429 (too many requests
 * at once) and 503 (Kafka did not acknowledge in `publishTimeoutMs`) with `Retry-After`. Error
 * bodies are a `google.rpc.Status` in the request's encoding.
 *
 * @module
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { timingSafeEqual } from "node:crypto";
import { gunzip } from "node:zlib";

import { collectDefaultMetrics, Counter, Registry } from "prom-client";

import type { AvroCodec } from "../avro/codec.js";
import type { ModelCallEvent } from "../avro/generated.js";
import {
  parseIngestConfig,
  readSecret,
  rememberSecret,
  topicNames,
  type IngestConfig,
  type IngestConfigInput,
} from "../config/index.js";
import {
  createRecordProducer,
  kafkaSettingsOf,
  type KafkaSettings,
  type RecordProducer,
} from "../kafka/index.js";
import {
  localUrl,
  serveMetrics,
  type Health,
  type MetricsServer,
  type OpsLogger,
} from "../ops/index.js";
import { ModelCallsTopic } from "../producer/exporters/kafka.js";
import { MCPInterceptor } from "../producer/interceptor.js";
import type { OtlpTraceResponse } from "./model.js";
import { spanToCall } from "./semconv.js";
import {
  decodeTraceRequest,
  encodeTraceResponse,
  OtlpDecodeError,
  traceRequestFromJson,
  traceResponseToJson,
} from "./wire.js";

/** The variables the bearer token is read from when no option gives it. */
export const INGEST_TOKEN_ENV = "MCPO_INGEST_TOKEN";
export const INGEST_TOKEN_FILE_ENV = "MCPO_INGEST_TOKEN_FILE";

/** The path of the trace export. */
export const TRACES_PATH = "/v1/traces";

/** How many rejection reasons a partial success names (the count covers them all). */
const REASONS_SHOWN = 5;

/** `grpc.Code`s of the error bodies. */
const RPC_CODE = {
  invalidArgument: 3,
  resourceExhausted: 8,
  unauthenticated: 16,
  unavailable: 14,
  unimplemented: 12,
} as const;

/** Settings of {@link OtlpIngest}: the `ingest` schema's keys, the connection, and a logger. */
export type IngestOptions = IngestConfigInput & { readonly logger?: OpsLogger };

/** Counters since start. */
export interface IngestStats {
  readonly requests: number;
  readonly accepted: number;
  readonly rejected: number;
  readonly failed: number;
}

type Encoding = "protobuf" | "json";

/** A request's failure, as its status, message and extra headers. */
class Refusal extends Error {
  constructor(
    readonly status: number,
    readonly rpcCode: number,
    message: string,
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
  }
}

/** The receiver's Prometheus metrics; each receiver has its own registry. */
class IngestMetrics {
  readonly registry = new Registry();
  readonly spans = new Counter({
    name: "mcpo_ingest_spans_total",
    help: "Spans received, by outcome: accepted (published), rejected (not mappable or invalid: partial success), failed (Kafka did not take them: the client retries)",
    labelNames: ["outcome"],
    registers: [this.registry],
  });
  readonly requests = new Counter({
    name: "mcpo_ingest_requests_total",
    help: "Export requests answered, by HTTP status",
    labelNames: ["code"],
    registers: [this.registry],
  });
  readonly bytes = new Counter({
    name: "mcpo_ingest_request_bytes_total",
    help: "Request body bytes received (as sent, before decompression)",
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "mcpo_ingest_" });
  }
}

/** A tiny `google.rpc.Status` (code, message) in the request's encoding. */
function statusBody(encoding: Encoding, code: number, message: string): Buffer {
  if (encoding === "json") return Buffer.from(JSON.stringify({ code, message }));
  const text = Buffer.from(message, "utf8");
  const parts: number[] = [0x08, code];
  const length: number[] = [];
  for (let rest = text.length; ; rest = Math.floor(rest / 128)) {
    if (rest < 128) {
      length.push(rest);
      break;
    }
    length.push((rest % 128) | 0x80);
  }
  return Buffer.concat([Buffer.from([...parts, 0x12, ...length]), text]);
}

function gunzipBounded(body: Buffer, max: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    gunzip(body, { maxOutputLength: max }, (error, result) => {
      if (!error) {
        resolve(result);
        return;
      }
      if ((error as NodeJS.ErrnoException).code === "ERR_BUFFER_TOO_LARGE")
        reject(
          new Refusal(413, RPC_CODE.resourceExhausted, `body over ${max} bytes once decompressed`),
        );
      else
        reject(
          new Refusal(
            400,
            RPC_CODE.invalidArgument,
            `gzip body cannot be decompressed: ${error.message}`,
          ),
        );
    });
  });
}

/** An OTLP/HTTP trace receiver publishing ModelCallEvents to model-calls. */
export class OtlpIngest {
  readonly config: IngestConfig;
  readonly topic: string;
  private readonly logger: OpsLogger;
  private readonly kafka: KafkaSettings;
  private readonly token: Buffer | undefined;
  private readonly builder: MCPInterceptor;
  private readonly metrics = new IngestMetrics();
  private server: Server | undefined;
  private metricsServer: MetricsServer | undefined;
  private producer: RecordProducer | undefined;
  private readonly output: ModelCallsTopic;
  private ready: Promise<void> | undefined;
  private inFlight = 0;
  private readonly handlers = new Set<Promise<void>>();
  private stopping: Promise<void> | undefined;
  private counts = { requests: 0, accepted: 0, rejected: 0, failed: 0 };

  /** @throws {ConfigError} naming the setting that is invalid. */
  constructor(options: IngestOptions = {}, env: NodeJS.ProcessEnv = process.env) {
    const { logger, ...settings } = options;
    this.config = parseIngestConfig(settings);
    this.logger = logger ?? {
      info: () => undefined,
      warn: () => undefined,
      error: () => undefined,
    };
    this.topic = topicNames(this.config.connection.topicPrefix).modelCalls;
    this.kafka = kafkaSettingsOf(this.config.connection, this.config.clientId);
    this.output = new ModelCallsTopic({
      kafka: this.kafka,
      topic: this.topic,
      partitions: this.config.partitions,
      retentionMs: this.config.modelCallsRetentionMs,
      autoCreateTopics: this.config.autoCreateTopics,
      registry: this.config.connection.schemaRegistry,
      autoRegisterSchemas: this.config.autoRegisterSchemas,
    });
    const given = (option: string | undefined, variable: string, key: string) => {
      const value = option ?? env[variable];
      return value !== undefined && value !== "" ? { value, key } : undefined;
    };
    const secret = readSecret(
      given(
        this.config.bearerToken,
        INGEST_TOKEN_ENV,
        `bearerToken (${INGEST_TOKEN_ENV}, ingest.bearerToken)`,
      ),
      given(
        this.config.bearerTokenFile,
        INGEST_TOKEN_FILE_ENV,
        `bearerTokenFile (${INGEST_TOKEN_FILE_ENV}, ingest.bearerTokenFile)`,
      ),
    );
    if (secret) rememberSecret(secret.bytes.toString("utf8"));
    this.token = secret?.bytes;
    // The library's event builder: the same checks, limits, token handling and price table.
    this.builder = new MCPInterceptor({
      serviceName: "mcp-observatory-ingest",
      captureContent: this.config.captureContent,
      logger: this.logger,
    });
  }

  /** The URL of the trace export as this host reaches it, once started. */
  get url(): string {
    const bound = this.server?.address();
    if (typeof bound !== "object" || bound === null) throw new Error("the receiver is not started");
    return localUrl(bound.address, bound.port, TRACES_PATH);
  }

  /** The port it listens on, once started. */
  get port(): number {
    const bound = this.server?.address();
    return typeof bound === "object" && bound !== null ? bound.port : this.config.port;
  }

  /** Where the Prometheus metrics are served, once started with a metrics port. */
  get metricsUrl(): string | undefined {
    return this.metricsServer?.url;
  }

  stats(): IngestStats {
    return { ...this.counts };
  }

  /** Alive until stopped; ready while listening. */
  health(): Health {
    const alive = this.stopping === undefined;
    return {
      alive,
      ready: alive && this.server?.listening === true,
      detail: {
        state: alive ? "running" : "stopping",
        kafkaReady: this.output.readyCodec !== undefined,
      },
    };
  }

  /**
   * Listens (and serves the metrics when a metrics port is set). Kafka and the registry are
   * readied now in the background; a request that comes while they are not answers 503.
   */
  async start(): Promise<void> {
    const timeout = this.config.requestTimeoutMs;
    const server = createServer(
      {
        // A request must arrive whole in time (else 408); checked at least every second.
        requestTimeout: timeout,
        headersTimeout: Math.min(timeout, 60_000),
        connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(timeout / 4))),
      },
      (request, response) => {
        const handled = this.handle(request, response).catch((error: unknown) => {
          this.logger.error("request failed", { error: (error as Error).message });
          if (!response.headersSent) response.writeHead(500).end();
        });
        this.handlers.add(handled);
        void handled.finally(() => this.handlers.delete(handled));
      },
    );
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.config.port, this.config.host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    this.server = server;
    if (this.config.metricsPort !== undefined) {
      this.metricsServer = await serveMetrics(
        this.metrics.registry,
        this.config.metricsPort,
        this.config.metricsHost,
        () => this.health(),
      );
      this.logger.info("metrics endpoint", { url: this.metricsServer.url });
    }
    this.ensureReady().catch((error: unknown) => {
      this.logger.warn("Kafka or the registry is not ready yet; requests answer 503 until it is", {
        error: (error as Error).message,
      });
    });
    this.logger.info("ingest started", {
      url: this.url,
      topic: this.topic,
      authentication: this.token === undefined ? "none" : "bearer token",
    });
  }

  /**
   * Stops taking requests, answers those in flight (their events acknowledged by Kafka or 503),
   * then disconnects; once.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const server = this.server;
      if (server) {
        const closed = new Promise<void>((resolve) => {
          server.close(() => {
            resolve();
          });
        });
        server.closeIdleConnections();
        await Promise.allSettled([...this.handlers]);
        server.closeAllConnections();
        await closed;
      }
      await this.producer?.disconnect().catch(() => undefined);
      await this.metricsServer?.close();
      await this.builder.shutdown();
      this.logger.info("ingest stopped", { ...this.counts });
    })();
    return this.stopping;
  }

  /** Connects the producer, provides the topic and registers the schema; shared, retried after a failure. */
  private ensureReady(): Promise<void> {
    this.ready ??= (async () => {
      this.producer ??= createRecordProducer(this.kafka);
      await this.producer.connect();
      await this.output.ready();
    })().catch((error: unknown) => {
      this.ready = undefined;
      const old = this.producer;
      this.producer = undefined;
      void old?.disconnect().catch(() => undefined);
      throw error;
    });
    return this.ready;
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const type = (request.headers["content-type"] ?? "").split(";")[0]?.trim().toLowerCase();
    const encoding: Encoding = type === "application/json" ? "json" : "protobuf";
    const answer = (status: number, body: Buffer, headers: Record<string, string> = {}): void => {
      this.metrics.requests.inc({ code: String(status) });
      this.counts.requests++;
      response
        .writeHead(status, {
          "content-type": encoding === "json" ? "application/json" : "application/x-protobuf",
          "content-length": String(body.length),
          ...headers,
        })
        .end(body);
    };
    const refuse = (refusal: Refusal): void => {
      // A body not read to its end: the connection is not reused.
      const headers: Record<string, string> = { ...refusal.headers };
      if (!request.complete) headers.connection = "close";
      answer(refusal.status, statusBody(encoding, refusal.rpcCode, refusal.message), headers);
      if (!request.complete) request.resume();
    };
    const path = (request.url ?? "").split("?")[0];
    if (path !== TRACES_PATH) {
      refuse(new Refusal(404, RPC_CODE.unimplemented, `no such path: use POST ${TRACES_PATH}`));
      return;
    }
    if (request.method !== "POST") {
      refuse(
        new Refusal(405, RPC_CODE.unimplemented, `${TRACES_PATH} takes POST`, { allow: "POST" }),
      );
      return;
    }
    if (this.token !== undefined && !this.authorized(request.headers.authorization)) {
      refuse(
        new Refusal(401, RPC_CODE.unauthenticated, "missing or wrong bearer token", {
          "www-authenticate": 'Bearer realm="mcp-observatory"',
        }),
      );
      return;
    }
    if (type !== "application/x-protobuf" && type !== "application/json") {
      refuse(
        new Refusal(
          415,
          RPC_CODE.invalidArgument,
          `unsupported content type ${JSON.stringify(type ?? "")}: send application/x-protobuf or application/json`,
        ),
      );
      return;
    }
    const contentEncoding = (request.headers["content-encoding"] ?? "identity")
      .trim()
      .toLowerCase();
    if (contentEncoding !== "identity" && contentEncoding !== "gzip") {
      refuse(
        new Refusal(
          415,
          RPC_CODE.invalidArgument,
          `unsupported content encoding ${JSON.stringify(contentEncoding)}: send gzip or none`,
        ),
      );
      return;
    }
    if (this.inFlight >= this.config.maxConcurrentRequests) {
      refuse(
        new Refusal(429, RPC_CODE.resourceExhausted, "too many requests at once; retry later", {
          "retry-after": this.retryAfter(),
        }),
      );
      return;
    }
    this.inFlight++;
    try {
      const raw = await this.readBody(request);
      const body =
        contentEncoding === "gzip" ? await gunzipBounded(raw, this.config.maxBodyBytes) : raw;
      let decoded;
      try {
        decoded =
          encoding === "json"
            ? traceRequestFromJson(body.toString("utf8"))
            : decodeTraceRequest(body);
      } catch (error) {
        if (error instanceof OtlpDecodeError)
          throw new Refusal(
            400,
            RPC_CODE.invalidArgument,
            `cannot decode the ${encoding === "json" ? "OTLP/JSON" : "OTLP protobuf"} body: ${error.message}`,
          );
        throw error;
      }
      const result = await this.ingest(decoded);
      answer(
        200,
        encoding === "json"
          ? Buffer.from(traceResponseToJson(result))
          : Buffer.from(encodeTraceResponse(result)),
      );
    } catch (error) {
      if (!(error instanceof Refusal)) throw error;
      refuse(error);
    } finally {
      this.inFlight--;
    }
  }

  private authorized(header: string | undefined): boolean {
    const token = this.token;
    if (token === undefined) return true;
    const match = /^Bearer\s+(.+)$/i.exec(header ?? "");
    if (!match) return false;
    const given = Buffer.from((match[1] as string).trim(), "utf8");
    return given.length === token.length && timingSafeEqual(given, token);
  }

  private retryAfter(): string {
    return String(Math.max(1, Math.ceil(this.config.retryAfterMs / 1000)));
  }

  /** The body, at most `maxBodyBytes` (else a 413 refusal, without reading the rest). */
  private readBody(request: IncomingMessage): Promise<Buffer> {
    const max = this.config.maxBodyBytes;
    const declared = Number(request.headers["content-length"]);
    if (Number.isFinite(declared) && declared > max)
      return Promise.reject(
        new Refusal(
          413,
          RPC_CODE.resourceExhausted,
          `body of ${declared} bytes, over the limit of ${max}`,
        ),
      );
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      const onData = (chunk: Buffer): void => {
        size += chunk.length;
        this.metrics.bytes.inc(chunk.length);
        if (size > max) {
          request.off("data", onData);
          reject(
            new Refusal(413, RPC_CODE.resourceExhausted, `body over the limit of ${max} bytes`),
          );
          return;
        }
        chunks.push(chunk);
      };
      request.on("data", onData);
      request.once("end", () => {
        if (size <= max) resolve(Buffer.concat(chunks, size));
      });
      request.once("error", reject);
      // The client went away (or the request timed out: 408) before its body was whole.
      request.once("close", () => {
        if (!request.complete)
          reject(new Refusal(400, RPC_CODE.invalidArgument, "request ended before its body"));
      });
    });
  }

  /** Maps, builds and publishes a request's spans; the partial success names the rejected ones. */
  private async ingest(request: ReturnType<typeof decodeTraceRequest>): Promise<OtlpTraceResponse> {
    const events: ModelCallEvent[] = [];
    const reasons: string[] = [];
    for (const resourceSpans of request.resourceSpans) {
      const resource = resourceSpans.resource?.attributes ?? [];
      for (const scoped of resourceSpans.scopeSpans)
        for (const span of scoped.spans) {
          const mapped = spanToCall(span, resource);
          if (!mapped.ok) {
            reasons.push(mapped.reason);
            continue;
          }
          const { input, context, origin } = mapped.call;
          const built = await this.builder.buildForeignEvent(input, context, origin);
          if ("reason" in built) reasons.push(`span ${context.spanId}: ${built.reason}`);
          else events.push(built.event);
        }
    }
    const refused = events.length > 0 ? await this.publish(events) : new Map<number, string>();
    for (const [index, why] of refused)
      reasons.push(`span ${events[index]?.span_id ?? "?"}: ${why}`);
    const accepted = events.length - refused.size;
    this.counts.accepted += accepted;
    this.counts.rejected += reasons.length;
    this.metrics.spans.inc({ outcome: "accepted" }, accepted);
    this.metrics.spans.inc({ outcome: "rejected" }, reasons.length);
    if (reasons.length === 0) return {};
    const shown = reasons.slice(0, REASONS_SHOWN).join("; ");
    const more = reasons.length - REASONS_SHOWN;
    return {
      partialSuccess: {
        rejectedSpans: BigInt(reasons.length),
        errorMessage: `${reasons.length} span(s) rejected: ${shown}${more > 0 ? `; and ${more} more` : ""}`,
      },
    };
  }

  /**
   * Publishes events and waits for Kafka's acknowledgement, at most `publishTimeoutMs` (else 503).
   * Resolves with the events the broker refused as too large even alone (by index, with why):
   * sending them again cannot help, so they are rejected spans, not a 503.
   */
  private async publish(events: readonly ModelCallEvent[]): Promise<Map<number, string>> {
    const refused = new Map<number, string>();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        reject(
          new Error(`no acknowledgement from Kafka within ${this.config.publishTimeoutMs} ms`),
        );
      }, this.config.publishTimeoutMs);
    });
    const send = (async () => {
      await this.ensureReady();
      const codec = this.output.readyCodec as AvroCodec<ModelCallEvent>;
      const records = events.map((event) => ({ key: event.service, value: codec.encode(event) }));
      await (this.producer as RecordProducer).send(this.topic, records, "gzip", {
        onTooLarge: (error) => {
          refused.set(
            error.index,
            `the broker refused its event as too large (${error.bytes} bytes)`,
          );
        },
      });
    })();
    // Settled either way: a send that outlives the deadline must not be an unhandled rejection.
    send.catch(() => undefined);
    try {
      await Promise.race([send, deadline]);
      return refused;
    } catch (error) {
      this.counts.failed += events.length;
      this.metrics.spans.inc({ outcome: "failed" }, events.length);
      this.logger.warn("events not published; answered 503", {
        events: events.length,
        error: (error as Error).message,
      });
      throw new Refusal(
        503,
        RPC_CODE.unavailable,
        `Kafka did not take the events (${(error as Error).message}); retry later`,
        { "retry-after": this.retryAfter() },
      );
    } finally {
      clearTimeout(timer);
    }
  }
}
