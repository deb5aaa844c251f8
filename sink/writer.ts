/**
 * The one writer of spans, rollups and alerts into PostgreSQL, used by the sink and by the
 * PostgresExporter. Set-based: each table gets one `INSERT … SELECT FROM unnest(…)` per batch,
 * never a round trip per row; keys are deduplicated inside the batch first (ON CONFLICT cannot
 * touch a row twice). A batch's rows and the consumed offsets go in one transaction.
 *
 * - Spans insert once: a redelivered event changes nothing.
 * - Rollups upsert by (service, model, window), the highest revision winning: a rollup replaces
 *   the stored row only when its revision is the same (a replayed rollup: equal values) or
 *   higher (a window revised by late events); an older revision read again changes nothing.
 * - Alerts upsert by id: the newest transition (by `emitted_at`) sets the state, and `history`
 *   gains each transition once.
 */
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";

import pg from "pg";
import { from as copyFrom } from "pg-copy-streams";

import type {
  AlertEvent,
  LatencySketch as LatencySketchRecord,
  MetricRollup,
  ModelCallEvent,
} from "../avro/generated.js";
import { ConfigError } from "../config/index.js";
import { countsFrom, deriveRates, LatencySketch, OTHER_MODELS_NAME } from "../metrics/index.js";

/** A span and where it was read from (none for the direct PostgresExporter). */
export interface SpanRow {
  readonly event: ModelCallEvent;
  readonly source?: { readonly topic: string; readonly partition: number; readonly offset: string };
}

/** The next offset to read, per consumer group, topic and partition. */
export interface OffsetRow {
  readonly group: string;
  readonly topic: string;
  readonly partition: number;
  readonly nextOffset: string;
  /**
   * The id of the topic it was read from (see `fetchTopicIds`); absent in positions stored
   * before topic ids were, and left as stored when not given.
   */
  readonly topicId?: string;
}

/** The topic ids a group's stored positions of one topic carry. */
export interface StoredTopicIds {
  readonly topic: string;
  /** The distinct ids; `null` for positions stored without one. */
  readonly ids: readonly (string | null)[];
}

export interface WriteBatch {
  readonly spans?: readonly SpanRow[];
  readonly rollups?: readonly MetricRollup[];
  readonly alerts?: readonly AlertEvent[];
  readonly offsets?: readonly OffsetRow[];
}

/** What a write did. */
export interface WriteResult {
  /** New span rows; `spansDuplicate` were already there (or repeated in the batch). */
  readonly spansInserted: number;
  readonly spansDuplicate: number;
  readonly rollupsUpserted: number;
  /**
   * Rollups not written because a higher revision of their key is stored or in the same batch
   * (an older emission of a window read again).
   */
  readonly rollupsSuperseded: number;
  readonly alertsUpserted: number;
}

const MICROS = "timestamptz 'epoch' + (x * interval '1 microsecond')";
const ts = (column: string): string => MICROS.replace("x", column);

export const COUNT_COLUMNS = [
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
] as const;

/** The key of a rollup row. */
export const ROLLUP_KEY_COLUMNS = [
  "service",
  "scope",
  "model",
  "window_start",
  "window_end",
] as const;

/** Every stored (not generated) column of a rollup row after its key. */
export const ROLLUP_VALUE_COLUMNS = [
  "low_confidence_threshold",
  "prompt_diff_threshold",
  ...COUNT_COLUMNS,
  "latency_sketch",
  "latency_p50_ms",
  "latency_p95_ms",
  "latency_p99_ms",
  "revision",
] as const;

/** The alias rollup upserts give their target table (see {@link ROLLUP_UPSERT}). */
export const ROLLUP_TARGET_ALIAS = "stored";

/**
 * `on conflict … do update` of a rollup row, for an `insert into <table> as stored`: the row
 * takes the rollup's values when the rollup's revision is at least the stored one (the same
 * revision again writes equal values); a lower revision leaves the row as it is.
 */
export const ROLLUP_UPSERT = `on conflict (${ROLLUP_KEY_COLUMNS.join(", ")}) do update set ${ROLLUP_VALUE_COLUMNS.map(
  (name) => `${name} = excluded.${name}`,
).join(", ")}, updated_at = now() where ${ROLLUP_TARGET_ALIAS}.revision <= excluded.revision`;

