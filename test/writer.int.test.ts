/** The schema, its migrations and the shared writer against the real PostgreSQL. */
import { execFile } from "node:child_process";
import { promisify } from "node:util";

import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { AlertEvent } from "../avro/generated.js";
import { AlertTracker, rollupEvents, type AlertRule } from "../metrics/index.js";
import { listMigrations, migrate } from "../sink/migrate.js";
import { PostgresWriter } from "../sink/writer.js";
import { REPO_ROOT } from "./support/cli.js";
import { sampleEvent } from "./support/events.js";
import { createDatabase, dropDatabase, type FreshDatabase } from "./support/isolation.js";
import { useFreshWriter } from "./support/fresh-writer.js";
import {
  expectMatchesOracle,
  oracleAlerts,
  oracleRollups,
  type ComparableRollup,
} from "./support/oracle.js";
import { storedRollups } from "./support/stored-rollups.js";

const run = promisify(execFile);

/** The rollup rows matching `where`, every count and rate column, as the oracle compares them. */
function rollupRows(pool: pg.Pool, where: string): Promise<ComparableRollup[]> {
  return storedRollups(pool, "metric_rollups", where);
}

async function schemaDump(url: string): Promise<string> {
  const { stdout } = await run("pg_dump", ["--schema-only", "--no-owner", "--no-privileges", url]);
  // pg_dump 15.14+ wraps the dump in \restrict/\unrestrict with a random key.
  return stdout.replace(/^(--|\\restrict|\\unrestrict).*$/gm, "").replace(/\n{2,}/g, "\n");
}

describe("schema/postgres.sql and migrations", () => {
  const scratch: FreshDatabase[] = [];
  afterAll(async () => {
    for (const database of scratch) await dropDatabase(database);
  });

  it("creates everything on an empty database, is safe to run twice, and equals the migrations' result", async () => {
    const fresh = await createDatabase("mcpo_sql");
    const migrated = await createDatabase("mcpo_mig");
    scratch.push(fresh, migrated);
    for (let i = 0; i < 2; i++)
      await run("psql", ["-q", "-v", "ON_ERROR_STOP=1", "-f", "schema/postgres.sql", fresh.url], {
        cwd: REPO_ROOT,
      });
    expect(await migrate(migrated.url)).toEqual(listMigrations().map((m) => m.version));
    expect(await migrate(migrated.url)).toEqual([]);
    expect(await schemaDump(migrated.url)).toBe(await schemaDump(fresh.url));
    const client = new pg.Client({ connectionString: fresh.url });
    await client.connect();
    const tables = await client.query<{ table_name: string }>(
      "select table_name from information_schema.tables where table_schema = 'public' order by 1",
    );
    await client.end();
    expect(tables.rows.map((row) => row.table_name)).toEqual([
      "alerts",
      "consumed_offsets",
      "metric_rollups",
      "schema_migrations",
      "spans",
    ]);
  });
});

