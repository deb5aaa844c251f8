/**
 * Waiting for the sink by its own record of progress: the next offsets it stores in PostgreSQL
 * (consumed_offsets, written in the same transaction as the rows) against the topics' end offsets.
 */
import type { Admin } from "kafkajs";
import type pg from "pg";

import { waitFor } from "./wait.js";

/** `topic|partition` → offset, as text. */
export type Positions = Record<string, string>;

/** The end (high-watermark) offsets of every partition of `topics`. */
export async function endOffsets(admin: Admin, topics: readonly string[]): Promise<Positions> {
  const result: Positions = {};
  for (const topic of topics)
    for (const { partition, high } of await admin.fetchTopicOffsets(topic))
      result[`${topic}|${partition}`] = high;
  return result;
}

/** The next offsets a sink group stored in PostgreSQL for `topics` ("0" where it stored none). */
export async function storedPositions(
  client: pg.Client | pg.Pool,
  group: string,
  ends: Positions,
): Promise<Positions> {
  const { rows } = await client.query<{ topic: string; partition: number; next_offset: string }>(
    "select topic, partition, next_offset::text from consumed_offsets where consumer_group = $1",
    [group],
  );
  const stored: Positions = Object.fromEntries(Object.keys(ends).map((key) => [key, "0"]));
  for (const row of rows) stored[`${row.topic}|${row.partition}`] = row.next_offset;
  return stored;
}

/**
 * Waits until the group's stored positions equal the end offsets of `topics` taken now (so
 * produce everything first), and returns them.
 */
export async function waitForStoredPositions(
  admin: Admin,
  client: pg.Client | pg.Pool,
  group: string,
  topics: readonly string[],
  timeoutMs = 90_000,
): Promise<Positions> {
  const ends = await endOffsets(admin, topics);
  await waitFor(
    `sink group ${group}'s stored positions to reach the end offsets ${JSON.stringify(ends)}`,
    () => storedPositions(client, group, ends),
    (stored) => Object.entries(ends).every(([key, end]) => stored[key] === end),
    { timeoutMs, intervalMs: 200 },
  );
  return ends;
}
