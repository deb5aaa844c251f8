/**
 * The one mapping between ModelCallEvent fields and OpenTelemetry attributes, both ways: spans in
 * (`spanToCall`, for `mcp-observatory ingest`) and events out (`eventToSpan`, `exportRequestOf`).
 *
 * The names of the fields the Avro contract annotates (`"otel"` in avro/ModelCallEvent.avsc, as
 * `OTEL_FIELD_MAPPING`) are taken from it; the decision-pattern fields, which OpenTelemetry has no
 * convention for, are `mcpo.*` attributes defined here. Spellings follow the GenAI and MCP
 * semantic conventions (`@opentelemetry/semantic-conventions` 1.45, incubating); older and
 * OpenLLMetry spellings are read as fallbacks on the way in.
 *
 * @module
 */
import { createHash } from "node:crypto";

import {
  CALL_KIND_SYMBOLS,
  OTEL_FIELD_MAPPING,
  type CallKind,
  type ModelCallEvent,
} from "../avro/generated.js";
import type { EventOrigin } from "../producer/interceptor.js";
import type { TraceContext } from "../producer/trace.js";
import type { ReportedUsage, SpanInput } from "../producer/types.js";
import {
  SPAN_KIND,
  STATUS_CODE,
  type OtlpAnyValue,
  type OtlpKeyValue,
  type OtlpResourceSpans,
  type OtlpSpan,
  type OtlpTraceRequest,
} from "./model.js";

/** The instrumentation scope of the spans this project exports. */
export const SCOPE_NAME = "mcp-observatory";

/** The attribute name the Avro contract gives a ModelCallEvent field (its `"otel"`). */
function contractName(field: string): string {
  const name = OTEL_FIELD_MAPPING[`ModelCallEvent.${field}`];
  if (name === undefined || !/^[a-z_.]+$/.test(name))
    throw new Error(`avro/ModelCallEvent.avsc gives ${field} no OpenTelemetry attribute name`);
  return name;
}

/** Attribute names, by what they hold. */
export const ATTR = Object.freeze({
  serviceName: contractName("service"),
  serviceInstance: contractName("service_instance"),
  operationName: "gen_ai.operation.name",
  requestModel: contractName("model"),
  responseModel: "gen_ai.response.model",
  providerName: contractName("provider"),
  /** The name before gen_ai.provider.name (read as a fallback). */
  system: "gen_ai.system",
  inputTokens: contractName("prompt_tokens"),
  outputTokens: contractName("completion_tokens"),
  cacheReadTokens: "gen_ai.usage.cache_read.input_tokens",
  cacheCreationTokens: "gen_ai.usage.cache_creation.input_tokens",
  toolName: contractName("tool_name"),
  promptName: "gen_ai.prompt.name",
  inputMessages: contractName("prompt_text"),
  outputMessages: contractName("response_text"),
  mcpMethod: contractName("mcp_method"),
  resourceUri: "mcp.resource.uri",
  sessionId: "mcp.session.id",
  protocolVersion: "mcp.protocol.version",
  jsonrpcRequestId: "jsonrpc.request.id",
  rpcStatusCode: "rpc.response.status_code",
  networkTransport: "network.transport",
  errorType: contractName("error_type"),
  /** The call kind, written only when the other attributes would not tell it. */
  kind: "mcpo.kind",
});

/** A number or flag of the event and its attribute. */
interface ValueField {
  readonly field: keyof ModelCallEvent;
  readonly attribute: string;
  readonly type: "count" | "unit" | "flag" | "nullableFlag";
  /** Other spellings read on the way in (never written). */
  readonly fallbacks?: readonly string[];
}

/**
 * Token counts and the decision-pattern fields. `count`: a non-negative integer; `unit`: a number
 * in [0, 1]; `flag`: a boolean (false when absent); `nullableFlag`: a boolean or absent.
 */
