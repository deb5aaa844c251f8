/**
 * Cardinality guards against the real registry and PostgreSQL: the overflow series of a window
 * (the calls of the models beyond its first `maxModelsPerWindow`) is a rollup with `other_models`
 * true, a compatible evolution of MetricRollup that readers without the field take for a model
 * named "(other models)", never for the service total; PostgreSQL stores it with scope 'other'
 * (migration 5), apart from the total and from a model a client named "(other models)".
 */
import { randomUUID } from "node:crypto";

import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { defineContract, METRIC_ROLLUP } from "../avro/contracts.js";
import {
  METRIC_ROLLUP_SCHEMA,
  type AvroSchema,
  type MetricRollup,
  type ModelCallEvent,
} from "../avro/generated.js";
import { getCompatibility } from "../avro/registry.js";
import { queryRates, renderRates } from "../cli/rates.js";
import { rollupEvents } from "../metrics/index.js";
import { listMigrations, migrate } from "../sink/migrate.js";
import { PostgresWriter } from "../sink/writer.js";
import { sampleEvent } from "./support/events.js";
import { useFreshWriter } from "./support/fresh-writer.js";
import {
  createDatabase,
  dropDatabase,
  services,
  uniqueName,
  type FreshDatabase,
} from "./support/isolation.js";
import { expectMatchesOracle, oracleRollups } from "./support/oracle.js";
import { storedRollups } from "./support/stored-rollups.js";

const SECOND = 1_000_000;
const MINUTE = 60 * SECOND;
/** A minute boundary. */
const ORIGIN = 1_764_000_000 * SECOND;

/** Calls of `service` in the minute at ORIGIN, one per model, in this order. */
function calls(service: string, models: readonly string[]): ModelCallEvent[] {
  return models.map((model, i) =>
    sampleEvent({
      event_id: randomUUID(),
      service,
      model,
      start_time: ORIGIN + (i + 1) * SECOND - (1 + i) * 1000,
      end_time: ORIGIN + (i + 1) * SECOND,
      status: i % 2 === 0 ? "ok" : "error",
      error_type: i % 2 === 0 ? null : "timeout",
    }),
  );
}

/**
 * At two models per window: "(other models)" (a client's name) and gpt-4o have rows of their
 * own; claude and gpt-4o-mini (three calls) are folded into the overflow series.
 */
const MODELS = ["(other models)", "gpt-4o", "claude", "gpt-4o", "gpt-4o-mini", "claude"];

describe("MetricRollup's other_models field", () => {
  type Field = { name: string };
  /** MetricRollup as registered before the field. */
  type MetricRollupBefore = Omit<MetricRollup, "other_models">;
  const BEFORE: AvroSchema = {
    ...METRIC_ROLLUP_SCHEMA,
    fields: (METRIC_ROLLUP_SCHEMA as { fields: Field[] }).fields.filter(
      (field) => field.name !== "other_models",
    ),
  };

  const subject = valueSubject(uniqueName("evo-other-models"));
  afterAll(async () => {
    // The subject is this test's own: removed (soft, then for good) so no run leaves it behind.
    const url = `${services().schemaRegistryUrl}/subjects/${encodeURIComponent(subject)}`;
    await fetch(url, { method: "DELETE" });
    await fetch(`${url}?permanent=true`, { method: "DELETE" });
  });

  it("is a compatible evolution (FULL_TRANSITIVE): an old reader takes the overflow series for a model named (other models), not the total; old records read as other_models false", async () => {
    const before = await AvroCodec.register(defineContract<MetricRollupBefore>(BEFORE), {
      registryUrl: services().schemaRegistryUrl,
      subject,
    });
    const now = await AvroCodec.register(METRIC_ROLLUP, {
      registryUrl: services().schemaRegistryUrl,
      subject,
    });
    expect(now.schemaId).not.toBe(before.schemaId);
    expect(await getCompatibility(services().schemaRegistryUrl, subject)).toBe("FULL_TRANSITIVE");

    const rollups = rollupEvents(calls("evo-mcp", MODELS), MINUTE, undefined, 2);
    const overflow = rollups.find((rollup) => rollup.other_models);
    const total = rollups.find((rollup) => rollup.model === null);
    if (!overflow || !total) throw new Error("no overflow or total rollup");
    const { other_models: _other, ...overflowBefore } = overflow;
    const read = await before.decode(now.encode(overflow));
    expect(read).toEqual({ ok: true, value: overflowBefore, schemaId: now.schemaId });
    expect(read.ok && read.value.model).toBe("(other models)");

    const { other_models: _none, ...totalBefore } = total;
    expect(await now.decode(before.encode(totalBefore))).toEqual({
      ok: true,
      value: { ...totalBefore, other_models: false },
      schemaId: before.schemaId,
    });
  });
});

