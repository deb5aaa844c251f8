/**
 * The processor through real faults mid-stream: the schema registry unreachable (a TCP proxy the
 * test closes, while the log holds records of a schema version the processor has not fetched
 * yet), then its broker stopped and started again (a private broker of this file). Nothing is
 * dead-lettered or late because of them, and once the services are back the output equals the
 * brute-force oracle, every key with one set of bytes.
 *
 * The events come from a logged seed: replay with MCPO_TEST_SEED=<seed>.
 */
import { createServer, connect, type Server, type Socket } from "node:net";

import type { Producer } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from "vitest";

import { watermarkTick } from "../avro/control.js";
import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT, defineContract, METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import {
  MODEL_CALL_EVENT_SCHEMA,
  type AlertEvent,
  type MetricRollup,
  type ModelCallEvent,
} from "../avro/generated.js";
import { partitionForKey } from "../kafka/index.js";
import { StreamProcessor } from "../processor/processor.js";
import { createTopics, services, testKafka, uniqueName } from "./support/isolation.js";
import {
  expectMatchesOracle,
  oracleAlerts,
  oracleRollups,
  type OracleRule,
} from "./support/oracle.js";
import { startPrivateKafka, type PrivateKafka } from "./support/private-kafka.js";
import { seededRandom } from "./support/seed.js";
import { readBetween, waitForRecords } from "./support/topic-records.js";
import { pick, variedEvent } from "./support/varied-events.js";
import { waitFor } from "./support/wait.js";

const MINUTE = 60_000_000;
const ORIGIN = 1_700_000_040 * 1_000_000 - ((1_700_000_040 * 1_000_000) % MINUTE);
const SERVICES = ["alpha", "bravo", "charlie"];
const RULES: OracleRule[] = [
  { key: "errors", metric: "error_rate", comparator: "gt", threshold: 0.2, minSamples: 3 },
];

/** v2 of the event: one more optional field, registered while the processor knows only v1. */
type ModelCallEventV2 = ModelCallEvent & { readonly outage_note: string | null };
const V2 = defineContract<ModelCallEventV2>({
  ...MODEL_CALL_EVENT_SCHEMA,
  fields: [
    ...(MODEL_CALL_EVENT_SCHEMA.fields as readonly object[]),
    { name: "outage_note", type: ["null", "string"], default: null },
  ],
});

/** A TCP proxy to `target` that can be closed (connections refused, open ones cut) and reopened. */
class Proxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  port = 0;

  constructor(private readonly target: { host: string; port: number }) {}

  async open(): Promise<void> {
    const server = createServer((client) => {
      const upstream = connect(this.target.port, this.target.host);
      for (const socket of [client, upstream]) {
        this.sockets.add(socket);
        socket.on("close", () => this.sockets.delete(socket));
        socket.on("error", () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, "127.0.0.1", () => {
        resolve();
      });
    });
    const address = server.address();
    if (typeof address === "object" && address !== null) this.port = address.port;
    this.server = server;
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const socket of this.sockets) socket.destroy();
    if (server)
      await new Promise<void>((resolve) => {
        server.close(() => {
          resolve();
        });
      });
  }
}

const random = seededRandom("processor-outage events");

/** Minutes [from, to) of calls for three services, 3 s apart; charlie errs in minute 4. */
function minutes(from: number, to: number): ModelCallEvent[] {
  const events: ModelCallEvent[] = [];
  for (let minute = from; minute < to; minute++)
    for (let round = 0; round < 20; round++)
      for (const [index, service] of SERVICES.entries()) {
        const failed = service === "charlie" && minute === 4;
        events.push(
          variedEvent(
            random,
            service,
            ORIGIN + minute * MINUTE + round * 3_000_000 + index * 1000,
            ["gpt-4o", "gpt-4o-mini", null],
            {
              confidence: pick(random, [null, 0.3, 0.7, 0.9]),
              confidence_gate_threshold: pick(random, [null, 0.5]),
              status: failed ? "error" : "ok",
              error_type: failed ? "Timeout" : null,
            },
          ),
        );
      }
  return events;
}