export const VALUE_FIELDS: readonly ValueField[] = Object.freeze([
  {
    field: "prompt_tokens",
    attribute: ATTR.inputTokens,
    type: "count",
    fallbacks: ["gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens"],
  },
  {
    field: "completion_tokens",
    attribute: ATTR.outputTokens,
    type: "count",
    fallbacks: ["gen_ai.usage.completion_tokens", "llm.usage.completion_tokens"],
  },
  { field: "retries", attribute: "mcpo.retries", type: "count" },
  { field: "fallback_used", attribute: "mcpo.fallback_used", type: "flag" },
  { field: "confidence", attribute: "mcpo.confidence", type: "unit" },
  {
    field: "confidence_gate_threshold",
    attribute: "mcpo.confidence_gate_threshold",
    type: "unit",
  },
  { field: "high_risk_path", attribute: "mcpo.high_risk_path", type: "flag" },
  {
    field: "deterministic_fallback_triggered",
    attribute: "mcpo.deterministic_fallback_triggered",
    type: "flag",
  },
  { field: "prompt_diff_score", attribute: "mcpo.prompt_diff_score", type: "unit" },
  { field: "shadow_agreement", attribute: "mcpo.shadow_agreement", type: "nullableFlag" },
  {
    field: "is_golden_financial_scenario",
    attribute: "mcpo.golden.is_financial_scenario",
    type: "flag",
  },
  { field: "golden_scenario_passed", attribute: "mcpo.golden.passed", type: "nullableFlag" },
]);

/**
 * Cache tokens: the contract's cache_read_tokens and cache_write_tokens (part of the input
 * tokens, as gen_ai.usage.input_tokens counts them). They go in with the usage, so the library
 * prices them, and out as the semantic conventions' attributes. Audio tokens have no attribute.
 */
const CACHE_FIELDS: readonly {
  readonly field: "cache_read_tokens" | "cache_write_tokens";
  readonly attribute: string;
  readonly usage: "cacheReadTokens" | "cacheWriteTokens";
}[] = [
  { field: "cache_read_tokens", attribute: ATTR.cacheReadTokens, usage: "cacheReadTokens" },
  {
    field: "cache_write_tokens",
    attribute: ATTR.cacheCreationTokens,
    usage: "cacheWriteTokens",
  },
];

/** Names the table maps to an event field: on the way in they are not kept as attributes. */
const MAPPED = new Set<string>([
  ATTR.operationName,
  ATTR.requestModel,
  ATTR.providerName,
  ATTR.toolName,
  ATTR.errorType,
  ATTR.inputMessages,
  ATTR.outputMessages,
  ATTR.kind,
  ...VALUE_FIELDS.map((entry) => entry.attribute),
  ...CACHE_FIELDS.map((entry) => entry.attribute),
]);

/** The kind of an MCP request by its method. */
const MCP_METHOD_KINDS: Readonly<Record<string, CallKind>> = {
  "tools/call": "tool_call",
  "resources/read": "resource_read",
  "prompts/get": "prompt_get",
  "sampling/createMessage": "sampling",
};

/** GenAI operations that are model calls. */
const MODEL_OPERATIONS = new Set([
  "chat",
  "text_completion",
  "generate_content",
  "embeddings",
  "completion",
]);

/** The kind the attributes tell (without `mcpo.kind`). */
function inferredKind(get: (name: string) => OtlpAnyValue | undefined): CallKind {
  const method = textOf(get(ATTR.mcpMethod));
  if (method !== undefined) return MCP_METHOD_KINDS[method] ?? "other";
  const operation = textOf(get(ATTR.operationName));
  if (operation === "execute_tool") return "tool_call";
  if (operation !== undefined && MODEL_OPERATIONS.has(operation)) return "model_call";
  if (textOf(get(ATTR.requestModel)) !== undefined) return "model_call";
  return "other";
}

/** The GenAI operation of an event's kind, when it has one. */
function operationOf(kind: CallKind): string | undefined {
  if (kind === "model_call" || kind === "sampling") return "chat";
  if (kind === "tool_call") return "execute_tool";
  return undefined;
}

function textOf(value: OtlpAnyValue | undefined): string | undefined {
  return value !== undefined && "stringValue" in value && value.stringValue !== ""
    ? value.stringValue
    : undefined;
}

/** An attribute value as the event's string attributes hold it. */
export function stringOfValue(value: OtlpAnyValue): string {
  if ("stringValue" in value) return value.stringValue;
  if ("boolValue" in value) return String(value.boolValue);
  if ("intValue" in value) return value.intValue.toString();
  if ("doubleValue" in value) return String(value.doubleValue);
  if ("bytesValue" in value) return Buffer.from(value.bytesValue).toString("base64");
  return JSON.stringify(plain(value));
}

