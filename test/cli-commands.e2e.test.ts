/**
 * The CLI's other commands, each in its own topics and database, run as real processes from this
 * repository (`node --import tsx cli/main.ts`): `migrate`, a live `alerts tail` and its
 * `--timeout`, a demo driven by a config file's thresholds and rules, and the one-line errors.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import type { Producer } from "kafkajs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT } from "../avro/contracts.js";
import type { AlertEvent } from "../avro/generated.js";
import type { DemoSummary } from "../cli/commands/demo.js";
import type { ReplayReport } from "../cli/commands/replay.js";
import { topicNames } from "../config/index.js";
import {
  oracleFromLog,
  oracleIncidents,
  runCli,
  startCli,
  storedIncidents,
  storedRollups,
  type BackgroundCommand,
} from "./support/cli.js";
import {
  createDatabase,
  createTopics,
  dropDatabase,
  services,
  testKafka,
  uniqueName,
  useFreshDatabase,
  type FreshDatabase,
} from "./support/isolation.js";
import { expectMatchesOracle, oracleRollups, type OracleRule } from "./support/oracle.js";
import { waitFor } from "./support/wait.js";

let scratch: string;

/** The services' addresses, with a topic prefix and database nobody else uses. */
function baseEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return {
    ...process.env,
    KAFKA_BROKERS: services().kafkaBrokers,
    SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
    DATABASE_URL: missingDatabaseUrl(),
    MCPO_TOPIC_PREFIX: `${uniqueName("clicmd")}.`,
    ...extra,
  };
}

/** A database name that no one creates. */
function missingDatabaseUrl(): string {
  const url = new URL(services().databaseUrl);
  url.pathname = `/${uniqueName("mcpo_missing").toLowerCase().replace(/-/g, "_")}`;
  return url.toString();
}

beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), "mcpo-cli-commands-"));
});

afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

describe("mcp-observatory migrate", () => {
  let database: FreshDatabase;
  let client: pg.Client | undefined;

  beforeAll(async () => {
    database = await createDatabase("mcpo_migrate");
    await dropDatabase(database); // migrate must create it
  });

  afterAll(async () => {
    await client?.end();
    await dropDatabase(database);
  });

  it("creates a missing database and applies the schema; a second run says `schema is current in <url>` and changes nothing", async () => {
    const env = baseEnv();
    const first = await runCli(["migrate", "--database-url", database.url], env);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toBe(
      `created database ${database.url}\napplied migrations 1, 2, 3, 4, 5, 6, 7 to ${database.url}\n`,
    );
    client = new pg.Client({ connectionString: database.url });
    await client.connect();
    const { rows } = await client.query<Record<string, string | null>>(
      `select to_regclass('spans')::text as spans, to_regclass('metric_rollups')::text as rollups,
              to_regclass('alerts')::text as alerts, to_regclass('consumed_offsets')::text as offsets,
              to_regprocedure('merge_rollups(interval, timestamptz, timestamptz)')::text as merge,
              (select string_agg(version || ':' || name, ',' order by version) from schema_migrations) as migrations`,
    );
    expect(rows[0]).toEqual({
      spans: "spans",
      rollups: "metric_rollups",
      alerts: "alerts",
      offsets: "consumed_offsets",
      merge: "merge_rollups(interval,timestamp with time zone,timestamp with time zone)",
      migrations:
        "1:initial,2:topic_ids,3:rollup_revisions,4:rollup_scope,5:rollup_other_models,6:usage_cache_tokens,7:latency_percentiles",
    });
    const catalog = `select (select string_agg(table_name || '.' || column_name || ':' || data_type, ',' order by table_name, column_name)
                             from information_schema.columns where table_schema = current_schema()) as columns,
                            (select string_agg(indexname, ',' order by indexname) from pg_indexes where schemaname = current_schema()) as indexes,
                            (select string_agg(version || '@' || applied_at, ',') from schema_migrations) as applied,
                            (select string_agg(consumer_group || ':' || next_offset, ',') from consumed_offsets) as offsets`;
    await client.query(
      "insert into consumed_offsets (consumer_group, topic, partition, next_offset) values ('marker', 't', 0, 42)",
    );
    const before = (await client.query<Record<string, string>>(catalog)).rows[0];
    expect(before?.offsets).toBe("marker:42");
    expect(before?.columns).toContain("metric_rollups.revision:integer");
    expect(before?.columns).toContain("metric_rollups.scope:text");

    const second = await runCli(["migrate"], { ...env, DATABASE_URL: database.url });
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).toBe(`schema is current in ${database.url}\n`);
    expect((await client.query<Record<string, string>>(catalog)).rows[0]).toEqual(before);
  });
});

