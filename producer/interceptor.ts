/**
 * `instrument()` and the `MCPInterceptor`: builds immutable ModelCallEvents from what the host
 * reports, counts them in this replica's rolling metrics and alert state machine (the same core,
 * rules and alert transitions as the processor), and hands them to the exporter. Fails open: nothing inside the interceptor throws
 * into the host or changes its results; failures go to the injected logger and are counted.
 */
import { redactingLogger } from "../config/errors.js";
import { spanEndMs, wallClockMs } from "./clock.js";
import { randomUUID, type KeyObject } from "node:crypto";
import { hostname } from "node:os";
import { performance } from "node:perf_hooks";

import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import {
  MODEL_CALL_EVENT_SCHEMA,
  type ModelCallEvent,
  type TokenSource,
} from "../avro/generated.js";
import { fieldLimits } from "../avro/validate.js";
import { ConfigError } from "../config/index.js";
import { MICROS_PER_MILLI, parseMetricsConfig } from "../metrics/index.js";
import {
  keyedDigest,
  recordedIdentifier,
  resolveContentHashKey,
  resolveIdentifierPolicy,
  type IdentifierPolicy,
} from "./content-hash.js";
import type { EventExporter, FlushResult } from "./exporters/types.js";
import { LocalMetrics } from "./local-metrics.js";
import { stderrLogger, type Logger } from "./logger.js";
import { checkUsage, PriceTable, type UsageDetails } from "./pricing.js";
import { countTokens, countTokensIfLoaded } from "./tokens.js";
import { runWithTraceContext, startSpanContext, type TraceContext } from "./trace.js";
import type {
  SpanInput,
  InstrumentOptions,
  InterceptorCounters,
  MetricsSnapshot,
  ModelCallInput,
} from "./types.js";

/**
 * Where an event recorded elsewhere comes from: its service and replica, and its id (a span sent
 * again gets the same id, so consumers count it once).
 */
export interface EventOrigin {
  readonly service: string;
  readonly serviceInstance: string;
  readonly eventId: string;
}

interface Tokens {
  readonly prompt: number | null;
  readonly completion: number | null;
  readonly source: TokenSource;
  /** The reported cache and audio parts of the counts (none when estimated). */
  readonly details?: UsageDetails;
}

const INT_MAX = 2 ** 31 - 1;

/** What a value cut to a limit ends with (within the limit). */
export const TRUNCATION_MARKER = "…[truncated]";
const MARKER_BYTES = Buffer.byteLength(TRUNCATION_MARKER, "utf8");
const NUL = "\u0000";
/** What a NUL character in a string becomes: PostgreSQL's text cannot hold U+0000. */
const NUL_REPLACEMENT = "\uFFFD";

/** A limit the contract's ModelCallEvent schema sets (its `.avsc` attributes). */
function limit(
  field: string,
  which: "maxLength" | "maxEntries" | "maxKeyLength" | "maxValueLength",
): number {
  const value = fieldLimits(MODEL_CALL_EVENT_SCHEMA, field)[which];
  if (value === undefined) throw new Error(`ModelCallEvent.${field} has no ${which}`);
  return value;
}

/** Most UTF-16 code units of a name (service, model, tool name …): the contract's. */
const NAME_MAX = {
  service: limit("service", "maxLength"),
  serviceInstance: limit("service_instance", "maxLength"),
  provider: limit("provider", "maxLength"),
  model: limit("model", "maxLength"),
  toolName: limit("tool_name", "maxLength"),
  mcpMethod: limit("mcp_method", "maxLength"),
  errorType: limit("error_type", "maxLength"),
} as const;
const ATTRIBUTES_MAX = {
  entries: limit("attributes", "maxEntries"),
  key: limit("attributes", "maxKeyLength"),
  value: limit("attributes", "maxValueLength"),
} as const;

/** Default {@link InstrumentOptions.maxEventBytes}: below Kafka's default 1 MB message limit. */
const DEFAULT_MAX_EVENT_BYTES = 900_000;
const MIN_MAX_EVENT_BYTES = 4096;
/**
 * Bytes an encoded event takes besides its strings' UTF-8, at most: the wire header (5), numbers
 * (varints of at most 10 bytes), doubles, flags, enum and union indexes, the two digests and
 * the map's block counts come to about 210. Each string adds its length prefix ({@link
 * STRING_PREFIX_BYTES}).
 */
const FIXED_EVENT_BYTES = 256;
const STRING_PREFIX_BYTES = 5;

