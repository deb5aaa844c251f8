/**
 * `mcp-observatory export otlp`: a consumer-group member over model-calls that sends every event
 * as an OTLP span to any OTLP/HTTP endpoint (an OpenTelemetry Collector, Jaeger, Tempo, Langfuse,
 * Phoenix): `POST <endpoint>/v1/traces`, `Content-Type: application/x-protobuf`, plain or gzip,
 * with the semantic-convention names of ./semconv.ts (`exportRequestOf`).
 *
 * - **What is sent**: events only. The processor's control records (watermark ticks, progress)
 *   and the copies of events it forwards between partitions are skipped (a copy would send its
 *   span twice), as the sink skips them. A record that does not decode is skipped and counted, not
 *   dead-lettered: the processor already dead-letters every model-calls record that does not
 *   decode, and a second letter would double it.
 * - **Requests**: a consumer batch's events go in requests of at most `maxSpansPerRequest` spans
 *   and about `maxRequestBytes` bytes before compression (a larger single span goes alone).
 * - **Position**: the group's committed offset moves past a request's records only once the
 *   endpoint accepted the request (or refused it for good and its records are dead-lettered), so a
 *   restart resumes at the first record not delivered: at least once.
 * - **Answers**: 2xx delivered; a partial success's `rejected_spans` are counted and its message
 *   logged once per request, never retried (the endpoint said no). 408, 429, 5xx, network failures
 *   and timeouts are retried for as long as it takes, with the project's capped exponential backoff
 *   and full jitter (a `Retry-After` honoured), the partition paused with heartbeats: nothing is
 *   skipped. Any other status (400, 401, 413…) is final: the request's records go to the
 *   dead-letter topic (`OTLP_EXPORT_REJECTED`, the answer as the reason), and the position moves on.
 * - **Settings**: the endpoint, headers, compression and timeout fall back to the OpenTelemetry
 *   variables (`OTEL_EXPORTER_OTLP_TRACES_*`, then `OTEL_EXPORTER_OTLP_*`); header values are
 *   secrets, never logged.
 *
 * @module
 */
import { randomUUID } from "node:crypto";
import { gzipSync } from "node:zlib";

import { collectDefaultMetrics, Counter, Registry } from "prom-client";

import { readControl } from "../avro/control.js";
import type { ModelCallEvent } from "../avro/generated.js";
import {
  ConfigError,
  parseOtlpExportConfig,
  redactingLogger,
  rememberSecret,
  topicNames,
  type OtlpExportConfig,
  type OtlpExportConfigInput,
} from "../config/index.js";
import {
  kafkaSettingsOf,
  type BatchControl,
  type ConsumedBatch,
  type ConsumedRecord,
  type OutgoingRecord,
} from "../kafka/index.js";
import { DeliveryService, type DeliveryResult } from "../ops/delivery-service.js";
import { DeliveryError, HttpDestination, type HttpAnswer } from "../ops/http-destination.js";
import { pinoLogger, type OpsLogger } from "../ops/index.js";
import {
  deadLetterRecord,
  pipelineTopics,
  shellOptionsOf,
  Tally,
  type TopicSpec,
} from "../ops/service.js";
import { exportRequestOf } from "./semconv.js";
import { decodeTraceResponse, encodeTraceRequest } from "./wire.js";

/** The path of the trace export, appended to a base endpoint. */
export const OTLP_TRACES_PATH = "/v1/traces";

/** The OpenTelemetry variables read when no option gives the setting (signal-specific first). */
export const OTEL_ENV = Object.freeze({
  tracesEndpoint: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
  endpoint: "OTEL_EXPORTER_OTLP_ENDPOINT",
  tracesHeaders: "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
  headers: "OTEL_EXPORTER_OTLP_HEADERS",
  tracesCompression: "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
  compression: "OTEL_EXPORTER_OTLP_COMPRESSION",
  tracesTimeout: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
  timeout: "OTEL_EXPORTER_OTLP_TIMEOUT",
} as const);

/** The dead-letter code of records whose request the endpoint refused for good. */
export const OTLP_EXPORT_REJECTED = "OTLP_EXPORT_REJECTED";

/** Where and how the spans are sent, resolved from the options and the OpenTelemetry variables. */
export interface OtlpTarget {
  /** The full URL requests are POSTed to. */
  readonly url: string;
  /** Extra request headers (values are secrets). */
  readonly headers: Readonly<Record<string, string>>;
  readonly compression: "gzip" | "none";
  readonly timeoutMs: number;
}

