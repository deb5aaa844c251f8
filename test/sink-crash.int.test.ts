/**
 * The sink as a child process over 100 000 events, killed with SIGKILL at random points and
 * restarted: at the end every span is in PostgreSQL exactly once (count and checksum) and the
 * rollups equal the ones produced.
 */
import { spawn, type ChildProcess } from "node:child_process";

import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { rollupEvents, rollupKey } from "../metrics/index.js";
import { REPO_ROOT } from "./support/cli.js";
import { sampleEvent } from "./support/events.js";
import {
  createTopics,
  services,
  testKafka,
  uniqueName,
  useFreshDatabase,
} from "./support/isolation.js";

const COUNT = 100_000;

describe("sink killed with SIGKILL and restarted", () => {
  const database = useFreshDatabase("mcpo_sinkcrash");
  let child: ChildProcess | undefined;
  afterAll(() => {
    child?.kill("SIGKILL");
  });

  it("leaves each span exactly once and every rollup", { timeout: 360_000 }, async () => {
    const prefix = `${uniqueName("sinkcrash")}.`;
    const admin = testKafka().admin();
    await admin.connect();
    await createTopics(admin, [
      { topic: `${prefix}model-calls`, numPartitions: 3 },
      {
        topic: `${prefix}metric-rollups`,
        numPartitions: 2,
        config: { "cleanup.policy": "compact" },
      },
      { topic: `${prefix}alerts`, numPartitions: 1 },
      { topic: `${prefix}dead-letter`, numPartitions: 1 },
    ]);
    await admin.disconnect();
    const url = services().schemaRegistryUrl;
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: url,
      subject: valueSubject(`${prefix}model-calls`),
    });
    const rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
      registryUrl: url,
      subject: valueSubject(`${prefix}metric-rollups`),
    });
    const template = sampleEvent();
    const events: ModelCallEvent[] = [];
    for (let i = 0; i < COUNT; i++) {
      const end = 1_764_000_000_000_000 + i * 10_000;
      events.push({
        ...template,
        event_id: `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`,
        span_id: (0x3000000000000000n + BigInt(i)).toString(16),
        service: `svc-${i % 10}`,
        prompt_tokens: i % 1000,
        start_time: end - 1000,
        end_time: end,
      });
    }
    const rollups = rollupEvents(events, 60_000_000);
    const producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    for (let i = 0; i < COUNT; i += 5000)
      await producer.send({
        topic: `${prefix}model-calls`,
        acks: -1,
        messages: events
          .slice(i, i + 5000)
          .map((event) => ({ key: event.service, value: codec.encode(event) })),
      });
    await producer.send({
      topic: `${prefix}metric-rollups`,
      acks: -1,
      messages: rollups.map((r) => ({ key: rollupKey(r), value: rollupCodec.encode(r) })),
    });
    await producer.disconnect();

    const client = new pg.Client({ connectionString: database.current.url });
    await client.connect();
    const spans = async (): Promise<number> => {
      const { rows } = await client
        .query<{ n: number }>("select count(*)::int as n from spans")
        .catch(() => ({ rows: [{ n: 0 }] }));
      return rows[0]?.n ?? 0;
    };
    const start = (): ChildProcess =>
      spawn(process.execPath, ["--import", "tsx", "cli/main.ts", "sink"], {
        cwd: REPO_ROOT,
        env: {
          ...process.env,
          KAFKA_BROKERS: services().kafkaBrokers,
          SCHEMA_REGISTRY_URL: url,
          DATABASE_URL: database.current.url,
          MCPO_TOPIC_PREFIX: prefix,
          MCPO_SINK_GROUP: "crash-sink",
          MCPO_SESSION_TIMEOUT_MS: "6000",
          MCPO_METRICS_PORT: "0",
          LOG_LEVEL: "warn",
        },
        stdio: ["ignore", "ignore", "ignore"],
      });
    const progress: number[] = [];
    for (let kill = 1; kill <= 4; kill++) {
      child = start();
      const target = (COUNT * kill) / 5;
      const until = Date.now() + 90_000;
      while ((await spans()) < target && Date.now() < until)
        await new Promise((resolve) => setTimeout(resolve, 50));
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 300));
      child.kill("SIGKILL");
      await new Promise((resolve) => child?.once("exit", resolve));
      progress.push(await spans());
    }
    process.stderr.write(`spans written at each kill: ${progress.join(", ")} of ${COUNT}\n`);
    expect(progress.at(-1)).toBeLessThan(COUNT);
    child = start();
    const deadline = Date.now() + 180_000;
    const rollupRows = async () =>
      (await client.query<{ n: number }>("select count(*)::int as n from metric_rollups")).rows[0]
        ?.n ?? 0;
    while (
      ((await spans()) < COUNT || (await rollupRows()) < rollups.length) &&
      Date.now() < deadline
    )
      await new Promise((resolve) => setTimeout(resolve, 300));
    await new Promise((resolve) => setTimeout(resolve, 2000));
    child.kill("SIGTERM");

    const { rows } = await client.query<{
      n: number;
      distinct_ids: number;
      tokens: string;
      min_us: string;
    }>(
      `select count(*)::int as n, count(distinct event_id)::int as distinct_ids, sum(prompt_tokens)::text as tokens,
              min((extract(epoch from end_time) * 1000000)::bigint)::text as min_us from spans`,
    );
    expect(rows[0]).toEqual({
      n: COUNT,
      distinct_ids: COUNT,
      tokens: String(events.reduce((sum, event) => sum + (event.prompt_tokens ?? 0), 0)),
      min_us: String(events[0]?.end_time),
    });
    const stored = await client.query<{
      service: string;
      model: string;
      calls: string;
      cost: string;
    }>(
      "select service, model, calls::text, cost_nano_usd::text as cost from metric_rollups order by service, model, window_start",
    );
    const expected = [...rollups]
      .sort((a, b) =>
        a.service === b.service
          ? (a.model ?? "*") === (b.model ?? "*")
            ? a.window_start - b.window_start
            : (a.model ?? "*") < (b.model ?? "*")
              ? -1
              : 1
          : a.service < b.service
            ? -1
            : 1,
      )
      .map((r) => ({
        service: r.service,
        model: r.model ?? "*",
        calls: String(r.counts.calls),
        cost: String(r.counts.cost_nano_usd),
      }));
    expect(stored.rows).toEqual(expected);
    await client.end();
  });
});
