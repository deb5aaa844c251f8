/**
 * The processor CLI stopped gracefully with SIGTERM while the log is still being written, and a
 * config file's thresholds and rules: `mcp-observatory processor --config x.yaml` exits 0 after a
 * final checkpoint and commit, the next member of its group reads only what it had not, and
 * between them they emit exactly the oracle's rollups (with the file's thresholds) and alerts
 * (with the file's rules: one that only this config fires and, thanks to its threshold, resolves).
 *
 * The events and the SIGTERM point come from a logged seed: replay with MCPO_TEST_SEED=<seed>.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";

import type { Admin, Producer } from "kafkajs";
import { afterAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT, METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { AlertEvent, MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { partitionForKey } from "../kafka/index.js";
import { StreamProcessor } from "../processor/processor.js";
import { REPO_ROOT } from "./support/cli.js";
import { createTopics, services, testKafka, uniqueName } from "./support/isolation.js";
import {
  expectMatchesOracle,
  oracleAlerts,
  oracleRollups,
  type OracleRule,
  type OracleTransition,
} from "./support/oracle.js";
import { seededRandom } from "./support/seed.js";
import { readBetween, recordsBetween, topicEnds, waitForRecords } from "./support/topic-records.js";
import { pick, variedEvent } from "./support/varied-events.js";
import { waitFor } from "./support/wait.js";

const MINUTE = 60_000_000;
const ORIGIN = 1_700_000_040 * 1_000_000 - ((1_700_000_040 * 1_000_000) % MINUTE);
const SERVICES = ["payments-mcp", "search-mcp", "docs-mcp"];
const MINUTES = 10;
const PER_MINUTE = 20; // calls per service and minute
/** The config file's metrics section: thresholds and a rule none of the defaults has. */
const THRESHOLDS = { low_confidence: 0.5, prompt_diff: 0.25 };
const RULES: OracleRule[] = [
  {
    key: "low_confidence_custom",
    metric: "low_confidence_rate",
    comparator: "gt",
    threshold: 0.4,
    minSamples: 5,
  },
];
const CONFIG_YAML = `# written by processor-shutdown.int.test.ts
processor:
  windowMs: 60s
  graceMs: 10s
  # No idle ticks and no periodic checkpoints: the only checkpoint is the one SIGTERM writes.
  idleTimeoutMs: 10m
  checkpointIntervalMs: 10m
  partitions: 3
  metricsPort: 0
metrics:
  thresholds: { low_confidence: ${THRESHOLDS.low_confidence}, prompt_diff: ${THRESHOLDS.prompt_diff} }
  rules:
    - { key: ${RULES[0]?.key}, metric: low_confidence_rate, comparator: gt, threshold: 0.4, minSamples: 5 }
`;

const random = seededRandom("processor-shutdown events and SIGTERM point");

/**
 * Ten minutes of calls, one chunk a minute. payments-mcp's confidence is 0.45 in minutes 2-3 (low
 * under any threshold: the custom rule fires) and 0.6 in minutes 4-5 (low only under the default
 * 0.7: with the file's 0.5 the alert resolves); elsewhere it is never below 0.5.
 */
function makeChunks(): ModelCallEvent[][] {
  const chunks: ModelCallEvent[][] = [];
  for (let minute = 0; minute < MINUTES; minute++) {
    const chunk: ModelCallEvent[] = [];
    for (let i = 0; i < PER_MINUTE * SERVICES.length; i++) {
      const service = SERVICES[i % SERVICES.length] ?? "payments-mcp";
      const end =
        ORIGIN + minute * MINUTE + Math.floor(i / SERVICES.length) * 3_000_000 + (i % 3) * 1000;
      const drifting = service === "payments-mcp" && minute >= 2 && minute <= 5;
      chunk.push(
        variedEvent(random, service, end, ["gpt-4o", "claude-sonnet-4", null], {
          confidence: drifting
            ? minute <= 3
              ? 0.45
              : 0.6
            : pick(random, [null, 0.5, 0.55, 0.65, 0.69, 0.8, 0.95]),
          confidence_gate_threshold: pick(random, [null, 0.5, 0.7]),
          status: random.next() < 0.03 ? "error" : "ok",
        }),
      );
    }
    chunks.push(chunk);
  }
  return chunks;
}

