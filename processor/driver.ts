/**
 * The partition driver: one partition's state machine with its place in the log. Every reader of
 * the model-calls log — the live processor (a consumer-group member), replays (a range reader) —
 * feeds records through a driver, in offset order, and hands what it emits to its own output
 * (Kafka topics and checkpoints, the PostgreSQL writer, a callback). The driver owns what they
 * share: which records are already in the state, what a record means to the state machine, and
 * where to go back to when outputs could not be written.
 *
 * A record's time is judged against its log time (its timestamp: on model-calls the broker's
 * clock when it appended the record) before the state sees it ({@link judgeTime}): an event whose
 * clock is ahead (or, when set, too old) is not applied, and a tick or progress record ahead is
 * ignored, so one host whose clock is wrong cannot move the watermark of the partition it writes
 * to. The log time is in the log, so every reader decides the same.
 */
import { defer, map, type OperatorFunction } from "rxjs";

import type { AvroCodec } from "../avro/codec.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { windowOf } from "../metrics/index.js";
import type { ConsumedRecord } from "../kafka/index.js";
import { healPosition, type PositionDecision } from "../ops/service.js";
import {
  DEFAULT_TIME_BOUNDS,
  judgeTime,
  readLogRecord,
  readLogRecordIfKnown,
  type LogInput,
  type LogRecord,
  type TimeBounds,
  type TimeRejection,
} from "./log-record.js";
import {
  DEFAULT_WINDOW_SETTINGS,
  PartitionState,
  type PartitionInput,
  type PartitionOutput,
  type PartitionRouting,
  type PartitionSnapshot,
  type WindowSettings,
} from "./partition.js";