describe("PostgresWriter", () => {
  const fresh = useFreshWriter("mcpo_writer");
  let pool: pg.Pool;
  let writer: PostgresWriter;

  beforeAll(() => {
    ({ pool, writer } = fresh);
  });

  it("inserts spans once, verbatim, whatever their text", async () => {
    const hostile = `x'); drop table spans; -- "quoted" ; ${"ü🚀".repeat(10)} ${"z".repeat(10_000)}`;
    const events = [
      sampleEvent({
        service: hostile,
        tool_name: "tool'; select pg_sleep(10); --",
        attributes: { nested: JSON.stringify({ a: [1, { b: "c'd" }] }), "quote'key": "v" },
      }),
      sampleEvent({ span_id: "1000000000000002", service: "svc", cost_nano_usd: 1_234_567_891 }),
    ];
    const first = await writer.write({
      spans: events.map((event) => ({ event, source: { topic: "t", partition: 0, offset: "7" } })),
    });
    expect(first).toMatchObject({ spansInserted: 2, spansDuplicate: 0 });
    // Redelivered, and repeated inside one batch: nothing changes.
    const again = await writer.write({ spans: [...events, ...events].map((event) => ({ event })) });
    expect(again).toMatchObject({ spansInserted: 0, spansDuplicate: 4 });
    const { rows } = await pool.query<{
      service: string;
      tool_name: string | null;
      attributes: Record<string, string>;
      cost_usd: string;
      start_us: string;
      source_offset: string;
    }>(
      "select service, tool_name, attributes, cost_usd::text, (extract(epoch from start_time) * 1000000)::bigint::text as start_us, source_offset::text from spans order by cost_nano_usd nulls first, service",
    );
    expect(rows).toHaveLength(2);
    const stored = rows.find((row) => row.service === hostile);
    expect(stored?.tool_name).toBe("tool'; select pg_sleep(10); --");
    expect(stored?.attributes).toEqual({
      nested: JSON.stringify({ a: [1, { b: "c'd" }] }),
      "quote'key": "v",
    });
    expect(stored?.start_us).toBe(String(events[0]?.start_time));
    expect(stored?.source_offset).toBe("7");
    expect(rows.find((row) => row.service === "svc")?.cost_usd).toBe("1.234567891");
  });

  it("writes the same rows through COPY as through unnest, hostile values included", async () => {
    const copyWriter = new PostgresWriter(pool, "copy");
    const events = [0, 1, 2].map((i) =>
      sampleEvent({
        span_id: (0x6000000000000000n + BigInt(i)).toString(16),
        service: `copy "svc", ${i}; drop table spans; -- é🚀\n`,
        tool_name: i === 0 ? null : `t'${i}`,
        attributes: { "a,b": 'x"y', n: String(i) },
        start_time: 1_764_000_000_123_456 + i,
        end_time: 1_764_000_000_223_457 + i,
      }),
    );
    expect(
      await copyWriter.write({
        spans: [...events, ...events].map((event) => ({
          event,
          source: { topic: "c", partition: 1, offset: "9" },
        })),
      }),
    ).toMatchObject({
      spansInserted: 3,
      spansDuplicate: 3,
    });
    expect(await copyWriter.write({ spans: events.map((event) => ({ event })) })).toMatchObject({
      spansInserted: 0,
    });
    const { rows } = await pool.query<{
      span_id: string;
      service: string;
      tool_name: string | null;
      attributes: unknown;
      start_us: string;
      prompt_sha256: Buffer;
    }>(
      `select span_id, service, tool_name, attributes, (extract(epoch from start_time) * 1000000)::bigint::text as start_us, prompt_sha256
       from spans where span_id like '6%' order by span_id`,
    );
    expect(rows).toEqual(
      events.map((event) => ({
        span_id: event.span_id,
        service: event.service,
        tool_name: event.tool_name,
        attributes: event.attributes,
        start_us: String(event.start_time),
        prompt_sha256: event.prompt_sha256,
      })),
    );
  });

  it("upserts rollups by key: every count and rate column equals the oracle's and the core's, retries and token sources included", async () => {
    const events = [
      sampleEvent({ retries: 2, token_source: "estimated" }),
      sampleEvent({ retries: 0, token_source: "reported", confidence: 0.2 }),
      sampleEvent({
        model: "gpt-4o-mini",
        status: "error",
        error_type: "x",
        confidence: 0.9,
        retries: 3,
        token_source: "none",
        prompt_tokens: null,
        completion_tokens: null,
        cost_nano_usd: null,
        shadow_agreement: null,
      }),
      sampleEvent({ model: "gpt-4o-mini", retries: 1, token_source: "estimated" }),
    ];
    const rollups = rollupEvents(events, 60_000_000);
    expect(await writer.write({ rollups })).toMatchObject({
      rollupsUpserted: 3,
      rollupsSuperseded: 0,
    });
    // The same revision again (and twice in the batch): rewritten, none superseded.
    expect(await writer.write({ rollups: [...rollups, ...rollups] })).toMatchObject({
      rollupsUpserted: 3,
      rollupsSuperseded: 0,
    });
    const rows = await rollupRows(pool, "true");
    expect(rows).toHaveLength(3);
    expectMatchesOracle(rows, oracleRollups(events, 60_000_000), "metric_rollups");
    // The oracle's retries and token-source counts are not zeros that anything would match.
    const total = rows.find((row) => row.model === null);
    expect(total?.counts).toMatchObject({
      retries: "6",
      calls_tokens_reported: "1",
      calls_tokens_estimated: "2",
      calls_tokens_none: "1",
    });
    // Bit for bit the core's rates too.
    for (const rollup of rollups) {
      const row = rows.find((candidate) => candidate.model === rollup.model);
      for (const [name, value] of Object.entries(rollup.rates))
        expect(
          row?.rates[name as keyof typeof rollup.rates],
          `${rollup.model ?? "*"} ${name}`,
        ).toBe(value);
    }
  });

  it("merges minute rollups into hours by adding counts (merge_rollups), equal to the oracle's hourly windows", async () => {
    const events = Array.from({ length: 120 }, (_, i) =>
      sampleEvent({
        span_id: (0x4000000000000000n + BigInt(i)).toString(16),
        service: "merge",
        status: i % 4 === 0 ? "error" : "ok",
        error_type: i % 4 === 0 ? "x" : null,
        start_time: 1_764_000_000_000_000 + i * 45_000_000 - 1000,
        end_time: 1_764_000_000_000_000 + i * 45_000_000,
      }),
    );
    await writer.write({ rollups: rollupEvents(events, 60_000_000) });
    const hourly = [...oracleRollups(events, 3_600_000_000).values()]
      .filter((window) => window.model === null)
      .sort((a, b) => a.windowStart - b.windowStart);
    const minuteWindows = (start: number) =>
      new Set(
        events
          .map((event) => event.end_time - (event.end_time % 60_000_000))
          .filter((minute) => minute >= start && minute < start + 3_600_000_000),
      ).size;
    const { rows } = await pool.query<{
      window_start: Date;
      calls: string;
      errors: string;
      error_rate: number;
      sketches: number;
    }>(
      `select window_start, calls::text, errors::text, error_rate, jsonb_array_length(latency_sketches) as sketches
       from merge_rollups(interval '1 hour', timestamptz 'epoch', timestamptz '3000-01-01') where service = 'merge' and scope = 'service'
       order by window_start`,
    );
    expect(hourly.length).toBeGreaterThan(1);
    expect(
      rows.map((row) => ({
        start: row.window_start.getTime() * 1000,
        calls: row.calls,
        errors: row.errors,
        rate: row.error_rate,
        sketches: row.sketches,
      })),
    ).toEqual(
      hourly.map((window) => ({
        start: window.windowStart,
        calls: String(window.counts.calls),
        errors: String(window.counts.errors),
        rate: window.rates.error_rate,
        sketches: minuteWindows(window.windowStart),
      })),
    );
  });

  it("keeps one row per alert with its transitions, whatever the redelivery order", async () => {
    const rule: AlertRule = {
      key: "errors",
      metric: "error_rate",
      comparator: "gt",
      threshold: 0.5,
      minSamples: 1,
    };
    const tracker = new AlertTracker([rule]);
    const minute = 60_000_000;
    const base = 1_764_000_000_000_000 - (1_764_000_000_000_000 % minute);
    const transitions: AlertEvent[] = ["error", "ok"].flatMap((status, i) =>
      rollupEvents(
        [
          sampleEvent({
            status: status as "ok" | "error",
            error_type: status === "error" ? "x" : null,
            start_time: base + i * minute,
            end_time: base + i * minute + 1,
          }),
        ],
        minute,
      )
        .filter((rollup) => rollup.model === null)
        .flatMap((rollup) => tracker.observe(rollup)),
    );
    // The transitions this test writes are the oracle's too.
    const events = ["error", "ok"].map((status, i) =>
      sampleEvent({
        status: status as "ok" | "error",
        error_type: status === "error" ? "x" : null,
        start_time: base + i * minute,
        end_time: base + i * minute + 1,
      }),
    );
    expect(
      transitions.map((t) => ({
        state: t.state,
        windowStart: t.window_start,
        observed: t.observed_value,
      })),
    ).toEqual(
      oracleAlerts(oracleRollups(events, minute).values(), [rule]).map((t) => ({
        state: t.state,
        windowStart: t.windowStart,
        observed: t.observed,
      })),
    );
    const [firing, resolved] = transitions as [AlertEvent, AlertEvent];
    await writer.write({ alerts: [firing] });
    await writer.write({ alerts: [resolved] });
    await writer.write({ alerts: [firing, resolved, firing] }); // a replay
    const { rows } = await pool.query<{ state: string; history: { state: string }[] }>(
      "select state, history from alerts",
    );
    expect(rows).toHaveLength(1);
    expect(rows[0]?.state).toBe("resolved");
    expect(rows[0]?.history.map((entry) => entry.state)).toEqual(["firing", "resolved"]);
  });

  it("writes the batch and its offsets in one transaction: a failure leaves neither", async () => {
    const good = sampleEvent({ span_id: "2000000000000001", service: "atomic" });
    const bad = { ...sampleEvent({ span_id: "2000000000000002" }), event_id: "not-a-uuid" };
    await expect(
      writer.write({
        spans: [{ event: good }, { event: bad }],
        offsets: [{ group: "g", topic: "t", partition: 0, nextOffset: "42" }],
      }),
    ).rejects.toThrow(/uuid/);
    expect((await pool.query("select 1 from spans where service = 'atomic'")).rowCount).toBe(0);
    expect(await writer.offsets("g")).toEqual([]);
    await writer.write({
      spans: [{ event: good }],
      offsets: [{ group: "g", topic: "t", partition: 0, nextOffset: "42" }],
    });
    expect(await writer.offsets("g")).toEqual([
      { group: "g", topic: "t", partition: 0, nextOffset: "42" },
    ]);
  });
});
