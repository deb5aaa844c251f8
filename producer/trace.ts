/**
 * Trace context: W3C Trace Context ids, propagated through async code and across processes as
 * `traceparent`, `tracestate` and `baggage`, including MCP requests' `params._meta` (the
 * OpenTelemetry MCP semantic convention).
 *
 * This module alone decides which span is current. In a server that uses OpenTelemetry (an SDK
 * and a context manager registered through `@opentelemetry/api`, whose registry is process-wide),
 * an active OpenTelemetry span is current: our spans continue its trace as its children. Our own
 * span is made the active OpenTelemetry span while its work runs ({@link runWithTraceContext}), so
 * spans the host starts inside (an instrumented HTTP call to a model provider, say) are its
 * children. Propagators the host registered read and write `_meta`; without them, this module's
 * own W3C handling does. Without an OpenTelemetry SDK the API is a no-op and our own context
 * (AsyncLocalStorage) is all there is.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { randomBytes } from "node:crypto";

import {
  baggageEntryMetadataFromString,
  context as otelContext,
  isSpanContextValid,
  propagation,
  ROOT_CONTEXT,
  trace,
  TraceFlags,
  type Baggage,
  type BaggageEntry,
  type Context,
  type SpanContext,
  type TextMapGetter,
  type TextMapSetter,
  type TraceState,
} from "@opentelemetry/api";

/** What travels with a trace besides the ids, passed on unchanged to child spans. */
export interface Propagated {
  /** W3C `tracestate`: validated, normalised (no blank members), at most 512 characters. */
  readonly traceState?: string;
  /** W3C `baggage`: its valid members, at most 64 of them and 8192 bytes. */
  readonly baggage?: string;
}

/** The span a piece of work belongs to. */
export interface TraceContext extends Propagated {
  /** 32 lower-case hex digits. */
  readonly traceId: string;
  /** 16 lower-case hex digits. */
  readonly spanId: string;
  /**
   * The enclosing span, or null for a root span (and for a span of the host's OpenTelemetry
   * tracer, whose parent this module does not see).
   */
  readonly parentSpanId: string | null;
  /** The W3C sampled flag; kept and passed on, not used to drop spans. */
  readonly sampled: boolean;
}

/** What a `traceparent` (with its `tracestate` and `baggage`) names: the remote parent span. */
export interface RemoteParent extends Propagated {
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

/**
 * The context of the code running now, if any: an active OpenTelemetry span of the host's (one
 * started inside our span included), else our own span.
 */
export function currentTraceContext(): TraceContext | undefined {
  const own = storage.getStore();
  const active = otelContext.active();
  const span = trace.getSpanContext(active);
  if (span === undefined || !isSpanContextValid(span)) return own;
  const traceId = span.traceId.toLowerCase();
  const spanId = span.spanId.toLowerCase();
  // Our own span, made active by runWithTraceContext: ours, as it was stored.
  if (own !== undefined && own.spanId === spanId && own.traceId === traceId) return own;
  return {
    traceId,
    spanId,
    parentSpanId: null,
    sampled: isSampled(span.traceFlags),
    ...propagated(
      parseTracestate(span.traceState?.serialize()),
      baggageHeader(propagation.getBaggage(active)),
    ),
  };
}

/**
 * Runs `fn` (and everything async it starts) inside `context`; it is also the active
 * OpenTelemetry span meanwhile, so the host's spans started inside are its children.
 */
export function runWithTraceContext<T>(context: TraceContext, fn: () => T): T {
  return storage.run(context, () =>
    otelContext.with(otelContextOf(context, otelContext.active()), fn),
  );
}

/**
 * A new span's context: the child of `parent` (a remote parent, or by default the current
 * context), or the root of a new trace when there is neither. The parent's `tracestate` and
 * `baggage` pass on.
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
    ...propagated(parent.traceState, parent.baggage),
  };
}

/** Whether W3C trace flags have the sampled bit. */
function isSampled(flags: number): boolean {
  return (flags & TraceFlags.SAMPLED) !== 0;
}

/** OpenTelemetry's view of a validated `tracestate` (updated members move to the front). */
class W3CTraceState implements TraceState {
  private readonly members: readonly (readonly [string, string])[];

