/**
 * The sink's writer stores a window's sums (cost, tokens, retries) exactly in PostgreSQL's bigint
 * columns, past 2^53 and up to 2^63 − 1, and reads them back as the same bigints.
 */
import { describe, expect, it } from "vitest";

import type { MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { rollupEvents } from "../metrics/index.js";
import { sampleEvent } from "./support/events.js";
import { useFreshWriter } from "./support/fresh-writer.js";

const SIZE = 60_000_000;
const ORIGIN = 1_764_000_000_000_000 - (1_764_000_000_000_000 % SIZE);
const MAX = Number.MAX_SAFE_INTEGER - 1; // avsc's largest long as a number: one event's most
const INT64_MAX = 2n ** 63n - 1n;

const call = (service: string, end: number, overrides: Partial<ModelCallEvent>): ModelCallEvent =>
  sampleEvent({
    service,
    model: "gpt-4o",
    kind: "model_call",
    start_time: end - 1_000,
    end_time: end,
    ...overrides,
  });

describe("PostgresWriter and sums past 2^53", () => {
  const fresh = useFreshWriter("mcpo_bigint");

  it("stores the exact sums of a window of large events, and reads them back as bigints", async () => {
    const events = [0, 1, 2].map((i) =>
      call("big-sums", ORIGIN + 1_000 + i, {
        cost_nano_usd: MAX,
        prompt_tokens: MAX,
        completion_tokens: MAX - 7,
        retries: 2 ** 31 - 1,
      }),
    );
    const rollups = rollupEvents(events, SIZE);
    await fresh.writer.write({ rollups });
    const { rows } = await fresh.pool.query<Record<string, string>>(
      `select scope, cost_nano_usd::text, prompt_tokens::text, completion_tokens::text, retries::text,
              cost_usd::text
         from metric_rollups where service = 'big-sums' order by scope desc`,
    );
    const cost = 3n * BigInt(MAX);
    expect(rows).toEqual(
      ["service", "model"].map((scope) => ({
        scope,
        cost_nano_usd: String(cost),
        prompt_tokens: String(cost),
        completion_tokens: String(3n * BigInt(MAX - 7)),
        retries: String(3n * BigInt(2 ** 31 - 1)),
        cost_usd: `${cost / 1_000_000_000n}.${String(cost % 1_000_000_000n).padStart(9, "0")}`,
      })),
    );
    const read = (await fresh.writer.openRollups(0)).filter((r) => r.service === "big-sums");
    expect(read).toEqual(rollups);
  });

  it("stores 2^63 − 1, PostgreSQL's bigint maximum, exactly", async () => {
    const [base] = rollupEvents([call("int64-max", ORIGIN + 1_000, {})], SIZE);
    if (!base) throw new Error("no rollup");
    const rollup: MetricRollup = {
      ...base,
      counts: {
        ...base.counts,
        cost_nano_usd: INT64_MAX,
        prompt_tokens: INT64_MAX - 1n,
        completion_tokens: 2n ** 53n + 1n,
        retries: 2n ** 62n,
      },
    };
    await fresh.writer.write({ rollups: [rollup] });
    const { rows } = await fresh.pool.query<Record<string, string>>(
      `select cost_nano_usd::text, prompt_tokens::text, completion_tokens::text, retries::text
         from metric_rollups where service = 'int64-max'`,
    );
    expect(rows).toEqual([
      {
        cost_nano_usd: "9223372036854775807",
        prompt_tokens: "9223372036854775806",
        completion_tokens: "9007199254740993",
        retries: "4611686018427387904",
      },
    ]);
    const [read] = (await fresh.writer.openRollups(0)).filter((r) => r.service === "int64-max");
    expect(read?.counts).toEqual(rollup.counts);
  });
});
