/**
 * The Grafana dashboards (deploy/grafana/dashboards/*.json): their structure, and every query in
 * them run for real.
 *
 * `mcp-observatory demo` runs as a user runs it, against a fresh database, with the processor's and
 * the sink's metrics endpoints on known ports (a config file); a real Prometheus (the `prometheus`
 * binary, its own folder and port) scrapes them every second meanwhile, and one undecodable record
 * on model-calls gives the dead-letter panels something to show. Then every SQL target and
 * annotation is rendered as Grafana renders it for the PostgreSQL datasource (variables from their
 * own queries, `$__interval`, the macros: test/support/grafana.ts) and run on PostgreSQL, and must
 * return rows of the types Grafana expects; every PromQL target is evaluated by Prometheus's
 * /api/v1/query_range over the demo's run and must return series, of metrics the processor and
 * the sink really export.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { LatencySketch as LatencySketchRecord } from "../avro/generated.js";
import type { DemoSummary } from "../cli/commands/demo.js";
import { LatencySketch } from "../metrics/index.js";
import { startCli, type BackgroundCommand } from "./support/cli.js";
import {
  allPanels,
  allTargets,
  DATASOURCES,
  expandPostgresMacros,
  formatInterval,
  interpolateVariables,
  loadDashboards,
  renderPromQl,
  renderSql,
  type DashboardFile,
  type GrafanaVariable,
  type LocatedTarget,
  type RenderContext,
} from "./support/grafana.js";
import {
  createDatabase,
  dropDatabase,
  services,
  testKafka,
  uniqueName,
  type FreshDatabase,
} from "./support/isolation.js";
import { freePort, releasePort } from "./support/ports.js";
import { startPrometheus, type PrometheusServer } from "./support/prometheus.js";
import { waitFor } from "./support/wait.js";

const files: DashboardFile[] = loadDashboards();
const UIDS = new Set<string>([DATASOURCES.postgres.uid, DATASOURCES.prometheus.uid]);
const SCRAPE_MS = 1000;

/** PostgreSQL type OIDs Grafana reads as time, numbers and strings. */
const TIMESTAMPTZ = 1184;
const NUMERIC_TYPES = new Set([20, 21, 23, 700, 701, 1700]);
const TEXT_TYPES = new Set([25, 1043, 19]);

const isPostgres = (located: LocatedTarget): boolean =>
  located.datasource?.uid === DATASOURCES.postgres.uid;
const isPrometheus = (located: LocatedTarget): boolean =>
  located.datasource?.uid === DATASOURCES.prometheus.uid;
const variablesOf = (file: DashboardFile): readonly GrafanaVariable[] =>
  file.dashboard.templating?.list ?? [];

