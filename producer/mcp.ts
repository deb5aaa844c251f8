/**
 * MCP SDK integration: one call instruments a server built with `@modelcontextprotocol/sdk`.
 *
 * It works at the JSON-RPC level, on the server's transport, so it needs no per-handler code and
 * no SDK internals: a request from the client (`tools/call`, `resources/read`, `prompts/get`)
 * opens a span when it arrives — a child of the `traceparent` in its `params._meta` when there is
 * one — and the handler runs inside that span's context, so model calls it makes are its
 * children; the server's response closes the span (an error response, or a tool result with
 * `isError`, is an error). A `sampling/createMessage` request the server sends is a model call
 * span (kind `sampling`, the model from the result, tokens estimated from the messages); its
 * `traceparent` (with the `tracestate` and `baggage` it carries on) goes to the client in `_meta`.
 * An incoming request's `_meta` `traceparent`, `tracestate` and `baggage` are continued; without
 * them, an active OpenTelemetry span of the host's is the parent (see trace.ts). Names and
 * attributes follow OpenTelemetry's MCP semantic conventions (`mcp.method.name`,
 * `jsonrpc.request.id`, `mcp.session.id`, `mcp.protocol.version`, `network.transport`,
 * `gen_ai.tool.name`, `mcp.resource.uri`, `gen_ai.prompt.name`, `rpc.response.status_code`); the
 * session id and the resource URI follow the interceptor's identifier policy
 * (`InstrumentOptions.identifiers`: hashed with the content hash key by default, left out without
 * one).
 *
 * Messages pass through unchanged (bar the added `_meta` trace fields on outgoing requests), and
 * a failure inside the instrumentation is logged by the interceptor, never raised to the host.
 */
import { spanEndMs, wallClockMs } from "./clock.js";
import { performance } from "node:perf_hooks";

import type { CallKind } from "../avro/generated.js";
import type { MCPInterceptor } from "./interceptor.js";
import {
  currentTraceContext,
  extractMcpParent,
  injectMcpTraceparent,
  runWithTraceContext,
  startSpanContext,
  type TraceContext,
} from "./trace.js";
import type { ModelCallInput } from "./types.js";

/** The transport shape the SDK uses (structural: no SDK types in our signatures). */
interface TransportLike {
  onmessage?: ((message: unknown, extra?: unknown) => void) | undefined;
  send(message: unknown, options?: unknown): Promise<void>;
  sessionId?: string | undefined;
}

/** A server to instrument: `McpServer` (high level) or `Server` (low level). */
export interface McpServerLike {
  connect(transport: never): Promise<void>;
}

/** What {@link instrumentMcpServer} returns. */
export interface McpInstrumentation {
  /** Stops instrumenting transports connected from now on. */
  detach(): void;
}

interface OpenSpan {
  readonly context: TraceContext;
  readonly kind: CallKind;
  readonly method: string;
  readonly startWall: number;
  readonly started: number;
  readonly attributes: Record<string, string>;
  readonly toolName: string | undefined;
  /** For sampling: the prompt text, to estimate tokens. */
  readonly prompt: string | undefined;
}

/**
 * Attribute names of OpenTelemetry's semantic conventions (MCP, JSON-RPC, network), as the
 * `@opentelemetry/semantic-conventions` package spells them.
 */
export const MCP_ATTRIBUTES = {
  methodName: "mcp.method.name",
  requestId: "jsonrpc.request.id",
  sessionId: "mcp.session.id",
  protocolVersion: "mcp.protocol.version",
  networkTransport: "network.transport",
  toolName: "gen_ai.tool.name",
  promptName: "gen_ai.prompt.name",
  resourceUri: "mcp.resource.uri",
  operationName: "gen_ai.operation.name",
  responseModel: "gen_ai.response.model",
  statusCode: "rpc.response.status_code",
} as const;

/** `network.transport` values: stdio is a pipe; the HTTP transports (Streamable HTTP, SSE) TCP. */
type NetworkTransport = "pipe" | "tcp";

/** What the instrumentation knows of a connection (a transport). */
interface Connection {
  /** The negotiated protocol version, from the server's `initialize` result. */
  protocolVersion: string | undefined;
  networkTransport: NetworkTransport | undefined;
  /** Ids of `initialize` requests not answered yet. */
  readonly initializing: Set<string | number>;
}

