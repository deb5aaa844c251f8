/**
 * A small MCP server over stdio, instrumented in one line: `instrumentMcpServer(server, interceptor)`.
 * (The seed's examples/simple_mcp_server.py, in TypeScript.)
 *
 * Tools:
 * - `get_account_balance` — a plain tool, no model call;
 * - `assess_transaction` — makes model calls with the decision-pattern fields (a simulated model,
 *   or the client's model through `sampling/createMessage` when the client offers sampling);
 * - `flaky_lookup` — fails on purpose (an `isError` result), to see error spans.
 * Also a resource (`accounts://{id}`) and a prompt (`explain_decision`).
 *
 * Run it against the local stack (events go to Kafka): `npm run example:server` — an MCP client
 * (an IDE, or `npx @modelcontextprotocol/inspector`) talks to it over stdio. Without Kafka
 * settings in the environment it keeps events in memory and logs a snapshot on exit.
 */
import { pathToFileURL } from "node:url";

import { McpServer, ResourceTemplate } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { z } from "zod";

import {
  InMemoryExporter,
  instrument,
  instrumentMcpServer,
  KafkaExporter,
  type MCPInterceptor,
} from "../producer/index.js";

/** A deterministic stand-in for a model: the same input gives the same decision. */
function simulatedModel(
  amount: number,
  merchant: string,
): { confidence: number; approve: boolean; shadow: boolean } {
  let hash = 0;
  for (const char of `${merchant}:${amount}`) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  const confidence = Math.round((0.4 + (hash % 60) / 100) * 100) / 100;
  return { confidence, approve: amount < 10_000 && confidence >= 0.7, shadow: hash % 5 !== 0 };
}

/** The example server, built on an interceptor; connect it to any transport. */
export function createExampleServer(interceptor: MCPInterceptor): McpServer {
  const server = new McpServer({ name: "example-mcp", version: "1.0.0" });
  const balances = new Map([
    ["acc-1", 1_250.5],
    ["acc-2", 98_000],
  ]);

  server.registerTool(
    "get_account_balance",
    { description: "The balance of an account", inputSchema: { accountId: z.string() } },
    ({ accountId }) => {
      const balance = balances.get(accountId);
      if (balance === undefined)
        return { isError: true, content: [{ type: "text", text: `no account ${accountId}` }] };
      return { content: [{ type: "text", text: `${accountId}: ${balance.toFixed(2)} USD` }] };
    },
  );

  server.registerTool(
    "assess_transaction",
    {
      description: "Decide whether to approve a transaction (uses a model)",
      inputSchema: { amount: z.number().positive(), merchant: z.string() },
    },
    async ({ amount, merchant }) => {
      const highRisk = amount >= 10_000;
      const golden = merchant === "GOLDEN-TEST";
      const prompt = `Approve a ${amount} USD payment to ${merchant}? Answer approve or decline.`;
      let text: string;
      if (server.server.getClientCapabilities()?.sampling) {
        // The client's model answers; the instrumentation records the sampling span.
        const result = await server.server.createMessage({
          messages: [{ role: "user", content: { type: "text", text: prompt } }],
          maxTokens: 50,
        });
        text = result.content.type === "text" ? result.content.text : "";
      } else {
        const decision = simulatedModel(amount, merchant);
        text = await interceptor.traceModelCall(
          {
            model: "gpt-4o-mini",
            provider: "openai",
            prompt,
            confidenceGateThreshold: 0.7,
            highRiskPath: highRisk,
            isGoldenFinancialScenario: golden,
          },
          async () => {
            await new Promise((resolve) => setTimeout(resolve, 5 + (amount % 20)));
            return decision.approve ? "approve" : "decline";
          },
          (answer) => ({
            response: answer,
            confidence: decision.confidence,
            deterministicFallbackTriggered: highRisk && decision.confidence < 0.7,
            shadowAgreement: decision.shadow,
            promptDiffScore: Math.min(1, merchant.length / 40),
            ...(golden ? { goldenScenarioPassed: answer === "decline" } : {}),
          }),
        );
      }
      return { content: [{ type: "text", text }] };
    },
  );

  let calls = 0;
  server.registerTool(
    "flaky_lookup",
    { description: "Fails every other call", inputSchema: { key: z.string() } },
    ({ key }) => {
      calls++;
      if (calls % 2 === 1)
        return { isError: true, content: [{ type: "text", text: `lookup of ${key} timed out` }] };
      return { content: [{ type: "text", text: `${key}=ok` }] };
    },
  );

  server.registerResource(
    "account",
    new ResourceTemplate("accounts://{id}", { list: undefined }),
    { description: "An account record" },
    (uri, { id }) => ({
      contents: [
        { uri: uri.href, text: JSON.stringify({ id, balance: balances.get(String(id)) ?? null }) },
      ],
    }),
  );

  server.registerPrompt(
    "explain_decision",
    { description: "Ask for the reasons of a decision", argsSchema: { decision: z.string() } },
    ({ decision }) => ({
      messages: [{ role: "user", content: { type: "text", text: `Explain why: ${decision}` } }],
    }),
  );

  return server;
}

async function main(): Promise<void> {
  const useKafka = process.env.KAFKA_BROKERS !== undefined && process.env.KAFKA_BROKERS !== "";
  const exporter = useKafka ? new KafkaExporter() : new InMemoryExporter();
  const interceptor = instrument({ serviceName: "example-mcp", exporter });
  const server = createExampleServer(interceptor);
  instrumentMcpServer(server, interceptor);
  await server.connect(new StdioServerTransport());
  let stopping = false;
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    await interceptor.shutdown();
    process.stderr.write(
      `${JSON.stringify({ snapshot: interceptor.getMetricsSnapshot(), alerts: interceptor.getActiveAlerts(), counters: interceptor.getCounters() })}\n`,
    );
    await server.close();
    process.exit(0);
  };
  process.stdin.on("end", () => void stop());
  process.on("SIGINT", () => void stop());
  process.on("SIGTERM", () => void stop());
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href)
  void main();
