/**
 * Partition checkpoints in a compacted topic, keyed by group, topic and partition. A checkpoint
 * is a partition's state after it processed every record before `nextOffset`: a pure function of
 * that prefix of the log, so any checkpoint is a valid place to restart, whoever wrote it.
 *
 * A checkpoint is written gzipped (JSON inside). One too large for a record (over
 * {@link MAX_CHECKPOINT_RECORD_BYTES} gzipped) is split: its parts go first, each under a key of
 * its own that names the checkpoint's generation (`group|topic|partition|part|<generation>|<i>`),
 * then a small manifest under the partition's key names the generation and how many parts it has.
 * A reader combines only the parts a manifest names, and only when every one of them was read
 * before it, so parts of two generations are never mixed and a writer that crashed while writing
 * parts leaves the previous checkpoint in force (its parts are kept until a newer manifest is
 * acknowledged, then tombstoned). Checkpoints written as plain JSON by earlier versions are read.
 *
 * The same topic holds each input topic's layout (key `layout|<topic>`): how many home partitions
 * its services are spread over. It is fixed when a processor first meets the topic, for every
 * group and every replay, so partitions added later do not move a service's home.
 */
import { randomBytes } from "node:crypto";
import { promisify } from "node:util";
import { gunzipSync, gzip } from "node:zlib";

import {
  connectAdmin,
  partitionForKey,
  readTopicToEnd,
  TopicReplacedError,
  type ConsumedRecord,
  type KafkaSettings,
  type RecordProducer,
} from "../kafka/index.js";
import { bigintReplacer } from "../avro/bigint.js";
import type { MetricRollup } from "../avro/generated.js";
import { ObservatoryError, retry, type RetryPolicy } from "../config/index.js";
import { countsFrom } from "../metrics/index.js";
import type { PartitionSnapshot } from "./partition.js";

const gzipAsync = promisify(gzip);

/**
 * The most bytes of a checkpoint record's value: under the broker's default message limit
 * (`message.max.bytes`, 1 048 588 bytes) with room for the key and the record batch's overhead.
 */
export const MAX_CHECKPOINT_RECORD_BYTES = 900_000;

/** Writes at start-up, to topics that may have just been created: up to 8 tries, 0.1 s to 2 s. */
export const STARTUP_RETRY: RetryPolicy = { maxAttempts: 8, baseDelayMs: 100, maxDelayMs: 2000 };

/** The checkpoint topic of a topic prefix. */
export function checkpointTopic(topicPrefix: string): string {
  return `${topicPrefix}processor-checkpoints`;
}

/** How an input topic's services are spread over partitions. */
export interface Layout {
  readonly version: 1;
  readonly topic: string;
  /**
   * A service's home partition is where its name, as a key, lands among this many partitions
   * (the producers' default partitioner): its windows and alerts are kept there.
   */
  readonly homePartitions: number;
}

export function layoutKey(topic: string): string {
  return `layout|${topic}`;
}

function isLayout(value: unknown, topic: string): value is Layout {
  if (typeof value !== "object" || value === null) return false;
  const candidate = value as Partial<Layout>;
  return (
    candidate.version === 1 &&
    candidate.topic === topic &&
    typeof candidate.homePartitions === "number" &&
    Number.isInteger(candidate.homePartitions) &&
    candidate.homePartitions > 0
  );
}

function parseJson(value: Buffer | null): unknown {
  if (!value) return undefined;
  try {
    return JSON.parse(value.toString("utf8"));
  } catch {
    return undefined; // not ours, or damaged: a checkpoint is an optimisation, the log is the truth
  }
}

/** The topic's layout, from the records of a checkpoint topic: the newest (what compaction keeps). */
export function layoutIn(records: readonly ConsumedRecord[], topic: string): Layout | undefined {
  const key = layoutKey(topic);
  let layout: Layout | undefined;
  for (const record of records) {
    if (record.key?.toString() !== key) continue;
    const parsed = parseJson(record.value);
    if (isLayout(parsed, topic)) layout = parsed;
  }
  return layout;
}

/**
 * Reads the topic's layout from the checkpoint topic (undefined: none written yet, or no
 * processor has run under this prefix: then there is no checkpoint topic either).
 */