describe("the Grafana dashboards' JSON", () => {
  it("there are the five dashboards, each parses, and uids and titles are unique", () => {
    expect(files.map((file) => file.file)).toEqual([
      "cost-tokens.json",
      "fleet-overview.json",
      "latency.json",
      "pipeline-health.json",
      "service-rates.json",
    ]);
    const uids = files.map((file) => file.dashboard.uid);
    const titles = files.map((file) => file.dashboard.title);
    for (const uid of uids) expect(uid).toMatch(/^[A-Za-z0-9_-]{1,40}$/);
    expect(new Set(uids).size).toBe(files.length);
    expect(new Set(titles).size).toBe(files.length);
  });

  it("every panel, target, variable and annotation names one of the two provisioned datasources by uid; panel ids are unique and every panel has a place", () => {
    for (const file of files) {
      const panels = allPanels(file.dashboard);
      expect(panels.length, file.file).toBeGreaterThan(0);
      expect(new Set(panels.map((panel) => panel.id)).size, `${file.file} panel ids`).toBe(
        panels.length,
      );
      for (const panel of panels) {
        const where = `${file.file} panel "${panel.title}"`;
        expect(UIDS.has(panel.datasource?.uid ?? ""), `${where} datasource`).toBe(true);
        expect(panel.gridPos, `${where} gridPos`).toBeDefined();
        expect(panel.targets?.length ?? 0, `${where} targets`).toBeGreaterThan(0);
        for (const target of panel.targets ?? []) {
          expect(target.datasource?.uid, `${where} target ${target.refId}`).toBe(
            panel.datasource?.uid,
          );
          const query =
            target.datasource?.uid === DATASOURCES.postgres.uid ? target.rawSql : target.expr;
          expect(query?.trim() ?? "", `${where} target ${target.refId} query`).not.toBe("");
        }
      }
      for (const variable of variablesOf(file))
        expect(UIDS.has(variable.datasource?.uid ?? ""), `${file.file} $${variable.name}`).toBe(
          true,
        );
      for (const annotation of file.dashboard.annotations?.list ?? [])
        if (annotation.builtIn !== 1)
          expect(
            UIDS.has(annotation.datasource?.uid ?? ""),
            `${file.file} ${annotation.name}`,
          ).toBe(true);
    }
  });

  it("the macro expander renders as Grafana's PostgreSQL datasource does", () => {
    const from = new Date("2026-01-02T03:04:05.120Z");
    const to = new Date("2026-01-02T04:04:05Z");
    expect(
      expandPostgresMacros(
        "where $__timeFilter(t) and a < $__timeTo() and b > $__timeFrom()",
        from,
        to,
      ),
    ).toBe(
      "where t BETWEEN '2026-01-02T03:04:05.12Z' AND '2026-01-02T04:04:05Z' and a < '2026-01-02T04:04:05Z' and b > '2026-01-02T03:04:05.12Z'",
    );
    expect(expandPostgresMacros("select $__timeGroupAlias(window_start,'5m')", from, to)).toBe(
      `select floor(extract(epoch from window_start)/300)*300 AS "time"`,
    );
    expect(() => expandPostgresMacros("$__nope(x)", from, to)).toThrow(/unknown macro "__nope"/);
    expect([1500, 30_000, 90_000, 7_200_000, 86_400_000].map(formatInterval)).toEqual([
      "1s",
      "30s",
      "1m",
      "2h",
      "1d",
    ]);
    const multi: GrafanaVariable = {
      name: "service",
      type: "query",
      multi: true,
      includeAll: true,
    };
    const single: GrafanaVariable = { name: "one", type: "custom" };
    const values = new Map([
      ["service", ["a", "o'b"]],
      ["one", ["x'y"]],
    ]);
    expect(
      interpolateVariables("in ($service) and '${one}'", "postgres", [multi, single], values),
    ).toBe("in ('a','o''b') and 'x''y'");
    expect(interpolateVariables('{s=~"$service"}', "prometheus", [multi], values)).toBe(
      '{s=~"(a|o\'b)"}',
    );
  });
});