/** A protocol version as MCP spells them (`2025-06-18`), bounded: a client may send anything. */
const PROTOCOL_VERSION = /^[0-9A-Za-z][0-9A-Za-z._-]{0,31}$/;

const TRACED_REQUESTS: Readonly<Record<string, CallKind>> = {
  "tools/call": "tool_call",
  "resources/read": "resource_read",
  "prompts/get": "prompt_get",
};

interface JsonRpcRequest {
  jsonrpc: "2.0";
  id: string | number;
  method: string;
  params?: Record<string, unknown>;
}
interface JsonRpcResponse {
  jsonrpc: "2.0";
  id: string | number;
  result?: Record<string, unknown>;
  error?: { code: number; message: string };
}

/** A JSON-RPC request; one with a null id (which the SDK refuses) is not traced. */
function isRequest(message: unknown): message is JsonRpcRequest {
  if (typeof message !== "object" || message === null || !("method" in message)) return false;
  const id = (message as { id?: unknown }).id;
  return typeof id === "string" || typeof id === "number";
}

function isResponse(message: unknown): message is JsonRpcResponse {
  return (
    typeof message === "object" &&
    message !== null &&
    "id" in message &&
    !("method" in message) &&
    ("result" in message || "error" in message)
  );
}

/** Text of MCP content (a content block or an array of them). */
function contentText(content: unknown): string {
  if (Array.isArray(content)) return content.map(contentText).join("\n");
  if (
    typeof content === "object" &&
    content !== null &&
    (content as { type?: unknown }).type === "text"
  ) {
    const text = (content as { text?: unknown }).text;
    return typeof text === "string" ? text : "";
  }
  return "";
}

/**
 * Instruments an MCP server (from `@modelcontextprotocol/sdk`): the transport it is connected to
 * now, if any, and every transport it connects to later.
 */
export function instrumentMcpServer(
  server: McpServerLike,
  interceptor: MCPInterceptor,
): McpInstrumentation {
  // McpServer wraps a low-level Server in `.server`; the transport lives on that one.
  const target = ((server as { server?: unknown }).server ?? server) as {
    connect: (transport: TransportLike) => Promise<void>;
    transport?: TransportLike;
  };
  const originalConnect = target.connect.bind(target);
  let attached = true;
  target.connect = (transport: TransportLike): Promise<void> => {
    if (attached) wrapSend(transport, interceptor);
    // connect() installs its onmessage before it first awaits (the transport's start), so the
    // handler can be wrapped right after the call returns its promise.
    const connecting = originalConnect(transport);
    if (attached) wrapReceive(transport, interceptor);
    return connecting;
  };
  if (target.transport) {
    wrapSend(target.transport, interceptor);
    wrapReceive(target.transport, interceptor);
  }
  return {
    detach() {
      attached = false;
    },
  };
}

const incoming = new WeakMap<TransportLike, Map<string | number, OpenSpan>>();
const outgoing = new WeakMap<TransportLike, Map<string | number, OpenSpan>>();
const connections = new WeakMap<TransportLike, Connection>();

function connection(transport: TransportLike): Connection {
  let found = connections.get(transport);
  if (!found) {
    found = { protocolVersion: undefined, networkTransport: undefined, initializing: new Set() };
    connections.set(transport, found);
  }
  return found;
}

/**
 * How a transport carries messages: TCP when a message comes with the HTTP request it arrived
 * in (the SDK's Streamable HTTP and SSE transports pass `requestInfo`), a pipe for the SDK's
 * stdio transport (it holds its stdin and stdout); undefined when neither (in-memory, custom).
 */
function networkTransportOf(
  transport: TransportLike,
  extra: unknown,
): NetworkTransport | undefined {
  const requestInfo = (extra as { requestInfo?: unknown } | undefined)?.requestInfo;
  if (typeof requestInfo === "object" && requestInfo !== null) return "tcp";
  const stdio = transport as { _stdin?: unknown; _stdout?: unknown };
  if (
    typeof stdio._stdin === "object" &&
    stdio._stdin !== null &&
    typeof stdio._stdout === "object"
  )
    return "pipe";
  return undefined;
}

