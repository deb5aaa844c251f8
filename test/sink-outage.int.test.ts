/**
 * PostgreSQL stops for real while the sink runs (a server of the test's own, `pg_ctl stop -m
 * fast`, then start): the sink keeps retrying without crashing and, once the server is back,
 * every span is there exactly once.
 */
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { ProcessorLogger } from "../processor/processor.js";
import { Sink } from "../sink/sink.js";
import { sampleEvent } from "./support/events.js";
import { createTopics, services, testKafka, uniqueName } from "./support/isolation.js";
import { startThrowawayPostgres, type ThrowawayPostgres } from "./support/throwaway-postgres.js";

const quiet: ProcessorLogger = {
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};

describe("sink during a PostgreSQL outage", () => {
  let server: ThrowawayPostgres | undefined;
  let sink: Sink | undefined;
  afterAll(async () => {
    await sink?.stop().catch(() => undefined);
    await server?.dispose();
  });

  it("pauses, retries with backoff, and loses nothing", { timeout: 180_000 }, async () => {
    server = await startThrowawayPostgres();
    const prefix = `${uniqueName("outage")}.`;
    const topic = `${prefix}model-calls`;
    const admin = testKafka().admin();
    await admin.connect();
    await createTopics(admin, [{ topic, numPartitions: 2 }]);
    await admin.disconnect();
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    const producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const send = async (from: number, to: number) => {
      const messages = [];
      for (let i = from; i < to; i++) {
        const event = sampleEvent({
          span_id: (0x2000000000000000n + BigInt(i)).toString(16),
          service: `svc-${i % 3}`,
          prompt_tokens: i,
        });
        messages.push({ key: event.service, value: codec.encode(event) });
      }
      await producer.send({ topic, acks: -1, messages });
    };
    await send(0, 1000);
    sink = new Sink({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      databaseUrl: server.url,
      topicPrefix: prefix,
      groupId: uniqueName("outage-group"),
      logger: quiet,
      retryMaxMs: 1000,
    });
    await sink.start();
    const client = () => new pg.Client({ connectionString: server?.url });
    const count = async (): Promise<{ spans: number; tokens: number }> => {
      const c = client();
      await c.connect();
      try {
        const { rows } = await c.query<{ spans: number; tokens: string }>(
          "select count(*)::int as spans, coalesce(sum(prompt_tokens), 0)::text as tokens from spans",
        );
        return { spans: rows[0]?.spans ?? 0, tokens: Number(rows[0]?.tokens ?? 0) };
      } finally {
        await c.end();
      }
    };
    const waitFor = async (spans: number): Promise<void> => {
      const deadline = Date.now() + 60_000;
      while (Date.now() < deadline) {
        const current = await count().catch(() => ({ spans: -1, tokens: 0 }));
        if (current.spans === spans) return;
        await new Promise((resolve) => setTimeout(resolve, 300));
      }
    };
    await waitFor(1000);
    expect((await count()).spans).toBe(1000);

    await server.stop();
    await send(1000, 3000);
    await new Promise((resolve) => setTimeout(resolve, 4000));
    expect(sink.stats().retries).toBeGreaterThan(0);
    await server.start();
    await waitFor(3000);
    expect(await count()).toEqual({ spans: 3000, tokens: (2999 * 3000) / 2 });
    await producer.disconnect();
  });
});