/**
 * What a rollup row covers: `service`, the total over all of the service's calls (its `model`
 * column is ''), `model`, one model's calls (`model` is the model's name, whatever it is), or
 * `other`, the window's overflow series: the calls of the models beyond its first
 * `maxModelsPerWindow` (`model` is ''). The scope is part of the row's key, so no model name, not
 * even "*", "" or "(other models)", can address the total or the overflow series.
 */
export type RollupScope = "service" | "model" | "other";

/**
 * The scope of a rollup of `model` (null: the service total); `otherModels`: the overflow series
 * (a rollup's `other_models`).
 */
export function rollupScope(model: string | null, otherModels = false): RollupScope {
  return otherModels ? "other" : model === null ? "service" : "model";
}

/**
 * A row's model column: the model's name, or '' for the service total and the overflow series (a
 * key cannot be null).
 */
export function storedModel(model: string | null, otherModels = false): string {
  return otherModels ? "" : (model ?? "");
}

/**
 * A rollup's model from a row's scope and model columns: null for the service total, "(other
 * models)" for the overflow series (as its rollups carry it).
 */
export function modelOfRow(row: { readonly scope: string; readonly model: string }): string | null {
  return row.scope === "service" ? null : row.scope === "other" ? OTHER_MODELS_NAME : row.model;
}

/**
 * How spans reach their table: `unnest` (one `INSERT … SELECT FROM unnest(…)`), or `copy` (COPY
 * into a session-local staging table, then one `INSERT … SELECT … ON CONFLICT DO NOTHING`).
 * `npm run bench:sink` measures both.
 */
export type SpanWriteStrategy = "unnest" | "copy";

const SPAN_COLUMNS = [
  "span_id",
  "event_id",
  "trace_id",
  "parent_span_id",
  "kind",
  "service",
  "service_instance",
  "provider",
  "model",
  "tool_name",
  "mcp_method",
  "start_time",
  "end_time",
  "prompt_tokens",
  "completion_tokens",
  "token_source",
  "cost_nano_usd",
  "retries",
  "fallback_used",
  "confidence",
  "confidence_gate_threshold",
  "high_risk_path",
  "deterministic_fallback_triggered",
  "prompt_diff_score",
  "shadow_agreement",
  "is_golden_financial_scenario",
  "golden_scenario_passed",
  "status",
  "error_type",
  "prompt_size_bytes",
  "response_size_bytes",
  "prompt_sha256",
  "response_sha256",
  "prompt_text",
  "response_text",
  "attributes",
  "source_topic",
  "source_partition",
  "source_offset",
  "cache_read_tokens",
  "cache_write_tokens",
  "input_audio_tokens",
  "output_audio_tokens",
] as const;

/** A value as a CSV field for COPY: empty for NULL, quoted text otherwise. */
function csvField(value: string | number | boolean | null | undefined): string {
  if (value === null || value === undefined) return "";
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  return `"${value.replace(/"/g, '""')}"`;
}

/** Microseconds since the epoch as an exact ISO timestamp for COPY. */
function isoMicros(micros: number): string {
  const millis = Math.floor(micros / 1000);
  const rest = micros - millis * 1000;
  return new Date(millis).toISOString().replace("Z", `${String(rest).padStart(3, "0")}Z`);
}

function spanCsvLine(row: SpanRow): string {
  const e = row.event;
  return [
    e.span_id,
    e.event_id,
    e.trace_id,
    e.parent_span_id,
    e.kind,
    e.service,
    e.service_instance,
    e.provider,
    e.model,
    e.tool_name,
    e.mcp_method,
    isoMicros(e.start_time),
    isoMicros(e.end_time),
    e.prompt_tokens,
    e.completion_tokens,
    e.token_source,
    e.cost_nano_usd,
    e.retries,
    e.fallback_used,
    e.confidence,
    e.confidence_gate_threshold,
    e.high_risk_path,
    e.deterministic_fallback_triggered,
    e.prompt_diff_score,
    e.shadow_agreement,
    e.is_golden_financial_scenario,
    e.golden_scenario_passed,
    e.status,
    e.error_type,
    e.prompt_size_bytes,
    e.response_size_bytes,
    e.prompt_sha256 ? `\\x${e.prompt_sha256.toString("hex")}` : null,
    e.response_sha256 ? `\\x${e.response_sha256.toString("hex")}` : null,
    e.prompt_text,
    e.response_text,
    JSON.stringify(e.attributes),
    row.source?.topic ?? null,
    row.source?.partition ?? null,
    row.source?.offset ?? null,
    e.cache_read_tokens,
    e.cache_write_tokens,
    e.input_audio_tokens,
    e.output_audio_tokens,
  ]
    .map(csvField)
    .join(",");
}

