/**
 * Kill-and-restart: the processor runs as a child process (the CLI) over 100 000 events and is
 * killed with SIGKILL five times, each while it is working: four when its own watermark has
 * passed a random minute of the log's event time (further each time), one once it has read
 * everything but still holds the last windows open. Each kill is shown to land mid-work: the run had read records and held
 * open windows just before it (its metrics endpoint), and the windows on the output topic as it
 * stood at the kill are more than at the kill before and fewer than all. After a last run, the
 * rollups and alerts equal the brute-force oracle's computation of the whole log (and the
 * metrics core's batch computation, bit for bit), and every key was always written with the same
 * bytes: no window lost, none emitted with partial counts, no alert lost, repeated or changed.
 *
 * The kill points are random, from a logged seed: replay with `MCPO_TEST_SEED=<seed>`. Each run's
 * output is in a file under the OS temp folder, printed when the test fails.
 */
import { describe, expect, it, onTestFinished } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT, METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { AlertEvent, MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { rollupEvents, rollupKey } from "../metrics/index.js";
import { CliWorkers, metricByLabel, metricSeries, type CliWorker } from "./support/crash.js";
import { sampleEvent } from "./support/events.js";
import { createTopics, services, testKafka, uniqueName } from "./support/isolation.js";
import {
  ORACLE_DEFAULT_RULES,
  oracleAlerts,
  oracleRollups,
  expectMatchesOracle,
} from "./support/oracle.js";
import { seededRandom } from "./support/seed.js";
import { waitFor } from "./support/wait.js";

const MINUTE = 60_000_000;
const ORIGIN = 1_700_000_040 * 1_000_000 - ((1_700_000_040 * 1_000_000) % MINUTE);
const COUNT = 100_000;
const MINUTES = 25;
const SERVICE_COUNT = 20;
const KILLS = 5;

const README_RULES = ORACLE_DEFAULT_RULES;

/**
 * 100 000 calls over 25 minutes of event time, in time order, 20 services (one model each).
 * Errors and shadow disagreements come and go by the minute, so alerts fire and resolve many
 * times; retries, token sources, unknown costs and uncounted tool spans vary by call.
 */
function buildEvents(): ModelCallEvent[] {
  const template = sampleEvent();
  const events: ModelCallEvent[] = [];
  for (let i = 0; i < COUNT; i++) {
    const minute = Math.floor((i * MINUTES) / COUNT);
    const end = ORIGIN + Math.floor((i * MINUTES * MINUTE) / COUNT);
    const error = (minute % 4 === 1 || minute % 4 === 2) && i % 9 === 0;
    const tool = i % 31 === 0;
    const tokens = i % 23 === 0 ? "none" : i % 5 === 0 ? "estimated" : "reported";
    events.push({
      ...template,
      event_id: `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`,
      kind: tool ? "tool_call" : "model_call",
      service: `svc-${i % SERVICE_COUNT}`,
      model: tool ? null : i % 2 === 0 ? "gpt-4o" : "gpt-4o-mini",
      tool_name: tool ? "lookup" : null,
      start_time: end - 50_000 - (i % 13) * 7_000,
      end_time: end,
      token_source: tokens,
      prompt_tokens: tokens === "none" ? null : 100 + (i % 500),
      completion_tokens: tokens === "none" ? null : i % 97,
      cost_nano_usd: i % 29 === 0 ? null : 1_000_000 + (i % 1000),
      retries: i % 11 === 0 ? 1 + (i % 4) : 0,
      fallback_used: i % 19 === 0,
      confidence: (i % 10) / 10,
      shadow_agreement: minute % 5 === 3 ? i % 6 !== 0 : i % 3 === 0 ? null : true,
      status: error ? "error" : "ok",
      error_type: error ? "Timeout" : null,
    });
  }
  return events;
}

describe("processor killed with SIGKILL and restarted", () => {
  const prefix = `${uniqueName("crash")}.`;
  const group = uniqueName("crash-group");

  it(
    "each of 5 kills lands mid-output and progress advances between them; afterwards the rollups equal the oracle's (and the core's bit for bit), the alert transitions equal the oracle's, and no key is ever written with different bytes",
    { timeout: 360_000 },
    async () => {
      const workers = CliWorkers.forCurrentTest("processor-crash");
      const random = seededRandom("processor-crash kill points");
      const startProcessor = (): CliWorker =>
        workers.start(["processor"], {
          ...process.env,
          KAFKA_BROKERS: services().kafkaBrokers,
          SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
          MCPO_TOPIC_PREFIX: prefix,
          MCPO_PROCESSOR_GROUP: group,
          MCPO_WINDOW_MS: "60000",
          MCPO_GRACE_MS: "10000",
          // The fifth kill lands in the idle time before a tick closes the last windows: long
          // enough for a poll (every 50 ms) to see that state.
          MCPO_IDLE_TIMEOUT_MS: "2000",
          MCPO_CHECKPOINT_INTERVAL_MS: "300",
          MCPO_SESSION_TIMEOUT_MS: "6000",
          MCPO_METRICS_PORT: "0",
          LOG_LEVEL: "info",
        });

      const admin = testKafka().admin();
      await admin.connect();
      onTestFinished(() => admin.disconnect()); // also when the test fails midway (idempotent)
      const inputTopic = `${prefix}model-calls`;
      const outputTopics = [`${prefix}metric-rollups`, `${prefix}alerts`];
      await createTopics(admin, [
        { topic: inputTopic, numPartitions: 3 },
        {
          topic: `${prefix}metric-rollups`,
          numPartitions: 3,
          config: { "cleanup.policy": "compact" },
        },
        { topic: `${prefix}alerts`, numPartitions: 3 },
      ]);
      const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
        registryUrl: services().schemaRegistryUrl,
        subject: valueSubject(inputTopic),
      });
      const events = buildEvents();
      const producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
      await producer.connect();
      for (let i = 0; i < COUNT; i += 5000)
        await producer.send({
          topic: inputTopic,
          acks: -1,
          messages: events
            .slice(i, i + 5000)
            .map((event) => ({ key: event.service, value: codec.encode(event) })),
        });
      await producer.disconnect();

      // Expected values: the oracle (brute force, apart from metrics/), and the alert transitions
      // it derives with the README's default rules.
      const oracle = oracleRollups(events, MINUTE);
      const oracleTransitions = oracleAlerts(oracle.values(), README_RULES);
      const transitionKey = (t: {
        service: string;
        rule: string;
        state: string;
        windowStart: number;
      }): string => `${t.service}|${t.rule}|${t.state}|${t.windowStart}`;
      const total = oracle.size;
      // The scenario has alerts that fire and resolve (what a lost tracker state would break).
      expect(
        oracleTransitions.filter((t) => t.state === "resolved").length,
        "resolved transitions in the scenario",
      ).toBeGreaterThan(2 * SERVICE_COUNT);

      const alertCodec = await AvroCodec.register(ALERT_EVENT, {
        registryUrl: services().schemaRegistryUrl,
        subject: valueSubject(`${prefix}alerts`),
      });
      const rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
        registryUrl: services().schemaRegistryUrl,
        subject: valueSubject(`${prefix}metric-rollups`),
      });

      // Read the output as it comes, across all runs: every version of every key.
      const versions = new Map<string, Set<string>>();
      const values = new Map<string, MetricRollup>();
      const alerts = new Map<string, AlertEvent>();
      const alertVersions = new Map<string, Set<string>>();
      const positions = new Map<string, bigint>();
      /** Where each rollup key was first written (partition and offset of the metric-rollups topic). */
      const firstSeen = new Map<string, { partition: number; offset: bigint }>();
      const reader = testKafka().consumer({ groupId: uniqueName("reader") });
      await reader.connect();
      onTestFinished(() => reader.disconnect());
      await reader.subscribe({ topics: outputTopics, fromBeginning: true });
      const remember = (all: Map<string, Set<string>>, key: string, value: Buffer): void => {
        const seen = all.get(key) ?? new Set<string>();
        seen.add(value.toString("hex"));
        all.set(key, seen);
      };
      await reader.run({
        eachMessage: async ({ topic, partition, message }) => {
          const value = message.value ?? Buffer.alloc(0);
          if (topic === `${prefix}alerts`) {
            const alert = await alertCodec.decode(value);
            if (!alert.ok) throw new Error(alert.error.message);
            const key = transitionKey({
              service: alert.value.service,
              rule: alert.value.rule,
              state: alert.value.state,
              windowStart: alert.value.window_start,
            });
            alerts.set(key, alert.value);
            remember(alertVersions, key, value);
          } else {
            const decoded = await rollupCodec.decode(value);
            if (!decoded.ok) throw new Error(decoded.error.message);
            const key = rollupKey(decoded.value);
            if (!firstSeen.has(key))
              firstSeen.set(key, { partition, offset: BigInt(message.offset) });
            values.set(key, decoded.value);
            remember(versions, key, value);
          }
          positions.set(`${topic}|${partition}`, BigInt(message.offset) + 1n);
        },
      });

      const endsOf = async (topic: string): Promise<Map<number, bigint>> =>
        new Map(
          (await admin.fetchTopicOffsets(topic)).map(({ partition, high }) => [
            partition,
            BigInt(high),
          ]),
        );

      // Where each input partition stands in a run, from one read of its metrics: its watermark,
      // open windows and lag after the run's last batch there or, with no batch yet, the offset
      // the run restored it at (its log); at its end when its lag is 0 or it was restored at the
      // end (`inputEnds`, read when the run started: only its own idle ticks come after).
      interface RunState {
        readonly partitions: {
          partition: number;
          watermark: number | undefined;
          atEnd: boolean;
        }[];
        readonly openWindows: number;
        readonly records: number;
      }
      const stateOf = async (
        child: CliWorker,
        inputEnds: Map<number, bigint>,
      ): Promise<RunState> => {
        const text = await child.metricsText();
        const watermarks = metricByLabel(text, "mcpo_processor_watermark_seconds", "partition");
        const lags = metricByLabel(text, "mcpo_processor_consumer_lag", "partition");
        const open = metricByLabel(text, "mcpo_processor_open_windows", "partition");
        const restored = new Map(
          child
            .logRecords()
            .filter((r) => r.msg === "partition restored")
            .map((r) => [String(r.partition), String(r.nextOffset)]),
        );
        return {
          partitions: [...inputEnds].map(([partition, end]) => {
            const key = String(partition);
            const lag = lags.get(key);
            const from = restored.get(key);
            const atEnd =
              lag !== undefined
                ? lag === 0
                : from !== undefined && /^\d+$/.test(from) && BigInt(from) >= end;
            return { partition, watermark: watermarks.get(key), atEnd };
          }),
          openWindows: [...open.values()].reduce((sum, value) => sum + value, 0),
          records: metricSeries(text, "mcpo_processor_records_total")[0] ?? 0,
        };
      };

      // Four kills at random points of event time: when the run's watermark has passed a
      // random minute in 2–4, 6–8, 10–12 and 14–16 of the 25 on every partition not yet read to
      // its end, and a minute past where the run before was killed there (so each run closes
      // windows the one before had not: progress); a fifth once the run has read every
      // partition to its end with the last windows still open (so the next run has nothing left
      // to read, and must close them from its checkpoint with an idle tick). Right after each
      // kill, the output topic's ends: what the killed run had written.
      const kills: {
        atMinute: number | "end";
        state: RunState;
        ends: Map<number, bigint>;
        runMs: number;
      }[] = [];
      for (let kill = 1; kill <= KILLS; kill++) {
        const child = startProcessor();
        const started = Date.now();
        await child.metricsUrl();
        const inputEnds = await endsOf(inputTopic);
        const before = new Map(
          (kills.at(-1)?.state.partitions ?? []).map((p) => [p.partition, p.watermark ?? 0]),
        );
        const advanced = (p: RunState["partitions"][number], from: number): boolean =>
          p.watermark !== undefined &&
          p.watermark >= Math.max(from, (before.get(p.partition) ?? 0) + MINUTE / 1e6);
        const atMinute = kill < KILLS ? random.int(4 * kill - 2, 4 * kill) : ("end" as const);
        const state =
          atMinute === "end"
            ? await child.waitFor(
                "this run to have read every partition to its end (a minute past the last kill on one), with windows still open",
                () => stateOf(child, inputEnds),
                (seen) =>
                  seen.partitions.every((p) => p.atEnd) &&
                  seen.partitions.some((p) => advanced(p, 0)) &&
                  seen.openWindows > 0,
                { timeoutMs: 90_000, intervalMs: 50 },
              )
            : await child.waitFor(
                `this run's watermark past minute ${atMinute} (and a minute past the last kill) on every partition not at its end`,
                () => stateOf(child, inputEnds),
                (seen) => {
                  const from = (ORIGIN + atMinute * MINUTE) / 1e6;
                  return (
                    seen.partitions.some((p) => advanced(p, from)) &&
                    seen.partitions.every((p) => p.atEnd || advanced(p, from))
                  );
                },
                { timeoutMs: 90_000, intervalMs: 50 },
              );
        const exit = await child.kill("SIGKILL");
        expect(exit.signal, `run ${kill} ended by the SIGKILL`).toBe("SIGKILL");
        kills.push({
          atMinute,
          state,
          ends: await endsOf(`${prefix}metric-rollups`),
          runMs: Date.now() - started,
        });
      }

      const last = startProcessor();
      const lastStarted = Date.now();
      await last.metricsUrl();
      // Until every window and transition is out. Should some never come, the comparisons below
      // say which (and what else is wrong) before this wait's own failure is reported.
      const incomplete = await last
        .waitFor(
          `all ${total} rollup keys and ${oracleTransitions.length} alert transitions on the output topics`,
          () => ({ rollups: values.size, alerts: alerts.size }),
          (seen) => seen.rollups >= total && seen.alerts >= oracleTransitions.length,
          { timeoutMs: 120_000, intervalMs: 200 },
        )
        .then(
          () => undefined,
          (error: unknown) => (error instanceof Error ? error : new Error(String(error))),
        );
      if (incomplete !== undefined && last.exit) throw incomplete;
      const lastMs = Date.now() - lastStarted;
      // Nothing is left to emit; everything written so far is read before judging it.
      await last.kill("SIGKILL");
      const ends = new Map<string, bigint>();
      for (const topic of outputTopics)
        for (const [partition, end] of await endsOf(topic)) ends.set(`${topic}|${partition}`, end);
      await admin.disconnect();
      await waitFor(
        "the reader to reach the output topics' ends",
        () =>
          [...ends]
            .filter(([key, end]) => (positions.get(key) ?? 0n) < end)
            .map(([key, end]) => `${key} at ${positions.get(key) ?? 0n} of ${end}`),
        (behind) => behind.length === 0,
        { timeoutMs: 60_000 },
      );
      await reader.disconnect();

      // Each kill's progress: the keys first written before the output's ends at that kill.
      const progress = kills.map(
        (k) =>
          [...firstSeen.values()].filter(
            ({ partition, offset }) => offset < (k.ends.get(partition) ?? 0n),
          ).length,
      );
      process.stderr.write(
        `kills (rollup keys out of ${total}; kill point, records read and windows open in the run): ${kills
          .map(
            (k, index) =>
              `${progress[index]} (minute ${k.atMinute}, ${k.state.records} records, ${k.state.openWindows} open, run ${k.runMs} ms)`,
          )
          .join(", ")}; last run ${lastMs} ms\n`,
      );
      expectMatchesOracle(
        [...values.values()].map((rollup) => ({
          service: rollup.service,
          model: rollup.model,
          windowStart: rollup.window_start,
          counts: rollup.counts,
          rates: rollup.rates,
        })),
        oracle,
        "rollups on the topic",
      );
      // Bit for bit with the metrics core's batch computation too (the sketches included).
      expect(values).toEqual(
        new Map(rollupEvents(events, MINUTE).map((rollup) => [rollupKey(rollup), rollup])),
      );
      const rewritten = [...versions, ...alertVersions]
        .filter(([, set]) => set.size > 1)
        .map(([key]) => key);
      expect(rewritten, "keys written with different bytes").toEqual([]);

      const byKey = <T extends { key: string }>(list: T[]): T[] =>
        list.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      const actualTransitions = byKey(
        [...alerts.values()].map((alert) => ({
          key: transitionKey({ ...alert, windowStart: alert.window_start }),
          firedWindowStart: alert.fired_window_start,
          samples: alert.sample_count,
          observed: alert.observed_value,
        })),
      );
      const expectedTransitions = byKey(
        oracleTransitions.map((t) => ({
          key: transitionKey(t),
          firedWindowStart: t.firedWindowStart,
          samples: t.samples,
          observed: t.observed,
        })),
      );
      expect(
        actualTransitions.map(({ observed: _observed, ...rest }) => rest),
        "alert transitions on the topic (service, rule, state, window, fired window, samples)",
      ).toEqual(expectedTransitions.map(({ observed: _observed, ...rest }) => rest));
      actualTransitions.forEach((actual, index) => {
        const observed = expectedTransitions[index]?.observed ?? null;
        if (observed === null) expect(actual.observed, `${actual.key} observed`).toBeNull();
        else expect(actual.observed, `${actual.key} observed`).toBeCloseTo(observed, 12);
      });
      // An incident's firing and resolving transitions share one id; incidents never share one.
      const incidents = new Map<string, string>();
      for (const alert of alerts.values()) {
        const incident = `${alert.service}|${alert.rule}|${alert.fired_window_start}`;
        expect(incidents.get(incident) ?? alert.alert_id, `id of incident ${incident}`).toBe(
          alert.alert_id,
        );
        incidents.set(incident, alert.alert_id);
      }
      expect(new Set(incidents.values()).size, "distinct incident ids").toBe(incidents.size);
      // The kills landed mid-work (checked after the output, which says more when both fail).
      kills.forEach((k, index) => {
        const label = `kill ${index + 1} (${progress[index]} keys out, ${k.state.records} records read, ${k.state.openWindows} windows open)`;
        expect(k.state.records, `${label}: the killed run had read records`).toBeGreaterThan(0);
        expect(k.state.openWindows, `${label}: the killed run held open windows`).toBeGreaterThan(
          0,
        );
        expect(progress[index], `${label}: some windows were out`).toBeGreaterThan(0);
        expect(progress[index], `${label}: not every window was out`).toBeLessThan(total);
        if (index > 0)
          expect(
            progress[index],
            `${label}: more windows out than at the kill before`,
          ).toBeGreaterThan(progress[index - 1] ?? 0);
      });
      if (incomplete !== undefined) throw incomplete;
    },
  );
});
