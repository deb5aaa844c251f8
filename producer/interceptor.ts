/**
 * `instrument()` and the `MCPInterceptor`: builds immutable ModelCallEvents from what the host
 * reports, counts them in this replica's rolling metrics and alert state machine (the same core,
 * rules and alert transitions as the processor), and hands them to the exporter. Fails open: nothing inside the interceptor throws
 * into the host or changes its results; failures go to the injected logger and are counted.
 */
import { spanEndMs, wallClockMs } from "./clock.js";
import { hash, randomUUID } from "node:crypto";
import { hostname } from "node:os";
import { performance } from "node:perf_hooks";

import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { ModelCallEvent, TokenSource } from "../avro/generated.js";
import { ConfigError } from "../config/index.js";
import { MICROS_PER_MILLI, parseMetricsConfig } from "../metrics/index.js";
import type { EventExporter, FlushResult } from "./exporters/types.js";
import { LocalMetrics } from "./local-metrics.js";
import { stderrLogger, type Logger } from "./logger.js";
import { PriceTable } from "./pricing.js";
import { countTokens, countTokensIfLoaded } from "./tokens.js";
import { runWithTraceContext, startSpanContext, type TraceContext } from "./trace.js";
import type {
  SpanInput,
  InstrumentOptions,
  InterceptorCounters,
  MetricsSnapshot,
  ModelCallInput,
} from "./types.js";

interface Tokens {
  readonly prompt: number | null;
  readonly completion: number | null;
  readonly source: TokenSource;
}

const INT_MAX = 2 ** 31 - 1;

/** Formats integer nano-USD as a decimal string of USD with 9 decimals. */
function nanoToUsd(nano: number): string {
  const whole = Math.floor(nano / 1e9);
  return `${whole}.${String(nano - whole * 1e9).padStart(9, "0")}`;
}

function toMs(value: Date | number | undefined): number | undefined {
  if (value === undefined) return undefined;
  return value instanceof Date ? value.getTime() : value;
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
  private readonly now: () => number;
  private shutdownPromise: Promise<FlushResult> | undefined;
  private readonly pending = new Set<Promise<unknown>>();
  private counters = {
    recorded: 0,
    tokensEstimated: 0,
    unpriced: 0,
    invalidInputs: 0,
    internalErrors: 0,
  };

  /** @throws {ConfigError} naming the option that is invalid. */
  constructor(options: InstrumentOptions) {
    if (typeof options.serviceName !== "string" || options.serviceName.trim() === "")
      throw new ConfigError("serviceName", "a non-empty service name is required");
    this.serviceName = options.serviceName;
    this.serviceInstance = options.serviceInstance ?? `${hostname()}-${process.pid}`;
    if (this.serviceInstance === "") throw new ConfigError("serviceInstance", "must not be empty");
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
    this.logger = options.logger ?? stderrLogger;
    this.now = options.now ?? wallClockMs;
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
      prompt_tokens: counts.prompt_tokens,
      completion_tokens: counts.completion_tokens,
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

  /** The interceptor's counters and its exporter's (sent, dropped, retried, buffered). */
  getCounters(): InterceptorCounters {
    const exporter = this.exporter?.stats() ?? { sent: 0, dropped: 0, retried: 0, buffered: 0 };
    return { ...this.counters, ...exporter };
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

  private async recordCall(
    input: SpanInput,
    context: TraceContext,
  ): Promise<ModelCallEvent | undefined> {
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
    );
    const issue = MODEL_CALL_EVENT.check(event);
    if (issue) {
      this.internalError(
        "built an event that breaks the contract",
        new Error(`${issue.path} ${issue.reason}`),
      );
      return undefined;
    }
    this.local.record(event);
    this.counters.recorded++;
    if (this.exporter) {
      try {
        const pending = this.exporter.export(event);
        if (pending) await pending;
      } catch (error) {
        this.internalError("the exporter failed", error);
      }
    }
    return event;
  }

  private reportedTokens(input: SpanInput): Tokens | undefined {
    const usage = input.usage;
    if (!usage) return undefined;
    const prompt = this.count(usage.promptTokens ?? usage.inputTokens);
    const completion = this.count(usage.completionTokens ?? usage.outputTokens);
    if (prompt === null && completion === null) return undefined;
    return { prompt, completion, source: "reported" };
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

  private buildEvent(input: SpanInput, context: TraceContext, tokens: Tokens): ModelCallEvent {
    const attributes: Record<string, string> = { ...input.attributes };
    const invalid = (field: string, value: unknown): null => {
      this.counters.invalidInputs++;
      attributes[`mcpo.invalid.${field}`] = String(value);
      return null;
    };
    const unit = (value: number | null | undefined, field: string): number | null => {
      if (value === undefined || value === null) return null;
      return typeof value === "number" && value >= 0 && value <= 1 ? value : invalid(field, value);
    };
    // Typed as unknown: JavaScript callers can pass anything.
    const flag = (value: unknown, field: string): boolean | null => {
      if (value === undefined || value === null) return null;
      return typeof value === "boolean" ? value : invalid(field, value);
    };

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
    const model = input.model ?? null;
    const cost =
      model === null || tokens.prompt === null || tokens.completion === null
        ? null
        : this.prices.cost(model, input.provider, tokens.prompt, tokens.completion);
    if (model !== null && cost === null && this.prices.lookup(model, input.provider) === undefined)
      this.counters.unpriced++;

    const prompt = input.prompt;
    const response = input.response;
    const event: ModelCallEvent = {
      event_id: randomUUID(),
      trace_id: context.traceId,
      span_id: context.spanId,
      parent_span_id: context.parentSpanId,
      kind: input.kind ?? "model_call",
      service: this.serviceName,
      service_instance: this.serviceInstance,
      provider: input.provider ?? null,
      model,
      tool_name: input.toolName ?? null,
      mcp_method: attributes["mcp.method.name"] ?? null,
      start_time: Math.round(startMs * MICROS_PER_MILLI),
      end_time: Math.round(endMs * MICROS_PER_MILLI),
      prompt_tokens: tokens.prompt,
      completion_tokens: tokens.completion,
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
      error_type: status === "error" ? (input.errorType ?? errorTypeOf(input.error)) : null,
      prompt_size_bytes: prompt === undefined ? null : Buffer.byteLength(prompt, "utf8"),
      response_size_bytes: response === undefined ? null : Buffer.byteLength(response, "utf8"),
      prompt_sha256: prompt === undefined ? null : hash("sha256", prompt, "buffer"),
      response_sha256: response === undefined ? null : hash("sha256", response, "buffer"),
      prompt_text:
        this.captureContent && prompt !== undefined ? this.redacted(prompt, "prompt") : null,
      response_text:
        this.captureContent && response !== undefined ? this.redacted(response, "response") : null,
      attributes: Object.freeze(attributes),
    };
    return Object.freeze(event);
  }

  /** A reported token count, or null (counted as invalid) when it is not a non-negative integer. */
  private count(value: number | undefined): number | null {
    if (value === undefined) return null;
    if (Number.isSafeInteger(value) && value >= 0) return value;
    this.counters.invalidInputs++;
    return null;
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
