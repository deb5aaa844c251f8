/**
 * The SQL latency functions of migration 7 (schema/migrations/007_latency_percentiles.sql) on a
 * real PostgreSQL: for random sets of latencies, split into random sketches, the sketches merged in
 * SQL equal the library's merge (LatencySketch.mergeFrom) record for record, and the SQL quantiles
 * equal the library's — the same bin, its value within 4 units in the last place (PostgreSQL's
 * power() is the C library's pow, JavaScript's Math.pow another implementation; they differ by at
 * most one unit in the last place for some keys, while neighbouring bins are 2% apart) — and are
 * within the sketch's 1% of the exact latency of that rank, computed here by sorting.
 */
import fc from "fast-check";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { LatencySketch as LatencySketchRecord } from "../avro/generated.js";
import { LATENCY_RELATIVE_ACCURACY, LatencySketch } from "../metrics/index.js";
import { migrate } from "../sink/migrate.js";
import { useFreshDatabase } from "./support/isolation.js";
import { testSeed } from "./support/seed.js";

const SEED = testSeed("latency-percentiles.int.test.ts fast-check");
const QUANTILES = [0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1];
/** Values at or below this are in the zero bin (the mapping's smallest value, 2^-1023 · γ). */
const GAMMA = (1 + LATENCY_RELATIVE_ACCURACY) / (1 - LATENCY_RELATIVE_ACCURACY);
const ZERO_LIMIT = 2 ** -1023 * GAMMA;
/** How far the SQL value of a bin may be from the library's: a few units in the last place. */
const ULPS = 4 * Number.EPSILON;

/** The same bin's value: equal, or (both finite) within a few units in the last place. */
function sameBinValue(sql: number | null, library: number | null): boolean {
  if (sql === library) return true;
  if (sql === null || library === null || !Number.isFinite(library)) return false;
  return Math.abs(sql - library) <= ULPS * Math.abs(library);
}

/** The latency of rank floor(q · (n − 1)) among the values (negative ones counted as 0). */
function exactQuantile(sorted: readonly number[], q: number): number {
  return sorted[Math.floor(q * (sorted.length - 1))] ?? Number.NaN;
}

const sketchOf = (values: readonly number[]): LatencySketch => {
  const sketch = new LatencySketch();
  for (const value of values) sketch.add(value);
  return sketch;
};

/** Latencies in ms: everyday ones, exact zeros and negatives, and the extremes of a double. */
const latency = fc.oneof(
  { weight: 6, arbitrary: fc.double({ min: 0, max: 60_000, noNaN: true }) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 5000 }) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      0,
      -0,
      -5,
      Number.MIN_VALUE,
      2 ** -1022,
      ZERO_LIMIT,
      ZERO_LIMIT * 1.0000001,
      1e-300,
      1e-9,
      0.001,
      9.2e15,
      1e300,
      Number.MAX_VALUE / GAMMA,
    ),
  },
  { weight: 1, arbitrary: fc.double({ min: 1e-12, max: 1e18, noNaN: true }) },
);

/** Sets of latencies, split into up to 6 sketches (some possibly empty). */
const sketchSets = fc.array(fc.array(latency, { maxLength: 200, size: "max" }), {
  minLength: 0,
  maxLength: 6,
});

