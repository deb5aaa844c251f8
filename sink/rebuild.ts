/**
 * The PostgreSQL side of replays: where rebuilt rollups go, how they are checked against the
 * stored ones, and how they replace them.
 *
 * - Into the current tables: rebuilt rollups are written to an unlogged staging table first, so
 *   `--verify` can compare them with what is stored before anything changes; then they are
 *   upserted into `metric_rollups` in one statement (idempotent: equal values overwrite equal
 *   values; a stored row of a higher revision than the rebuilt one is kept). Alerts are upserted
 *   into `alerts` directly (their history merges).
 * - Into a new version: `metric_rollups_v<N>` and `alerts_v<N>` (the next free N), created like
 *   the current tables (columns, generated rates, keys, indexes); the current tables are not touched.
 */
import type pg from "pg";

import {
  checkIdentifier,
  DEFAULT_TABLES,
  modelOfRow,
  ROLLUP_KEY_COLUMNS,
  ROLLUP_TARGET_ALIAS,
  ROLLUP_UPSERT,
  ROLLUP_VALUE_COLUMNS,
  type RollupScope,
  type WriterTables,
} from "./writer.js";

/** Where a replay writes. */
export interface RebuildTarget {
  readonly mode: "current" | "new-version";
  /** Where rebuilt rollups and alerts are written during the replay. */
  readonly write: WriterTables;
  /** The table `--verify` compares against (the stored rollups). */
  readonly stored: string;
  /** The version number of a new version; undefined for the current tables. */
  readonly version: number | undefined;
}

/** Creates the tables a replay writes into. */
export async function prepareRebuild(
  pool: pg.Pool,
  mode: RebuildTarget["mode"],
): Promise<RebuildTarget> {
  if (mode === "new-version") {
    const { rows } = await pool.query<{ version: number | null }>(
      `select max(substring(table_name from '^metric_rollups_v([0-9]+)$')::int) as version
       from information_schema.tables
       where table_schema = current_schema() and table_name ~ '^metric_rollups_v[0-9]+$'`,
    );
    const version = (rows[0]?.version ?? 1) + 1;
    const write = { rollups: `metric_rollups_v${version}`, alerts: `alerts_v${version}` };
    await pool.query(
      `create table ${write.rollups} (like ${DEFAULT_TABLES.rollups} including all);
       create table ${write.alerts} (like ${DEFAULT_TABLES.alerts} including all)`,
    );
    return { mode, write, stored: DEFAULT_TABLES.rollups, version };
  }
  const staging = `mcpo_replay_staging_${process.pid}_${Date.now().toString(36)}`;
  await pool.query(
    `create unlogged table ${staging} (like ${DEFAULT_TABLES.rollups} including all)`,
  );
  return {
    mode,
    write: { rollups: staging, alerts: DEFAULT_TABLES.alerts },
    stored: DEFAULT_TABLES.rollups,
    version: undefined,
  };
}

/** Which stored rows a verification covers. */
export interface VerifyScope {
  /** Only these services (default: all). */
  readonly services?: readonly string[];
  /** Windows starting at or after this, µs. */
  readonly fromMicros?: number | null;
  /** Windows ending at or before this, µs. */
  readonly toMicros?: number | null;
  /** Partial replays: only these services, each from its own first window start, µs. */
  readonly serviceFloors?: Readonly<Record<string, number>>;
}

/** One rollup row that differs. */
export interface RollupDifference {
  readonly service: string;
  /** The row's scope: the service total, one model, or the window's overflow series. */
  readonly scope: RollupScope;
  /** The model, or null for the service total ("(other models)" for the overflow series). */
  readonly model: string | null;
  readonly windowStart: string;
  readonly windowEnd: string;
  readonly kind: "missing-from-stored" | "missing-from-rebuilt" | "different";
  /** For `different`: the columns whose values differ. */
  readonly columns: readonly string[];
}

/** What a verification found. */
export interface VerifyResult {
  readonly rebuiltRows: number;
  readonly storedRows: number;
  readonly differences: readonly RollupDifference[];
  /** All differences, even beyond the listed ones. */
  readonly differenceCount: number;
}

const COMPARED = ["window_end", ...ROLLUP_VALUE_COLUMNS];

/**
 * Compares rebuilt rollups with the stored ones, row by row and column by column, within the
 * scope; lists up to `limit` differences.
 */
