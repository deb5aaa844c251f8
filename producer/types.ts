/** The public types of the interceptor's API (no kafkajs, pg or avsc types appear here). */
import type { CallKind, CallStatus } from "../avro/generated.js";
import type { AlertRule } from "../metrics/index.js";
import type { ContentHashKeyOption, IdentifierPolicy } from "./content-hash.js";
import type { EventExporter } from "./exporters/types.js";
import type { Logger } from "./logger.js";
import type { ModelPrice } from "./pricing.js";
import type { RemoteParent, TraceContext } from "./trace.js";

/**
 * Token usage the provider reported. Either spelling is accepted.
 *
 * The prompt (input) count is every input token of the call, cached and audio tokens included,
 * and the completion (output) count every output token, audio included: the cache and audio
 * counts are parts of them, priced at their own rates (as OpenTelemetry's `gen_ai.usage.*` and
 * the price table count them). OpenAI's `prompt_tokens` already include `cached_tokens` and
 * audio; Anthropic's `input_tokens` exclude the cache reads and writes, so add them:
 * `promptTokens: input_tokens + cache_read_input_tokens + cache_creation_input_tokens`
 * ({@link usageFromAnthropic} and {@link usageFromOpenAI} convert).
 */
export interface ReportedUsage {
  readonly promptTokens?: number;
  readonly completionTokens?: number;
  /** OpenTelemetry's name for prompt tokens (`gen_ai.usage.input_tokens`). */
  readonly inputTokens?: number;
  /** OpenTelemetry's name for completion tokens (`gen_ai.usage.output_tokens`). */
  readonly outputTokens?: number;
  /** Input tokens read from the prompt cache; part of the prompt tokens. */
  readonly cacheReadTokens?: number;
  /** OpenTelemetry's name for cache reads (`gen_ai.usage.cache_read.input_tokens`). */
  readonly cacheReadInputTokens?: number;
  /** Input tokens written to the prompt cache; part of the prompt tokens. */
  readonly cacheWriteTokens?: number;
  /** OpenTelemetry's name for cache writes (`gen_ai.usage.cache_creation.input_tokens`). */
  readonly cacheCreationInputTokens?: number;
  /** Audio input tokens; part of the prompt tokens (OpenTelemetry names none). */
  readonly inputAudioTokens?: number;
  /** Audio output tokens; part of the completion tokens (OpenTelemetry names none). */
  readonly outputAudioTokens?: number;
}

/** One model call as the host describes it. Only `model` is required. */
export interface ModelCallInput {
  readonly model: string;
  /** e.g. `openai`, `anthropic` (helps the price lookup). */
  readonly provider?: string;
  /**
   * The prompt text: sized, digested with the content hash key when one is configured (see
   * {@link InstrumentOptions.contentHashKey}), shipped only with `captureContent`; tokens are
   * estimated from it when no usage is given.
   */
  readonly prompt?: string;
  readonly response?: string;
  /** Provider-reported usage; wins over estimation. */
  readonly usage?: ReportedUsage;
  /** In [0, 1]. */
  readonly confidence?: number | null;
  /** In [0, 1]; a confidence below it is a gate block. */
  readonly confidenceGateThreshold?: number | null;
  readonly highRiskPath?: boolean;
  readonly deterministicFallbackTriggered?: boolean;
  /** In [0, 1]. */
  readonly promptDiffScore?: number | null;
  readonly shadowAgreement?: boolean | null;
  readonly isGoldenFinancialScenario?: boolean;
  readonly goldenScenarioPassed?: boolean | null;
  readonly retries?: number;
  readonly fallbackUsed?: boolean;
  /** When the call started/ended (Date or ms since the epoch). Default: end now, start = end − duration. */
  readonly startTime?: Date | number;
  readonly endTime?: Date | number;
  /** Duration in ms, when no start time is given. */
  readonly durationMs?: number;
  /** Default `error` when `error` is given, else `ok`. */
  readonly status?: CallStatus;
  /** The error the call ended with (its name or code becomes `error_type`). */
  readonly error?: unknown;
  /** Explicit error type, e.g. `RateLimitError` or an HTTP status. */
  readonly errorType?: string;
  readonly toolName?: string;
  /** Default `model_call`. */
  readonly kind?: CallKind;
  /** Free-form string attributes (OpenTelemetry-style keys). */
  readonly attributes?: Readonly<Record<string, string>>;
  /** The span's parent, when not the current context (e.g. taken from a `traceparent`). */
  readonly parent?: RemoteParent | TraceContext;
}

/** A span of any kind: a model call, or an MCP request (which has no model). */
export type SpanInput = Omit<ModelCallInput, "model"> & { readonly model?: string };

