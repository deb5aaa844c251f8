/**
 * The interceptor inside a server that uses OpenTelemetry: with a real SDK tracer provider, the
 * async-hooks context manager and the W3C propagators registered, our spans join the host's
 * trees both ways (a host span active → ours is its child; a host span started inside our work →
 * its parent is ours); W3C `tracestate` and `baggage` in MCP `_meta` reach the handler's context
 * and go out again on the requests it sends. Without an SDK, everything is as before.
 */
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { InMemoryTransport } from "@modelcontextprotocol/sdk/inMemory.js";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { CreateMessageRequestSchema } from "@modelcontextprotocol/sdk/types.js";
import { context, propagation, trace, type Span } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import {
  CompositePropagator,
  W3CBaggagePropagator,
  W3CTraceContextPropagator,
} from "@opentelemetry/core";
import {
  InMemorySpanExporter,
  SimpleSpanProcessor,
  TracerProvider,
  type ReadableSpan,
} from "@opentelemetry/sdk-trace";
import { afterEach, describe, expect, it } from "vitest";

import type { ModelCallEvent } from "../avro/generated.js";
import { InMemoryExporter } from "../producer/exporters/memory.js";
import { instrument, type MCPInterceptor } from "../producer/interceptor.js";
import { silentLogger } from "../producer/logger.js";
import { instrumentMcpServer } from "../producer/mcp.js";
import {
  currentTraceContext,
  extractMcpParent,
  injectMcpTraceparent,
  runWithTraceContext,
  startSpanContext,
  type TraceContext,
} from "../producer/trace.js";
import { waitFor } from "./support/wait.js";

const TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID = "00f067aa0ba902b7";
const TRACEPARENT = `00-${TRACE_ID}-${PARENT_ID}-01`;
const TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

interface Host {
  readonly spans: InMemorySpanExporter;
  readonly provider: TracerProvider;
}

/** Registers a real OpenTelemetry SDK the way a host server does. */
function registerOtel(): Host {
  const spans = new InMemorySpanExporter();
  const provider = new TracerProvider({
    spanProcessors: [new SimpleSpanProcessor({ exporter: spans })],
  });
  expect(trace.setGlobalTracerProvider(provider)).toBe(true);
  expect(context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable())).toBe(
    true,
  );
  expect(
    propagation.setGlobalPropagator(
      new CompositePropagator({
        propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()],
      }),
    ),
  ).toBe(true);
  return { spans, provider };
}

function interceptorWith(exporter: InMemoryExporter): MCPInterceptor {
  return instrument({
    serviceName: "otel-host",
    exporter,
    logger: silentLogger,
    contentHashKey: null,
  });
}

/** Runs `fn` inside a new active host span, ending it after. */
function inHostSpan<T>(name: string, fn: (span: Span) => Promise<T>): Promise<T> {
  return trace.getTracer("host").startActiveSpan(name, async (span) => {
    try {
      return await fn(span);
    } finally {
      span.end();
    }
  });
}

function hostSpan(host: Host, name: string): ReadableSpan {
  const found = host.spans.getFinishedSpans().find((span) => span.name === name);
  if (!found) throw new Error(`no host span ${name}`);
  return found;
}

/** What a tool handler saw of the context it ran in. */
interface Seen {
  ours: TraceContext | undefined;
  otelTraceState: string | undefined;
  otelBaggage: string | undefined;
}

interface McpSetup {
  client: Client;
  exporter: InMemoryExporter;
  seen: Seen[];
  sampledMeta: unknown[];
  close: () => Promise<void>;
}

/**
 * An instrumented MCP server with two tools, and a client offering sampling: `work` starts a host
 * span (an auto-instrumented HTTP call, say) and a traced model call; `ask` sends a
 * sampling/createMessage request.
 */
async function mcpSetup(): Promise<McpSetup> {
  const exporter = new InMemoryExporter();
  const interceptor = interceptorWith(exporter);
  const server = new McpServer({ name: "otel-host", version: "1.0.0" });
  const seen: Seen[] = [];
  const look = (): void => {
    seen.push({
      ours: currentTraceContext(),
      otelTraceState: trace.getSpanContext(context.active())?.traceState?.serialize(),
      otelBaggage: propagation.getActiveBaggage()?.getEntry("tenant")?.value,
    });
  };
  server.registerTool("work", { description: "host work" }, async () => {
    look();
    await inHostSpan("POST /v1/chat/completions", async () => {
      await new Promise((resolve) => setTimeout(resolve, 2));
    });
    await interceptor.traceModelCall({ model: "gpt-4o-mini", provider: "openai" }, () => "ok");
    return { content: [{ type: "text", text: "done" }] };
  });
  server.registerTool("ask", { description: "sampling" }, async () => {
    look();
    const result = await server.server.createMessage({
      messages: [{ role: "user", content: { type: "text", text: "approve?" } }],
      maxTokens: 10,
    });
    return { content: [{ type: "text", text: result.content.type === "text" ? "ok" : "?" }] };
  });
  instrumentMcpServer(server, interceptor);
  const client = new Client({ name: "c", version: "1.0.0" }, { capabilities: { sampling: {} } });
  const sampledMeta: unknown[] = [];
  client.setRequestHandler(CreateMessageRequestSchema, (request) => {
    sampledMeta.push(request.params._meta);
    return { model: "m", role: "assistant", content: { type: "text", text: "yes" } };
  });
  const [clientTransport, serverTransport] = InMemoryTransport.createLinkedPair();
  await server.connect(serverTransport);
  await client.connect(clientTransport);
  return {
    client,
    exporter,
    seen,
    sampledMeta,
    close: async () => {
      await client.close();
      await server.close();
      await interceptor.shutdown();
    },
  };
}