/** The `mcp-protocol-version` header of the HTTP request a message arrived in, if valid. */
function protocolVersionHeader(extra: unknown): string | undefined {
  const requestInfo = (extra as { requestInfo?: { headers?: unknown } } | undefined)?.requestInfo;
  const headers = requestInfo?.headers;
  if (typeof headers !== "object" || headers === null) return undefined;
  const value = (headers as Record<string, unknown>)["mcp-protocol-version"];
  return typeof value === "string" && PROTOCOL_VERSION.test(value) ? value : undefined;
}

/** The connection's attributes: protocol version and network transport, when known. */
function connectionAttributes(state: Connection, extra?: unknown): Record<string, string> {
  const attributes: Record<string, string> = {};
  const version = state.protocolVersion ?? protocolVersionHeader(extra);
  if (version !== undefined) attributes[MCP_ATTRIBUTES.protocolVersion] = version;
  if (state.networkTransport !== undefined)
    attributes[MCP_ATTRIBUTES.networkTransport] = state.networkTransport;
  return attributes;
}

function spans(
  map: WeakMap<TransportLike, Map<string | number, OpenSpan>>,
  transport: TransportLike,
) {
  let found = map.get(transport);
  if (!found) {
    found = new Map();
    map.set(transport, found);
  }
  return found;
}

function wrapReceive(transport: TransportLike, interceptor: MCPInterceptor): void {
  const original = transport.onmessage;
  if (!original) return;
  transport.onmessage = (message: unknown, extra?: unknown) => {
    let context: TraceContext | undefined;
    try {
      const state = connection(transport);
      state.networkTransport ??= networkTransportOf(transport, extra);
      if (isRequest(message) && message.method === "initialize") state.initializing.add(message.id);
      else if (isRequest(message) && message.method in TRACED_REQUESTS)
        context = openIncoming(transport, message, interceptor, extra);
      else if (isResponse(message)) closeOutgoing(transport, message, interceptor);
    } catch (error) {
      reportFailure(interceptor, error);
    }
    if (context) {
      runWithTraceContext(context, () => {
        original(message, extra);
      });
    } else original(message, extra);
  };
}

function wrapSend(transport: TransportLike, interceptor: MCPInterceptor): void {
  const original = transport.send.bind(transport);
  transport.send = (message: unknown, options?: unknown): Promise<void> => {
    let sent = message;
    try {
      if (isResponse(message)) {
        noteInitialized(transport, message);
        closeIncoming(transport, message, interceptor);
      } else if (isRequest(message) && message.method === "sampling/createMessage")
        sent = openOutgoing(transport, message);
    } catch (error) {
      reportFailure(interceptor, error);
    }
    return original(sent, options);
  };
}

/** Keeps the protocol version the server's `initialize` result negotiated. */
function noteInitialized(transport: TransportLike, response: JsonRpcResponse): void {
  const state = connection(transport);
  if (!state.initializing.delete(response.id)) return;
  const version = response.result?.protocolVersion;
  if (typeof version === "string" && PROTOCOL_VERSION.test(version))
    state.protocolVersion = version;
}

/** The attributes every traced request has: its method and JSON-RPC id. */
function requestAttributes(request: JsonRpcRequest): Record<string, string> {
  return {
    [MCP_ATTRIBUTES.methodName]: request.method,
    [MCP_ATTRIBUTES.requestId]: String(request.id),
  };
}

