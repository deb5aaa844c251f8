/**
 * The partition driver: one partition's state machine with its place in the log. Every reader of
 * the model-calls log — the live processor (a consumer-group member), replays (a range reader) —
 * feeds records through a driver, in offset order, and hands what it emits to its own output
 * (Kafka topics and checkpoints, the PostgreSQL writer, a callback). The driver owns what they
 * share: which records are already in the state, what a record means to the state machine, and
 * where to go back to when outputs could not be written.
 */
import { defer, map, type OperatorFunction } from "rxjs";

import type { AvroCodec } from "../avro/codec.js";
import type { ModelCallEvent } from "../avro/generated.js";
import type { ConsumedRecord } from "../kafka/index.js";
import { readLogRecord, readLogRecordIfKnown, type LogRecord } from "./log-record.js";
import {
  DEFAULT_WINDOW_SETTINGS,
  PartitionState,
  type PartitionInput,
  type PartitionOutput,
  type PartitionRouting,
  type PartitionSnapshot,
  type WindowSettings,
} from "./partition.js";

/** Where a driver starts: a checkpoint's state and next offset, or nothing (the log's start). */
export interface DriverStart {
  readonly state?: PartitionSnapshot;
  readonly nextOffset: bigint | null;
}

/** What feeding one record did. */
export type Fed =
  /** Before the driver's position: already in the state. */
  | { readonly type: "skipped" }
  /** The schema registry could not be reached: feed this record again later. */
  | { readonly type: "retry"; readonly message: string }
  /** Neither an event nor a control record: dead-letter it (live) or count it (replays). */
  | { readonly type: "invalid"; readonly read: LogRecord & { type: "invalid" } }
  | {
      readonly type: "applied";
      readonly input: (LogRecord & { type: "input" })["input"];
      readonly outputs: PartitionOutput[];
    };

export class PartitionDriver {
  /** The state machine, as of every record before {@link nextOffset}. */
  state: PartitionState;
  /** The next offset to feed; null until the first record when it started at the log's start. */
  nextOffset: bigint | null;
  /**
   * The last point whose outputs are all written (a checkpoint, or where it started): a batch
   * whose outputs fail goes back to it with {@link rewind}.
   */
  private durable: DriverStart;

  constructor(
    private readonly settings: WindowSettings,
    private readonly routing: PartitionRouting,
    private readonly codec: AvroCodec<ModelCallEvent>,
    start: DriverStart = { nextOffset: null },
  ) {
    this.state = new PartitionState(settings, start.state, routing);
    this.nextOffset = start.nextOffset;
    this.durable = start;
  }

  get partition(): number {
    return this.routing.partition;
  }

  /**
   * Where the next batch must start when it begins at `firstOffset`: null to go on, or the
   * offset to seek to (the group's position is ahead of the state's).
   */
  seekFor(firstOffset: bigint): bigint | null {
    if (this.nextOffset === null) {
      // No checkpoint: the partition starts where the log does (retention may have removed 0).
      this.nextOffset = firstOffset;
      if (this.durable.nextOffset === null) this.durable = { nextOffset: firstOffset };
    }
    return firstOffset > this.nextOffset ? this.nextOffset : null;
  }

  /** Feeds one record (in offset order) through the state machine. */
  async feed(record: ConsumedRecord): Promise<Fed> {
    const offset = BigInt(record.offset);
    if (this.nextOffset !== null && offset < this.nextOffset) return { type: "skipped" };
    const read =
      readLogRecordIfKnown(record, this.codec) ?? (await readLogRecord(record, this.codec));
    if (read.type === "retry") return { type: "retry", message: read.message };
    this.nextOffset = offset + 1n;
    if (read.type === "invalid") return { type: "invalid", read };
    return { type: "applied", input: read.input, outputs: this.state.apply(read.input) };
  }

  /** Flushes every open window (a replay that must end with them emitted). */
  flush(): PartitionOutput[] {
    return this.state.apply({ type: "flush" });
  }

  /** The outputs up to here are written and `snapshot` saved: this is the new durable point. */
  markDurable(snapshot: PartitionSnapshot): void {
    this.durable = { state: snapshot, nextOffset: this.nextOffset };
  }

  /** Back to the last durable point: the state and position there. */
  rewind(): bigint | null {
    this.state = new PartitionState(this.settings, this.durable.state, this.routing);
    this.nextOffset = this.durable.nextOffset;
    return this.nextOffset;
  }
}

/**
 * The partition's windows as an RxJS operator: each input becomes the outputs it causes (often
 * none). Each subscription gets its own state, starting from `snapshot` when given.
 */
export function eventTimeWindows(
  settings: WindowSettings = DEFAULT_WINDOW_SETTINGS,
  snapshot?: PartitionSnapshot,
): OperatorFunction<PartitionInput, PartitionOutput[]> {
  return (source) =>
    defer(() => {
      const state = new PartitionState(settings, snapshot);
      return source.pipe(map((input) => state.apply(input)));
    });
}
