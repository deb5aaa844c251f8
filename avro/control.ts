/**
 * Control records on the model-calls topic. Besides ModelCallEvents, the processor writes three
 * kinds of records into the topic, so that what it decided is in the log itself and a replay
 * decides the same:
 *
 * - **watermark tick** (`mcpo-control: watermark`, null value, event time in
 *   `mcpo-watermark-time`, µs): "event time reached T" in an idle partition, so idle windows close
 *   where the live run closed them;
 * - **copy** (`mcpo-control: copy`, value = the original record's bytes): an event that arrived on
 *   a partition other than its service's home partition, forwarded to the home partition, with
 *   where it came from (`mcpo-copy-source-partition`, `mcpo-copy-source-offset`), the previous
 *   copy from that partition to this one (`mcpo-copy-previous-offset`, absent for the first) and
 *   the source partition's event time when it was forwarded (`mcpo-copy-source-time`, µs);
 * - **progress** (`mcpo-control: progress`, null value, event time in
 *   `mcpo-progress-source-time`, µs): "source partition `mcpo-progress-source-partition` reached
 *   this event time, and its last copy to this partition was `mcpo-progress-last-offset`" (absent:
 *   none yet), so the home partition knows when a window can have no more copies coming. Time 0
 *   registers a source that has not reported yet (a partition added to the topic): the home
 *   partition waits for it.
 *
 * Every value on the topic is one a Confluent-wire-format Avro consumer reads (Kafka Connect's
 * AvroConverter, ksqlDB, Flink): an event's or a copy's Avro bytes, or null (ticks and progress
 * records: a null value converts to null, and nothing on model-calls compacts it away — the topic
 * is never compacted). Versions before wrote a tick's and a progress record's time as decimal text
 * in the value, which such consumers cannot read; {@link readControl} still reads that form, so
 * their logs replay.
 *
 * Every other consumer of the topic skips records with a `mcpo-control` header (a copy's original
 * is still in the log where it arrived).
 *
 * Authentication: whoever may write to the topic (every MCP server replica) can append a record
 * with a `mcpo-control` header. Processors that share a `controlKey` sign each control record they
 * write ({@link signControl}: an HMAC over its type, fields, value and partition) and act only on
 * control records that verify ({@link controlAuthentic}); without a key every control record is
 * trusted.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

export const CONTROL_HEADER = "mcpo-control";
export const WATERMARK_TICK = "watermark";
export const COPY = "copy";
export const PROGRESS = "progress";
/** A watermark tick's event time, µs (decimal). */
export const WATERMARK_TIME_HEADER = "mcpo-watermark-time";
/** A progress record's source event time, µs (decimal). */
export const PROGRESS_TIME_HEADER = "mcpo-progress-source-time";

const COPY_SOURCE_PARTITION = "mcpo-copy-source-partition";
const COPY_SOURCE_OFFSET = "mcpo-copy-source-offset";
const COPY_PREVIOUS_OFFSET = "mcpo-copy-previous-offset";
const COPY_SOURCE_TIME = "mcpo-copy-source-time";
const PROGRESS_SOURCE_PARTITION = "mcpo-progress-source-partition";
const PROGRESS_LAST_OFFSET = "mcpo-progress-last-offset";

/** Where a forwarded event came from, and the chain it continues (see {@link readControl}). */
export interface CopyOrigin {
  readonly sourcePartition: number;
  /** Its offset in the source partition (decimal). */
  readonly sourceOffset: string;
  /** The offset of the previous event the source partition forwarded to this one; null: none. */
  readonly previousOffset: string | null;
  /** The source partition's event time (largest end time seen) after it read the event, µs. */
  readonly sourceTimeMicros: number;
}

/** A source partition's report to a home partition (see {@link readControl}). */
export interface SourceProgress {
  readonly sourcePartition: number;
  /** The offset of the last event the source forwarded to this partition; null: none yet. */
  readonly lastOffset: string | null;
  readonly sourceTimeMicros: number;
}

/**
 * The headers and value of a watermark tick at `eventTimeMicros` (a null value: the time is in a
 * header).
 */
export function watermarkTick(eventTimeMicros: number): {
  headers: Record<string, string>;
  value: null;
} {
  return {
    headers: { [CONTROL_HEADER]: WATERMARK_TICK, [WATERMARK_TIME_HEADER]: String(eventTimeMicros) },
    value: null,
  };
}

