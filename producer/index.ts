/**
 * The library inside MCP servers: `instrument()` gives an `MCPInterceptor` that records model
 * calls and MCP requests as ModelCallEvents, keeps this replica's metrics and alerts, and exports
 * events (Kafka for a fleet, in memory for tests; PostgreSQL in `mcp-observatory/exporters/postgres`).
 *
 * @module
 */
export type { ModelCallEvent, CallKind, CallStatus, TokenSource } from "../avro/generated.js";
export { ConfigError, ObservatoryError, RetryExhaustedError } from "../config/index.js";
export type { ErrorContext, ErrorDescription } from "../config/index.js";
export {
  KafkaExporter,
  type KafkaExporterOptions,
  type KafkaExporterStats,
} from "./exporters/kafka.js";
export { InMemoryExporter } from "./exporters/memory.js";
export type {
  EventExporter,
  ExporterStats,
  FlushResult,
  OverflowPolicy,
} from "./exporters/types.js";
export {
  CONTENT_HASH_KEY_ENV,
  CONTENT_HASH_KEY_FILE_ENV,
  HASHED_IDENTIFIER_PREFIX,
  MIN_CONTENT_HASH_KEY_BYTES,
  type ContentHashKeyOption,
  type IdentifierPolicy,
} from "./content-hash.js";
export { instrument, MCPInterceptor, TRUNCATION_MARKER } from "./interceptor.js";
export { silentLogger, stderrLogger, type Logger } from "./logger.js";
export { instrumentMcpServer, type McpInstrumentation } from "./mcp.js";
export type { AlertEvent } from "../avro/generated.js";
export {
  subscribeAlerts,
  type AlertSubscription,
  type AlertSubscriptionOptions,
} from "../processor/subscribe.js";
export {
  checkUsage,
  costNanoUsd,
  PriceTable,
  pricePerMillionToPicoPerToken,
  type ModelPrice,
  type UsageDetails,
} from "./pricing.js";
export {
  usageFromAnthropic,
  usageFromOpenAI,
  type AnthropicUsage,
  type OpenAIUsage,
} from "./usage.js";
export { countTokens, encodingForModel, type EncodingName } from "./tokens.js";
export {
  currentTraceContext,
  extractMcpParent,
  formatTraceparent,
  injectMcpTraceparent,
  parseBaggage,
  parseTraceparent,
  parseTracestate,
  runWithTraceContext,
  startSpanContext,
  type Propagated,
  type RemoteParent,
  type TraceContext,
} from "./trace.js";
export type {
  InstrumentOptions,
  InterceptorCounters,
  MetricsSnapshot,
  ModelCallInput,
  ReportedUsage,
} from "./types.js";