/**
 * `text` within `max` UTF-16 code units: when longer, cut to end with {@link TRUNCATION_MARKER}
 * at exactly `max` units or one less (a surrogate pair is never split).
 */
export function truncateText(text: string, max: number): string {
  if (text.length <= max) return text;
  if (max < TRUNCATION_MARKER.length) return TRUNCATION_MARKER.slice(0, max);
  let end = max - TRUNCATION_MARKER.length;
  const last = text.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--;
  return text.slice(0, end) + TRUNCATION_MARKER;
}

/**
 * `text` within `maxBytes` bytes of UTF-8 (its UTF-8 size given as `bytes`): when larger, cut at
 * a character boundary to end with {@link TRUNCATION_MARKER} (empty when not even that fits).
 */
function truncateUtf8(text: string, bytes: number, maxBytes: number): string {
  if (bytes <= maxBytes) return text;
  if (maxBytes < MARKER_BYTES) return "";
  const encoded = Buffer.from(text, "utf8");
  let end = maxBytes - MARKER_BYTES;
  // encoded[end] is the first byte left out: a continuation byte means a character is cut.
  while (end > 0 && ((encoded[end] ?? 0) & 0xc0) === 0x80) end--;
  return encoded.toString("utf8", 0, end) + TRUNCATION_MARKER;
}

/** UTF-8 bytes of a nullable string, at most: 3 per UTF-16 code unit. */
function maxUtf8(text: string | null): number {
  return text === null ? 0 : text.length * 3;
}

function utf8(text: string | null): number {
  return text === null ? 0 : Buffer.byteLength(text, "utf8");
}

/**
 * An upper bound of an event's encoded size with `bytesOf` as the size of each string: the
 * fixed allowance, then every string with its length prefix. `content` false leaves the prompt
 * and response text out.
 */
function eventBytes(
  event: ModelCallEvent,
  bytesOf: (text: string | null) => number,
  content: boolean,
): number {
  let total =
    FIXED_EVENT_BYTES +
    bytesOf(event.event_id) +
    bytesOf(event.trace_id) +
    bytesOf(event.span_id) +
    bytesOf(event.parent_span_id) +
    bytesOf(event.service) +
    bytesOf(event.service_instance) +
    bytesOf(event.provider) +
    bytesOf(event.model) +
    bytesOf(event.tool_name) +
    bytesOf(event.mcp_method) +
    bytesOf(event.error_type) +
    13 * STRING_PREFIX_BYTES;
  if (content) total += bytesOf(event.prompt_text) + bytesOf(event.response_text);
  for (const key in event.attributes)
    total += bytesOf(key) + bytesOf(event.attributes[key] ?? "") + 2 * STRING_PREFIX_BYTES;
  return total;
}

/** How many NUL characters `text` holds. */
function countNuls(text: string): number {
  let count = 0;
  for (let at = text.indexOf(NUL); at !== -1; at = text.indexOf(NUL, at + 1)) count++;
  return count;
}

/** Formats integer nano-USD as a decimal string of USD with 9 decimals. */
function nanoToUsd(nano: bigint): string {
  return `${nano / 1_000_000_000n}.${String(nano % 1_000_000_000n).padStart(9, "0")}`;
}

function toMs(value: Date | number | undefined): number | undefined {
  if (value === undefined) return undefined;
  return value instanceof Date ? value.getTime() : value;
}

/**
 * A name from the options, within the contract: no NUL, at most `max` characters.
 *
 * @throws {ConfigError} naming the option.
 */
function checkedName(key: string, value: string, max: number): string {
  if (value.includes(NUL)) throw new ConfigError(key, "must not contain a NUL character (U+0000)");
  if (value.length > max)
    throw new ConfigError(
      key,
      `at most ${max} characters (UTF-16 code units) are allowed (got ${value.length})`,
    );
  return value;
}

function errorTypeOf(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return typeof code === "string" || typeof code === "number" ? String(code) : error.name;
  }
  if (typeof error === "string" && error !== "") return error;
  return "Error";
}

/**
 * Instruments one MCP server (one replica). See {@link InstrumentOptions}.
 *
 * @throws {ConfigError} naming the option that is invalid.
 */
export function instrument(options: InstrumentOptions): MCPInterceptor {
  return new MCPInterceptor(options);
}