function openIncoming(
  transport: TransportLike,
  request: JsonRpcRequest,
  interceptor: MCPInterceptor,
  extra: unknown,
): TraceContext {
  const params = request.params ?? {};
  // The request's own `_meta` trace context first, else whatever is current (a host's span).
  const context = startSpanContext(extractMcpParent(params) ?? currentTraceContext());
  const attributes: Record<string, string> = {
    ...requestAttributes(request),
    ...connectionAttributes(connection(transport), extra),
  };
  // Session ids and resource URIs identify users and what they read: recorded by the
  // interceptor's identifier policy (hashed with its content hash key, as sent, or not at all).
  const sessionId =
    transport.sessionId === undefined
      ? undefined
      : interceptor.recordedIdentifier(transport.sessionId);
  if (sessionId !== undefined) attributes[MCP_ATTRIBUTES.sessionId] = sessionId;
  let toolName: string | undefined;
  if (request.method === "tools/call" && typeof params.name === "string") {
    toolName = params.name;
    attributes[MCP_ATTRIBUTES.toolName] = params.name;
    attributes[MCP_ATTRIBUTES.operationName] = "execute_tool";
  } else if (request.method === "resources/read" && typeof params.uri === "string") {
    const uri = interceptor.recordedIdentifier(params.uri);
    if (uri !== undefined) attributes[MCP_ATTRIBUTES.resourceUri] = uri;
  } else if (request.method === "prompts/get" && typeof params.name === "string") {
    attributes[MCP_ATTRIBUTES.promptName] = params.name;
  }
  spans(incoming, transport).set(request.id, {
    context,
    kind: TRACED_REQUESTS[request.method] ?? "other",
    method: request.method,
    startWall: wallClockMs(),
    started: performance.now(),
    attributes,
    toolName,
    prompt: undefined,
  });
  return context;
}

function closeIncoming(
  transport: TransportLike,
  response: JsonRpcResponse,
  interceptor: MCPInterceptor,
): void {
  const open = spans(incoming, transport);
  const span = open.get(response.id);
  if (!span) return;
  open.delete(response.id);
  const attributes = { ...span.attributes };
  let errorType: string | undefined;
  if (response.error) {
    errorType = String(response.error.code);
    attributes[MCP_ATTRIBUTES.statusCode] = String(response.error.code);
  } else if (response.result?.isError === true) {
    errorType = "tool_error";
  }
  finish(interceptor, span, attributes, {
    ...(errorType === undefined ? {} : { status: "error", errorType }),
  });
}

function openOutgoing(transport: TransportLike, request: JsonRpcRequest): JsonRpcRequest {
  const params = request.params ?? {};
  const context = startSpanContext(currentTraceContext());
  const messages = Array.isArray(params.messages)
    ? (params.messages as { content?: unknown }[])
    : [];
  const prompt = [
    typeof params.systemPrompt === "string" ? params.systemPrompt : "",
    ...messages.map((message) => contentText(message.content)),
  ]
    .filter((part) => part !== "")
    .join("\n");
  spans(outgoing, transport).set(request.id, {
    context,
    kind: "sampling",
    method: request.method,
    startWall: wallClockMs(),
    started: performance.now(),
    attributes: {
      ...requestAttributes(request),
      ...connectionAttributes(connection(transport)),
      [MCP_ATTRIBUTES.operationName]: "chat",
    },
    toolName: undefined,
    prompt,
  });
  return { ...request, params: injectMcpTraceparent(params, context) };
}

function closeOutgoing(
  transport: TransportLike,
  response: JsonRpcResponse,
  interceptor: MCPInterceptor,
): void {
  const open = spans(outgoing, transport);
  const span = open.get(response.id);
  if (!span) return;
  open.delete(response.id);
  const result = response.result ?? {};
  const model = typeof result.model === "string" ? result.model : "unknown";
  const attributes: Record<string, string> = {
    ...span.attributes,
    [MCP_ATTRIBUTES.responseModel]: model,
  };
  if (response.error) attributes[MCP_ATTRIBUTES.statusCode] = String(response.error.code);
  finish(interceptor, span, attributes, {
    model,
    ...(span.prompt === undefined ? {} : { prompt: span.prompt }),
    ...(response.error
      ? { status: "error", errorType: String(response.error.code) }
      : { response: contentText(result.content) }),
  });
}

function finish(
  interceptor: MCPInterceptor,
  span: OpenSpan,
  attributes: Record<string, string>,
  extra: Partial<ModelCallInput>,
): void {
  interceptor.recordSpan(
    {
      kind: span.kind,
      ...(span.toolName === undefined ? {} : { toolName: span.toolName }),
      startTime: span.startWall,
      endTime: spanEndMs(span.startWall, span.started, wallClockMs),
      attributes,
      ...extra,
    },
    span.context,
  );
}

function reportFailure(interceptor: MCPInterceptor, error: unknown): void {
  interceptor.recordInternalError("the MCP instrumentation failed", error);
}
