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

describe("examples/simple-mcp-server.ts over stdio", () => {
  it("serves a real MCP client and exports its spans to Kafka", async () => {
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
    const client = new Client({ name: "e2e", version: "1.0.0" });
    await client.connect(transport);
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
    await client.callTool({
      name: "assess_transaction",
      arguments: { amount: 12_000, merchant: "ACME" },
    });
    await client.close(); // the server flushes its exporter and exits

    const topic = `${prefix}model-calls`;
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    const consumer = testKafka().consumer({ groupId: uniqueName("reader") });
    const events: ModelCallEvent[] = [];
    await consumer.connect();
    try {
      await consumer.subscribe({ topic, fromBeginning: true });
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          reject(new Error(`${events.length} of 3 spans within 30 s`));
        }, 30_000);
        void consumer.run({
          eachMessage: async ({ message }) => {
            const decoded = await codec.decode(message.value ?? Buffer.alloc(0));
            if (decoded.ok) events.push(decoded.value);
            if (events.length === 3) {
              clearTimeout(timer);
              resolve();
            }
          },
        });
      });
    } finally {
      await consumer.disconnect();
    }
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