export class MCPInterceptor {
  readonly serviceName: string;
  readonly serviceInstance: string;
  private readonly exporter: EventExporter | undefined;
  private readonly local: LocalMetrics;
  private readonly prices: PriceTable;
  private readonly estimate: boolean;
  private readonly captureContent: boolean;
  private readonly redact: ((text: string, part: "prompt" | "response") => string) | undefined;
  private readonly logger: Logger;
  /** The content hash key (HMAC-SHA-256); undefined: prompts and responses are not hashed. */
  private readonly contentHashKey: KeyObject | undefined;
  private readonly identifiers: IdentifierPolicy;
  private readonly now: () => number;
  private readonly maxEventBytes: number;
  private shutdownPromise: Promise<FlushResult> | undefined;
  private readonly pending = new Set<Promise<unknown>>();
  private counters = {
    recorded: 0,
    tokensEstimated: 0,
    unpriced: 0,
    invalidInputs: 0,
    contentTruncated: 0,
    oversized: 0,
    internalErrors: 0,
  };

  /** @throws {ConfigError} naming the option that is invalid. */
  constructor(options: InstrumentOptions) {
    if (typeof options.serviceName !== "string" || options.serviceName.trim() === "")
      throw new ConfigError("serviceName", "a non-empty service name is required");
    this.serviceName = checkedName("serviceName", options.serviceName, NAME_MAX.service);
    const pid = `-${process.pid}`;
    this.serviceInstance =
      options.serviceInstance === undefined
        ? `${hostname().slice(0, NAME_MAX.serviceInstance - pid.length)}${pid}`
        : checkedName("serviceInstance", options.serviceInstance, NAME_MAX.serviceInstance);
    if (this.serviceInstance === "") throw new ConfigError("serviceInstance", "must not be empty");
    const maxEventBytes = options.maxEventBytes ?? DEFAULT_MAX_EVENT_BYTES;
    if (!Number.isInteger(maxEventBytes) || maxEventBytes < MIN_MAX_EVENT_BYTES)
      throw new ConfigError(
        "maxEventBytes",
        `expected an integer of at least ${MIN_MAX_EVENT_BYTES} bytes (got ${maxEventBytes})`,
      );
    this.maxEventBytes = maxEventBytes;
    const rollingWindowMs = options.rollingWindowMs ?? 300_000;
    const bucketMs = options.bucketMs ?? 10_000;
    if (!Number.isInteger(rollingWindowMs) || rollingWindowMs <= 0)
      throw new ConfigError(
        "rollingWindowMs",
        `expected a positive integer of ms (got ${rollingWindowMs})`,
      );
    if (!Number.isInteger(bucketMs) || bucketMs <= 0 || bucketMs > rollingWindowMs)
      throw new ConfigError(
        "bucketMs",
        `expected a positive integer of ms, at most rollingWindowMs (got ${bucketMs})`,
      );
    const metrics = parseMetricsConfig(options.metrics ?? {}, "metrics");
    try {
      this.prices = new PriceTable(options.prices ?? {});
    } catch (error) {
      throw new ConfigError("prices", (error as Error).message);
    }
    this.local = new LocalMetrics(
      this.serviceName,
      metrics.thresholds,
      metrics.rules,
      rollingWindowMs,
      bucketMs,
    );
    this.exporter = options.exporter;
    this.estimate = options.estimateTokens ?? true;
    this.captureContent = options.captureContent ?? false;
    this.redact = options.redact;
    this.logger = redactingLogger(options.logger ?? stderrLogger);
    this.contentHashKey = resolveContentHashKey(options.contentHashKey, process.env);
    this.identifiers = resolveIdentifierPolicy(
      options.identifiers,
      this.contentHashKey !== undefined,
    );
    this.now = options.now ?? wallClockMs;
    if (this.captureContent && this.redact === undefined)
      try {
        this.logger.warn(
          "captureContent is on without a redact hook: prompt and response text are shipped as they are, secrets and personal data included; pass redact to remove them",
          { service: this.serviceName },
        );
      } catch {
        // The logger itself failed; the setting stands.
      }
  }

  /**
   * Records one model call. Resolves with the event (immutable), or undefined when the
   * interceptor itself failed (reported to the logger; the host is never affected).
   */
  async interceptModelCall(input: ModelCallInput): Promise<ModelCallEvent | undefined> {
    try {
      const context = startSpanContext(input.parent);
      return await this.recordCall(input, context);
    } catch (error) {
      this.internalError("interceptModelCall failed", error);
      return undefined;
    }
  }