function byKind(events: readonly ModelCallEvent[], kind: ModelCallEvent["kind"]): ModelCallEvent[] {
  return events.filter((event) => event.kind === kind);
}

async function eventually(
  exporter: InMemoryExporter,
  kind: ModelCallEvent["kind"],
): Promise<ModelCallEvent> {
  const found = await waitFor(
    `a ${kind} span`,
    () => byKind(exporter.events, kind)[0],
    (event) => event !== undefined,
    { timeoutMs: 20_000, intervalMs: 10 },
  );
  return found as ModelCallEvent;
}

let host: Host | undefined;
let mcp: McpSetup | undefined;
afterEach(async () => {
  // Unregistered first, so a failure below still leaves the next test a clean global registry.
  trace.disable();
  context.disable();
  propagation.disable();
  await mcp?.close();
  mcp = undefined;
  await host?.provider.shutdown();
  host = undefined;
});

describe("inside an OpenTelemetry-instrumented host", { timeout: 30_000 }, () => {
  it("makes a model call made while a host span is active the host span's child", async () => {
    host = registerOtel();
    const exporter = new InMemoryExporter();
    const interceptor = interceptorWith(exporter);
    const { event, traced, ids } = await inHostSpan("handle request", async (span) => {
      const recorded = await interceptor.interceptModelCall({ model: "gpt-4o", durationMs: 3 });
      const result = await interceptor.traceModelCall({ model: "gpt-4o" }, () => 42);
      return { event: recorded, traced: result, ids: span.spanContext() };
    });
    await interceptor.flush();
    expect(traced).toBe(42);
    expect(event?.trace_id).toBe(ids.traceId);
    expect(event?.parent_span_id).toBe(ids.spanId);
    expect(exporter.events).toHaveLength(2);
    for (const recorded of exporter.events) {
      expect(recorded.trace_id).toBe(ids.traceId);
      expect(recorded.parent_span_id).toBe(ids.spanId);
    }
  });

  it("makes a host span started inside traceModelCall a child of the model call's span", async () => {
    host = registerOtel();
    const exporter = new InMemoryExporter();
    const interceptor = interceptorWith(exporter);
    await interceptor.traceModelCall({ model: "gpt-4o" }, () =>
      inHostSpan("POST /v1/chat/completions", async () => {
        await new Promise((resolve) => setTimeout(resolve, 2));
      }),
    );
    await interceptor.flush();
    const [event] = exporter.events;
    const http = hostSpan(host, "POST /v1/chat/completions");
    expect(event?.parent_span_id).toBeNull();
    expect(http.spanContext().traceId).toBe(event?.trace_id);
    expect(http.parentSpanContext?.spanId).toBe(event?.span_id);
    // Outside the call, the OpenTelemetry context is what it was.
    expect(trace.getSpanContext(context.active())).toBeUndefined();
    expect(currentTraceContext()).toBeUndefined();
  });

  it("joins an MCP tool span to the active host span, and the host's spans inside the handler to the tool span", async () => {
    host = registerOtel();
    const setup = (mcp = await mcpSetup());
    const outer = await inHostSpan("client turn", async (span) => {
      await setup.client.callTool({ name: "work", arguments: {} });
      return span.spanContext();
    });
    const tool = await eventually(setup.exporter, "tool_call");
    const model = await eventually(setup.exporter, "model_call");
    expect(tool.trace_id).toBe(outer.traceId);
    expect(tool.parent_span_id).toBe(outer.spanId);
    const http = hostSpan(host, "POST /v1/chat/completions");
    expect(http.spanContext().traceId).toBe(outer.traceId);
    expect(http.parentSpanContext?.spanId).toBe(tool.span_id);
    expect(model.parent_span_id).toBe(tool.span_id);
    expect(model.trace_id).toBe(outer.traceId);
  });

  it("takes traceparent, tracestate and baggage from MCP _meta into the handler's context and injects them into outgoing _meta", async () => {
    host = registerOtel();
    const setup = (mcp = await mcpSetup());
    await setup.client.callTool({
      name: "ask",
      arguments: {},
      _meta: { traceparent: TRACEPARENT, tracestate: TRACESTATE, baggage: "tenant=acme,plan=gold" },
    });
    const tool = await eventually(setup.exporter, "tool_call");
    const sampling = await eventually(setup.exporter, "sampling");
    expect(tool).toMatchObject({ trace_id: TRACE_ID, parent_span_id: PARENT_ID });
    expect(setup.seen[0]?.ours).toMatchObject({ spanId: tool.span_id, traceState: TRACESTATE });
    expect(setup.seen[0]?.otelTraceState).toBe(TRACESTATE);
    expect(setup.seen[0]?.otelBaggage).toBe("acme");
    expect(sampling.parent_span_id).toBe(tool.span_id);
    const meta = setup.sampledMeta[0] as Record<string, string>;
    expect(meta.traceparent).toBe(`00-${TRACE_ID}-${sampling.span_id}-01`);
    expect(meta.tracestate).toBe(TRACESTATE);
    expect(meta.baggage?.split(",").sort()).toEqual(["plan=gold", "tenant=acme"]);
  });
});