/** A base endpoint with `/v1/traces` appended (as is when it already ends with it). */
export function tracesUrl(base: string): string {
  const trimmed = base.replace(/\/+$/, "");
  return trimmed.endsWith(OTLP_TRACES_PATH) ? trimmed : `${trimmed}${OTLP_TRACES_PATH}`;
}

function httpUrl(text: string, key: string): string {
  let url: URL;
  try {
    url = new URL(text.trim());
  } catch {
    throw new ConfigError(key, "expected an http(s) URL");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new ConfigError(key, `expected an http(s) URL (got the scheme ${url.protocol})`);
  return url.toString().replace(/\/+$/, url.pathname === "/" ? "" : "/");
}

/**
 * Headers from the OpenTelemetry format: `k=v,k2=v2`, values URL-encoded, blanks around entries
 * ignored. Messages name the setting and the entry's position, never a value.
 *
 * @throws {ConfigError} for an entry without `=`, an empty or invalid name, a value that does not
 *   URL-decode.
 */
export function parseOtlpHeaders(text: string, key: string): Record<string, string> {
  const headers: Record<string, string> = {};
  text.split(",").forEach((entry, i) => {
    if (entry.trim() === "") return;
    const at = entry.indexOf("=");
    const name = (at < 0 ? entry : entry.slice(0, at)).trim();
    if (at < 0 || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name))
      throw new ConfigError(
        key,
        `entry ${i + 1} is not name=value with a header name (expected k=v,k2=v2; values not shown)`,
      );
    let value: string;
    try {
      value = decodeURIComponent(entry.slice(at + 1).trim());
    } catch {
      throw new ConfigError(key, `the value of ${name} is not URL-encoded text (not shown)`);
    }
    if (/[\r\n\0]/.test(value))
      throw new ConfigError(key, `the value of ${name} holds a line break (not shown)`);
    headers[name.toLowerCase()] = value;
  });
  return headers;
}

/**
 * The target of a config: each setting from its option (flag, `MCPO_OTLP_*`, file), else the
 * traces-specific OpenTelemetry variable, else the generic one (the generic endpoint gets
 * `/v1/traces` appended, the traces one is used as is; so is an option's, unless it already ends
 * with the path). Header values are remembered as secrets (redacted wherever they would appear).
 *
 * @throws {ConfigError} naming the setting or variable: no endpoint, a bad URL, header list,
 *   compression or timeout.
 */
export function otlpTargetOf(
  config: Pick<OtlpExportConfig, "endpoint" | "headers" | "compression" | "timeoutMs">,
  env: NodeJS.ProcessEnv = process.env,
): OtlpTarget {
  const given = (name: string): string | undefined => {
    const value = env[name];
    return value === undefined || value.trim() === "" ? undefined : value;
  };
  let url: string;
  if (config.endpoint !== undefined) url = tracesUrl(httpUrl(config.endpoint, "endpoint"));
  else if (given(OTEL_ENV.tracesEndpoint) !== undefined)
    url = httpUrl(given(OTEL_ENV.tracesEndpoint) as string, OTEL_ENV.tracesEndpoint);
  else if (given(OTEL_ENV.endpoint) !== undefined)
    url = tracesUrl(httpUrl(given(OTEL_ENV.endpoint) as string, OTEL_ENV.endpoint));
  else
    throw new ConfigError(
      "endpoint",
      `give the OTLP endpoint: --endpoint (MCPO_OTLP_ENDPOINT, otlpExport.endpoint), ${OTEL_ENV.tracesEndpoint} or ${OTEL_ENV.endpoint}; e.g. http://127.0.0.1:4318`,
    );

  const headerSource =
    config.headers !== undefined
      ? { text: config.headers, key: "headers (MCPO_OTLP_HEADERS, otlpExport.headers)" }
      : given(OTEL_ENV.tracesHeaders) !== undefined
        ? { text: given(OTEL_ENV.tracesHeaders) as string, key: OTEL_ENV.tracesHeaders }
        : given(OTEL_ENV.headers) !== undefined
          ? { text: given(OTEL_ENV.headers) as string, key: OTEL_ENV.headers }
          : undefined;
  const headers =
    headerSource === undefined ? {} : parseOtlpHeaders(headerSource.text, headerSource.key);
  for (const value of Object.values(headers)) if (value !== "") rememberSecret(value);

  const compressionSource =
    config.compression !== undefined
      ? { text: config.compression, key: "compression" }
      : given(OTEL_ENV.tracesCompression) !== undefined
        ? { text: given(OTEL_ENV.tracesCompression) as string, key: OTEL_ENV.tracesCompression }
        : given(OTEL_ENV.compression) !== undefined
          ? { text: given(OTEL_ENV.compression) as string, key: OTEL_ENV.compression }
          : { text: "none", key: "compression" };
  const compression = compressionSource.text.trim().toLowerCase();
  if (compression !== "gzip" && compression !== "none")
    throw new ConfigError(
      compressionSource.key,
      `expected gzip or none (got ${JSON.stringify(compressionSource.text)})`,
    );

  let timeoutMs = config.timeoutMs ?? 10_000;
  if (config.timeoutMs === undefined) {
    const key =
      given(OTEL_ENV.tracesTimeout) !== undefined
        ? OTEL_ENV.tracesTimeout
        : given(OTEL_ENV.timeout) !== undefined
          ? OTEL_ENV.timeout
          : undefined;
    if (key !== undefined) {
      const text = (given(key) as string).trim();
      if (!/^\d+$/.test(text) || Number(text) < 1 || !Number.isSafeInteger(Number(text)))
        throw new ConfigError(
          key,
          `expected a positive integer, milliseconds (got ${JSON.stringify(text)})`,
        );
      timeoutMs = Number(text);
    }
  }
  return Object.freeze({ url, headers: Object.freeze(headers), compression, timeoutMs });
}