interface Child {
  readonly process: ChildProcess;
  readonly output: string[];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

describe("processor CLI: SIGTERM mid-stream and a config file's thresholds and rules", () => {
  const prefix = `${uniqueName("shutdown")}.`;
  const group = uniqueName("shutdown-group");
  const dir = mkdtempSync(join(tmpdir(), "mcpo-shutdown-"));
  const configPath = join(dir, "mcp-observatory.yaml");
  let child: Child | undefined;
  let admin: Admin | undefined;
  let producer: Producer | undefined;
  let second: StreamProcessor | undefined;

  afterAll(async () => {
    if (child && child.process.exitCode === null && child.process.signalCode === null) {
      child.process.kill("SIGKILL");
      await child.exited;
    }
    await second?.stop();
    await producer?.disconnect();
    await admin?.disconnect();
    rmSync(dir, { recursive: true, force: true });
  });

  function startCli(): Child {
    const started = spawn(
      process.execPath,
      ["--import", "tsx", "cli/main.ts", "processor", "--config", configPath],
      {
        cwd: REPO_ROOT,
        env: {
          ...process.env,
          KAFKA_BROKERS: services().kafkaBrokers,
          SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
          MCPO_TOPIC_PREFIX: prefix,
          MCPO_PROCESSOR_GROUP: group,
        },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    const output: string[] = [];
    started.stdout.on("data", (data: Buffer) => output.push(...data.toString().split("\n")));
    started.stderr.on("data", (data: Buffer) => output.push(...data.toString().split("\n")));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>(
      (resolve) => {
        started.once("exit", (code, signal) => {
          resolve({ code, signal });
        });
      },
    );
    return { process: started, output, exited };
  }

  /** The child's JSON log lines with this message. */
  const logged = (messageText: string): Record<string, unknown>[] =>
    (child?.output ?? [])
      .filter((line) => line.startsWith("{"))
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .filter((line) => line.msg === messageText);

  /** `wait`, failing at once, with what the child printed, if the child exits first. */
  const orExit = async <T>(wait: Promise<T>): Promise<T> => {
    const running = child;
    if (!running) return wait;
    return Promise.race([
      wait,
      running.exited.then(({ code, signal }) => {
        throw new Error(
          `the processor exited (${code ?? signal}) while waiting; it printed:\n${running.output.join("\n")}`,
        );
      }),
    ]);
  };

  it(
    "exits 0 on SIGTERM with a final checkpoint and commit (also for the batch in flight); the next member reads only the rest; together they emit exactly the oracle's rollups and alerts under the config file's thresholds and rules",
    { timeout: 240_000 },
    async () => {
      writeFileSync(configPath, CONFIG_YAML);
      const chunks = makeChunks();
      const events = chunks.flat();
      const partitionOf = (service: string) => partitionForKey(service, 3);
      admin = testKafka().admin();
      await admin.connect();
      await createTopics(admin, [{ topic: `${prefix}model-calls`, numPartitions: 3 }]);
      const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
        registryUrl: services().schemaRegistryUrl,
        subject: valueSubject(`${prefix}model-calls`),
      });
      producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
      await producer.connect();
      const send = async (list: readonly ModelCallEvent[]) => {
        await producer?.send({
          topic: `${prefix}model-calls`,
          acks: -1,
          messages: list.map((event) => ({
            key: event.service,
            value: codec.encode(event),
            partition: partitionOf(event.service),
          })),
        });
      };

      // The expectation: the oracle with the file's thresholds and rules. With the default
      // thresholds the same rule would not resolve where it does: the file's values matter.
      const oracle = oracleRollups(events, MINUTE, { thresholds: THRESHOLDS });
      const transitions = oracleAlerts(oracle.values(), RULES);
      const describeAll = (list: readonly OracleTransition[]) =>
        list.map((t) => `${t.service}:${t.rule}:${t.state}@${(t.windowStart - ORIGIN) / MINUTE}`);
      expect(describeAll(transitions)).toEqual([
        "payments-mcp:low_confidence_custom:firing@2",
        "payments-mcp:low_confidence_custom:resolved@4",
      ]);
      expect(
        describeAll(oracleAlerts(oracleRollups(events, MINUTE).values(), RULES)),
      ).not.toContain("payments-mcp:low_confidence_custom:resolved@4");

      const perChunk = PER_MINUTE * SERVICES.length;
      /** Starts the CLI and returns a reader of its events counter. */
      const startRun = async () => {
        child = startCli();
        const metricsUrl = await orExit(
          waitFor(
            "the processor's metrics endpoint log line",
            () => {
              const url = logged("metrics endpoint")[0]?.url;
              return typeof url === "string" ? url : "";
            },
            (url) => url !== "",
          ),
        );
        return async () => {
          const text = await (await fetch(metricsUrl)).text();
          return Number(/^mcpo_processor_events_total (\d+)$/m.exec(text)?.[1] ?? "0");
        };
      };
      /** SIGTERM, exit 0, and the stats the processor logged on its way out. */
      const terminate = async () => {
        const running = child;
        if (!running) throw new Error("no processor running");
        running.process.kill("SIGTERM");
        const exit = await running.exited;
        expect(exit, `the processor's exit; it printed:\n${running.output.join("\n")}`).toEqual({
          code: 0,
          signal: null,
        });
        const stopped = logged("processor stopped")[0] ?? {};
        return { events: Number(stopped.events), records: Number(stopped.records) };
      };
      /** The newest checkpoint's next offset per partition, read from the checkpoint topic. */
      const checkpointed = async () => {
        const checkpointTopic = `${prefix}processor-checkpoints`;
        const best = new Map<number, number>();
        for (const record of await readBetween(
          services().kafkaBrokers,
          checkpointTopic,
          new Map(),
          await topicEnds(admin as Admin, checkpointTopic),
        )) {
          // Checkpoints are gzipped JSON (the layout record is plain JSON); skip what is neither.
          const raw = record.value ?? Buffer.from("{}");
          let checkpoint: { group?: string; partition?: number; nextOffset?: string };
          try {
            checkpoint = JSON.parse(
              (raw[0] === 0x1f && raw[1] === 0x8b ? gunzipSync(raw) : raw).toString("utf8"),
            ) as typeof checkpoint;
          } catch {
            continue;
          }
          if (checkpoint.group !== group || checkpoint.partition === undefined) continue;
          best.set(
            checkpoint.partition,
            Math.max(best.get(checkpoint.partition) ?? 0, Number(checkpoint.nextOffset)),
          );
        }
        return [...best.values()].reduce((sum, next) => sum + next, 0);
      };
      const committed = async () => {
        const offsets = await (admin as Admin).fetchOffsets({
          groupId: group,
          topics: [`${prefix}model-calls`],
        });
        return (offsets[0]?.partitions ?? []).reduce(
          (sum, entry) => sum + Math.max(0, Number(entry.offset)),
          0,
        );
      };
      const k1 = random.int(2, 4);
      const k2 = k1 + random.int(2, 4);

      // Run 1: SIGTERM once it has read everything, between batches: stop() itself checkpoints
      // and commits every partition.
      const readEvents1 = await startRun();
      for (let c = 0; c < k1; c++) await send(chunks[c] ?? []);
      await orExit(
        waitFor(`run 1 reading ${k1 * perChunk} events`, readEvents1, (n) => n >= k1 * perChunk, {
          timeoutMs: 90_000,
        }),
      );
      const run1 = await terminate();
      expect(run1).toEqual({ events: k1 * perChunk, records: k1 * perChunk });
      expect(await checkpointed(), "run 1: next offsets of the newest checkpoints, summed").toBe(
        run1.records,
      );
      expect(await committed(), "run 1: the group's committed offsets, summed").toBe(run1.records);

      // Run 2: SIGTERM right after more chunks are produced, once it has read the first of them:
      // a batch is usually in flight, and it checkpoints at its end.
      const readEvents2 = await startRun();
      await send(chunks[k1] ?? []);
      await orExit(
        waitFor(`run 2 reading its first chunk`, readEvents2, (n) => n >= perChunk, {
          timeoutMs: 90_000,
        }),
      );
      for (let c = k1 + 1; c < k2; c++) await send(chunks[c] ?? []);
      const run2 = await terminate();
      const checkpointed2 = await checkpointed();
      process.stderr.write(
        `[processor-shutdown] run 1 stopped after ${run1.events} events (chunk ${k1}); run 2 after ${run2.events} of the ${(k2 - k1) * perChunk} produced while it ran; checkpoints cover ${checkpointed2}, the group's commits ${await committed()}\n`,
      );
      expect(run2.events).toBeGreaterThanOrEqual(perChunk);
      expect(run2.records).toBe(run2.events);
      expect(checkpointed2, "run 2: next offsets of the newest checkpoints, summed").toBe(
        run1.records + run2.records,
      );
      // The batch in flight at SIGTERM commits to the group too, not only to the checkpoints.
      expect(await committed(), "run 2: the group's committed offsets, summed").toBe(
        run1.records + run2.records,
      );
      const firstEvents = run1.events + run2.events;

      // The rest of the log, then the next member of the group, in process.
      await send(chunks.slice(k2).flat());
      second = new StreamProcessor({
        brokers: services().kafkaBrokers,
        schemaRegistryUrl: services().schemaRegistryUrl,
        topicPrefix: prefix,
        groupId: group,
        windowSizeMs: 60_000,
        graceMs: 10_000,
        // Its idle ticks close the last windows; they land after every event (all produced).
        idleTimeoutMs: 1000,
        checkpointIntervalMs: 200,
        partitions: 3,
        metrics: { thresholds: THRESHOLDS, rules: RULES },
        logger: { info: () => undefined, warn: () => undefined, error: () => undefined },
      });
      await second.start();
      const none = new Map<number, bigint>();
      await waitForRecords(admin, `${prefix}metric-rollups`, none, oracle.size);
      await waitForRecords(admin, `${prefix}alerts`, none, transitions.length);
      await waitFor(
        "the second member reading every event",
        () => second?.stats().events ?? 0,
        (n) => n >= events.length - firstEvents,
      );
      await second.stop();
      // Nothing the CLI runs had read was read again.
      expect(second.stats().events, "events the in-process member read").toBe(
        events.length - firstEvents,
      );
      expect(second.stats().deadLettered + second.stats().late).toBe(0);

      // Exactly the oracle's records, each once.
      const rollupEnds = await topicEnds(admin, `${prefix}metric-rollups`);
      const alertEnds = await topicEnds(admin, `${prefix}alerts`);
      expect(recordsBetween(none, rollupEnds), "rollup records").toBe(oracle.size);
      expect(recordsBetween(none, alertEnds), "alert records").toBe(transitions.length);
      const rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
        registryUrl: services().schemaRegistryUrl,
        subject: valueSubject(`${prefix}metric-rollups`),
      });
      const alertCodec = await AvroCodec.register(ALERT_EVENT, {
        registryUrl: services().schemaRegistryUrl,
        subject: valueSubject(`${prefix}alerts`),
      });
      const rollups: MetricRollup[] = [];
      for (const record of await readBetween(
        services().kafkaBrokers,
        `${prefix}metric-rollups`,
        none,
        rollupEnds,
      )) {
        const decoded = await rollupCodec.decode(record.value ?? Buffer.alloc(0));
        if (!decoded.ok) throw new Error(decoded.error.message);
        rollups.push(decoded.value);
      }
      for (const rollup of rollups) expect(rollup.thresholds).toEqual(THRESHOLDS);
      expectMatchesOracle(
        rollups.map((rollup) => ({
          service: rollup.service,
          model: rollup.model,
          windowStart: rollup.window_start,
          counts: rollup.counts,
          rates: rollup.rates,
        })),
        oracle,
      );
      const alerts: AlertEvent[] = [];
      for (const record of await readBetween(
        services().kafkaBrokers,
        `${prefix}alerts`,
        none,
        alertEnds,
      )) {
        const decoded = await alertCodec.decode(record.value ?? Buffer.alloc(0));
        if (!decoded.ok) throw new Error(decoded.error.message);
        alerts.push(decoded.value);
      }
      expect(
        alerts.map(
          (a) =>
            `${a.service}|${a.rule}|${a.state}|${a.window_start}|${a.fired_window_start}|${a.observed_value}|${a.sample_count}`,
        ),
      ).toEqual(
        transitions.map(
          (t) =>
            `${t.service}|${t.rule}|${t.state}|${t.windowStart}|${t.firedWindowStart}|${t.observed}|${t.samples}`,
        ),
      );
    },
  );
});
