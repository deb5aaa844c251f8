/**
 * The project's Grafana dashboards (deploy/grafana/dashboards/*.json) as the tests read them, and
 * what Grafana does to a panel's query before it reaches the datasource:
 *
 * 1. Template variables (the dashboard's, e.g. `$service`, `${service}`) are replaced in the
 *    browser. For the PostgreSQL datasource (its `interpolateVariable`): a variable that is
 *    `multi` or `includeAll` gives each value as a quoted SQL literal (`'a','b'`; "All" without a
 *    custom all value is every option), any other gives its value as is, quotes doubled.
 *    For Prometheus, the values joined as a regular-expression alternation (`a|b`).
 * 2. Grafana's interval variables: `$__interval_ms` (milliseconds), `$__interval` (the panel's
 *    interval as Grafana prints a duration: `30s`, `1m`, `2h`, `1d`, `100ms`), and for Prometheus
 *    `$__rate_interval` (max($__interval + scrape interval, 4 × scrape interval)) and `$__range`.
 * 3. For the PostgreSQL datasource, the backend's macros (Grafana's postgres macro engine):
 *    - `$__timeFilter(col)` → `col BETWEEN '<from>' AND '<to>'` (RFC 3339 UTC, fraction digits
 *      only as needed, as Go's RFC3339Nano prints them);
 *    - `$__timeFrom()` / `$__timeTo()` → `'<from>'` / `'<to>'`;
 *    - `$__time(col)` → `col AS "time"`; `$__timeEpoch(col)` → `extract(epoch from col) as "time"`;
 *    - `$__timeGroup(col,'5m')` → `floor(extract(epoch from col)/300)*300`, and
 *      `$__timeGroupAlias(col,'5m')` the same with ` AS "time"`;
 *    - `$__unixEpochFilter(col)` → `col >= <from s> AND col <= <to s>`, `$__unixEpochFrom()`,
 *      `$__unixEpochTo()` → seconds;
 *    any other `$__name(…)` is an error, as in Grafana ("unknown macro").
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

import { REPO_ROOT } from "./cli.js";

/** The dashboards' folder. */
export const DASHBOARDS_DIR = join(REPO_ROOT, "deploy", "grafana", "dashboards");

/** The datasources the dashboards may use, by uid (provisioned under deploy/grafana/provisioning). */
export const DATASOURCES = {
  postgres: { uid: "mcpo-postgres", type: "grafana-postgresql-datasource" },
  prometheus: { uid: "mcpo-prometheus", type: "prometheus" },
} as const;

export interface DatasourceRef {
  readonly type?: string;
  readonly uid?: string;
}

export interface GrafanaTarget {
  readonly refId: string;
  readonly datasource?: DatasourceRef;
  /** PostgreSQL: the query and whether it is a time series or a table. */
  readonly rawSql?: string;
  readonly format?: "time_series" | "table";
  /** Prometheus: the expression. */
  readonly expr?: string;
  readonly legendFormat?: string;
}

export interface GrafanaPanel {
  readonly id: number;
  readonly type: string;
  readonly title: string;
  readonly datasource?: DatasourceRef;
  readonly gridPos?: { h: number; w: number; x: number; y: number };
  readonly targets?: readonly GrafanaTarget[];
  readonly panels?: readonly GrafanaPanel[];
}

export interface GrafanaVariable {
  readonly name: string;
  readonly type: string;
  readonly datasource?: DatasourceRef;
  readonly query?: string;
  readonly multi?: boolean;
  readonly includeAll?: boolean;
}

export interface GrafanaAnnotation {
  readonly name: string;
  readonly builtIn?: number;
  readonly datasource?: DatasourceRef;
  readonly target?: GrafanaTarget;
}

export interface GrafanaDashboard {
  readonly uid: string;
  readonly title: string;
  readonly panels: readonly GrafanaPanel[];
  readonly templating?: { readonly list: readonly GrafanaVariable[] };
  readonly annotations?: { readonly list: readonly GrafanaAnnotation[] };
}

/** One dashboard file, parsed. */
export interface DashboardFile {
  readonly file: string;
  readonly dashboard: GrafanaDashboard;
}

