/**
 * The PostgresExporter (direct mode) and a call PostgreSQL refuses: the call is dropped and
 * counted, the server's SQLSTATE and message are logged once per SQLSTATE (never the call's
 * content), and the calls around it are written — its batch is not retried for ever at the head of
 * the buffer. The poison is one the contract lets through: a tool name with a character the
 * database's encoding (WIN1252) cannot store, refused with 22P05.
 */
import { randomBytes, randomUUID } from "node:crypto";

import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { ModelCallEvent } from "../../avro/generated.js";
import { PostgresExporter } from "../../producer/exporters/postgres.js";
import type { Logger } from "../../producer/logger.js";
import { sampleEvent } from "../support/events.js";
import { services, uniqueName, useFreshDatabase } from "../support/isolation.js";
import { expectMatchesOracle, oracleRollups } from "../support/oracle.js";
import { storedRollups } from "../support/stored-rollups.js";

function call(overrides: Partial<ModelCallEvent> = {}): ModelCallEvent {
  return sampleEvent({
    service: "direct",
    event_id: randomUUID(),
    span_id: `1${randomBytes(8).toString("hex").slice(1)}`,
    ...overrides,
  });
}

async function withAdmin<T>(work: (client: pg.Client) => Promise<T>): Promise<T> {
  const admin = new URL(services().databaseUrl);
  admin.pathname = "/postgres";
  const client = new pg.Client({ connectionString: admin.toString() });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

describe("PostgresExporter and a call PostgreSQL refuses", () => {
  const name = uniqueName("mcpo_w1252_exp").toLowerCase().replace(/-/g, "_").slice(0, 63);
  const url = new URL(services().databaseUrl);
  url.pathname = `/${name}`;
  const lines: { level: string; message: string; context: Readonly<Record<string, unknown>> }[] =
    [];
  const logger: Logger = {
    warn: (message, context = {}) => lines.push({ level: "warn", message, context }),
    error: (message, context = {}) => lines.push({ level: "error", message, context }),
  };
  let client: pg.Client;
  let exporter: PostgresExporter | undefined;

  beforeAll(async () => {
    // A database whose encoding lacks most of Unicode: emoji are refused with 22P05.
    await withAdmin((admin) =>
      admin.query(
        `create database ${pg.escapeIdentifier(name)} encoding 'WIN1252' lc_collate 'C' lc_ctype 'C' template template0`,
      ),
    );
    client = new pg.Client({ connectionString: url.toString() });
    await client.connect();
  });

  afterAll(async () => {
    await exporter?.shutdown(5000);
    await client.end().catch(() => undefined);
    await withAdmin((admin) =>
      admin.query(`drop database if exists ${pg.escapeIdentifier(name)} with (force)`),
    );
  });

  async function spans(): Promise<string[]> {
    const { rows } = await client.query<{ span_id: string }>(
      "select span_id from spans order by span_id",
    );
    return rows.map((row) => row.span_id);
  }

  it("writes the 100 calls around the refused one, drops and counts it, and logs its SQLSTATE once without its content", async () => {
    const now = 1_764_000_001_000;
    exporter = new PostgresExporter({
      databaseUrl: url.toString(),
      logger,
      now: () => now,
      retryInitialMs: 50,
      retryMaxMs: 500,
    });
    const good = Array.from({ length: 100 }, () => call());
    const secret = "lookup \u{1F642} account 4242";
    for (const event of good.slice(0, 50)) void exporter.export(event);
    void exporter.export(call({ tool_name: secret }));
    for (const event of good.slice(50)) void exporter.export(event);
    expect(await exporter.flush(20_000)).toEqual({ complete: true, remaining: 0 });
    expect(await spans()).toEqual(good.map((event) => event.span_id).sort());
    expect(exporter.stats()).toMatchObject({ sent: 100, dropped: 1, buffered: 0 });
    const refused = lines.filter((line) => line.message.startsWith("PostgreSQL refused"));
    expect(refused).toHaveLength(1);
    expect(refused[0]?.context).toMatchObject({ sqlstate: "22P05" });
    expect(String(refused[0]?.context.reason)).toMatch(/has no equivalent in encoding "WIN1252"/);
    expect(JSON.stringify(lines)).not.toContain("account 4242");
    // Not retried as a failed delivery.
    expect(lines.filter((line) => line.message.startsWith("delivery failed"))).toEqual([]);

    // Another of the same kind: dropped and counted, not logged again.
    const more = call();
    void exporter.export(call({ tool_name: "\u{1F642}" }));
    void exporter.export(more);
    expect(await exporter.flush(20_000)).toEqual({ complete: true, remaining: 0 });
    expect(await spans()).toContain(more.span_id);
    expect(exporter.stats()).toMatchObject({ sent: 101, dropped: 2, buffered: 0 });
    expect(lines.filter((line) => line.message.startsWith("PostgreSQL refused"))).toHaveLength(1);
    expect(exporter.refusedRows()).toEqual({ rollups: 0, alerts: 0, clockSkew: 0, sumOverflow: 0 });

    // A service the database cannot name: its span and its window's rows are refused, the
    // other service's rows written.
    void exporter.export(call({ service: "svc-\u{1F642}" }));
    expect(await exporter.flush(20_000)).toEqual({ complete: true, remaining: 0 });
    expect(exporter.stats()).toMatchObject({ sent: 101, dropped: 3, buffered: 0 });
    expect(exporter.refusedRows().rollups).toBeGreaterThan(0);
    expect(
      lines
        .filter((line) => line.message.startsWith("PostgreSQL refused"))
        .map((line) => [line.context.table, line.context.sqlstate]),
    ).toEqual([
      ["spans", "22P05"],
      ["metric_rollups", "22P05"],
    ]);
    const totals = await client.query<{ calls: string }>(
      "select sum(calls)::text as calls from metric_rollups where service = 'direct' and scope = 'service'",
    );
    expect(totals.rows[0]?.calls).toBe("103");
    expect((await exporter.shutdown(10_000)).complete).toBe(true);
  });
});

describe("PostgresExporter and a host clock that is wrong", () => {
  const database = useFreshDatabase("mcpo_direct_clock");

  it("writes the call dated 2100 as a span but keeps it out of every window: the later calls are not late, every row equals the oracle", async () => {
    let now = 1_764_000_001_000;
    const exporter = new PostgresExporter({
      databaseUrl: database.current.url,
      now: () => now,
      logger: { warn: () => undefined, error: () => undefined },
    });
    const at = (ms: number) => ({ start_time: ms * 1000 - 1000, end_time: ms * 1000 });
    const before = Array.from({ length: 50 }, (_, i) => call({ ...at(now + i) }));
    const future = call({ service: "other", ...at(Date.UTC(2100, 0, 1)) });
    const after = Array.from({ length: 100 }, (_, i) => call({ ...at(now + 100 + i) }));
    for (const event of before) void exporter.export(event);
    void exporter.export(future);
    for (const event of after) void exporter.export(event);
    expect(await exporter.flush(20_000)).toEqual({ complete: true, remaining: 0 });
    // The window closes by the wall clock.
    now += 120_000;
    expect((await exporter.shutdown(20_000)).complete).toBe(true);
    expect(exporter.refusedRows().clockSkew).toBe(1);
    const pool = new pg.Pool({ connectionString: database.current.url });
    try {
      const spans = await pool.query<{ n: string }>("select count(*)::text as n from spans");
      expect(spans.rows[0]?.n).toBe("151");
      expectMatchesOracle(
        await storedRollups(pool),
        oracleRollups([...before, ...after], 60_000_000),
        "direct mode",
      );
    } finally {
      await pool.end();
    }
  });
});
