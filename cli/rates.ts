/**
 * The derived rates of stored rollups, per service and window (or merged into coarser buckets with
 * `merge_rollups`), as `report` and `demo` print them.
 */
import type pg from "pg";

import type { LatencySketch as LatencySketchRecord } from "../avro/generated.js";
import { LatencySketch } from "../metrics/index.js";
import { modelOfRow, rollupScope, storedModel, type RollupScope } from "../sink/writer.js";
import { count, percent, table, terminalText } from "./output.js";

/** One row of the rates table. */
export interface RatesRow {
  readonly service: string;
  /**
   * What the row covers: `service`, the service's totals over all models; `model`, one model's
   * calls; `other`, the window's overflow series (the calls of the models beyond its first
   * `maxModelsPerWindow`).
   */
  readonly scope: RollupScope;
  /**
   * The model; null for the service's totals over all models, "(other models)" for the overflow
   * series (tell it from a model of that name by `scope`).
   */
  readonly model: string | null;
  /** ISO time. */
  readonly windowStart: string;
  /** Stored windows merged into this row (1 without a bucket). */
  readonly windows: number;
  readonly calls: number;
  readonly costUsd: string;
  readonly avgCostUsd: number | null;
  readonly fallbackRate: number | null;
  readonly retryRate: number | null;
  readonly lowConfidenceRate: number | null;
  readonly confidenceGateBlockRate: number | null;
  readonly promptDiffViolationRate: number | null;
  readonly shadowDisagreementRate: number | null;
  readonly deterministicFallbackRate: number | null;
  readonly highRiskPathRate: number | null;
  readonly goldenFinancialFailureRate: number | null;
  readonly errorRate: number | null;
  readonly latencyP50Ms: number | null;
  readonly latencyP95Ms: number | null;
  readonly latencyP99Ms: number | null;
  readonly late: number;
}

export interface RatesQuery {
  readonly services?: readonly string[];
  readonly fromMs: number;
  readonly toMs: number;
  /** Merge windows into buckets of this size (ms); undefined: the stored windows. */
  readonly bucketMs?: number;
  /** A model, or the service totals (default). */
  readonly model?: string;
  /**
   * The overflow series instead (scope 'other': the calls of the models beyond each window's
   * first `maxModelsPerWindow`); `model` is then ignored.
   */
  readonly otherModels?: boolean;
  /** Only the newest N rows per service. */
  readonly lastPerService?: number;
}

const RATE_COLUMNS = `fallback_rate, retry_rate, low_confidence_rate, confidence_gate_block_rate,
  prompt_diff_violation_rate, shadow_disagreement_rate, deterministic_fallback_rate,
  high_risk_path_rate, golden_financial_failure_rate, error_rate, avg_cost_usd`;

interface DbRow {
  service: string;
  scope: RollupScope;
  model: string;
  window_start: Date;
  windows: string;
  calls: string;
  cost_usd: string;
  late: string;
  avg_cost_usd: number | null;
  fallback_rate: number | null;
  retry_rate: number | null;
  low_confidence_rate: number | null;
  confidence_gate_block_rate: number | null;
  prompt_diff_violation_rate: number | null;
  shadow_disagreement_rate: number | null;
  deterministic_fallback_rate: number | null;
  high_risk_path_rate: number | null;
  golden_financial_failure_rate: number | null;
  error_rate: number | null;
  latency_p50_ms: number | null;
  latency_p95_ms: number | null;
  latency_p99_ms: number | null;
  latency_sketches: LatencySketchRecord[] | null;
}