describe("with a failing propagator of the host's", () => {
  it("reads and writes _meta with its own W3C handling instead, never throwing", () => {
    const failing = {
      inject: () => {
        throw new Error("inject failed");
      },
      extract: () => {
        throw new Error("extract failed");
      },
      fields: () => ["traceparent"],
    };
    expect(propagation.setGlobalPropagator(failing)).toBe(true);
    const parent = extractMcpParent({
      _meta: { traceparent: TRACEPARENT, tracestate: TRACESTATE, baggage: "tenant=acme" },
    });
    expect(parent).toEqual({
      traceId: TRACE_ID,
      spanId: PARENT_ID,
      sampled: true,
      traceState: TRACESTATE,
      baggage: "tenant=acme",
    });
    const child = startSpanContext(parent);
    expect(injectMcpTraceparent({ _meta: {} }, child)._meta).toEqual({
      traceparent: `00-${TRACE_ID}-${child.spanId}-01`,
      tracestate: TRACESTATE,
      baggage: "tenant=acme",
    });
  });
});

describe("without an OpenTelemetry SDK", { timeout: 30_000 }, () => {
  it("keeps its own context: a no-op host span changes nothing, and ours is current inside", async () => {
    const exporter = new InMemoryExporter();
    const interceptor = interceptorWith(exporter);
    const event = await inHostSpan("no sdk", () =>
      interceptor.interceptModelCall({ model: "gpt-4o", durationMs: 1 }),
    );
    expect(event?.parent_span_id).toBeNull();
    const root = startSpanContext(undefined);
    const inside = await runWithTraceContext(root, async () => {
      await new Promise((resolve) => setTimeout(resolve, 1));
      return {
        current: currentTraceContext(),
        otel: trace.getSpanContext(context.active()),
        child: await interceptor.interceptModelCall({ model: "gpt-4o" }),
      };
    });
    expect(inside.current).toBe(root);
    expect(inside.otel).toBeUndefined();
    expect(inside.child).toMatchObject({ trace_id: root.traceId, parent_span_id: root.spanId });
    expect(currentTraceContext()).toBeUndefined();
  });

  it("still carries tracestate and baggage from MCP _meta to the handler and to outgoing _meta", async () => {
    const setup = (mcp = await mcpSetup());
    await setup.client.callTool({
      name: "ask",
      arguments: {},
      _meta: {
        traceparent: TRACEPARENT,
        tracestate: ` ${TRACESTATE} ,`,
        baggage: "tenant=acme;ttl=30, bad key=1",
      },
    });
    const tool = await eventually(setup.exporter, "tool_call");
    const sampling = await eventually(setup.exporter, "sampling");
    expect(tool).toMatchObject({ trace_id: TRACE_ID, parent_span_id: PARENT_ID });
    expect(setup.seen[0]?.ours).toMatchObject({
      spanId: tool.span_id,
      traceState: TRACESTATE,
      baggage: "tenant=acme;ttl=30",
    });
    expect(setup.sampledMeta[0]).toEqual({
      traceparent: `00-${TRACE_ID}-${sampling.span_id}-01`,
      tracestate: TRACESTATE,
      baggage: "tenant=acme;ttl=30",
    });
    // The event contract is unchanged: tracestate and baggage stay in the context.
    expect(Object.keys(tool.attributes).some((key) => /tracestate|baggage/.test(key))).toBe(false);
  });
});