/** The headers of a forwarded copy (its value is the original record's bytes). */
export function copyHeaders(origin: CopyOrigin): Record<string, string> {
  return {
    [CONTROL_HEADER]: COPY,
    [COPY_SOURCE_PARTITION]: String(origin.sourcePartition),
    [COPY_SOURCE_OFFSET]: origin.sourceOffset,
    ...(origin.previousOffset === null ? {} : { [COPY_PREVIOUS_OFFSET]: origin.previousOffset }),
    [COPY_SOURCE_TIME]: String(origin.sourceTimeMicros),
  };
}

/** The headers and value of a progress record (a null value: every field is in a header). */
export function progressRecord(progress: SourceProgress): {
  headers: Record<string, string>;
  value: null;
} {
  return {
    headers: {
      [CONTROL_HEADER]: PROGRESS,
      [PROGRESS_SOURCE_PARTITION]: String(progress.sourcePartition),
      ...(progress.lastOffset === null ? {} : { [PROGRESS_LAST_OFFSET]: progress.lastOffset }),
      [PROGRESS_TIME_HEADER]: String(progress.sourceTimeMicros),
    },
    value: null,
  };
}

/** What a record's control header says. */
export type ControlRecord =
  | { readonly type: "data" }
  | { readonly type: "tick"; readonly eventTimeMicros: number }
  /** The event is the record's value. */
  | { readonly type: "copy"; readonly origin: CopyOrigin }
  | { readonly type: "progress"; readonly progress: SourceProgress }
  | { readonly type: "unknown"; readonly reason: string };

function micros(text: string | undefined): number | undefined {
  const time = Number(text);
  return text !== undefined && text !== "" && Number.isSafeInteger(time) && time >= 0
    ? time
    : undefined;
}

/**
 * A tick's or a progress record's time: its header, or (the form versions before wrote, whose
 * value is the time as decimal text) its value. A header that is present decides.
 */
function controlTime(header: string | undefined, value: Buffer | null): number | undefined {
  return micros(header ?? value?.toString("utf8"));
}

function partitionNumber(text: string | undefined): number | undefined {
  const value = Number(text);
  return text !== undefined && /^\d{1,9}$/.test(text) ? value : undefined;
}

function offset(text: string | undefined): string | undefined {
  return text !== undefined && /^\d{1,19}$/.test(text) ? text : undefined;
}

/**
 * Reads a record's control header: not a control record, one of the three kinds, or unknown.
 * Ticks and progress records are read in both forms: the time in its header (null value), or, as
 * versions before wrote them, as decimal text in the value.
 */
export function readControl(
  headers: Readonly<Record<string, string>>,
  value: Buffer | null,
): ControlRecord {
  const control = headers[CONTROL_HEADER];
  if (control === undefined) return { type: "data" };
  switch (control) {
    case WATERMARK_TICK: {
      const time = controlTime(headers[WATERMARK_TIME_HEADER], value);
      return time === undefined
        ? {
            type: "unknown",
            reason: `watermark tick without a valid time (${WATERMARK_TIME_HEADER} header, or a decimal value)`,
          }
        : { type: "tick", eventTimeMicros: time };
    }
    case COPY: {
      const sourcePartition = partitionNumber(headers[COPY_SOURCE_PARTITION]);
      const sourceOffset = offset(headers[COPY_SOURCE_OFFSET]);
      const previous = headers[COPY_PREVIOUS_OFFSET];
      const previousOffset = previous === undefined ? null : offset(previous);
      const sourceTimeMicros = micros(headers[COPY_SOURCE_TIME]);
      if (
        sourcePartition === undefined ||
        sourceOffset === undefined ||
        previousOffset === undefined ||
        sourceTimeMicros === undefined
      )
        return {
          type: "unknown",
          reason: `copy record without a valid ${COPY_SOURCE_PARTITION}, ${COPY_SOURCE_OFFSET}, ${COPY_PREVIOUS_OFFSET} or ${COPY_SOURCE_TIME} header`,
        };
      return {
        type: "copy",
        origin: { sourcePartition, sourceOffset, previousOffset, sourceTimeMicros },
      };
    }
    case PROGRESS: {
      const sourcePartition = partitionNumber(headers[PROGRESS_SOURCE_PARTITION]);
      const last = headers[PROGRESS_LAST_OFFSET];
      const lastOffset = last === undefined ? null : offset(last);
      const sourceTimeMicros = controlTime(headers[PROGRESS_TIME_HEADER], value);
      if (
        sourcePartition === undefined ||
        lastOffset === undefined ||
        sourceTimeMicros === undefined
      )
        return {
          type: "unknown",
          reason: `progress record without a valid ${PROGRESS_SOURCE_PARTITION} or ${PROGRESS_LAST_OFFSET} header or time (${PROGRESS_TIME_HEADER} header, or a decimal value)`,
        };
      return { type: "progress", progress: { sourcePartition, lastOffset, sourceTimeMicros } };
    }
    default:
      return { type: "unknown", reason: `unknown control record ${JSON.stringify(control)}` };
  }
}