/** Rates of the stored rollups in a time range, oldest window first per service. */
export async function queryRates(pool: pg.Pool, query: RatesQuery): Promise<RatesRow[]> {
  const otherModels = query.otherModels === true;
  const scope = rollupScope(query.model ?? null, otherModels);
  const model = storedModel(query.model ?? null, otherModels);
  const services = query.services && query.services.length > 0 ? query.services : null;
  const from = new Date(query.fromMs);
  const to = new Date(query.toMs);
  const sql =
    query.bucketMs === undefined
      ? `select service, scope, model, window_start, 1 as windows, calls::text, cost_usd::text, late::text,
                ${RATE_COLUMNS}, latency_p50_ms, latency_p95_ms, latency_p99_ms, null as latency_sketches
         from metric_rollups
         where window_start >= $1 and window_start < $2 and scope = $5 and model = $3
           and ($4::text[] is null or service = any($4::text[]))`
      : `select service, scope, model, window_start, windows::text, calls::text, cost_usd::text, late::text,
                ${RATE_COLUMNS}, null as latency_p50_ms, null as latency_p95_ms, null as latency_p99_ms,
                latency_sketches
         from merge_rollups($6 * interval '1 millisecond', $1, $2)
         where scope = $5 and model = $3 and ($4::text[] is null or service = any($4::text[]))`;
  const params: unknown[] = [from, to, model, services, scope];
  if (query.bucketMs !== undefined) params.push(query.bucketMs);
  const { rows } = await pool.query<DbRow>(`${sql} order by service, window_start`, params);
  const result = rows.map((row): RatesRow => {
    let p50 = row.latency_p50_ms;
    let p95 = row.latency_p95_ms;
    let p99 = row.latency_p99_ms;
    if (row.latency_sketches) {
      // Sketches merge exactly: the bucket's percentiles are those of all its calls.
      const merged = new LatencySketch();
      for (const record of row.latency_sketches) merged.mergeFrom(LatencySketch.fromRecord(record));
      p50 = merged.quantile(0.5);
      p95 = merged.quantile(0.95);
      p99 = merged.quantile(0.99);
    }
    return {
      service: row.service,
      scope: row.scope,
      model: modelOfRow(row),
      windowStart: row.window_start.toISOString(),
      windows: Number(row.windows),
      calls: Number(row.calls),
      costUsd: row.cost_usd,
      avgCostUsd: row.avg_cost_usd,
      fallbackRate: row.fallback_rate,
      retryRate: row.retry_rate,
      lowConfidenceRate: row.low_confidence_rate,
      confidenceGateBlockRate: row.confidence_gate_block_rate,
      promptDiffViolationRate: row.prompt_diff_violation_rate,
      shadowDisagreementRate: row.shadow_disagreement_rate,
      deterministicFallbackRate: row.deterministic_fallback_rate,
      highRiskPathRate: row.high_risk_path_rate,
      goldenFinancialFailureRate: row.golden_financial_failure_rate,
      errorRate: row.error_rate,
      latencyP50Ms: p50,
      latencyP95Ms: p95,
      latencyP99Ms: p99,
      late: Number(row.late),
    };
  });
  if (query.lastPerService === undefined) return result;
  const byService = new Map<string, RatesRow[]>();
  for (const row of result)
    byService.set(row.service, [...(byService.get(row.service) ?? []), row]);
  return [...byService.values()].flatMap((list) => list.slice(-(query.lastPerService ?? 0)));
}

const ms = (value: number | null): string | null => (value === null ? null : value.toFixed(0));

/** One table per service. */
export function renderRates(rows: readonly RatesRow[]): string {
  const services = [...new Set(rows.map((row) => row.service))];
  return services
    .map((service) => {
      const list = rows.filter((row) => row.service === service);
      const first = list[0];
      const model =
        first === undefined || first.scope === "service"
          ? "all models"
          : first.scope === "other"
            ? "other models"
            : `model ${first.model ?? ""}`;
      return `${terminalText(service)} (${terminalText(model)})\n${table(
        [
          "window (UTC)",
          "calls",
          "cost $",
          "fallback",
          "retry",
          "low conf",
          "gate blk",
          "diff viol",
          "shadow dis",
          "det fb",
          "high risk",
          "golden fail",
          "error",
          "p50 ms",
          "p95 ms",
          "p99 ms",
          "late",
        ],
        list.map((row) => [
          row.windowStart.replace("T", " ").replace(/\.000Z$/, ""),
          count(row.calls),
          Number(row.costUsd).toFixed(4),
          percent(row.fallbackRate),
          percent(row.retryRate),
          percent(row.lowConfidenceRate),
          percent(row.confidenceGateBlockRate),
          percent(row.promptDiffViolationRate),
          percent(row.shadowDisagreementRate),
          percent(row.deterministicFallbackRate),
          percent(row.highRiskPathRate),
          percent(row.goldenFinancialFailureRate),
          percent(row.errorRate),
          ms(row.latencyP50Ms),
          ms(row.latencyP95Ms),
          ms(row.latencyP99Ms),
          row.late,
        ]),
      )}`;
    })
    .join("\n\n");
}
