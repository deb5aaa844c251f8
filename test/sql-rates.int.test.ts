/**
 * An independent check of the SQL: for random event sets of realistic size, the core's rollups go
 * through the shared writer into PostgreSQL, and every generated column of `metric_rollups` and
 * every column `merge_rollups` returns is read back and compared with the brute-force oracle
 * (test/support/oracle.ts), which imports nothing from metrics/. A wrong formula in
 * schema/migrations/*.sql fails here even when the core and the SQL agree with each other.
 */
import fc from "fast-check";
import type pg from "pg";
import { beforeAll, describe, expect, it } from "vitest";

import type { MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { LatencySketch, rollupEvents } from "../metrics/index.js";
import type { PostgresWriter } from "../sink/writer.js";
import { eventArbitrary } from "./support/events.js";
import { useFreshWriter } from "./support/fresh-writer.js";
import {
  expectMatchesOracle,
  oracleKey,
  oracleRollups,
  oracleWindow,
  type ComparableRollup,
  type OracleWindow,
} from "./support/oracle.js";
import {
  GENERATED_RATE_COLUMNS,
  ROLLUP_COUNT_COLUMNS,
  STORED_QUANTILE_COLUMNS,
} from "./support/stored-rollups.js";
import { seededRandom, testSeed } from "./support/seed.js";

const SECOND = 1_000_000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
/** A minute boundary: the generated events end within 3 hours after it. */
const ORIGIN = 1_764_000_000_000_000 - (1_764_000_000_000_000 % HOUR);
const SPAN = 3 * HOUR;

const GENERATED_RATES = GENERATED_RATE_COLUMNS;
const GENERATED_COLUMNS = ["cost_usd", ...GENERATED_RATES] as const;
const STORED_QUANTILES = STORED_QUANTILE_COLUMNS;
const COUNT_NAMES = ROLLUP_COUNT_COLUMNS;

/** Every column merge_rollups returns, each checked below. */
const MERGE_COLUMNS = [
  "service",
  "scope",
  "model",
  "window_start",
  "windows",
  "calls",
  "calls_with_cost",
  "cost_usd",
  "errors",
  "late",
  ...GENERATED_RATES,
  "latency_sketches",
].sort();

/** A decimal's text without trailing fraction zeros (numeric division keeps extra digits). */
const decimal = (text: string): string =>
  text.includes(".") ? text.replace(/0+$/, "").replace(/\.$/, "") : text;

/** Exact decimal text of nano-USD as PostgreSQL prints numeric(24, 9). */
function usdText(value: bigint): string {
  const whole = value / 1_000_000_000n;
  const fraction = (value % 1_000_000_000n).toString().padStart(9, "0");
  return `${whole}.${fraction}`;
}

/** `expect(actual).toBe(wanted)`, run only when it fails (thousands of rows per property run). */
function same(actual: unknown, wanted: unknown, message: string): void {
  if (!Object.is(actual, wanted)) expect(actual, message).toBe(wanted);
}

const windowStartOf = (endMicros: number, size: number): number =>
  endMicros - (((endMicros % size) + size) % size);

/** A merge case: rollups of `window` merged into `bucket`s over [from, to). */
interface MergeCase {
  readonly window: number;
  readonly bucket: number;
  readonly from: number;
  readonly to: number;
}

describe("rates in PostgreSQL against the oracle", () => {
  const fresh = useFreshWriter("mcpo_sqlrates");
  let pool: pg.Pool;
  let writer: PostgresWriter;

  beforeAll(() => {
    ({ pool, writer } = fresh);
  });

  /** Writes the core's rollups of `events`, with `late` counts added to some of them. */
  async function writeRollups(
    events: readonly ModelCallEvent[],
    window: number,
    late: (rollup: MetricRollup) => number,
  ): Promise<Map<string, number>> {
    await pool.query("truncate metric_rollups");
    const lateByKey = new Map<string, number>();
    const rollups = rollupEvents(events, window).map((rollup): MetricRollup => {
      const count = late(rollup);
      if (count === 0) return rollup;
      lateByKey.set(oracleKey(rollup.service, rollup.model, rollup.window_start), count);
      return { ...rollup, counts: { ...rollup.counts, late: count } };
    });
    expect(await writer.write({ rollups })).toMatchObject({ rollupsUpserted: rollups.length });
    return lateByKey;
  }

  /** Every row of metric_rollups, as the oracle compares it. */
  async function storedRows(): Promise<{
    rows: ComparableRollup[];
    costText: Map<string, string>;
  }> {
    const { rows } = await pool.query<Record<string, string | number | null>>(
      `select service, scope, model, ((extract(epoch from window_start) * 1000000)::bigint)::text as start_us,
              ((extract(epoch from window_end) * 1000000)::bigint)::text as end_us,
              ${COUNT_NAMES.map((name) => `${name}::text`).join(", ")},
              cost_usd::text, ${GENERATED_RATES.join(", ")}, ${STORED_QUANTILES.join(", ")}
       from metric_rollups`,
    );
    const costText = new Map<string, string>();
    const comparable = rows.map((row): ComparableRollup => {
      const model = row.scope === "service" ? null : String(row.model);
      const windowStart = Number(row.start_us);
      costText.set(oracleKey(String(row.service), model, windowStart), String(row.cost_usd));
      return {
        service: String(row.service),
        model,
        windowStart,
        counts: Object.fromEntries(COUNT_NAMES.map((name) => [name, String(row[name])])),
        rates: Object.fromEntries(
          [...GENERATED_RATES, ...STORED_QUANTILES].map((name) => [name, row[name] ?? null]),
        ),
      };
    });
    return { rows: comparable, costText };
  }

  /** What merge_rollups must return for `merge`, by brute force from the events. */
  function oracleMerge(
    events: readonly ModelCallEvent[],
    merge: MergeCase,
    lateByKey: ReadonlyMap<string, number>,
  ): Map<string, { window: OracleWindow; windows: number }> {
    const groups = new Map<
      string,
      {
        service: string;
        model: string | null;
        start: number;
        events: ModelCallEvent[];
        windows: Set<number>;
        late: number;
      }
    >();
    const add = (service: string, model: string | null, windowStart: number) => {
      if (windowStart < merge.from || windowStart >= merge.to) return undefined;
      const start = windowStartOf(windowStart, merge.bucket);
      const key = oracleKey(service, model, start);
      let group = groups.get(key);
      if (!group) {
        group = { service, model, start, events: [], windows: new Set(), late: 0 };
        groups.set(key, group);
      }
      group.windows.add(windowStart);
      return group;
    };
    for (const event of events) {
      if (event.kind !== "model_call" && event.kind !== "sampling") continue;
      const windowStart = windowStartOf(event.end_time, merge.window);
      add(event.service, null, windowStart)?.events.push(event);
      if (event.model !== null) add(event.service, event.model, windowStart)?.events.push(event);
    }
    for (const [key, count] of lateByKey) {
      const [service = "", model = "", start = "0"] = key.split("\u0000");
      const group = add(service, model === "\u0001total" ? null : model, Number(start));
      if (group) group.late += count;
    }
    const result = new Map<string, { window: OracleWindow; windows: number }>();
    for (const [key, group] of groups)
      result.set(key, {
        window: oracleWindow(
          group.events,
          {
            service: group.service,
            model: group.model,
            start: group.start,
            end: group.start + merge.bucket,
          },
          undefined,
          group.late,
        ),
        windows: group.windows.size,
      });
    return result;
  }

  async function expectMergeMatchesOracle(
    events: readonly ModelCallEvent[],
    merge: MergeCase,
    lateByKey: ReadonlyMap<string, number>,
  ): Promise<void> {
    const where = `merge_rollups(${merge.bucket / SECOND} s) of ${merge.window / SECOND} s windows over [${new Date(merge.from / 1000).toISOString()}, ${new Date(merge.to / 1000).toISOString()})`;
    const { rows, fields } = await pool.query<Record<string, unknown>>(
      `select *, ((extract(epoch from window_start) * 1000000)::bigint)::text as start_us,
              windows::text as windows_text, calls::text as calls_text, calls_with_cost::text as calls_with_cost_text,
              errors::text as errors_text, late::text as late_text, cost_usd::text as cost_text
       from merge_rollups($1::bigint * interval '1 microsecond',
                          timestamptz 'epoch' + $2::bigint * interval '1 microsecond',
                          timestamptz 'epoch' + $3::bigint * interval '1 microsecond')`,
      [merge.bucket, merge.from, merge.to],
    );
    // Every column the function returns is one this test checks.
    expect(
      fields
        .map((field) => field.name)
        .filter((name) => !name.endsWith("_text") && name !== "start_us")
        .sort(),
      `${where}: columns`,
    ).toEqual(MERGE_COLUMNS);
    const expected = oracleMerge(events, merge, lateByKey);
    expect(rows.length, `${where}: rows`).toBe(expected.size);
    const comparable: ComparableRollup[] = [];
    for (const row of rows) {
      const model = row.scope === "service" ? null : String(row.model);
      const windowStart = Number(row.start_us);
      const key = oracleKey(String(row.service), model, windowStart);
      const want = expected.get(key);
      const label = `${where} ${String(row.service)}/${model ?? "(total)"}@${new Date(windowStart / 1000).toISOString()}`;
      if (!want) expect(want, `${label}: not in the oracle`).toBeDefined();
      if (!want) continue;
      same(Number(row.windows_text), want.windows, `${label} windows`);
      same(
        decimal(String(row.cost_text)),
        decimal(usdText(want.window.counts.cost_nano_usd)),
        `${label} cost_usd`,
      );
      // The sketches of the merged windows, merged by the library as `report` does, give the
      // merged window's quantiles within the sketch's accuracy of the exact samples.
      const sketches = row.latency_sketches as Parameters<typeof LatencySketch.fromRecord>[0][];
      same(sketches.length, want.windows, `${label} latency_sketches`);
      const merged = new LatencySketch();
      for (const record of sketches) merged.mergeFrom(LatencySketch.fromRecord(record));
      same(merged.count, want.window.counts.calls, `${label} sketch count`);
      comparable.push({
        service: String(row.service),
        model,
        windowStart,
        counts: {
          calls: String(row.calls_text),
          calls_with_cost: String(row.calls_with_cost_text),
          errors: String(row.errors_text),
          late: String(row.late_text),
        },
        rates: {
          ...Object.fromEntries(
            GENERATED_RATES.map((name) => [name, (row[name] as number | null) ?? null]),
          ),
          latency_p50_ms: merged.quantile(0.5),
          latency_p95_ms: merged.quantile(0.95),
          latency_p99_ms: merged.quantile(0.99),
        },
      });
    }
    expectMatchesOracle(
      comparable,
      new Map([...expected].map(([key, value]) => [key, value.window])),
      where,
    );
  }

  it("stores no generated column this test does not check", async () => {
    const { rows } = await pool.query<{ column_name: string }>(
      `select column_name from information_schema.columns
       where table_name = 'metric_rollups' and is_generated = 'ALWAYS' order by 1`,
    );
    expect(rows.map((row) => row.column_name)).toEqual([...GENERATED_COLUMNS].sort());
  });

  it(
    "every generated rate column of metric_rollups, cost_usd, every count and the stored latency quantiles equal the oracle's, and every merge_rollups column equals the oracle's merged windows (minutes into hours, uneven buckets, a cut time range)",
    { timeout: 240_000 },
    async () => {
      const lateRandom = seededRandom("sql-rates late counts");
      let runs = 0;
      let eventsSeen = 0;
      const windows = fc.constantFrom(10 * SECOND, MINUTE, 5 * MINUTE);
      await fc.assert(
        fc.asyncProperty(
          fc
            .array(eventArbitrary({ originMicros: ORIGIN, spanMicros: SPAN }), {
              minLength: 300,
              maxLength: 1500,
              size: "max",
            })
            // A counterexample prints as its size: the logged seed replays it.
            .map((events) =>
              Object.defineProperty(events, fc.toStringMethod, {
                value: () => `<${events.length} generated events>`,
              }),
            ),
          windows,
          fc.constantFrom(HOUR, 7 * MINUTE, 90 * SECOND, 25 * MINUTE),
          fc.integer({ min: 0, max: 3 }),
          async (events, window, bucket, cut) => {
            runs++;
            eventsSeen += events.length;
            const lateByKey = await writeRollups(events, window, () =>
              lateRandom.next() < 0.1 ? lateRandom.int(1, 5) : 0,
            );
            // The rows: every generated column and every count against the oracle.
            const expected = oracleRollups(events, window, { lateByKey });
            const { rows, costText } = await storedRows();
            expectMatchesOracle(rows, expected, `metric_rollups (${window / SECOND} s windows)`);
            for (const [key, want] of expected)
              same(
                costText.get(key),
                usdText(want.counts.cost_nano_usd),
                `cost_usd of ${key.split("\u0000").join("/")}`,
              );
            // Merged into coarser buckets: windows that nest (hours), buckets that cut across
            // windows (90 s, 7 min, 25 min over 10 s … 5 min windows), and a cut time range.
            await expectMergeMatchesOracle(
              events,
              { window, bucket, from: 0, to: 2 ** 52 },
              lateByKey,
            );
            const from = ORIGIN + cut * HOUR * 0.25;
            await expectMergeMatchesOracle(
              events,
              { window, bucket: window, from, to: from + HOUR },
              lateByKey,
            );
          },
        ),
        { numRuns: 6, seed: testSeed("sql-rates property"), endOnFailure: true },
      );
      process.stderr.write(`sql-rates: ${runs} runs, ${eventsSeen} events\n`);
      expect(runs).toBe(6);
      expect(eventsSeen).toBeGreaterThanOrEqual(6 * 300);
    },
  );
});
