/**
 * The event contract: Avro schemas (the `.avsc` files beside this module, the source of truth),
 * the TypeScript types generated from them, validation, and the Confluent wire-format codec.
 *
 * @module
 */
export {
  AvroCodec,
  createRegistryClient,
  DEFAULT_COMPATIBILITY,
  EncodeError,
  MAGIC_BYTE,
  readHeader,
  SchemaNotRegisteredError,
  valueSubject,
  WIRE_HEADER_BYTES,
  type CodecOptions,
  type DecodeError,
  type DecodeErrorCode,
  type DecodeResult,
  type LookupOptions,
  type RegisteredSchemaOptions,
  type SchemaLookup,
} from "./codec.js";
export {
  BIGINT_ATTRIBUTE,
  bigintFrom,
  bigintReplacer,
  contractType,
  INT64_MAX,
  INT64_MIN,
  isBigintLong,
} from "./bigint.js";
export { compileBodyCheck, type BodyCheck, type BodyDefect } from "./bounded.js";
export {
  ALERT_EVENT,
  defineContract,
  METRIC_ROLLUP,
  MODEL_CALL_EVENT,
  type EventContract,
} from "./contracts.js";
export {
  ALERT_EVENT_SCHEMA,
  ALERT_STATE_SYMBOLS,
  CALL_KIND_SYMBOLS,
  CALL_STATUS_SYMBOLS,
  COMPARATOR_SYMBOLS,
  METRIC_ROLLUP_SCHEMA,
  MODEL_CALL_EVENT_SCHEMA,
  OTEL_FIELD_MAPPING,
  TOKEN_SOURCE_SYMBOLS,
  type AlertEvent,
  type AlertState,
  type AvroSchema,
  type CallKind,
  type CallStatus,
  type Comparator,
  type DerivedRates,
  type LatencySketch as LatencySketchRecord,
  type MetricRollup,
  type MetricThresholds,
  type ModelCallEvent,
  type TokenSource,
  type WindowCounts,
} from "./generated.js";
export {
  getCompatibility,
  SchemaRegistryError,
  setSubjectCompatibility,
  type CompatibilityLevel,
} from "./registry.js";
export { compileValidator, type FieldIssue, type Validator } from "./validate.js";
