/**
 * The web UI's reads from PostgreSQL, each one parameterised query. Buckets merge rollups through
 * the database's own functions (`merge_rollups`, `latency_percentiles`, `latency_quantiles`), so
 * the UI shows what `report` and the dashboards show. Times travel as milliseconds since the
 * epoch, money as US dollars (a double: for display), counts as numbers.
 */
import type pg from "pg";

import { compare, DEFAULT_ALERT_RULES, type AlertRule } from "../metrics/rules.js";
import { RATIO_METRICS, type MetricName, type RatioMetric } from "../metrics/rates.js";

/** The metrics a service's rows carry, in the order the pages show them. */
export const RATE_METRICS = Object.freeze([
  "error_rate",
  "low_confidence_rate",
  "confidence_gate_block_rate",
  "prompt_diff_violation_rate",
  "shadow_disagreement_rate",
  "deterministic_fallback_rate",
  "golden_financial_failure_rate",
  "fallback_rate",
  "retry_rate",
] as const satisfies readonly RatioMetric[]);

export type RateMetric = (typeof RATE_METRICS)[number];

/** One alert rule as the pages draw it. */
export interface RuleView {
  readonly key: string;
  readonly metric: MetricName;
  readonly comparator: string;
  readonly threshold: number;
  readonly minSamples: number;
}

/** The rules the pages judge and draw: the processor's default rules. */
export function rulesView(rules: readonly AlertRule[] = DEFAULT_ALERT_RULES): RuleView[] {
  return rules.map((r) => ({
    key: r.key,
    metric: r.metric,
    comparator: r.comparator,
    threshold: r.threshold,
    minSamples: r.minSamples,
  }));
}

/** Columns by name; each a number or null. */
export type MetricValues = Record<string, number | null>;

/**
 * The rules a window breaches: its value compared with the threshold, judged only when the
 * metric's denominator (latency: calls) reaches the rule's minimum samples, as the processor does.
 */
export function breaches(
  values: MetricValues,
  rules: readonly AlertRule[] = DEFAULT_ALERT_RULES,
): string[] {
  const out: string[] = [];
  for (const rule of rules) {
    const value = values[rule.metric];
    if (value === null || value === undefined) continue;
    const denominator =
      rule.metric in RATIO_METRICS
        ? values[RATIO_METRICS[rule.metric as RatioMetric].denominator]
        : values.calls;
    if ((denominator ?? 0) < rule.minSamples) continue;
    if (compare(value, rule.comparator, rule.threshold)) out.push(rule.key);
  }
  return out;
}

const num = (value: unknown): number | null =>
  value === null || value === undefined ? null : Number(value);
const ms = (value: unknown): number => (value instanceof Date ? value.getTime() : Number(value));

/** An alert incident as the pages list it. */
export interface IncidentView {
  readonly alertId: string;
  readonly service: string;
  readonly rule: string;
  readonly metric: string;
  readonly comparator: string;
  readonly state: string;
  readonly threshold: number;
  readonly observedValue: number | null;
  readonly sampleCount: number;
  readonly firedAt: number;
  readonly windowStart: number;
  readonly windowEnd: number;
  readonly emittedAt: number;
  readonly history: unknown;
}

function incidentOf(row: Record<string, unknown>): IncidentView {
  return {
    alertId: String(row.alert_id),
    service: String(row.service),
    rule: String(row.rule),
    metric: String(row.metric),
    comparator: String(row.comparator),
    state: String(row.state),
    threshold: Number(row.threshold),
    observedValue: num(row.observed_value),
    sampleCount: Number(row.sample_count),
    firedAt: ms(row.fired_window_start),
    windowStart: ms(row.window_start),
    windowEnd: ms(row.window_end),
    emittedAt: ms(row.emitted_at),
    history: row.history,
  };
}

const INCIDENT_COLUMNS = `alert_id, service, rule, metric, comparator, state, threshold, observed_value,
  sample_count, fired_window_start, window_start, window_end, emitted_at, history`;

