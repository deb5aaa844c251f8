/**
 * The sink as a child process (the CLI) over 100 000 events and their rollups, killed with SIGKILL
 * four times, each time while it is writing (spans in PostgreSQL and the run's own metrics are
 * read just before the kill), and restarted: at the end every span is in PostgreSQL exactly once
 * (count, ids and a checksum), the offsets stored with the rows are each partition's end, and the
 * rollup rows, all counts and all rate columns, equal the brute-force oracle's.
 *
 * The kill points (span counts and delays) are random, from a logged seed: replay with `MCPO_TEST_SEED=<seed>`. Each run's
 * output is in a file under the OS temp folder, printed when the test fails.
 */
import pg from "pg";
import { describe, expect, it, onTestFinished } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { rollupEvents, rollupKey } from "../metrics/index.js";
import { CliWorkers, type CliWorker } from "./support/crash.js";
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
import { seededRandom } from "./support/seed.js";
import { pause } from "./support/wait.js";

const COUNT = 100_000;
const KILLS = 4;
const WINDOW = 60_000_000;
const GROUP = "crash-sink";

/** 100 000 calls of 10 services over about 17 minutes, varied in what the rollups count. */
function buildEvents(): ModelCallEvent[] {
  const template = sampleEvent();
  const events: ModelCallEvent[] = [];
  for (let i = 0; i < COUNT; i++) {
    const end = 1_764_000_000_000_000 + i * 10_000;
    const tokens = i % 23 === 0 ? "none" : i % 5 === 0 ? "estimated" : "reported";
    events.push({
      ...template,
      event_id: `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`,
      span_id: (0x3000000000000000n + BigInt(i)).toString(16),
      service: `svc-${i % 10}`,
      model: i % 3 === 0 ? "gpt-4o-mini" : "gpt-4o",
      start_time: end - 1000 - (i % 17) * 3000,
      end_time: end,
      token_source: tokens,
      prompt_tokens: tokens === "none" ? null : i % 1000,
      completion_tokens: tokens === "none" ? null : i % 61,
      cost_nano_usd: i % 29 === 0 ? null : 1_000_000 + (i % 777),
      retries: i % 11 === 0 ? 1 + (i % 3) : 0,
      confidence: i % 7 === 0 ? null : (i % 10) / 10,
      shadow_agreement: i % 4 === 0 ? null : i % 9 !== 0,
      status: i % 13 === 0 ? "error" : "ok",
      error_type: i % 13 === 0 ? "Timeout" : null,
    });
  }
  return events;
}

