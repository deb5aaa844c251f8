/**
 * Kill-and-restart: the processor runs as a child process over 100 000 events and is killed with
 * SIGKILL at random points, then restarted, several times. The rollups and alerts it leaves equal
 * the batch computation of the whole log, and every key was always written with the same bytes:
 * no window lost, none emitted with partial counts.
 */
import { spawn, type ChildProcess } from "node:child_process";

import { afterAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT, METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { AlertEvent, MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { AlertTracker, DEFAULT_ALERT_RULES, rollupEvents, rollupKey } from "../metrics/index.js";
import { REPO_ROOT } from "./support/cli.js";
import { sampleEvent } from "./support/events.js";
import { createTopics, services, testKafka, uniqueName } from "./support/isolation.js";

const MINUTE = 60_000_000;
const ORIGIN = 1_700_000_040 * 1_000_000 - ((1_700_000_040 * 1_000_000) % MINUTE);
const COUNT = 100_000;
const SERVICE_COUNT = 20;

describe("processor killed with SIGKILL and restarted", () => {
  const prefix = `${uniqueName("crash")}.`;
  const group = uniqueName("crash-group");
  let child: ChildProcess | undefined;

  afterAll(() => {
    child?.kill("SIGKILL");
  });

  function startProcessor(): ChildProcess {
    const started = spawn(process.execPath, ["--import", "tsx", "cli/main.ts", "processor"], {
      cwd: REPO_ROOT,
      env: {
        ...process.env,
        KAFKA_BROKERS: services().kafkaBrokers,
        SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
        MCPO_TOPIC_PREFIX: prefix,
        MCPO_PROCESSOR_GROUP: group,
        MCPO_WINDOW_MS: "60000",
        MCPO_GRACE_MS: "10000",
        MCPO_IDLE_TIMEOUT_MS: "1000",
        MCPO_CHECKPOINT_INTERVAL_MS: "300",
        MCPO_SESSION_TIMEOUT_MS: "6000",
        MCPO_METRICS_PORT: "0",
      },
      stdio: ["ignore", "ignore", "ignore"],
    });
    return started;
  }

  it("leaves exactly the rollups of an uninterrupted run", { timeout: 360_000 }, async () => {
    const admin = testKafka().admin();
    await admin.connect();
    await createTopics(admin, [{ topic: `${prefix}model-calls`, numPartitions: 3 }]);
    await admin.disconnect();
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(`${prefix}model-calls`),
    });
    // 100 000 calls over 25 minutes of event time, in time order.
    const template = sampleEvent();
    const events: ModelCallEvent[] = [];
    for (let i = 0; i < COUNT; i++) {
      const end = ORIGIN + Math.floor((i * 25 * MINUTE) / COUNT);
      events.push({
        ...template,
        event_id: `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`,
        service: `svc-${i % SERVICE_COUNT}`,
        model: i % 2 === 0 ? "gpt-4o" : "gpt-4o-mini",
        start_time: end - 50_000 - (i % 13) * 7_000,
        end_time: end,
        confidence: (i % 10) / 10,
        status: i % 17 === 0 ? "error" : "ok",
        error_type: i % 17 === 0 ? "Timeout" : null,
      });
    }
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
    await producer.disconnect();

    const expected = new Map(
      rollupEvents(events, MINUTE).map((rollup) => [rollupKey(rollup), rollup]),
    );
    // The default rules, judged per service on its closed windows in order.
    const expectedAlerts = new Map<string, AlertEvent>();
    for (let s = 0; s < SERVICE_COUNT; s++) {
      const tracker = new AlertTracker(DEFAULT_ALERT_RULES);
      const totals = [...expected.values()]
        .filter((rollup) => rollup.service === `svc-${s}` && rollup.model === null)
        .sort((a, b) => a.window_start - b.window_start);
      for (const total of totals)
        for (const alert of tracker.observe(total))
          expectedAlerts.set(`${alert.alert_id}|${alert.state}`, alert);
    }
    const alertCodec = await AvroCodec.register(ALERT_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(`${prefix}alerts`),
    });
    const rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(`${prefix}metric-rollups`),
    });

    // Read the output as it comes, across all runs.
    const versions = new Map<string, Set<string>>();
    const values = new Map<string, MetricRollup>();
    const alerts = new Map<string, AlertEvent>();
    const alertVersions = new Map<string, Set<string>>();
    const reader = testKafka().consumer({ groupId: uniqueName("reader") });
    const admin2 = testKafka().admin();
    await admin2.connect();
    await createTopics(admin2, [
      {
        topic: `${prefix}metric-rollups`,
        numPartitions: 3,
        config: { "cleanup.policy": "compact" },
      },
      { topic: `${prefix}alerts`, numPartitions: 3 },
    ]);
    await admin2.disconnect();
    await reader.connect();
    await reader.subscribe({ topic: `${prefix}metric-rollups`, fromBeginning: true });
    await reader.subscribe({ topic: `${prefix}alerts`, fromBeginning: true });
    void reader.run({
      eachMessage: async ({ topic, message }) => {
        if (topic === `${prefix}alerts`) {
          const alert = await alertCodec.decode(message.value ?? Buffer.alloc(0));
          if (!alert.ok) throw new Error(alert.error.message);
          const key = `${alert.value.alert_id}|${alert.value.state}`;
          alerts.set(key, alert.value);
          const seen = alertVersions.get(key) ?? new Set<string>();
          seen.add((message.value ?? Buffer.alloc(0)).toString("hex"));
          alertVersions.set(key, seen);
          return;
        }
        const decoded = await rollupCodec.decode(message.value ?? Buffer.alloc(0));
        if (!decoded.ok) throw new Error(decoded.error.message);
        const key = rollupKey(decoded.value);
        values.set(key, decoded.value);
        const seen = versions.get(key) ?? new Set<string>();
        seen.add((message.value ?? Buffer.alloc(0)).toString("hex"));
        versions.set(key, seen);
      },
    });

    // Kill at random points, four times, then let it finish.
    const progress: number[] = [];
    // Four kills a fifth further into the log each time, at a random moment; a fifth once only the
    // last minute's windows are still open (so the next run has little or nothing left to read,
    // and must close them from its checkpoint with an idle tick).
    for (let kill = 1; kill <= 5; kill++) {
      child = startProcessor();
      const target = kill < 5 ? (expected.size * kill) / 5 : expected.size - 2 * SERVICE_COUNT;
      const until = Date.now() + 60_000;
      while (values.size < target && Date.now() < until)
        await new Promise((resolve) => setTimeout(resolve, 20));
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 300));
      child.kill("SIGKILL");
      await new Promise((resolve) => child?.once("exit", resolve));
      progress.push(values.size);
    }
    process.stderr.write(
      `rollup keys seen after each kill: ${progress.join(", ")} of ${expected.size}\n`,
    );
    // The kills landed mid-run: some but not all windows were out before the last start.
    expect(progress.at(-1)).toBeLessThan(expected.size);
    child = startProcessor();
    const deadline = Date.now() + 240_000;
    while (
      (values.size < expected.size || alerts.size < expectedAlerts.size) &&
      Date.now() < deadline
    )
      await new Promise((resolve) => setTimeout(resolve, 500));
    await new Promise((resolve) => setTimeout(resolve, 3000));
    child.kill("SIGTERM");
    await reader.disconnect();

    expect(values.size).toBe(expected.size);
    expect(values).toEqual(expected);
    const rewritten = [...versions.values(), ...alertVersions.values()].filter(
      (set) => set.size > 1,
    ).length;
    expect(rewritten).toBe(0);
    expect(expectedAlerts.size).toBeGreaterThan(SERVICE_COUNT);
    expect(alerts).toEqual(expectedAlerts);
  });
});
