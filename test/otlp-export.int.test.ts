/**
 * `export otlp` against real services: ModelCallEvents (and a watermark tick, a progress record
 * and a forwarded copy) on a model-calls topic of the test's own (real Kafka and schema
 * registry), exported to a node:http receiver started here that decodes every request with the
 * official OTLP protobuf definitions. Covers the spans' ids, times, names and attributes, control
 * records and copies left out, 503 retried (Retry-After) and 400 dead-lettered, partial success
 * counted, the kept position across a kill -9 of the CLI, and a round trip through the project's
 * own `ingest` back to events equal to the originals.
 */
import type { Admin, Producer } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import { copyHeaders, progressRecord, watermarkTick } from "../avro/control.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { OtlpExporter, type OtlpExporterOptions } from "../otlp/export.js";
import { OtlpIngest } from "../otlp/ingest.js";
import { CliWorkers, metricSeries } from "./support/crash.js";
import { decodeModelCalls, readWholeTopic } from "./support/cli.js";
import { sampleEvent } from "./support/events.js";
import { createTopics, quietLogger, services, testKafka, uniqueName } from "./support/isolation.js";
import { OtlpReceiver, type ReceivedSpan } from "./support/otlp-receiver.js";
import { sendWhenSettled, whenSettled } from "./support/settled-send.js";
import { waitFor } from "./support/wait.js";

const SECOND = 1_000_000;

/** Event `n`: ids of its own, times a minute back; a model call unless overridden. */
function eventN(n: number, overrides: Partial<ModelCallEvent> = {}): ModelCallEvent {
  const end = (Date.now() - 60_000) * 1000 + n;
  return sampleEvent({
    trace_id: `${n.toString(16).padStart(8, "0")}${"ab".repeat(12)}`,
    span_id: `${n.toString(16).padStart(8, "0")}cdcdcdcd`,
    parent_span_id: n % 2 === 0 ? null : `${n.toString(16).padStart(8, "0")}efefefef`,
    start_time: end - 2 * SECOND,
    end_time: end,
    service: `svc-${n % 3}`,
    service_instance: `svc-${n % 3}-replica-${n % 2}`,
    ...overrides,
  });
}

/** A mixed set: model calls, an MCP tool call, an error. */
function mixedEvents(from: number, count: number): ModelCallEvent[] {
  return Array.from({ length: count }, (_, i) => {
    const n = from + i;
    if (i % 3 === 1)
      return eventN(n, {
        kind: "tool_call",
        mcp_method: "tools/call",
        tool_name: "lookup_invoice",
        model: null,
        provider: null,
        prompt_tokens: null,
        completion_tokens: null,
        token_source: "none",
        cost_nano_usd: 0,
        attributes: { "mcp.session.id": `s-${n}`, "mcp.method.name": "tools/call" },
      });
    if (i % 3 === 2) return eventN(n, { status: "error", error_type: "rate_limited", retries: 2 });
    return eventN(n);
  });
}