describe("latency percentiles in SQL (migration 7)", () => {
  const database = useFreshDatabase("mcpo_lq");
  let pool: pg.Pool;

  beforeAll(async () => {
    await migrate(database.current.url);
    pool = new pg.Pool({ connectionString: database.current.url, max: 2 });
  });
  afterAll(async () => {
    await pool.end();
  });

  async function sqlMerge(
    records: readonly LatencySketchRecord[],
  ): Promise<{ merged: LatencySketchRecord; quantiles: (number | null)[]; one: number | null }> {
    const { rows } = await pool.query<{
      merged: LatencySketchRecord;
      quantiles: (number | null)[];
      one: number | null;
    }>(
      `select latency_sketch_merge($1::jsonb) as merged,
              latency_quantiles($1::jsonb, $2::float8[]) as quantiles,
              latency_quantile($1::jsonb, $3::float8) as one`,
      [JSON.stringify(records), QUANTILES, 0.99],
    );
    const row = rows[0];
    if (!row) throw new Error("no row");
    return row;
  }

  it(
    "for random latencies in random sketches: the SQL merge is the library's merge, and every SQL quantile is the library's (same bin) and within 1% of the exact latency of its rank",
    { timeout: 120_000 },
    async () => {
      let runs = 0;
      let values = 0;
      await fc.assert(
        fc.asyncProperty(sketchSets, async (sets) => {
          runs++;
          const sketches = sets.map(sketchOf);
          const records = sketches.map((sketch) => sketch.toRecord());
          const merged = new LatencySketch();
          for (const sketch of sketches) merged.mergeFrom(sketch);
          const sql = await sqlMerge(records);

          expect(sql.merged).toEqual(merged.toRecord());
          const all = sets
            .flat()
            .map((value) => (value > 0 ? value : 0))
            .sort((a, b) => a - b);
          values += all.length;
          expect(sql.quantiles).toHaveLength(QUANTILES.length);
          QUANTILES.forEach((q, i) => {
            const got = sql.quantiles[i] ?? null;
            const library = merged.quantile(q);
            if (!sameBinValue(got, library)) expect(got, `q ${q}: SQL vs library`).toBe(library);
            if (all.length === 0) {
              expect(got, `q ${q} of no values`).toBeNull();
              return;
            }
            const exact = exactQuantile(all, q);
            if (exact <= ZERO_LIMIT)
              expect(got, `q ${q}: exact ${exact} is in the zero bin`).toBe(0);
            else if (Number.isFinite(got))
              expect(
                Math.abs((got ?? Number.NaN) - exact),
                `q ${q}: ${got} vs exact ${exact}`,
              ).toBeLessThanOrEqual(LATENCY_RELATIVE_ACCURACY * exact * (1 + 1e-12));
            // The topmost bin of a value near the largest double stands for more than the
            // largest double: the library gives Infinity there, and so does SQL.
            else expect(library, `q ${q}: SQL gave ${got}`).toBe(Number.POSITIVE_INFINITY);
          });
          if (!sameBinValue(sql.one, merged.quantile(0.99)))
            expect(sql.one, "latency_quantile(…, 0.99)").toBe(merged.quantile(0.99));
        }),
        { numRuns: 100, seed: SEED, endOnFailure: true },
      );
      expect(runs).toBe(100);
      expect(values).toBeGreaterThan(100 * 100);
    },
  );

  it("an empty list, empty sketches, one value, only zeros and a single sketch object", async () => {
    const empty = new LatencySketch().toRecord();
    expect(await sqlMerge([])).toEqual({
      merged: empty,
      quantiles: QUANTILES.map(() => null),
      one: null,
    });
    expect((await sqlMerge([empty, empty])).quantiles).toEqual(QUANTILES.map(() => null));

    const single = (await sqlMerge([sketchOf([123.456]).toRecord()])).quantiles;
    const library = sketchOf([123.456]).quantile(0.5) ?? Number.NaN;
    for (const value of single) expect(sameBinValue(value, library)).toBe(true);
    expect(Math.abs(library - 123.456)).toBeLessThanOrEqual(1.23456);

    expect((await sqlMerge([sketchOf([0, 0, -1]).toRecord(), empty])).quantiles).toEqual(
      QUANTILES.map(() => 0),
    );

    const { rows } = await pool.query<{ p: number | null; merged: LatencySketchRecord }>(
      "select latency_quantile($1::jsonb, 0.5) as p, latency_sketch_merge($1::jsonb) as merged",
      [JSON.stringify(sketchOf([5, 10, 20]).toRecord())],
    );
    expect(rows[0]?.merged).toEqual(sketchOf([5, 10, 20]).toRecord());
    expect(sameBinValue(rows[0]?.p ?? null, sketchOf([5, 10, 20]).quantile(0.5))).toBe(true);

    const nulls = await pool.query<{ q: number | null; m: unknown }>(
      "select latency_quantile(null, 0.5) as q, latency_sketch_merge(null) as m",
    );
    expect(nulls.rows[0]).toEqual({ q: null, m: null });
  });

  it("the merge_latency aggregate merges a group's sketches as latency_sketch_merge does", async () => {
    const sets = fc.sample(sketchSets, { numRuns: 20, seed: SEED });
    for (const [group, values] of sets.entries()) {
      const records = values.map((list) => sketchOf(list).toRecord());
      const { rows } = await pool.query<{ merged: LatencySketchRecord | null; p: number | null }>(
        `select merge_latency(s) as merged, latency_quantile(merge_latency(s), 0.9) as p
         from jsonb_array_elements($1::jsonb) as t(s)`,
        [JSON.stringify(records)],
      );
      const merged = new LatencySketch();
      for (const record of records) merged.mergeFrom(LatencySketch.fromRecord(record));
      if (records.length === 0) expect(rows[0]?.merged, `group ${group}`).toBeNull();
      else {
        expect(rows[0]?.merged, `group ${group}`).toEqual(merged.toRecord());
        expect(sameBinValue(rows[0]?.p ?? null, merged.quantile(0.9)), `group ${group}`).toBe(true);
      }
    }
  });

  it("refuses with a message naming what is wrong: another relative accuracy, counts that do not match the keys, a quantile outside [0, 1], not a sketch", async () => {
    const good = sketchOf([1, 2, 3]).toRecord();
    const refused = async (sketches: unknown, q = 0.5): Promise<string> => {
      const error = await pool
        .query("select latency_quantile($1::jsonb, $2::float8)", [JSON.stringify(sketches), q])
        .then(
          () => undefined,
          (caught: unknown) => caught as Error,
        );
      expect(error, JSON.stringify(sketches)).toBeInstanceOf(Error);
      return error?.message ?? "";
    };
    expect(await refused([good, { ...good, relative_accuracy: 0.02 }])).toMatch(
      /sketch 2 is not a latency sketch of relative accuracy 0\.01.*0\.02/,
    );
    expect(await refused([{ ...good, counts: [1] }])).toMatch(
      /sketch 1 is not a latency sketch .* as many counts as keys/,
    );
    expect(await refused([good], 1.5)).toMatch(/quantile 1\.5 is not in \[0, 1\]/);
    expect(await refused([good], -0.1)).toMatch(/quantile -0\.1 is not in \[0, 1\]/);
    expect(await refused("p99")).toMatch(
      /expected a latency sketch or an array of them, got a jsonb string/,
    );
    expect(await refused([good, 42])).toMatch(/sketch 2 is not a latency sketch/);
  });
});