/** Every `*.json` of the dashboards' folder, parsed (a file that does not parse throws, naming it). */
export function loadDashboards(dir = DASHBOARDS_DIR): DashboardFile[] {
  return readdirSync(dir)
    .filter((file) => file.endsWith(".json"))
    .sort()
    .map((file) => {
      const text = readFileSync(join(dir, file), "utf8");
      try {
        return { file, dashboard: JSON.parse(text) as GrafanaDashboard };
      } catch (error) {
        throw new Error(`${file}: not JSON: ${(error as Error).message}`, { cause: error });
      }
    });
}

/** Every panel, those inside rows too. */
export function allPanels(dashboard: GrafanaDashboard): GrafanaPanel[] {
  return dashboard.panels.flatMap((panel) => [panel, ...(panel.panels ?? [])]);
}

/** A query target with where it comes from, for messages. */
export interface LocatedTarget {
  readonly where: string;
  readonly datasource: DatasourceRef | undefined;
  readonly target: GrafanaTarget;
}

/** Every panel target and annotation query of a dashboard (the panel's datasource if the target has none). */
export function allTargets(file: DashboardFile): LocatedTarget[] {
  const { dashboard } = file;
  const panels = allPanels(dashboard).flatMap((panel) =>
    (panel.targets ?? []).map((target) => ({
      where: `${file.file} panel "${panel.title}" target ${target.refId}`,
      datasource: target.datasource ?? panel.datasource,
      target,
    })),
  );
  const annotations = (dashboard.annotations?.list ?? [])
    .filter((annotation) => annotation.builtIn !== 1 && annotation.target)
    .map((annotation) => ({
      where: `${file.file} annotation "${annotation.name}"`,
      datasource: annotation.target?.datasource ?? annotation.datasource,
      target: annotation.target as GrafanaTarget,
    }));
  return [...panels, ...annotations];
}

/** The time range and interval a panel is rendered with. */
export interface RenderContext {
  readonly from: Date;
  readonly to: Date;
  readonly intervalMs: number;
  /** The chosen values of the dashboard's variables, by name. */
  readonly variables: ReadonlyMap<string, readonly string[]>;
}

/** A duration as Grafana prints `$__interval`: the largest whole unit (`90s` is `1m`). */
export function formatInterval(ms: number): string {
  const units: readonly [number, string][] = [
    [365 * 24 * 3_600_000, "y"],
    [7 * 24 * 3_600_000, "w"],
    [24 * 3_600_000, "d"],
    [3_600_000, "h"],
    [60_000, "m"],
    [1000, "s"],
  ];
  for (const [size, unit] of units) if (ms >= size) return `${Math.floor(ms / size)}${unit}`;
  return `${Math.floor(ms)}ms`;
}

/** A time as Go's RFC3339Nano prints it in UTC: no fraction when whole seconds. */
export function rfc3339Nano(time: Date): string {
  return time
    .toISOString()
    .replace(/\.(\d*?)0+Z$/, ".$1Z")
    .replace(/\.Z$/, "Z");
}

const quoteLiteral = (value: string): string => `'${value.replace(/'/g, "''")}'`;
const escapeRegex = (value: string): string => value.replace(/[\\^$.|?*+()[\]{}]/g, "\\$&");