describe("mcp-observatory alerts tail, live", () => {
  const prefix = `${uniqueName("tail")}.`;
  const topic = topicNames(prefix).alerts;
  let producer: Producer;
  let codec: AvroCodec<AlertEvent>;
  let tail: BackgroundCommand | undefined;
  const T0 = 1_764_000_000_000_000;
  let sequence = 0;

  /** An alert transition numbered `n` (its id and windows follow from `n`). */
  function alert(n: number, service: string, state: AlertEvent["state"]): AlertEvent {
    const windowStart = T0 + n * 5_000_000;
    return {
      alert_id: n.toString(16).padStart(32, "0"),
      service,
      rule: "error_rate_high",
      metric: "error_rate",
      comparator: "gt",
      state,
      observed_value: state === "firing" ? 0.25 : 0.01,
      threshold: 0.05,
      min_samples: 20,
      sample_count: 40 + n,
      window_start: windowStart,
      window_end: windowStart + 5_000_000,
      fired_window_start: state === "firing" ? windowStart : T0,
      emitted_at: windowStart + 5_000_000,
    };
  }

  async function send(...alerts: AlertEvent[]): Promise<void> {
    await producer.send({
      topic,
      messages: alerts.map((a) => ({ key: a.service, value: codec.encode(a) })),
    });
  }

  const lines = (text: string): AlertEvent[] =>
    text
      .split("\n")
      .filter((line) => line.trim() !== "")
      .map((line) => JSON.parse(line) as AlertEvent);

  beforeAll(async () => {
    const admin = testKafka().admin();
    await admin.connect();
    await createTopics(admin, [{ topic, numPartitions: 1 }]).finally(() => admin.disconnect());
    codec = await AvroCodec.register(ALERT_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    producer = testKafka().producer();
    await producer.connect();
  });

  afterAll(async () => {
    await tail?.stop("SIGKILL");
    await producer.disconnect();
  });

  it("started before they are produced, prints each alert as it arrives (only --service ones, none from before it started) and exits 0 on SIGTERM", async () => {
    const before = alert(sequence++, "live-mcp", "firing");
    await send(before);
    tail = startCli(
      ["alerts", "tail", "--json", "--service", "live-mcp,warm-mcp"],
      baseEnv({ MCPO_TOPIC_PREFIX: prefix }),
    );
    const running = tail;
    // The tail starts at the topic's end once its consumer has joined: until it prints one, keep
    // producing warm-up alerts (the ones sent before it joined are, rightly, never printed).
    const warm: AlertEvent[] = [];
    await waitFor(
      "the tail to print a warm-up alert",
      async () => {
        const next = alert(sequence++, "warm-mcp", "firing");
        warm.push(next);
        await send(next);
        return { stdout: running.stdout(), stderr: running.stderr() };
      },
      ({ stdout }) => stdout.includes('"warm-mcp"'),
      { timeoutMs: 120_000, intervalMs: 500 },
    );
    const firing = alert(sequence++, "live-mcp", "firing");
    const other = alert(sequence++, "other-mcp", "firing");
    const resolved = { ...alert(sequence++, "live-mcp", "resolved"), alert_id: firing.alert_id };
    await send(firing, other, resolved);
    await waitFor(
      "the tail to print the resolved alert",
      () => running.stdout(),
      (stdout) => stdout.includes(`"state":"resolved"`),
      { timeoutMs: 60_000 },
    );
    expect(await running.stop("SIGTERM")).toBe(0);
    const printed = lines(running.stdout());
    // The warm-ups it printed are the last ones sent, in order, then the live service's two.
    const printedWarm = printed.filter((a) => a.service === "warm-mcp");
    expect(printedWarm.length).toBeGreaterThan(0);
    expect(printedWarm).toEqual(warm.slice(warm.length - printedWarm.length));
    expect(printed.slice(printedWarm.length)).toEqual([firing, resolved]);
    expect(printed.some((a) => a.alert_id === before.alert_id)).toBe(false);
    expect(running.stderr()).not.toContain("alerts tail:");
  });

  it("--timeout 5s ends it with exit code 0 once no alert arrived for 5 s: it prints what arrives, then outlives the last alert by the timeout", async () => {
    const idle = startCli(
      ["alerts", "tail", "--timeout", "5s", "--service", "warm-mcp"],
      baseEnv({ MCPO_TOPIC_PREFIX: prefix }),
    );
    // As above: produce until it prints one (or ends); then nothing more is produced.
    await waitFor(
      "the tail (--timeout 5s) to print a warm-up alert, or to end",
      async () => {
        if (idle.exitCode() === undefined) await send(alert(sequence++, "warm-mcp", "firing"));
        return { stdout: idle.stdout(), exit: idle.exitCode() };
      },
      ({ stdout, exit }) => /FIRING\s+warm-mcp/.test(stdout) || exit !== undefined,
      { timeoutMs: 120_000, intervalMs: 500 },
    );
    // Bound: the timeout plus the machine's load, not the timeout being tested.
    const code = await waitFor(
      "alerts tail --timeout 5s to exit",
      () => idle.exitCode(),
      (c) => c !== undefined,
      { timeoutMs: 90_000, intervalMs: 100 },
    );
    expect(code, idle.stderr()).toBe(0);
    const [header, ...rows] = idle.stdout().trimEnd().split("\n");
    expect(header).toMatch(
      /^emitted \(event time\)\s+state\s+service\s+rule\s+observed\s+threshold\s+samples\s+alert id$/,
    );
    expect(rows.length).toBeGreaterThan(0);
    for (const row of rows)
      expect(row).toMatch(/^\S+\s+FIRING\s+warm-mcp\s+error_rate_high\s+25\.0%\s+>5\.0%/);
    // Idle means since the last alert printed (1 s of slack for the pipes on a loaded machine).
    const idleMs = (idle.exitedAt() ?? 0) - (idle.lastOutputAt() ?? 0);
    expect(idleMs, "ms from its last printed alert to its exit").toBeGreaterThanOrEqual(4000);
  });
});

describe("a config file's thresholds and rules reach the processor that demo runs", () => {
  let database: FreshDatabase;
  let client: pg.Client;
  const prefix = `${uniqueName("cfg")}.`;
  let config: string;
  let demo: DemoSummary;
  let env: NodeJS.ProcessEnv;
  const RULES: readonly OracleRule[] = [
    {
      key: "strict_low_confidence",
      metric: "low_confidence_rate",
      comparator: "gt",
      threshold: 0.5,
      minSamples: 20,
    },
  ];
  const THRESHOLDS = { low_confidence: 0.95, prompt_diff: 0.25 };

  beforeAll(async () => {
    database = await createDatabase("mcpo_cfg");
    config = join(scratch, "mcp-observatory.yaml");
    writeFileSync(
      config,
      [
        "metrics:",
        "  thresholds: { low_confidence: 0.95, prompt_diff: 0.25 }",
        "  rules:",
        "    - { key: strict_low_confidence, metric: low_confidence_rate, comparator: gt, threshold: 0.5, minSamples: 20 }",
        "",
      ].join("\n"),
    );
    env = baseEnv({
      DATABASE_URL: database.url,
      MCPO_TOPIC_PREFIX: prefix,
      MCPO_PROCESSOR_GROUP: `${prefix}processor`,
      MCPO_SINK_GROUP: `${prefix}sink`,
    });
    const result = await runCli(
      [
        "demo",
        "--config",
        config,
        "--duration",
        "10s",
        "--rate",
        "200",
        "--services",
        "2",
        "--replicas",
        "1",
        "--json",
      ],
      env,
    );
    expect(result.code, result.stderr).toBe(0);
    demo = JSON.parse(result.stdout.trim().split("\n").at(-1) ?? "{}") as DemoSummary;
    client = new pg.Client({ connectionString: database.url });
    await client.connect();
  }, 240_000);

  afterAll(async () => {
    await client.end();
    await dropDatabase(database);
  });

  it("the healthy service fires the custom rule (only the custom 0.95 threshold makes it breach), no default rule fires, and every row and alert is the oracle's with those settings", async () => {
    const log = await oracleFromLog(prefix, 5000, RULES, THRESHOLDS);
    expect(log.events.length).toBe(demo.totals.sent);
    const rows = await storedRollups(client, "metric_rollups");
    expect(rows.length).toBeGreaterThan(0);
    for (const row of rows) expect(row.thresholds).toEqual(THRESHOLDS);
    expectMatchesOracle(rows, log.rollups, "metric_rollups");

    const incidents = oracleIncidents(log.alerts);
    const stored = await storedIncidents(client, "alerts");
    expect(stored.map(({ alertId: _id, state: _state, ...rest }) => rest)).toEqual(incidents);
    expect(new Set(stored.map((s) => s.rule))).toEqual(new Set(["strict_low_confidence"]));
    expect(demo.alerts.every((a) => a.rule === "strict_low_confidence")).toBe(true);
    // search-mcp is healthy: its confidence is rarely below the default 0.7, mostly below 0.95.
    const healthy = stored.filter((s) => s.service === "search-mcp");
    expect(healthy.length).toBe(1);
    const atDefaults = [...oracleRollups(log.onTime, 5_000_000).values()]
      .filter((w) => w.service === "search-mcp" && w.model === null)
      .map((w) => w.rates.low_confidence_rate ?? 0);
    expect(atDefaults.length).toBeGreaterThan(0);
    expect(
      Math.max(...atDefaults),
      "search-mcp's worst low-confidence rate at the default threshold 0.7",
    ).toBeLessThan(0.5);
  });

  it("replay --verify with the same config file rebuilds the same rollups and alerts", async () => {
    const result = await runCli(
      [
        "replay",
        "--config",
        config,
        "--verify",
        "--dry-run",
        "--json",
        "--window",
        "5s",
        "--grace",
        "1s",
      ],
      env,
    );
    expect(result.code, result.stderr + result.stdout).toBe(0);
    const report = JSON.parse(result.stdout.trim()) as ReplayReport;
    expect(report.verify?.differenceCount).toBe(0);
    expect(report.verify?.alertsCompared).toBe(true);
    expect(report.summary.alertsFired).toBe(demo.alerts.length);
  });
});

describe("errors", () => {
  // An empty database of its own: `replay` migrates it before it looks for its topic.
  const errorsDatabase = useFreshDatabase("mcpo_errors");
  describe("errors: one line saying what is wrong, a non-zero exit, no stack trace", () => {
    const badFile = (): string => {
      const path = join(scratch, "bad-config.yaml");
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
        args: () => ["report", "--database-url", missingDatabaseUrl()],
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
      const result = await runCli(
        ["--verbose", "alerts", "tail", "--brokers", "127.0.0.1:9"],
        baseEnv(),
      );
      expect(result.code).toBe(3);
      expect(result.stderr).toMatch(/cannot reach Kafka/);
      expect(result.stderr).toMatch(/^\s+at .*preflight/m);
    });

    for (const c of cases)
      it(c.name, async () => {
        const result = await runCli(c.args(), {
          ...baseEnv({ DATABASE_URL: errorsDatabase.current.url }),
          ...c.env,
        });
        expect(result.code, result.stderr).toBe(c.code);
        expect(result.stderr).toMatch(c.message);
        expect(result.stderr.trim().split("\n")).toHaveLength(1);
        expect(result.stderr).not.toMatch(/^\s+at /m);
      });
  });
});
