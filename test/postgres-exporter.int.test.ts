/** PostgresExporter, the direct single-replica mode, against the real PostgreSQL. */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { PostgresExporter } from "../producer/exporters/postgres.js";
import { instrument } from "../producer/interceptor.js";
import { silentLogger } from "../producer/logger.js";
import type { AlertEvent, MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { rollupEvents, rollupKey } from "../metrics/index.js";
import { DEFAULT_WINDOW_SETTINGS, PartitionState } from "../processor/partition.js";
import { InMemoryExporter } from "../producer/exporters/memory.js";
import type { ModelCallInput } from "../producer/types.js";
import { PostgresWriter } from "../sink/writer.js";
import { storedRollups } from "./support/stored-rollups.js";
import { useFreshDatabase } from "./support/isolation.js";
import { expectMatchesOracle, oracleKey, oracleRollups } from "./support/oracle.js";

const SEED_CALL = {
  model: "gpt-4o",
  prompt: "Hello MCP",
  response: "Hello human",
  confidence: 0.64,
  confidenceGateThreshold: 0.7,
  highRiskPath: true,
  deterministicFallbackTriggered: true,
  promptDiffScore: 0.42,
  shadowAgreement: false,
  isGoldenFinancialScenario: true,
  goldenScenarioPassed: true,
} as const;

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
      "select model, calls::text, error_rate from metric_rollups order by scope desc, model",
    );
    expect(partial.rows).toEqual([
      { model: "", calls: "300", error_rate: 0.1 },
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
      "select calls::text from metric_rollups where scope = 'service' order by window_start",
    );
    expect(windows.rows).toEqual([{ calls: "300" }, { calls: "1" }]);
    expect(exporter.stats()).toMatchObject({ sent: 301, dropped: 0, buffered: 0 });
  });
});

/** The processor's state machine fed the same calls and clock: what direct mode must write. */
function stateMachineOutputs(
  steps: readonly ({ event: ModelCallEvent } | { tickMs: number } | { flush: true })[],
  settings = DEFAULT_WINDOW_SETTINGS,
): { rollups: Map<string, MetricRollup>; alerts: AlertEvent[] } {
  const state = new PartitionState(settings);
  const rollups = new Map<string, MetricRollup>();
  const alerts: AlertEvent[] = [];
  for (const step of steps) {
    const outputs =
      "event" in step
        ? state.apply({ type: "event", event: step.event })
        : "tickMs" in step
          ? state.apply({ type: "tick", eventTimeMicros: step.tickMs * 1000 })
          : state.apply({ type: "flush" });
    for (const output of outputs)
      if (output.type === "rollup") rollups.set(rollupKey(output.rollup), output.rollup);
      else if (output.type === "alert") alerts.push(output.alert);
  }
  return { rollups, alerts };
}