type Plain = null | boolean | number | string | Plain[] | { [key: string]: Plain };

function plain(value: OtlpAnyValue): Plain {
  if ("stringValue" in value) return value.stringValue;
  if ("boolValue" in value) return value.boolValue;
  if ("intValue" in value) return value.intValue.toString();
  if ("doubleValue" in value)
    return Number.isFinite(value.doubleValue) ? value.doubleValue : String(value.doubleValue);
  if ("bytesValue" in value) return Buffer.from(value.bytesValue).toString("base64");
  if ("arrayValue" in value) return value.arrayValue.values.map(plain);
  if ("kvlistValue" in value)
    return Object.fromEntries(value.kvlistValue.values.map((kv) => [kv.key, plain(kv.value)]));
  return null;
}

function hexOf(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("hex");
}

/** What the shared event builder takes for one span (see `MCPInterceptor.buildForeignEvent`). */
export interface SpanCall {
  readonly input: SpanInput;
  readonly context: TraceContext;
  readonly origin: EventOrigin;
}

/** A span mapped to a call, or why it cannot be (naming the span and the attribute). */
export type SpanMapping =
  { readonly ok: true; readonly call: SpanCall } | { readonly ok: false; readonly reason: string };

/** `span 0af7651916cd43dd "chat gpt-4o"`: how messages name a span. */
export function spanLabel(span: OtlpSpan): string {
  return `span ${hexOf(span.spanId) || "(no id)"} ${JSON.stringify(span.name)}`;
}

const NANOS_PER_MICRO = 1000n;
const INT_MAX = 2 ** 31 - 1;

