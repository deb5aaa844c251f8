/** PostgresExporter, the direct single-replica mode, against the real PostgreSQL. */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { PostgresExporter } from "../producer/exporters/postgres.js";
import { instrument } from "../producer/interceptor.js";
import { silentLogger } from "../producer/logger.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { storedRollups } from "./support/stored-rollups.js";
import { useFreshDatabase } from "./support/isolation.js";
import { expectMatchesOracle, oracleRollups } from "./support/oracle.js";

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

  it("writes every span once and the rollups of its windows, partial on flush and final on shutdown, every column equal to the oracle's", async () => {
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
    const events: ModelCallEvent[] = [];
    for (let i = 0; i < 300; i++) {
      now += 100; // 30 s of calls, one window
      const event = await interceptor.interceptModelCall({
        model: i % 2 === 0 ? "gpt-4o" : "gpt-4o-mini",
        // Reported usage on most calls, none (estimated from the text) on every third.
        ...(i % 3 === 0
          ? { prompt: `prompt ${i}`, response: "a response" }
          : { usage: { promptTokens: 100, completionTokens: 10 } }),
        status: i % 10 === 0 ? "error" : "ok",
        errorType: i % 10 === 0 ? "Timeout" : undefined,
        retries: i % 4,
        confidence: (i % 10) / 10,
        shadowAgreement: i % 5 === 0 ? false : i % 5 === 1 ? null : true,
      });
      if (event) events.push(event);
    }
    expect(events).toHaveLength(300);
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
    const last = await interceptor.interceptModelCall({
      model: "gpt-4o",
      usage: { promptTokens: 1, completionTokens: 1 },
    });
    if (last) events.push(last);
    expect(events).toHaveLength(301);
    expect(await interceptor.shutdown()).toEqual({ complete: true, remaining: 0 });
    // Every count (retries and token sources included) and rate of every row: the oracle's.
    expectMatchesOracle(await storedRollups(client), oracleRollups(events, 60_000_000));
    const windows = await client.query<{ calls: string }>(
      "select calls::text from metric_rollups where model = '*' order by window_start",
    );
    expect(windows.rows).toEqual([{ calls: "300" }, { calls: "1" }]);
    expect(exporter.stats()).toMatchObject({ sent: 301, dropped: 0, buffered: 0 });
  });
});
