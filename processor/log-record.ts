/**
 * One record of the model-calls log, as the partition state machine's input: a watermark tick
 * (a control record), an event, or the reason it is neither. Shared by the live processor and
 * replays, so both read the log the same way.
 */
import type { AvroCodec, DecodeErrorCode, DecodeResult } from "../avro/codec.js";
import { readControl } from "../avro/control.js";
import type { ModelCallEvent } from "../avro/generated.js";
import type { ConsumedRecord } from "../kafka/index.js";
import type { PartitionInput } from "./partition.js";

export type LogRecord =
  | { readonly type: "input"; readonly input: PartitionInput & { type: "event" | "tick" } }
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
  if (control.type === "tick")
    return { type: "input", input: { type: "tick", eventTimeMicros: control.eventTimeMicros } };
  if (control.type === "unknown")
    return { type: "invalid", code: "UNKNOWN_CONTROL_RECORD", message: control.reason };
  const decoded = codec.decodeIfKnown(record.value ?? Buffer.alloc(0));
  return decoded === undefined ? undefined : fromDecoded(decoded);
}

/** Reads a record, fetching its writer schema from the registry when it is not known yet. */
export async function readLogRecord(
  record: ConsumedRecord,
  codec: AvroCodec<ModelCallEvent>,
): Promise<LogRecord> {
  return (
    readLogRecordIfKnown(record, codec) ??
    fromDecoded(await codec.decode(record.value ?? Buffer.alloc(0)))
  );
}

function fromDecoded(decoded: DecodeResult<ModelCallEvent>): LogRecord {
  if (decoded.ok) return { type: "input", input: { type: "event", event: decoded.value } };
  if (decoded.error.retriable) return { type: "retry", message: decoded.error.message };
  return {
    type: "invalid",
    code: decoded.error.code,
    message: decoded.error.message,
    ...(decoded.error.schemaId === undefined ? {} : { schemaId: decoded.error.schemaId }),
  };
}
