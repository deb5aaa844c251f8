/**
 * Reading exactly what a run added to a topic: take the end offsets before the run, wait until
 * the topic holds the expected number of new records, then read that offset range. Tests that
 * share output topics between runs see only their own run's records this way.
 */
import type { Admin } from "kafkajs";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { METRIC_ROLLUP } from "../../avro/contracts.js";
import type { MetricRollup } from "../../avro/generated.js";
import { streamTopicRanges, type ConsumedRecord } from "../../kafka/index.js";
import { waitFor } from "./wait.js";

/** Each partition's end offset (the next offset to be written). */
export type EndOffsets = ReadonlyMap<number, bigint>;

/** A topic's end offsets now. */
export async function topicEnds(admin: Admin, topic: string): Promise<Map<number, bigint>> {
  const offsets = await admin.fetchTopicOffsets(topic);
  return new Map(offsets.map((entry) => [entry.partition, BigInt(entry.high)]));
}

/** How many records lie between `since` (missing partitions: 0) and `until`. */
export function recordsBetween(since: EndOffsets, until: EndOffsets): number {
  let total = 0n;
  for (const [partition, end] of until) total += end - (since.get(partition) ?? 0n);
  return Number(total);
}

/**
 * Waits until `topic` holds at least `count` records after `since`, and returns its end offsets
 * then (which may hold more: compare with `count` to assert an exact number).
 */
export async function waitForRecords(
  admin: Admin,
  topic: string,
  since: EndOffsets,
  count: number,
  timeoutMs = 120_000,
): Promise<Map<number, bigint>> {
  const ends = await waitFor(
    `${count} new record(s) on ${topic}`,
    async () => {
      const now = await topicEnds(admin, topic);
      return { added: recordsBetween(since, now), ends: [...now] };
    },
    (seen) => seen.added >= count,
    { timeoutMs, intervalMs: 200 },
  );
  return new Map(ends.ends);
}

/** The records of `topic` between `since` (missing partitions: 0) and `until`, per partition in offset order. */
export async function readBetween(
  brokers: string,
  topic: string,
  since: EndOffsets,
  until: EndOffsets,
): Promise<ConsumedRecord[]> {
  const records: ConsumedRecord[] = [];
  await streamTopicRanges(
    { brokers: brokers.split(","), clientId: "mcpo-test-reader" },
    topic,
    [...until].map(([partition, end]) => ({
      partition,
      start: since.get(partition) ?? 0n,
      end,
    })),
    (_partition, batch) => {
      records.push(...batch);
      return Promise.resolve();
    },
  );
  return records;
}

/**
 * Every rollup a prefix's metric-rollups topic holds now, decoded, per partition in offset order
 * (every version of a key: revisions too).
 */
export async function readAllRollups(
  admin: Admin,
  brokers: string,
  registryUrl: string,
  prefix: string,
): Promise<MetricRollup[]> {
  const topic = `${prefix}metric-rollups`;
  const codec = await AvroCodec.register(METRIC_ROLLUP, {
    registryUrl,
    subject: valueSubject(topic),
  });
  const rollups: MetricRollup[] = [];
  for (const record of await readBetween(
    brokers,
    topic,
    new Map(),
    await topicEnds(admin, topic),
  )) {
    const decoded = await codec.decode(record.value ?? Buffer.alloc(0));
    if (!decoded.ok)
      throw new Error(`${topic}[${record.partition}]@${record.offset}: ${decoded.error.message}`);
    rollups.push(decoded.value);
  }
  return rollups;
}