/** Settings of {@link instrument}. */
export interface InstrumentOptions {
  /** The MCP server's name (`service.name`); required, non-empty. */
  readonly serviceName: string;
  /** This replica (`service.instance.id`); default `<hostname>-<pid>`. */
  readonly serviceInstance?: string;
  /** Where events go; none: local snapshot and alerts only. */
  readonly exporter?: EventExporter;
  /** Rolling window of the local snapshot, ms (default 300 000 = 5 min). */
  readonly rollingWindowMs?: number;
  /** Bucket of the rolling window, ms (default 10 000). */
  readonly bucketMs?: number;
  /** Thresholds and rules, as in the processor (see metrics/README.md); defaults there. */
  readonly metrics?: unknown;
  /** Price overrides by model, USD per million tokens. */
  readonly prices?: Readonly<Record<string, ModelPrice>>;
  /** Estimate tokens with the tokenizer when no usage is reported (default true). */
  readonly estimateTokens?: boolean;
  /**
   * Ship prompt and response text (default false); they pass `redact` first. On without a
   * `redact` hook, the interceptor logs one warning when it is made. An event whose text would
   * take it over {@link InstrumentOptions.maxEventBytes} ships the text cut to fit, ending with
   * `…[truncated]` (the event's `prompt_size_bytes` and `prompt_sha256` stay the whole prompt's,
   * likewise for the response).
   */
  readonly captureContent?: boolean;
  /**
   * Applied to prompt and response text before it is shipped. One that throws ships no text for
   * that part (the failure is logged and counted).
   */
  readonly redact?: (text: string, part: "prompt" | "response") => string;
  /**
   * The key of the events' `prompt_sha256` and `response_sha256`: each is the HMAC-SHA-256 of the
   * text's UTF-8 bytes with this key, so equal texts have equal digests within a fleet that shares
   * the key, and nobody without the key can test a guess. Text (its UTF-8 bytes) or bytes, at least
   * 32 bytes. Default: `MCPO_CONTENT_HASH_KEY`, else the file `MCPO_CONTENT_HASH_KEY_FILE` names
   * (one trailing newline dropped); neither: no key, and both fields are null. `null`: no key,
   * whatever the environment says.
   */
  readonly contentHashKey?: ContentHashKeyOption;
  /**
   * How the MCP integration records the session id (`mcp.session.id`) and the URI of a resource
   * read (`mcp.resource.uri`): `hashed` (`hmac-sha256:` and the hex HMAC-SHA-256 with the content
   * hash key; needs a key), `plain` (as the client sent them) or `omit`. Default: `hashed` with a
   * content hash key, else `omit`. Attributes the host passes itself are shipped as given.
   */
  readonly identifiers?: IdentifierPolicy;
  readonly logger?: Logger;
  /**
   * The most bytes one event may take encoded (Confluent wire format, counted as an upper bound:
   * the UTF-8 size of its text plus an allowance for the rest). Default 900 000, below Kafka's
   * default 1 MB message limit; at least 4096. Prompt and response text are cut to fit first;
   * an event that does not fit even without them is not exported (counted in `oversized`). With
   * the contract's limits on names and attributes that only happens below about 500 000 bytes.
   */
  readonly maxEventBytes?: number;
  /** Wall clock in ms (injectable for tests). */
  readonly now?: () => number;
}

/**
 * This replica's metrics over the rolling window. Names are snake_case, as the seed and
 * metrics/README.md spell them. Rates are null when their denominator is 0.
 */
export interface MetricsSnapshot {
  readonly service: string;
  readonly window_ms: number;
  /** Model calls in the window. */
  readonly calls: number;
  readonly avg_cost_usd: number | null;
  readonly fallback_rate: number | null;
  readonly retry_rate: number | null;
  readonly low_confidence_rate: number | null;
  readonly confidence_gate_block_rate: number | null;
  readonly prompt_diff_violation_rate: number | null;
  readonly shadow_disagreement_rate: number | null;
  readonly deterministic_fallback_rate: number | null;
  readonly high_risk_path_rate: number | null;
  readonly golden_financial_failure_rate: number | null;
  readonly error_rate: number | null;
  readonly latency_p50_ms: number | null;
  readonly latency_p95_ms: number | null;
  readonly latency_p99_ms: number | null;
  /**
   * Tokens of the window's calls, as numbers (the rollups' sums are bigints; a replica's rolling
   * window stays far below 2^53, where a number is exact).
   */
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  /** Exact total cost as a decimal string of USD (from integer nano-USD). */
  readonly total_cost_usd: string;
  /** Calls whose model had no known price (cost null). */
  readonly unpriced_calls: number;
}

/** The interceptor's own counters, plus its exporter's. */
export interface InterceptorCounters {
  /** Spans recorded (model calls and MCP requests). */
  readonly recorded: number;
  /** Calls whose tokens were estimated with the tokenizer. */
  readonly tokensEstimated: number;
  /** Calls whose model had no known price. */
  readonly unpriced: number;
  /**
   * Input values the contract refuses, made valid: out of range and replaced by null, longer than
   * the contract's limit and truncated (ending with `…[truncated]`), NUL characters replaced by
   * U+FFFD, attributes over the limit left out. One per field; the event's `mcpo.invalid.<field>`
   * attributes say what was done.
   */
  readonly invalidInputs: number;
  /** Events whose prompt or response text was cut to fit `maxEventBytes`. */
  readonly contentTruncated: number;
  /** Events over `maxEventBytes` even without their text: counted locally, not exported. */
  readonly oversized: number;
  /** Failures inside the interceptor, reported to the logger, never to the host. */
  readonly internalErrors: number;
  readonly sent: number;
  readonly dropped: number;
  readonly retried: number;
  readonly buffered: number;
  /**
   * Of `dropped`: events the destination refused as too large even alone (KafkaExporter: larger
   * than the broker's or topic's message size limit); 0 for exporters without such a limit.
   */
  readonly tooLarge: number;
}

export type { AlertRule };
