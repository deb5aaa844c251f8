/**
 * `mcp-observatory ingest` as a user runs it: a real process taking OTLP/JSON on its port, its
 * bearer token from the environment (required, never printed), its event on model-calls, and
 * SIGTERM answering what is in flight and exiting 0.
 */
import type { Admin } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { traceResponseFromJson } from "../otlp/wire.js";
import {
  decodeModelCalls,
  readWholeTopic,
  startCli,
  type BackgroundCommand,
} from "./support/cli.js";
import { services, testKafka, uniqueName } from "./support/isolation.js";
import { freePort } from "./support/ports.js";
import { waitFor } from "./support/wait.js";

const prefix = `${uniqueName("otlp-cli")}.`;
const token = "cli-ingest-token-5f1d2c9a7e";
let admin: Admin;
let command: BackgroundCommand | undefined;

beforeAll(async () => {
  admin = testKafka().admin();
  await admin.connect();
});

afterAll(async () => {
  await command?.stop("SIGKILL");
  const topics = (await admin.listTopics()).filter((name) => name.startsWith(prefix));
  if (topics.length > 0) await admin.deleteTopics({ topics });
  await admin.disconnect();
});

describe("mcp-observatory ingest", () => {
  it("takes OTLP/JSON with its bearer token, publishes the event, and exits 0 on SIGTERM", async () => {
    const port = await freePort();
    command = startCli(["ingest", "--port", String(port), "--metrics-port", "-1"], {
      ...process.env,
      KAFKA_BROKERS: services().kafkaBrokers,
      SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
      MCPO_TOPIC_PREFIX: prefix,
      MCPO_INGEST_TOKEN: token,
    });
    const running = command;
    await waitFor(
      "ingest started",
      () => running.stdout().includes("ingest started") || running.exitCode() !== undefined,
      (done) => done,
      { timeoutMs: 60_000 },
    );
    expect(running.exitCode(), running.stderr()).toBeUndefined();
    const url = `http://127.0.0.1:${port}/v1/traces`;
    const now = BigInt(Date.now()) * 1_000_000n;
    const body = JSON.stringify({
      resourceSpans: [
        {
          resource: {
            attributes: [
              { key: "service.name", value: { stringValue: "cli-otlp-svc" } },
              { key: "service.instance.id", value: { stringValue: "cli-1" } },
            ],
          },
          scopeSpans: [
            {
              scope: { name: "python-app" },
              spans: [
                {
                  traceId: "0af7651916cd43dd8448eb211c80319c",
                  spanId: "b7ad6b7169203331",
                  name: "chat claude-3-5-sonnet",
                  kind: 3,
                  startTimeUnixNano: String(now - 400_000_000n),
                  endTimeUnixNano: String(now),
                  attributes: [
                    { key: "gen_ai.operation.name", value: { stringValue: "chat" } },
                    { key: "gen_ai.request.model", value: { stringValue: "claude-3-5-sonnet" } },
                    { key: "gen_ai.system", value: { stringValue: "anthropic" } },
                    { key: "gen_ai.usage.input_tokens", value: { intValue: "90" } },
                    { key: "gen_ai.usage.output_tokens", value: { intValue: "30" } },
                  ],
                },
              ],
            },
          ],
        },
      ],
    });
    const unauthorized = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
    expect(unauthorized.status).toBe(401);
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body,
    });
    expect(response.status).toBe(200);
    expect(traceResponseFromJson(await response.text())).toEqual({});

    const topic = `${prefix}model-calls`;
    const { events } = await decodeModelCalls(topic, await readWholeTopic(topic));
    expect(events.map((logged) => logged.event)).toMatchObject([
      {
        service: "cli-otlp-svc",
        service_instance: "cli-1",
        trace_id: "0af7651916cd43dd8448eb211c80319c",
        span_id: "b7ad6b7169203331",
        model: "claude-3-5-sonnet",
        provider: "anthropic",
        prompt_tokens: 90,
        completion_tokens: 30,
      },
    ]);

    expect(await running.stop("SIGTERM")).toBe(0);
    expect(running.stdout()).toContain("ingest stopped");
    expect(running.stdout() + running.stderr()).not.toContain(token);
  });
});