/** The tables a writer writes rollups and alerts into (replays may write into fresh ones). */
export interface WriterTables {
  readonly rollups: string;
  readonly alerts: string;
}

export const DEFAULT_TABLES: WriterTables = Object.freeze({
  rollups: "metric_rollups",
  alerts: "alerts",
});

/** A plain SQL identifier (optionally schema-qualified): safe to splice into statements. */
export function checkIdentifier(name: string, key: string): string {
  if (!/^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?$/.test(name))
    throw new ConfigError(
      key,
      `expected a lower-case SQL identifier such as metric_rollups_v2 (got ${JSON.stringify(name)})`,
    );
  return name;
}

/**
 * A connection pool to `databaseUrl` for the pipeline's writers and readers. A connection that
 * breaks while idle in the pool (PostgreSQL restarted, the backend terminated) is dropped and
 * reported through `onLost` instead of crashing the process; the next query opens a new one.
 */
export function openPool(
  databaseUrl: string,
  options: { readonly max: number; readonly onLost?: (error: Error) => void },
): pg.Pool {
  const pool = new pg.Pool({
    connectionString: databaseUrl,
    max: options.max,
    connectionTimeoutMillis: 5000,
  });
  pool.on("error", (error) => {
    options.onLost?.(error);
  });
  return pool;
}

/**
 * Runs `work` in a transaction on a client of `pool`, committed when it resolves and rolled back
 * when it throws. A connection that breaks while the client is checked out but between two of its
 * queries (PostgreSQL restarted, the backend terminated: an `error` event no query receives)
 * fails the transaction with that error instead of crashing the process; such a client is
 * discarded, not returned to the pool.
 */
export async function inTransaction<T>(
  pool: pg.Pool,
  work: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  const onError = (error: Error): void => {
    broken ??= error;
  };
  client.on("error", onError);
  try {
    await client.query("begin");
    const result = await work(client);
    if (broken) throw broken;
    await client.query("commit");
    return result;
  } catch (error) {
    broken ??= await client.query("rollback").then(
      () => undefined,
      (rollbackError: unknown) =>
        rollbackError instanceof Error ? rollbackError : new Error(String(rollbackError)),
    );
    throw broken ?? error;
  } finally {
    client.off("error", onError);
    client.release(broken);
  }
}

export class PostgresWriter {
  private readonly tables: WriterTables;

  constructor(
    private readonly pool: pg.Pool,
    private readonly spanStrategy: SpanWriteStrategy = "unnest",
    tables: WriterTables = DEFAULT_TABLES,
  ) {
    this.tables = {
      rollups: checkIdentifier(tables.rollups, "tables.rollups"),
      alerts: checkIdentifier(tables.alerts, "tables.alerts"),
    };
  }

  /** Writes a batch in one transaction. */
  async write(batch: WriteBatch): Promise<WriteResult> {
    return inTransaction(this.pool, async (client) => {
      const spans = await this.writeSpans(client, batch.spans ?? []);
      const rollups = await this.writeRollups(client, batch.rollups ?? []);
      const alertsUpserted = await this.writeAlerts(client, batch.alerts ?? []);
      await this.writeOffsets(client, batch.offsets ?? []);
      return { ...spans, ...rollups, alertsUpserted };
    });
  }

  /** The stored next offsets of a group, by topic and partition. */
  async offsets(group: string): Promise<OffsetRow[]> {
    const { rows } = await this.pool.query<{
      topic: string;
      partition: number;
      next_offset: string;
      topic_id: string | null;
    }>(
      "select topic, partition, next_offset::text, topic_id from consumed_offsets where consumer_group = $1",
      [group],
    );
    return rows.map((row) => ({
      group,
      topic: row.topic,
      partition: row.partition,
      nextOffset: row.next_offset,
      ...(row.topic_id === null ? {} : { topicId: row.topic_id }),
    }));
  }

  /** The topic ids a group's stored positions of `topics` carry (topics without any left out). */
  async storedTopicIds(group: string, topics: readonly string[]): Promise<StoredTopicIds[]> {
    const { rows } = await this.pool.query<{ topic: string; ids: (string | null)[] }>(
      `select topic, array_agg(distinct topic_id) as ids from consumed_offsets
       where consumer_group = $1 and topic = any($2::text[]) group by topic order by topic`,
      [group, topics],
    );
    return rows.map((row) => ({ topic: row.topic, ids: row.ids }));
  }