/** Replaces the dashboard's variables as Grafana's frontend does for this datasource. */
export function interpolateVariables(
  text: string,
  datasource: "postgres" | "prometheus",
  variables: readonly GrafanaVariable[],
  values: ReadonlyMap<string, readonly string[]>,
): string {
  return text.replace(/\$\{(\w+)\}|\$(\w+)/g, (whole, braced?: string, plain?: string) => {
    const name = braced ?? plain ?? "";
    const variable = variables.find((candidate) => candidate.name === name);
    if (!variable) return whole; // Grafana's own ($__interval …) or not a variable
    const chosen = values.get(name);
    if (!chosen) throw new Error(`no value chosen for the variable $${name}`);
    if (datasource === "prometheus")
      return chosen.length === 1
        ? escapeRegex(chosen[0] ?? "")
        : `(${chosen.map(escapeRegex).join("|")})`;
    if (variable.multi === true || variable.includeAll === true)
      return chosen.map(quoteLiteral).join(",");
    if (chosen.length !== 1)
      throw new Error(`$${name} is single-valued, got ${chosen.length} values`);
    return (chosen[0] ?? "").replace(/'/g, "''");
  });
}

/** `$__interval_ms` and `$__interval` (and, for Prometheus, `$__rate_interval`, `$__range`). */
export function interpolateIntervals(
  text: string,
  context: RenderContext,
  scrapeIntervalMs?: number,
): string {
  let out = text
    .replace(/\$__interval_ms\b/g, String(Math.floor(context.intervalMs)))
    .replace(/\$__range_s\b/g, String(Math.floor((+context.to - +context.from) / 1000)))
    .replace(/\$__range\b/g, formatInterval(+context.to - +context.from));
  if (scrapeIntervalMs !== undefined) {
    const rate = Math.max(context.intervalMs + scrapeIntervalMs, 4 * scrapeIntervalMs);
    out = out.replace(/\$__rate_interval\b/g, formatInterval(rate));
  }
  return out.replace(/\$__interval\b/g, formatInterval(context.intervalMs));
}

/** Expands the PostgreSQL datasource's macros (see the module comment); unknown ones throw. */
export function expandPostgresMacros(sql: string, from: Date, to: Date): string {
  const fromText = rfc3339Nano(from);
  const toText = rfc3339Nano(to);
  return sql.replace(/\$([_a-zA-Z0-9]+)\(([^)]*)\)/g, (whole, name: string, rawArgs: string) => {
    const args = rawArgs.split(",").map((arg) => arg.trim());
    const column = (): string => {
      if (!args[0]) throw new Error(`missing time column argument for macro ${name}: ${whole}`);
      return args[0];
    };
    const group = (): string => {
      if (args.length < 2)
        throw new Error(`macro ${name} needs a time column and an interval: ${whole}`);
      const seconds = parseGrafanaDuration(args[1]?.replace(/'/g, "") ?? "") / 1000;
      return `floor(extract(epoch from ${column()})/${seconds})*${seconds}`;
    };
    switch (name) {
      case "__time":
        return `${column()} AS "time"`;
      case "__timeEpoch":
        return `extract(epoch from ${column()}) as "time"`;
      case "__timeFilter":
        return `${column()} BETWEEN '${fromText}' AND '${toText}'`;
      case "__timeFrom":
        return `'${fromText}'`;
      case "__timeTo":
        return `'${toText}'`;
      case "__timeGroup":
        return group();
      case "__timeGroupAlias":
        return `${group()} AS "time"`;
      case "__unixEpochFilter":
        return `${column()} >= ${Math.floor(+from / 1000)} AND ${column()} <= ${Math.floor(+to / 1000)}`;
      case "__unixEpochFrom":
        return String(Math.floor(+from / 1000));
      case "__unixEpochTo":
        return String(Math.floor(+to / 1000));
      default:
        throw new Error(`unknown macro "${name}" in ${whole}`);
    }
  });
}

/** `5m`, `30s`, `1h`, `100ms`, `1d`, `1w` in milliseconds (Grafana's interval syntax). */
export function parseGrafanaDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)$/.exec(text.trim());
  if (!match) throw new Error(`not a Grafana interval: ${JSON.stringify(text)}`);
  const factor = {
    ms: 1,
    s: 1000,
    m: 60_000,
    h: 3_600_000,
    d: 86_400_000,
    w: 604_800_000,
    y: 31_536_000_000,
  };
  return Number(match[1]) * factor[match[2] as keyof typeof factor];
}

/**
 * A PostgreSQL target's SQL as the datasource runs it: variables, then `$__interval…`, then the
 * macros (Grafana's order).
 */
export function renderSql(
  sql: string,
  variables: readonly GrafanaVariable[],
  context: RenderContext,
): string {
  const withVariables = interpolateVariables(sql, "postgres", variables, context.variables);
  return expandPostgresMacros(
    interpolateIntervals(withVariables, context),
    context.from,
    context.to,
  );
}

/** A Prometheus expression as Grafana sends it, for a datasource with this scrape interval. */
export function renderPromQl(
  expr: string,
  variables: readonly GrafanaVariable[],
  context: RenderContext,
  scrapeIntervalMs: number,
): string {
  const withVariables = interpolateVariables(expr, "prometheus", variables, context.variables);
  return interpolateIntervals(withVariables, context, scrapeIntervalMs);
}