/** Column lists of a window's values: the rates, their denominators, and the totals. */
const TALLIES = [...new Set(RATE_METRICS.map((m) => RATIO_METRICS[m].denominator))];
const WINDOW_COLUMNS = [
  "calls",
  "errors",
  "prompt_tokens::float8 as prompt_tokens",
  "completion_tokens::float8 as completion_tokens",
  "cost_nano_usd::float8 / 1e9 as cost_usd",
  "latency_p50_ms",
  "latency_p95_ms",
  "latency_p99_ms",
  ...RATE_METRICS,
  ...TALLIES.filter((t) => t !== "calls"),
].join(", ");

/** One service on the fleet page. */
export interface FleetService {
  readonly service: string;
  /** Window starts (ms) of the series, ascending. */
  readonly times: number[];
  /** Per column (calls, cost_usd, error_rate, the rates, latency_p95_ms), a value per window. */
  readonly series: Record<string, (number | null)[]>;
  /** The newest window's values. */
  readonly latest: MetricValues & { readonly windowStart: number; readonly windowEnd: number };
  /** Keys of the rules the newest window breaches. */
  readonly breaching: string[];
}

export interface FleetView {
  readonly from: number;
  readonly to: number;
  readonly rules: RuleView[];
  readonly firing: IncidentView[];
  readonly services: FleetService[];
}

const SERIES_COLUMNS = ["calls", "cost_usd", "latency_p95_ms", ...RATE_METRICS];

/**
 * Every service's windows of the last `rangeMs` before the newest stored window (service totals,
 * as stored), its newest window judged by the rules, and the firing incidents.
 */
export async function fleetView(pool: pg.Pool, rangeMs: number): Promise<FleetView> {
  const newest = await pool.query<{ newest: Date | null }>(
    "select max(window_start) as newest from metric_rollups where scope = 'service'",
  );
  const newestMs = newest.rows[0]?.newest?.getTime();
  const firing = await pool.query(
    `select ${INCIDENT_COLUMNS} from alerts where state = 'firing' order by emitted_at desc, alert_id`,
  );
  if (newestMs === undefined)
    return {
      from: 0,
      to: 0,
      rules: rulesView(),
      firing: firing.rows.map(incidentOf),
      services: [],
    };
  const from = newestMs - rangeMs;
  const { rows } = await pool.query<Record<string, unknown>>(
    `select service, window_start, window_end, ${WINDOW_COLUMNS}
       from metric_rollups
      where scope = 'service' and window_start > $1 and window_start <= $2
      order by service, window_start`,
    [new Date(from), new Date(newestMs)],
  );
  const byService = new Map<string, Record<string, unknown>[]>();
  for (const row of rows) {
    const service = String(row.service);
    let list = byService.get(service);
    if (!list) byService.set(service, (list = []));
    list.push(row);
  }
  const services: FleetService[] = [];
  for (const [service, list] of byService) {
    const last = list[list.length - 1] as Record<string, unknown>;
    const latest: MetricValues = {};
    for (const [key, value] of Object.entries(last))
      if (key !== "service" && key !== "window_start" && key !== "window_end")
        latest[key] = num(value);
    const series: Record<string, (number | null)[]> = {};
    for (const column of SERIES_COLUMNS) series[column] = list.map((row) => num(row[column]));
    services.push({
      service,
      times: list.map((row) => ms(row.window_start)),
      series,
      latest: { ...latest, windowStart: ms(last.window_start), windowEnd: ms(last.window_end) },
      breaching: breaches(latest),
    });
  }
  return {
    from,
    to: newestMs,
    rules: rulesView(),
    firing: firing.rows.map(incidentOf),
    services,
  };
}

