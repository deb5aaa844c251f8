/**
 * Trace context: W3C Trace Context ids, propagated through async code with AsyncLocalStorage and
 * across processes as a `traceparent` header, including MCP requests' `params._meta.traceparent`
 * (the OpenTelemetry MCP semantic convention).
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { randomBytes } from "node:crypto";

/** The span a piece of work belongs to. */
export interface TraceContext {
  /** 32 lower-case hex digits. */
  readonly traceId: string;
  /** 16 lower-case hex digits. */
  readonly spanId: string;
  /** The enclosing span, or null for a root span. */
  readonly parentSpanId: string | null;
  /** The W3C sampled flag; kept and passed on, not used to drop spans. */
  readonly sampled: boolean;
}

/** What a `traceparent` names: the remote parent span. */
export interface RemoteParent {
  readonly traceId: string;
  readonly spanId: string;
  readonly sampled: boolean;
}

const storage = new AsyncLocalStorage<TraceContext>();

let pool = Buffer.alloc(0);
let poolOffset = 0;

/** Random lower-case hex from a pooled buffer of crypto-random bytes; never all zeros. */
function randomHex(bytes: number): string {
  for (;;) {
    if (poolOffset + bytes > pool.length) {
      pool = randomBytes(4096);
      poolOffset = 0;
    }
    const hex = pool.toString("hex", poolOffset, poolOffset + bytes);
    poolOffset += bytes;
    if (!/^0+$/.test(hex)) return hex;
  }
}

/** A new random trace id (32 hex digits). */
export function newTraceId(): string {
  return randomHex(16);
}

/** A new random span id (16 hex digits). */
export function newSpanId(): string {
  return randomHex(8);
}

/** The context of the code running now, if any. */
export function currentTraceContext(): TraceContext | undefined {
  return storage.getStore();
}

/** Runs `fn` (and everything async it starts) inside `context`. */
export function runWithTraceContext<T>(context: TraceContext, fn: () => T): T {
  return storage.run(context, fn);
}

/**
 * A new span's context: the child of `parent` (a remote parent, or by default the current
 * context), or the root of a new trace when there is neither.
 */
export function startSpanContext(
  parent: RemoteParent | TraceContext | undefined = currentTraceContext(),
): TraceContext {
  if (!parent)
    return { traceId: newTraceId(), spanId: newSpanId(), parentSpanId: null, sampled: true };
  return {
    traceId: parent.traceId,
    spanId: newSpanId(),
    parentSpanId: parent.spanId,
    sampled: parent.sampled,
  };
}

const HEX = /^[0-9a-f]+$/;

/**
 * Parses a W3C `traceparent` (`00-<trace-id>-<parent-id>-<flags>`). Returns undefined for
 * anything invalid: wrong lengths, upper-case or non-hex digits, all-zero ids, version `ff`, or
 * extra fields in version 00. Later versions may append fields, which are ignored.
 */
export function parseTraceparent(header: unknown): RemoteParent | undefined {
  if (typeof header !== "string") return undefined;
  const parts = header.trim().split("-");
  const [version, traceId, spanId, flags] = parts;
  if (version === undefined || traceId === undefined || spanId === undefined || flags === undefined)
    return undefined;
  if (version.length !== 2 || !HEX.test(version) || version === "ff") return undefined;
  if (version === "00" && parts.length !== 4) return undefined;
  if (traceId.length !== 32 || !HEX.test(traceId) || /^0+$/.test(traceId)) return undefined;
  if (spanId.length !== 16 || !HEX.test(spanId) || /^0+$/.test(spanId)) return undefined;
  if (flags.length !== 2 || !HEX.test(flags)) return undefined;
  return { traceId, spanId, sampled: (parseInt(flags, 16) & 1) === 1 };
}

/** Formats a context as a version-00 `traceparent`, naming its span as the parent. */
export function formatTraceparent(context: TraceContext | RemoteParent): string {
  return `00-${context.traceId}-${context.spanId}-${context.sampled ? "01" : "00"}`;
}

/** The remote parent an MCP request carries in `params._meta.traceparent`, if valid. */
export function extractMcpParent(params: unknown): RemoteParent | undefined {
  if (typeof params !== "object" || params === null) return undefined;
  const meta = (params as { _meta?: unknown })._meta;
  if (typeof meta !== "object" || meta === null) return undefined;
  return parseTraceparent((meta as { traceparent?: unknown }).traceparent);
}

/**
 * Returns MCP request params with `_meta.traceparent` set to `context` (other `_meta` keys kept),
 * for requests this process sends.
 */
export function injectMcpTraceparent<P extends Record<string, unknown>>(
  params: P,
  context: TraceContext,
): P {
  const meta = typeof params._meta === "object" && params._meta !== null ? params._meta : {};
  return { ...params, _meta: { ...meta, traceparent: formatTraceparent(context) } };
}
