/**
 * One record of the model-calls log, as the partition state machine's input: an event, a copy of
 * one forwarded from another partition, a watermark tick or a source's progress (control
 * records), or the reason it is none of these. Shared by the live processor and replays, so both
 * read the log the same way.
 */
import type { AvroCodec, DecodeErrorCode, DecodeResult } from "../avro/codec.js";
import {
  CONTROL_HEADER,
  CONTROL_MAC_HEADER,
  controlAuthentic,
  readControl,
  type ControlRecord,
} from "../avro/control.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { windowConfigSchema } from "../config/index.js";
import type { ConsumedRecord } from "../kafka/index.js";
import { MICROS_PER_MILLI } from "../metrics/index.js";
import type { PartitionInput } from "./partition.js";

/**
 * The code of a control record a reader with a `controlKey` ignores: its MAC (the
 * `mcpo-control-mac` header) is missing or does not verify, so no processor holding the key wrote
 * it there. It is dead-lettered (replays count it) and never reaches the state.
 */
export const CONTROL_UNAUTHENTICATED = "CONTROL_UNAUTHENTICATED";

/** What a record of the log is to the state machine. */
export type LogInput = Exclude<PartitionInput, { type: "flush" }>;

export type LogRecord =
  | { readonly type: "input"; readonly input: LogInput }
  /** Never valid: dead-letter it (the live processor) or count it (replays). */
  | {
      readonly type: "invalid";
      readonly code: DecodeErrorCode | "UNKNOWN_CONTROL_RECORD" | typeof CONTROL_UNAUTHENTICATED;
      readonly message: string;
      readonly schemaId?: number;
    }
  /** Could not be judged now (the schema registry is unreachable): try the record again later. */
  | { readonly type: "retry"; readonly message: string };

/**
 * Why a control record is not to be trusted under `controlKey`, or undefined when it is (or when
 * the record is not a control record, or no key is set: then every control record is trusted).
 * The one check every reader of the log makes — the live processor and replays alike — and a
 * function of the record alone (its headers, value and partition), so they all decide the same.
 * Costs an HMAC per control record; an event (no `mcpo-control` header) costs one lookup.
 */
export function unauthenticatedControl(
  record: ConsumedRecord,
  controlKey: Buffer | undefined,
): string | undefined {
  if (controlKey === undefined) return undefined;
  const control = record.headers[CONTROL_HEADER];
  if (control === undefined) return undefined;
  if (controlAuthentic(controlKey, record.partition, record.headers, record.value))
    return undefined;
  const what = `control record ${JSON.stringify(control.slice(0, 40))}`;
  return record.headers[CONTROL_MAC_HEADER] === undefined
    ? `${what} without a ${CONTROL_MAC_HEADER} header: not written by a processor holding the controlKey (forged, or written before the key was set); ignored`
    : `${what} whose ${CONTROL_MAC_HEADER} does not verify under the controlKey for partition ${record.partition} (forged, altered, copied from another partition, or signed with another key); ignored`;
}

/**
 * Reads a record synchronously, or returns undefined when its writer schema must first be fetched
 * from the registry (then call {@link readLogRecord}). The usual case costs no promise per record.
 * With a `controlKey`, a control record whose MAC is missing or wrong is invalid
 * ({@link CONTROL_UNAUTHENTICATED}) whatever it says.
 */
export function readLogRecordIfKnown(
  record: ConsumedRecord,
  codec: AvroCodec<ModelCallEvent>,
  controlKey?: Buffer,
): LogRecord | undefined {
  const unauthenticated = unauthenticatedControl(record, controlKey);
  if (unauthenticated !== undefined)
    return { type: "invalid", code: CONTROL_UNAUTHENTICATED, message: unauthenticated };
  const control = readControl(record.headers, record.value);
  switch (control.type) {
    case "tick":
      return { type: "input", input: { type: "tick", eventTimeMicros: control.eventTimeMicros } };
    case "progress":
      return { type: "input", input: { type: "progress", progress: control.progress } };
    case "unknown":
      return { type: "invalid", code: "UNKNOWN_CONTROL_RECORD", message: control.reason };
    case "data":
    case "copy": {
      const decoded = codec.decodeIfKnown(record.value ?? Buffer.alloc(0));
      return decoded === undefined ? undefined : fromDecoded(decoded, record, control);
    }
  }
}

/** Reads a record, fetching its writer schema from the registry when it is not known yet. */
export async function readLogRecord(
  record: ConsumedRecord,
  codec: AvroCodec<ModelCallEvent>,
  controlKey?: Buffer,
): Promise<LogRecord> {
  return (
    readLogRecordIfKnown(record, codec, controlKey) ??
    fromDecoded(
      await codec.decode(record.value ?? Buffer.alloc(0)),
      record,
      readControl(record.headers, record.value),
    )
  );
}

function fromDecoded(
  decoded: DecodeResult<ModelCallEvent>,
  record: ConsumedRecord,
  control: ControlRecord,
): LogRecord {
  if (decoded.ok)
    return {
      type: "input",
      input:
        control.type === "copy"
          ? { type: "copy", event: decoded.value, origin: control.origin }
          : { type: "event", event: decoded.value, offset: record.offset },
    };
  if (decoded.error.retriable) return { type: "retry", message: decoded.error.message };
  return {
    type: "invalid",
    code: decoded.error.code,
    message: decoded.error.message,
    ...(decoded.error.schemaId === undefined ? {} : { schemaId: decoded.error.schemaId }),
  };
}

