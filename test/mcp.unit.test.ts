/**
 * The MCP SDK integration with a real MCP client and server (`@modelcontextprotocol/sdk`) over
 * its in-memory transport: spans for tools, resources, prompts and sampling, with parent links.
 */
import { randomUUID } from "node:crypto";
import { PassThrough } from "node:stream";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { InMemoryTransport } from "@modelcontextprotocol/sdk/inMemory.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { WebStandardStreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/webStandardStreamableHttp.js";
import { ReadBuffer, serializeMessage } from "@modelcontextprotocol/sdk/shared/stdio.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import {
  CreateMessageRequestSchema,
  LATEST_PROTOCOL_VERSION,
  McpError,
  type JSONRPCMessage,
} from "@modelcontextprotocol/sdk/types.js";
import { afterEach, describe, expect, it } from "vitest";

import type { ModelCallEvent } from "../avro/generated.js";
import { createExampleServer } from "../examples/simple-mcp-server.js";
import { InMemoryExporter } from "../producer/exporters/memory.js";
import { instrument } from "../producer/interceptor.js";
import { silentLogger } from "../producer/logger.js";
import { instrumentMcpServer } from "../producer/mcp.js";
import { waitFor } from "./support/wait.js";

/** Polls until `read` gives a value (spans are recorded asynchronously after the response). */
async function eventually<T>(read: () => T | undefined, what: string): Promise<T> {
  const value = await waitFor(what, read, (found) => found !== undefined, {
    timeoutMs: 20_000,
    intervalMs: 10,
  });
  return value as T;
}

interface Setup {
  client: Client;
  exporter: InMemoryExporter;
  close: () => Promise<void>;
  sampled: { meta: unknown }[];
}

async function connect(options: { sampling?: boolean } = {}): Promise<Setup> {
  const exporter = new InMemoryExporter();
  // No content hash key, whatever the environment says.
  const interceptor = instrument({
    serviceName: "example-mcp",
    exporter,
    logger: silentLogger,
    contentHashKey: null,
  });
  const server = createExampleServer(interceptor);
  instrumentMcpServer(server, interceptor);
  const client = new Client(
    { name: "test-client", version: "1.0.0" },
    { capabilities: options.sampling ? { sampling: {} } : {} },
  );
  const sampled: { meta: unknown }[] = [];
  if (options.sampling)
    client.setRequestHandler(CreateMessageRequestSchema, (request) => {
      sampled.push({ meta: request.params._meta });
      return {
        model: "claude-sonnet-4-5",
        role: "assistant",
        content: { type: "text", text: "decline: amount too high" },
      };
    });
  const [clientTransport, serverTransport] = InMemoryTransport.createLinkedPair();
  await server.connect(serverTransport);
  await client.connect(clientTransport);
  return {
    client,
    exporter,
    sampled,
    close: async () => {
      await client.close();
      await server.close();
    },
  };
}

function byKind(events: readonly ModelCallEvent[], kind: ModelCallEvent["kind"]): ModelCallEvent[] {
  return events.filter((event) => event.kind === kind);
}