export async function readLayout(
  settings: KafkaSettings,
  checkpoints: string,
  topic: string,
): Promise<Layout | undefined> {
  const admin = await connectAdmin(settings);
  try {
    if (!(await admin.exists(checkpoints))) return undefined;
  } finally {
    await admin.close();
  }
  return layoutIn(await readTopicToEnd(settings, checkpoints), topic);
}

/** Each service's home partition under `homePartitions` (memoised: called once per event). */
export function homeOf(homePartitions: number): (service: string) => number {
  const homes = new Map<string, number>();
  return (service) => {
    let home = homes.get(service);
    if (home === undefined) {
      home = partitionForKey(service, homePartitions);
      if (homes.size >= 100_000) homes.clear();
      homes.set(service, home);
    }
    return home;
  };
}

export interface Checkpoint {
  readonly version: 1;
  readonly group: string;
  readonly topic: string;
  readonly partition: number;
  /** The first offset not yet in `state`. */
  readonly nextOffset: string;
  readonly state: PartitionSnapshot;
  /** The window size and grace the state was built with, µs (absent in older checkpoints). */
  readonly window?: { readonly sizeMicros: number; readonly graceMicros: number };
  /**
   * The id of the topic the state was built from (see `fetchTopicIds`; absent in older
   * checkpoints): a topic deleted and created again under the same name has another one.
   */
  readonly topicId?: string;
}

/**
 * The checkpoints built from another topic than the one of this name now: their topic id is not
 * `topicId`. Checkpoints without an id (written before ids were) are taken as this topic's.
 */
export function checkpointsOfOtherTopic<C extends Pick<Checkpoint, "topicId">>(
  checkpoints: Iterable<C>,
  topicId: string,
): C[] {
  return [...checkpoints].filter(
    (checkpoint) => checkpoint.topicId !== undefined && checkpoint.topicId !== topicId,
  );
}

/**
 * Refuses checkpoints built from a topic deleted since and created again under the same name (or
 * from another cluster's topic): restoring them would skip each partition's first records of the
 * new topic as already processed.
 *
 * @param checkpoints the group's checkpoints of `topic` (e.g. from {@link CheckpointStore.loadAll}).
 * @param topicId the topic's id now.
 * @throws {TopicReplacedError} naming the topic, the stored id and the current one, and the way out.
 */
export function checkCheckpointTopic(
  group: string,
  topic: string,
  checkpoints: Iterable<Pick<Checkpoint, "topicId">>,
  topicId: string,
): void {
  const other = checkpointsOfOtherTopic(checkpoints, topicId)[0];
  if (other?.topicId === undefined) return;
  throw new TopicReplacedError(
    `group ${group}'s checkpoints`,
    [{ topic, storedId: other.topicId, currentId: topicId }],
    "To rebuild the group's state from the new topic's start, run the processor with --reset-state " +
      "(once, every member of the group stopped), or start a new group (--group)",
  );
}

/** A group's checkpoints were built with other window settings than this processor's. */
export class StateMismatchError extends ObservatoryError {
  constructor(
    readonly group: string,
    readonly stored: { readonly sizeMicros: number; readonly graceMicros: number },
    readonly wanted: { readonly sizeMicros: number; readonly graceMicros: number },
  ) {
    const show = (window: { sizeMicros: number; graceMicros: number }) =>
      `window ${window.sizeMicros / 1000} ms, grace ${window.graceMicros / 1000} ms`;
    super(
      "STATE_MISMATCH",
      `group ${group}'s checkpoints were built with ${show(stored)}; this processor has ${show(wanted)}. ` +
        "Its open windows cannot be continued with other settings: run with the group's settings, " +
        "or rebuild the group's state from the log with the new ones (--reset-state, once, every member of the group stopped), " +
        "or start a new group (--group)",
    );
    this.name = "StateMismatchError";
  }
}

/** The window settings a checkpoint's state was built with: stated, or read off its windows. */
export function checkpointWindow(
  checkpoint: Checkpoint,
): { sizeMicros: number; graceMicros: number | undefined } | undefined {
  if (checkpoint.window) return checkpoint.window;
  const open = checkpoint.state.windows[0];
  return open
    ? { sizeMicros: open.window_end - open.window_start, graceMicros: undefined }
    : undefined;
}

export function checkpointKey(group: string, topic: string, partition: number): string {
  return `${group}|${topic}|${partition}`;
}

