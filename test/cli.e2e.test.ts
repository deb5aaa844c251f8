/**
 * The README's commands, run as a user would: in a clean copy of the repository (tracked and
 * new files, no build output, no stack folder; dependencies linked), through `npm run`, against
 * real Kafka, the real registry and a throwaway PostgreSQL database.
 */
import { execFile } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { promisify } from "node:util";

import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { AlertEvent } from "../avro/generated.js";
import type { DemoSummary } from "../cli/commands/demo.js";
import type { ReplayReport } from "../cli/commands/replay.js";
import { REPO_ROOT, type CommandResult } from "./support/cli.js";
import {
  createDatabase,
  dropDatabase,
  services,
  uniqueName,
  type FreshDatabase,
} from "./support/isolation.js";

const git = promisify(execFile);

let clone: string;
let database: FreshDatabase;
let env: NodeJS.ProcessEnv;
let demo: DemoSummary;
let client: pg.Client;

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
    const prefix = `${uniqueName("cli")}.`;
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
  }, 300_000);

  afterAll(async () => {
    await client.end();
    await dropDatabase(database).catch(() => undefined);
    rmSync(clone, { recursive: true, force: true });
  });

  it("demo: exits 0 and its summary is what PostgreSQL holds", async () => {
    expect(demo.services.map((s) => s.service)).toEqual([
      "payments-mcp",
      "search-mcp",
      "support-mcp",
    ]);
    expect(demo.totals.dropped).toBe(0);
    expect(demo.totals.sent).toBe(demo.totals.produced);
    expect(demo.totals.produced).toBeGreaterThan(4000);
    const spans = await client.query<{ service: string; n: string }>(
      "select service, count(*)::text as n from spans group by service order by service",
    );
    expect(Object.fromEntries(spans.rows.map((r) => [r.service, Number(r.n)]))).toEqual(
      Object.fromEntries(demo.services.map((s) => [s.service, s.spans])),
    );
    for (const service of demo.services) expect(service.spans).toBe(service.produced);
    const rollups = await client.query<{ n: string }>(
      "select count(*)::text as n from metric_rollups",
    );
    expect(Number(rollups.rows[0]?.n)).toBe(demo.totals.rollupRows);
    const alerts = await client.query<{ alert_id: string; state: string; service: string }>(
      "select alert_id, state, service from alerts order by alert_id",
    );
    expect(alerts.rows.map((r) => r.alert_id)).toEqual(demo.alerts.map((a) => a.alertId).sort());
    // The drifting service fired and, once it recovered, every one of its alerts resolved.
    const drifting = demo.alerts.filter((a) => a.service === "payments-mcp");
    expect(drifting.length).toBeGreaterThan(0);
    expect(drifting.every((a) => a.state === "resolved" && a.transitions === 2)).toBe(true);
    // The rates table shows the drift: some window of payments-mcp breached the gate-block rule.
    const gate = demo.rates
      .filter((r) => r.service === "payments-mcp")
      .map((r) => r.confidenceGateBlockRate ?? 0);
    expect(Math.max(...gate)).toBeGreaterThan(0.2);
  });

  it("replay --verify after the demo reports no difference, and rebuilds the same rows", async () => {
    const result = await npmRun("cli", ["replay", "--verify", "--dry-run", ...WINDOW]);
    expect(result.code, result.stderr + result.stdout).toBe(0);
    expect(result.stdout).toContain("verify: OK");
    const json = await npmRun("cli", ["replay", "--verify", "--json", ...WINDOW]);
    expect(json.code, json.stderr).toBe(0);
    const report = JSON.parse(json.stdout.trim()) as ReplayReport;
    expect(report.summary.events).toBe(demo.totals.sent);
    expect(report.summary.rollups).toBe(demo.totals.rollupRows);
    expect(report.verify?.differenceCount).toBe(0);
    expect(report.verify?.rebuiltRows).toBe(demo.totals.rollupRows);
    expect(report.summary.alertsFired).toBe(demo.alerts.length);
  });

  it("replay from a time or an offset rebuilds the whole windows after its start, equal to the stored ones", async () => {
    const middle = new Date(Date.parse(demo.startedAt) + 9000).toISOString();
    const fromTime = await npmRun("cli", [
      "replay",
      "--from",
      middle,
      "--verify",
      "--dry-run",
      "--json",
      ...WINDOW,
    ]);
    expect(fromTime.code, fromTime.stderr + fromTime.stdout).toBe(0);
    const timeReport = JSON.parse(fromTime.stdout.trim()) as ReplayReport;
    expect(timeReport.summary.events).toBeLessThan(demo.totals.sent);
    expect(timeReport.summary.firstWindowStartMicros).toBeGreaterThanOrEqual(
      Date.parse(middle) * 1000,
    );
    expect(timeReport.verify?.rebuiltRows).toBeGreaterThan(0);
    expect(timeReport.verify?.differenceCount).toBe(0);
    const fromOffset = await npmRun("cli", [
      "replay",
      "--from-offset",
      "200",
      "--verify",
      "--dry-run",
      "--json",
      ...WINDOW,
    ]);
    expect(fromOffset.code, fromOffset.stderr + fromOffset.stdout).toBe(0);
    const offsetReport = JSON.parse(fromOffset.stdout.trim()) as ReplayReport;
    expect(offsetReport.summary.records).toBeLessThan(
      timeReport.summary.records + demo.totals.sent,
    );
    expect(offsetReport.verify?.differenceCount).toBe(0);
  });

  it("replay --verify lists a tampered rollup, and a replay into the same tables repairs it", async () => {
    await client.query(
      "update metric_rollups set calls = calls + 1 where (service, model, window_start) = (select service, model, window_start from metric_rollups where model = '*' order by window_start, service limit 1)",
    );
    const tampered = await npmRun("cli", ["replay", "--verify", "--dry-run", ...WINDOW]);
    expect(tampered.code).toBe(1);
    expect(tampered.stdout).toMatch(/verify: 1 rollup rows differ/);
    expect(tampered.stdout).toMatch(/payments-mcp\s+\*\s+\S+ \S+\s+different\s+calls/);
    const repair = await npmRun("cli", ["replay", ...WINDOW]);
    expect(repair.code, repair.stderr).toBe(0);
    const again = await npmRun("cli", ["replay", "--verify", "--dry-run", ...WINDOW]);
    expect(again.code, again.stdout).toBe(0);
  });

  it("replay --into new-version writes equal rollups into metric_rollups_v2, for the services asked", async () => {
    const result = await npmRun("cli", [
      "replay",
      "--into",
      "new-version",
      "--service",
      "search-mcp",
      "--verify",
      ...WINDOW,
    ]);
    expect(result.code, result.stderr + result.stdout).toBe(0);
    expect(result.stdout).toContain("written to metric_rollups_v2 and alerts_v2");
    const { rows } = await client.query<{ differ: string; total: string }>(
      `select (select count(*) from (select service, model, window_start, calls, latency_sketch from metric_rollups_v2
                except select service, model, window_start, calls, latency_sketch from metric_rollups where service = 'search-mcp') d)::text as differ,
              (select count(*) from metric_rollups_v2)::text as total`,
    );
    expect(Number(rows[0]?.differ)).toBe(0);
    expect(Number(rows[0]?.total)).toBe(
      demo.services.find((s) => s.service === "search-mcp")?.rollupRows,
    );
  });

  it("alerts tail --json --from-beginning prints the demo's alerts", async () => {
    const result = await npmRun("cli", [
      "alerts",
      "tail",
      "--json",
      "--from-beginning",
      "--timeout",
      "8s",
    ]);
    expect(result.code, result.stderr).toBe(0);
    const printed = result.stdout
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as AlertEvent);
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

  it("report prints the stored rates, merged into coarser buckets on request", async () => {
    const json = await npmRun("cli", [
      "report",
      "--since",
      "1h",
      "--service",
      "search-mcp",
      "--json",
    ]);
    expect(json.code, json.stderr).toBe(0);
    const rows = json.stdout
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as { calls: number });
    expect(rows.reduce((sum, r) => sum + r.calls, 0)).toBe(
      demo.services.find((s) => s.service === "search-mcp")?.produced,
    );
    const merged = await npmRun("cli", [
      "report",
      "--since",
      "1h",
      "--bucket",
      "1h",
      "--service",
      "search-mcp",
      "--json",
    ]);
    const buckets = merged.stdout
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as { calls: number; windows: number });
    expect(buckets.reduce((sum, r) => sum + r.calls, 0)).toBe(
      rows.reduce((sum, r) => sum + r.calls, 0),
    );
    expect(buckets.reduce((sum, r) => sum + r.windows, 0)).toBe(rows.length);
    const text = await npmRun("cli", ["report", "--since", "1h"]);
    expect(text.stdout).toMatch(/payments-mcp \(all models\)\nwindow \(UTC\)\s+calls\s+cost \$/);
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
      /--window <value>\s+tumbling window size \[env MCPO_WINDOW_MS, file\s+processor\.windowMs, default 1m\]/,
    );
  });

  describe("errors: one line saying what is wrong, a non-zero exit, no stack trace", () => {
    const badFile = (): string => {
      const path = join(clone, "bad-config.yaml");
      writeFileSync(path, "processor:\n  windowMs: 5000\n  graceMz: 100\n");
      return path;
    };
    const cases: {
      name: string;
      args: () => string[];
      env?: NodeJS.ProcessEnv;
      code: number;
      message: RegExp;
    }[] = [
      {
        name: "an unknown flag",
        args: () => ["demo", "--bogus"],
        code: 2,
        message: /unknown option '--bogus'/,
      },
      {
        name: "a bad flag value",
        args: () => ["demo", "--rate", "fast"],
        code: 2,
        message: /option '--rate <n>' argument 'fast' is invalid/,
      },
      {
        name: "an unknown key in the config file",
        args: () => ["processor", "--config", badFile()],
        code: 2,
        message: /invalid configuration processor\.graceMz in .*bad-config\.yaml: unknown key/,
      },
      {
        name: "a bad environment value",
        args: () => ["replay"],
        env: { MCPO_WINDOW_MS: "soon" },
        code: 2,
        message: /invalid configuration MCPO_WINDOW_MS: expected a duration/,
      },
      {
        name: "a bad broker address",
        args: () => ["alerts", "tail", "--brokers", "kafka"],
        code: 2,
        message: /invalid configuration --brokers: expected host:port/,
      },
      {
        name: "an unreachable broker",
        args: () => ["alerts", "tail", "--brokers", "127.0.0.1:9"],
        code: 3,
        message:
          /cannot reach Kafka \(127\.0\.0\.1:9: ECONNREFUSED; set by KAFKA_BROKERS or --brokers\): start the local stack/,
      },
      {
        name: "an unreachable registry",
        args: () => [
          "alerts",
          "tail",
          "--schema-registry-url",
          "http://127.0.0.1:9/apis/ccompat/v7",
        ],
        code: 3,
        message: /cannot reach the schema registry .*SCHEMA_REGISTRY_URL/,
      },
      {
        name: "an unreachable PostgreSQL",
        args: () => ["report", "--database-url", "postgresql://postgres@127.0.0.1:9/x"],
        code: 3,
        message:
          /cannot reach PostgreSQL at postgresql:\/\/postgres@127\.0\.0\.1:9\/x \(ECONNREFUSED/,
      },
      {
        name: "a missing database",
        args: () => ["report", "--database-url", `${database.url}_missing`],
        code: 3,
        message: /does not exist\): create it with `mcp-observatory migrate`/,
      },
      {
        name: "a misspelt flag, with a suggestion",
        args: () => ["demo", "--duraton", "10s"],
        code: 2,
        message: /unknown option '--duraton' \(Did you mean --duration\?\) \(see --help\)/,
      },
      {
        name: "a replay of a topic that does not exist",
        args: () => ["replay"],
        env: { MCPO_TOPIC_PREFIX: "missing-topic-e2e." },
        code: 1,
        message:
          /nothing to replay: topic missing-topic-e2e\.model-calls does not exist \(check the topic prefix/,
      },
      {
        name: "an unknown command",
        args: () => ["frobnicate"],
        code: 2,
        message: /unknown command 'frobnicate'/,
      },
      {
        name: "conflicting replay starts",
        args: () => ["replay", "--from", "1h", "--from-offset", "0"],
        code: 2,
        message: /give one of --from-beginning, --from and --from-offset/,
      },
    ];
    it("--verbose adds the stack trace", async () => {
      const result = await npmRun("cli", [
        "--verbose",
        "alerts",
        "tail",
        "--brokers",
        "127.0.0.1:9",
      ]);
      expect(result.code).toBe(3);
      expect(result.stderr).toMatch(/cannot reach Kafka/);
      expect(result.stderr).toMatch(/^\s+at .*preflight/m);
    });

    for (const c of cases)
      it(c.name, async () => {
        const result = await npmRun("cli", c.args(), c.env ?? {});
        expect(result.code, result.stderr).toBe(c.code);
        expect(result.stderr).toMatch(c.message);
        expect(result.stderr.trim().split("\n")).toHaveLength(1);
        expect(result.stderr).not.toMatch(/^\s+at /m);
      });
  });
});