/**
 * Events in requests of at most `maxSpans` spans and about `maxBytes` bytes (each span's size
 * as a one-span request, so a little over the real size; a span larger than `maxBytes` goes
 * alone), in their order.
 */
export function chunkEvents<T extends { readonly event: ModelCallEvent }>(
  items: readonly T[],
  maxSpans: number,
  maxBytes: number,
): T[][] {
  const chunks: T[][] = [];
  let current: T[] = [];
  let bytes = 0;
  for (const item of items) {
    const size = encodeTraceRequest(exportRequestOf([item.event])).length;
    if (current.length > 0 && (current.length >= maxSpans || bytes + size > maxBytes)) {
      chunks.push(current);
      current = [];
      bytes = 0;
    }
    current.push(item);
    bytes += size;
  }
  if (current.length > 0) chunks.push(current);
  return chunks;
}

/** Settings of {@link OtlpExporter}: the `otlpExport` schema's keys, the connection, a logger. */
export type OtlpExporterOptions = OtlpExportConfigInput & { readonly logger?: OpsLogger };

/** Counters since start (each also a Prometheus counter). */
export interface OtlpExportStats {
  /** Events read from model-calls (control records and copies not counted). */
  readonly received: number;
  /** Spans the endpoint accepted. */
  readonly sent: number;
  /** Spans the endpoint rejected in a partial success (not retried). */
  readonly rejected: number;
  /** Export requests made, every attempt. */
  readonly requests: number;
  /** Attempts that failed and were tried again. */
  readonly retries: number;
  /** Spans of requests the endpoint refused for good (dead-lettered). */
  readonly failed: number;
  /** Records not exported: control records, copies, records that do not decode. */
  readonly skipped: number;
  /** Records sent to the dead-letter topic. */
  readonly deadLettered: number;
}

/** The exporter's Prometheus metrics, `mcpo_otlp_export_*`. */
export class OtlpExportMetrics {
  readonly registry = new Registry();
  readonly received = new Counter({
    name: "mcpo_otlp_export_events_received_total",
    help: "Events read from model-calls to export",
    registers: [this.registry],
  });
  readonly sent = new Counter({
    name: "mcpo_otlp_export_spans_sent_total",
    help: "Spans the OTLP endpoint accepted",
    registers: [this.registry],
  });
  readonly rejected = new Counter({
    name: "mcpo_otlp_export_spans_rejected_total",
    help: "Spans the OTLP endpoint rejected in a partial success (not retried)",
    registers: [this.registry],
  });
  readonly requests = new Counter({
    name: "mcpo_otlp_export_requests_total",
    help: "Export requests made, every attempt, by answer (an HTTP status, network or timeout)",
    labelNames: ["code"],
    registers: [this.registry],
  });
  readonly retries = new Counter({
    name: "mcpo_otlp_export_retries_total",
    help: "Export attempts that failed (429, 5xx, 408, network, timeout) and were tried again",
    registers: [this.registry],
  });
  readonly failures = new Counter({
    name: "mcpo_otlp_export_failures_total",
    help: "Spans of requests the endpoint refused for good (4xx other than 408/429): dead-lettered",
    registers: [this.registry],
  });
  readonly skipped = new Counter({
    name: "mcpo_otlp_export_records_skipped_total",
    help: "model-calls records not exported, by reason: control (processor control records), copy (forwarded copies of events), or the decode error's code",
    labelNames: ["reason"],
    registers: [this.registry],
  });
  readonly deadLettered = new Counter({
    name: "mcpo_otlp_export_dead_lettered_total",
    help: "Records sent to the dead-letter topic, by code",
    labelNames: ["code"],
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "mcpo_otlp_export_" });
  }
}

