/**
 * PostgreSQL stops for real while the sink runs (a server of the test's own, `pg_ctl stop -m
 * fast`, then start): the sink keeps retrying, with a backoff that grows to its cap, without
 * crashing and, once the server is back, every span is there exactly once and every rollup row
 * equals the brute-force oracle's.
 */
import pg from "pg";
import { afterAll, describe, expect, it, onTestFinished } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { rollupEvents, rollupKey } from "../metrics/index.js";
import type { ProcessorLogger } from "../processor/processor.js";
import { Sink } from "../sink/sink.js";
import { storedRollups } from "./support/stored-rollups.js";
import { sampleEvent } from "./support/events.js";
import { createTopics, services, testKafka, uniqueName } from "./support/isolation.js";
import { expectMatchesOracle, oracleRollups } from "./support/oracle.js";
import { startThrowawayPostgres, type ThrowawayPostgres } from "./support/throwaway-postgres.js";
import { waitFor } from "./support/wait.js";

const WINDOW = 60_000_000;
const RETRY_MAX_MS = 1000;

describe("sink during a PostgreSQL outage", () => {
  let server: ThrowawayPostgres | undefined;
  let sink: Sink | undefined;
  afterAll(async () => {
    await sink?.stop().catch(() => undefined);
    await server?.dispose();
  });

  it(
    "retries with a backoff that reaches its cap while PostgreSQL is down, then stores every span once and every rollup row as the oracle computes it",
    { timeout: 180_000 },
    async () => {
      server = await startThrowawayPostgres();
      const prefix = `${uniqueName("outage")}.`;
      const topic = `${prefix}model-calls`;
      const rollupTopic = `${prefix}metric-rollups`;
      const admin = testKafka().admin();
      await admin.connect();
      onTestFinished(() => admin.disconnect()); // also when the test fails midway (idempotent)
      await createTopics(admin, [
        { topic, numPartitions: 2 },
        { topic: rollupTopic, numPartitions: 2, config: { "cleanup.policy": "compact" } },
        { topic: `${prefix}alerts`, numPartitions: 1 },
        { topic: `${prefix}dead-letter`, numPartitions: 1 },
      ]);
      await admin.disconnect();
      const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
        registryUrl: services().schemaRegistryUrl,
        subject: valueSubject(topic),
      });
      const rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
        registryUrl: services().schemaRegistryUrl,
        subject: valueSubject(rollupTopic),
      });
      // 3000 calls of 3 services over 3 minutes.
      const events: ModelCallEvent[] = [];
      for (let i = 0; i < 3000; i++) {
        const end = 1_764_000_000_000_000 + i * 60_000;
        events.push(
          sampleEvent({
            span_id: (0x2000000000000000n + BigInt(i)).toString(16),
            service: `svc-${i % 3}`,
            model: i % 4 === 0 ? "gpt-4o-mini" : "gpt-4o",
            prompt_tokens: i,
            start_time: end - 1000 - (i % 11) * 5000,
            end_time: end,
            retries: i % 7 === 0 ? 2 : 0,
            confidence: (i % 10) / 10,
            status: i % 9 === 0 ? "error" : "ok",
          }),
        );
      }
      const producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
      await producer.connect();
      onTestFinished(() => producer.disconnect());
      const send = async (from: number, to: number): Promise<void> => {
        await producer.send({
          topic,
          acks: -1,
          messages: events
            .slice(from, to)
            .map((event) => ({ key: event.service, value: codec.encode(event) })),
        });
      };
      await send(0, 1000);

      const warnings: { msg: string; delayMs?: number }[] = [];
      const logger: ProcessorLogger = {
        info: () => undefined,
        warn: (msg, fields) => {
          warnings.push({
            msg,
            delayMs: typeof fields?.delayMs === "number" ? fields.delayMs : undefined,
          });
        },
        error: () => undefined,
      };
      sink = new Sink({
        brokers: services().kafkaBrokers,
        schemaRegistryUrl: services().schemaRegistryUrl,
        databaseUrl: server.url,
        topicPrefix: prefix,
        groupId: uniqueName("outage-group"),
        logger,
        retryInitialMs: 200,
        retryMaxMs: RETRY_MAX_MS,
      });
      await sink.start();
      const current = sink;
      const count = async (): Promise<{ spans: number; distinct: number; tokens: number }> => {
        const c = new pg.Client({ connectionString: server?.url });
        await c.connect();
        try {
          const { rows } = await c.query<{ spans: number; distinct: number; tokens: string }>(
            `select count(*)::int as spans, count(distinct span_id)::int as distinct,
                    coalesce(sum(prompt_tokens), 0)::text as tokens from spans`,
          );
          return {
            spans: rows[0]?.spans ?? 0,
            distinct: rows[0]?.distinct ?? 0,
            tokens: Number(rows[0]?.tokens ?? 0),
          };
        } finally {
          await c.end();
        }
      };
      await waitFor("the first 1000 spans in PostgreSQL", count, (seen) => seen.spans >= 1000, {
        timeoutMs: 60_000,
      });
      expect(current.stats().retries, "retries before the outage").toBe(0);

      await server.stop();
      // During the outage: the rest of the calls, and every window's rollup.
      await send(1000, 3000);
      const rollups = rollupEvents(events, WINDOW);
      await producer.send({
        topic: rollupTopic,
        acks: -1,
        messages: rollups.map((r) => ({ key: rollupKey(r), value: rollupCodec.encode(r) })),
      });
      await producer.disconnect();
      const retrying = (): number[] =>
        warnings.filter((w) => w.msg === "write failed; retrying").map((w) => w.delayMs ?? -1);
      const delays = await waitFor(
        `the sink to retry with its backoff grown to its cap (${RETRY_MAX_MS} ms) while PostgreSQL is down`,
        retrying,
        (seen) => seen.includes(RETRY_MAX_MS),
        { timeoutMs: 60_000 },
      );
      // Each failing batch starts at the first delay and doubles up to the cap.
      expect(delays, "backoff delays logged").toEqual(expect.arrayContaining([200, 400, 800]));
      expect(Math.max(...delays), "no delay above the cap").toBe(RETRY_MAX_MS);
      expect(current.stats().retries, "retries counted").toBeGreaterThanOrEqual(delays.length);

      await server.start();
      const url = server.url;
      const final = await waitFor(
        "all 3000 spans and every rollup row in PostgreSQL after the restart",
        async () => {
          const c = new pg.Client({ connectionString: url });
          await c.connect();
          try {
            const rollupRows = (
              await c.query<{ n: number }>("select count(*)::int as n from metric_rollups")
            ).rows[0]?.n;
            return { ...(await count()), rollupRows };
          } finally {
            await c.end();
          }
        },
        (seen) => seen.spans >= 3000 && seen.rollupRows === rollups.length,
        { timeoutMs: 90_000, intervalMs: 300 },
      );
      expect(final, "spans: count, distinct ids, token sum; rollup rows").toEqual({
        spans: 3000,
        distinct: 3000,
        tokens: (2999 * 3000) / 2,
        rollupRows: rollups.length,
      });
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      try {
        expectMatchesOracle(
          await storedRollups(c),
          oracleRollups(events, WINDOW),
          "metric_rollups rows",
        );
      } finally {
        await c.end();
      }
    },
  );
});