describe("W3C tracestate and baggage in MCP _meta", () => {
  const meta = (extra: Record<string, unknown>) => ({
    _meta: { traceparent: TRACEPARENT, ...extra },
  });

  it("keeps a valid tracestate, normalised, and passes it on to child spans", () => {
    const parent = extractMcpParent(meta({ tracestate: "a=1 ,, b@vendor=x y,c=3" }));
    expect(parent).toMatchObject({ traceId: TRACE_ID, traceState: "a=1,b@vendor=x y,c=3" });
    const child = startSpanContext(parent);
    expect(child.traceState).toBe("a=1,b@vendor=x y,c=3");
    expect(startSpanContext(child).traceState).toBe("a=1,b@vendor=x y,c=3");
  });

  it.each([
    ["an upper-case key", "Congo=1"],
    ["a value with a comma-less '='", "a=b=c"],
    ["a duplicate key", "a=1,a=2"],
    ["more than 32 members", Array.from({ length: 33 }, (_, i) => `k${i}=v`).join(",")],
    ["a key over 256 characters", `a${"b".repeat(256)}=1`],
    ["a control character", "a=\u0001"],
    ["not a string", 42],
  ])("drops a tracestate with %s, keeping the traceparent", (_, tracestate) => {
    const parent = extractMcpParent(meta({ tracestate }));
    expect(parent?.traceId).toBe(TRACE_ID);
    expect(parent).not.toHaveProperty("traceState");
  });

  it("bounds a long tracestate to 512 characters, dropping long members first, then from the end", () => {
    const long = `big=${"x".repeat(200)}`;
    const small = Array.from(
      { length: 30 },
      (_, i) => `k${String(i).padStart(2, "0")}=${"v".repeat(14)}`,
    );
    const parent = extractMcpParent(
      meta({ tracestate: [small[0], long, ...small.slice(1)].join(",") }),
    );
    const kept = parent?.traceState ?? "";
    expect(kept.length).toBeLessThanOrEqual(512);
    expect(kept).not.toContain("big=");
    expect(kept.startsWith("k00=")).toBe(true);
    expect(kept.split(",").length).toBeGreaterThan(20);
  });

  it("ignores a tracestate or baggage without a valid traceparent, and never throws on junk", () => {
    expect(extractMcpParent({ _meta: { tracestate: "a=1", baggage: "b=2" } })).toBeUndefined();
    expect(extractMcpParent({ _meta: { traceparent: "junk", tracestate: "a=1" } })).toBeUndefined();
    for (const junk of [null, 1, "x", [], { _meta: [] }, { _meta: { baggage: {} } }])
      expect(() => extractMcpParent(junk)).not.toThrow();
    const parent = extractMcpParent(meta({ baggage: { tenant: "acme" }, tracestate: ["a=1"] }));
    expect(parent).toEqual({ traceId: TRACE_ID, spanId: PARENT_ID, sampled: true });
  });

  it("keeps valid baggage members, drops invalid ones, and bounds their number and size", () => {
    expect(
      extractMcpParent(meta({ baggage: 'a=1, b c=2 ,d=%20x;p;q=r,e="q",=3,f=' }))?.baggage,
    ).toBe("a=1,d=%20x;p;q=r,f=");
    const many = Array.from({ length: 80 }, (_, i) => `k${i}=v`).join(",");
    expect(extractMcpParent(meta({ baggage: many }))?.baggage?.split(",")).toHaveLength(64);
    const big = Array.from({ length: 10 }, (_, i) => `k${i}=${"v".repeat(1000)}`).join(",");
    const kept = extractMcpParent(meta({ baggage: big }))?.baggage ?? "";
    expect(Buffer.byteLength(kept)).toBeLessThanOrEqual(8192);
    expect(kept.split(",")).toHaveLength(8);
    expect(extractMcpParent(meta({ baggage: "bad key=1" }))).not.toHaveProperty("baggage");
  });

  it("injects traceparent, tracestate and baggage, dropping a stale tracestate", () => {
    const span = startSpanContext({
      traceId: TRACE_ID,
      spanId: PARENT_ID,
      sampled: true,
      traceState: "a=1",
      baggage: "tenant=acme",
    });
    const params = injectMcpTraceparent({ _meta: { progressToken: 3, tracestate: "old=1" } }, span);
    expect(params._meta).toEqual({
      progressToken: 3,
      traceparent: `00-${TRACE_ID}-${span.spanId}-01`,
      tracestate: "a=1",
      baggage: "tenant=acme",
    });
    const plain = injectMcpTraceparent(
      { _meta: { tracestate: "old=1" } },
      startSpanContext(undefined),
    );
    expect(plain._meta).not.toHaveProperty("tracestate");
    expect(plain._meta).not.toHaveProperty("baggage");
  });
});