/**
 * How far a record's time may be from its log time: its record's timestamp, which on model-calls
 * is the broker's clock when it appended the record (`message.timestamp.type=LogAppendTime`).
 */
export interface TimeBounds {
  /**
   * An event that ends, or a tick or progress record whose time is, more than this after its
   * record's log time is refused (CLOCK_SKEW), µs: its clock is ahead, and it would move the
   * partition's watermark for every service there.
   */
  readonly maxClockSkewMicros: number;
  /**
   * An event that ended more than this before its record's log time is refused (TOO_OLD), µs; 0:
   * no limit.
   */
  readonly maxEventAgeMicros: number;
}

const BOUND_DEFAULTS = windowConfigSchema.parse({});

/** The bounds every component defaults to (config/'s window schema). */
export const DEFAULT_TIME_BOUNDS: TimeBounds = Object.freeze({
  maxClockSkewMicros: BOUND_DEFAULTS.maxClockSkewMs * MICROS_PER_MILLI,
  maxEventAgeMicros: BOUND_DEFAULTS.maxEventAgeMs * MICROS_PER_MILLI,
});

/** Why a record's time is refused, and what the record says against what its log time says. */
export interface TimeRejection {
  readonly code: "CLOCK_SKEW" | "TOO_OLD";
  readonly message: string;
}

/** µs as an ISO time, or `not a date` beyond what a Date holds. */
function isoMicros(micros: number): string {
  const ms = Math.floor(micros / MICROS_PER_MILLI);
  return Number.isFinite(ms) && Math.abs(ms) <= 8.64e15 ? new Date(ms).toISOString() : "not a date";
}

/** A duration in µs as seconds, for messages. */
function seconds(micros: number): string {
  return `${(micros / 1e6).toFixed(3)} s`;
}

/**
 * Judges a record's time against its log time (`logTimeMs`, the record's timestamp): undefined
 * when it may be applied, else why not. The rule, a function of the record alone (so the live
 * processor, a restarted one and a replay decide the same):
 *
 * - an event whose `end_time` is more than `maxClockSkewMicros` after its log time is refused
 *   (CLOCK_SKEW); one that ended more than `maxEventAgeMicros` before it (when that is set) is
 *   refused (TOO_OLD). `start_time` is not judged: it is at most `end_time` (the contract), and
 *   event time is `end_time` alone;
 * - a copy (an event forwarded from another partition) is refused when its event or its source's
 *   event time is more than `maxClockSkewMicros` after the copy's own log time, which is later
 *   than the original's: a copy of an event its source applied always passes. Its age is not
 *   judged: its source judged the original's (a copy may be written long after, by a processor
 *   that was down);
 * - a watermark tick, or a progress record's source time, more than `maxClockSkewMicros` after its
 *   log time is refused: ticks carry the wall clock of the processor that wrote them, appended
 *   just after.
 *
 * A record without a timestamp (negative: the old message format) is not judged.
 */
export function judgeTime(
  input: LogInput,
  logTimeMs: number,
  bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
): TimeRejection | undefined {
  if (!Number.isFinite(logTimeMs) || logTimeMs < 0) return undefined;
  const logTime = logTimeMs * MICROS_PER_MILLI;
  const skewMs = bounds.maxClockSkewMicros / MICROS_PER_MILLI;
  const log = `its record's log time ${logTimeMs} ms (${isoMicros(logTime)})`;
  const ahead = (what: string, time: number, outcome: string): TimeRejection | undefined =>
    time - logTime > bounds.maxClockSkewMicros
      ? {
          code: "CLOCK_SKEW",
          message: `${what} ${time} µs (${isoMicros(time)}) is ${seconds(time - logTime)} after ${log}: more than maxClockSkewMs ${skewMs} ahead (a clock that is wrong); ${outcome}`,
        }
      : undefined;
  switch (input.type) {
    case "event": {
      const end = input.event.end_time;
      const skewed = ahead("end_time", end, "not applied");
      if (skewed) return skewed;
      const maxAge = bounds.maxEventAgeMicros;
      if (maxAge > 0 && logTime - end > maxAge)
        return {
          code: "TOO_OLD",
          message: `end_time ${end} µs (${isoMicros(end)}) is ${seconds(logTime - end)} before ${log}: older than maxEventAgeMs ${maxAge / MICROS_PER_MILLI}; not applied`,
        };
      return undefined;
    }
    case "copy":
      return (
        ahead(
          `a copy from partition ${input.origin.sourcePartition}: end_time`,
          input.event.end_time,
          "not applied",
        ) ??
        ahead(
          `a copy from partition ${input.origin.sourcePartition}: its source's event time`,
          input.origin.sourceTimeMicros,
          "not applied",
        )
      );
    case "tick":
      return ahead("watermark tick time", input.eventTimeMicros, "ignored");
    case "progress":
      return ahead(
        `progress of partition ${input.progress.sourcePartition}: event time`,
        input.progress.sourceTimeMicros,
        "ignored",
      );
  }
}
