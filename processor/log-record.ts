/**
 * One record of the model-calls log, as the partition state machine's input: an event, a copy of
 * one forwarded from another partition, a watermark tick or a source's progress (control
 * records), or the reason it is none of these. Shared by the live processor and replays, so both
 * read the log the same way.
 */
import type { AvroCodec, DecodeErrorCode, DecodeResult } from "../avro/codec.js";
import { readControl, type ControlRecord } from "../avro/control.js";
import type { ModelCallEvent } from "../avro/generated.js";
import type { ConsumedRecord } from "../kafka/index.js";
import type { PartitionInput } from "./partition.js";

export type LogRecord =
  | { readonly type: "input"; readonly input: Exclude<PartitionInput, { type: "flush" }> }
  /** Never valid: dead-letter it (the live processor) or count it (replays). */
  | {
      readonly type: "invalid";
      readonly code: DecodeErrorCode | "UNKNOWN_CONTROL_RECORD";
      readonly message: string;
      readonly schemaId?: number;
    }
  /** Could not be judged now (the schema registry is unreachable): try the record again later. */
  | { readonly type: "retry"; readonly message: string };

/**
 * Reads a record synchronously, or returns undefined when its writer schema must first be fetched
 * from the registry (then call {@link readLogRecord}). The usual case costs no promise per record.
 */
export function readLogRecordIfKnown(
  record: ConsumedRecord,
  codec: AvroCodec<ModelCallEvent>,
): LogRecord | undefined {
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
): Promise<LogRecord> {
  return (
    readLogRecordIfKnown(record, codec) ??
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