  /** Gives a group's positions of `topic` stored without a topic id the id `topicId`. */
  async adoptTopicId(group: string, topic: string, topicId: string): Promise<number> {
    const result = await this.pool.query(
      "update consumed_offsets set topic_id = $3 where consumer_group = $1 and topic = $2 and topic_id is null",
      [group, topic, topicId],
    );
    return result.rowCount ?? 0;
  }

  /**
   * Replaces a group's positions of `topic` (those of a topic deleted since) by the start of the
   * topic now there: offset 0 of each of its `partitions`, under its id. In one transaction.
   *
   * @returns how many positions were discarded.
   */
  async restartTopic(
    group: string,
    topic: string,
    topicId: string,
    partitions: number,
  ): Promise<number> {
    return inTransaction(this.pool, async (client) => {
      const discarded = await client.query(
        "delete from consumed_offsets where consumer_group = $1 and topic = $2",
        [group, topic],
      );
      await client.query(
        `insert into consumed_offsets (consumer_group, topic, partition, next_offset, topic_id)
         select $1, $2, partition, 0, $3 from generate_series(0, $4::int - 1) as partition`,
        [group, topic, topicId, partitions],
      );
      return discarded.rowCount ?? 0;
    });
  }

  /**
   * The rollup rows (every service, total and models) of the windows ending after `sinceMicros`,
   * read back as rollups: counts, thresholds, the latency sketch and the revision as stored, rates
   * derived from them. For a writer that restarts and continues the windows that may still be
   * open (the PostgresExporter's direct mode). Ordered by service, window, then model (total
   * first).
   */
  async openRollups(sinceMicros: number): Promise<MetricRollup[]> {
    const micros = (column: string): string =>
      `(extract(epoch from ${column}) * 1000000)::bigint::text as ${column}`;
    const { rows } = await this.pool.query<
      Record<"service" | "scope" | "model" | "window_start" | "window_end", string> &
        Record<(typeof COUNT_COLUMNS)[number], string> & {
          low_confidence_threshold: number;
          prompt_diff_threshold: number;
          latency_sketch: LatencySketchRecord;
          revision: number;
        }
    >(
      `select service, scope, model, ${micros("window_start")}, ${micros("window_end")},
         low_confidence_threshold, prompt_diff_threshold,
         ${COUNT_COLUMNS.map((name) => `${name}::text`).join(", ")}, latency_sketch, revision
       from ${this.tables.rollups}
       where window_end > ${ts("$1::bigint")}
       order by service, window_start, window_end, scope = 'service' desc, scope = 'other', model`,
      [sinceMicros],
    );
    return rows.map((row) => {
      // Read as text: the sums (bigint columns) come back exact, as bigints.
      const counts = countsFrom(row);
      const latency = LatencySketch.fromRecord(row.latency_sketch);
      return {
        service: row.service,
        model: modelOfRow(row),
        window_start: Number(row.window_start),
        window_end: Number(row.window_end),
        thresholds: {
          low_confidence: row.low_confidence_threshold,
          prompt_diff: row.prompt_diff_threshold,
        },
        counts,
        latency: latency.toRecord(),
        rates: deriveRates(counts, latency),
        revision: row.revision,
        other_models: row.scope === "other",
      };
    });
  }

