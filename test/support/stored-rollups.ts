/**
 * Reading `metric_rollups` (or a replay's `metric_rollups_vN`) back as the oracle compares it:
 * every count column and every rate column, written out here rather than taken from the sink, so
 * a column the writer forgets is a failure, not a silently smaller comparison.
 */
import type pg from "pg";

import type { DerivedRates, MetricThresholds, WindowCounts } from "../../avro/generated.js";
import type { ComparableRollup } from "./oracle.js";

/** Every count column of a rollup row (the contract's WindowCounts). */
export const ROLLUP_COUNT_COLUMNS = [
  "calls",
  "calls_with_cost",
  "cost_nano_usd",
  "prompt_tokens",
  "completion_tokens",
  "calls_tokens_reported",
  "calls_tokens_estimated",
  "calls_tokens_none",
  "fallbacks",
  "calls_with_retries",
  "retries",
  "low_confidence",
  "calls_with_confidence",
  "gate_blocks",
  "calls_with_gate",
  "prompt_diff_violations",
  "calls_with_prompt_diff",
  "shadow_disagreements",
  "calls_with_shadow",
  "deterministic_fallbacks",
  "high_risk",
  "golden_failures",
  "golden_with_result",
  "errors",
  "late",
] as const satisfies readonly (keyof WindowCounts)[];

/** The rate columns PostgreSQL generates from the counts. */
export const GENERATED_RATE_COLUMNS = [
  "avg_cost_usd",
  "fallback_rate",
  "retry_rate",
  "low_confidence_rate",
  "confidence_gate_block_rate",
  "prompt_diff_violation_rate",
  "shadow_disagreement_rate",
  "deterministic_fallback_rate",
  "high_risk_path_rate",
  "golden_financial_failure_rate",
  "error_rate",
] as const satisfies readonly (keyof DerivedRates)[];

/** The latency quantiles stored from the sketch. */
export const STORED_QUANTILE_COLUMNS = [
  "latency_p50_ms",
  "latency_p95_ms",
  "latency_p99_ms",
] as const satisfies readonly (keyof DerivedRates)[];

/** Every rate column of a rollup row. */
export const ROLLUP_RATE_COLUMNS = [...GENERATED_RATE_COLUMNS, ...STORED_QUANTILE_COLUMNS] as const;

/** A stored rollup row: what the oracle compares, plus its window end and thresholds. */
export type StoredRollup = ComparableRollup & {
  readonly windowEnd: number;
  readonly thresholds: MetricThresholds;
};

/**
 * The rows of `table` matching the SQL condition `where` (scope 'service' is the service total,
 * model null here; scope 'other' the window's overflow series, `otherModels` here, with the
 * model "(other models)" its rollups carry), in (service, total first, overflow, model, window)
 * order.
 */
export async function storedRollups(
  client: pg.Client | pg.Pool,
  table = "metric_rollups",
  where = "true",
): Promise<StoredRollup[]> {
  if (!/^[a-z_][a-z0-9_]*$/.test(table)) throw new Error(`not a table name: ${table}`);
  const { rows } = await client.query<Record<string, string | number | null>>(
    `select service, scope, model,
            (extract(epoch from window_start) * 1000000)::bigint::text as window_start_us,
            (extract(epoch from window_end) * 1000000)::bigint::text as window_end_us,
            low_confidence_threshold, prompt_diff_threshold,
            ${ROLLUP_COUNT_COLUMNS.map((c) => `${c}::text`).join(", ")},
            ${ROLLUP_RATE_COLUMNS.join(", ")}
       from ${table} where ${where} order by service, scope desc, model, window_start`,
  );
  return rows.map((row) => ({
    service: String(row.service),
    model:
      row.scope === "service" ? null : row.scope === "other" ? "(other models)" : String(row.model),
    otherModels: row.scope === "other",
    windowStart: Number(row.window_start_us),
    windowEnd: Number(row.window_end_us),
    thresholds: {
      low_confidence: Number(row.low_confidence_threshold),
      prompt_diff: Number(row.prompt_diff_threshold),
    },
    counts: Object.fromEntries(ROLLUP_COUNT_COLUMNS.map((c) => [c, String(row[c])])),
    rates: Object.fromEntries(ROLLUP_RATE_COLUMNS.map((c) => [c, row[c] ?? null])),
  }));
}
