/**
 * The README's commands, run as a user would: in a clean copy of the repository (tracked and
 * new files, no build output, no stack folder; dependencies linked), through `npm run`, against
 * real Kafka, the real registry and a throwaway PostgreSQL database.
 *
 * What the demo stored is checked against figures computed apart from the product: the events are
 * read back from the model-calls topic (and the late-events topic), decoded with the contract's
 * codec, and the brute-force oracle (test/support/oracle.ts) derives every rollup, rate and alert
 * transition from them; the offsets a replay must read come from the broker's own offsets.
 */
import { execFile } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { promisify } from "node:util";

import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { AlertEvent } from "../avro/generated.js";
import type { DemoSummary } from "../cli/commands/demo.js";
import type { ReplayReport } from "../cli/commands/replay.js";
import type { RatesRow } from "../cli/rates.js";
import { topicNames } from "../config/index.js";
import {
  oracleFromLog,
  oracleIncidents,
  ratesRowAsComparable,
  README_DEFAULT_RULES,
  REPO_ROOT,
  storedIncidents,
  storedRollups,
  topicOffsets,
  type CommandResult,
  type LogOracle,
} from "./support/cli.js";
import {
  createDatabase,
  dropDatabase,
  services,
  testKafka,
  uniqueName,
  type FreshDatabase,
} from "./support/isolation.js";
import {
  expectMatchesOracle,
  oracleKey,
  oracleRollups,
  type OracleWindow,
} from "./support/oracle.js";

const git = promisify(execFile);

let clone: string;
let database: FreshDatabase;
let env: NodeJS.ProcessEnv;
let prefix: string;
let demo: DemoSummary;
let client: pg.Client;
/** The oracle's view of the demo's log. */
let log: LogOracle;

/** `npm run -s <script> -- args` in the clone. */
function npmRun(
  script: string,
  args: readonly string[],
  extraEnv: NodeJS.ProcessEnv = {},
  timeoutMs = 240_000,
): Promise<CommandResult> {
  return new Promise((resolve) => {
    execFile(
      "npm",
      ["run", "-s", script, "--", ...args],
      { cwd: clone, env: { ...env, ...extraEnv }, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => {
        resolve({
          code: error ? (typeof error.code === "number" ? error.code : 1) : 0,
          stdout,
          stderr,
        });
      },
    );
  });
}

const WINDOW = ["--window", "5s", "--grace", "1s"];
const WINDOW_US = 5_000_000;
const GRACE_US = 1_000_000;
const SERVICES = ["payments-mcp", "search-mcp", "support-mcp"];

/** A window start rounded up to a window boundary, µs. */
const roundUp = (micros: number): number => Math.ceil(micros / WINDOW_US) * WINDOW_US;

/** The oracle's windows that satisfy `keep`, keyed as the oracle keys them. */
function oracleWhere(keep: (w: OracleWindow) => boolean): Map<string, OracleWindow> {
  return new Map([...log.rollups].filter(([, w]) => keep(w)));
}

function countBy<T>(items: Iterable<T>, key: (item: T) => string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const item of items) counts[key(item)] = (counts[key(item)] ?? 0) + 1;
  return counts;
}