/** A service's page: its buckets, incidents, models and recent calls worth a look. */
export interface ServiceView {
  readonly service: string;
  readonly from: number;
  readonly to: number;
  readonly bucketMs: number;
  readonly rules: RuleView[];
  readonly times: number[];
  readonly series: Record<string, (number | null)[]>;
  readonly incidents: IncidentView[];
  readonly models: Record<string, number | string | null>[];
  readonly recentCalls: SpanView[];
}

/** A span as the pages show it: its columns, times in ms, cost in USD. */
export type SpanView = Record<string, number | string | boolean | null>;

/** A span as the pages show it. */
function spanOf(row: Record<string, unknown>): SpanView {
  const out: Record<string, number | string | boolean | null> = {};
  for (const [key, value] of Object.entries(row))
    out[key] =
      value === null || value === undefined
        ? null
        : value instanceof Date
          ? value.getTime()
          : typeof value === "number" || typeof value === "string" || typeof value === "boolean"
            ? value
            : JSON.stringify(value);
  return out;
}

const SPAN_COLUMNS = `span_id, trace_id, parent_span_id, kind, service, service_instance, provider, model,
  tool_name, mcp_method, start_time, end_time, duration_ms, prompt_tokens::float8 as prompt_tokens,
  completion_tokens::float8 as completion_tokens, token_source, cost_nano_usd::float8 / 1e9 as cost_usd,
  retries, fallback_used, confidence, confidence_gate_threshold, high_risk_path,
  deterministic_fallback_triggered, prompt_diff_score, shadow_agreement, is_golden_financial_scenario,
  golden_scenario_passed, status, error_type`;

/**
 * One service over the `rangeMs` before its newest window, in buckets of `bucketMs` (rollups
 * merged by `merge_rollups`, latency percentiles by `latency_percentiles`), with the incidents
 * that overlap the range, each model's totals and its recent failed and slowest calls.
 *
 * @returns undefined when the service has no rollups.
 */