export async function verifyRollups(
  pool: pg.Pool,
  rebuilt: string,
  stored: string,
  scope: VerifyScope,
  limit = 50,
): Promise<VerifyResult> {
  checkIdentifier(rebuilt, "rebuilt");
  checkIdentifier(stored, "stored");
  const conditions: string[] = [];
  const params: unknown[] = [];
  if (scope.services && scope.services.length > 0) {
    params.push(scope.services);
    conditions.push(`service = any($${params.length}::text[])`);
  }
  if (scope.fromMicros !== undefined && scope.fromMicros !== null) {
    params.push(scope.fromMicros);
    conditions.push(
      `window_start >= timestamptz 'epoch' + $${params.length}::bigint * interval '1 microsecond'`,
    );
  }
  if (scope.toMicros !== undefined && scope.toMicros !== null) {
    params.push(scope.toMicros);
    conditions.push(
      `window_end <= timestamptz 'epoch' + $${params.length}::bigint * interval '1 microsecond'`,
    );
  }
  if (scope.serviceFloors) {
    params.push(Object.keys(scope.serviceFloors), Object.values(scope.serviceFloors));
    conditions.push(
      `exists (select 1 from unnest($${params.length - 1}::text[], $${params.length}::bigint[]) as f(service, floor_us)
               where f.service = t.service and t.window_start >= timestamptz 'epoch' + f.floor_us * interval '1 microsecond')`,
    );
  }
  const where = conditions.length > 0 ? `where ${conditions.join(" and ")}` : "";
  const differs = COMPARED.map(
    (column) => `case when r.${column} is distinct from s.${column} then '${column}' end`,
  ).join(", ");
  const { rows } = await pool.query<{
    service: string | null;
    scope: RollupScope;
    model: string;
    window_start: string;
    window_end: string;
    kind: RollupDifference["kind"];
    columns: string[];
    total: string;
    rebuilt_rows: string;
    stored_rows: string;
  }>(
    `with r as (select * from ${rebuilt} as t ${where}),
          s as (select * from ${stored} as t ${where}),
          joined as (
            select coalesce(r.service, s.service) as service, coalesce(r.scope, s.scope) as scope,
                   coalesce(r.model, s.model) as model,
                   coalesce(r.window_start, s.window_start) as window_start,
                   coalesce(r.window_end, s.window_end) as window_end,
                   case when s.service is null then 'missing-from-stored'
                        when r.service is null then 'missing-from-rebuilt'
                        else 'different' end as kind,
                   array_remove(array[${differs}]::text[], null) as columns,
                   r.service is null or s.service is null as one_sided
            from r full join s using (service, scope, model, window_start)
          ),
          found as (select * from joined where one_sided or cardinality(columns) > 0)
     select service, scope, model, window_start::text, window_end::text, kind, columns,
            (select count(*) from found)::text as total,
            (select count(*) from r)::text as rebuilt_rows,
            (select count(*) from s)::text as stored_rows
     from (select 1) as one
     left join lateral (select * from found order by window_start, service, scope desc, model limit ${Math.max(0, Math.floor(limit))}) f on true`,
    params,
  );
  const first = rows[0];
  return {
    rebuiltRows: Number(first?.rebuilt_rows ?? 0),
    storedRows: Number(first?.stored_rows ?? 0),
    differenceCount: Number(first?.total ?? 0),
    differences: rows
      .flatMap((row) => (row.service === null ? [] : [{ ...row, service: row.service }]))
      .map((row) => ({
        service: row.service,
        scope: row.scope,
        model: modelOfRow(row),
        windowStart: row.window_start,
        windowEnd: row.window_end,
        kind: row.kind,
        columns: row.kind === "different" ? row.columns : [],
      })),
  };
}

/** Upserts the staged rollups into the current table, then drops the staging table. */
export async function finishRebuild(pool: pg.Pool, target: RebuildTarget): Promise<number> {
  if (target.mode !== "current") return 0;
  const staging = checkIdentifier(target.write.rollups, "staging");
  const columns = [...ROLLUP_KEY_COLUMNS, ...ROLLUP_VALUE_COLUMNS];
  const result = await pool.query(
    `insert into ${target.stored} as ${ROLLUP_TARGET_ALIAS} (${columns.join(", ")})
     select ${columns.join(", ")} from ${staging}
     ${ROLLUP_UPSERT}`,
  );
  await pool.query(`drop table ${staging}`);
  return result.rowCount ?? 0;
}

/** Drops what {@link prepareRebuild} created for a replay that failed (the staging table only). */
export async function abandonRebuild(pool: pg.Pool, target: RebuildTarget): Promise<void> {
  if (target.mode === "current")
    await pool.query(`drop table if exists ${checkIdentifier(target.write.rollups, "staging")}`);
}