function isCheckpoint(value: unknown): value is Checkpoint {
  if (typeof value !== "object" || value === null) return false;
  const candidate = value as Partial<Checkpoint>;
  return (
    candidate.version === 1 &&
    typeof candidate.group === "string" &&
    typeof candidate.topic === "string" &&
    typeof candidate.partition === "number" &&
    typeof candidate.nextOffset === "string" &&
    /^\d+$/.test(candidate.nextOffset) &&
    (candidate.topicId === undefined || typeof candidate.topicId === "string") &&
    typeof candidate.state === "object" &&
    [1, 2, 3, 4].includes((candidate.state as { version?: unknown }).version as number)
  );
}

/**
 * A checkpoint as JSON. The window sums of its rollups (bigints) are decimal strings: JSON
 * numbers past 2^53 would not read back exact.
 */
export function serializeCheckpoint(checkpoint: Checkpoint): string {
  return JSON.stringify(checkpoint, bigintReplacer);
}

/**
 * A checkpoint from its parsed JSON, its rollups' sums as bigints again (decimal strings, or the
 * numbers earlier versions wrote); undefined when the value is not a checkpoint.
 */
export function parseCheckpoint(value: unknown): Checkpoint | undefined {
  if (!isCheckpoint(value)) return undefined;
  try {
    return { ...value, state: snapshotFromJson(value.state) };
  } catch {
    return undefined; // damaged: the log is the truth
  }
}

/**
 * A partition snapshot from its parsed JSON (as {@link serializeCheckpoint} writes it): its
 * rollups' sums as bigints again.
 *
 * @throws {RangeError} when a count is not an integer, or a sum not a 64-bit integer.
 */
export function snapshotFromJson(state: PartitionSnapshot): PartitionSnapshot {
  const exact = (rollup: MetricRollup): MetricRollup => ({
    ...rollup,
    counts: countsFrom(rollup.counts),
  });
  return {
    ...state,
    windows: state.windows.map(exact),
    ...(state.retained === undefined
      ? {}
      : {
          retained: state.retained.map((entry) => ({
            ...entry,
            rollups: entry.rollups.map(exact),
            pending: entry.pending.map(exact),
          })),
        }),
  };
}

/** The record under a partition's key when its checkpoint is written in parts. */
interface CheckpointManifest {
  readonly version: 1;
  readonly kind: "manifest";
  readonly group: string;
  readonly topic: string;
  readonly partition: number;
  readonly nextOffset: string;
  /** Names the parts' keys: unique per checkpoint written. */
  readonly generation: string;
  readonly parts: number;
  /** The gzipped checkpoint's length: the parts' lengths add up to it. */
  readonly bytes: number;
}

function isManifest(value: unknown): value is CheckpointManifest {
  if (typeof value !== "object" || value === null) return false;
  const candidate = value as Partial<CheckpointManifest>;
  return (
    candidate.version === 1 &&
    candidate.kind === "manifest" &&
    typeof candidate.group === "string" &&
    typeof candidate.topic === "string" &&
    typeof candidate.partition === "number" &&
    typeof candidate.nextOffset === "string" &&
    typeof candidate.generation === "string" &&
    GENERATION.test(candidate.generation) &&
    typeof candidate.parts === "number" &&
    Number.isInteger(candidate.parts) &&
    candidate.parts > 0 &&
    typeof candidate.bytes === "number"
  );
}

const GENERATION = /^[0-9a-z-]+$/;
/** After `group|topic|`: a partition's key, or one of its checkpoints' parts. */
const PARTITION_SUFFIX = /^(\d+)$/;
const PART_SUFFIX = /^(\d+)\|part\|([0-9a-z-]+)\|(\d+)$/;

/** The key of part `index` of a checkpoint of generation `generation`. */
export function checkpointPartKey(
  group: string,
  topic: string,
  partition: number,
  generation: string,
  index: number,
): string {
  return `${checkpointKey(group, topic, partition)}|part|${generation}|${index}`;
}

function isGzip(value: Buffer): boolean {
  return value.length >= 2 && value[0] === 0x1f && value[1] === 0x8b;
}

/** A gzipped JSON value, or undefined when it is damaged. */
function gunzipJson(value: Buffer): unknown {
  try {
    return JSON.parse(gunzipSync(value).toString("utf8"));
  } catch {
    return undefined;
  }
}