// Spans are awaited with a generous bound (a loaded two-core machine); the tests end as soon as
// they are there.
describe("instrumentMcpServer", { timeout: 30_000 }, () => {
  let setup: Setup | undefined;
  afterEach(async () => {
    await setup?.close();
    setup = undefined;
  });

  it("records a tools/call as a span and passes the result through unchanged", async () => {
    setup = await connect();
    const result = await setup.client.callTool({
      name: "get_account_balance",
      arguments: { accountId: "acc-1" },
    });
    expect(result).toEqual({ content: [{ type: "text", text: "acc-1: 1250.50 USD" }] });
    const exporter = setup.exporter;
    const span = await eventually(() => byKind(exporter.events, "tool_call")[0], "the tool span");
    expect(span).toMatchObject({
      service: "example-mcp",
      tool_name: "get_account_balance",
      mcp_method: "tools/call",
      model: null,
      status: "ok",
      parent_span_id: null,
      token_source: "none",
    });
    expect(span.attributes).toMatchObject({
      "gen_ai.tool.name": "get_account_balance",
      "mcp.method.name": "tools/call",
      "jsonrpc.request.id": expect.stringMatching(/^\d+$/) as string,
      // The version the server's initialize result negotiated.
      "mcp.protocol.version": LATEST_PROTOCOL_VERSION,
    });
    expect(span.attributes).not.toHaveProperty("mcp.request.id");
    // The in-memory transport is neither a pipe nor TCP.
    expect(span.attributes).not.toHaveProperty("network.transport");
    expect(span.end_time).toBeGreaterThanOrEqual(span.start_time);
  });

  it("makes the tool span the parent of the model calls made while serving it", async () => {
    setup = await connect();
    await setup.client.callTool({
      name: "assess_transaction",
      arguments: { amount: 25_000, merchant: "ACME" },
    });
    const exporter = setup.exporter;
    const model = await eventually(
      () => byKind(exporter.events, "model_call")[0],
      "the model span",
    );
    const tool = await eventually(() => byKind(exporter.events, "tool_call")[0], "the tool span");
    expect(model.parent_span_id).toBe(tool.span_id);
    expect(model.trace_id).toBe(tool.trace_id);
    expect(model).toMatchObject({
      model: "gpt-4o-mini",
      high_risk_path: true,
      confidence_gate_threshold: 0.7,
    });
    // The tool's span encloses the model call's.
    expect(tool.start_time).toBeLessThanOrEqual(model.start_time);
    expect(tool.end_time).toBeGreaterThanOrEqual(model.end_time);
  });

  it("marks a failing tool's span as an error, and the client still gets the tool's own result", async () => {
    setup = await connect();
    const failed = await setup.client.callTool({ name: "flaky_lookup", arguments: { key: "k" } });
    expect(failed).toEqual({
      isError: true,
      content: [{ type: "text", text: "lookup of k timed out" }],
    });
    // The SDK answers an unknown tool with an error result (not a JSON-RPC error).
    const unknown = await setup.client.callTool({ name: "no_such_tool", arguments: {} });
    expect(unknown).toMatchObject({
      isError: true,
      content: [{ type: "text", text: expect.stringMatching(/no_such_tool not found/) as string }],
    });
    const exporter = setup.exporter;
    const spans = await eventually(() => {
      const tools = byKind(exporter.events, "tool_call");
      return tools.length >= 2 ? tools : undefined;
    }, "two tool spans");
    expect(spans[0]).toMatchObject({
      tool_name: "flaky_lookup",
      status: "error",
      error_type: "tool_error",
    });
    expect(spans[1]).toMatchObject({
      tool_name: "no_such_tool",
      status: "error",
      error_type: "tool_error",
    });
  });

  it("continues the client's trace from params._meta.traceparent", async () => {
    setup = await connect();
    const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    await setup.client.callTool({
      name: "get_account_balance",
      arguments: { accountId: "acc-2" },
      _meta: { traceparent },
    });
    const exporter = setup.exporter;
    const span = await eventually(() => byKind(exporter.events, "tool_call")[0], "the tool span");
    expect(span.trace_id).toBe("4bf92f3577b34da6a3ce929d0e0e4736");
    expect(span.parent_span_id).toBe("00f067aa0ba902b7");
  });

  it("records resources/read and prompts/get", async () => {
    setup = await connect();
    const resource = await setup.client.readResource({ uri: "accounts://acc-1" });
    expect(resource.contents[0]).toMatchObject({ uri: "accounts://acc-1" });
    await setup.client.getPrompt({ name: "explain_decision", arguments: { decision: "decline" } });
    const exporter = setup.exporter;
    const read = await eventually(
      () => byKind(exporter.events, "resource_read")[0],
      "the resource span",
    );
    const prompt = await eventually(
      () => byKind(exporter.events, "prompt_get")[0],
      "the prompt span",
    );
    expect(read.attributes).toMatchObject({ "mcp.method.name": "resources/read" });
    // No content hash key here: the URI is left out (content-privacy.unit.test.ts has the policy).
    expect(read.attributes).not.toHaveProperty("mcp.resource.uri");
    expect(prompt.attributes).toMatchObject({
      "mcp.method.name": "prompts/get",
      "gen_ai.prompt.name": "explain_decision",
    });
  });

  it("records a JSON-RPC error's code as rpc.response.status_code", async () => {
    setup = await connect();
    const failure = await setup.client
      .readResource({ uri: "nowhere://x" })
      .catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(McpError);
    const code = String((failure as McpError).code);
    const exporter = setup.exporter;
    const read = await eventually(
      () => byKind(exporter.events, "resource_read")[0],
      "the resource span",
    );
    expect(read).toMatchObject({ status: "error", error_type: code });
    expect(read.attributes["rpc.response.status_code"]).toBe(code);
    expect(read.attributes).not.toHaveProperty("rpc.jsonrpc.error_code");
  });

  it("records sampling/createMessage as a model call under the tool, and sends its traceparent", async () => {
    setup = await connect({ sampling: true });
    const result = await setup.client.callTool({
      name: "assess_transaction",
      arguments: { amount: 50_000, merchant: "ACME" },
    });
    expect(result).toEqual({ content: [{ type: "text", text: "decline: amount too high" }] });
    const exporter = setup.exporter;
    const sampling = await eventually(
      () => byKind(exporter.events, "sampling")[0],
      "the sampling span",
    );
    const tool = await eventually(() => byKind(exporter.events, "tool_call")[0], "the tool span");
    expect(sampling).toMatchObject({
      model: "claude-sonnet-4-5",
      mcp_method: "sampling/createMessage",
      token_source: "estimated",
      parent_span_id: tool.span_id,
      trace_id: tool.trace_id,
      status: "ok",
    });
    expect(sampling.attributes).toMatchObject({
      "mcp.method.name": "sampling/createMessage",
      "jsonrpc.request.id": expect.stringMatching(/^\d+$/) as string,
      "mcp.protocol.version": LATEST_PROTOCOL_VERSION,
    });
    expect(sampling.prompt_tokens).toBeGreaterThan(5);
    expect(sampling.completion_tokens).toBeGreaterThan(2);
    expect(setup.sampled[0]?.meta).toEqual({
      traceparent: `00-${sampling.trace_id}-${sampling.span_id}-01`,
    });
  });
});