  /**
   * Runs and times a model call: `fn` runs inside the call's span (so nested work is its child),
   * its result and error pass through unchanged, and `describe` may add what only the result
   * knows (usage, response, confidence …).
   */
  async traceModelCall<T>(
    meta: Omit<ModelCallInput, "startTime" | "endTime" | "durationMs">,
    fn: (span: TraceContext) => Promise<T> | T,
    describe?: (result: T) => Partial<ModelCallInput>,
  ): Promise<T> {
    let context: TraceContext | undefined;
    const startWall = this.now();
    const started = performance.now();
    try {
      context = startSpanContext(meta.parent);
    } catch (error) {
      this.internalError("traceModelCall could not start a span", error);
    }
    if (!context) return fn(startSpanContext());
    const span = context;
    let result: T;
    try {
      result = await runWithTraceContext(span, () => fn(span));
    } catch (error) {
      this.recordTimed({ ...meta, error, status: "error" }, span, startWall, started);
      throw error;
    }
    let extra: Partial<ModelCallInput> = {};
    try {
      extra = describe?.(result) ?? {};
    } catch (error) {
      this.internalError("traceModelCall describe() failed", error);
    }
    this.recordTimed({ ...meta, ...extra }, span, startWall, started);
    return result;
  }

  /**
   * Records a span whose context was allocated already (MCP requests). Never throws.
   *
   * @internal used by the MCP SDK integration.
   */
  recordSpan(input: SpanInput, context: TraceContext): void {
    const pending = this.recordCall(input, context).catch((error: unknown) => {
      this.internalError("recording a span failed", error);
      return undefined;
    });
    // Recording can wait on the tokenizer's first load; flush and shutdown wait for it.
    this.pending.add(pending);
    void pending.finally(() => this.pending.delete(pending));
  }

  /** This replica's metrics over the rolling window. */
  getMetricsSnapshot(): MetricsSnapshot {
    const rollup = this.local.rollup(this.now() * MICROS_PER_MILLI);
    const { counts, rates } = rollup;
    return {
      service: this.serviceName,
      window_ms: this.local.rollingWindowMs,
      calls: counts.calls,
      avg_cost_usd: rates.avg_cost_usd,
      fallback_rate: rates.fallback_rate,
      retry_rate: rates.retry_rate,
      low_confidence_rate: rates.low_confidence_rate,
      confidence_gate_block_rate: rates.confidence_gate_block_rate,
      prompt_diff_violation_rate: rates.prompt_diff_violation_rate,
      shadow_disagreement_rate: rates.shadow_disagreement_rate,
      deterministic_fallback_rate: rates.deterministic_fallback_rate,
      high_risk_path_rate: rates.high_risk_path_rate,
      golden_financial_failure_rate: rates.golden_financial_failure_rate,
      error_rate: rates.error_rate,
      latency_p50_ms: rates.latency_p50_ms,
      latency_p95_ms: rates.latency_p95_ms,
      latency_p99_ms: rates.latency_p99_ms,
      // Numbers (JSON-friendly): a replica's rolling window is exact below 2^53 tokens.
      prompt_tokens: Number(counts.prompt_tokens),
      completion_tokens: Number(counts.completion_tokens),
      total_cost_usd: nanoToUsd(counts.cost_nano_usd),
      unpriced_calls: counts.calls - counts.calls_with_cost,
    };
  }

  /**
   * Keys of the alert rules whose incidents are firing for this replica's service, in rule order:
   * the processor's state machine over this replica's calls (tumbling windows of its size and
   * grace, closed by the wall clock, the AlertTracker's incidents), with the open windows judged
   * as they stand.
   */
  getActiveAlerts(): string[] {
    return this.local.activeAlerts(Math.round(this.now() * MICROS_PER_MILLI));
  }

  /** The interceptor's counters and its exporter's (sent, dropped, retried, buffered, tooLarge). */
  getCounters(): InterceptorCounters {
    const exporter = this.exporter?.stats() ?? { sent: 0, dropped: 0, retried: 0, buffered: 0 };
    return { ...this.counters, ...exporter, tooLarge: exporter.tooLarge ?? 0 };
  }

  /** Finishes spans still being recorded, then delivers what the exporter buffers. */
  async flush(timeoutMs?: number): Promise<FlushResult> {
    await this.settlePending();
    return (await this.exporter?.flush(timeoutMs)) ?? { complete: true, remaining: 0 };
  }