describe("export otlp", () => {
  let admin: Admin;
  let producer: Producer;
  const topics: string[] = [];
  const groups: string[] = [];
  const receivers: OtlpReceiver[] = [];
  const services_: { stop(): Promise<void> }[] = [];

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    producer = testKafka().producer();
    await producer.connect();
  });
  afterAll(async () => {
    for (const service of services_) await service.stop().catch(() => undefined);
    for (const receiver of receivers) await receiver.stop();
    await producer.disconnect();
    const mine = (await admin.listTopics()).filter((name) =>
      topics.some((prefix) => name.startsWith(prefix)),
    );
    if (mine.length > 0) await admin.deleteTopics({ topics: mine }).catch(() => undefined);
    if (groups.length > 0) await admin.deleteGroups(groups).catch(() => undefined);
    await admin.disconnect();
  });

  /** A topic prefix of the test's own: model-calls and dead-letter topics, a codec, a group. */
  async function setUp(label: string) {
    const prefix = `${uniqueName(label)}.`;
    topics.push(prefix);
    await whenSettled(() =>
      createTopics(admin, [
        { topic: `${prefix}model-calls`, numPartitions: 1 },
        { topic: `${prefix}dead-letter`, numPartitions: 1 },
      ]),
    );
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(`${prefix}model-calls`),
    });
    const group = uniqueName(`${label}-group`);
    groups.push(group);
    const produce = async (
      messages: readonly { value: Buffer | null; headers?: Record<string, string> }[],
    ) => {
      await sendWhenSettled(producer, {
        topic: `${prefix}model-calls`,
        acks: -1,
        messages: messages.map((m) => ({ key: "k", ...m })),
      });
    };
    const produceEvents = (events: readonly ModelCallEvent[]) =>
      produce(events.map((event) => ({ value: codec.encode(event) })));
    const committed = async (): Promise<string> =>
      (await admin.fetchOffsets({ groupId: group, topics: [`${prefix}model-calls`] }))[0]
        ?.partitions[0]?.offset ?? "none";
    const receiver = new OtlpReceiver();
    await receiver.start();
    receivers.push(receiver);
    return { prefix, codec, group, produce, produceEvents, committed, receiver };
  }

  function exporter(options: OtlpExporterOptions): OtlpExporter {
    const service = new OtlpExporter(
      {
        brokers: services().kafkaBrokers,
        schemaRegistryUrl: services().schemaRegistryUrl,
        fromBeginning: true,
        retryInitialMs: 50,
        retryMaxMs: 2000,
        timeoutMs: 5000,
        sessionTimeoutMs: 10_000,
        metricsPort: 0,
        partitions: 1,
        logger: quietLogger,
        ...options,
      },
      {},
    );
    services_.push(service);
    return service;
  }

  /** What the semantic conventions make of an event, checked against the official decoding. */
  function expectSpanOf(span: ReceivedSpan | undefined, event: ModelCallEvent): void {
    expect(span, `span ${event.span_id}`).toBeDefined();
    if (!span) return;
    expect(span.traceId).toBe(event.trace_id);
    expect(span.spanId).toBe(event.span_id);
    expect(span.parentSpanId).toBe(event.parent_span_id ?? "");
    expect(span.startTimeUnixNano).toBe((BigInt(event.start_time) * 1000n).toString());
    expect(span.endTimeUnixNano).toBe((BigInt(event.end_time) * 1000n).toString());
    expect(span.service).toBe(event.service);
    expect(span.resource["service.instance.id"]?.stringValue).toBe(event.service_instance);
    expect(span.scope).toBe("mcp-observatory");
    const a = span.attributes;
    if (event.mcp_method !== null) {
      expect(span.name).toBe(`${event.mcp_method} ${event.tool_name}`);
      expect(span.kind).toBe(2); // SERVER
      expect(a["mcp.method.name"]?.stringValue).toBe(event.mcp_method);
      expect(a["gen_ai.tool.name"]?.stringValue).toBe(event.tool_name);
      expect(a["gen_ai.operation.name"]?.stringValue).toBe("execute_tool");
    } else {
      expect(span.name).toBe(`chat ${event.model}`);
      expect(span.kind).toBe(3); // CLIENT
      expect(a["gen_ai.operation.name"]?.stringValue).toBe("chat");
      expect(a["gen_ai.request.model"]?.stringValue).toBe(event.model);
      expect(a["gen_ai.provider.name"]?.stringValue).toBe(event.provider);
      expect(a["gen_ai.usage.input_tokens"]?.intValue).toBe(String(event.prompt_tokens));
      expect(a["gen_ai.usage.output_tokens"]?.intValue).toBe(String(event.completion_tokens));
    }
    expect(a["mcp.session.id"]?.stringValue).toBe(event.attributes["mcp.session.id"]);
    expect(a["mcpo.confidence"]?.doubleValue).toBe(event.confidence);
    expect(a["mcpo.high_risk_path"]?.boolValue).toBe(true);
    expect(a["mcpo.golden.is_financial_scenario"]?.boolValue).toBe(true);
    expect(a["mcpo.shadow_agreement"]?.boolValue).toBe(false);
    if (event.status === "error") {
      expect(span.status.code).toBe(2);
      expect(a["error.type"]?.stringValue).toBe(event.error_type);
      expect(a["mcpo.retries"]?.intValue).toBe(String(event.retries));
    } else {
      expect(span.status.code ?? 0).toBe(0);
      expect(a["mcpo.retries"]).toBeUndefined();
    }
  }

  it(
    "every event arrives once with its ids, times, name and attributes; ticks, progress, copies and undecodable records are not sent; a 503 is retried after its Retry-After; a partial success is counted",
    { timeout: 60_000 },
    async () => {
      const { prefix, codec, group, produce, produceEvents, committed, receiver } =
        await setUp("otlpx-spans");
      const events = mixedEvents(1, 7);
      const first = events[0] as ModelCallEvent;
      await produceEvents(events.slice(0, 3));
      await produce([
        watermarkTick(first.end_time),
        progressRecord({
          sourcePartition: 0,
          lastOffset: "0",
          sourceTimeMicros: first.end_time,
        }),
        {
          value: codec.encode(first),
          headers: copyHeaders({
            sourcePartition: 0,
            sourceOffset: "0",
            previousOffset: null,
            sourceTimeMicros: first.end_time,
          }),
        },
      ]);
      // Not Avro in the wire format: skipped and counted, not dead-lettered (the processor does).
      await produce([{ value: Buffer.from("not an event") }]);
      await produceEvents(events.slice(3));
      // 11 records, 7 events, at most 3 spans a request: 3 requests (or more, by batch).
      receiver.script.push(
        { status: 503, body: "busy", headers: { "retry-after": "1" } },
        { partialSuccess: { rejectedSpans: 1, errorMessage: "span 2 too old" } },
      );
      const service = exporter({
        topicPrefix: prefix,
        groupId: group,
        endpoint: receiver.endpoint,
        maxSpansPerRequest: 3,
      });
      await service.start();
      await waitFor("the position after the eleventh record", committed, (o) => o === "11", {
        timeoutMs: 40_000,
      });
      const metrics = await (await fetch(service.metricsUrl ?? "")).text();
      await service.stop();

      const acknowledged = receiver.acknowledged();
      // Once each, in the log's order: the copy and the control records were not sent.
      expect(acknowledged.map((s) => s.spanId)).toEqual(events.map((e) => e.span_id));
      for (const event of events)
        expectSpanOf(
          acknowledged.find((s) => s.spanId === event.span_id),
          event,
        );
      const [refused, ...rest] = receiver.requests;
      expect(refused?.status).toBe(503);
      expect(rest.every((r) => r.status === 200)).toBe(true);
      // Retried no sooner than its Retry-After (1 s) asked.
      expect((rest[0]?.at ?? 0) - (refused?.at ?? 0)).toBeGreaterThanOrEqual(950);
      // The retried request is the same spans again.
      expect(rest[0]?.spans.map((s) => s.spanId)).toEqual(refused?.spans.map((s) => s.spanId));
      for (const request of receiver.requests) {
        expect(request.path).toBe("/v1/traces");
        expect(request.headers["content-type"]).toBe("application/x-protobuf");
        expect(request.spans.length).toBeLessThanOrEqual(3);
      }
      expect(service.stats()).toMatchObject({
        received: 7,
        sent: 6,
        rejected: 1,
        retries: 1,
        failed: 0,
        skipped: 4,
        deadLettered: 0,
        requests: receiver.requests.length,
      });
      expect(metricSeries(metrics, "mcpo_otlp_export_spans_sent_total")).toEqual([6]);
      expect(metricSeries(metrics, "mcpo_otlp_export_spans_rejected_total")).toEqual([1]);
      expect(metricSeries(metrics, "mcpo_otlp_export_retries_total")).toEqual([1]);
      expect(metricSeries(metrics, "mcpo_otlp_export_requests_total", { code: "503" })).toEqual([
        1,
      ]);
      expect(
        metricSeries(metrics, "mcpo_otlp_export_records_skipped_total", { reason: "copy" }),
      ).toEqual([1]);
      expect(
        metricSeries(metrics, "mcpo_otlp_export_records_skipped_total", { reason: "control" }),
      ).toEqual([2]);
      expect(
        metricSeries(metrics, "mcpo_otlp_export_records_skipped_total", {
          reason: "BAD_MAGIC_BYTE",
        }),
      ).toEqual([1]);
      expect(await readWholeTopic(`${prefix}dead-letter`)).toEqual([]);
    },
  );

  it(
    "a 400 dead-letters the request's records with the answer as the reason, and the position moves on",
    { timeout: 60_000 },
    async () => {
      const { prefix, group, produceEvents, committed, receiver } = await setUp("otlpx-400");
      const events = mixedEvents(20, 3);
      await produceEvents(events);
      receiver.script.push({ status: 400, body: "span 1 has no name" });
      const service = exporter({
        topicPrefix: prefix,
        groupId: group,
        endpoint: receiver.endpoint,
        maxSpansPerRequest: 2,
      });
      await service.start();
      await waitFor("the position after the third record", committed, (o) => o === "3", {
        timeoutMs: 40_000,
      });
      await service.stop();
      expect(receiver.requests.map((r) => r.status)).toEqual([400, 200]);
      expect(receiver.acknowledged().map((s) => s.spanId)).toEqual([events[2]?.span_id]);
      const letters = await readWholeTopic(`${prefix}dead-letter`);
      expect(letters.map((l) => l.headers["mcpo-source-offset"])).toEqual(["0", "1"]);
      for (const letter of letters) {
        expect(letter.headers).toMatchObject({
          "mcpo-dlq-code": "OTLP_EXPORT_REJECTED",
          "mcpo-dlq-reason": "otlp-endpoint answered HTTP 400: span 1 has no name",
          "mcpo-source-topic": `${prefix}model-calls`,
          "mcpo-otlp-status": "400",
        });
      }
      expect(service.stats()).toMatchObject({ sent: 1, failed: 2, deadLettered: 2, retries: 0 });
    },
  );

  it(
    "killed (SIGKILL) with a request in flight, the CLI resumes at that request: none lost, none acknowledged sent twice",
    { timeout: 90_000 },
    async () => {
      const { prefix, group, produceEvents, committed, receiver } = await setUp("otlpx-kill");
      const events = mixedEvents(40, 6);
      await produceEvents(events);
      receiver.script.push({ status: 200 }, "hold");
      const workers = CliWorkers.forCurrentTest("otlp-export-kill");
      const env = {
        ...process.env,
        KAFKA_BROKERS: services().kafkaBrokers,
        SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
        MCPO_TOPIC_PREFIX: prefix,
        MCPO_OTLP_EXPORT_GROUP: group,
        MCPO_OTLP_FROM_BEGINNING: "true",
        MCPO_OTLP_MAX_SPANS_PER_REQUEST: "2",
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
        // Longer than the test holds the request: the kill, not a timeout, ends it.
        OTEL_EXPORTER_OTLP_TIMEOUT: "60000",
        MCPO_SESSION_TIMEOUT_MS: "10000",
        MCPO_METRICS_PORT: "0",
        LOG_LEVEL: "info",
      };
      try {
        const first = workers.start(["export", "otlp"], env);
        await first.waitFor(
          "one request acknowledged and the next held",
          () => receiver.requests.map((r) => r.status),
          (statuses) => statuses.join(",") === "200,held",
          { timeoutMs: 40_000 },
        );
        await waitFor("the position after the second record", committed, (o) => o === "2", {
          timeoutMs: 10_000,
        });
        expect(await first.kill("SIGKILL")).toEqual({ code: null, signal: "SIGKILL" });
        receiver.release();
        const later = mixedEvents(50, 2);
        await produceEvents(later);
        const second = workers.start(["export", "otlp"], env);
        await second.waitFor(
          "every event acknowledged",
          () => receiver.acknowledged().length,
          (n) => n >= 8,
          { timeoutMs: 40_000 },
        );
        await waitFor("the position after the eighth record", committed, (o) => o === "8", {
          timeoutMs: 10_000,
        });
        expect(await second.kill("SIGTERM")).toEqual({ code: 0, signal: null });
        expect(receiver.acknowledged().map((s) => s.spanId)).toEqual(
          [...events, ...later].map((e) => e.span_id),
        );
        // The held request's spans were sent again by the second run, none before them.
        const held = receiver.requests.find((r) => r.status === "held");
        expect(held?.spans.map((s) => s.spanId)).toEqual([events[2]?.span_id, events[3]?.span_id]);
      } finally {
        await workers.stopAll();
      }
    },
  );

  it(
    "round trip through the project's own ingest: the events come back equal, but for the fields the mapping does not carry",
    { timeout: 60_000 },
    async () => {
      const { prefix, group, produceEvents, committed } = await setUp("otlpx-trip");
      const back = `${uniqueName("otlpx-back")}.`;
      topics.push(back);
      const ingest = new OtlpIngest(
        {
          brokers: services().kafkaBrokers,
          schemaRegistryUrl: services().schemaRegistryUrl,
          topicPrefix: back,
          port: 0,
          metricsPort: 0,
          partitions: 1,
          captureContent: true,
          logger: quietLogger,
        },
        {},
      );
      services_.push(ingest);
      await ingest.start();
      const events = [
        ...mixedEvents(60, 3),
        eventN(63, {
          prompt_text: "What is my balance?",
          response_text: "42 EUR",
          cache_read_tokens: 100,
          cache_write_tokens: 7,
          fallback_used: true,
          golden_scenario_passed: null,
          shadow_agreement: null,
        }),
      ];
      await produceEvents(events);
      const service = exporter({ topicPrefix: prefix, groupId: group, endpoint: ingest.url });
      await service.start();
      await waitFor("the position after the fourth record", committed, (o) => o === "4", {
        timeoutMs: 40_000,
      });
      await service.stop();
      const records = await waitFor(
        "the events back on the second prefix",
        () => readWholeTopic(`${back}model-calls`),
        (r) => r.length >= events.length,
        { timeoutMs: 20_000 },
      );
      const { events: logged } = await decodeModelCalls(`${back}model-calls`, records);
      expect(logged).toHaveLength(events.length);
      // Not carried by the mapping: the event id (derived again from service, instance, trace and
      // span id), and the content's digests and sizes (the span carries the text itself, and only
      // with content capture). The price is the builder's: priced again from the table (equal here
      // for the plain model calls, whose stored price is the table's).
      const NOT_CARRIED: readonly (keyof ModelCallEvent)[] = [
        "event_id",
        "prompt_size_bytes",
        "response_size_bytes",
        "prompt_sha256",
        "response_sha256",
      ];
      for (const original of events) {
        const found = logged.find((l) => l.event.span_id === original.span_id)?.event;
        expect(found, original.span_id).toBeDefined();
        if (!found) continue;
        const differing = (Object.keys(original) as (keyof ModelCallEvent)[]).filter(
          (field) => JSON.stringify(found[field]) !== JSON.stringify(original[field]),
        );
        expect(
          differing.filter((field) => field !== "cost_nano_usd"),
          original.span_id,
        ).toEqual(NOT_CARRIED);
        expect(found.event_id).toMatch(/^[0-9a-f-]{36}$/);
      }
      expect(
        events.filter((e) => e.kind === "model_call" && e.cache_read_tokens === null),
      ).not.toHaveLength(0);
      for (const original of events.filter(
        (e) => e.kind === "model_call" && e.cache_read_tokens === null,
      ))
        expect(logged.find((l) => l.event.span_id === original.span_id)?.event.cost_nano_usd).toBe(
          original.cost_nano_usd,
        );
    },
  );
});