describe("processor through a registry outage and a broker restart mid-stream", () => {
  const prefix = `${uniqueName("outage")}.`;
  const topic = `${prefix}model-calls`;
  let broker: PrivateKafka | undefined;
  let proxy: Proxy | undefined;
  let run: StreamProcessor | undefined;
  let producer: Producer | undefined;
  const warnings: string[] = [];
  /** The processor's warnings and errors with their fields, printed when the test fails. */
  const logged: string[] = [];

  beforeAll(async () => {
    const registry = new URL(services().schemaRegistryUrl);
    proxy = new Proxy({ host: registry.hostname, port: Number(registry.port || 80) });
    await proxy.open();
    broker = await startPrivateKafka();
  });

  afterAll(async () => {
    await run?.stop().catch(() => undefined);
    await producer?.disconnect().catch(() => undefined);
    await proxy?.close();
    await broker?.dispose();
  });

  it(
    "reads on after the registry and the broker come back: nothing dead-lettered or late, the oracle's rollups and alerts, each key with one set of bytes",
    { timeout: 240_000 },
    async () => {
      onTestFailed(() => {
        process.stderr.write(`[processor-outage] the processor logged:\n${logged.join("\n")}\n`);
      });
      if (!broker || !proxy) throw new Error("set-up failed");
      const brokers = broker.brokers;
      const admin = testKafka(undefined, brokers).admin();
      await admin.connect();
      try {
        await createTopics(admin, [{ topic, numPartitions: 3 }]);
        const registryUrl = services().schemaRegistryUrl;
        const v1 = await AvroCodec.register(MODEL_CALL_EVENT, {
          registryUrl,
          subject: valueSubject(topic),
        });
        const v2 = await AvroCodec.register(V2, { registryUrl, subject: valueSubject(topic) });
        expect(v2.schemaId).not.toBe(v1.schemaId);
        const proxied = new URL(registryUrl);
        proxied.host = `127.0.0.1:${proxy.port}`;
        run = new StreamProcessor({
          brokers,
          schemaRegistryUrl: proxied.toString().replace(/\/$/, ""),
          topicPrefix: prefix,
          groupId: uniqueName("outage-group"),
          windowSizeMs: 60_000,
          graceMs: 10_000,
          // No wall-clock ticks: the test writes the final tick itself, after every event.
          idleTimeoutMs: 600_000,
          checkpointIntervalMs: 200,
          sessionTimeoutMs: 10_000,
          partitions: 3,
          metrics: { rules: RULES },
          logger: {
            info: () => undefined,
            warn: (message, fields) => {
              warnings.push(message);
              logged.push(`WARN ${message} ${JSON.stringify(fields)}`);
            },
            error: (message, fields) => {
              warnings.push(message);
              logged.push(`ERROR ${message} ${JSON.stringify(fields)}`);
            },
          },
        });
        await run.start();
        const connectProducer = async () => {
          producer = testKafka(undefined, brokers).producer({
            idempotent: true,
            maxInFlightRequests: 1,
          });
          await producer.connect();
          return producer;
        };
        let writer = await connectProducer();
        const send = async (
          list: readonly ModelCallEvent[],
          encode: (e: ModelCallEvent) => Buffer,
        ) => {
          await writer.send({
            topic,
            acks: -1,
            messages: list.map((event) => ({
              key: event.service,
              value: encode(event),
              partition: partitionForKey(event.service, 3),
            })),
          });
        };
        const partA = minutes(0, 3);
        const partB = minutes(3, 6);
        const partC1 = minutes(6, 8);
        const partC2 = minutes(8, 10);
        const events = [...partA, ...partB, ...partC1, ...partC2];
        const eventsRead = () => run?.stats().events ?? 0;

        // A: v1 records, the registry up.
        await send(partA, (event) => v1.encode(event));
        await waitFor("the processor reading part A", eventsRead, (n) => n === partA.length);

        // B: v2 records (an id the processor has never fetched) while the registry is down.
        await proxy.close();
        await send(partB, (event) => v2.encode({ ...event, outage_note: "registry down" }));
        await waitFor(
          "the processor reporting the registry unavailable",
          () => warnings.filter((w) => w.includes("schema registry unavailable")).length,
          (n) => n > 0,
        );
        expect(eventsRead(), "events read while the registry is down").toBe(partA.length);
        await proxy.open();
        await waitFor(
          "the processor reading part B once the registry is back",
          eventsRead,
          (n) => n === partA.length + partB.length,
          { timeoutMs: 90_000 },
        );

        // C: the broker stops while the processor reads C1, and starts again; then C2 and a
        // final watermark tick on every partition.
        await send(partC1, (event) => v1.encode(event));
        await broker.stop();
        await writer.disconnect().catch(() => undefined);
        await broker.start();
        writer = await connectProducer();
        await send(partC2, (event) => v1.encode(event));
        const tick = watermarkTick(ORIGIN + 20 * MINUTE);
        await writer.send({
          topic,
          acks: -1,
          messages: [0, 1, 2].map((partition) => ({ key: null, partition, ...tick })),
        });

        const oracle = oracleRollups(events, MINUTE);
        const transitions = oracleAlerts(oracle.values(), RULES);
        expect(transitions.map((t) => `${t.service}:${t.state}`)).toEqual([
          "charlie:firing",
          "charlie:resolved",
        ]);
        const none = new Map<number, bigint>();
        await waitFor(
          "the processor reading every event after the broker restart",
          eventsRead,
          (n) => n >= events.length,
          { timeoutMs: 120_000 },
        );
        const rollupEnds = await waitForRecords(
          admin,
          `${prefix}metric-rollups`,
          none,
          oracle.size,
        );
        const alertEnds = await waitForRecords(admin, `${prefix}alerts`, none, transitions.length);
        const stats = run.stats();
        // A batch whose outputs the stopped broker did not take is read again from the last
        // checkpoint (and logged), so events may be counted more than once; never fewer.
        const rewinds = warnings.filter((w) => w.includes("goes back to its last checkpoint"));
        process.stderr.write(
          `[processor-outage] ${stats.events} events read for ${events.length}, ${rewinds.length} rewind(s)\n`,
        );
        expect(stats.events).toBeGreaterThanOrEqual(events.length);
        if (stats.events > events.length) expect(rewinds.length).toBeGreaterThan(0);
        expect({ deadLettered: stats.deadLettered, late: stats.late }).toEqual({
          deadLettered: 0,
          late: 0,
        });

        const rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
          registryUrl,
          subject: valueSubject(`${prefix}metric-rollups`),
        });
        const alertCodec = await AvroCodec.register(ALERT_EVENT, {
          registryUrl,
          subject: valueSubject(`${prefix}alerts`),
        });
        const versions = new Map<string, Set<string>>();
        const rollups = new Map<string, MetricRollup>();
        const rollupRecords = await readBetween(
          brokers,
          `${prefix}metric-rollups`,
          none,
          rollupEnds,
        );
        for (const record of rollupRecords) {
          const decoded = await rollupCodec.decode(record.value ?? Buffer.alloc(0));
          if (!decoded.ok) throw new Error(decoded.error.message);
          const key = record.key?.toString() ?? "";
          rollups.set(key, decoded.value);
          versions.set(
            key,
            (versions.get(key) ?? new Set()).add(record.value?.toString("hex") ?? ""),
          );
        }
        process.stderr.write(
          `[processor-outage] ${rollupRecords.length} rollup records for ${rollups.size} keys\n`,
        );
        expect([...versions].filter(([, set]) => set.size > 1).map(([key]) => key)).toEqual([]);
        expectMatchesOracle(
          [...rollups.values()].map((rollup) => ({
            service: rollup.service,
            model: rollup.model,
            windowStart: rollup.window_start,
            counts: rollup.counts,
            rates: rollup.rates,
          })),
          oracle,
        );
        const alerts = new Map<string, AlertEvent>();
        for (const record of await readBetween(brokers, `${prefix}alerts`, none, alertEnds)) {
          const decoded = await alertCodec.decode(record.value ?? Buffer.alloc(0));
          if (!decoded.ok) throw new Error(decoded.error.message);
          alerts.set(`${decoded.value.alert_id}|${decoded.value.state}`, decoded.value);
        }
        expect(
          [...alerts.values()].map(
            (a) =>
              `${a.service}|${a.rule}|${a.state}|${a.window_start}|${a.observed_value}|${a.sample_count}`,
          ),
        ).toEqual(
          transitions.map(
            (t) => `${t.service}|${t.rule}|${t.state}|${t.windowStart}|${t.observed}|${t.samples}`,
          ),
        );
      } finally {
        await admin.disconnect();
      }
    },
  );
});
