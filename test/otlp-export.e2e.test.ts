/**
 * `mcp-observatory export otlp` as a user runs it: configured only by the standard OpenTelemetry
 * variables (endpoint, headers, gzip), it exports events from model-calls to an OTLP receiver,
 * retries a 503, and SIGTERM stops it with exit 0. The header values never appear in its output,
 * not even when the endpoint echoes them back; a malformed header list stops it at once, naming
 * the variable and not its value.
 */
import { describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import { runTs, startCli } from "./support/cli.js";
import { sampleEvent } from "./support/events.js";
import { createTopics, services, testKafka, uniqueName } from "./support/isolation.js";
import { OtlpReceiver } from "./support/otlp-receiver.js";
import { sendWhenSettled, whenSettled } from "./support/settled-send.js";
import { waitFor } from "./support/wait.js";

describe("mcp-observatory export otlp", () => {
  it(
    "exports with the OTEL_EXPORTER_OTLP_* variables, exits 0 on SIGTERM, its headers never printed",
    { timeout: 90_000 },
    async () => {
      const secret = "e2e-otlp-token-5c4b3a29181706f5e4d3";
      const prefix = `${uniqueName("otlpx-e2e")}.`;
      const topic = `${prefix}model-calls`;
      const group = uniqueName("otlpx-e2e-group");
      const admin = testKafka().admin();
      await admin.connect();
      await whenSettled(() => createTopics(admin, [{ topic }, { topic: `${prefix}dead-letter` }]));
      const receiver = new OtlpReceiver();
      await receiver.start();
      // The endpoint echoes the token in its error: the exporter's retry log must not show it.
      receiver.script.push({
        status: 503,
        body: `overloaded; your token was Bearer ${secret}`,
        headers: { "retry-after": "0" },
      });
      const cli = startCli(["export", "otlp"], {
        ...process.env,
        KAFKA_BROKERS: services().kafkaBrokers,
        SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
        MCPO_TOPIC_PREFIX: prefix,
        MCPO_OTLP_EXPORT_GROUP: group,
        MCPO_OTLP_FROM_BEGINNING: "true",
        MCPO_OTLP_RETRY_INITIAL_MS: "100",
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
        OTEL_EXPORTER_OTLP_HEADERS: `authorization=Bearer%20${secret},x-tenant=acme`,
        OTEL_EXPORTER_OTLP_COMPRESSION: "gzip",
        MCPO_METRICS_PORT: "0",
      });
      try {
        const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
          registryUrl: services().schemaRegistryUrl,
          subject: valueSubject(topic),
        });
        const events = [
          sampleEvent({ span_id: "e2e0000000000001" }),
          sampleEvent({ span_id: "e2e0000000000002", service: "billing-mcp" }),
        ];
        const producer = testKafka().producer();
        await producer.connect();
        await sendWhenSettled(producer, {
          topic,
          messages: events.map((event) => ({ key: event.service, value: codec.encode(event) })),
        });
        await producer.disconnect();
        await waitFor(
          "the spans at the receiver",
          () => ({
            spans: receiver.acknowledged().length,
            exit: cli.exitCode(),
            err: cli.stderr().slice(-500),
          }),
          (seen) => seen.spans >= 2 || seen.exit !== undefined,
          { timeoutMs: 60_000 },
        );
        expect(cli.exitCode(), cli.stderr()).toBeUndefined();
        expect(receiver.acknowledged().map((s) => s.spanId)).toEqual(events.map((e) => e.span_id));
        expect(receiver.acknowledged().map((s) => s.service)).toEqual([
          "example-mcp",
          "billing-mcp",
        ]);
        expect(receiver.requests.map((r) => r.status)).toEqual([503, 200]);
        for (const request of receiver.requests) {
          expect(request.path).toBe("/v1/traces");
          expect(request.headers.authorization).toBe(`Bearer ${secret}`);
          expect(request.headers["x-tenant"]).toBe("acme");
          expect(request.headers["content-encoding"]).toBe("gzip");
          expect(request.headers["content-type"]).toBe("application/x-protobuf");
        }
        expect(await cli.stop("SIGTERM")).toBe(0);
        const output = cli.stdout() + cli.stderr();
        expect(output).toMatch(/"msg":"export request failed; retrying"/);
        expect(output).toMatch(/"msg":"otlp-export stopped"/);
        expect(output).not.toContain(secret);
      } finally {
        await cli.stop("SIGKILL");
        await receiver.stop();
        await admin
          .deleteTopics({ topics: [topic, `${prefix}dead-letter`] })
          .catch(() => undefined);
        await admin.deleteGroups([group]).catch(() => undefined);
        await admin.disconnect();
      }
    },
  );

  it("a malformed OTEL_EXPORTER_OTLP_HEADERS stops it with exit 2, naming the variable, not the value", async () => {
    const secret = "e2e-otlp-malformed-7a6b5c4d3e2f1";
    const result = await runTs("cli/main.ts", ["export", "otlp"], {
      env: {
        ...process.env,
        KAFKA_BROKERS: services().kafkaBrokers,
        SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318",
        OTEL_EXPORTER_OTLP_HEADERS: `authorization ${secret}`,
      },
      timeoutMs: 60_000,
    });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(
      /invalid configuration OTEL_EXPORTER_OTLP_HEADERS: entry 1 is not name=value/,
    );
    expect(result.stdout + result.stderr).not.toContain(secret);
  });
});