  /** Finishes spans still being recorded, then flushes and closes the exporter; once. */
  shutdown(timeoutMs?: number): Promise<FlushResult> {
    this.shutdownPromise ??= this.settlePending().then(
      async () => (await this.exporter?.shutdown(timeoutMs)) ?? { complete: true, remaining: 0 },
    );
    return this.shutdownPromise;
  }

  private async settlePending(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
  }

  private recordTimed(
    input: SpanInput,
    context: TraceContext,
    startWall: number,
    started: number,
  ): void {
    this.recordSpan(
      { ...input, startTime: startWall, endTime: spanEndMs(startWall, started, this.now) },
      context,
    );
  }

  /**
   * The event of a span recorded elsewhere (an OpenTelemetry span sent to `mcp-observatory
   * ingest`): its own ids, times, service and instance (`origin`), built with the same checks,
   * limits, token handling and pricing as this interceptor's own calls. Neither counted in the
   * local snapshot nor exported: the caller publishes it. `reason` says why no event came out
   * (it breaks the contract, or is over `maxEventBytes` even without its text).
   *
   * @internal used by the OTLP ingest (otlp/ingest.ts).
   */
  async buildForeignEvent(
    input: SpanInput,
    context: TraceContext,
    origin: EventOrigin,
  ): Promise<{ readonly event: ModelCallEvent } | { readonly reason: string }> {
    const built = await this.build(input, context, origin);
    if ("reason" in built) return built;
    const bytes = eventBytes(built.event, utf8, true);
    if (bytes > this.maxEventBytes)
      return {
        reason: `the event takes ${bytes} bytes, over the maximum event size of ${this.maxEventBytes} even without its text`,
      };
    return built;
  }

  /** Tokens (reported, else estimated), then the event, checked against the contract. */
  private async build(
    input: SpanInput,
    context: TraceContext,
    origin?: EventOrigin,
  ): Promise<{ readonly event: ModelCallEvent } | { readonly reason: string }> {
    let tokens = this.reportedTokens(input);
    const hasText = input.prompt !== undefined || input.response !== undefined;
    if (!tokens && this.estimate && input.model !== undefined && hasText) {
      tokens = this.estimatedTokensIfLoaded(input) ?? (await this.estimatedTokens(input));
      this.counters.tokensEstimated++;
    }
    const event = this.buildEvent(
      input,
      context,
      tokens ?? { prompt: null, completion: null, source: "none" },
      origin,
    );
    const issue = MODEL_CALL_EVENT.check(event);
    return issue ? { reason: `${issue.path} ${issue.reason}` } : { event };
  }

  private async recordCall(
    input: SpanInput,
    context: TraceContext,
  ): Promise<ModelCallEvent | undefined> {
    const built = await this.build(input, context);
    if ("reason" in built) {
      this.internalError("built an event that breaks the contract", new Error(built.reason));
      return undefined;
    }
    const event = built.event;
    this.local.record(event);
    this.counters.recorded++;
    if (this.exporter && this.fits(event)) {
      try {
        const pending = this.exporter.export(event);
        if (pending) await pending;
      } catch (error) {
        this.internalError("the exporter failed", error);
      }
    }
    return event;
  }

  /**
   * Whether the event fits {@link maxEventBytes}; one that does not (even without its text, which
   * {@link fitContent} cut already) is counted and reported, not exported.
   */
  private fits(event: ModelCallEvent): boolean {
    if (eventBytes(event, maxUtf8, true) <= this.maxEventBytes) return true;
    const bytes = eventBytes(event, utf8, true);
    if (bytes <= this.maxEventBytes) return true;
    this.counters.oversized++;
    try {
      this.logger.warn("event over the maximum event size even without its text; not exported", {
        service: this.serviceName,
        bytes,
        maxEventBytes: this.maxEventBytes,
      });
    } catch {
      // The logger itself failed; the count stays.
    }
    return false;
  }

  /**
   * Cuts the prompt and response text (with the marker) so the event fits {@link maxEventBytes},
   * sharing the room: a text that needs less than half keeps all of it, the other gets the rest.
   * Leaves the text alone when the event does not fit even without it ({@link fits} says so).
   */
  private fitContent(event: {
    -readonly [K in keyof ModelCallEvent]: ModelCallEvent[K];
  }): void {
    if (event.prompt_text === null && event.response_text === null) return;
    if (eventBytes(event, maxUtf8, true) <= this.maxEventBytes) return;
    const room = this.maxEventBytes - eventBytes(event, utf8, false);
    if (room < 0) return;
    const prompt = utf8(event.prompt_text);
    const response = utf8(event.response_text);
    if (prompt + response <= room) return;
    const half = Math.floor(room / 2);
    const promptRoom = response <= half ? room - response : prompt <= half ? prompt : half;
    const responseRoom = room - Math.min(prompt, promptRoom);
    if (event.prompt_text !== null)
      event.prompt_text = truncateUtf8(event.prompt_text, prompt, promptRoom);
    if (event.response_text !== null)
      event.response_text = truncateUtf8(event.response_text, response, responseRoom);
    this.counters.contentTruncated++;
  }