export {
  CONTROL_UNAUTHENTICATED,
  DEFAULT_TIME_BOUNDS,
  judgeTime,
  type TimeBounds,
  type TimeRejection,
} from "./log-record.js";

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
  /**
   * Neither an event nor a control record, or (with a `controlKey`) a control record that does not
   * authenticate: dead-letter it (live) or count it (replays).
   */
  | { readonly type: "invalid"; readonly read: LogRecord & { type: "invalid" } }
  /**
   * Its time is out of bounds of its log time (see {@link judgeTime}), and the state did not see
   * it. An event or a copy: dead-letter it with `code` (live) or count it (replays); a tick or a
   * progress record: ignore and count it.
   */
  | {
      readonly type: "rejected";
      readonly input: LogInput;
      readonly code: TimeRejection["code"];
      readonly message: string;
    }
  | {
      readonly type: "applied";
      readonly input: (LogRecord & { type: "input" })["input"];
      readonly outputs: PartitionOutput[];
      /** Rollups and alerts of partial windows, not emitted (see {@link PartitionDriver.withholdPartialWindows}). */
      readonly withheld: number;
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
  /** The offset last sought to, until a batch starts there (or past it: a gap). */
  private sought: bigint | undefined;
  /** Rollups and alerts of windows that start before it are not emitted (null: all are). */
  private floor: number | null = null;
  /** The floor is set by the next event (its time plus grace, rounded up to a window). */
  private floorAwaitsEvent = false;

  constructor(
    private readonly settings: WindowSettings,
    private readonly routing: PartitionRouting,
    private readonly codec: AvroCodec<ModelCallEvent>,
    start: DriverStart = { nextOffset: null },
    /** How far a record's time may be from its log time (the reader's `maxClockSkewMs` etc.). */
    private readonly bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
    /**
     * The processors' shared `controlKey`: control records whose MAC is missing or wrong are
     * invalid (`CONTROL_UNAUTHENTICATED`) and never reach the state. Undefined: all are trusted.
     */
    private readonly controlKey?: Buffer,
  ) {
    this.state = new PartitionState(settings, start.state, routing);
    this.nextOffset = start.nextOffset;
    this.durable = start;
  }

  get partition(): number {
    return this.routing.partition;
  }

  /**
   * What to do with a batch that begins at `firstOffset` (see {@link healPosition}): go on, seek
   * to the state's next offset (the group's position is behind or ahead of it), or, when that
   * offset is gone from the log, go on from the batch's start across the gap.
   */
  positionFor(firstOffset: bigint): PositionDecision {
    if (this.nextOffset === null) {
      // No checkpoint: the partition starts where the log does (retention may have removed 0).
      this.nextOffset = firstOffset;
      if (this.durable.nextOffset === null) this.durable = { nextOffset: firstOffset };
    }
    const decision = healPosition(firstOffset, this.nextOffset, this.sought);
    if (decision.action === "seek") this.sought = decision.to;
    else this.sought = undefined;
    if (decision.action === "gap") {
      this.nextOffset = decision.to;
      this.withholdPartialWindows();
    }
    return decision;
  }

  /**
   * A driver that reads on without the state of the records before (a replay from a time or an
   * offset, a log trimmed by retention, a gap in the log) would emit its next windows holding only
   * part of their events. From now on it emits only windows that start at or after `fromMicros`
   * (a replay from a time, rounded up to a window) or, without it, after the next event's time
   * plus the grace period, rounded up (the records it lacks may hold events up to there); until
   * that event, none. Of two floors the later holds.
   */
  withholdPartialWindows(fromMicros?: number): void {
    if (fromMicros === undefined) this.floorAwaitsEvent = true;
    else this.floor = Math.max(this.floor ?? -Infinity, fromMicros);
  }

  /** The first window start emitted; null while every window is (or the next event is awaited). */
  get emitFloor(): number | null {
    return this.floorAwaitsEvent ? null : this.floor;
  }

  private roundUp(micros: number): number {
    const window = windowOf(micros, this.settings.windowSizeMicros);
    return window.start === micros ? micros : window.end;
  }

  /** Feeds one record (in offset order) through the state machine. */
  async feed(record: ConsumedRecord): Promise<Fed> {
    const offset = BigInt(record.offset);
    if (this.nextOffset !== null && offset < this.nextOffset) return { type: "skipped" };
    const read =
      readLogRecordIfKnown(record, this.codec, this.controlKey) ??
      (await readLogRecord(record, this.codec, this.controlKey));
    if (read.type === "retry") return { type: "retry", message: read.message };
    this.nextOffset = offset + 1n;
    if (read.type === "invalid") return { type: "invalid", read };
    const rejection = judgeTime(read.input, record.timestamp, this.bounds);
    if (rejection) return { type: "rejected", input: read.input, ...rejection };
    const outputs = this.state.apply(read.input);
    if (this.floorAwaitsEvent && read.input.type === "event") {
      this.floorAwaitsEvent = false;
      this.withholdPartialWindows(
        this.roundUp(read.input.event.end_time + this.settings.graceMicros),
      );
    }
    const floor = this.floorAwaitsEvent ? Infinity : this.floor;
    if (floor === null) return { type: "applied", input: read.input, outputs, withheld: 0 };
    const emitted = outputs.filter(
      (output) =>
        (output.type !== "rollup" || output.rollup.window_start >= floor) &&
        (output.type !== "alert" || output.alert.window_start >= floor),
    );
    return {
      type: "applied",
      input: read.input,
      outputs: emitted,
      withheld: outputs.length - emitted.length,
    };
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

/** An open window's rollup, as snapshots hold them. */
type OpenRollup = PartitionSnapshot["windows"][number];
/** A firing incident, as snapshots hold them. */
type FiringIncident = PartitionSnapshot["alerts"]["active"][number];

/**
 * The state machine fed by one process's own calls and its wall clock, without a log: the
 * PostgresExporter's direct mode and the interceptor's local alerts. The same windows, late rule
 * and alert transitions as the processor's: an event counts in its window unless the watermark
 * (the largest of its event times and the clock's ticks, minus grace) has passed that window,
 * when it is late — counted in `late` of the window the watermark is in, never re-opening a
 * window already emitted. It may start from restored open windows (rows read back after a
 * restart), which later calls add to.
 */
export class LocalDriver {
  private readonly state: PartitionState;

  /**
   * @param restored open windows to continue, as rollups of what they held (each must be of
   *   `settings`' window size).
   * @param startMicros event time to start at (the wall clock when the process started): a call
   *   whose window the watermark has passed from there on is late, so windows a previous process
   *   wrote and closed are not opened again; null to start with the first event.
   * @throws {RangeError} when a restored rollup is not of the window size.
   */
  constructor(
    readonly settings: WindowSettings = DEFAULT_WINDOW_SETTINGS,
    restored: readonly OpenRollup[] = [],
    startMicros: number | null = null,
    /** How far a call's time may be from the wall clock when it is recorded (see {@link judgeTime}). */
    private readonly bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
  ) {
    this.state = new PartitionState(settings, {
      version: 3,
      maxEventTimeMicros: startMicros,
      // Windows a previous process closed are not revised (their content is not known here).
      revisableAfterMicros: startMicros === null ? null : startMicros - settings.graceMicros,
      windows: restored,
      alerts: { active: [] },
    });
  }

  /**
   * Counts a call (or marks it late) and closes what its time passes. `nowMs` is the wall clock
   * when the call was recorded, its "log time": a call that ends more than the skew bound after
   * it (a host clock that is wrong, a call dated 2100) is refused by the same rule as the
   * processor's ({@link judgeTime}) and changes nothing — it would close every open window and
   * make every later call late — and `rejected` says why.
   */
  record(
    event: ModelCallEvent,
    nowMs: number,
  ): { readonly outputs: PartitionOutput[]; readonly rejected?: TimeRejection } {
    const rejected = judgeTime({ type: "event", event }, nowMs, this.bounds);
    if (rejected) return { outputs: [], rejected };
    return { outputs: this.state.apply({ type: "event", event }) };
  }

  /** The wall clock says `nowMicros`: closes every window the watermark passes. */
  tick(nowMicros: number): PartitionOutput[] {
    return this.state.apply({ type: "tick", eventTimeMicros: nowMicros });
  }

  /** Closes every open window (at shutdown). */
  flush(): PartitionOutput[] {
    return this.state.apply({ type: "flush" });
  }

  /** The state as plain data: open windows as rollups, event time, firing incidents. */
  snapshot(): PartitionSnapshot {
    return this.state.snapshot();
  }

  /** The open windows' rollups as they stand (partial rows), services in name order. */
  openRollups(): OpenRollup[] {
    return this.state.snapshot().windows.slice();
  }

  /** The incidents firing for `service` as of the windows closed so far. */
  firing(service: string): FiringIncident[] {
    return this.state.snapshot().alerts.active.filter((alert) => alert.service === service);
  }

  /**
   * The incidents that will be firing for `service` once the open windows close as they stand now
   * (no more calls): the windows closed so far, then the open ones judged on a copy of the state.
   */
  firingOnceClosed(service: string): FiringIncident[] {
    const copy = new PartitionState(this.settings, this.state.snapshot());
    copy.apply({ type: "flush" });
    return copy.snapshot().alerts.active.filter((alert) => alert.service === service);
  }
}