  private async writeSpans(
    client: pg.PoolClient,
    rows: readonly SpanRow[],
  ): Promise<{ spansInserted: number; spansDuplicate: number }> {
    if (rows.length === 0) return { spansInserted: 0, spansDuplicate: 0 };
    if (this.spanStrategy === "copy") return this.copySpans(client, rows);
    const unique = new Map<string, SpanRow>();
    for (const row of rows) if (!unique.has(row.event.span_id)) unique.set(row.event.span_id, row);
    const list = [...unique.values()];
    const column = <T>(pick: (row: SpanRow) => T): T[] => list.map(pick);
    const result = await client.query(
      `insert into spans (span_id, event_id, trace_id, parent_span_id, kind, service, service_instance, provider, model,
         tool_name, mcp_method, start_time, end_time, prompt_tokens, completion_tokens, token_source, cost_nano_usd,
         retries, fallback_used, confidence, confidence_gate_threshold, high_risk_path, deterministic_fallback_triggered,
         prompt_diff_score, shadow_agreement, is_golden_financial_scenario, golden_scenario_passed, status, error_type,
         prompt_size_bytes, response_size_bytes, prompt_sha256, response_sha256, prompt_text, response_text, attributes,
         source_topic, source_partition, source_offset,
         cache_read_tokens, cache_write_tokens, input_audio_tokens, output_audio_tokens)
       select span_id, event_id::uuid, trace_id, parent_span_id, kind, service, service_instance, provider, model,
         tool_name, mcp_method, ${ts("start_us")}, ${ts("end_us")}, prompt_tokens, completion_tokens, token_source, cost_nano_usd,
         retries, fallback_used, confidence, confidence_gate_threshold, high_risk_path, deterministic_fallback_triggered,
         prompt_diff_score, shadow_agreement, is_golden_financial_scenario, golden_scenario_passed, status, error_type,
         prompt_size_bytes, response_size_bytes, prompt_sha256, response_sha256, prompt_text, response_text, attributes::jsonb,
         source_topic, source_partition, source_offset,
         cache_read_tokens, cache_write_tokens, input_audio_tokens, output_audio_tokens
       from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
         $10::text[], $11::text[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[], $16::text[], $17::bigint[],
         $18::int[], $19::bool[], $20::float8[], $21::float8[], $22::bool[], $23::bool[],
         $24::float8[], $25::bool[], $26::bool[], $27::bool[], $28::text[], $29::text[],
         $30::bigint[], $31::bigint[], $32::bytea[], $33::bytea[], $34::text[], $35::text[], $36::text[],
         $37::text[], $38::int[], $39::bigint[],
         $40::bigint[], $41::bigint[], $42::bigint[], $43::bigint[])
         as t(span_id, event_id, trace_id, parent_span_id, kind, service, service_instance, provider, model,
         tool_name, mcp_method, start_us, end_us, prompt_tokens, completion_tokens, token_source, cost_nano_usd,
         retries, fallback_used, confidence, confidence_gate_threshold, high_risk_path, deterministic_fallback_triggered,
         prompt_diff_score, shadow_agreement, is_golden_financial_scenario, golden_scenario_passed, status, error_type,
         prompt_size_bytes, response_size_bytes, prompt_sha256, response_sha256, prompt_text, response_text, attributes,
         source_topic, source_partition, source_offset,
         cache_read_tokens, cache_write_tokens, input_audio_tokens, output_audio_tokens)
       on conflict do nothing`,
      [
        column((r) => r.event.span_id),
        column((r) => r.event.event_id),
        column((r) => r.event.trace_id),
        column((r) => r.event.parent_span_id),
        column((r) => r.event.kind),
        column((r) => r.event.service),
        column((r) => r.event.service_instance),
        column((r) => r.event.provider),
        column((r) => r.event.model),
        column((r) => r.event.tool_name),
        column((r) => r.event.mcp_method),
        column((r) => r.event.start_time),
        column((r) => r.event.end_time),
        column((r) => r.event.prompt_tokens),
        column((r) => r.event.completion_tokens),
        column((r) => r.event.token_source),
        column((r) => r.event.cost_nano_usd),
        column((r) => r.event.retries),
        column((r) => r.event.fallback_used),
        column((r) => r.event.confidence),
        column((r) => r.event.confidence_gate_threshold),
        column((r) => r.event.high_risk_path),
        column((r) => r.event.deterministic_fallback_triggered),
        column((r) => r.event.prompt_diff_score),
        column((r) => r.event.shadow_agreement),
        column((r) => r.event.is_golden_financial_scenario),
        column((r) => r.event.golden_scenario_passed),
        column((r) => r.event.status),
        column((r) => r.event.error_type),
        column((r) => r.event.prompt_size_bytes),
        column((r) => r.event.response_size_bytes),
        column((r) => r.event.prompt_sha256),
        column((r) => r.event.response_sha256),
        column((r) => r.event.prompt_text),
        column((r) => r.event.response_text),
        column((r) => JSON.stringify(r.event.attributes)),
        column((r) => r.source?.topic ?? null),
        column((r) => r.source?.partition ?? null),
        column((r) => r.source?.offset ?? null),
        column((r) => r.event.cache_read_tokens),
        column((r) => r.event.cache_write_tokens),
        column((r) => r.event.input_audio_tokens),
        column((r) => r.event.output_audio_tokens),
      ],
    );
    const inserted = result.rowCount ?? 0;
    return { spansInserted: inserted, spansDuplicate: rows.length - inserted };
  }