/** What one read of the checkpoint topic found for a group and topic. */
interface Scan {
  /** Each partition's newest checkpoint, with the part keys it was read from. */
  readonly best: Map<number, { checkpoint: Checkpoint; partKeys: readonly string[] }>;
  /** Every part key holding a value at the end of the read. */
  readonly partKeys: Set<string>;
}

export class CheckpointStore {
  /**
   * By partition key: part keys no newer record names (the parts of the checkpoint in force when
   * a newer one was written, or of one written in force now), tombstoned once a newer checkpoint
   * is acknowledged.
   */
  private readonly superseded = new Map<string, Set<string>>();
  /** By partition key: the parts of the checkpoint in force (read or written by this store). */
  private readonly inForce = new Map<string, readonly string[]>();

  /**
   * @param maxRecordBytes the most bytes of a checkpoint record's value (default
   *   {@link MAX_CHECKPOINT_RECORD_BYTES}); a larger gzipped checkpoint is written in parts.
   */
  constructor(
    private readonly settings: KafkaSettings,
    readonly topic: string,
    private readonly producer: RecordProducer,
    private readonly maxRecordBytes: number = MAX_CHECKPOINT_RECORD_BYTES,
  ) {
    if (!Number.isInteger(maxRecordBytes) || maxRecordBytes < 1024)
      throw new RangeError(
        `a checkpoint record's size bound must be an integer of at least 1024 bytes (got ${maxRecordBytes})`,
      );
  }

  /**
   * The newest checkpoint of each partition of `topic` for `group`: the one with the highest
   * `nextOffset` (a late write from an old owner cannot move a partition back).
   */
  async loadAll(group: string, topic: string): Promise<Map<number, Checkpoint>> {
    const { best } = await this.scan(group, topic);
    for (const [partition, entry] of best)
      this.inForce.set(checkpointKey(group, topic, partition), entry.partKeys);
    return new Map([...best].map(([partition, entry]) => [partition, entry.checkpoint]));
  }

  private async scan(group: string, topic: string): Promise<Scan> {
    const best = new Map<number, { checkpoint: Checkpoint; partKeys: readonly string[] }>();
    const parts = new Map<string, Buffer>();
    const prefix = `${group}|${topic}|`;
    for (const record of await readTopicToEnd(this.settings, this.topic)) {
      const key = record.key?.toString();
      if (key === undefined || !key.startsWith(prefix)) continue;
      const suffix = key.slice(prefix.length);
      if (PART_SUFFIX.test(suffix)) {
        if (record.value === null) parts.delete(key);
        else parts.set(key, record.value);
        continue;
      }
      const partitionMatch = PARTITION_SUFFIX.exec(suffix);
      if (!partitionMatch) continue;
      if (record.value === null) {
        // A tombstone (--reset-state): what was written for the partition before it is gone.
        best.delete(Number(partitionMatch[1]));
        continue;
      }
      const read = this.decode(record.value, group, topic, parts);
      if (!read) continue;
      const parsed = read.checkpoint;
      if (parsed.group !== group || parsed.topic !== topic || suffix !== String(parsed.partition))
        continue;
      const current = best.get(parsed.partition);
      if (!current || BigInt(parsed.nextOffset) >= BigInt(current.checkpoint.nextOffset))
        best.set(parsed.partition, read);
    }
    return { best, partKeys: new Set(parts.keys()) };
  }

  /**
   * A partition key's record: a gzipped checkpoint, a manifest whose parts were all read before
   * it (`parts`, by key), or a plain JSON checkpoint (earlier versions); undefined for anything
   * else (damaged, or parts missing: a checkpoint is an optimisation, the log is the truth).
   */
  private decode(
    value: Buffer,
    group: string,
    topic: string,
    parts: ReadonlyMap<string, Buffer>,
  ): { checkpoint: Checkpoint; partKeys: readonly string[] } | undefined {
    if (isGzip(value)) {
      const checkpoint = parseCheckpoint(gunzipJson(value));
      return checkpoint ? { checkpoint, partKeys: [] } : undefined;
    }
    const parsed = parseJson(value);
    const plain = parseCheckpoint(parsed);
    if (plain) return { checkpoint: plain, partKeys: [] };
    if (!isManifest(parsed) || parsed.group !== group || parsed.topic !== topic) return undefined;
    const partKeys = Array.from({ length: parsed.parts }, (_, index) =>
      checkpointPartKey(group, topic, parsed.partition, parsed.generation, index),
    );
    const buffers: Buffer[] = [];
    for (const key of partKeys) {
      const part = parts.get(key);
      if (!part) return undefined;
      buffers.push(part);
    }
    const whole = Buffer.concat(buffers);
    if (whole.length !== parsed.bytes) return undefined;
    const checkpoint = parseCheckpoint(gunzipJson(whole));
    return checkpoint !== undefined &&
      checkpoint.partition === parsed.partition &&
      checkpoint.nextOffset === parsed.nextOffset
      ? { checkpoint, partKeys }
      : undefined;
  }

