/**
 * The stream processor: event-time tumbling windows over the model-calls topic, rollups and
 * alerts to their own topics, crash-safe and deterministic (see processor/README.md).
 *
 * @module
 */
export { checkpointKey, StateMismatchError, type Checkpoint } from "./checkpoints.js";
export { eventTimeWindows, PartitionDriver, type DriverStart, type Fed } from "./driver.js";
export { resolveControlKey, type ControlKeyOptions } from "./control-key.js";
export { CONTROL_UNAUTHENTICATED } from "./log-record.js";
export {
  DEFAULT_WINDOW_SETTINGS,
  PartitionState,
  type PartitionInput,
  type PartitionOutput,
  type PartitionSnapshot,
  type WindowSettings,
} from "./partition.js";
export {
  StreamProcessor,
  type ProcessorLogger,
  type ProcessorOptions,
  type ProcessorStats,
} from "./processor.js";
export {
  subscribeAlerts,
  type AlertSubscription,
  type AlertSubscriptionOptions,
} from "./subscribe.js";
export {
  AlertForwarder,
  destinationsOf,
  ForwardMetrics,
  type AlertForwarderOptions,
  type ForwardStats,
} from "./forward.js";
export {
  alertmanagerAlert,
  classifyStatus,
  FORWARD_HEADERS,
  idempotencyKey,
  verifyWebhookSignature,
  webhookPayload,
  webhookSignature,
  type PostableAlert,
  type WebhookPayload,
} from "./forward-delivery.js";
export {
  replayLog,
  type ReplayOptions,
  type ReplayOutputs,
  type ReplayProgress,
  type ReplayStart,
  type ReplaySummary,
} from "./replay.js";
