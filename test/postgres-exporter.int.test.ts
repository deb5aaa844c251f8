/** PostgresExporter, the direct single-replica mode, against the real PostgreSQL. */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { PostgresExporter } from "../producer/exporters/postgres.js";
import { instrument } from "../producer/interceptor.js";
import { silentLogger } from "../producer/logger.js";
import { useFreshDatabase } from "./support/isolation.js";

describe("PostgresExporter", () => {
  const database = useFreshDatabase("mcpo_pgexp");
  let client: pg.Client;
  beforeAll(async () => {
    client = new pg.Client({ connectionString: database.current.url });
    await client.connect();
  });
  afterAll(async () => {
    await client.end();
  });

  it("writes every span once and the rollups of its windows, partial on flush and final on shutdown", async () => {
    let now = 1_764_000_000_000; // ms, on a minute boundary plus some
    now -= now % 60_000;
    const exporter = new PostgresExporter({
      databaseUrl: database.current.url,
      logger: silentLogger,
      now: () => now,
    });
    const interceptor = instrument({
      serviceName: "direct",
      exporter,
      logger: silentLogger,
      now: () => now,
    });
    for (let i = 0; i < 300; i++) {
      now += 100; // 30 s of calls, one window
      await interceptor.interceptModelCall({
        model: i % 2 === 0 ? "gpt-4o" : "gpt-4o-mini",
        usage: { promptTokens: 100, completionTokens: 10 },
        status: i % 10 === 0 ? "error" : "ok",
        errorType: i % 10 === 0 ? "Timeout" : undefined,
      });
    }
    expect(await interceptor.flush()).toEqual({ complete: true, remaining: 0 });
    const spans = await client.query<{ count: string }>(
      "select count(*)::text as count from spans",
    );
    expect(spans.rows[0]?.count).toBe("300");
    const partial = await client.query<{ model: string; calls: string; error_rate: number }>(
      "select model, calls::text, error_rate from metric_rollups order by model",
    );
    expect(partial.rows).toEqual([
      { model: "*", calls: "300", error_rate: 0.1 },
      { model: "gpt-4o", calls: "150", error_rate: 0.2 },
      { model: "gpt-4o-mini", calls: "150", error_rate: 0 },
    ]);
    // A call in the next window, then time passes: the first window is written as final.
    now += 40_000;
    await interceptor.interceptModelCall({
      model: "gpt-4o",
      usage: { promptTokens: 1, completionTokens: 1 },
    });
    expect(await interceptor.shutdown()).toEqual({ complete: true, remaining: 0 });
    const windows = await client.query<{ calls: string }>(
      "select calls::text from metric_rollups where model = '*' order by window_start",
    );
    expect(windows.rows).toEqual([{ calls: "300" }, { calls: "1" }]);
    expect(exporter.stats()).toMatchObject({ sent: 301, dropped: 0, buffered: 0 });
  });
});