/**
 * The header that authenticates a control record: HMAC-SHA-256, hex, under the processors'
 * shared `controlKey`, over {@link controlMacInput}. A processor with a key writes it on every
 * control record and ignores (dead-letters, `CONTROL_UNAUTHENTICATED`) every control record whose
 * MAC is missing or wrong: anyone who may write to model-calls (every MCP server replica) can
 * append a record with a `mcpo-control` header, but only a holder of the key can make one the
 * processor acts on.
 */
export const CONTROL_MAC_HEADER = "mcpo-control-mac";

/** Headers a control record's MAC covers: every `mcpo-` header (what a reader may interpret). */
const SIGNED_PREFIX = "mcpo-";
/** Names the encoding, so a MAC of another encoding (a later version) never verifies as this one. */
const MAC_DOMAIN = Buffer.from("mcpo-control-mac/v1\0", "utf8");

function u32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value >>> 0);
  return buffer;
}

function field(bytes: Buffer): Buffer[] {
  return [u32(bytes.length), bytes];
}

/**
 * The bytes a control record's MAC is computed over, unambiguous (every part length-prefixed):
 * the encoding's name, the partition the record is written to (a record copied to another
 * partition does not verify), every `mcpo-` header but the MAC itself in name order (the control
 * type and all its fields), and the value (absent, or its bytes: a copy's event).
 */
export function controlMacInput(
  partition: number,
  headers: Readonly<Record<string, string>>,
  value: Buffer | null,
): Buffer {
  const parts: Buffer[] = [MAC_DOMAIN, u32(partition)];
  const names = Object.keys(headers)
    .filter((name) => name.startsWith(SIGNED_PREFIX) && name !== CONTROL_MAC_HEADER)
    .sort();
  parts.push(u32(names.length));
  for (const name of names)
    parts.push(
      ...field(Buffer.from(name, "utf8")),
      ...field(Buffer.from(headers[name] ?? "", "utf8")),
    );
  if (value === null) parts.push(Buffer.from([0]));
  else parts.push(Buffer.from([1]), ...field(value));
  return Buffer.concat(parts);
}

/** A control record's MAC under `key` (hex), as written in {@link CONTROL_MAC_HEADER}. */
export function controlMac(
  key: Buffer,
  partition: number,
  headers: Readonly<Record<string, string>>,
  value: Buffer | null,
): string {
  return createHmac("sha256", key)
    .update(controlMacInput(partition, headers, value))
    .digest("hex");
}

/**
 * A control record's headers with its MAC added, for writing into `partition`; without a key,
 * the headers as they are.
 */
export function signControl(
  key: Buffer | undefined,
  partition: number,
  headers: Readonly<Record<string, string>>,
  value: Buffer | null,
): Record<string, string> {
  if (key === undefined) return { ...headers };
  const unsigned = Object.fromEntries(
    Object.entries(headers).filter(([name]) => name !== CONTROL_MAC_HEADER),
  );
  return { ...unsigned, [CONTROL_MAC_HEADER]: controlMac(key, partition, unsigned, value) };
}

/**
 * Whether a record read from `partition` carries a valid MAC under `key` (compared in constant
 * time). A function of the record alone, so the live processor, a restarted one and a replay
 * with the same key decide the same.
 */
export function controlAuthentic(
  key: Buffer,
  partition: number,
  headers: Readonly<Record<string, string>>,
  value: Buffer | null,
): boolean {
  const given = headers[CONTROL_MAC_HEADER];
  if (given === undefined || !/^[0-9a-f]{64}$/.test(given)) return false;
  const expected = createHmac("sha256", key)
    .update(controlMacInput(partition, headers, value))
    .digest();
  return timingSafeEqual(expected, Buffer.from(given, "hex"));
}
