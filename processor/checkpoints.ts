/**
 * Partition checkpoints in a compacted topic, keyed by group, topic and partition. A checkpoint
 * is a partition's state after it processed every record before `nextOffset`: a pure function of
 * that prefix of the log, so any checkpoint is a valid place to restart, whoever wrote it.
 */
import { readTopicToEnd, type KafkaSettings, type RecordProducer } from "../kafka/index.js";
import type { PartitionSnapshot } from "./partition.js";

export interface Checkpoint {
  readonly version: 1;
  readonly group: string;
  readonly topic: string;
  readonly partition: number;
  /** The first offset not yet in `state`. */
  readonly nextOffset: string;
  readonly state: PartitionSnapshot;
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
    typeof candidate.state === "object" &&
    (candidate.state as { version?: unknown }).version === 1
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
      if (!record.key?.toString().startsWith(prefix) || !record.value) continue;
      let parsed: unknown;
      try {
        parsed = JSON.parse(record.value.toString("utf8"));
      } catch {
        continue; // not ours, or damaged: a checkpoint is an optimisation, the log is the truth
      }
      if (!isCheckpoint(parsed) || parsed.group !== group || parsed.topic !== topic) continue;
      const current = best.get(parsed.partition);
      if (!current || BigInt(parsed.nextOffset) >= BigInt(current.nextOffset))
        best.set(parsed.partition, parsed);
    }
    return best;
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
