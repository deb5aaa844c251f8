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
 * `traceparent` goes to the client in `_meta`. Names and attributes follow OpenTelemetry's MCP
 * semantic conventions (`mcp.method.name`, `mcp.request.id`, `mcp.session.id`, `gen_ai.tool.name`,
 * `mcp.resource.uri`, `gen_ai.prompt.name`, `rpc.jsonrpc.error_code`); the session id and the
 * resource URI follow the interceptor's identifier policy (`InstrumentOptions.identifiers`:
 * hashed with the content hash key by default, left out without one).
 *
 * Messages pass through unchanged (bar the added `_meta.traceparent` on outgoing requests), and
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

function isRequest(message: unknown): message is JsonRpcRequest {
  return typeof message === "object" && message !== null && "method" in message && "id" in message;
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
      if (isRequest(message) && message.method in TRACED_REQUESTS)
        context = openIncoming(transport, message, interceptor);
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
      if (isResponse(message)) closeIncoming(transport, message, interceptor);
      else if (isRequest(message) && message.method === "sampling/createMessage")
        sent = openOutgoing(transport, message);
    } catch (error) {
      reportFailure(interceptor, error);
    }
    return original(sent, options);
  };
}

function openIncoming(
  transport: TransportLike,
  request: JsonRpcRequest,
  interceptor: MCPInterceptor,
): TraceContext {
  const params = request.params ?? {};
  const context = startSpanContext(extractMcpParent(params) ?? currentTraceContext());
  const attributes: Record<string, string> = {
    "mcp.method.name": request.method,
    "mcp.request.id": String(request.id),
  };
  // Session ids and resource URIs identify users and what they read: recorded by the
  // interceptor's identifier policy (hashed with its content hash key, as sent, or not at all).
  const sessionId =
    transport.sessionId === undefined
      ? undefined
      : interceptor.recordedIdentifier(transport.sessionId);
  if (sessionId !== undefined) attributes["mcp.session.id"] = sessionId;
  let toolName: string | undefined;
  if (request.method === "tools/call" && typeof params.name === "string") {
    toolName = params.name;
    attributes["gen_ai.tool.name"] = params.name;
    attributes["gen_ai.operation.name"] = "execute_tool";
  } else if (request.method === "resources/read" && typeof params.uri === "string") {
    const uri = interceptor.recordedIdentifier(params.uri);
    if (uri !== undefined) attributes["mcp.resource.uri"] = uri;
  } else if (request.method === "prompts/get" && typeof params.name === "string") {
    attributes["gen_ai.prompt.name"] = params.name;
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
    attributes["rpc.jsonrpc.error_code"] = String(response.error.code);
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
      "mcp.method.name": request.method,
      "mcp.request.id": String(request.id),
      "gen_ai.operation.name": "chat",
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
  const attributes: Record<string, string> = { ...span.attributes, "gen_ai.response.model": model };
  if (response.error) attributes["rpc.jsonrpc.error_code"] = String(response.error.code);
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
