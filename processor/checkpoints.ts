/**
 * Partition checkpoints in a compacted topic, keyed by group, topic and partition. A checkpoint
 * is a partition's state after it processed every record before `nextOffset`: a pure function of
 * that prefix of the log, so any checkpoint is a valid place to restart, whoever wrote it.
 *
 * The same topic holds each input topic's layout (key `layout|<topic>`): how many home partitions
 * its services are spread over. It is fixed when a processor first meets the topic, for every
 * group and every replay, so partitions added later do not move a service's home.
 */
import {
  connectAdmin,
  partitionForKey,
  readTopicToEnd,
  TopicReplacedError,
  type ConsumedRecord,
  type KafkaSettings,
  type RecordProducer,
} from "../kafka/index.js";
import { ObservatoryError, retry, type RetryPolicy } from "../config/index.js";
import type { PartitionSnapshot } from "./partition.js";

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

function parseJson(record: ConsumedRecord): unknown {
  if (!record.value) return undefined;
  try {
    return JSON.parse(record.value.toString("utf8"));
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
    const parsed = parseJson(record);
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
    [1, 2, 3].includes((candidate.state as { version?: unknown }).version as number)
  );
}

export class CheckpointStore {
  constructor(
    private readonly settings: KafkaSettings,
    readonly topic: string,
    private readonly producer: RecordProducer,
  ) {}

  /**
   * The newest checkpoint of each partition of `topic` for `group`: the one with the highest
   * `nextOffset` (a late write from an old owner cannot move a partition back).
   */
  async loadAll(group: string, topic: string): Promise<Map<number, Checkpoint>> {
    const best = new Map<number, Checkpoint>();
    const prefix = `${group}|${topic}|`;
    for (const record of await readTopicToEnd(this.settings, this.topic)) {
      if (!record.key?.toString().startsWith(prefix)) continue;
      if (record.value === null) {
        // A tombstone (--reset-state): what was written for the partition before it is gone.
        const partition = Number(record.key.toString().slice(prefix.length));
        if (Number.isInteger(partition)) best.delete(partition);
        continue;
      }
      const parsed = parseJson(record);
      if (!isCheckpoint(parsed) || parsed.group !== group || parsed.topic !== topic) continue;
      const current = best.get(parsed.partition);
      if (!current || BigInt(parsed.nextOffset) >= BigInt(current.nextOffset))
        best.set(parsed.partition, parsed);
    }
    return best;
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
   * the older records are gone); how many partitions had one.
   */
  async discard(group: string, topic: string): Promise<number> {
    const partitions = [...(await this.loadAll(group, topic)).keys()];
    if (partitions.length > 0)
      await this.producer.send(
        this.topic,
        partitions.map((partition) => ({
          key: checkpointKey(group, topic, partition),
          value: null,
        })),
        "none",
      );
    return partitions.length;
  }

  /** Writes a checkpoint and resolves once the broker acknowledged it. */
  async save(checkpoint: Checkpoint): Promise<void> {
    await this.producer.send(
      this.topic,
      [
        {
          key: checkpointKey(checkpoint.group, checkpoint.topic, checkpoint.partition),
          value: Buffer.from(JSON.stringify(checkpoint)),
        },
      ],
      "gzip",
    );
  }
}
