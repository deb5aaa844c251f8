/** The spans' cache and audio token columns (migration 6), written by the sink's writer. */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { ModelCallEvent } from "../avro/generated.js";
import { PostgresExporter } from "../producer/exporters/postgres.js";
import { instrument } from "../producer/index.js";
import { silentLogger } from "../producer/logger.js";
import { listMigrations, migrate } from "../sink/migrate.js";
import { openPool, PostgresWriter } from "../sink/writer.js";
import { sampleEvent } from "./support/events.js";
import { useFreshWriter } from "./support/fresh-writer.js";
import { createDatabase, dropDatabase, useFreshDatabase } from "./support/isolation.js";

const USAGE_COLUMNS =
  "cache_read_tokens::text, cache_write_tokens::text, input_audio_tokens::text, output_audio_tokens::text";

interface UsageRow {
  readonly span_id: string;
  readonly cache_read_tokens: string | null;
  readonly cache_write_tokens: string | null;
  readonly input_audio_tokens: string | null;
  readonly output_audio_tokens: string | null;
}

async function usageRows(pool: pg.Pool | pg.Client, spanIds: readonly string[]) {
  const result = await pool.query<UsageRow>(
    `select span_id, ${USAGE_COLUMNS} from spans where span_id = any($1) order by span_id`,
    [spanIds],
  );
  return result.rows;
}

/** What the row of `event` should hold (bigints read as text). */
function expectedRow(event: ModelCallEvent): UsageRow {
  const text = (value: number | null): string | null => (value === null ? null : String(value));
  return {
    span_id: event.span_id,
    cache_read_tokens: text(event.cache_read_tokens),
    cache_write_tokens: text(event.cache_write_tokens),
    input_audio_tokens: text(event.input_audio_tokens),
    output_audio_tokens: text(event.output_audio_tokens),
  };
}

describe("migration 6, usage_cache_tokens", () => {
  it("adds the four columns to a database at version 5, its spans null in them; recorded, and safe to run again", async () => {
    const database = await createDatabase("mcpo_usage_mig");
    try {
      const migrations = listMigrations();
      expect(migrations.find((m) => m.version === 6)?.name).toBe("usage_cache_tokens");
      expect(
        await migrate(
          database.url,
          migrations.filter((m) => m.version <= 5),
        ),
      ).toEqual([1, 2, 3, 4, 5]);
      const client = new pg.Client({ connectionString: database.url });
      await client.connect();
      try {
        await client.query(
          `insert into spans (span_id, event_id, trace_id, kind, service, service_instance, start_time, end_time,
             prompt_tokens, completion_tokens, token_source, retries, fallback_used, high_risk_path,
             deterministic_fallback_triggered, is_golden_financial_scenario, status)
           values ('00f067aa0ba902b7', gen_random_uuid(), '4bf92f3577b34da6a3ce929d0e0e4736', 'model_call', 'old',
             'old-0', now(), now(), 100, 10, 'reported', 0, false, false, false, false, 'ok')`,
        );
        const applied = await migrate(database.url);
        expect(applied).toContain(6);
        expect(applied.every((version) => version >= 6)).toBe(true);
        const recorded = await client.query<{ name: string }>(
          "select name from schema_migrations where version = 6",
        );
        expect(recorded.rows).toEqual([{ name: "usage_cache_tokens" }]);
        const columns = await client.query<{ column_name: string; data_type: string }>(
          `select column_name, data_type from information_schema.columns
           where table_name = 'spans' and column_name in ('cache_read_tokens', 'cache_write_tokens', 'input_audio_tokens', 'output_audio_tokens')
           order by column_name`,
        );
        expect(columns.rows).toEqual([
          { column_name: "cache_read_tokens", data_type: "bigint" },
          { column_name: "cache_write_tokens", data_type: "bigint" },
          { column_name: "input_audio_tokens", data_type: "bigint" },
          { column_name: "output_audio_tokens", data_type: "bigint" },
        ]);
        // The file itself again (as schema/postgres.sql runs it): nothing changes, no error.
        await client.query(migrations.find((m) => m.version === 6)?.sql ?? "");
        const old = await client.query<Omit<UsageRow, "span_id">>(
          `select ${USAGE_COLUMNS} from spans`,
        );
        expect(old.rows).toEqual([
          {
            cache_read_tokens: null,
            cache_write_tokens: null,
            input_audio_tokens: null,
            output_audio_tokens: null,
          },
        ]);
      } finally {
        await client.end();
      }
    } finally {
      await dropDatabase(database);
    }
  });
});

describe("the writer stores the cache and audio counts", () => {
  const fresh = useFreshWriter("mcpo_usage_cols");

  it.each(["unnest", "copy"] as const)(
    "with the %s strategy, values and nulls alike",
    async (strategy) => {
      const writer = strategy === "unnest" ? fresh.writer : new PostgresWriter(fresh.pool, "copy");
      const suffix = strategy === "unnest" ? "1" : "2";
      const events = [
        sampleEvent({
          span_id: `${suffix}00000000000000a`,
          prompt_tokens: 9_000_000_000_000, // beyond 32 bits: stored exactly
          cache_read_tokens: 8_999_999_999_999,
          cache_write_tokens: 1,
          input_audio_tokens: 0,
          output_audio_tokens: 96,
        }),
        sampleEvent({ span_id: `${suffix}00000000000000b`, cache_read_tokens: 128 }),
        sampleEvent({ span_id: `${suffix}00000000000000c` }),
      ];
      expect(await writer.write({ spans: events.map((event) => ({ event })) })).toMatchObject({
        spansInserted: 3,
      });
      expect(
        await usageRows(
          fresh.pool,
          events.map((event) => event.span_id),
        ),
      ).toEqual(events.map(expectedRow));
    },
  );
});

describe("a cached call from the interceptor to its span row (direct mode)", () => {
  const database = useFreshDatabase("mcpo_usage_direct");
  let pool: pg.Pool;
  beforeAll(() => {
    pool = openPool(database.current.url, { max: 1 });
  });
  afterAll(async () => {
    await pool.end();
  });

  it("stores the counts and the cost with the cache-read rate", async () => {
    const exporter = new PostgresExporter({
      databaseUrl: database.current.url,
      logger: silentLogger,
    });
    const interceptor = instrument({
      serviceName: "cached",
      exporter,
      logger: silentLogger,
      contentHashKey: null,
    });
    const event = await interceptor.interceptModelCall({
      model: "claude-sonnet-4-0",
      provider: "anthropic",
      usage: {
        promptTokens: 10_050,
        completionTokens: 20,
        cacheReadTokens: 9_000,
        cacheWriteTokens: 1_000,
      },
    });
    expect(await interceptor.shutdown()).toEqual({ complete: true, remaining: 0 });
    if (!event) throw new Error("no event");
    const row = await pool.query<UsageRow & { cost_nano_usd: string; prompt_tokens: string }>(
      `select span_id, ${USAGE_COLUMNS}, prompt_tokens::text, cost_nano_usd::text from spans where span_id = $1`,
      [event.span_id],
    );
    // 50 × 3 + 9 000 × 0.30 + 1 000 × 3.75 + 20 × 15 USD per million tokens = 0.0069 USD.
    expect(row.rows).toEqual([
      {
        ...expectedRow(event),
        cache_read_tokens: "9000",
        cache_write_tokens: "1000",
        prompt_tokens: "10050",
        cost_nano_usd: "6900000",
      },
    ]);
  });
});
