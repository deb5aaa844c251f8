/**
 * Terminal injection through the CLI, with the real stack: services, models and rules named with
 * escape sequences (retitle the window, clear the screen, write the clipboard), C1 controls, bidi
 * overrides and line feeds, read back by `alerts tail` from the alerts topic and by `report` from
 * PostgreSQL, as tables and as JSON lines. Nothing a terminal acts on reaches stdout raw; the
 * JSON lines still parse to the names as they were.
 */
import type { Producer } from "kafkajs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { ALERT_EVENT } from "../../avro/contracts.js";
import type { AlertEvent } from "../../avro/generated.js";
import { topicNames } from "../../config/index.js";
import { rollupEvents } from "../../metrics/index.js";
import { PostgresWriter } from "../../sink/writer.js";
import { runCli } from "../support/cli.js";
import { sampleEvent } from "../support/events.js";
import {
  createTopics,
  services,
  testKafka,
  uniqueName,
  useFreshDatabase,
} from "../support/isolation.js";
import { migrate } from "../../sink/migrate.js";

const SERVICE = "pay\u001b]0;owned\u0007\u001b[2J\u001b[Hments\nforged-row";
const MODEL = "gpt\u009b31m\u202eevil\u202c";
const RULE = "rule\u001b]52;c;aGk=\u0007\r";
/** What a terminal may act on (a line feed inside a value too). */
const RAW_CONTROL =
  // eslint-disable-next-line no-control-regex -- finding control characters is the point
  /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/u;

function env(prefix: string, databaseUrl: string): NodeJS.ProcessEnv {
  return {
    ...process.env,
    KAFKA_BROKERS: services().kafkaBrokers,
    SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
    DATABASE_URL: databaseUrl,
    MCPO_TOPIC_PREFIX: prefix,
  };
}

describe("names with terminal controls, printed by the CLI", () => {
  const database = useFreshDatabase("mcpo_terminal");
  const prefix = `${uniqueName("terminal")}.`;
  const topic = topicNames(prefix).alerts;
  let producer: Producer;
  const now = Date.now() * 1000;
  const alert: AlertEvent = {
    alert_id: "0".repeat(31) + "1",
    service: SERVICE,
    rule: RULE,
    metric: "error_rate",
    comparator: "gt",
    state: "firing",
    observed_value: 0.5,
    threshold: 0.05,
    min_samples: 1,
    sample_count: 4,
    window_start: now - 60_000_000,
    window_end: now,
    fired_window_start: now - 60_000_000,
    emitted_at: now,
  };

  beforeAll(async () => {
    const admin = testKafka().admin();
    await admin.connect();
    await createTopics(admin, [{ topic, numPartitions: 1 }]).finally(() => admin.disconnect());
    const codec = await AvroCodec.register(ALERT_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    producer = testKafka().producer();
    await producer.connect();
    await producer.send({ topic, messages: [{ key: "k", value: codec.encode(alert) }] });
    await migrate(database.current.url);
    const pool = new pg.Pool({ connectionString: database.current.url });
    try {
      const end = now - 120_000_000;
      const events = [1, 2, 3].map((i) =>
        sampleEvent({ service: SERVICE, model: MODEL, start_time: end - i, end_time: end }),
      );
      await new PostgresWriter(pool).write({ rollups: rollupEvents(events, 60_000_000) });
    } finally {
      await pool.end();
    }
  });

  afterAll(async () => {
    await producer.disconnect();
  });

  it("alerts tail prints the alert's service and rule escaped, as a table and as JSON", async () => {
    const run = (json: boolean) =>
      runCli(
        ["alerts", "tail", "--from-beginning", "--max-messages", "1", ...(json ? ["--json"] : [])],
        env(prefix, database.current.url),
      );
    const text = await run(false);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).not.toMatch(RAW_CONTROL);
    const lines = text.stdout.trimEnd().split("\n");
    expect(lines, text.stdout).toHaveLength(2); // header and the alert: no forged row
    expect(lines[1]).toContain("pay\\x1b]0;owned\\x07\\x1b[2J\\x1b[Hments\\x0aforged-row");
    expect(lines[1]).toContain("rule\\x1b]52;c;aGk=\\x07\\x0d");
    const json = await run(true);
    expect(json.code, json.stderr).toBe(0);
    expect(json.stdout).not.toMatch(RAW_CONTROL);
    const parsed = JSON.parse(json.stdout.trim()) as AlertEvent;
    expect([parsed.service, parsed.rule]).toEqual([SERVICE, RULE]);
  });

  it("report prints the service and model escaped, as tables and as JSON", async () => {
    const run = (args: string[]) =>
      runCli(["report", "--since", "1h", ...args], env(prefix, database.current.url));
    for (const args of [[], ["--model", MODEL]]) {
      const text = await run(args);
      expect(text.code, text.stderr).toBe(0);
      expect(text.stdout).not.toMatch(RAW_CONTROL);
      expect(text.stdout).toContain("pay\\x1b]0;owned\\x07\\x1b[2J\\x1b[Hments\\x0aforged-row (");
    }
    const model = await run(["--model", MODEL]);
    expect(model.stdout).toContain("(model gpt\\x9b31m\\u202eevil\\u202c)");
    const json = await run(["--json", "--model", MODEL]);
    expect(json.code, json.stderr).toBe(0);
    expect(json.stdout).not.toMatch(RAW_CONTROL);
    const row = JSON.parse(json.stdout.trim()) as { service: string; model: string; calls: number };
    expect(row).toMatchObject({ service: SERVICE, model: MODEL, calls: 3 });
  });
});
