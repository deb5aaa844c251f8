/**
 * The three records of the event contract, each with its schema (from the `.avsc` files through
 * `generated.ts`) and its validator: the schema's own constraints plus the few rules that span
 * fields.
 */
import {
  ALERT_EVENT_SCHEMA,
  METRIC_ROLLUP_SCHEMA,
  MODEL_CALL_EVENT_SCHEMA,
  type AlertEvent,
  type AvroSchema,
  type MetricRollup,
  type ModelCallEvent,
} from "./generated.js";
import { compileValidator, type FieldIssue } from "./validate.js";

/** A record type of the contract: its schema and how to tell a valid value. */
export interface EventContract<T> {
  /** The record's name, e.g. `ModelCallEvent`. */
  readonly name: string;
  /** The Avro schema (JSON), the writer schema this version of the library registers. */
  readonly schema: AvroSchema;
  /** The first thing wrong with `value`, or undefined when it is a valid `T`. */
  readonly check: (value: unknown) => FieldIssue | undefined;
  /**
   * {@link check} for a value the Avro decoder of this schema produced: skips what the types
   * already guarantee, checks ranges, formats, finite numbers and the cross-field rules.
   */
  readonly checkDecoded: (value: unknown) => FieldIssue | undefined;
  /** Type guard over {@link check}. */
  readonly is: (value: unknown) => value is T;
}

/**
 * Defines a contract from a record schema and the cross-field rules the schema cannot say.
 * Also used for other versions of a record (e.g. a v2 in evolution tests).
 */
export function defineContract<T>(
  schema: AvroSchema,
  crossFieldRules: (value: T) => FieldIssue | undefined = () => undefined,
): EventContract<T> {
  const validate = compileValidator(schema);
  const validateDecoded = compileValidator(schema, { trustAvroTypes: true });
  const check = (value: unknown): FieldIssue | undefined =>
    validate(value) ?? crossFieldRules(value as T);
  return Object.freeze({
    name: String(schema.name),
    schema,
    check,
    checkDecoded: (value: unknown): FieldIssue | undefined =>
      validateDecoded(value) ?? crossFieldRules(value as T),
    is: (value: unknown): value is T => check(value) === undefined,
  });
}

/**
 * ModelCallEvent: end not before start; token counts (prompt, completion, cache and audio) present
 * exactly when a source says so.
 */
export const MODEL_CALL_EVENT: EventContract<ModelCallEvent> = defineContract<ModelCallEvent>(
  MODEL_CALL_EVENT_SCHEMA,
  (event) => {
    if (event.end_time < event.start_time)
      return {
        path: "end_time",
        reason: `before start_time ${event.start_time}`,
        value: event.end_time,
      };
    // The cache and audio counts are usage too: with token_source none, every count stays null.
    const hasTokens =
      event.prompt_tokens !== null ||
      event.completion_tokens !== null ||
      event.cache_read_tokens !== null ||
      event.cache_write_tokens !== null ||
      event.input_audio_tokens !== null ||
      event.output_audio_tokens !== null;
    if (event.token_source === "none" && hasTokens)
      return {
        path: "token_source",
        reason: "is none but token counts are given (unknown usage must stay null, not a number)",
        value: event.token_source,
      };
    if (event.token_source !== "none" && !hasTokens)
      return {
        path: "token_source",
        reason: `is ${event.token_source} but no token count is given`,
        value: event.token_source,
      };
    return undefined;
  },
);

/** MetricRollup: a non-empty window; the sketch's keys and counts pair up. */
export const METRIC_ROLLUP: EventContract<MetricRollup> = defineContract<MetricRollup>(
  METRIC_ROLLUP_SCHEMA,
  (rollup) => {
    if (rollup.window_end <= rollup.window_start)
      return {
        path: "window_end",
        reason: `not after window_start ${rollup.window_start}`,
        value: rollup.window_end,
      };
    if (rollup.latency.keys.length !== rollup.latency.counts.length)
      return {
        path: "latency.counts",
        reason: `has ${rollup.latency.counts.length} entries for ${rollup.latency.keys.length} keys`,
        value: rollup.latency.counts.length,
      };
    return undefined;
  },
);

/** AlertEvent: a non-empty deciding window. */
export const ALERT_EVENT: EventContract<AlertEvent> = defineContract<AlertEvent>(
  ALERT_EVENT_SCHEMA,
  (alert) =>
    alert.window_end <= alert.window_start
      ? {
          path: "window_end",
          reason: `not after window_start ${alert.window_start}`,
          value: alert.window_end,
        }
      : undefined,
);