  private reportedTokens(input: SpanInput): Tokens | undefined {
    const usage = input.usage;
    if (!usage) return undefined;
    const prompt = this.count(usage.promptTokens ?? usage.inputTokens);
    const completion = this.count(usage.completionTokens ?? usage.outputTokens);
    if (prompt === null && completion === null) return undefined;
    const details: UsageDetails = {
      cacheReadTokens: this.count(usage.cacheReadTokens ?? usage.cacheReadInputTokens),
      cacheWriteTokens: this.count(usage.cacheWriteTokens ?? usage.cacheCreationInputTokens),
      inputAudioTokens: this.count(usage.inputAudioTokens),
      outputAudioTokens: this.count(usage.outputAudioTokens),
    };
    return { prompt, completion, source: "reported", details };
  }

  private estimatedTokensIfLoaded(input: SpanInput): Tokens | undefined {
    const model = input.model ?? "";
    const prompt = input.prompt === undefined ? null : countTokensIfLoaded(model, input.prompt);
    const completion =
      input.response === undefined ? null : countTokensIfLoaded(model, input.response);
    if (prompt === undefined || completion === undefined) return undefined;
    return { prompt, completion, source: "estimated" };
  }

  private async estimatedTokens(input: SpanInput): Promise<Tokens> {
    const model = input.model ?? "";
    const prompt = input.prompt === undefined ? null : await countTokens(model, input.prompt);
    const completion =
      input.response === undefined ? null : await countTokens(model, input.response);
    return { prompt, completion, source: "estimated" };
  }