describe("migration 5 (rollup_other_models)", () => {
  let scratch: FreshDatabase | undefined;
  afterAll(async () => {
    if (scratch) await dropDatabase(scratch);
  });

  it("lets a database written before it store the overflow series with scope 'other' and model '' (before: the scope check refused it); it is idempotent", async () => {
    scratch = await createDatabase("mcpo_othermig");
    expect(
      await migrate(
        scratch.url,
        listMigrations().filter((migration) => migration.version < 5),
      ),
    ).toEqual([1, 2, 3, 4]);
    const pool = new pg.Pool({ connectionString: scratch.url, max: 1 });
    try {
      const writer = new PostgresWriter(pool);
      const rollups = rollupEvents(calls("mig-mcp", MODELS), MINUTE, undefined, 2);
      const overflow = rollups.filter((rollup) => rollup.other_models);
      expect(overflow).toHaveLength(1);
      await writer.write({ rollups: rollups.filter((rollup) => !rollup.other_models) });
      await expect(writer.write({ rollups: overflow })).rejects.toThrow(/metric_rollups_scope/);

      expect(await migrate(scratch.url)).toEqual([5, 6, 7]);
      expect(await writer.write({ rollups: overflow })).toMatchObject({ rollupsUpserted: 1 });
      const { rows } = await pool.query<{ scope: string; model: string; calls: string }>(
        "select scope, model, calls::text from metric_rollups where service = 'mig-mcp' order by scope, model",
      );
      expect(rows).toEqual([
        { scope: "model", model: "(other models)", calls: "1" },
        { scope: "model", model: "gpt-4o", calls: "2" },
        { scope: "other", model: "", calls: "3" },
        { scope: "service", model: "", calls: "6" },
      ]);
      // The overflow series has no model name; any other scope is refused.
      await expect(
        pool.query("update metric_rollups set model = 'x' where scope = 'other'"),
      ).rejects.toThrow(/metric_rollups_total_model/);
      await expect(
        pool.query("update metric_rollups set scope = 'others' where scope = 'other'"),
      ).rejects.toThrow(/metric_rollups_scope/);

      // Run again (as schema/postgres.sql does): nothing changes, the check stays.
      const five = listMigrations().find((migration) => migration.version === 5);
      if (!five) throw new Error("no migration 5");
      await pool.query(five.sql);
      const { rows: checks } = await pool.query<{ def: string }>(
        "select pg_get_constraintdef(oid) as def from pg_constraint where conname = 'metric_rollups_scope'",
      );
      expect(checks).toHaveLength(1);
      expect(checks[0]?.def).toContain("'other'");
      expect(
        (await pool.query<{ name: string }>("select name from schema_migrations where version = 5"))
          .rows,
      ).toEqual([{ name: "rollup_other_models" }]);
    } finally {
      await pool.end();
    }
  });
});

describe("the overflow series in metric_rollups", () => {
  const fresh = useFreshWriter("mcpo_other");

  it("is stored with scope 'other' beside the total and a model named (other models), equal to the oracle's at the same cap; read back as other_models; report shows it as (other models)", async () => {
    const events = calls("other-mcp", MODELS);
    const rollups = rollupEvents(events, MINUTE, undefined, 2);
    expect(
      rollups.map((rollup) => [rollup.model, rollup.other_models, rollup.counts.calls]),
    ).toEqual([
      [null, false, 6],
      ["(other models)", false, 1],
      ["gpt-4o", false, 2],
      ["(other models)", true, 3],
    ]);
    expect(await fresh.writer.write({ rollups })).toMatchObject({
      rollupsUpserted: 4,
      rollupsSuperseded: 0,
    });
    expectMatchesOracle(
      await storedRollups(fresh.pool, "metric_rollups", "service = 'other-mcp'"),
      oracleRollups(events, MINUTE, { maxModelsPerWindow: 2 }),
      "metric_rollups",
    );

    const reopened = await fresh.writer.openRollups(ORIGIN);
    expect(
      reopened.map((rollup) => [rollup.model, rollup.other_models, rollup.counts.calls]),
    ).toEqual([
      [null, false, 6],
      ["(other models)", false, 1],
      ["gpt-4o", false, 2],
      ["(other models)", true, 3],
    ]);

    const range = { fromMs: ORIGIN / 1000, toMs: (ORIGIN + MINUTE) / 1000 };
    for (const bucketMs of [undefined, 3_600_000]) {
      const bucket = bucketMs === undefined ? {} : { bucketMs };
      const other = await queryRates(fresh.pool, { ...range, ...bucket, otherModels: true });
      expect(
        other.map((row) => [row.scope, row.model, row.calls, row.errorRate]),
        `bucket ${String(bucketMs)}`,
      ).toEqual([["other", "(other models)", 3, 1 / 3]]);
      const named = await queryRates(fresh.pool, { ...range, ...bucket, model: "(other models)" });
      expect(named.map((row) => [row.scope, row.model, row.calls])).toEqual([
        ["model", "(other models)", 1],
      ]);
      const totals = await queryRates(fresh.pool, { ...range, ...bucket });
      expect(totals.map((row) => [row.scope, row.model, row.calls])).toEqual([
        ["service", null, 6],
      ]);
      expect(renderRates(other)).toContain("other-mcp (other models)");
      expect(renderRates(named)).toContain("other-mcp (model (other models))");
    }
  });
});