type McpServerOf = ReturnType<typeof createExampleServer>;

/** A client transport over two streams, the client's end of a stdio connection. */
class StreamClientTransport implements Transport {
  onmessage?: (message: JSONRPCMessage) => void;
  onclose?: () => void;
  private readonly buffer = new ReadBuffer();

  constructor(
    private readonly toServer: PassThrough,
    private readonly fromServer: PassThrough,
  ) {}

  start(): Promise<void> {
    this.fromServer.on("data", (chunk: Buffer) => {
      this.buffer.append(chunk);
      for (let message = this.buffer.readMessage(); message; message = this.buffer.readMessage())
        this.onmessage?.(message);
    });
    return Promise.resolve();
  }

  send(message: JSONRPCMessage): Promise<void> {
    this.toServer.write(serializeMessage(message));
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.onclose?.();
    return Promise.resolve();
  }
}

describe(
  "instrumentMcpServer on the SDK's stdio and Streamable HTTP transports",
  { timeout: 30_000 },
  () => {
    async function toolSpan(
      connectBoth: (server: McpServerOf, client: Client) => Promise<() => Promise<void>>,
    ): Promise<ModelCallEvent> {
      const exporter = new InMemoryExporter();
      const interceptor = instrument({
        serviceName: "example-mcp",
        exporter,
        logger: silentLogger,
        contentHashKey: null,
      });
      const server = createExampleServer(interceptor);
      instrumentMcpServer(server, interceptor);
      const client = new Client({ name: "test-client", version: "1.0.0" });
      const close = await connectBoth(server, client);
      try {
        await client.callTool({ name: "get_account_balance", arguments: { accountId: "acc-1" } });
        return await eventually(() => byKind(exporter.events, "tool_call")[0], "the tool span");
      } finally {
        await client.close();
        await close();
      }
    }

    it("names stdio's network transport pipe", async () => {
      const span = await toolSpan(async (server, client) => {
        const toServer = new PassThrough();
        const fromServer = new PassThrough();
        await server.connect(new StdioServerTransport(toServer, fromServer));
        await client.connect(new StreamClientTransport(toServer, fromServer));
        return () => server.close();
      });
      expect(span.attributes).toMatchObject({
        "network.transport": "pipe",
        "mcp.protocol.version": LATEST_PROTOCOL_VERSION,
        "mcp.method.name": "tools/call",
      });
    });

    it("names Streamable HTTP's network transport tcp", async () => {
      const span = await toolSpan(async (server, client) => {
        const serverTransport = new WebStandardStreamableHTTPServerTransport({
          sessionIdGenerator: () => randomUUID(),
          enableJsonResponse: true,
        });
        await server.connect(serverTransport);
        await client.connect(
          new StreamableHTTPClientTransport(new URL("http://mcp.test/mcp"), {
            fetch: (url, init) => serverTransport.handleRequest(new Request(url, init)),
          }),
        );
        return () => server.close();
      });
      expect(span.attributes).toMatchObject({
        "network.transport": "tcp",
        "mcp.protocol.version": LATEST_PROTOCOL_VERSION,
        "mcp.method.name": "tools/call",
      });
    });
  },
);
