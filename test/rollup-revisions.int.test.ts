/**
 * Revisions of stored rollups against the real PostgreSQL (and the real Kafka for the sink): a
 * rollup replaces its row only when its revision is the same or higher, on every path that writes
 * metric_rollups — the writer (used by the sink, replays and the PostgresExporter), a replay's
 * finish into the current table, and the sink reading the compacted topic.
 */
import { randomUUID } from "node:crypto";

import type { Admin } from "kafkajs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { METRIC_ROLLUP } from "../avro/contracts.js";
import type { MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { topicNames } from "../config/index.js";
import { rollupEvents, rollupKey } from "../metrics/index.js";
import { listMigrations, migrate } from "../sink/migrate.js";
import { finishRebuild, prepareRebuild, verifyRollups } from "../sink/rebuild.js";
import { Sink } from "../sink/sink.js";
import { COUNT_COLUMNS, PostgresWriter } from "../sink/writer.js";
import { sampleEvent } from "./support/events.js";
import {
  createDatabase,
  createTopics,
  dropDatabase,
  quietLogger,
  services,
  testKafka,
  uniqueName,
  useFreshDatabase,
  type FreshDatabase,
} from "./support/isolation.js";
import { useFreshWriter } from "./support/fresh-writer.js";
import { expectMatchesOracle, oracleRollups } from "./support/oracle.js";
import { waitForStoredPositions } from "./support/sink-positions.js";
import { storedRollups } from "./support/stored-rollups.js";
import { waitFor } from "./support/wait.js";

const SECOND = 1_000_000;
const MINUTE = 60 * SECOND;
/** A minute boundary. */
const ORIGIN = 1_764_000_000 * SECOND;

/** A call of `service` ending `atSecond` after ORIGIN, on one of two models. */
function call(service: string, atSecond: number, status: "ok" | "error" = "ok"): ModelCallEvent {
  const end = ORIGIN + atSecond * SECOND;
  return sampleEvent({
    event_id: randomUUID(),
    service,
    model: atSecond % 2 === 0 ? "gpt-4o" : "gpt-4o-mini",
    start_time: end - (1 + (atSecond % 7)) * 1000,
    end_time: end,
    status,
    error_type: status === "error" ? "timeout" : null,
  });
}

/**
 * A window of `service` as first emitted (20 calls, revision 0), and its complete content after
 * 3 more calls (errors) arrived late: the events and the rollups of each.
 */
function revisedWindow(service: string) {
  const onTime = Array.from({ length: 20 }, (_, i) => call(service, i * 3));
  const late = [call(service, 10, "error"), call(service, 31, "error"), call(service, 50, "error")];
  const all = [...onTime, ...late];
  const withRevision = (events: readonly ModelCallEvent[], revision: number): MetricRollup[] =>
    rollupEvents(events, MINUTE).map((rollup) => ({ ...rollup, revision }));
  return {
    onTime,
    all,
    first: withRevision(onTime, 0),
    revised: withRevision(all, 1),
    withRevision,
  };
}

/** Every column of the service's rows, `updated_at` included (unchanged: no update at all). */
async function rawRows(pool: pg.Pool, table: string, service: string): Promise<unknown[]> {
  const { rows } = await pool.query<{ row: unknown }>(
    `select to_jsonb(r) as row from ${table} r where service = $1 order by model, window_start`,
    [service],
  );
  return rows.map((row) => row.row);
}

/** The stored revision of each of the service's rows, by `model` ("(total)": the service total). */
async function revisions(pool: pg.Pool, service: string): Promise<Record<string, number>> {
  const { rows } = await pool.query<{ model: string; revision: number }>(
    `select case when scope = 'service' then '(total)' else model end as model, revision
       from metric_rollups where service = $1 order by scope desc, model`,
    [service],
  );
  return Object.fromEntries(rows.map((row) => [row.model, row.revision]));
}

const where = (service: string): string => `service = '${service}'`;

describe("stored rollup revisions", () => {
  const fresh = useFreshWriter("mcpo_revs");
  let pool: pg.Pool;
  let writer: PostgresWriter;

  beforeAll(() => {
    ({ pool, writer } = fresh);
  });

  it("revision 1 of a key replaces revision 0's row with its counts", async () => {
    const window = revisedWindow("svc-replace");
    expect(window.first).toHaveLength(3); // the total and two models
    expect(await writer.write({ rollups: window.first })).toMatchObject({
      rollupsUpserted: 3,
      rollupsSuperseded: 0,
    });
    expectMatchesOracle(
      await storedRollups(pool, "metric_rollups", where("svc-replace")),
      oracleRollups(window.onTime, MINUTE),
      "revision 0",
    );
    expect(await revisions(pool, "svc-replace")).toEqual({
      "(total)": 0,
      "gpt-4o": 0,
      "gpt-4o-mini": 0,
    });

    expect(await writer.write({ rollups: window.revised })).toMatchObject({
      rollupsUpserted: 3,
      rollupsSuperseded: 0,
    });
    const stored = await storedRollups(pool, "metric_rollups", where("svc-replace"));
    expect(stored).toHaveLength(3);
    expectMatchesOracle(stored, oracleRollups(window.all, MINUTE), "revision 1");
    expect(stored.find((row) => row.model === null)?.counts).toMatchObject({
      calls: "23",
      errors: "3",
    });
    expect(await revisions(pool, "svc-replace")).toEqual({
      "(total)": 1,
      "gpt-4o": 1,
      "gpt-4o-mini": 1,
    });
  });

  it("revision 0 written after revision 1 leaves the revision-1 row exactly as it was", async () => {
    const window = revisedWindow("svc-older");
    await writer.write({ rollups: window.revised });
    const before = await rawRows(pool, "metric_rollups", "svc-older");
    expect(before).toHaveLength(3);
    expect(await writer.write({ rollups: window.first })).toMatchObject({
      rollupsUpserted: 0,
      rollupsSuperseded: 3,
    });
    // updated_at included: the rows were not touched at all.
    expect(await rawRows(pool, "metric_rollups", "svc-older")).toEqual(before);
    expectMatchesOracle(
      await storedRollups(pool, "metric_rollups", where("svc-older")),
      oracleRollups(window.all, MINUTE),
      "after an older revision",
    );
  });

  it("the same revision written twice is idempotent", async () => {
    const window = revisedWindow("svc-again");
    await writer.write({ rollups: window.revised });
    const once = await storedRollups(pool, "metric_rollups", where("svc-again"));
    expect(await writer.write({ rollups: window.revised })).toMatchObject({
      rollupsUpserted: 3,
      rollupsSuperseded: 0,
    });
    const twice = await storedRollups(pool, "metric_rollups", where("svc-again"));
    expect(twice).toEqual(once);
    expectMatchesOracle(twice, oracleRollups(window.all, MINUTE), "written twice");
    expect(await revisions(pool, "svc-again")).toEqual({
      "(total)": 1,
      "gpt-4o": 1,
      "gpt-4o-mini": 1,
    });
  });

  it("keeps the highest revision of a key within one batch, in either order", async () => {
    for (const [service, order] of [
      ["svc-batch-up", "older first"],
      ["svc-batch-down", "newer first"],
    ] as const) {
      const window = revisedWindow(service);
      const revised = window.withRevision(window.all, 2);
      const batch =
        order === "older first" ? [...window.first, ...revised] : [...revised, ...window.first];
      expect(await writer.write({ rollups: batch }), order).toMatchObject({
        rollupsUpserted: 3,
        rollupsSuperseded: 3,
      });
      expect(await revisions(pool, service), order).toEqual({
        "(total)": 2,
        "gpt-4o": 2,
        "gpt-4o-mini": 2,
      });
      expectMatchesOracle(
        await storedRollups(pool, "metric_rollups", where(service)),
        oracleRollups(window.all, MINUTE),
        order,
      );
    }
  });

  it("reads rollups back with their revision (openRollups)", async () => {
    const window = revisedWindow("svc-read");
    await writer.write({ rollups: window.revised });
    const read = (await writer.openRollups(ORIGIN)).filter((r) => r.service === "svc-read");
    expect(read).toEqual(window.revised);
    expect(read.map((r) => r.revision)).toEqual([1, 1, 1]);
  });

  it("a replay's finish into the current table replaces lower revisions only; --verify names the revision", async () => {
    const kept = revisedWindow("svc-rebuild-kept");
    const raised = revisedWindow("svc-rebuild-raised");
    await writer.write({ rollups: [...kept.revised, ...raised.first] });
    const keptBefore = await rawRows(pool, "metric_rollups", "svc-rebuild-kept");

    // The rebuild holds revision 0 of the first service (lower than stored) and revision 1 of
    // the second (higher than stored).
    const target = await prepareRebuild(pool, "current");
    await new PostgresWriter(pool, "unnest", target.write).write({
      rollups: [...kept.first, ...raised.revised],
    });
    const verified = await verifyRollups(pool, target.write.rollups, target.stored, {
      services: ["svc-rebuild-kept", "svc-rebuild-raised"],
    });
    expect(verified.differenceCount).toBe(6);
    for (const difference of verified.differences)
      expect(difference.columns, difference.service).toEqual(
        expect.arrayContaining(["calls", "errors", "revision"]),
      );

    expect(await finishRebuild(pool, target)).toBe(3);
    expect(await rawRows(pool, "metric_rollups", "svc-rebuild-kept")).toEqual(keptBefore);
    expect(await revisions(pool, "svc-rebuild-raised")).toEqual({
      "(total)": 1,
      "gpt-4o": 1,
      "gpt-4o-mini": 1,
    });
    expectMatchesOracle(
      await storedRollups(pool, "metric_rollups", where("svc-rebuild-raised")),
      oracleRollups(raised.all, MINUTE),
      "rebuilt",
    );
  });
});

describe("migration 3 (rollup revisions)", () => {
  let scratch: FreshDatabase | undefined;
  afterAll(async () => {
    if (scratch) await dropDatabase(scratch);
  });

  it("upgrades a database written before revisions and scopes: its rows become revision 0, its model '*' rows the service totals, later revisions replace them", async () => {
    scratch = await createDatabase("mcpo_revmig");
    const before = listMigrations().filter((migration) => migration.version < 3);
    expect(await migrate(scratch.url, before)).toEqual([1, 2]);
    const pool = new pg.Pool({ connectionString: scratch.url, max: 1 });
    try {
      const window = revisedWindow("svc-upgraded");
      const total = window.first.find((rollup) => rollup.model === null);
      if (!total) throw new Error("no total");
      // A row as the writer stored it before revisions (no revision column yet) and before
      // scopes (the total as model '*').
      await pool.query(
        `insert into metric_rollups (service, model, window_start, window_end,
           low_confidence_threshold, prompt_diff_threshold, ${COUNT_COLUMNS.join(", ")}, latency_sketch)
         values ($1, '*', timestamptz 'epoch' + $2::bigint * interval '1 microsecond',
           timestamptz 'epoch' + $3::bigint * interval '1 microsecond', $4, $5,
           ${COUNT_COLUMNS.map((_, i) => `$${i + 6}`).join(", ")}, $${COUNT_COLUMNS.length + 6}::jsonb)`,
        [
          total.service,
          total.window_start,
          total.window_end,
          total.thresholds.low_confidence,
          total.thresholds.prompt_diff,
          ...COUNT_COLUMNS.map((name) => total.counts[name]),
          JSON.stringify(total.latency),
        ],
      );
      expect(await migrate(scratch.url)).toEqual([3, 4, 5, 6, 7]);
      const { rows } = await pool.query<{ version: number; name: string }>(
        "select version, name from schema_migrations order by version",
      );
      expect(rows).toEqual([
        { version: 1, name: "initial" },
        { version: 2, name: "topic_ids" },
        { version: 3, name: "rollup_revisions" },
        { version: 4, name: "rollup_scope" },
        { version: 5, name: "rollup_other_models" },
        { version: 6, name: "usage_cache_tokens" },
        { version: 7, name: "latency_percentiles" },
      ]);
      expect(await revisions(pool, "svc-upgraded")).toEqual({ "(total)": 0 });
      await expect(
        pool.query("update metric_rollups set revision = -1 where service = 'svc-upgraded'"),
      ).rejects.toThrow(/check constraint/);

      const writer = new PostgresWriter(pool);
      expect(await writer.write({ rollups: window.first })).toMatchObject({
        rollupsUpserted: 3,
        rollupsSuperseded: 0,
      });
      expect(await writer.write({ rollups: window.revised })).toMatchObject({
        rollupsUpserted: 3,
      });
      expectMatchesOracle(
        await storedRollups(pool, "metric_rollups", where("svc-upgraded")),
        oracleRollups(window.all, MINUTE),
        "after the upgrade",
      );
    } finally {
      await pool.end();
    }
  });
});

describe("the sink and revisions on the compacted topic", () => {
  const database = useFreshDatabase("mcpo_revsink");
  const prefix = `${uniqueName("revsink")}.`;
  const topics = topicNames(prefix);
  let admin: Admin;
  let sink: Sink | undefined;
  let pool: pg.Pool;

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    await createTopics(admin, [
      { topic: topics.modelCalls, numPartitions: 1 },
      { topic: topics.metricRollups, numPartitions: 2, config: { "cleanup.policy": "compact" } },
      { topic: topics.alerts, numPartitions: 1 },
      { topic: topics.deadLetter, numPartitions: 1 },
    ]);
    pool = new pg.Pool({ connectionString: database.current.url, max: 2 });
  });
  afterAll(async () => {
    await sink?.stop();
    await pool.end();
    await admin
      .deleteTopics({
        topics: [topics.modelCalls, topics.metricRollups, topics.alerts, topics.deadLetter],
      })
      .catch(() => undefined);
    await admin.disconnect();
  });

  it("stores the highest revision of each key even when an older one comes after it, and counts it as superseded", async () => {
    const codec = await AvroCodec.register(METRIC_ROLLUP, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topics.metricRollups),
    });
    const window = revisedWindow("svc-sink");
    const inputs = [topics.modelCalls, topics.metricRollups, topics.alerts];
    const producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const send = (rollups: readonly MetricRollup[]) =>
      producer.send({
        topic: topics.metricRollups,
        messages: rollups.map((rollup) => ({
          key: rollupKey(rollup),
          value: codec.encode(rollup),
        })),
      });
    const group = uniqueName("revsink-group");
    try {
      // In log order: revision 0, revision 1; once those are stored, revision 0 again (a
      // producer that re-sent it), which meets the stored revision 1, not one in its batch.
      await send(window.first);
      await send(window.revised);
      sink = new Sink({
        metricsPort: 0,
        brokers: services().kafkaBrokers,
        schemaRegistryUrl: services().schemaRegistryUrl,
        databaseUrl: database.current.url,
        topicPrefix: prefix,
        groupId: group,
        logger: quietLogger,
      });
      await sink.start();
      await waitForStoredPositions(admin, pool, group, inputs);
      expect(await revisions(pool, "svc-sink")).toEqual({
        "(total)": 1,
        "gpt-4o": 1,
        "gpt-4o-mini": 1,
      });
      const before = await rawRows(pool, "metric_rollups", "svc-sink");
      await send(window.first);
      await waitForStoredPositions(admin, pool, group, inputs);
      expect(await rawRows(pool, "metric_rollups", "svc-sink")).toEqual(before);
    } finally {
      await producer.disconnect();
    }
    const running = sink;
    const stats = await waitFor(
      "the sink to count the 9 rollup records it read",
      () => running.stats(),
      (seen) => seen.rollupsUpserted + seen.rollupsSuperseded >= 9,
      { timeoutMs: 10_000, intervalMs: 20 },
    );
    // Whether the first revision 0 was written before revision 1 depends on the batches; the
    // repeated revision 0 is superseded either way.
    expect(stats.rollupsSuperseded).toBeGreaterThanOrEqual(3);
    expect(stats.rollupsUpserted + stats.rollupsSuperseded).toBe(9);
    expectMatchesOracle(
      await storedRollups(pool, "metric_rollups", where("svc-sink")),
      oracleRollups(window.all, MINUTE),
      "sink",
    );
    const metrics = await (await fetch(running.metricsUrl ?? "")).text();
    expect(metrics).toContain(
      `mcpo_sink_rows_total{table="metric_rollups",outcome="superseded"} ${stats.rollupsSuperseded}`,
    );
  });
});
