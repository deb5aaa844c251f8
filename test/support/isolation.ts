/**
 * Per-file isolation: every test file gets its own topics, consumer groups, registry subjects and
 * PostgreSQL database, so files run in parallel and re-run cleanly on the same services.
 */
import { randomBytes } from "node:crypto";
import { basename } from "node:path";

import { Kafka, logLevel, type Admin } from "kafkajs";
import pg from "pg";
import { afterAll, beforeAll, expect, inject } from "vitest";

import { awaitLeaders } from "../../kafka/index.js";
import type { OpsLogger } from "../../ops/index.js";
import type { ServiceEndpoints } from "./endpoints.js";

/** The services the global setup resolved. */
export function services(): ServiceEndpoints {
  return inject("services");
}

/**
 * A name no other test file or run uses: `<prefix>-<file>-<random>`, safe for topics, groups,
 * subjects and (lower-cased, `_` for `-`) database names.
 */
export function uniqueName(prefix: string): string {
  const file = basename(expect.getState().testPath ?? "file")
    .replace(/\.(unit|int|e2e)\.test\.ts$/, "")
    .replace(/[^A-Za-z0-9]+/g, "-")
    .slice(0, 24);
  return `${prefix}-${file}-${randomBytes(4).toString("hex")}`;
}

/** A kafkajs client for tests (the shared broker unless told), quiet unless something fails. */
export function testKafka(clientId = uniqueName("test"), brokers = services().kafkaBrokers): Kafka {
  return new Kafka({
    clientId,
    brokers: brokers.split(","),
    logLevel: logLevel.ERROR,
    retry: { retries: 5 },
  });
}

/**
 * Creates topics and waits for their leaders (as the product does: kafkajs's own wait gives up at
 * the first "does not host this topic-partition" of a broker still taking the topic in).
 */
export async function createTopics(
  admin: Admin,
  topics: readonly { topic: string; numPartitions?: number; config?: Record<string, string> }[],
): Promise<void> {
  await admin.createTopics({
    waitForLeaders: false,
    topics: topics.map(({ topic, numPartitions, config }) => ({
      topic,
      numPartitions: numPartitions ?? 1,
      configEntries: Object.entries(config ?? {}).map(([name, value]) => ({ name, value })),
    })),
  });
  await awaitLeaders(
    admin,
    topics.map(({ topic }) => topic),
  );
}

/** A database of this test file's own, created on the test PostgreSQL server. */
export interface FreshDatabase {
  /** Connection string of the new database. */
  readonly url: string;
  readonly name: string;
}

/** Creates an empty database; `dropDatabase` removes it. */
export async function createDatabase(prefix = "mcpo_t"): Promise<FreshDatabase> {
  const name = uniqueName(prefix).toLowerCase().replace(/-/g, "_").slice(0, 63);
  await withAdminClient(async (client) => {
    await client.query(`create database ${pg.escapeIdentifier(name)}`);
  });
  const url = new URL(services().databaseUrl);
  url.pathname = `/${name}`;
  return { url: url.toString(), name };
}

export async function dropDatabase(database: FreshDatabase): Promise<void> {
  await withAdminClient(async (client) => {
    await client.query(
      `drop database if exists ${pg.escapeIdentifier(database.name)} with (force)`,
    );
  });
}

/**
 * Registers hooks that give the calling test file a fresh database for its lifetime.
 * Read `.current` inside tests (it is set in `beforeAll`).
 */
export function useFreshDatabase(prefix?: string): { readonly current: FreshDatabase } {
  const holder: { current: FreshDatabase | undefined } = { current: undefined };
  beforeAll(async () => {
    holder.current = await createDatabase(prefix);
  });
  afterAll(async () => {
    if (holder.current) await dropDatabase(holder.current);
  });
  return {
    get current(): FreshDatabase {
      if (!holder.current) throw new Error("useFreshDatabase: read .current inside a test or hook");
      return holder.current;
    },
  };
}

async function withAdminClient<T>(work: (client: pg.Client) => Promise<T>): Promise<T> {
  const url = new URL(services().databaseUrl);
  url.pathname = "/postgres";
  const client = new pg.Client({ connectionString: url.toString() });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

/** A logger that drops everything, for processors and sinks whose logs a test does not read. */
export const quietLogger: OpsLogger = Object.freeze({
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
});

/** A logger that keeps every line it is told, for tests that assert what a service said. */
export function recordingLogger(): OpsLogger & {
  readonly lines: { level: string; msg: string; fields: object }[];
} {
  const lines: { level: string; msg: string; fields: object }[] = [];
  const log =
    (level: string) =>
    (msg: string, fields: object = {}): void => {
      lines.push({ level, msg, fields });
    };
  return { lines, info: log("info"), warn: log("warn"), error: log("error") };
}