/** The event id of a span: the same span sent again gets the same id. */
function eventIdOf(service: string, instance: string, traceId: string, spanId: string): string {
  const hash = createHash("sha256")
    .update(`${service}\u0000${instance}\u0000${traceId}\u0000${spanId}`)
    .digest();
  // An RFC 9562 version 8 (custom) UUID.
  hash[6] = ((hash[6] as number) & 0x0f) | 0x80;
  hash[8] = ((hash[8] as number) & 0x3f) | 0x80;
  const hex = hash.toString("hex", 0, 16);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/**
 * A span and its resource's attributes as the input of the shared event builder, or why the span
 * cannot be one: it carries no `gen_ai.*`, `mcp.*` or `mcpo.*` attribute (not a model call or MCP
 * request), its ids or times are missing or invalid, its resource has no `service.name`, or a
 * mapped attribute has a wrong type or an impossible value (a negative token count, a confidence
 * outside [0, 1]).
 */
export function spanToCall(span: OtlpSpan, resource: readonly OtlpKeyValue[]): SpanMapping {
  const label = spanLabel(span);
  const reject = (why: string): SpanMapping => ({ ok: false, reason: `${label}: ${why}` });

  const attributes = new Map<string, OtlpAnyValue>();
  for (const { key, value } of span.attributes) attributes.set(key, value);
  const get = (name: string): OtlpAnyValue | undefined => attributes.get(name);
  const resourceValue = (name: string): OtlpAnyValue | undefined =>
    resource.find((attribute) => attribute.key === name)?.value;

  let relevant = false;
  for (const key of attributes.keys())
    if (key.startsWith("gen_ai.") || key.startsWith("mcp.") || key.startsWith("mcpo.")) {
      relevant = true;
      break;
    }
  if (!relevant)
    return reject(
      "no gen_ai.*, mcp.* or mcpo.* attribute: not a model call or MCP request (semantic conventions)",
    );

  if (span.traceId.length !== 16 || span.traceId.every((byte) => byte === 0))
    return reject(`trace id must be 16 bytes, not all zero (got ${span.traceId.length} bytes)`);
  if (span.spanId.length !== 8 || span.spanId.every((byte) => byte === 0))
    return reject(`span id must be 8 bytes, not all zero (got ${span.spanId.length} bytes)`);
  // An all-zero parent (some writers send one for a root span) is no parent.
  const parent =
    span.parentSpanId === undefined || span.parentSpanId.every((byte) => byte === 0)
      ? undefined
      : span.parentSpanId;
  if (parent !== undefined && parent.length !== 8)
    return reject(`parent span id must be 8 bytes (got ${parent.length} bytes)`);
  if (span.startTimeUnixNano === 0n || span.endTimeUnixNano === 0n)
    return reject("start or end time missing");
  if (span.endTimeUnixNano < span.startTimeUnixNano) return reject("ends before it starts");

  const service = textOf(resourceValue(ATTR.serviceName));
  if (service === undefined) return reject(`its resource has no ${ATTR.serviceName}`);
  const serviceInstance =
    textOf(resourceValue(ATTR.serviceInstance)) ?? textOf(resourceValue("host.name")) ?? service;

  const strings: Partial<Record<string, string>> = {};
  for (const name of [
    ATTR.requestModel,
    ATTR.responseModel,
    ATTR.providerName,
    ATTR.system,
    ATTR.toolName,
    ATTR.errorType,
    ATTR.inputMessages,
    ATTR.outputMessages,
    ATTR.kind,
  ]) {
    const value = get(name);
    if (value === undefined) continue;
    if (!("stringValue" in value)) return reject(`${name} must be a string`);
    if (value.stringValue !== "") strings[name] = value.stringValue;
  }

  const values: Partial<Record<string, number | boolean>> = {};
  const valueOf = (entry: { readonly attribute: string; readonly type: ValueField["type"] }) => {
    const value = get(entry.attribute);
    return value === undefined ? undefined : read(entry.attribute, entry.type, value);
  };
  for (const entry of [
    ...VALUE_FIELDS,
    ...CACHE_FIELDS.map((c) => ({ ...c, type: "count" as const })),
  ]) {
    let found = valueOf(entry);
    for (const fallback of "fallbacks" in entry ? (entry.fallbacks ?? []) : []) {
      if (found !== undefined) break;
      found = valueOf({ attribute: fallback, type: entry.type });
    }
    if (typeof found === "string") return reject(found);
    if (found !== undefined) values[entry.field] = found;
  }
  if (typeof values.retries === "number" && values.retries > INT_MAX)
    return reject(`mcpo.retries must be at most ${INT_MAX}`);

  let kind = inferredKind(get);
  const declared = strings[ATTR.kind];
  if (declared !== undefined) {
    if (!(CALL_KIND_SYMBOLS as readonly string[]).includes(declared))
      return reject(`${ATTR.kind} must be one of ${CALL_KIND_SYMBOLS.join(", ")}`);
    kind = declared as CallKind;
  }

  const kept: Record<string, string> = {};
  for (const [key, value] of attributes) if (!MAPPED.has(key)) kept[key] = stringOfValue(value);

  const traceId = hexOf(span.traceId);
  const spanId = hexOf(span.spanId);
  const model = strings[ATTR.requestModel] ?? strings[ATTR.responseModel];
  const provider = strings[ATTR.providerName] ?? strings[ATTR.system];
  const errorType = strings[ATTR.errorType];
  const failed = span.status?.code === STATUS_CODE.error || errorType !== undefined;
  const usage: { -readonly [K in keyof ReportedUsage]: ReportedUsage[K] } = {};
  if (typeof values.prompt_tokens === "number") usage.inputTokens = values.prompt_tokens;
  if (typeof values.completion_tokens === "number") usage.outputTokens = values.completion_tokens;
  for (const cache of CACHE_FIELDS) {
    const count = values[cache.field];
    if (typeof count === "number") usage[cache.usage] = count;
  }
  const flag = (field: keyof ModelCallEvent): boolean | undefined => {
    const value = values[field];
    return typeof value === "boolean" ? value : undefined;
  };
  const number = (field: keyof ModelCallEvent): number | undefined => {
    const value = values[field];
    return typeof value === "number" ? value : undefined;
  };
  const optional = <K extends string, V>(key: K, value: V | undefined) =>
    (value === undefined ? {} : { [key]: value }) as { [P in K]?: V };

  const input: SpanInput = {
    kind,
    ...optional("model", model),
    ...optional("provider", provider),
    ...optional("toolName", strings[ATTR.toolName]),
    ...(Object.keys(usage).length > 0 ? { usage } : {}),
    ...optional("prompt", strings[ATTR.inputMessages]),
    ...optional("response", strings[ATTR.outputMessages]),
    ...optional("retries", number("retries")),
    ...optional("fallbackUsed", flag("fallback_used")),
    ...optional("confidence", number("confidence")),
    ...optional("confidenceGateThreshold", number("confidence_gate_threshold")),
    ...optional("highRiskPath", flag("high_risk_path")),
    ...optional("deterministicFallbackTriggered", flag("deterministic_fallback_triggered")),
    ...optional("promptDiffScore", number("prompt_diff_score")),
    ...optional("shadowAgreement", flag("shadow_agreement")),
    ...optional("isGoldenFinancialScenario", flag("is_golden_financial_scenario")),
    ...optional("goldenScenarioPassed", flag("golden_scenario_passed")),
    // Milliseconds with the microseconds as decimals: the builder's microseconds are the span's.
    startTime: Number(span.startTimeUnixNano / NANOS_PER_MICRO) / 1000,
    endTime: Number(span.endTimeUnixNano / NANOS_PER_MICRO) / 1000,
    status: failed ? "error" : "ok",
    ...optional("errorType", errorType),
    attributes: kept,
  };
  return {
    ok: true,
    call: {
      input,
      context: {
        traceId,
        spanId,
        parentSpanId: parent === undefined ? null : hexOf(parent),
        sampled: true,
      },
      origin: {
        service,
        serviceInstance,
        eventId: eventIdOf(service, serviceInstance, traceId, spanId),
      },
    },
  };
}

/** A mapped value of its type, or the reason it is not one (a string). */
function read(
  name: string,
  type: ValueField["type"],
  value: OtlpAnyValue,
): number | boolean | string {
  switch (type) {
    case "count": {
      let count: number | undefined;
      if ("intValue" in value) count = Number(value.intValue);
      else if ("doubleValue" in value) count = value.doubleValue;
      else if ("stringValue" in value && /^-?\d+$/.test(value.stringValue.trim()))
        count = Number(value.stringValue);
      if (count === undefined || !Number.isSafeInteger(count) || count < 0)
        return `${name} must be a non-negative integer (got ${stringOfValue(value)})`;
      return count;
    }
    case "unit": {
      const unit =
        "doubleValue" in value
          ? value.doubleValue
          : "intValue" in value
            ? Number(value.intValue)
            : undefined;
      if (unit === undefined || !(unit >= 0 && unit <= 1))
        return `${name} must be a number in [0, 1] (got ${stringOfValue(value)})`;
      return unit;
    }
    case "flag":
    case "nullableFlag": {
      if ("boolValue" in value) return value.boolValue;
      if ("stringValue" in value && (value.stringValue === "true" || value.stringValue === "false"))
        return value.stringValue === "true";
      return `${name} must be a boolean (got ${stringOfValue(value)})`;
    }
  }
}

const str = (key: string, value: string): OtlpKeyValue => ({ key, value: { stringValue: value } });

function hexBytes(hex: string): Uint8Array {
  return Uint8Array.from(Buffer.from(hex, "hex"));
}

/**
 * The span name the semantic conventions give an event: `{mcp.method.name} {target}` for MCP
 * requests (the tool name, prompt name or resource URI when there is one),
 * `{gen_ai.operation.name} {gen_ai.request.model}` for model calls, `execute_tool {tool}` for
 * tool calls made outside MCP.
 */
export function spanNameOf(event: ModelCallEvent): string {
  if (event.mcp_method !== null) {
    const target =
      event.tool_name ??
      event.attributes[ATTR.promptName] ??
      event.attributes[ATTR.resourceUri] ??
      undefined;
    return target === undefined || target === ""
      ? event.mcp_method
      : `${event.mcp_method} ${target}`;
  }
  const operation = event.attributes[ATTR.operationName] ?? operationOf(event.kind);
  const target = event.kind === "tool_call" ? event.tool_name : event.model;
  if (operation === undefined) return target ?? event.kind;
  return target === null ? operation : `${operation} ${target}`;
}

/**
 * An event as an OTLP span: its ids and times, the attributes of this table, and its own string
 * attributes. Status ERROR with `error.type` for errors, unset otherwise.
 */
export function eventToSpan(event: ModelCallEvent): OtlpSpan {
  const attributes = new Map<string, OtlpAnyValue>();
  for (const [key, value] of Object.entries(event.attributes))
    attributes.set(key, { stringValue: value });
  const set = (key: string, value: OtlpAnyValue): void => {
    attributes.set(key, value);
  };
  const operation = event.attributes[ATTR.operationName] ?? operationOf(event.kind);
  if (operation !== undefined) set(ATTR.operationName, { stringValue: operation });
  if (event.mcp_method !== null) set(ATTR.mcpMethod, { stringValue: event.mcp_method });
  if (event.model !== null) set(ATTR.requestModel, { stringValue: event.model });
  if (event.provider !== null) set(ATTR.providerName, { stringValue: event.provider });
  if (event.tool_name !== null) set(ATTR.toolName, { stringValue: event.tool_name });
  if (event.error_type !== null) set(ATTR.errorType, { stringValue: event.error_type });
  if (event.prompt_text !== null) set(ATTR.inputMessages, { stringValue: event.prompt_text });
  if (event.response_text !== null) set(ATTR.outputMessages, { stringValue: event.response_text });
  for (const entry of VALUE_FIELDS) {
    const value = event[entry.field];
    // Defaults are left out: absent means false (flags) and 0 (retries) on the way in.
    if (value === null) continue;
    if (entry.type === "flag" && value === false) continue;
    if (entry.field === "retries" && value === 0) continue;
    if (typeof value === "boolean") set(entry.attribute, { boolValue: value });
    else if (typeof value === "number")
      set(
        entry.attribute,
        entry.type === "count" ? { intValue: BigInt(value) } : { doubleValue: value },
      );
  }
  for (const cache of CACHE_FIELDS) {
    const count = event[cache.field];
    if (count !== null) set(cache.attribute, { intValue: BigInt(count) });
  }
  attributes.delete(ATTR.kind);
  if (inferredKind((name) => attributes.get(name)) !== event.kind)
    set(ATTR.kind, { stringValue: event.kind });

  const isMcpRequest = event.mcp_method !== null && event.kind !== "sampling";
  return {
    traceId: hexBytes(event.trace_id),
    spanId: hexBytes(event.span_id),
    ...(event.parent_span_id === null ? {} : { parentSpanId: hexBytes(event.parent_span_id) }),
    name: spanNameOf(event),
    kind: isMcpRequest
      ? SPAN_KIND.server
      : event.kind === "model_call" || event.kind === "sampling"
        ? SPAN_KIND.client
        : SPAN_KIND.internal,
    startTimeUnixNano: BigInt(event.start_time) * NANOS_PER_MICRO,
    endTimeUnixNano: BigInt(event.end_time) * NANOS_PER_MICRO,
    attributes: [...attributes].map(([key, value]) => ({ key, value })),
    ...(event.status === "error"
      ? {
          status: {
            code: STATUS_CODE.error,
            ...(event.error_type === null ? {} : { message: event.error_type }),
          },
        }
      : {}),
  };
}

/**
 * Events as one OTLP export request: a resourceSpans per service and instance (`service.name`,
 * `service.instance.id`), each with one scope, `mcp-observatory`.
 */
export function exportRequestOf(events: readonly ModelCallEvent[]): OtlpTraceRequest {
  const groups = new Map<string, { service: string; instance: string; spans: OtlpSpan[] }>();
  for (const event of events) {
    const key = `${event.service}\u0000${event.service_instance}`;
    let group = groups.get(key);
    if (!group) {
      group = { service: event.service, instance: event.service_instance, spans: [] };
      groups.set(key, group);
    }
    group.spans.push(eventToSpan(event));
  }
  const resourceSpans: OtlpResourceSpans[] = [...groups.values()].map((group) => ({
    resource: {
      attributes: [str(ATTR.serviceName, group.service), str(ATTR.serviceInstance, group.instance)],
    },
    scopeSpans: [{ scope: { name: SCOPE_NAME }, spans: group.spans }],
  }));
  return { resourceSpans };
}
