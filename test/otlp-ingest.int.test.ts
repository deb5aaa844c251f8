/**
 * The OTLP receiver against the real Kafka and registry, with the official OpenTelemetry
 * exporters (OTLP/JSON and protobuf over HTTP) as clients: the events on model-calls, partial
 * success, 400/401/413/415, and 503 with Retry-After when Kafka is not there.
 */
import { connect } from "node:net";
import { gzipSync } from "node:zlib";

import { context, trace, SpanKind, SpanStatusCode, type Attributes } from "@opentelemetry/api";
import { OTLPTraceExporter as JsonExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { OTLPTraceExporter as ProtoExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import {
  InMemorySpanExporter,
  SimpleSpanProcessor,
  TracerProvider,
  type ReadableSpan,
} from "@opentelemetry/sdk-trace";
import type { Admin } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { ModelCallEvent } from "../avro/generated.js";
import { OtlpIngest } from "../otlp/ingest.js";
import { decodeTraceResponse, encodeTraceRequest, traceResponseFromJson } from "../otlp/wire.js";
import { instrument } from "../producer/interceptor.js";
import { decodeModelCalls, readWholeTopic } from "./support/cli.js";
import { quietLogger, services, testKafka, uniqueName } from "./support/isolation.js";
import { freePort } from "./support/ports.js";

const prefix = `${uniqueName("otlp")}.`;
const topic = `${prefix}model-calls`;
let admin: Admin;
let ingest: OtlpIngest;
const started: OtlpIngest[] = [];

async function startIngest(
  options: ConstructorParameters<typeof OtlpIngest>[0],
): Promise<OtlpIngest> {
  const receiver = new OtlpIngest({
    brokers: services().kafkaBrokers,
    schemaRegistryUrl: services().schemaRegistryUrl,
    topicPrefix: prefix,
    port: 0,
    metricsPort: 0,
    partitions: 1,
    logger: quietLogger,
    ...options,
  });
  started.push(receiver);
  await receiver.start();
  return receiver;
}

beforeAll(async () => {
  admin = testKafka().admin();
  await admin.connect();
  ingest = await startIngest({ maxBodyBytes: 64 * 1024 });
});

afterAll(async () => {
  for (const receiver of started) await receiver.stop();
  const topics = (await admin.listTopics()).filter((name) => name.startsWith(prefix));
  if (topics.length > 0) await admin.deleteTopics({ topics });
  await admin.disconnect();
});

/** Spans recorded by the OpenTelemetry SDK for a service: a tool call and the model call it made. */
function recordSpans(service: string): ReadableSpan[] {
  const memory = new InMemorySpanExporter();
  const provider = new TracerProvider({
    resource: resourceFromAttributes({
      "service.name": service,
      "service.instance.id": `${service}-replica-1`,
    }),
    spanProcessors: [new SimpleSpanProcessor({ exporter: memory })],
  });
  const tracer = provider.getTracer("test-instrumentation", "1.0.0");
  const start = Date.now() - 2000;
  const tool = tracer.startSpan("tools/call lookup", {
    kind: SpanKind.SERVER,
    startTime: start,
    attributes: {
      "mcp.method.name": "tools/call",
      "gen_ai.tool.name": "lookup",
      "jsonrpc.request.id": "7",
      "mcp.session.id": "session-1",
    },
  });
  const modelAttributes: Attributes = {
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.provider.name": "openai",
    "gen_ai.usage.input_tokens": 1200,
    "gen_ai.usage.output_tokens": 340,
    "gen_ai.usage.cache_read.input_tokens": 200,
    "mcpo.retries": 2,
    "mcpo.fallback_used": true,
    "mcpo.confidence": 0.64,
    "mcpo.confidence_gate_threshold": 0.7,
    "mcpo.high_risk_path": true,
    "mcpo.deterministic_fallback_triggered": true,
    "mcpo.prompt_diff_score": 0.42,
    "mcpo.shadow_agreement": false,
    "mcpo.golden.is_financial_scenario": true,
    "mcpo.golden.passed": false,
  };
  const model = tracer.startSpan(
    "chat gpt-4o",
    { kind: SpanKind.CLIENT, startTime: start + 100, attributes: modelAttributes },
    trace.setSpan(context.active(), tool),
  );
  model.end(start + 900);
  tool.setStatus({ code: SpanStatusCode.ERROR, message: "tool failed" });
  tool.setAttribute("error.type", "tool_error");
  tool.end(start + 1000);
  return memory.getFinishedSpans();
}

function exportWith(
  exporter: JsonExporter | ProtoExporter,
  spans: ReadableSpan[],
): Promise<number> {
  return new Promise((resolve) => {
    exporter.export(spans, (result) => {
      resolve(result.code);
    });
  });
}

async function eventsOf(service: string, count: number): Promise<ModelCallEvent[]> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const { events } = await decodeModelCalls(topic, await readWholeTopic(topic));
    const found = events.map((logged) => logged.event).filter((event) => event.service === service);
    if (found.length >= count || Date.now() > deadline) return found;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

const hexOf = (id: string) => id.toLowerCase();

describe("OTLP ingest with the official exporters", () => {
  for (const [encoding, Exporter] of [
    ["json", JsonExporter],
    ["protobuf", ProtoExporter],
  ] as const) {
    it(`maps GenAI and MCP spans sent as ${encoding} into priced events on model-calls`, async () => {
      const service = `otlp-${encoding}-svc`;
      const spans = recordSpans(service);
      const exporter = new Exporter({ url: ingest.url });
      expect(await exportWith(exporter, spans)).toBe(0);
      await exporter.shutdown();

      const events = await eventsOf(service, 2);
      expect(events).toHaveLength(2);
      const toolSpan = spans.find((span) => span.name.startsWith("tools/call"));
      const modelSpan = spans.find((span) => span.name.startsWith("chat"));
      const tool = events.find((event) => event.kind === "tool_call");
      const model = events.find((event) => event.kind === "model_call");
      // Priced and validated as the library does it.
      const library = await instrument({
        serviceName: "reference",
        contentHashKey: null,
      }).interceptModelCall({
        model: "gpt-4o",
        provider: "openai",
        usage: { inputTokens: 1200, outputTokens: 340, cacheReadTokens: 200 },
      });
      expect(library?.cost_nano_usd).toBeGreaterThan(0);
      expect(model).toMatchObject({
        service,
        service_instance: `${service}-replica-1`,
        trace_id: hexOf(modelSpan?.spanContext().traceId ?? ""),
        span_id: hexOf(modelSpan?.spanContext().spanId ?? ""),
        parent_span_id: hexOf(toolSpan?.spanContext().spanId ?? ""),
        model: "gpt-4o",
        provider: "openai",
        prompt_tokens: 1200,
        completion_tokens: 340,
        cache_read_tokens: 200,
        token_source: "reported",
        cost_nano_usd: library?.cost_nano_usd,
        retries: 2,
        fallback_used: true,
        confidence: 0.64,
        confidence_gate_threshold: 0.7,
        high_risk_path: true,
        deterministic_fallback_triggered: true,
        prompt_diff_score: 0.42,
        shadow_agreement: false,
        is_golden_financial_scenario: true,
        golden_scenario_passed: false,
        status: "ok",
        error_type: null,
      });
      expect(model?.end_time).toBe((model?.start_time ?? 0) + 800_000);
      expect(tool).toMatchObject({
        service,
        trace_id: model?.trace_id,
        parent_span_id: null,
        tool_name: "lookup",
        mcp_method: "tools/call",
        status: "error",
        error_type: "tool_error",
        attributes: {
          "mcp.method.name": "tools/call",
          "jsonrpc.request.id": "7",
          "mcp.session.id": "session-1",
        },
      });
    });
  }

  it("answers a mixed request with a partial success naming the rejected spans, and counts them", async () => {
    const spanOf = (spanId: string, attributes: unknown[]) => ({
      traceId: "5b8efff798038103d269b633813fc60c",
      spanId,
      name: `span-${spanId}`,
      kind: 3,
      startTimeUnixNano: `${BigInt(Date.now()) * 1_000_000n}`,
      endTimeUnixNano: `${BigInt(Date.now() + 5) * 1_000_000n}`,
      attributes,
    });
    const body = JSON.stringify({
      resourceSpans: [
        {
          resource: { attributes: [{ key: "service.name", value: { stringValue: "otlp-mixed" } }] },
          scopeSpans: [
            {
              spans: [
                spanOf("1111111111111111", [
                  { key: "gen_ai.request.model", value: { stringValue: "gpt-4o-mini" } },
                ]),
                spanOf("2222222222222222", [
                  { key: "http.request.method", value: { stringValue: "GET" } },
                ]),
                spanOf("3333333333333333", [
                  { key: "gen_ai.request.model", value: { stringValue: "gpt-4o" } },
                  { key: "gen_ai.usage.input_tokens", value: { intValue: "-5" } },
                ]),
              ],
            },
          ],
        },
      ],
    });
    // gzip, as exporters may send it.
    const response = await fetch(ingest.url, {
      method: "POST",
      headers: { "content-type": "application/json", "content-encoding": "gzip" },
      body: gzipSync(body),
    });
    expect(response.status).toBe(200);
    const answer = traceResponseFromJson(await response.text());
    expect(answer.partialSuccess?.rejectedSpans).toBe(2n);
    expect(answer.partialSuccess?.errorMessage).toMatch(
      /span 2222222222222222 "span-2222222222222222": no gen_ai\.\*, mcp\.\* or mcpo\.\* attribute/,
    );
    expect(answer.partialSuccess?.errorMessage).toMatch(
      /span 3333333333333333 .*gen_ai\.usage\.input_tokens must be a non-negative integer \(got -5\)/,
    );
    const events = await eventsOf("otlp-mixed", 1);
    expect(events.map((event) => event.span_id)).toEqual(["1111111111111111"]);
    expect(events[0]?.service_instance).toBe("otlp-mixed");

    const metrics = await (await fetch(ingest.metricsUrl ?? "")).text();
    expect(metrics).toMatch(/mcpo_ingest_spans_total\{outcome="rejected"\} [2-9]/);
    expect(metrics).toMatch(/mcpo_ingest_spans_total\{outcome="accepted"\} [1-9]/);
  });

  it("refuses undecodable bodies (400), other content types (415) and bodies over the limit (413)", async () => {
    const garbage = await fetch(ingest.url, {
      method: "POST",
      headers: { "content-type": "application/x-protobuf" },
      body: Uint8Array.from([0x0a, 0xff, 0xff, 0xff, 0x0f]),
    });
    expect(garbage.status).toBe(400);
    expect(Buffer.from(await garbage.arrayBuffer()).toString("utf8")).toMatch(
      /cannot decode the OTLP protobuf body: ExportTraceServiceRequest\.resource_spans: length \d+ runs past/,
    );
    const badJson = await fetch(ingest.url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{nope",
    });
    expect(badJson.status).toBe(400);
    expect(((await badJson.json()) as { message: string }).message).toMatch(/not valid JSON/);

    const text = await fetch(ingest.url, {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: "hello",
    });
    expect(text.status).toBe(415);

    const big = encodeTraceRequest({
      resourceSpans: [
        {
          resource: { attributes: [{ key: "pad", value: { stringValue: "x".repeat(70 * 1024) } }] },
          scopeSpans: [],
        },
      ],
    });
    const tooLarge = await fetch(ingest.url, {
      method: "POST",
      headers: { "content-type": "application/x-protobuf" },
      body: big,
    });
    expect(tooLarge.status).toBe(413);
    // A gzip bomb: small on the wire, over the limit once decompressed.
    const bomb = await fetch(ingest.url, {
      method: "POST",
      headers: { "content-type": "application/x-protobuf", "content-encoding": "gzip" },
      body: gzipSync(big),
    });
    expect(bomb.status).toBe(413);
    const ok = await fetch(ingest.url, {
      method: "POST",
      headers: { "content-type": "application/x-protobuf" },
      body: encodeTraceRequest({ resourceSpans: [] }),
    });
    expect(ok.status).toBe(200);
    expect(decodeTraceResponse(new Uint8Array(await ok.arrayBuffer()))).toEqual({});
  });

  it("requires the bearer token when one is configured (401 without it)", async () => {
    const token = "ingest-token-0123456789abcdef";
    const secured = await startIngest({ bearerToken: token, metricsPort: undefined });
    const body = encodeTraceRequest({ resourceSpans: [] });
    const send = (headers: Record<string, string>) =>
      fetch(secured.url, {
        method: "POST",
        headers: { "content-type": "application/x-protobuf", ...headers },
        body,
      });
    const without = await send({});
    expect(without.status).toBe(401);
    expect(without.headers.get("www-authenticate")).toMatch(/^Bearer/);
    expect((await send({ authorization: "Bearer wrong" })).status).toBe(401);
    expect((await send({ authorization: `Bearer ${token}` })).status).toBe(200);
  });

  it("a client too slow to send its body is answered 408 and cut off; meanwhile more requests than allowed get 429", async () => {
    const quick = await startIngest({
      requestTimeoutMs: 1000,
      maxConcurrentRequests: 1,
      retryAfterMs: 2000,
      metricsPort: undefined,
    });
    const began = Date.now();
    let busyStatus: number | undefined;
    let busyRetryAfter: string | null = null;
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = connect(quick.port, "127.0.0.1", () => {
        // Declares 1000 bytes, sends 10, then nothing.
        socket.write(
          "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n0123456789",
        );
      });
      let received = "";
      socket.on("data", (chunk: Buffer) => {
        received += chunk.toString("latin1");
      });
      socket.on("close", () => {
        resolve(received);
      });
      socket.on("error", reject);
      // While the slow request holds the only slot, another is turned away.
      setTimeout(() => {
        void fetch(quick.url, {
          method: "POST",
          headers: { "content-type": "application/x-protobuf" },
          body: encodeTraceRequest({ resourceSpans: [] }),
        }).then((busy) => {
          busyStatus = busy.status;
          busyRetryAfter = busy.headers.get("retry-after");
        }, reject);
      }, 200);
    });
    expect(busyStatus).toBe(429);
    expect(busyRetryAfter).toBe("2");
    expect(answer).toMatch(/^HTTP\/1\.1 408/);
    expect(Date.now() - began).toBeLessThan(5000);
  });

  it("answers 503 with Retry-After when Kafka is not there, without hanging", async () => {
    const port = await freePort();
    const orphan = await startIngest({
      brokers: `127.0.0.1:${port}`,
      publishTimeoutMs: 2000,
      retryAfterMs: 3000,
      metricsPort: undefined,
    });
    const exporterSpans = recordSpans("otlp-no-kafka");
    const began = Date.now();
    const response = await fetch(orphan.url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        resourceSpans: [
          {
            resource: {
              attributes: [{ key: "service.name", value: { stringValue: "otlp-no-kafka" } }],
            },
            scopeSpans: [
              {
                spans: exporterSpans.map((span) => ({
                  traceId: span.spanContext().traceId,
                  spanId: span.spanContext().spanId,
                  name: span.name,
                  kind: 3,
                  startTimeUnixNano: `${BigInt(Date.now()) * 1_000_000n}`,
                  endTimeUnixNano: `${BigInt(Date.now() + 1) * 1_000_000n}`,
                  attributes: [{ key: "gen_ai.request.model", value: { stringValue: "gpt-4o" } }],
                })),
              },
            ],
          },
        ],
      }),
    });
    expect(response.status).toBe(503);
    expect(response.headers.get("retry-after")).toBe("3");
    expect(((await response.json()) as { message: string }).message).toMatch(
      /Kafka did not take the events/,
    );
    expect(Date.now() - began).toBeLessThan(10_000);
    expect(orphan.stats()).toMatchObject({ failed: 2, accepted: 0 });
  });
});