describe("sink killed with SIGKILL and restarted", () => {
  const database = useFreshDatabase("mcpo_sinkcrash");

  it(
    "each of 4 kills lands mid-write and progress advances between them; afterwards each span is stored exactly once, the stored offsets are the partitions' ends, and every rollup row (counts and rate columns) equals the oracle's",
    { timeout: 360_000 },
    async () => {
      const workers = CliWorkers.forCurrentTest("sink-crash");
      const random = seededRandom("sink-crash kill points");
      const prefix = `${uniqueName("sinkcrash")}.`;
      const topics = {
        events: `${prefix}model-calls`,
        rollups: `${prefix}metric-rollups`,
        alerts: `${prefix}alerts`,
      };
      const admin = testKafka().admin();
      await admin.connect();
      onTestFinished(() => admin.disconnect()); // also when the test fails midway (idempotent)
      await createTopics(admin, [
        { topic: topics.events, numPartitions: 3 },
        { topic: topics.rollups, numPartitions: 2, config: { "cleanup.policy": "compact" } },
        { topic: topics.alerts, numPartitions: 1 },
        { topic: `${prefix}dead-letter`, numPartitions: 1 },
      ]);
      const url = services().schemaRegistryUrl;
      const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
        registryUrl: url,
        subject: valueSubject(topics.events),
      });
      const rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
        registryUrl: url,
        subject: valueSubject(topics.rollups),
      });
      const events = buildEvents();
      // The rollups are the sink's input here (as the processor would publish them); what the
      // sink stores is compared with the oracle below.
      const rollups = rollupEvents(events, WINDOW);
      const producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
      await producer.connect();
      onTestFinished(() => producer.disconnect());
      for (let i = 0; i < COUNT; i += 5000)
        await producer.send({
          topic: topics.events,
          acks: -1,
          messages: events
            .slice(i, i + 5000)
            .map((event) => ({ key: event.service, value: codec.encode(event) })),
        });
      await producer.send({
        topic: topics.rollups,
        acks: -1,
        messages: rollups.map((r) => ({ key: rollupKey(r), value: rollupCodec.encode(r) })),
      });
      await producer.disconnect();
      const ends = new Map<string, string>();
      for (const topic of [topics.events, topics.rollups, topics.alerts])
        for (const { partition, high } of await admin.fetchTopicOffsets(topic))
          if (high !== "0") ends.set(`${topic}|${partition}`, high);
      await admin.disconnect();

      const client = new pg.Client({ connectionString: database.current.url });
      await client.connect();
      try {
        // Before the first run has migrated, there is no table yet: only that counts as 0.
        const spans = async (): Promise<number> => {
          try {
            const { rows } = await client.query<{ n: number }>(
              "select count(*)::int as n from spans",
            );
            return rows[0]?.n ?? 0;
          } catch (error) {
            if ((error as { code?: string }).code === "42P01") return 0;
            throw error;
          }
        };
        const storedOffsets = async (): Promise<Map<string, string>> => {
          try {
            const { rows } = await client.query<{ key: string; next: string }>(
              "select topic || '|' || partition as key, next_offset::text as next from consumed_offsets where consumer_group = $1",
              [GROUP],
            );
            return new Map(rows.map((row) => [row.key, row.next]));
          } catch (error) {
            if ((error as { code?: string }).code === "42P01") return new Map();
            throw error;
          }
        };
        const start = (): CliWorker =>
          workers.start(["sink"], {
            ...process.env,
            KAFKA_BROKERS: services().kafkaBrokers,
            SCHEMA_REGISTRY_URL: url,
            DATABASE_URL: database.current.url,
            MCPO_TOPIC_PREFIX: prefix,
            MCPO_SINK_GROUP: GROUP,
            MCPO_SESSION_TIMEOUT_MS: "6000",
            MCPO_METRICS_PORT: "0",
            LOG_LEVEL: "info",
          });
        const insertedByRun = (child: CliWorker): Promise<number> =>
          child.metric("mcpo_sink_rows_total", { table: "spans", outcome: "inserted" });

        const kills: {
          target: number;
          delayMs: number;
          progress: number;
          inserted: number;
          runMs: number;
        }[] = [];
        for (let kill = 1; kill <= KILLS; kill++) {
          const child = start();
          const started = Date.now();
          // A random count in the k-th fifth's second half, past the kill before.
          const target = Math.max(
            random.int((COUNT * (2 * kill - 1)) / 10, (COUNT * kill) / 5),
            (kills.at(-1)?.progress ?? 0) + 1,
          );
          await child.metricsUrl();
          await child.waitFor(
            `${target} of ${COUNT} spans in PostgreSQL, some inserted by this run`,
            async () => ({ spans: await spans(), inserted: await insertedByRun(child) }),
            (seen) => seen.spans >= target && seen.inserted > 0,
            { timeoutMs: 90_000, intervalMs: 50 },
          );
          const delayMs = random.int(0, 300);
          await pause(delayMs); // the random kill point, not a wait for an outcome
          // Progress just before the kill: spans stored, and spans this run inserted.
          const inserted = await insertedByRun(child);
          const progress = await spans();
          const exit = await child.kill("SIGKILL");
          expect(exit.signal, `run ${kill} ended by the SIGKILL`).toBe("SIGKILL");
          kills.push({ target, delayMs, progress, inserted, runMs: Date.now() - started });
        }
        process.stderr.write(
          `kills (spans stored of ${COUNT}, inserted by the run, delay): ${kills
            .map((k) => `${k.progress} (${k.inserted}, +${k.delayMs} ms, run ${k.runMs} ms)`)
            .join(", ")}\n`,
        );
        kills.forEach((k, index) => {
          const label = `kill ${index + 1} (${JSON.stringify(k)})`;
          expect(k.progress, `${label}: some spans were stored`).toBeGreaterThan(0);
          expect(k.progress, `${label}: not every span was stored`).toBeLessThan(COUNT);
          expect(k.inserted, `${label}: the killed run had inserted spans`).toBeGreaterThan(0);
          if (index > 0)
            expect(k.progress, `${label}: more spans than at the kill before`).toBeGreaterThan(
              kills[index - 1]?.progress ?? 0,
            );
        });

        // The last run: until the offsets stored in PostgreSQL reach every partition's end (what
        // is missing then is lost, not late).
        const last = start();
        const lastStarted = Date.now();
        await last.waitFor(
          "the offsets stored in PostgreSQL to reach every partition's end",
          storedOffsets,
          (stored) => [...ends].every(([key, end]) => BigInt(stored.get(key) ?? -1) >= BigInt(end)),
          { timeoutMs: 180_000, intervalMs: 300 },
        );
        process.stderr.write(`last run: caught up after ${Date.now() - lastStarted} ms\n`);
        // Caught up: stop it (its graceful stop is another test's subject) so nothing changes below.
        await last.kill("SIGKILL");
        expect(await storedOffsets(), "stored offsets").toEqual(ends);

        const { rows } = await client.query<{
          n: number;
          distinct_ids: number;
          distinct_sources: number;
          tokens: string;
          min_us: string;
        }>(
          `select count(*)::int as n, count(distinct event_id)::int as distinct_ids,
                  count(distinct (source_partition, source_offset))::int as distinct_sources,
                  sum(prompt_tokens)::text as tokens,
                  min((extract(epoch from end_time) * 1000000)::bigint)::text as min_us from spans`,
        );
        expect(rows[0], "spans: count, distinct ids and sources, token sum, first end").toEqual({
          n: COUNT,
          distinct_ids: COUNT,
          distinct_sources: COUNT,
          tokens: String(events.reduce((sum, event) => sum + (event.prompt_tokens ?? 0), 0)),
          min_us: String(events[0]?.end_time),
        });
        expectMatchesOracle(
          await storedRollups(client),
          oracleRollups(events, WINDOW),
          "metric_rollups rows",
        );
      } finally {
        await client.end();
      }
    },
  );
});
