/**
 * The README's example: the example MCP server over stdio, run as `npm run example:server` does,
 * with a real MCP client; its spans reach Kafka.
 */
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { REPO_ROOT } from "./support/cli.js";
import { services, testKafka, uniqueName } from "./support/isolation.js";
import { recordsInTopic } from "./support/kafka-batches.js";
import { waitFor } from "./support/wait.js";

describe("examples/simple-mcp-server.ts over stdio", () => {
  it("serves a real MCP client, and after it exits its topic holds exactly three spans: two tool calls and the model call under assess_transaction", async () => {
    const prefix = `${uniqueName("example")}.`;
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: ["--import", "tsx", "examples/simple-mcp-server.ts"],
      cwd: REPO_ROOT,
      env: {
        ...(process.env as Record<string, string>),
        KAFKA_BROKERS: services().kafkaBrokers,
        SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
        MCPO_TOPIC_PREFIX: prefix,
      },
      stderr: "pipe",
    });
    let serverStderr = "";
    transport.stderr?.on("data", (chunk: Buffer) => (serverStderr += chunk.toString()));
    const client = new Client({ name: "e2e", version: "1.0.0" });
    await client.connect(transport);
    const pid = transport.pid;
    expect(pid, "the server process started").not.toBeNull();
    const tools = await client.listTools();
    expect(tools.tools.map((tool) => tool.name).sort()).toEqual([
      "assess_transaction",
      "flaky_lookup",
      "get_account_balance",
    ]);
    const balance = await client.callTool({
      name: "get_account_balance",
      arguments: { accountId: "acc-2" },
    });
    expect(balance.content).toEqual([{ type: "text", text: "acc-2: 98000.00 USD" }]);
    const assessment = await client.callTool({
      name: "assess_transaction",
      arguments: { amount: 12_000, merchant: "ACME" },
    });
    expect(assessment.isError ?? false, JSON.stringify(assessment.content)).toBe(false);
    await client.close(); // stdin ends: the server flushes its exporter and exits
    await waitFor(
      `the example server (pid ${pid}) to exit after flushing`,
      () => {
        try {
          process.kill(pid ?? 0, 0);
          return { state: "running", stderr: serverStderr.slice(-2000) };
        } catch {
          return { state: "exited", stderr: "" };
        }
      },
      (seen) => seen.state === "exited",
      { timeoutMs: 30_000 },
    );

    // The server has exited, so the topic holds all it will ever hold: exactly the three spans.
    const topic = `${prefix}model-calls`;
    expect(
      await recordsInTopic(services().kafkaBrokers, topic),
      `records on ${topic}; the server's stderr:\n${serverStderr}`,
    ).toBe(3);
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    const consumer = testKafka().consumer({ groupId: uniqueName("reader") });
    const events: ModelCallEvent[] = [];
    const undecodable: string[] = [];
    await consumer.connect();
    try {
      await consumer.subscribe({ topic, fromBeginning: true });
      await consumer.run({
        eachMessage: async ({ message }) => {
          const decoded = await codec.decode(message.value ?? Buffer.alloc(0));
          if (decoded.ok) events.push(decoded.value);
          else undecodable.push(decoded.error.message);
        },
      });
      await waitFor(
        `the 3 records of ${topic} to be consumed`,
        () => events.length + undecodable.length,
        (count) => count >= 3,
        { timeoutMs: 60_000 },
      );
    } finally {
      await consumer.disconnect();
    }
    expect(undecodable).toEqual([]);
    expect(events).toHaveLength(3);
    const tools_ = events.filter((event) => event.kind === "tool_call");
    const model = events.find((event) => event.kind === "model_call");
    expect(tools_.map((event) => event.tool_name).sort()).toEqual([
      "assess_transaction",
      "get_account_balance",
    ]);
    const assess = tools_.find((event) => event.tool_name === "assess_transaction");
    expect(model?.parent_span_id).toBe(assess?.span_id);
    expect(model).toMatchObject({
      service: "example-mcp",
      model: "gpt-4o-mini",
      high_risk_path: true,
      token_source: "estimated",
    });
  });
});