/** An event to send and the record it came from. */
interface Item {
  readonly record: ConsumedRecord;
  readonly event: ModelCallEvent;
}

/** Sends the events of model-calls to an OTLP/HTTP endpoint (see the module's comment). */
export class OtlpExporter extends DeliveryService<OtlpExportStats> {
  readonly metrics: OtlpExportMetrics;
  readonly target: OtlpTarget;
  private readonly config: OtlpExportConfig;
  private readonly destination: HttpDestination<Uint8Array, "otlp">;
  private readonly count: {
    readonly received: Tally;
    readonly sent: Tally;
    readonly rejected: Tally;
    readonly requests: Tally;
    readonly retries: Tally;
    readonly failures: Tally;
    readonly skipped: Tally;
  };

  /** @throws {ConfigError} naming the setting or variable that is invalid or missing. */
  constructor(options: OtlpExporterOptions = {}, env: NodeJS.ProcessEnv = process.env) {
    const { logger: given, ...settings } = options;
    const config = parseOtlpExportConfig(settings);
    const target = otlpTargetOf(config, env);
    const connection = config.connection;
    const metrics = new OtlpExportMetrics();
    super(
      shellOptionsOf("otlp-export", config, {
        kafka: kafkaSettingsOf(connection, `mcpo-otlp-export-${randomUUID().slice(0, 8)}`),
        topics: topicNames(connection.topicPrefix),
        logger: redactingLogger(given ?? pinoLogger("otlp-export")),
        registry: metrics.registry,
      }),
      config,
      { deadLettered: metrics.deadLettered, stopReason: "the exporter is stopping" },
    );
    this.config = config;
    this.target = target;
    this.metrics = metrics;
    const fixed: Record<string, string> = {
      ...target.headers,
      "content-type": "application/x-protobuf",
      ...(target.compression === "gzip" ? { "content-encoding": "gzip" } : {}),
    };
    this.destination = new HttpDestination<Uint8Array, "otlp">(
      "otlp-endpoint",
      "otlp",
      target.url,
      target.timeoutMs,
      (body) => ({ body, headers: fixed }),
    );
    this.count = {
      received: new Tally(metrics.received),
      sent: new Tally(metrics.sent),
      rejected: new Tally(metrics.rejected),
      requests: new Tally(metrics.requests),
      retries: new Tally(metrics.retries),
      failures: new Tally(metrics.failures),
      skipped: new Tally(metrics.skipped),
    };
  }

  protected requiredTopics(): readonly TopicSpec[] {
    const all = pipelineTopics(
      this.topics,
      this.config.partitions,
      this.config.modelCallsRetentionMs,
    );
    return all.filter(
      (topic) => topic.name === this.topics.modelCalls || topic.name === this.topics.deadLetter,
    );
  }

  protected sourceTopic(): string {
    return this.topics.modelCalls;
  }

  protected override startedFields(): Record<string, unknown> {
    return {
      ...super.startedFields(),
      // The origin only: a path or query may hold a secret; header names, never their values.
      endpoint: this.destination.origin,
      headers: Object.keys(this.target.headers),
      compression: this.target.compression,
    };
  }

  stats(): OtlpExportStats {
    return {
      received: this.count.received.value,
      sent: this.count.sent.value,
      rejected: this.count.rejected.value,
      requests: this.count.requests.value,
      retries: this.count.retries.value,
      failed: this.count.failures.value,
      skipped: this.count.skipped.value,
      deadLettered: this.deadLettered.value,
    };
  }

  protected async onBatch(batch: ConsumedBatch, control: BatchControl): Promise<void> {
    const last = batch.records.at(-1);
    if (!last) return;
    const items: Item[] = [];
    for (const record of batch.records) {
      const kind = readControl(record.headers, record.value).type;
      if (kind !== "data") {
        // Ticks, progress and unknown control records are the processor's; a copy is an event
        // already exported from its own partition.
        this.count.skipped.inc(1, { reason: kind === "copy" ? "copy" : "control" });
        continue;
      }
      const decoded = await this.decodeWaiting(this.pipelineCodecs.events, record, control);
      if (decoded === undefined) return; // stopping: read again at the next start
      if (!decoded.ok) {
        this.count.skipped.inc(1, { reason: decoded.code });
        this.logger.warn("a model-calls record does not decode; not exported", {
          partition: record.partition,
          offset: record.offset,
          code: decoded.code,
          reason: decoded.reason,
        });
        continue;
      }
      this.count.received.inc();
      items.push({ record, event: decoded.value });
    }
    const chunks = chunkEvents(items, this.config.maxSpansPerRequest, this.config.maxRequestBytes);
    for (const chunk of chunks) {
      if (this.stopped(control)) return;
      const outcome = await this.deliver(chunk, control);
      if (outcome.kind === "stopped") return;
      if (outcome.kind === "refused" && !(await this.deadLetter(chunk, outcome.error, control)))
        return;
      // The position moves past these records only now: the endpoint has them (or refused them
      // for good and their dead letters are written).
      await this.commitPast(control, (chunk.at(-1) as Item).record.offset);
    }
    // The records after the last request's (control records, copies, undecodable records).
    if (this.stopped(control)) return;
    await this.commitPast(control, last.offset);
  }