  constructor(header: string | readonly (readonly [string, string])[]) {
    this.members =
      typeof header === "string"
        ? header.split(",").map((member) => {
            const equals = member.indexOf("=");
            return [member.slice(0, equals), member.slice(equals + 1)] as const;
          })
        : header;
  }

  get(key: string): string | undefined {
    return this.members.find(([name]) => name === key)?.[1];
  }

  set(key: string, value: string): TraceState {
    return new W3CTraceState([[key, value], ...this.members.filter(([name]) => name !== key)]);
  }

  unset(key: string): TraceState {
    return new W3CTraceState(this.members.filter(([name]) => name !== key));
  }

  serialize(): string {
    return this.members.map(([key, value]) => `${key}=${value}`).join(",");
  }
}

/** The `traceState` and `baggage` keys, present only when there is a value. */
function propagated(traceState: string | undefined, baggage: string | undefined): Propagated {
  return {
    ...(traceState === undefined || traceState === "" ? {} : { traceState }),
    ...(baggage === undefined || baggage === "" ? {} : { baggage }),
  };
}

/** An OpenTelemetry context of `base` with `context` as its span (and its baggage, if any). */
function otelContextOf(context: TraceContext, base: Context): Context {
  const span: SpanContext = {
    traceId: context.traceId,
    spanId: context.spanId,
    traceFlags: context.sampled ? TraceFlags.SAMPLED : TraceFlags.NONE,
    isRemote: false,
    ...(context.traceState === undefined
      ? {}
      : { traceState: new W3CTraceState(context.traceState) }),
  };
  const withSpan = trace.setSpanContext(base, span);
  return context.baggage === undefined
    ? withSpan
    : propagation.setBaggage(withSpan, otelBaggage(context.baggage));
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

/** The most list-members a `tracestate` may have (W3C Trace Context). */
const TRACESTATE_MAX_MEMBERS = 32;
/** How much of a `tracestate` is kept and passed on: the 512 characters W3C asks to propagate. */
const TRACESTATE_MAX_LENGTH = 512;
/** Members longer than this go first when a `tracestate` is cut to its length. */
const TRACESTATE_LONG_MEMBER = 128;
const TRACESTATE_KEY =
  /^(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})$/;
const TRACESTATE_VALUE = /^[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$/;
/** Spaces and tabs around list-members (optional white space). */
const OWS = /^[ \t]+|[ \t]+$/g;

/**
 * Validates a W3C `tracestate` and returns it normalised (blank list-members and the white space
 * around members dropped), or undefined when it is not a string or is invalid as a whole: a
 * member that is not `key=value` with a valid key and value, a key twice, more than 32 members.
 * Over 512 characters, members over 128 characters are dropped first, then members from the end.
 */
export function parseTracestate(header: unknown): string | undefined {
  if (typeof header !== "string") return undefined;
  const members: string[] = [];
  const keys = new Set<string>();
  for (const raw of header.split(",")) {
    const member = raw.replace(OWS, "");
    if (member === "") continue;
    if (members.length === TRACESTATE_MAX_MEMBERS) return undefined;
    const equals = member.indexOf("=");
    if (equals <= 0) return undefined;
    const key = member.slice(0, equals);
    const value = member.slice(equals + 1);
    if (!TRACESTATE_KEY.test(key) || !TRACESTATE_VALUE.test(value) || keys.has(key))
      return undefined;
    keys.add(key);
    members.push(member);
  }
  let kept = members;
  const length = (list: readonly string[]): number =>
    list.reduce((sum, member) => sum + member.length, Math.max(0, list.length - 1));
  if (length(kept) > TRACESTATE_MAX_LENGTH) {
    kept = kept.filter((member) => member.length <= TRACESTATE_LONG_MEMBER);
    while (length(kept) > TRACESTATE_MAX_LENGTH) kept = kept.slice(0, -1);
  }
  return kept.length === 0 ? undefined : kept.join(",");
}

/** The most list-members `baggage` may have, and its most bytes (W3C Baggage). */
const BAGGAGE_MAX_MEMBERS = 64;
const BAGGAGE_MAX_BYTES = 8192;
/** An HTTP token (RFC 9110 `tchar`s): a baggage key, or a property's. */
const BAGGAGE_KEY = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/**
 * Baggage value octets: no space, double quote, comma, semicolon or backslash, and `%` only
 * before two hex digits.
 */
const BAGGAGE_VALUE = /^(?:[\x21\x23-\x24\x26-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]|%[0-9A-Fa-f]{2})*$/;

/** `key=value` (or, for a property, `key` alone) normalised, or undefined when invalid. */
function baggagePair(text: string, valueRequired: boolean): string | undefined {
  const equals = text.indexOf("=");
  if (equals === -1) {
    const key = text.replace(OWS, "");
    return !valueRequired && BAGGAGE_KEY.test(key) ? key : undefined;
  }
  const key = text.slice(0, equals).replace(OWS, "");
  const value = text.slice(equals + 1).replace(OWS, "");
  return BAGGAGE_KEY.test(key) && BAGGAGE_VALUE.test(value) ? `${key}=${value}` : undefined;
}

/**
 * Validates W3C `baggage` and returns its valid list-members normalised (white space around
 * members, keys and values dropped), or undefined when none is valid or it is not a string. A
 * member with an invalid key, value or property is dropped alone; members past 64, or that would
 * take the whole over 8192 bytes, are dropped too.
 */
export function parseBaggage(header: unknown): string | undefined {
  if (typeof header !== "string") return undefined;
  const members: string[] = [];
  let bytes = 0;
  for (const raw of header.split(",")) {
    if (members.length === BAGGAGE_MAX_MEMBERS) break;
    if (raw.replace(OWS, "") === "") continue;
    const [pair = "", ...properties] = raw.split(";");
    const parts = [baggagePair(pair, true)];
    for (const property of properties)
      if (property.replace(OWS, "") !== "") parts.push(baggagePair(property, false));
    if (parts.some((part) => part === undefined)) continue;
    const member = parts.join(";");
    // Values are ASCII: characters are bytes.
    const added = member.length + (members.length === 0 ? 0 : 1);
    if (bytes + added > BAGGAGE_MAX_BYTES) continue;
    members.push(member);
    bytes += added;
  }
  return members.length === 0 ? undefined : members.join(",");
}

/** OpenTelemetry baggage of a validated `baggage` header (values percent-decoded). */
function otelBaggage(header: string): Baggage {
  const entries: Record<string, BaggageEntry> = {};
  for (const member of header.split(",")) {
    const [pair = "", ...properties] = member.split(";");
    const equals = pair.indexOf("=");
    let value: string;
    try {
      value = decodeURIComponent(pair.slice(equals + 1));
    } catch {
      // A percent-encoding that is not UTF-8: the value as sent.
      value = pair.slice(equals + 1);
    }
    entries[pair.slice(0, equals)] = {
      value,
      ...(properties.length === 0
        ? {}
        : { metadata: baggageEntryMetadataFromString(properties.join(";")) }),
    };
  }
  return propagation.createBaggage(entries);
}

/** The `baggage` header of OpenTelemetry baggage (values percent-encoded), validated. */
function baggageHeader(baggage: Baggage | undefined): string | undefined {
  if (baggage === undefined) return undefined;
  const members = baggage.getAllEntries().map(([key, entry]) => {
    const metadata = entry.metadata?.toString() ?? "";
    return `${key}=${encodeURIComponent(entry.value)}${metadata === "" ? "" : `;${metadata}`}`;
  });
  return parseBaggage(members.join(","));
}

type Meta = Readonly<Record<string, unknown>>;

/** An MCP request's `params._meta`, if it is an object. */
function metaOf(params: unknown): Meta | undefined {
  if (typeof params !== "object" || params === null) return undefined;
  const meta = (params as { _meta?: unknown })._meta;
  return typeof meta === "object" && meta !== null && !Array.isArray(meta)
    ? (meta as Meta)
    : undefined;
}

const metaGetter: TextMapGetter<Meta> = {
  keys: (carrier) => Object.keys(carrier),
  get: (carrier, key) => {
    const value = carrier[key];
    return typeof value === "string" ? value : undefined;
  },
};

const metaSetter: TextMapSetter<Record<string, string>> = {
  set: (carrier, key, value) => {
    carrier[key] = value;
  },
};

/** Whether the host registered propagators (the API's default propagator has no fields). */
function hostPropagates(): boolean {
  try {
    return propagation.fields().length > 0;
  } catch {
    return false;
  }
}

/** The remote parent the host's propagators read from `_meta`, if they read a valid one. */
function extractWithHost(meta: Meta): RemoteParent | undefined {
  try {
    const extracted = propagation.extract(ROOT_CONTEXT, meta, metaGetter);
    const span = trace.getSpanContext(extracted);
    if (span === undefined || !isSpanContextValid(span)) return undefined;
    const baggage = baggageHeader(propagation.getBaggage(extracted)) ?? parseBaggage(meta.baggage);
    return {
      traceId: span.traceId.toLowerCase(),
      spanId: span.spanId.toLowerCase(),
      sampled: isSampled(span.traceFlags),
      ...propagated(parseTracestate(span.traceState?.serialize()), baggage),
    };
  } catch {
    // A failing propagator of the host's: this module's own W3C handling reads `_meta`.
    return undefined;
  }
}

/**
 * The remote parent an MCP request carries in `params._meta`: `traceparent`, with `tracestate`
 * and `baggage` when valid (invalid ones are dropped; see {@link parseTracestate} and {@link
 * parseBaggage}). Read by the host's OpenTelemetry propagators when it registered some, else by
 * this module. Undefined without a valid `traceparent` (its `tracestate` and `baggage` go with it).
 */
export function extractMcpParent(params: unknown): RemoteParent | undefined {
  const meta = metaOf(params);
  if (meta === undefined) return undefined;
  if (hostPropagates()) {
    const parent = extractWithHost(meta);
    if (parent !== undefined) return parent;
  }
  const parent = parseTraceparent(meta.traceparent);
  if (parent === undefined) return undefined;
  return { ...parent, ...propagated(parseTracestate(meta.tracestate), parseBaggage(meta.baggage)) };
}

/**
 * Returns MCP request params with `_meta.traceparent` set to `context`, and its `tracestate` and
 * `baggage` when it has them (other `_meta` keys kept; a `tracestate` there that is not the
 * context's is dropped: it belongs to another `traceparent`), for requests this process sends.
 * The host's OpenTelemetry propagators, when it registered some, write their fields too.
 */
export function injectMcpTraceparent<P extends Record<string, unknown>>(
  params: P,
  context: TraceContext,
): P {
  const { tracestate: _stale, ...kept } = metaOf(params) ?? {};
  const fields: Record<string, string> = { traceparent: formatTraceparent(context) };
  if (context.traceState !== undefined) fields.tracestate = context.traceState;
  if (context.baggage !== undefined) fields.baggage = context.baggage;
  if (hostPropagates())
    try {
      propagation.inject(otelContextOf(context, otelContext.active()), fields, metaSetter);
    } catch {
      // A failing propagator of the host's: this module's own fields stand.
    }
  return { ...params, _meta: { ...kept, ...fields } };
}