  private buildEvent(
    input: SpanInput,
    context: TraceContext,
    tokens: Tokens,
    origin?: EventOrigin,
  ): ModelCallEvent {
    const notes: Record<string, string> = {};
    /** Records what was wrong with an input, bounded like any attribute value; counted. */
    const note = (field: string, text: string): void => {
      this.counters.invalidInputs++;
      notes[`mcpo.invalid.${field}`] = truncateText(
        text.includes(NUL) ? text.split(NUL).join(NUL_REPLACEMENT) : text,
        ATTRIBUTES_MAX.value,
      );
    };
    const invalid = (field: string, value: unknown): null => {
      note(field, String(value));
      return null;
    };
    /** The text within the contract: NULs replaced, cut to `max` with the marker; counted. */
    const clean = (field: string, text: string, max: number): string => {
      const tooLong = text.length > max;
      if (!tooLong && !text.includes(NUL)) return text;
      const what: string[] = [];
      let result = text;
      const nuls = countNuls(result);
      if (nuls > 0) {
        result = result.split(NUL).join(NUL_REPLACEMENT);
        what.push(`${nuls} NUL character(s) replaced by U+FFFD`);
      }
      if (tooLong) {
        what.push(`truncated from ${text.length} to ${max} characters (UTF-16 code units)`);
        result = truncateText(result, max);
      }
      note(field, what.join("; "));
      return result;
    };
    const name = (value: string | undefined, field: keyof typeof NAME_MAX): string | null =>
      value === undefined ? null : clean(field, value, NAME_MAX[field]);
    const unit = (value: number | null | undefined, field: string): number | null => {
      if (value === undefined || value === null) return null;
      return typeof value === "number" && value >= 0 && value <= 1 ? value : invalid(field, value);
    };
    // Typed as unknown: JavaScript callers can pass anything.
    const flag = (value: unknown, field: string): boolean | null => {
      if (value === undefined || value === null) return null;
      return typeof value === "boolean" ? value : invalid(field, value);
    };

    const attributes = this.cleanAttributes(input.attributes);

    const nowMs = this.now();
    let endMs = toMs(input.endTime) ?? nowMs;
    if (!Number.isFinite(endMs)) {
      invalid("endTime", endMs);
      endMs = nowMs;
    }
    let startMs = toMs(input.startTime) ?? endMs - (input.durationMs ?? 0);
    if (!Number.isFinite(startMs) || startMs > endMs) {
      invalid("startTime", startMs);
      startMs = endMs;
    }
    let retries = input.retries ?? 0;
    if (!Number.isInteger(retries) || retries < 0 || retries > INT_MAX) {
      invalid("retries", retries);
      retries = 0;
    }

    const hasError = input.error !== undefined || input.errorType !== undefined;
    const status = input.status ?? (hasError ? "error" : "ok");
    const model = name(input.model, "model");
    const provider = name(input.provider, "provider");
    let details = tokens.details ?? {};
    try {
      checkUsage(tokens.prompt, tokens.completion, details);
    } catch (error) {
      // Parts that do not fit their counts: left out (the counts alone are priced), and noted.
      note("usage", (error as Error).message);
      details = {};
    }
    // Priced as at the call's end: the table's prices may change over time.
    const cost =
      model === null || tokens.prompt === null || tokens.completion === null
        ? null
        : this.prices.cost(model, input.provider, tokens.prompt, tokens.completion, details, endMs);
    if (
      model !== null &&
      cost === null &&
      this.prices.lookup(model, input.provider, endMs) === undefined
    )
      this.counters.unpriced++;

    const prompt = input.prompt;
    const response = input.response;
    const text = (value: string | undefined, part: "prompt" | "response"): string | null => {
      if (!this.captureContent || value === undefined) return null;
      const redacted = this.redacted(value, part);
      // Content has no length limit of its own (the event's size bounds it): only NULs go.
      return redacted === null ? null : clean(part, redacted, Number.POSITIVE_INFINITY);
    };
    const event: { -readonly [K in keyof ModelCallEvent]: ModelCallEvent[K] } = {
      event_id: origin?.eventId ?? randomUUID(),
      trace_id: context.traceId,
      span_id: context.spanId,
      parent_span_id: context.parentSpanId,
      kind: input.kind ?? "model_call",
      service:
        origin === undefined
          ? this.serviceName
          : clean("service", origin.service, NAME_MAX.service),
      service_instance:
        origin === undefined
          ? this.serviceInstance
          : clean("serviceInstance", origin.serviceInstance, NAME_MAX.serviceInstance),
      provider,
      model,
      tool_name: name(input.toolName, "toolName"),
      mcp_method: name(attributes.get("mcp.method.name"), "mcpMethod"),
      start_time: Math.round(startMs * MICROS_PER_MILLI),
      end_time: Math.round(endMs * MICROS_PER_MILLI),
      prompt_tokens: tokens.prompt,
      completion_tokens: tokens.completion,
      cache_read_tokens: details.cacheReadTokens ?? null,
      cache_write_tokens: details.cacheWriteTokens ?? null,
      input_audio_tokens: details.inputAudioTokens ?? null,
      output_audio_tokens: details.outputAudioTokens ?? null,
      token_source: tokens.source,
      cost_nano_usd: cost,
      retries,
      fallback_used: input.fallbackUsed === true,
      confidence: unit(input.confidence, "confidence"),
      confidence_gate_threshold: unit(input.confidenceGateThreshold, "confidenceGateThreshold"),
      high_risk_path: input.highRiskPath === true,
      deterministic_fallback_triggered: input.deterministicFallbackTriggered === true,
      prompt_diff_score: unit(input.promptDiffScore, "promptDiffScore"),
      shadow_agreement: flag(input.shadowAgreement, "shadowAgreement"),
      is_golden_financial_scenario: input.isGoldenFinancialScenario === true,
      golden_scenario_passed: flag(input.goldenScenarioPassed, "goldenScenarioPassed"),
      status,
      error_type:
        status === "error" ? name(input.errorType ?? errorTypeOf(input.error), "errorType") : null,
      prompt_size_bytes: prompt === undefined ? null : Buffer.byteLength(prompt, "utf8"),
      response_size_bytes: response === undefined ? null : Buffer.byteLength(response, "utf8"),
      prompt_sha256: this.digest(prompt),
      response_sha256: this.digest(response),
      prompt_text: text(prompt, "prompt"),
      response_text: text(response, "response"),
      attributes: Object.freeze(this.withNotes(attributes, notes)),
    };
    this.fitContent(event);
    return Object.freeze(event);
  }