  private async copySpans(
    client: pg.PoolClient,
    rows: readonly SpanRow[],
  ): Promise<{ spansInserted: number; spansDuplicate: number }> {
    const columns = SPAN_COLUMNS.join(", ");
    await client.query(
      `create temp table if not exists spans_stage on commit delete rows as select ${columns} from spans with no data`,
    );
    const stream = client.query(
      copyFrom(`copy spans_stage (${columns}) from stdin with (format csv)`),
    );
    const body = Readable.from([`${rows.map(spanCsvLine).join("\n")}\n`]);
    await pipeline(body, stream);
    const result = await client.query(
      `insert into spans (${columns}) select distinct on (span_id) ${columns} from spans_stage on conflict do nothing`,
    );
    const inserted = result.rowCount ?? 0;
    return { spansInserted: inserted, spansDuplicate: rows.length - inserted };
  }

  private async writeRollups(
    client: pg.PoolClient,
    rollups: readonly MetricRollup[],
  ): Promise<{ rollupsUpserted: number; rollupsSuperseded: number }> {
    if (rollups.length === 0) return { rollupsUpserted: 0, rollupsSuperseded: 0 };
    // One rollup per key: the highest revision, and of equal ones the last (the newest values).
    const unique = new Map<string, MetricRollup>();
    let superseded = 0;
    for (const rollup of rollups) {
      const key = JSON.stringify([
        rollup.service,
        rollupScope(rollup.model, rollup.other_models),
        storedModel(rollup.model, rollup.other_models),
        rollup.window_start,
        rollup.window_end,
      ]);
      const kept = unique.get(key);
      if (kept === undefined || kept.revision <= rollup.revision) {
        if (kept !== undefined && kept.revision < rollup.revision) superseded++;
        unique.set(key, rollup);
      } else superseded++;
    }
    const list = [...unique.values()];
    const base = [
      "service",
      "scope",
      "model",
      "start_us",
      "end_us",
      "low_confidence_threshold",
      "prompt_diff_threshold",
    ];
    const tail = [
      "latency_sketch",
      "latency_p50_ms",
      "latency_p95_ms",
      "latency_p99_ms",
      "revision",
    ];
    const names = [...base, ...COUNT_COLUMNS, ...tail];
    const types = [
      "text",
      "text",
      "text",
      "bigint",
      "bigint",
      "float8",
      "float8",
      ...COUNT_COLUMNS.map(() => "bigint"),
      "text",
      "float8",
      "float8",
      "float8",
      "int",
    ];
    const values: unknown[][] = [
      list.map((r) => r.service),
      list.map((r) => rollupScope(r.model, r.other_models)),
      list.map((r) => storedModel(r.model, r.other_models)),
      list.map((r) => r.window_start),
      list.map((r) => r.window_end),
      list.map((r) => r.thresholds.low_confidence),
      list.map((r) => r.thresholds.prompt_diff),
      // The sums are bigints: passed as decimal strings, exact, into bigint columns.
      ...COUNT_COLUMNS.map((name) => list.map((r) => String(r.counts[name]))),
      list.map((r) => JSON.stringify(r.latency)),
      list.map((r) => r.rates.latency_p50_ms),
      list.map((r) => r.rates.latency_p95_ms),
      list.map((r) => r.rates.latency_p99_ms),
      list.map((r) => r.revision),
    ];
    const stored = [...ROLLUP_KEY_COLUMNS, ...ROLLUP_VALUE_COLUMNS];
    const selected = stored.map((name) =>
      name === "window_start"
        ? ts("start_us")
        : name === "window_end"
          ? ts("end_us")
          : name === "latency_sketch"
            ? "latency_sketch::jsonb"
            : name,
    );
    const result = await client.query(
      `insert into ${this.tables.rollups} as ${ROLLUP_TARGET_ALIAS} (${stored.join(", ")})
       select ${selected.join(", ")}
       from unnest(${types.map((type, i) => `$${i + 1}::${type}[]`).join(", ")}) as t(${names.join(", ")})
       ${ROLLUP_UPSERT}`,
      values,
    );
    // Rows the upsert's condition skipped hold a higher revision than the rollup.
    const upserted = result.rowCount ?? 0;
    return { rollupsUpserted: upserted, rollupsSuperseded: superseded + list.length - upserted };
  }

