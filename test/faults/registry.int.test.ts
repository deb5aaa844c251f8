/**
 * The schema registry answers "no schema with this id" for a while, as a registry that restarts
 * does until it has loaded its schemas. Injected for real in front of the real registry: an HTTP
 * proxy that passes every request through, except that while the fault lasts it answers 404 to
 * schema-by-id lookups. A decoder must take that for a registry not ready yet — retry, never
 * cache it — and dead-letter only ids still unknown after its grace; the processor must lose no
 * event to it.
 */
import { createServer, request, type Server } from "node:http";

import type { Admin, Producer } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { defineContract, MODEL_CALL_EVENT } from "../../avro/contracts.js";
import { MODEL_CALL_EVENT_SCHEMA, type ModelCallEvent } from "../../avro/generated.js";
import { StreamProcessor } from "../../processor/processor.js";
import { sampleEvent } from "../support/events.js";
import {
  createTopics,
  quietLogger,
  services,
  testKafka,
  uniqueName,
} from "../support/isolation.js";
import { waitFor } from "../support/wait.js";

type Field = { name: string; type: unknown; default?: unknown };
/** A newer writer of the contract: one more optional field (so its schema id is a new one). */
const V2 = defineContract<ModelCallEvent & { readonly reasoning_tokens: number | null }>({
  ...MODEL_CALL_EVENT_SCHEMA,
  fields: [
    ...(MODEL_CALL_EVENT_SCHEMA as { fields: Field[] }).fields,
    { name: "reasoning_tokens", type: ["null", "long"], default: null },
  ],
});

/** A pass-through proxy to the registry that answers 404 to schema-by-id lookups while `faulty`. */
async function registryProxy(): Promise<{
  url: string;
  faulty: boolean;
  notFound: number;
  close(): Promise<void>;
}> {
  const upstream = new URL(services().schemaRegistryUrl);
  const state = { faulty: false, notFound: 0 };
  const server: Server = createServer((incoming, outgoing) => {
    if (state.faulty && /\/schemas\/ids\/\d+/.test(incoming.url ?? "")) {
      state.notFound++;
      outgoing
        .writeHead(404, { "content-type": "application/vnd.schemaregistry.v1+json" })
        .end(JSON.stringify({ error_code: 40403, message: "Schema not found" }));
      return;
    }
    const forwarded = request(
      {
        host: upstream.hostname,
        port: upstream.port,
        path: incoming.url,
        method: incoming.method,
        headers: { ...incoming.headers, host: upstream.host },
      },
      (answer) => {
        outgoing.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(outgoing);
      },
    );
    forwarded.on("error", () => outgoing.writeHead(502).end());
    incoming.pipe(forwarded);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}${upstream.pathname}`,
    get faulty() {
      return state.faulty;
    },
    set faulty(value: boolean) {
      state.faulty = value;
    },
    get notFound() {
      return state.notFound;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => {
          resolve();
        });
        server.closeAllConnections();
      }),
  };
}

describe("the registry answers 'no schema with this id' for a while", () => {
  let proxy: Awaited<ReturnType<typeof registryProxy>>;
  let admin: Admin;
  let producer: Producer;
  const processors: StreamProcessor[] = [];

  beforeAll(async () => {
    proxy = await registryProxy();
    admin = testKafka().admin();
    await admin.connect();
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
  });

  afterAll(async () => {
    await Promise.allSettled(processors.map((processor) => processor.stop()));
    await producer.disconnect();
    await admin.disconnect();
    await proxy.close();
  });

  it("a decoder retries within its grace, never caches the answer, and reads the record once the registry has it", async () => {
    const subject = valueSubject(uniqueName("reg404"));
    const writer = await AvroCodec.register(V2, {
      registryUrl: services().schemaRegistryUrl,
      subject,
    });
    const reader = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: proxy.url,
      subject,
      unknownIdGraceMs: 10_000,
    });
    const record = writer.encode({ ...sampleEvent(), reasoning_tokens: 42 });

    proxy.faulty = true;
    const during = await reader.decode(record);
    expect(during).toMatchObject({
      ok: false,
      error: { code: "REGISTRY_UNAVAILABLE", retriable: true, schemaId: writer.schemaId },
    });
    expect(proxy.notFound).toBeGreaterThan(0);

    proxy.faulty = false;
    const after = await reader.decode(record);
    expect(after).toMatchObject({ ok: true, schemaId: writer.schemaId });
  });

  it("past the grace an id still unknown is UNKNOWN_SCHEMA_ID, and asked again later, not for good", async () => {
    const subject = valueSubject(uniqueName("reg404-grace"));
    const writer = await AvroCodec.register(V2, {
      registryUrl: services().schemaRegistryUrl,
      subject,
    });
    const reader = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: proxy.url,
      subject,
      unknownIdGraceMs: 0,
    });
    const record = writer.encode({ ...sampleEvent(), reasoning_tokens: 7 });
    proxy.faulty = true;
    expect(await reader.decode(record)).toMatchObject({
      ok: false,
      error: { code: "UNKNOWN_SCHEMA_ID", retriable: false },
    });
    proxy.faulty = false;
    await waitFor(
      "the decoder to ask the registry again and read the record",
      async () => (await reader.decode(record)).ok,
      (ok) => ok,
      { timeoutMs: 20_000, intervalMs: 500 },
    );
  });

  it("the processor loses no event to it: records wait while the registry says 'not found', none is dead-lettered", async () => {
    const prefix = `${uniqueName("reg404-proc")}.`;
    const topic = `${prefix}model-calls`;
    await createTopics(admin, [{ topic, numPartitions: 1 }]);
    const writer = await AvroCodec.register(V2, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
      compatibility: "BACKWARD",
    });
    const origin = 1_764_000_000_000_000;
    await producer.send({
      topic,
      acks: -1,
      messages: Array.from({ length: 50 }, (_, i) => {
        const event = {
          ...sampleEvent({
            event_id: crypto.randomUUID(),
            service: "billing",
            start_time: origin + i * 1_000_000 - 500,
            end_time: origin + i * 1_000_000,
          }),
          reasoning_tokens: i,
        };
        return { key: event.service, value: writer.encode(event) };
      }),
    });
    proxy.faulty = true;
    const before = proxy.notFound;
    const processor = new StreamProcessor({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: proxy.url,
      topicPrefix: prefix,
      groupId: `${prefix}processor`,
      partitions: 1,
      unknownSchemaIdGraceMs: 30_000,
      logger: quietLogger,
    });
    processors.push(processor);
    await processor.start();
    await waitFor(
      "the processor to meet the registry's 404s",
      () => proxy.notFound - before,
      (n) => n >= 2,
      { timeoutMs: 30_000 },
    );
    expect(processor.stats()).toMatchObject({ events: 0, deadLettered: 0 });
    proxy.faulty = false;
    await waitFor(
      "the processor to read all 50 events once the registry has the schema",
      () => processor.stats().events,
      (n) => n === 50,
      { timeoutMs: 30_000 },
    );
    expect(processor.stats().deadLettered).toBe(0);
  });
});
