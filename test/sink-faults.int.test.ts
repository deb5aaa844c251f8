/**
 * The sink through real faults while it consumes: a schema-registry outage (a TCP proxy in front
 * of the real registry stops forwarding while records of a schema id the sink has not met yet
 * arrive) and a restart of its broker (a private broker, stopped and started again). Nothing is
 * dead-lettered because of the outage, every span is written once, and the rollups equal the
 * brute-force oracle's.
 */
import { createServer, connect, type Server, type Socket } from "node:net";

import type { Admin } from "kafkajs";
import pg from "pg";
import { topicNames } from "../config/index.js";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { defineContract, METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import {
  MODEL_CALL_EVENT_SCHEMA,
  type MetricRollup,
  type ModelCallEvent,
} from "../avro/generated.js";
import { rollupEvents, rollupKey } from "../metrics/index.js";
import type { ProcessorLogger } from "../processor/processor.js";
import { Sink } from "../sink/sink.js";
import { storedRollups } from "./support/stored-rollups.js";
import { sampleEvent } from "./support/events.js";
import {
  createTopics,
  services,
  testKafka,
  uniqueName,
  useFreshDatabase,
} from "./support/isolation.js";
import { expectMatchesOracle, oracleRollups } from "./support/oracle.js";
import { startPrivateKafka, type PrivateKafka } from "./support/private-kafka.js";
import { waitForStoredPositions } from "./support/sink-positions.js";
import { waitFor } from "./support/wait.js";

const MINUTE = 60_000_000;
/** The sink's warnings and errors, printed when a test fails. */
const warnings: string[] = [];
const recording: ProcessorLogger = {
  info: () => undefined,
  warn: (message, context) => {
    warnings.push(`${message} ${JSON.stringify(context ?? {})}`);
  },
  error: (message, context) => {
    warnings.push(`error: ${message} ${JSON.stringify(context ?? {})}`);
  },
};

/** v2 of the event: one more optional field, as the contract evolves (a new schema id). */
type Field = { name: string; type: unknown; default?: unknown };
type ModelCallEventV2 = ModelCallEvent & { readonly reasoning_tokens: number | null };
const V2 = defineContract<ModelCallEventV2>({
  ...MODEL_CALL_EVENT_SCHEMA,
  fields: [
    ...(MODEL_CALL_EVENT_SCHEMA as { fields: Field[] }).fields,
    { name: "reasoning_tokens", type: ["null", "long"], default: null },
  ],
});

/**
 * A TCP proxy to the registry. `down()` stops forwarding: open connections are cut and every new
 * one is reset at once (counted), as when the registry's host is gone; `up()` forwards again.
 */
class RegistryProxy {
  refused = 0;
  private forwarding = true;
  private readonly open = new Set<Socket>();
  private constructor(
    private readonly server: Server,
    readonly url: string,
  ) {}

  static async start(target: URL): Promise<RegistryProxy> {
    const holder: { proxy?: RegistryProxy } = {};
    const server = createServer((socket) => {
      const proxy = holder.proxy;
      if (!proxy?.forwarding) {
        if (proxy) proxy.refused++;
        socket.resetAndDestroy();
        return;
      }
      const upstream = connect(Number(target.port), target.hostname);
      proxy.open.add(socket).add(upstream);
      const drop = () => {
        socket.destroy();
        upstream.destroy();
        proxy.open.delete(socket);
        proxy.open.delete(upstream);
      };
      socket.on("error", drop).on("close", drop);
      upstream.on("error", drop).on("close", drop);
      socket.pipe(upstream).pipe(socket);
    });
    await new Promise<void>((resolve) => {
      server.listen(0, "127.0.0.1", resolve);
    });
    const address = server.address();
    if (typeof address !== "object" || address === null) throw new Error("proxy has no port");
    const url = new URL(target.toString());
    url.hostname = "127.0.0.1";
    url.port = String(address.port);
    holder.proxy = new RegistryProxy(server, url.toString().replace(/\/$/, ""));
    return holder.proxy;
  }

  down(): void {
    this.forwarding = false;
    for (const socket of this.open) socket.destroy();
    this.open.clear();
  }

  up(): void {
    this.forwarding = true;
  }

  async close(): Promise<void> {
    this.down();
    await new Promise<void>((resolve) => {
      this.server.close(() => {
        resolve();
      });
    });
  }
}

describe("sink through a registry outage and a broker restart", () => {
  const database = useFreshDatabase("mcpo_sinkfault");
  const prefix = `${uniqueName("sinkfault")}.`;
  const topics = topicNames(prefix);
  const inputs = [topics.modelCalls, topics.metricRollups, topics.alerts];
  const group = uniqueName("sinkfault-group");
  const registryUrl = services().schemaRegistryUrl;
  const events: ModelCallEvent[] = Array.from({ length: 4000 }, (_, i) =>
    sampleEvent({
      event_id: `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`,
      span_id: (0x7000000000000000n + BigInt(i)).toString(16),
      service: `svc-${i % 3}`,
      model: i % 2 === 0 ? "gpt-4o" : "gpt-4o-mini",
      retries: i % 3,
      token_source: i % 4 === 0 ? "estimated" : "reported",
      confidence: (i % 10) / 10,
      status: i % 9 === 0 ? "error" : "ok",
      error_type: i % 9 === 0 ? "Timeout" : null,
      start_time: 1_764_000_000_000_000 + i * 50_000 - (i % 7) * 1000,
      end_time: 1_764_000_000_000_000 + i * 50_000,
    }),
  );
  const rollups = rollupEvents(events, MINUTE);
  let broker: PrivateKafka | undefined;
  let proxy: RegistryProxy | undefined;
  let admin: Admin | undefined;
  let client: pg.Client | undefined;
  let sink: Sink | undefined;
  let v1: AvroCodec<ModelCallEvent>;
  let rollupCodec: AvroCodec<MetricRollup>;

  /** The set-up's parts, present. */
  function parts() {
    if (!broker || !proxy || !admin || !client || !sink) throw new Error("set-up failed");
    return { broker, proxy, admin, client, sink };
  }

  async function send(
    brokers: string,
    messages: { topic: string; messages: { key: string; value: Buffer }[] }[],
  ): Promise<void> {
    const producer = testKafka(uniqueName("producer"), brokers).producer({
      idempotent: true,
      maxInFlightRequests: 1,
    });
    await producer.connect();
    try {
      for (const batch of messages) await producer.send({ ...batch, acks: -1 });
    } finally {
      await producer.disconnect();
    }
  }
  const spanMessages = (from: number, to: number, codec: AvroCodec<ModelCallEvent>) => ({
    topic: topics.modelCalls,
    messages: events
      .slice(from, to)
      .map((event) => ({ key: event.service, value: codec.encode(event) })),
  });
  const rollupMessages = (from: number, to: number) => ({
    topic: topics.metricRollups,
    messages: rollups
      .slice(from, to)
      .map((r) => ({ key: rollupKey(r), value: rollupCodec.encode(r) })),
  });
  const spans = async (): Promise<number> =>
    (await parts().client.query<{ n: number }>("select count(*)::int as n from spans")).rows[0]
      ?.n ?? 0;

  beforeAll(async () => {
    [broker, proxy] = await Promise.all([
      startPrivateKafka(),
      RegistryProxy.start(new URL(registryUrl)),
    ]);
    admin = testKafka(uniqueName("admin"), broker.brokers).admin();
    await admin.connect();
    await createTopics(admin, [
      { topic: topics.modelCalls, numPartitions: 3 },
      { topic: topics.metricRollups, numPartitions: 2, config: { "cleanup.policy": "compact" } },
      { topic: topics.alerts, numPartitions: 1 },
      { topic: topics.deadLetter, numPartitions: 1 },
    ]);
    client = new pg.Client({ connectionString: database.current.url });
    await client.connect();
    v1 = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl,
      subject: valueSubject(topics.modelCalls),
    });
    rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
      registryUrl,
      subject: valueSubject(topics.metricRollups),
    });
    sink = new Sink({
      brokers: broker.brokers,
      schemaRegistryUrl: proxy.url,
      databaseUrl: database.current.url,
      topicPrefix: prefix,
      groupId: group,
      sessionTimeoutMs: 10_000,
      retryInitialMs: 100,
      retryMaxMs: 1000,
      logger: recording,
    });
    await sink.start();
  }, 240_000);

  beforeEach((context) => {
    context.onTestFailed(() => {
      process.stderr.write(`sink warnings:\n${warnings.join("\n")}\n`);
    });
  });

  afterAll(async () => {
    await sink?.stop().catch(() => undefined);
    await admin?.disconnect().catch(() => undefined);
    await client?.end().catch(() => undefined);
    await proxy?.close();
    await broker?.dispose();
  });

  it("holds back records of a schema id it cannot fetch while the registry is unreachable, dead-letters none, and writes them once it is back", async () => {
    const { broker, proxy, admin, client, sink } = parts();
    await send(broker.brokers, [spanMessages(0, 1000, v1), rollupMessages(0, rollups.length / 2)]);
    await waitForStoredPositions(admin, client, group, inputs);
    expect(await spans()).toBe(1000);

    // The registry goes away, then records of a v2 schema id the sink has never met arrive.
    proxy.down();
    const v2 = await AvroCodec.register(V2, {
      registryUrl,
      subject: valueSubject(topics.modelCalls),
    });
    expect(v2.schemaId).not.toBe(v1.schemaId);
    await send(broker.brokers, [
      {
        topic: topics.modelCalls,
        messages: events.slice(1000, 1500).map((event) => ({
          key: event.service,
          value: v2.encode({ ...event, reasoning_tokens: 7 }),
        })),
      },
      spanMessages(1500, 2000, v1),
    ]);
    const outage = await waitFor(
      "the sink to ask the unreachable registry for the new schema id again and again (6 connections refused)",
      async () => ({ refused: proxy.refused, spans: await spans() }),
      (seen) => seen.refused >= 6,
      { timeoutMs: 60_000, intervalMs: 100 },
    );
    // Held back: no span from the first v2 record on, and nothing dead-lettered.
    expect(outage.spans).toBe(1000);
    expect(sink.stats().deadLettered).toBe(0);
    proxy.up();
    await waitForStoredPositions(admin, client, group, inputs);
    expect(await spans()).toBe(2000);
    expect(sink.stats()).toMatchObject({ spansInserted: 2000, spansDuplicate: 0, deadLettered: 0 });
  });

  it(
    "goes on after its broker is stopped while it holds a batch and is started again: every span once, nothing dead-lettered, every rollup the oracle's",
    { timeout: 240_000 },
    async () => {
      const { broker, admin, client, sink } = parts();
      // A lock keeps the sink's next insert waiting, so the broker stops while it holds a batch.
      const locker = new pg.Client({ connectionString: database.current.url });
      await locker.connect();
      await locker.query("begin");
      await locker.query("lock table spans in share row exclusive mode");
      await send(broker.brokers, [spanMessages(2000, 3000, v1)]);
      await waitFor(
        "the sink's insert to wait on the lock",
        async () =>
          (
            await client.query<{ n: number }>(
              "select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
            )
          ).rows[0]?.n ?? 0,
        (n) => n > 0,
        { timeoutMs: 30_000, intervalMs: 50 },
      );
      await admin.disconnect();
      await broker.stop();
      await locker.query("commit");
      await locker.end();
      // The held batch is written while the broker is down (its group commit cannot land then:
      // harmless, the position is in PostgreSQL).
      await waitFor("the held batch in PostgreSQL with the broker down", spans, (n) => n > 2000, {
        timeoutMs: 60_000,
        intervalMs: 100,
      });
      await broker.start();
      await send(broker.brokers, [
        spanMessages(3000, events.length, v1),
        rollupMessages(rollups.length / 2, rollups.length),
      ]);
      await admin.connect();
      await waitForStoredPositions(admin, client, group, inputs, 120_000);

      const { rows } = await client.query<{ n: number; ids: number; retries: string }>(
        "select count(*)::int as n, count(distinct event_id)::int as ids, sum(retries)::text as retries from spans",
      );
      expect(rows[0]).toEqual({
        n: events.length,
        ids: events.length,
        retries: String(events.reduce((sum, e) => sum + e.retries, 0)),
      });
      expect(sink.stats()).toMatchObject({
        spansInserted: events.length,
        spansDuplicate: 0,
        deadLettered: 0,
      });
      const dead = await admin.fetchTopicOffsets(topics.deadLetter);
      expect(dead.map((p) => p.high)).toEqual(dead.map(() => "0"));
      expectMatchesOracle(await storedRollups(client), oracleRollups(events, MINUTE));
    },
  );
});