  private async writeAlerts(client: pg.PoolClient, alerts: readonly AlertEvent[]): Promise<number> {
    if (alerts.length === 0) return 0;
    // One row per alert id: its newest transition, and every transition of the batch as history.
    const byId = new Map<string, { latest: AlertEvent; history: Map<string, AlertEvent> }>();
    for (const alert of alerts) {
      const entry = byId.get(alert.alert_id) ?? {
        latest: alert,
        history: new Map<string, AlertEvent>(),
      };
      if (alert.emitted_at >= entry.latest.emitted_at) entry.latest = alert;
      entry.history.set(`${alert.state}|${alert.emitted_at}`, alert);
      byId.set(alert.alert_id, entry);
    }
    const list = [...byId.values()];
    const transition = (alert: AlertEvent) => ({
      state: alert.state,
      emitted_at_us: alert.emitted_at,
      window_start_us: alert.window_start,
      observed_value: alert.observed_value,
      sample_count: alert.sample_count,
    });
    const result = await client.query(
      `insert into ${this.tables.alerts} as a (alert_id, service, rule, metric, comparator, state, threshold, min_samples, observed_value,
         sample_count, fired_window_start, window_start, window_end, emitted_at, history)
       select alert_id, service, rule, metric, comparator, state, threshold, min_samples, observed_value, sample_count,
         ${ts("fired_us")}, ${ts("start_us")}, ${ts("end_us")}, ${ts("emitted_us")}, history::jsonb
       from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::float8[], $8::bigint[],
         $9::float8[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::text[])
         as t(alert_id, service, rule, metric, comparator, state, threshold, min_samples, observed_value, sample_count,
         fired_us, start_us, end_us, emitted_us, history)
       on conflict (alert_id) do update set
         state = case when excluded.emitted_at >= a.emitted_at then excluded.state else a.state end,
         observed_value = case when excluded.emitted_at >= a.emitted_at then excluded.observed_value else a.observed_value end,
         sample_count = case when excluded.emitted_at >= a.emitted_at then excluded.sample_count else a.sample_count end,
         window_start = case when excluded.emitted_at >= a.emitted_at then excluded.window_start else a.window_start end,
         window_end = case when excluded.emitted_at >= a.emitted_at then excluded.window_end else a.window_end end,
         emitted_at = greatest(a.emitted_at, excluded.emitted_at),
         history = (
           select coalesce(jsonb_agg(entry order by (entry->>'emitted_at_us')::bigint, entry->>'state'), '[]'::jsonb)
           from (select distinct entry from jsonb_array_elements(a.history || excluded.history) as entry) as merged
         ),
         updated_at = now()`,
      [
        list.map((e) => e.latest.alert_id),
        list.map((e) => e.latest.service),
        list.map((e) => e.latest.rule),
        list.map((e) => e.latest.metric),
        list.map((e) => e.latest.comparator),
        list.map((e) => e.latest.state),
        list.map((e) => e.latest.threshold),
        list.map((e) => e.latest.min_samples),
        list.map((e) => e.latest.observed_value),
        list.map((e) => e.latest.sample_count),
        list.map((e) => e.latest.fired_window_start),
        list.map((e) => e.latest.window_start),
        list.map((e) => e.latest.window_end),
        list.map((e) => e.latest.emitted_at),
        list.map((e) => JSON.stringify([...e.history.values()].map(transition))),
      ],
    );
    return result.rowCount ?? 0;
  }

  private async writeOffsets(client: pg.PoolClient, offsets: readonly OffsetRow[]): Promise<void> {
    if (offsets.length === 0) return;
    const unique = new Map<string, OffsetRow>();
    for (const offset of offsets)
      unique.set(`${offset.group}\u0000${offset.topic}\u0000${offset.partition}`, offset);
    const list = [...unique.values()];
    await client.query(
      `insert into consumed_offsets (consumer_group, topic, partition, next_offset, topic_id)
       select * from unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::text[])
       on conflict (consumer_group, topic, partition) do update
         set next_offset = greatest(consumed_offsets.next_offset, excluded.next_offset),
             topic_id = coalesce(excluded.topic_id, consumed_offsets.topic_id), updated_at = now()`,
      [
        list.map((o) => o.group),
        list.map((o) => o.topic),
        list.map((o) => o.partition),
        list.map((o) => o.nextOffset),
        list.map((o) => o.topicId ?? null),
      ],
    );
  }
}