  /**
   * The topic's layout: the one already written, or else `homePartitions`, written now (and read
   * back: of two processors writing at once, both go on with the one written last).
   */
  async layout(topic: string, homePartitions: number): Promise<Layout> {
    const existing = await readLayout(this.settings, this.topic, topic);
    if (existing) return existing;
    const layout: Layout = { version: 1, topic, homePartitions };
    // The topic may have been created a moment ago: its leader can still be moving.
    await retry(
      () =>
        this.producer.send(
          this.topic,
          [{ key: layoutKey(topic), value: Buffer.from(JSON.stringify(layout)) }],
          "none",
        ),
      STARTUP_RETRY,
    );
    return (await readLayout(this.settings, this.topic, topic)) ?? layout;
  }

  /**
   * Discards every checkpoint of `group` for `topic` (tombstones, which compaction keeps until
   * the older records are gone), their parts included; how many partitions had one.
   */
  async discard(group: string, topic: string): Promise<number> {
    const { best, partKeys } = await this.scan(group, topic);
    const partitions = [...best.keys()];
    const keys = [
      ...partKeys,
      ...partitions.map((partition) => checkpointKey(group, topic, partition)),
    ];
    if (keys.length > 0)
      await this.producer.send(
        this.topic,
        keys.map((key) => ({ key, value: null })),
        "none",
      );
    for (const partition of partitions) this.inForce.delete(checkpointKey(group, topic, partition));
    return partitions.length;
  }

  /**
   * Writes a checkpoint and resolves once the broker acknowledged it: gzipped in one record, or
   * in parts and then their manifest when it is larger than the bound. The parts of the
   * checkpoint it replaces are tombstoned afterwards (a failure there only leaves them for the
   * next write to tombstone: nothing names them).
   */
  async save(checkpoint: Checkpoint): Promise<void> {
    const key = checkpointKey(checkpoint.group, checkpoint.topic, checkpoint.partition);
    const gzipped = await gzipAsync(Buffer.from(serializeCheckpoint(checkpoint)));
    let partKeys: string[] = [];
    if (gzipped.length <= this.maxRecordBytes) {
      await this.producer.send(this.topic, [{ key, value: gzipped }], "none");
    } else {
      const generation = `${checkpoint.nextOffset}-${randomBytes(6).toString("hex")}`;
      const parts: { key: string; value: Buffer }[] = [];
      for (let at = 0; at < gzipped.length; at += this.maxRecordBytes)
        parts.push({
          key: checkpointPartKey(
            checkpoint.group,
            checkpoint.topic,
            checkpoint.partition,
            generation,
            parts.length,
          ),
          value: gzipped.subarray(at, at + this.maxRecordBytes),
        });
      partKeys = parts.map((part) => part.key);
      // The parts first: the manifest names only parts already acknowledged.
      await this.producer.send(this.topic, parts, "none");
      const manifest: CheckpointManifest = {
        version: 1,
        kind: "manifest",
        group: checkpoint.group,
        topic: checkpoint.topic,
        partition: checkpoint.partition,
        nextOffset: checkpoint.nextOffset,
        generation,
        parts: parts.length,
        bytes: gzipped.length,
      };
      await this.producer.send(
        this.topic,
        [{ key, value: Buffer.from(JSON.stringify(manifest)) }],
        "none",
      );
    }
    const stale = this.superseded.get(key) ?? new Set<string>();
    for (const part of this.inForce.get(key) ?? []) stale.add(part);
    this.inForce.set(key, partKeys);
    this.superseded.set(key, stale);
    if (stale.size === 0) return;
    try {
      await this.producer.send(
        this.topic,
        [...stale].map((part) => ({ key: part, value: null })),
        "none",
      );
      this.superseded.delete(key);
    } catch {
      // Kept for the next write: stale parts are never read (no manifest names them).
    }
  }
}