export async function serviceView(
  pool: pg.Pool,
  service: string,
  rangeMs: number,
  bucketMs: number,
): Promise<ServiceView | undefined> {
  const newest = await pool.query<{ newest: Date | null }>(
    "select max(window_end) as newest from metric_rollups where scope = 'service' and service = $1",
    [service],
  );
  const newestMs = newest.rows[0]?.newest?.getTime();
  if (newestMs === undefined) return undefined;
  const to = newestMs;
  const from = to - rangeMs;
  const window = [new Date(from), new Date(to)];
  const bucket = `${bucketMs} milliseconds`;
  const merged = await pool.query<Record<string, unknown>>(
    `select m.window_start, m.calls, m.cost_usd::float8 as cost_usd, m.errors, ${RATE_METRICS.map((r) => `m.${r}`).join(", ")},
            t.prompt_tokens, t.completion_tokens, l.p50_ms, l.p95_ms, l.p99_ms
       from merge_rollups($1::interval, $2, $3) m
       join (select date_bin($1::interval, window_start, timestamptz 'epoch') as window_start,
                    sum(prompt_tokens)::float8 as prompt_tokens, sum(completion_tokens)::float8 as completion_tokens
               from metric_rollups
              where service = $4 and scope = 'service' and window_start >= $2 and window_start < $3
              group by 1) t on t.window_start = m.window_start
       left join latency_percentiles($1::interval, $2, $3) l
         on l.service = m.service and l.scope = m.scope and l.model = m.model and l.window_start = m.window_start
      where m.service = $4 and m.scope = 'service'
      order by m.window_start`,
    [bucket, ...window, service],
  );
  const columns = [
    "calls",
    "cost_usd",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    ...RATE_METRICS,
  ];
  const series: Record<string, (number | null)[]> = {};
  for (const column of columns) series[column] = merged.rows.map((row) => num(row[column]));
  const incidents = await pool.query(
    `select ${INCIDENT_COLUMNS} from alerts
      where service = $1 and fired_window_start < $3
        and (state = 'firing' or window_end >= $2)
      order by fired_window_start, alert_id`,
    [service, ...window],
  );
  const models = await pool.query<Record<string, unknown>>(
    `select case when scope = 'other' then '(other models)' else model end as model,
            sum(calls)::float8 as calls, sum(errors)::float8 as errors,
            sum(cost_nano_usd)::float8 / 1e9 as cost_usd,
            sum(prompt_tokens)::float8 as prompt_tokens, sum(completion_tokens)::float8 as completion_tokens,
            sum(errors)::float8 / nullif(sum(calls), 0) as error_rate,
            latency_quantiles(jsonb_agg(latency_sketch), array[0.5, 0.95, 0.99]) as latency
       from metric_rollups
      where service = $1 and scope in ('model', 'other') and window_start >= $2 and window_start < $3
      group by 1 order by 2 desc, 1`,
    [service, ...window],
  );
  const recent = await pool.query<Record<string, unknown>>(
    `(select ${SPAN_COLUMNS}, 'failed' as why from spans
       where service = $1 and end_time >= $2 and end_time <= $3 and status <> 'ok'
       order by end_time desc limit 10)
     union all
     (select ${SPAN_COLUMNS}, 'slow' as why from spans
       where service = $1 and end_time >= $2 and end_time <= $3 and status = 'ok'
       order by duration_ms desc, span_id limit 10)`,
    [service, ...window],
  );
  return {
    service,
    from,
    to,
    bucketMs,
    rules: rulesView(),
    times: merged.rows.map((row) => ms(row.window_start)),
    series,
    incidents: incidents.rows.map(incidentOf),
    models: models.rows.map((row) => {
      const latency = (row.latency as (number | null)[] | null) ?? [];
      return {
        model: String(row.model),
        calls: num(row.calls),
        errors: num(row.errors),
        cost_usd: num(row.cost_usd),
        prompt_tokens: num(row.prompt_tokens),
        completion_tokens: num(row.completion_tokens),
        error_rate: num(row.error_rate),
        p50_ms: num(latency[0]),
        p95_ms: num(latency[1]),
        p99_ms: num(latency[2]),
      };
    }),
    recentCalls: recent.rows.map(spanOf),
  };
}

/** Every span of a trace, by trace id or by the id of one of its spans, ordered by start. */
export async function traceView(
  pool: pg.Pool,
  id: string,
): Promise<{ readonly traceId: string; readonly spans: SpanView[] }> {
  const { rows } = await pool.query<Record<string, unknown>>(
    `select ${SPAN_COLUMNS} from spans
      where trace_id = coalesce((select trace_id from spans where span_id = $1), $1)
      order by start_time, span_id`,
    [id],
  );
  const spans = rows.map(spanOf);
  return { traceId: String(spans[0]?.trace_id ?? id), spans };
}

/** Filters of the alerts page; each optional. */
export interface AlertFilter {
  readonly service?: string;
  readonly rule?: string;
  readonly state?: string;
}

/** The newest `limit` incidents matching the filter, firing first. */
export async function alertsView(
  pool: pg.Pool,
  filter: AlertFilter,
  limit = 500,
): Promise<{ readonly incidents: IncidentView[]; readonly services: string[]; rules: string[] }> {
  const { rows } = await pool.query(
    `select ${INCIDENT_COLUMNS} from alerts
      where ($1::text is null or service = $1) and ($2::text is null or rule = $2)
        and ($3::text is null or state = $3)
      order by state = 'firing' desc, emitted_at desc, alert_id
      limit $4`,
    [filter.service ?? null, filter.rule ?? null, filter.state ?? null, limit],
  );
  const names = await pool.query<{ services: string[] | null; rules: string[] | null }>(
    "select array_agg(distinct service) as services, array_agg(distinct rule) as rules from alerts",
  );
  return {
    incidents: rows.map(incidentOf),
    services: names.rows[0]?.services ?? [],
    rules: names.rows[0]?.rules ?? [],
  };
}