describe("PostgresExporter on the processor's state machine", () => {
  const database = useFreshDatabase("mcpo_pgexp_sm");
  let client: pg.Client;
  beforeAll(async () => {
    client = new pg.Client({ connectionString: database.current.url });
    await client.connect();
  });
  afterAll(async () => {
    await client.end();
  });

  /** Each test its own day, so one's rows are never among another's open windows. */
  const dayMs = (day: number): number => {
    const base = 1_764_000_000_000 + day * 86_400_000;
    return base - (base % 60_000);
  };

  function direct(service: string, clock: { now: number }, allowedLatenessMs?: number) {
    const exporter = new PostgresExporter({
      databaseUrl: database.current.url,
      ...(allowedLatenessMs === undefined ? {} : { allowedLatenessMs }),
      logger: silentLogger,
      now: () => clock.now,
    });
    const interceptor = instrument({
      serviceName: service,
      exporter,
      logger: silentLogger,
      now: () => clock.now,
    });
    return { exporter, interceptor };
  }

  it("without an allowed lateness, counts a call whose window was already closed and written as late, never re-opening the window's row", async () => {
    const start = dayMs(1);
    const clock = { now: start };
    const { interceptor } = direct("late", clock, 0);
    const onTime: ModelCallEvent[] = [];
    for (let i = 0; i < 10; i++) {
      clock.now += 1000;
      const event = await interceptor.interceptModelCall({ model: "gpt-4o", retries: i % 2 });
      if (event) onTime.push(event);
    }
    expect(await interceptor.flush()).toEqual({ complete: true, remaining: 0 });
    // Past the first window's end plus grace: it closes, final, with its 10 calls.
    clock.now = start + 75_000;
    expect(await interceptor.flush()).toEqual({ complete: true, remaining: 0 });
    const closed = await client.query<{ calls: string }>(
      "select calls::text from metric_rollups where service = 'late' and scope = 'service'",
    );
    expect(closed.rows).toEqual([{ calls: "10" }]);
    // A call that ended inside the closed window arrives now.
    const late = await interceptor.interceptModelCall({
      model: "gpt-4o",
      endTime: start + 30_000,
      durationMs: 5,
    });
    expect(late).toBeDefined();
    expect(await interceptor.shutdown()).toEqual({ complete: true, remaining: 0 });

    // The closed window keeps its 10 calls; the late call is counted in `late` of the window the
    // watermark (now − grace) is in, for the total and its model, and in no other count.
    const watermarkWindow = start + 60_000;
    const lateByKey = new Map([
      [oracleKey("late", null, watermarkWindow * 1000), 1],
      [oracleKey("late", "gpt-4o", watermarkWindow * 1000), 1],
    ]);
    expectMatchesOracle(
      await storedRollups(client, "metric_rollups", "service = 'late'"),
      oracleRollups(onTime, 60_000_000, { lateByKey }),
    );
    // Exactly as the processor's state machine, fed the same calls and clock, emits them.
    const want = stateMachineOutputs(
      [
        ...onTime.map((event) => ({ event })),
        { tickMs: start + 75_000 },
        ...(late ? [{ event: late }] : []),
        { flush: true as const },
      ],
      { ...DEFAULT_WINDOW_SETTINGS, allowedLatenessMicros: 0 },
    );
    const rows = await client.query<{
      model: string;
      start_ms: string;
      calls: string;
      late: string;
    }>(
      `select model, (extract(epoch from window_start) * 1000)::bigint::text as start_ms,
              calls::text, late::text
         from metric_rollups where service = 'late' order by window_start, scope desc, model`,
    );
    expect(rows.rows).toEqual(
      [...want.rollups.values()]
        .sort(
          (a, b) =>
            a.window_start - b.window_start ||
            (a.model === null ? -1 : b.model === null ? 1 : a.model < b.model ? -1 : 1),
        )
        .map((rollup) => ({
          model: rollup.model ?? "",
          start_ms: String(rollup.window_start / 1000),
          calls: String(rollup.counts.calls),
          late: String(rollup.counts.late),
        })),
    );
    const spans = await client.query<{ count: string }>(
      "select count(*)::text as count from spans where service = 'late'",
    );
    expect(spans.rows[0]?.count).toBe("11");
  });

  it("restores the windows that may still be open after a restart, so post-restart calls add to their rows (latency sketch included)", async () => {
    const start = dayMs(2);
    const clock = { now: start };
    const events: ModelCallEvent[] = [];
    const record = async (interceptor: ReturnType<typeof direct>["interceptor"], input: object) => {
      const event = await interceptor.interceptModelCall({
        model: "gpt-4o",
        usage: { promptTokens: 10, completionTokens: 5 },
        ...input,
      });
      if (event) events.push(event);
    };
    // The first process: 30 calls in the first window, then it stops (its rows are written).
    const first = direct("restart", clock);
    for (let i = 0; i < 30; i++) {
      clock.now += 1000;
      await record(first.interceptor, { durationMs: 10 + i * 37, status: i % 7 ? "ok" : "error" });
    }
    expect(await first.interceptor.shutdown()).toEqual({ complete: true, remaining: 0 });

    // The second process starts within the same window's grace: a call that ended inside the
    // first window still counts there, and the next window gets its own calls.
    clock.now = start + 62_000;
    const second = direct("restart", clock);
    await record(second.interceptor, { endTime: start + 59_000, durationMs: 2500 });
    for (let i = 0; i < 20; i++) {
      clock.now += 100;
      await record(second.interceptor, { durationMs: 3 + i * 101, model: "gpt-4o-mini" });
    }
    expect(await second.interceptor.shutdown()).toEqual({ complete: true, remaining: 0 });
    // A third process, mid second window: restores both, adds to the second.
    const third = direct("restart", clock);
    clock.now += 1000;
    await record(third.interceptor, { durationMs: 777 });
    expect(await third.interceptor.shutdown()).toEqual({ complete: true, remaining: 0 });

    expect(events).toHaveLength(52);
    expectMatchesOracle(
      await storedRollups(client, "metric_rollups", "service = 'restart'"),
      oracleRollups(events, 60_000_000),
    );
    const windows = await client.query<{ calls: string }>(
      "select calls::text from metric_rollups where service = 'restart' and scope = 'service' order by window_start",
    );
    expect(windows.rows).toEqual([{ calls: "31" }, { calls: "21" }]);
  });

  it("writes the alert transitions of closed windows, as the processor's AlertTracker makes them", async () => {
    const start = dayMs(3);
    const clock = { now: start };
    const { interceptor } = direct("alerting", clock);
    const steps: ({ event: ModelCallEvent } | { tickMs: number } | { flush: true })[] = [];
    const record = async (input: ModelCallInput) => {
      const event = await interceptor.interceptModelCall(input);
      if (event) steps.push({ event });
    };
    // The seed's call, three times: five decision-pattern rules breach.
    for (let i = 0; i < 3; i++) {
      clock.now += 1000;
      await record({ ...SEED_CALL });
    }
    clock.now = start + 75_000;
    steps.push({ tickMs: clock.now });
    expect(await interceptor.flush()).toEqual({ complete: true, remaining: 0 });
    const fired = await client.query<{ rule: string; state: string }>(
      "select rule, state from alerts where service = 'alerting' order by rule",
    );
    expect(fired.rows).toEqual(
      [
        "confidence_gate_block_rate_high",
        "deterministic_fallback_rate_high",
        "low_confidence_rate_high",
        "prompt_diff_violation_rate_high",
        "shadow_disagreement_rate_high",
      ].map((rule) => ({ rule, state: "firing" })),
    );
    // The next window is healthy on three of them: they resolve when it closes (at shutdown).
    for (let i = 0; i < 3; i++) {
      clock.now += 1000;
      await record({
        ...SEED_CALL,
        confidence: 0.95,
        promptDiffScore: 0.1,
        shadowAgreement: true,
      });
    }
    steps.push({ flush: true });
    expect(await interceptor.shutdown()).toEqual({ complete: true, remaining: 0 });

    const want = stateMachineOutputs(steps).alerts;
    expect(want.some((alert) => alert.state === "resolved")).toBe(true);
    const latest = new Map<string, AlertEvent>();
    for (const alert of want) latest.set(alert.alert_id, alert);
    const stored = await client.query<{
      alert_id: string;
      rule: string;
      state: string;
      fired_ms: string;
      transitions: string[];
    }>(
      `select alert_id, rule, state, (extract(epoch from fired_window_start) * 1000)::bigint::text as fired_ms,
              (select array_agg(entry->>'state' order by (entry->>'emitted_at_us')::bigint)
                 from jsonb_array_elements(history) as entry) as transitions
         from alerts where service = 'alerting' order by alert_id`,
    );
    expect(stored.rows).toEqual(
      [...latest.values()]
        .sort((a, b) => (a.alert_id < b.alert_id ? -1 : 1))
        .map((alert) => ({
          alert_id: alert.alert_id,
          rule: alert.rule,
          state: alert.state,
          fired_ms: String(alert.fired_window_start / 1000),
          transitions: want.filter((t) => t.alert_id === alert.alert_id).map((t) => t.state),
        })),
    );
  });

  it("PostgresWriter.openRollups reads back the rollups of the windows ending after a time, from the tables it writes", async () => {
    const pool = new pg.Pool({ connectionString: database.current.url, max: 1 });
    try {
      await pool.query("create table metric_rollups_v7 (like metric_rollups including all)");
      const writer = new PostgresWriter(pool, "unnest", {
        rollups: "metric_rollups_v7",
        alerts: "alerts",
      });
      const start = dayMs(4) * 1000;
      const events: ModelCallEvent[] = [];
      const clock = { now: dayMs(4) };
      const memory = new InMemoryExporter();
      const interceptor = instrument({
        serviceName: "read-back",
        exporter: memory,
        logger: silentLogger,
        now: () => clock.now,
        metrics: { thresholds: { low_confidence: 0.55 } },
      });
      for (let i = 0; i < 40; i++) {
        clock.now += 4000; // 160 s: three windows
        const event = await interceptor.interceptModelCall({
          ...SEED_CALL,
          model: i % 3 === 0 ? "gpt-4o-mini" : "gpt-4o",
          confidence: (i % 10) / 10,
          durationMs: i * 13.25,
          status: i % 5 === 0 ? "error" : "ok",
        });
        if (event) events.push(event);
      }
      const rollups = rollupEvents(events, 60_000_000, { low_confidence: 0.55, prompt_diff: 0.3 });
      await writer.write({ rollups });
      const since = start + 60_000_000; // the first window ends there: not after it
      const read = await writer.openRollups(since);
      expect(read).toEqual(rollups.filter((rollup) => rollup.window_end > since));
      expect(read.length).toBeGreaterThan(0);
      // The default table holds only the other tests' earlier days.
      expect(await new PostgresWriter(pool).openRollups(since)).toEqual([]);
    } finally {
      await pool.end();
    }
  });
});