  /** One request of a chunk's spans, retried while retriable until accepted or stopping. */
  private async deliver(
    chunk: readonly Item[],
    control: BatchControl,
  ): Promise<DeliveryResult<HttpAnswer>> {
    const encoded = encodeTraceRequest(exportRequestOf(chunk.map((item) => item.event)));
    const body = this.target.compression === "gzip" ? gzipSync(encoded) : encoded;
    const first = chunk[0]?.record;
    const result = await this.retryDelivery(
      control,
      async (attempt) => {
        try {
          const answer = await this.destination.send(body, attempt);
          this.count.requests.inc(1, { code: String(answer.status) });
          return answer;
        } catch (error) {
          this.count.requests.inc(1, { code: codeOf(error) });
          throw error;
        }
      },
      Number.POSITIVE_INFINITY,
      (error, attempt, waitMs) => {
        this.count.retries.inc();
        this.logger.warn("export request failed; retrying", {
          partition: first?.partition,
          offset: first?.offset,
          spans: chunk.length,
          attempt,
          error: error.message,
          waitMs: Math.round(waitMs),
        });
      },
    );
    // Attempts never run out here (only stopping ends them): the loop's end would be a bug.
    if (result.kind === "exhausted") throw result.error;
    if (result.kind === "done") this.accepted(chunk, result.value.body);
    return result;
  }

  /** Counts an accepted request's spans; a partial success's rejections logged once. */
  private accepted(chunk: readonly Item[], answer: Buffer): void {
    let rejected = 0;
    let message = "";
    if (answer.length > 0) {
      try {
        const partial = decodeTraceResponse(answer).partialSuccess;
        if (partial !== undefined) {
          rejected = Math.min(chunk.length, Math.max(0, Number(partial.rejectedSpans)));
          message = partial.errorMessage;
        }
      } catch (error) {
        this.logger.warn(
          "the endpoint's answer is not an OTLP export response; spans counted as sent",
          {
            error: error instanceof Error ? error.message : String(error),
          },
        );
      }
    }
    this.count.sent.inc(chunk.length - rejected);
    this.count.rejected.inc(rejected);
    if (rejected > 0 || message !== "")
      this.logger.warn("the endpoint rejected some spans (partial success; not retried)", {
        rejectedSpans: rejected,
        spans: chunk.length,
        message: message.slice(0, 1000),
      });
  }

  /** Dead-letters a refused request's records; false when stopping before they are written. */
  private async deadLetter(
    chunk: readonly Item[],
    error: DeliveryError,
    control: BatchControl,
  ): Promise<boolean> {
    const letters: OutgoingRecord[] = chunk.map((item) =>
      deadLetterRecord(item.record, OTLP_EXPORT_REJECTED, error.message, {
        headers: {
          "mcpo-otlp-endpoint": this.destination.origin,
          ...(error.status === undefined ? {} : { "mcpo-otlp-status": String(error.status) }),
        },
      }),
    );
    if (!(await this.sendDeadLetter(control, letters, OTLP_EXPORT_REJECTED))) return false;
    this.count.failures.inc(chunk.length);
    this.logger.warn("the endpoint refused an export request; its records are dead-lettered", {
      partition: chunk[0]?.record.partition,
      from: chunk[0]?.record.offset,
      to: chunk.at(-1)?.record.offset,
      spans: chunk.length,
      status: error.status,
      reason: error.message,
    });
    return true;
  }
}

/** The `code` label of a failed attempt: its HTTP status, `timeout` or `network`. */
function codeOf(error: unknown): string {
  if (error instanceof DeliveryError)
    return error.status !== undefined
      ? String(error.status)
      : error.code === "FORWARD_TIMEOUT"
        ? "timeout"
        : "network";
  return "error";
}