describe("every dashboard query, on the data of a demo run", () => {
  let database: FreshDatabase | undefined;
  let prefix = "";
  let work: string | undefined;
  let prometheus: PrometheusServer | undefined;
  let demo: BackgroundCommand | undefined;
  let summary: DemoSummary;
  let client: pg.Client | undefined;
  const db = (): pg.Client => {
    if (!client) throw new Error("no database connection: the demo did not run");
    return client;
  };
  let ranFromMs: number;
  let ranToMs: number;
  const ports: number[] = [];

  beforeAll(async () => {
    const fresh = await createDatabase("mcpo_dash");
    database = fresh;
    prefix = `${uniqueName("dash")}.`;
    const folder = mkdtempSync(join(tmpdir(), "mcpo-dashboards-"));
    work = folder;
    const processorPort = await freePort();
    const sinkPort = await freePort();
    ports.push(processorPort, sinkPort);
    prometheus = await startPrometheus(
      [
        { job: "processor", target: `127.0.0.1:${processorPort}` },
        { job: "sink", target: `127.0.0.1:${sinkPort}` },
      ],
      SCRAPE_MS,
    );
    const config = join(folder, "mcp-observatory.json");
    writeFileSync(
      config,
      JSON.stringify({
        processor: { metricsPort: processorPort },
        sink: { metricsPort: sinkPort },
      }),
    );
    ranFromMs = Date.now();
    demo = startCli(
      [
        "--config",
        config,
        "demo",
        "--duration",
        "20s",
        "--rate",
        "300",
        "--services",
        "3",
        "--replicas",
        "1",
        "--json",
      ],
      {
        ...process.env,
        KAFKA_BROKERS: services().kafkaBrokers,
        SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
        DATABASE_URL: fresh.url,
        MCPO_TOPIC_PREFIX: prefix,
        MCPO_PROCESSOR_GROUP: `${prefix}processor`,
        MCPO_SINK_GROUP: `${prefix}sink`,
      },
    );
    // One record no codec can read: the processor and the sink dead-letter it.
    const modelCalls = `${prefix}model-calls`;
    const kafka = testKafka();
    const admin = kafka.admin();
    await admin.connect();
    try {
      await waitFor(
        `the demo's ${modelCalls} topic`,
        () => admin.listTopics(),
        (topics) => topics.includes(modelCalls) || demo?.exitCode() !== undefined,
        { timeoutMs: 60_000, intervalMs: 250 },
      );
    } finally {
      await admin.disconnect();
    }
    if (demo.exitCode() === undefined) {
      const producer = kafka.producer();
      await producer.connect();
      await producer.send({
        topic: modelCalls,
        messages: [{ key: "dashboards-test", value: Buffer.from("not an Avro record") }],
      });
      await producer.disconnect();
    }

    const code = await demo.exited;
    ranToMs = Date.now();
    expect(code, demo.stderr()).toBe(0);
    summary = JSON.parse(demo.stdout().trim().split("\n").at(-1) ?? "{}") as DemoSummary;
    const connection = new pg.Client({ connectionString: fresh.url });
    await connection.connect();
    client = connection;
    process.stderr.write(
      `[dashboards] demo: ${summary.totals.spans} spans, ${summary.totals.rollupRows} rollup rows, ${summary.totals.alertRows} alerts in ${((ranToMs - ranFromMs) / 1000).toFixed(1)} s\n`,
    );
  }, 200_000);

  afterAll(async () => {
    await demo?.stop();
    await client?.end().catch(() => undefined);
    await prometheus?.stop();
    for (const port of ports) releasePort(port);
    if (work) rmSync(work, { recursive: true, force: true });
    if (database) await dropDatabase(database).catch(() => undefined);
    if (prefix === "") return;
    const admin = testKafka().admin();
    await admin.connect();
    const topics = (await admin.listTopics()).filter((topic) => topic.startsWith(prefix));
    if (topics.length > 0) await admin.deleteTopics({ topics }).catch(() => undefined);
    await admin.deleteGroups([`${prefix}processor`, `${prefix}sink`]).catch(() => undefined);
    await admin.disconnect();
    const registry = services().schemaRegistryUrl;
    const subjects = (await (await fetch(`${registry}/subjects`)).json()) as string[];
    for (const subject of subjects.filter((name) => name.startsWith(prefix)))
      for (const query of ["", "?permanent=true"])
        await fetch(`${registry}/subjects/${encodeURIComponent(subject)}${query}`, {
          method: "DELETE",
        }).catch(() => undefined);
  });

  /** The options of each variable, from its own query, in dashboard order (later ones see earlier ones). */
  async function variableOptions(
    file: DashboardFile,
    context: Omit<RenderContext, "variables">,
    pick: (options: readonly string[]) => readonly string[],
  ): Promise<Map<string, readonly string[]>> {
    const chosen = new Map<string, readonly string[]>();
    for (const variable of variablesOf(file)) {
      const where = `${file.file} $${variable.name}`;
      expect(variable.type, where).toBe("query");
      expect(variable.datasource?.uid, where).toBe(DATASOURCES.postgres.uid);
      const sql = renderSql(variable.query ?? "", variablesOf(file), {
        ...context,
        variables: chosen,
      });
      const result = await db().query<Record<string, unknown>>(sql);
      const first = result.fields[0]?.name ?? "";
      const options = result.rows.map((row) => String(row[first]));
      expect(options.length, `${where}: its query gave no options\n${sql}`).toBeGreaterThan(0);
      chosen.set(variable.name, pick(options));
    }
    return chosen;
  }

  /** Runs one SQL target and checks what Grafana needs of its result. */
  async function expectGrafanaRows(located: LocatedTarget, sql: string): Promise<number> {
    const where = `${located.where}\n${sql}\n`;
    const result = await db()
      .query(sql)
      .catch((error: unknown) => {
        throw new Error(`${where}failed: ${(error as Error).message}`, { cause: error });
      });
    const fields = result.fields;
    expect(result.rows.length, `${where}no rows`).toBeGreaterThan(0);
    const numeric = fields.filter((field) => NUMERIC_TYPES.has(field.dataTypeID));
    const isAnnotation = located.where.includes(" annotation ");
    if (isAnnotation) {
      const types = Object.fromEntries(fields.map((field) => [field.name, field.dataTypeID]));
      expect(types, where).toMatchObject({ time: TIMESTAMPTZ, timeEnd: TIMESTAMPTZ });
      expect(TEXT_TYPES.has(types.text ?? 0) && TEXT_TYPES.has(types.tags ?? 0), where).toBe(true);
      return result.rows.length;
    }
    expect(numeric.length, `${where}no numeric column`).toBeGreaterThan(0);
    if (located.target.format === "time_series") {
      expect(fields[0]?.name, `${where}the first column is the time`).toBe("time");
      expect(fields[0]?.dataTypeID, `${where}time is timestamptz`).toBe(TIMESTAMPTZ);
      for (const field of fields.slice(1))
        expect(
          NUMERIC_TYPES.has(field.dataTypeID) || TEXT_TYPES.has(field.dataTypeID),
          `${where}column ${field.name} (type ${field.dataTypeID}) is neither a number nor a label`,
        ).toBe(true);
      const times = result.rows.map((row: Record<string, unknown>) => +(row.time as Date));
      expect(times, `${where}rows in time order`).toEqual([...times].sort((a, b) => a - b));
    }
    // Every value column shows something somewhere.
    for (const field of numeric)
      expect(
        result.rows.some((row: Record<string, unknown>) => row[field.name] !== null),
        `${where}column ${field.name} is null in every row`,
      ).toBe(true);
    return result.rows.length;
  }

  it(
    "every SQL target and annotation, with every variable at All and at its first option, at 10 s and 1 min intervals, returns rows of the types Grafana expects",
    { timeout: 120_000 },
    async () => {
      const from = new Date(Math.floor(ranFromMs / 60_000) * 60_000 - 60_000);
      const to = new Date(ranToMs + 60_000);
      let ran = 0;
      let expected = 0;
      for (const intervalMs of [10_000, 60_000]) {
        const context = { from, to, intervalMs };
        for (const file of files) {
          const targets = allTargets(file).filter(isPostgres);
          for (const pick of [
            (options: readonly string[]) => options,
            (options: readonly string[]) => options.slice(0, 1),
          ]) {
            const variables = await variableOptions(file, context, pick);
            for (const located of targets) {
              expected++;
              const sql = renderSql(located.target.rawSql ?? "", variablesOf(file), {
                ...context,
                variables,
              });
              expect(sql, located.where).not.toContain("$");
              await expectGrafanaRows(located, sql);
              ran++;
            }
          }
        }
      }
      const sqlTargets = files.flatMap((file) => allTargets(file).filter(isPostgres)).length;
      expect(sqlTargets).toBeGreaterThan(25);
      expect(ran).toBe(expected);
      expect(ran).toBe(sqlTargets * 4);
    },
  );

  it("latency_percentiles per bucket equals the library's merge of merge_rollups' sketches, and latency_quantile of each stored window equals the quantiles the processor stored", async () => {
    const from = new Date(ranFromMs - 60_000);
    const to = new Date(ranToMs + 60_000);
    const ulps = (a: number | null, b: number | null): boolean =>
      a === b || (a !== null && b !== null && Math.abs(a - b) <= 4 * Number.EPSILON * Math.abs(b));
    const buckets = await db().query<{
      key: string;
      p50_ms: number | null;
      p90_ms: number | null;
      p95_ms: number | null;
      p99_ms: number | null;
      calls: string;
    }>(
      `select service || '/' || scope || '/' || model || '@' || window_start::text as key,
              p50_ms, p90_ms, p95_ms, p99_ms, calls::text
       from latency_percentiles(interval '15 seconds', $1, $2)`,
      [from, to],
    );
    const merged = await db().query<{ key: string; latency_sketches: LatencySketchRecord[] }>(
      `select service || '/' || scope || '/' || model || '@' || window_start::text as key, latency_sketches
       from merge_rollups(interval '15 seconds', $1, $2)`,
      [from, to],
    );
    expect(buckets.rows.length).toBeGreaterThan(10);
    expect(buckets.rows.map((row) => row.key).sort()).toEqual(
      merged.rows.map((row) => row.key).sort(),
    );
    const sketches = new Map(merged.rows.map((row) => [row.key, row.latency_sketches]));
    for (const row of buckets.rows) {
      const sketch = new LatencySketch();
      for (const record of sketches.get(row.key) ?? [])
        sketch.mergeFrom(LatencySketch.fromRecord(record));
      expect(sketch.count, row.key).toBe(Number(row.calls));
      for (const [q, got] of [
        [0.5, row.p50_ms],
        [0.9, row.p90_ms],
        [0.95, row.p95_ms],
        [0.99, row.p99_ms],
      ] as const)
        if (!ulps(got, sketch.quantile(q)))
          expect(got, `${row.key} q ${q}`).toBe(sketch.quantile(q));
    }

    const windows = await db().query<{
      p50: number | null;
      p95: number | null;
      p99: number | null;
      latency_p50_ms: number | null;
      latency_p95_ms: number | null;
      latency_p99_ms: number | null;
    }>(
      `select latency_quantile(latency_sketch, 0.5) as p50, latency_quantile(latency_sketch, 0.95) as p95,
              latency_quantile(latency_sketch, 0.99) as p99, latency_p50_ms, latency_p95_ms, latency_p99_ms
       from metric_rollups`,
    );
    expect(windows.rows.length).toBe(summary.totals.rollupRows);
    for (const row of windows.rows) {
      expect(ulps(row.p50, row.latency_p50_ms), `${row.p50} vs ${row.latency_p50_ms}`).toBe(true);
      expect(ulps(row.p95, row.latency_p95_ms), `${row.p95} vs ${row.latency_p95_ms}`).toBe(true);
      expect(ulps(row.p99, row.latency_p99_ms), `${row.p99} vs ${row.latency_p99_ms}`).toBe(true);
    }
  });

  it("every PromQL target, evaluated by Prometheus over the demo's run, returns series of metrics the processor and the sink export", async () => {
    const server = prometheus;
    if (!server) throw new Error("Prometheus did not start");
    const targets = await server.targets();
    expect(targets.map((target) => target.job).sort()).toEqual(["processor", "sink"]);
    const known = new Set(await server.metricNames());
    const stepMs = 2000;
    const context: RenderContext = {
      from: new Date(ranFromMs),
      to: new Date(ranToMs),
      intervalMs: stepMs,
      variables: new Map(),
    };
    let ran = 0;
    for (const file of files) {
      for (const located of allTargets(file).filter(isPrometheus)) {
        const expr = renderPromQl(located.target.expr ?? "", variablesOf(file), context, SCRAPE_MS);
        const where = `${located.where}: ${expr}`;
        expect(expr, where).not.toContain("$");
        for (const name of expr.match(/\bmcpo_[a-z0-9_]+/g) ?? [])
          expect(known.has(name), `${where}: ${name} is not a metric Prometheus scraped`).toBe(
            true,
          );
        const series = await server.queryRange(expr, ranFromMs, ranToMs, stepMs);
        expect(series.length, `${where}: no series`).toBeGreaterThan(0);
        const values = series.flatMap((one) => one.values.map(([, value]) => Number(value)));
        expect(
          values.some((value) => Number.isFinite(value)),
          `${where}: no finite value in ${values.length}`,
        ).toBe(true);
        ran++;
      }
    }
    const promTargets = files.flatMap((file) => allTargets(file).filter(isPrometheus)).length;
    expect(promTargets).toBeGreaterThan(15);
    expect(ran).toBe(promTargets);
  });
});