describe("the mcp-observatory CLI, as the README runs it", () => {
  beforeAll(async () => {
    clone = mkdtempSync(join(tmpdir(), "mcpo-clone-"));
    const { stdout } = await git("git", ["ls-files", "-co", "--exclude-standard", "-z"], {
      cwd: REPO_ROOT,
      maxBuffer: 16 * 1024 * 1024,
    });
    for (const file of stdout.split("\0").filter(Boolean)) {
      mkdirSync(dirname(join(clone, file)), { recursive: true });
      cpSync(join(REPO_ROOT, file), join(clone, file));
    }
    symlinkSync(join(REPO_ROOT, "node_modules"), join(clone, "node_modules"));
    database = await createDatabase("mcpo_cli");
    await dropDatabase(database); // `demo` creates it, as it would for a newcomer
    prefix = `${uniqueName("cli")}.`;
    env = {
      ...process.env,
      KAFKA_BROKERS: services().kafkaBrokers,
      SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
      DATABASE_URL: database.url,
      MCPO_TOPIC_PREFIX: prefix,
      MCPO_PROCESSOR_GROUP: `${prefix}processor`,
      MCPO_SINK_GROUP: `${prefix}sink`,
      STACK_DIR: join(clone, ".stack"),
    };
    const result = await npmRun("demo", [
      "--duration",
      "20s",
      "--rate",
      "300",
      "--services",
      "3",
      "--replicas",
      "2",
      "--json",
    ]);
    expect(result.code, result.stderr).toBe(0);
    demo = JSON.parse(result.stdout.trim().split("\n").at(-1) ?? "{}") as DemoSummary;
    client = new pg.Client({ connectionString: database.url });
    await client.connect();
    log = await oracleFromLog(prefix, 5000, README_DEFAULT_RULES);
    process.stderr.write(
      `[cli.e2e] the demo's log: ${log.events.length} events, ${log.ticks} watermark ticks, ${log.late.length} late; ` +
        `the oracle: ${log.rollups.size} rollup rows, ${log.alerts.length} alert transitions\n`,
    );
  }, 300_000);

  afterAll(async () => {
    await client.end();
    await dropDatabase(database).catch(() => undefined);
    rmSync(clone, { recursive: true, force: true });
  });

  it("demo: the logged events are exactly the calls sent, once each, and PostgreSQL holds one span per event", async () => {
    expect(demo.services.map((s) => s.service)).toEqual(SERVICES);
    expect(demo.totals.dropped).toBe(0);
    expect(demo.totals.sent).toBe(demo.totals.produced);
    expect(demo.totals.produced).toBeGreaterThan(4000);
    const ids = new Set(log.events.map((e) => e.event.event_id));
    expect(ids.size, "distinct event ids in the model-calls topic").toBe(log.events.length);
    expect(log.events.length).toBe(demo.totals.sent);
    const logged = countBy(log.events, (e) => e.event.service);
    expect(logged).toEqual(Object.fromEntries(demo.services.map((s) => [s.service, s.produced])));
    const spans = await client.query<{ service: string; n: string }>(
      "select service, count(*)::text as n from spans group by service order by service",
    );
    expect(Object.fromEntries(spans.rows.map((r) => [r.service, Number(r.n)]))).toEqual(logged);
    expect(Object.fromEntries(demo.services.map((s) => [s.service, s.spans]))).toEqual(logged);
    // Every late event is one of the logged events (it is in no count but `late`).
    for (const { event } of log.late) expect(ids.has(event.event_id)).toBe(true);
  });

  it("demo: every metric_rollups row (all counts, all rate columns, p50/p95/p99) equals the oracle's rollups of the logged events", async () => {
    const rows = await storedRollups(client, "metric_rollups");
    expect(rows.length).toBeGreaterThan(20);
    for (const row of rows) {
      expect(row.windowEnd - row.windowStart).toBe(WINDOW_US);
      expect(row.thresholds).toEqual({ low_confidence: 0.7, prompt_diff: 0.3 });
    }
    expectMatchesOracle(rows, log.rollups, "metric_rollups");
    // Late events (if any) are counted exactly where the watermark was.
    const late = rows
      .filter((r) => r.model === null)
      .reduce((sum, r) => sum + Number(r.counts.late), 0);
    expect(late).toBe(log.late.length);
  });

  it("demo: its summary's rollup rows, windows, alerts and rates are the oracle's, not only what PostgreSQL says", async () => {
    const oracleRows = countBy(log.rollups.values(), (w) => w.service);
    const oracleWindows = countBy(
      [...log.rollups.values()].filter((w) => w.model === null),
      (w) => w.service,
    );
    expect(Object.fromEntries(demo.services.map((s) => [s.service, s.rollupRows]))).toEqual(
      oracleRows,
    );
    expect(Object.fromEntries(demo.services.map((s) => [s.service, s.windows]))).toEqual(
      oracleWindows,
    );
    expect(demo.totals.rollupRows).toBe(log.rollups.size);
    expect(demo.totals.spans).toBe(log.events.length);

    const incidents = oracleIncidents(log.alerts);
    expect(demo.totals.alertRows).toBe(incidents.length);
    const summarized = demo.alerts
      .map((a) => ({
        service: a.service,
        rule: a.rule,
        firedWindowStart: Date.parse(a.firedWindowStart) * 1000,
        state: a.state,
        transitions: a.transitions,
      }))
      .sort(
        (a, b) =>
          a.service.localeCompare(b.service) ||
          a.rule.localeCompare(b.rule) ||
          a.firedWindowStart - b.firedWindowStart,
      );
    expect(summarized).toEqual(
      incidents.map((i) => ({
        service: i.service,
        rule: i.rule,
        firedWindowStart: i.firedWindowStart,
        state: i.history.at(-1)?.state,
        transitions: i.history.length,
      })),
    );
    // The alerts table holds those incidents with their transitions, in order.
    const stored = await storedIncidents(client, "alerts");
    expect(stored.map(({ alertId: _id, state: _state, ...rest }) => rest)).toEqual(incidents);
    expect(stored.map((s) => s.alertId).sort()).toEqual(demo.alerts.map((a) => a.alertId).sort());
    // The drifting service fired and, once it recovered, every one of its alerts resolved.
    const drifting = incidents.filter((i) => i.service === "payments-mcp");
    expect(drifting.length).toBeGreaterThan(0);
    expect(drifting.every((i) => i.history.map((h) => h.state).join() === "firing,resolved")).toBe(
      true,
    );

    // The rates table: the last 6 windows of each service, each row equal to the oracle's.
    const lastSix = new Map<string, OracleWindow>();
    for (const service of SERVICES)
      for (const w of [...log.rollups.values()]
        .filter((x) => x.service === service && x.model === null)
        .sort((a, b) => a.windowStart - b.windowStart)
        .slice(-6))
        lastSix.set(oracleKey(w.service, null, w.windowStart), w);
    expectMatchesOracle(demo.rates.map(ratesRowAsComparable), lastSix, "demo summary rates");
    // The drift shows: some window of payments-mcp breached the gate-block rule.
    const gate = [...log.rollups.values()]
      .filter((w) => w.service === "payments-mcp" && w.model === null)
      .map((w) => w.rates.confidence_gate_block_rate ?? 0);
    expect(Math.max(...gate)).toBeGreaterThan(0.2);
  });

  it("replay --verify after the demo reports no difference, and its counts are the log's", async () => {
    const result = await npmRun("cli", ["replay", "--verify", "--dry-run", ...WINDOW]);
    expect(result.code, result.stderr + result.stdout).toBe(0);
    expect(result.stdout).toContain(
      `verify: OK, the ${log.rollups.size.toLocaleString("en-US")} rebuilt rollup rows equal the ${log.rollups.size.toLocaleString("en-US")} stored ones, and the alerts match`,
    );
    const json = await npmRun("cli", ["replay", "--verify", "--json", ...WINDOW]);
    expect(json.code, json.stderr).toBe(0);
    const report = JSON.parse(json.stdout.trim()) as ReplayReport;
    const incidents = oracleIncidents(log.alerts);
    expect({
      records: report.summary.records,
      events: report.summary.events,
      ticks: report.summary.ticks,
      invalid: report.summary.invalid,
      late: report.summary.late,
      rollups: report.summary.rollups,
      windows: report.summary.windows,
      alertsFired: report.summary.alertsFired,
      alertsResolved: report.summary.alertsResolved,
      openSeries: report.summary.openSeries,
    }).toEqual({
      records: log.events.length + log.ticks,
      events: log.events.length,
      ticks: log.ticks,
      invalid: {},
      late: log.late.length,
      rollups: log.rollups.size,
      windows: [...log.rollups.values()].filter((w) => w.model === null).length,
      alertsFired: incidents.length,
      alertsResolved: log.alerts.filter((t) => t.state === "resolved").length,
      openSeries: 0,
    });
    expect(report.verify?.differenceCount).toBe(0);
    expect(report.verify?.rebuiltRows).toBe(log.rollups.size);
    expect(report.verify?.storedRows).toBe(log.rollups.size);
    expect(report.verify?.alertsCompared).toBe(true);
  });

  it("replay from a time or an offset reads exactly the records after its start and rebuilds exactly the whole windows after it", async () => {
    const topic = topicNames(prefix).modelCalls;
    const offsets = await topicOffsets(topic);
    const lastWindowEnd = Math.max(...[...log.rollups.values()].map((w) => w.windowEnd));

    // From a time: the broker's offsets for that time, per partition.
    const middleMs = Date.parse(demo.startedAt) + 9000;
    const admin = testKafka().admin();
    await admin.connect();
    const atTime = await admin
      .fetchTopicOffsetsByTimestamp(topic, middleMs)
      .finally(() => admin.disconnect());
    // kafkajs says -1 for a partition with no record at or after the time: it reads nothing.
    const timeStarts = new Map(
      atTime.filter((o) => BigInt(o.offset) >= 0n).map((o) => [o.partition, BigInt(o.offset)]),
    );
    const fromTime = await npmRun("cli", [
      "replay",
      "--from",
      new Date(middleMs).toISOString(),
      "--verify",
      "--dry-run",
      "--json",
      ...WINDOW,
    ]);
    expect(fromTime.code, fromTime.stderr + fromTime.stdout).toBe(0);
    const timeReport = JSON.parse(fromTime.stdout.trim()) as ReplayReport;
    const timeFloor = roundUp(middleMs * 1000);
    const expectTime = (p: number, o: { low: bigint; high: bigint }): bigint => {
      const start = timeStarts.get(p) ?? o.high;
      return o.high - (start < o.low ? o.low : start > o.high ? o.high : start);
    };
    expect(timeReport.summary.records).toBe(
      Number([...offsets].reduce((sum, [p, o]) => sum + expectTime(p, o), 0n)),
    );
    expect(timeReport.summary.events).toBe(
      log.events.filter((e) => {
        const start = timeStarts.get(e.partition);
        return start !== undefined && e.offset >= start;
      }).length,
    );
    expect(timeReport.summary.firstWindowStartMicros).toBe(timeFloor);
    expect(timeReport.summary.lastWindowEndMicros).toBe(lastWindowEnd);
    const timeWindows = oracleWhere((w) => w.windowStart >= timeFloor);
    expect(timeWindows.size).toBeGreaterThan(0);
    expect(timeReport.verify?.rebuiltRows).toBe(timeWindows.size);
    expect(timeReport.verify?.storedRows).toBe(timeWindows.size);
    expect(timeReport.verify?.differenceCount).toBe(0);

    // From an offset: every partition from offset 200 (the ones with fewer records read nothing).
    const FROM = 200n;
    const fromOffset = await npmRun("cli", [
      "replay",
      "--from-offset",
      String(FROM),
      "--verify",
      "--dry-run",
      "--json",
      ...WINDOW,
    ]);
    expect(fromOffset.code, fromOffset.stderr + fromOffset.stdout).toBe(0);
    const offsetReport = JSON.parse(fromOffset.stdout.trim()) as ReplayReport;
    const expectedRecords = [...offsets].reduce(
      (sum, [, o]) => sum + (o.high > FROM ? o.high - (FROM > o.low ? FROM : o.low) : 0n),
      0n,
    );
    expect(expectedRecords).toBeGreaterThan(0n);
    expect(offsetReport.summary.records).toBe(Number(expectedRecords));
    const after = log.events.filter((e) => e.offset >= FROM);
    expect(offsetReport.summary.events).toBe(after.length);
    // Each partition emits from its first event's time plus the grace period, rounded up.
    const floors: Record<string, number> = {};
    const partitionFloor = new Map<number, number>();
    for (const { partition, event } of after) {
      if (!partitionFloor.has(partition))
        partitionFloor.set(partition, roundUp(event.end_time + GRACE_US));
      floors[event.service] ??= partitionFloor.get(partition) ?? 0;
    }
    expect(offsetReport.summary.serviceFloors).toEqual(floors);
    const offsetWindows = oracleWhere(
      (w) => floors[w.service] !== undefined && w.windowStart >= (floors[w.service] ?? 0),
    );
    expect(offsetWindows.size).toBeGreaterThan(0);
    expect(offsetReport.summary.rollups).toBe(offsetWindows.size);
    expect(offsetReport.verify?.rebuiltRows).toBe(offsetWindows.size);
    expect(offsetReport.verify?.storedRows).toBe(offsetWindows.size);
    expect(offsetReport.verify?.differenceCount).toBe(0);
  });

  it("replay --verify lists a tampered rollup, and a replay into the same tables repairs it", async () => {
    await client.query(
      "update metric_rollups set calls = calls + 1 where (service, scope, model, window_start) = (select service, scope, model, window_start from metric_rollups where scope = 'service' order by window_start, service limit 1)",
    );
    const tampered = await npmRun("cli", ["replay", "--verify", "--dry-run", ...WINDOW]);
    expect(tampered.code).toBe(1);
    expect(tampered.stdout).toMatch(/verify: 1 rollup rows differ/);
    expect(tampered.stdout).toMatch(/payments-mcp\s+\(all models\)\s+\S+ \S+\s+different\s+calls/);
    const repair = await npmRun("cli", ["replay", ...WINDOW]);
    expect(repair.code, repair.stderr).toBe(0);
    const again = await npmRun("cli", ["replay", "--verify", "--dry-run", ...WINDOW]);
    expect(again.code, again.stdout).toBe(0);
    expectMatchesOracle(await storedRollups(client, "metric_rollups"), log.rollups, "repaired");
  });

  it("replay --into new-version for two --services writes the oracle's rollups into metric_rollups_v2 and the stored alerts, with their history, into alerts_v2", async () => {
    const asked = ["payments-mcp", "search-mcp"];
    const result = await npmRun("cli", [
      "replay",
      "--into",
      "new-version",
      "--service",
      asked[0] ?? "",
      "--service",
      asked[1] ?? "",
      "--verify",
      ...WINDOW,
    ]);
    expect(result.code, result.stderr + result.stdout).toBe(0);
    expect(result.stdout).toContain("written to metric_rollups_v2 and alerts_v2");
    // The rebuilt rows are the oracle's for exactly the services asked (not a copy of the stored).
    expectMatchesOracle(
      await storedRollups(client, "metric_rollups_v2"),
      oracleWhere((w) => asked.includes(w.service)),
      "metric_rollups_v2",
    );
    const incidents = oracleIncidents(log.alerts).filter((i) => asked.includes(i.service));
    expect(incidents.length).toBeGreaterThan(0);
    const rebuilt = await storedIncidents(client, "alerts_v2");
    expect(rebuilt.map(({ alertId: _id, state: _state, ...rest }) => rest)).toEqual(incidents);
    // Row for row, every column, equal to the alerts the live pipeline stored.
    const columns = `alert_id, service, rule, metric, comparator, state, threshold, min_samples, observed_value,
      sample_count, fired_window_start, window_start, window_end, emitted_at, history`;
    const { rows } = await client.query<{ only_v2: string; only_stored: string; n: string }>(
      `select (select count(*) from (select ${columns} from alerts_v2 except select ${columns} from alerts where service = any($1)) d)::text as only_v2,
              (select count(*) from (select ${columns} from alerts where service = any($1) except select ${columns} from alerts_v2) d)::text as only_stored,
              (select count(*) from alerts_v2)::text as n`,
      [asked],
    );
    expect(rows[0]).toEqual({ only_v2: "0", only_stored: "0", n: String(incidents.length) });
  });

  it("replay --verify names an alert whose stored row was tampered with (exit 1), both ways", async () => {
    const { rows } = await client.query<{ alert_id: string }>(
      "select alert_id from alerts where service = 'payments-mcp' order by alert_id limit 1",
    );
    const original = rows[0]?.alert_id ?? "";
    expect(original).toMatch(/^[0-9a-f]{32}$/);
    const forged = "f".repeat(32);
    await client.query("update alerts set alert_id = $2 where alert_id = $1", [original, forged]);
    try {
      const tampered = await npmRun("cli", ["replay", "--verify", "--dry-run", ...WINDOW]);
      expect(tampered.code, tampered.stderr).toBe(1);
      expect(tampered.stdout).toContain("verify: 0 rollup rows differ");
      expect(tampered.stdout).toContain("; 2 alerts differ");
      expect(tampered.stdout).toContain(`alert ${original}: rebuilt, not stored`);
      expect(tampered.stdout).toContain(`alert ${forged}: stored, not rebuilt`);
    } finally {
      await client.query("update alerts set alert_id = $1 where alert_id = $2", [original, forged]);
    }
    const again = await npmRun("cli", ["replay", "--verify", "--dry-run", ...WINDOW]);
    expect(again.code, again.stdout).toBe(0);
  });

  it("replay --with-spans re-inserts lost spans from the log: every event once, equal column for column to the sink's rows", async () => {
    const { rows: columnRows } = await client.query<{ column_name: string }>(
      `select column_name from information_schema.columns
       where table_schema = current_schema() and table_name = 'spans' and column_name <> 'inserted_at'
       order by ordinal_position`,
    );
    const columns = columnRows.map((r) => r.column_name).join(", ");
    await client.query("drop table if exists spans_before");
    await client.query(`create table spans_before as select ${columns} from spans`);
    const removed = await client.query(
      "delete from spans where service = 'support-mcp' or (service = 'payments-mcp' and source_offset % 7 = 0)",
    );
    expect(removed.rowCount).toBeGreaterThan(demo.services[2]?.spans ?? 0);
    const result = await npmRun("cli", ["replay", "--with-spans", "--json", ...WINDOW]);
    expect(result.code, result.stderr).toBe(0);
    const { rows } = await client.query<{ missing: string; extra: string; n: string; ids: string }>(
      `select (select count(*) from (select ${columns} from spans_before except select ${columns} from spans) d)::text as missing,
              (select count(*) from (select ${columns} from spans except select ${columns} from spans_before) d)::text as extra,
              (select count(*) from spans)::text as n,
              (select count(distinct event_id) from spans)::text as ids`,
    );
    expect(rows[0]).toEqual({
      missing: "0",
      extra: "0",
      n: String(log.events.length),
      ids: String(log.events.length),
    });
    // Each span points at its event's place in the log.
    const { rows: places } = await client.query<{ event_id: string; place: string }>(
      "select event_id::text, source_partition || ':' || source_offset as place from spans",
    );
    const stored = new Map(places.map((p) => [p.event_id, p.place]));
    for (const { event, partition, offset } of log.events)
      expect(stored.get(event.event_id), event.event_id).toBe(`${partition}:${offset}`);
    await client.query("drop table spans_before");
  });

  it("alerts tail --json --from-beginning prints every transition the oracle derives, and the table form shows them", async () => {
    // It ends after printing as many transitions as the oracle derives (the alerts topic holds no
    // more: the stored history, compared above, has exactly those); the timeout only bounds a
    // tail that prints fewer.
    const result = await npmRun("cli", [
      "alerts",
      "tail",
      "--json",
      "--from-beginning",
      "--max-messages",
      String(log.alerts.length),
      "--timeout",
      "60s",
    ]);
    expect(result.code, result.stderr).toBe(0);
    const printed = result.stdout
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as AlertEvent);
    const key = (t: {
      service: string;
      rule: string;
      state: string;
      windowStart: number;
      firedWindowStart: number;
      samples: number;
    }): string =>
      `${t.service}|${t.rule}|${t.state}|${t.windowStart}|${t.firedWindowStart}|${t.samples}`;
    expect(
      printed
        .map((a) =>
          key({
            service: a.service,
            rule: a.rule,
            state: a.state,
            windowStart: a.window_start,
            firedWindowStart: a.fired_window_start,
            samples: a.sample_count,
          }),
        )
        .sort(),
    ).toEqual(log.alerts.map(key).sort());
    for (const alert of printed) {
      const want = log.alerts.find(
        (t) =>
          t.service === alert.service &&
          t.rule === alert.rule &&
          t.windowStart === alert.window_start,
      );
      expect(alert.observed_value, alert.alert_id).toBeCloseTo(want?.observed ?? NaN, 12);
      expect(alert.window_end).toBe(alert.window_start + WINDOW_US);
      expect(alert.emitted_at).toBe(alert.window_end);
    }
    const { rows } = await client.query<{ transition: string }>(
      "select alert_id || '|' || (h->>'state') as transition from alerts, jsonb_array_elements(history) h",
    );
    expect(printed.map((a) => `${a.alert_id}|${a.state}`).sort()).toEqual(
      rows.map((r) => r.transition).sort(),
    );
    const table = await npmRun("cli", [
      "alerts",
      "tail",
      "--from-beginning",
      "--max-messages",
      "1",
    ]);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/^emitted \(event time\)\s+state\s+service\s+rule/);
    expect(table.stdout).toMatch(/FIRING\s+payments-mcp/);
  });

  describe("report", () => {
    /**
     * Two whole windows inside the run (from its second window), with windows after them, so
     * both ends of the range cut.
     */
    const range = (): { since: number; until: number } => {
      const starts = [...log.rollups.values()]
        .filter((w) => w.service === "payments-mcp" && w.model === null)
        .map((w) => w.windowStart)
        .sort((a, b) => a - b);
      expect(starts.length, "payments-mcp windows").toBeGreaterThanOrEqual(4);
      const since = starts[1] ?? 0;
      return { since, until: since + 2 * WINDOW_US };
    };
    const iso = (micros: number): string => new Date(micros / 1000).toISOString();
    const asked = ["payments-mcp", "search-mcp"];

    it("--since/--until with two --service flags prints exactly those services' windows in the range, every rate equal to the oracle's", async () => {
      const { since, until } = range();
      const result = await npmRun("cli", [
        "report",
        "--since",
        iso(since),
        "--until",
        iso(until),
        "--service",
        asked[0] ?? "",
        "--service",
        asked[1] ?? "",
        "--json",
      ]);
      expect(result.code, result.stderr).toBe(0);
      const rows = result.stdout
        .trim()
        .split("\n")
        .map((line) => JSON.parse(line) as RatesRow);
      const expected = oracleWhere(
        (w) =>
          w.model === null &&
          asked.includes(w.service) &&
          w.windowStart >= since &&
          w.windowStart < until,
      );
      // The range cuts: there are windows after --until, and each service has 4 inside.
      expect(
        [...log.rollups.values()].some((w) => w.model === null && w.windowStart >= until),
      ).toBe(true);
      expect(expected.size).toBe(4);
      expect(rows.every((r) => r.windows === 1 && r.model === null)).toBe(true);
      expectMatchesOracle(rows.map(ratesRowAsComparable), expected, "report --json");
    });

    it("--bucket 10s merges the windows: calls, cost, late and every rate equal the oracle's over the merged events", async () => {
      const { since, until } = range();
      const result = await npmRun("cli", [
        "report",
        "--since",
        iso(since),
        "--until",
        iso(until),
        "--bucket",
        "10s",
        "--service",
        asked.join(","),
        "--json",
      ]);
      expect(result.code, result.stderr).toBe(0);
      const rows = result.stdout
        .trim()
        .split("\n")
        .map((line) => JSON.parse(line) as RatesRow);
      const inRange = (service: string, end: number): boolean => {
        const start = end - (end % WINDOW_US);
        return asked.includes(service) && start >= since && start < until;
      };
      const lateByKey = new Map<string, number>();
      for (const [key, n] of log.lateByKey) {
        const [service = "", model = "", start = "0"] = key.split("\u0000");
        if (model !== "\u0001total" || !inRange(service, Number(start))) continue;
        const bucket = Number(start) - (Number(start) % 10_000_000);
        const merged = oracleKey(service, null, bucket);
        lateByKey.set(merged, (lateByKey.get(merged) ?? 0) + n);
      }
      const merged = new Map(
        [
          ...oracleRollups(
            log.onTime.filter((e) => inRange(e.service, e.end_time)),
            10_000_000,
            { lateByKey },
          ),
        ].filter(([, w]) => w.model === null),
      );
      expectMatchesOracle(rows.map(ratesRowAsComparable), merged, "report --bucket 10s");
      // Each bucket merged the stored windows of its 10 s: 2 per service in all.
      for (const service of asked)
        expect(
          rows.filter((r) => r.service === service).reduce((sum, r) => sum + r.windows, 0),
          service,
        ).toBe(2);
    });

    it("the table form shows each window's rates as the oracle's percentages", async () => {
      const { since, until } = range();
      const result = await npmRun("cli", [
        "report",
        "--since",
        iso(since),
        "--until",
        iso(until),
        "--service",
        "payments-mcp",
      ]);
      expect(result.code, result.stderr).toBe(0);
      const lines = result.stdout.trimEnd().split("\n");
      expect(lines[0]).toBe("payments-mcp (all models)");
      expect(lines[1]).toMatch(/^window \(UTC\)\s+calls\s+cost \$\s+fallback\s+retry/);
      const pct = (v: number | null): string => (v === null ? "-" : `${(v * 100).toFixed(1)}%`);
      const printed = lines.slice(3).map((line) => line.trim().split(/\s{2,}/));
      const expected = [
        ...oracleWhere(
          (w) =>
            w.model === null &&
            w.service === "payments-mcp" &&
            w.windowStart >= since &&
            w.windowStart < until,
        ).values(),
      ]
        .sort((a, b) => a.windowStart - b.windowStart)
        .map((w) => ({
          p50: w.rates.latency_p50_ms,
          p95: w.rates.latency_p95_ms,
          p99: w.rates.latency_p99_ms,
          late: w.counts.late,
          cells: [
            iso(w.windowStart)
              .replace("T", " ")
              .replace(/\.000Z$/, ""),
            w.counts.calls.toLocaleString("en-US"),
            (Number(w.counts.cost_nano_usd) / 1e9).toFixed(4),
            pct(w.rates.fallback_rate),
            pct(w.rates.retry_rate),
            pct(w.rates.low_confidence_rate),
            pct(w.rates.confidence_gate_block_rate),
            pct(w.rates.prompt_diff_violation_rate),
            pct(w.rates.shadow_disagreement_rate),
            pct(w.rates.deterministic_fallback_rate),
            pct(w.rates.high_risk_path_rate),
            pct(w.rates.golden_financial_failure_rate),
            pct(w.rates.error_rate),
          ],
        }));
      expect(printed.map((cells) => cells.slice(0, 13))).toEqual(expected.map((w) => w.cells));
      // p50, p95, p99 from the sketch, within its 1% (and the rounding to whole ms); then late.
      printed.forEach((cells, i) => {
        const want = expected[i];
        for (const [column, exact] of [
          [13, want?.p50],
          [14, want?.p95],
          [15, want?.p99],
        ] as const)
          expect(
            Math.abs(Number(cells[column]) - (exact ?? NaN)),
            `${cells[0]} column ${column}: ${cells[column]} vs exact ${exact}`,
          ).toBeLessThanOrEqual((exact ?? 0) * 0.01 + 0.5);
        expect(cells[16], `${cells[0]} late`).toBe(String(want?.late));
      });
    });

    it("prints every service's table when no --service is given", async () => {
      const text = await npmRun("cli", ["report", "--since", "1h"]);
      expect(text.code, text.stderr).toBe(0);
      for (const service of SERVICES)
        expect(text.stdout).toContain(`${service} (all models)\nwindow (UTC)  `);
    });
  });

  it("--help lists every command with examples", async () => {
    const result = await npmRun("cli", ["--help"]);
    expect(result.code).toBe(0);
    for (const command of [
      "stack",
      "migrate",
      "processor",
      "sink",
      "replay",
      "alerts",
      "report",
      "demo",
    ])
      expect(result.stdout).toMatch(new RegExp(`^  ${command}\\b`, "m"));
    expect(result.stdout).toContain("Examples:");
    const processor = await npmRun("cli", ["processor", "--help"]);
    expect(processor.stdout).toMatch(
      // Whitespace-tolerant: the help wraps where its widest flag puts the column.
      /--window <value>\s+tumbling window size\s+\[env\s+MCPO_WINDOW_MS,\s+file\s+processor\.windowMs,\s+default\s+1m\]/,
    );
  });
});