  /**
   * The host's attributes within the contract's limits: keys and values cut to their maximum
   * length with the marker, NULs replaced, values that are not strings (JavaScript callers)
   * turned into strings. Each such attribute counts as an invalid input; `summary` says what was
   * done (for the `mcpo.invalid.attributes` note).
   */
  private cleanAttributes(
    input: Readonly<Record<string, unknown>> | undefined,
  ): Map<string, string> & { summary?: string } {
    const attributes: Map<string, string> & { summary?: string } = new Map();
    let keys = 0;
    let values = 0;
    for (const [rawKey, rawValue] of Object.entries(input ?? {})) {
      let key = rawKey;
      if (key.length > ATTRIBUTES_MAX.key || key.includes(NUL)) {
        key = truncateText(key.split(NUL).join(NUL_REPLACEMENT), ATTRIBUTES_MAX.key);
        keys++;
      }
      let value = typeof rawValue === "string" ? rawValue : String(rawValue);
      if (value !== rawValue || value.length > ATTRIBUTES_MAX.value || value.includes(NUL)) {
        value = truncateText(value.split(NUL).join(NUL_REPLACEMENT), ATTRIBUTES_MAX.value);
        values++;
      }
      attributes.set(key, value);
    }
    this.counters.invalidInputs += keys + values;
    const what: string[] = [];
    if (keys > 0)
      what.push(`${keys} key(s) cut to ${ATTRIBUTES_MAX.key} characters or with NULs replaced`);
    if (values > 0)
      what.push(
        `${values} value(s) made strings, cut to ${ATTRIBUTES_MAX.value} characters or with NULs replaced`,
      );
    if (what.length > 0) attributes.summary = what.join("; ");
    return attributes;
  }

  /**
   * The event's attributes: the host's, then the notes on invalid inputs (`mcpo.invalid.*`),
   * within the contract's number of entries: the host's last attributes are left out to make
   * room (counted, and said in `mcpo.invalid.attributes`).
   */
  private withNotes(
    attributes: Map<string, string> & { summary?: string },
    notes: Readonly<Record<string, string>>,
  ): Record<string, string> {
    const noteCount = Object.keys(notes).length;
    let summary = attributes.summary;
    let room = ATTRIBUTES_MAX.entries - noteCount - (summary === undefined ? 0 : 1);
    if (attributes.size > room && summary === undefined) room--;
    const leftOut = Math.max(0, attributes.size - room);
    if (leftOut > 0) {
      this.counters.invalidInputs++;
      const said = `${leftOut} attribute(s) over the limit of ${ATTRIBUTES_MAX.entries} left out`;
      summary = summary === undefined ? said : `${summary}; ${said}`;
    }
    const result: Record<string, string> = {};
    let kept = 0;
    for (const [key, value] of attributes) {
      if (kept++ >= room) break;
      result[key] = value;
    }
    Object.assign(result, notes);
    if (summary !== undefined)
      result["mcpo.invalid.attributes"] = truncateText(summary, ATTRIBUTES_MAX.value);
    return result;
  }

  /** A reported token count, or null (counted as invalid) when it is not a non-negative integer. */
  private count(value: number | undefined): number | null {
    if (value === undefined) return null;
    if (Number.isSafeInteger(value) && value >= 0) return value;
    this.counters.invalidInputs++;
    return null;
  }

  /** The keyed digest of a text, or null without a text or a content hash key. */
  private digest(text: string | undefined): Buffer | null {
    return text === undefined || this.contentHashKey === undefined
      ? null
      : keyedDigest(this.contentHashKey, text);
  }

  /**
   * An identifier the MCP integration sees (a session id, a resource URI) as the identifier
   * policy records it: itself, `hmac-sha256:` and its keyed digest, or undefined (left out).
   *
   * @internal used by the MCP SDK integration.
   */
  recordedIdentifier(value: string): string | undefined {
    return recordedIdentifier(this.identifiers, this.contentHashKey, value);
  }

  private redacted(text: string, part: "prompt" | "response"): string | null {
    if (!this.redact) return text;
    try {
      return this.redact(text, part);
    } catch (error) {
      // A failing redaction hook must not leak the text: ship nothing.
      this.internalError(`the redact hook failed on the ${part}; not shipped`, error);
      return null;
    }
  }

  /**
   * Counts and logs a failure inside the instrumentation; never throws.
   *
   * @internal used by the MCP SDK integration.
   */
  recordInternalError(message: string, error: unknown): void {
    this.internalError(message, error);
  }

  private internalError(message: string, error: unknown): void {
    this.counters.internalErrors++;
    try {
      this.logger.error(message, { error: error instanceof Error ? error.message : String(error) });
    } catch {
      // The logger itself failed; there is nowhere left to report to.
    }
  }
}
