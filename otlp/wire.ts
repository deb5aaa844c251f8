/**
 * The project's own codec of the OTLP trace messages (see ./model.ts): the protobuf wire format
 * and OTLP/JSON, both ways. No protobuf library at run time.
 *
 * Decoding is bounded: every length is checked against the bytes left before anything is read,
 * nesting (AnyValue arrays and lists inside each other) is limited to {@link MAX_NESTING}, wire
 * types must be the field's, and unknown fields are skipped by their wire type. A hostile body
 * fails at once with an {@link OtlpDecodeError} that says what and where (the message and the
 * byte offset), never hangs, and never allocates more than the body's size.
 *
 * @module
 */
import { ObservatoryError } from "../config/errors.js";
import type {
  OtlpAnyValue,
  OtlpKeyValue,
  OtlpPartialSuccess,
  OtlpResourceSpans,
  OtlpScope,
  OtlpScopeSpans,
  OtlpSpan,
  OtlpStatus,
  OtlpTraceRequest,
  OtlpTraceResponse,
} from "./model.js";

/** How deep AnyValue arrays and key-value lists may nest inside an attribute. */
export const MAX_NESTING = 32;

/** A body that is not a valid OTLP message: what was wrong, and where. */
export class OtlpDecodeError extends ObservatoryError {
  constructor(message: string) {
    super("OTLP_UNDECODABLE", message);
    this.name = "OtlpDecodeError";
  }
}

// Wire types.
const VARINT = 0;
const I64 = 1;
const LEN = 2;
const I32 = 5;
const WIRE_NAMES = ["varint", "64-bit", "length-delimited", "group start", "group end", "32-bit"];

const utf8Decoder = new TextDecoder("utf-8", { fatal: true });
const utf8Encoder = new TextEncoder();

/** A cursor over a body; `end` is the end of the message being read. */
class Reader {
  pos = 0;
  constructor(readonly bytes: Uint8Array) {}

  fail(what: string, at = this.pos): never {
    throw new OtlpDecodeError(`${what} (at byte ${at} of ${this.bytes.length})`);
  }

  /** A varint of at most 64 bits as a bigint (two's complement: the caller reads it signed or not). */
  varint64(end: number): bigint {
    const start = this.pos;
    let result = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (this.pos >= end) this.fail("truncated varint", start);
      const byte = this.bytes[this.pos++] as number;
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return BigInt.asUintN(64, result);
    }
    return this.fail("varint longer than 10 bytes", start);
  }

  /** A varint that must fit a safe integer (tags, lengths, enums, bools). */
  varint(end: number): number {
    const start = this.pos;
    let result = 0;
    let factor = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= end) this.fail("truncated varint", start);
      const byte = this.bytes[this.pos++] as number;
      result += (byte & 0x7f) * factor;
      if ((byte & 0x80) === 0) {
        if (result > Number.MAX_SAFE_INTEGER) this.fail("varint out of range", start);
        return result;
      }
      factor *= 128;
    }
    return this.fail("varint longer than 10 bytes", start);
  }

  /** The end of a length-delimited field that starts here, checked against `end`. */
  lengthEnd(end: number, what: string): number {
    const at = this.pos;
    const length = this.varint(end);
    if (length > end - this.pos)
      this.fail(`${what}: length ${length} runs past the end of its message`, at);
    return this.pos + length;
  }

  bytesField(end: number, what: string): Uint8Array {
    const stop = this.lengthEnd(end, what);
    // A copy (never a view that would keep the whole body alive), a plain Uint8Array.
    const value = new Uint8Array(this.bytes.subarray(this.pos, stop));
    this.pos = stop;
    return value;
  }

  stringField(end: number, what: string): string {
    const at = this.pos;
    const stop = this.lengthEnd(end, what);
    try {
      return utf8Decoder.decode(this.bytes.subarray(this.pos, stop));
    } catch {
      return this.fail(`${what}: not valid UTF-8`, at);
    } finally {
      this.pos = stop;
    }
  }

  fixed64(end: number, what: string): bigint {
    if (end - this.pos < 8) this.fail(`${what}: truncated 64-bit value`);
    const view = new DataView(this.bytes.buffer, this.bytes.byteOffset + this.pos, 8);
    this.pos += 8;
    return view.getBigUint64(0, true);
  }

  double(end: number, what: string): number {
    if (end - this.pos < 8) this.fail(`${what}: truncated double`);
    const view = new DataView(this.bytes.buffer, this.bytes.byteOffset + this.pos, 8);
    this.pos += 8;
    return view.getFloat64(0, true);
  }

  /** Skips a field of an unknown number. */
  skip(wireType: number, end: number, at: number): void {
    switch (wireType) {
      case VARINT:
        this.varint64(end);
        return;
      case I64:
        if (end - this.pos < 8) this.fail("truncated 64-bit field", at);
        this.pos += 8;
        return;
      case LEN:
        this.pos = this.lengthEnd(end, "unknown field");
        return;
      case I32:
        if (end - this.pos < 4) this.fail("truncated 32-bit field", at);
        this.pos += 4;
        return;
      default:
        this.fail(`unsupported wire type ${wireType}`, at);
    }
  }

  /**
   * Reads the fields of a message up to `end`: `field` handles a known number (returns false for
   * an unknown one, which is skipped).
   */
  fields(
    end: number,
    message: string,
    field: (number: number, wireType: number, at: number) => boolean,
  ): void {
    while (this.pos < end) {
      const at = this.pos;
      const tag = this.varint(end);
      const number = Math.floor(tag / 8);
      const wireType = tag % 8;
      if (number === 0) this.fail(`${message}: field number 0`, at);
      if (!field(number, wireType, at)) this.skip(wireType, end, at);
    }
    if (this.pos !== end) this.fail(`${message}: runs past its end`);
  }

  expect(wireType: number, expected: number, what: string, at: number): void {
    if (wireType !== expected)
      this.fail(
        `${what}: wire type ${WIRE_NAMES[wireType] ?? wireType}, expected ${WIRE_NAMES[expected]}`,
        at,
      );
  }
}

function anyValue(reader: Reader, end: number, depth: number): OtlpAnyValue {
  if (depth > MAX_NESTING) reader.fail(`attribute values nested deeper than ${MAX_NESTING} levels`);
  let value: OtlpAnyValue = {};
  reader.fields(end, "AnyValue", (number, wireType, at) => {
    switch (number) {
      case 1:
        reader.expect(wireType, LEN, "AnyValue.string_value", at);
        value = { stringValue: reader.stringField(end, "AnyValue.string_value") };
        return true;
      case 2:
        reader.expect(wireType, VARINT, "AnyValue.bool_value", at);
        value = { boolValue: reader.varint64(end) !== 0n };
        return true;
      case 3:
        reader.expect(wireType, VARINT, "AnyValue.int_value", at);
        value = { intValue: BigInt.asIntN(64, reader.varint64(end)) };
        return true;
      case 4:
        reader.expect(wireType, I64, "AnyValue.double_value", at);
        value = { doubleValue: reader.double(end, "AnyValue.double_value") };
        return true;
      case 5: {
        reader.expect(wireType, LEN, "AnyValue.array_value", at);
        const stop = reader.lengthEnd(end, "AnyValue.array_value");
        const values: OtlpAnyValue[] = [];
        reader.fields(stop, "ArrayValue", (inner, innerType, innerAt) => {
          if (inner !== 1) return false;
          reader.expect(innerType, LEN, "ArrayValue.values", innerAt);
          const valueEnd = reader.lengthEnd(stop, "ArrayValue.values");
          values.push(anyValue(reader, valueEnd, depth + 1));
          return true;
        });
        value = { arrayValue: { values } };
        return true;
      }
      case 6: {
        reader.expect(wireType, LEN, "AnyValue.kvlist_value", at);
        const stop = reader.lengthEnd(end, "AnyValue.kvlist_value");
        const values: OtlpKeyValue[] = [];
        reader.fields(stop, "KeyValueList", (inner, innerType, innerAt) => {
          if (inner !== 1) return false;
          reader.expect(innerType, LEN, "KeyValueList.values", innerAt);
          values.push(keyValue(reader, reader.lengthEnd(stop, "KeyValueList.values"), depth + 1));
          return true;
        });
        value = { kvlistValue: { values } };
        return true;
      }
      case 7:
        reader.expect(wireType, LEN, "AnyValue.bytes_value", at);
        value = { bytesValue: reader.bytesField(end, "AnyValue.bytes_value") };
        return true;
      default:
        return false;
    }
  });
  return value;
}

function keyValue(reader: Reader, end: number, depth: number): OtlpKeyValue {
  let key = "";
  let value: OtlpAnyValue = {};
  reader.fields(end, "KeyValue", (number, wireType, at) => {
    if (number === 1) {
      reader.expect(wireType, LEN, "KeyValue.key", at);
      key = reader.stringField(end, "KeyValue.key");
      return true;
    }
    if (number === 2) {
      reader.expect(wireType, LEN, "KeyValue.value", at);
      value = anyValue(reader, reader.lengthEnd(end, "KeyValue.value"), depth + 1);
      return true;
    }
    return false;
  });
  return { key, value };
}

/** Reads a repeated KeyValue field's element into `into`. */
function attribute(
  reader: Reader,
  end: number,
  wireType: number,
  at: number,
  what: string,
  into: OtlpKeyValue[],
): true {
  reader.expect(wireType, LEN, what, at);
  into.push(keyValue(reader, reader.lengthEnd(end, what), 0));
  return true;
}

function status(reader: Reader, end: number): OtlpStatus {
  let code = 0;
  let message: string | undefined;
  reader.fields(end, "Status", (number, wireType, at) => {
    if (number === 2) {
      reader.expect(wireType, LEN, "Status.message", at);
      message = reader.stringField(end, "Status.message");
      return true;
    }
    if (number === 3) {
      reader.expect(wireType, VARINT, "Status.code", at);
      code = Number(BigInt.asIntN(32, reader.varint64(end)));
      return true;
    }
    return false;
  });
  return message === undefined || message === "" ? { code } : { code, message };
}

function span(reader: Reader, end: number): OtlpSpan {
  let traceId: Uint8Array = new Uint8Array(0);
  let spanId: Uint8Array = new Uint8Array(0);
  let parentSpanId: Uint8Array | undefined;
  let traceState: string | undefined;
  let name = "";
  let kind = 0;
  let startTimeUnixNano = 0n;
  let endTimeUnixNano = 0n;
  const attributes: OtlpKeyValue[] = [];
  let spanStatus: OtlpStatus | undefined;
  reader.fields(end, "Span", (number, wireType, at) => {
    switch (number) {
      case 1:
        reader.expect(wireType, LEN, "Span.trace_id", at);
        traceId = reader.bytesField(end, "Span.trace_id");
        return true;
      case 2:
        reader.expect(wireType, LEN, "Span.span_id", at);
        spanId = reader.bytesField(end, "Span.span_id");
        return true;
      case 3:
        reader.expect(wireType, LEN, "Span.trace_state", at);
        traceState = reader.stringField(end, "Span.trace_state");
        return true;
      case 4:
        reader.expect(wireType, LEN, "Span.parent_span_id", at);
        parentSpanId = reader.bytesField(end, "Span.parent_span_id");
        return true;
      case 5:
        reader.expect(wireType, LEN, "Span.name", at);
        name = reader.stringField(end, "Span.name");
        return true;
      case 6:
        reader.expect(wireType, VARINT, "Span.kind", at);
        kind = Number(BigInt.asIntN(32, reader.varint64(end)));
        return true;
      case 7:
        reader.expect(wireType, I64, "Span.start_time_unix_nano", at);
        startTimeUnixNano = reader.fixed64(end, "Span.start_time_unix_nano");
        return true;
      case 8:
        reader.expect(wireType, I64, "Span.end_time_unix_nano", at);
        endTimeUnixNano = reader.fixed64(end, "Span.end_time_unix_nano");
        return true;
      case 9:
        return attribute(reader, end, wireType, at, "Span.attributes", attributes);
      case 15:
        reader.expect(wireType, LEN, "Span.status", at);
        spanStatus = status(reader, reader.lengthEnd(end, "Span.status"));
        return true;
      default:
        return false;
    }
  });
  return {
    traceId,
    spanId,
    ...(parentSpanId === undefined || parentSpanId.length === 0 ? {} : { parentSpanId }),
    ...(traceState === undefined || traceState === "" ? {} : { traceState }),
    name,
    kind,
    startTimeUnixNano,
    endTimeUnixNano,
    attributes,
    ...(spanStatus === undefined ? {} : { status: spanStatus }),
  };
}

function scope(reader: Reader, end: number): OtlpScope {
  let name = "";
  let version: string | undefined;
  reader.fields(end, "InstrumentationScope", (number, wireType, at) => {
    if (number === 1) {
      reader.expect(wireType, LEN, "InstrumentationScope.name", at);
      name = reader.stringField(end, "InstrumentationScope.name");
      return true;
    }
    if (number === 2) {
      reader.expect(wireType, LEN, "InstrumentationScope.version", at);
      version = reader.stringField(end, "InstrumentationScope.version");
      return true;
    }
    return false;
  });
  return version === undefined || version === "" ? { name } : { name, version };
}

function scopeSpans(reader: Reader, end: number): OtlpScopeSpans {
  let found: OtlpScope | undefined;
  const spans: OtlpSpan[] = [];
  reader.fields(end, "ScopeSpans", (number, wireType, at) => {
    if (number === 1) {
      reader.expect(wireType, LEN, "ScopeSpans.scope", at);
      found = scope(reader, reader.lengthEnd(end, "ScopeSpans.scope"));
      return true;
    }
    if (number === 2) {
      reader.expect(wireType, LEN, "ScopeSpans.spans", at);
      spans.push(span(reader, reader.lengthEnd(end, "ScopeSpans.spans")));
      return true;
    }
    return false;
  });
  return found === undefined ? { spans } : { scope: found, spans };
}

function resourceSpans(reader: Reader, end: number): OtlpResourceSpans {
  let resource: OtlpKeyValue[] | undefined;
  const scopes: OtlpScopeSpans[] = [];
  let schemaUrl: string | undefined;
  reader.fields(end, "ResourceSpans", (number, wireType, at) => {
    if (number === 1) {
      reader.expect(wireType, LEN, "ResourceSpans.resource", at);
      const stop = reader.lengthEnd(end, "ResourceSpans.resource");
      const attributes: OtlpKeyValue[] = resource ?? [];
      reader.fields(stop, "Resource", (inner, innerType, innerAt) =>
        inner === 1
          ? attribute(reader, stop, innerType, innerAt, "Resource.attributes", attributes)
          : false,
      );
      resource = attributes;
      return true;
    }
    if (number === 2) {
      reader.expect(wireType, LEN, "ResourceSpans.scope_spans", at);
      scopes.push(scopeSpans(reader, reader.lengthEnd(end, "ResourceSpans.scope_spans")));
      return true;
    }
    if (number === 3) {
      reader.expect(wireType, LEN, "ResourceSpans.schema_url", at);
      schemaUrl = reader.stringField(end, "ResourceSpans.schema_url");
      return true;
    }
    return false;
  });
  return {
    ...(resource === undefined ? {} : { resource: { attributes: resource } }),
    scopeSpans: scopes,
    ...(schemaUrl === undefined || schemaUrl === "" ? {} : { schemaUrl }),
  };
}

/**
 * An `ExportTraceServiceRequest` from its protobuf encoding.
 *
 * @throws {OtlpDecodeError} saying what is wrong and at which byte.
 */
export function decodeTraceRequest(body: Uint8Array): OtlpTraceRequest {
  const reader = new Reader(body);
  const resources: OtlpResourceSpans[] = [];
  reader.fields(body.length, "ExportTraceServiceRequest", (number, wireType, at) => {
    if (number !== 1) return false;
    reader.expect(wireType, LEN, "ExportTraceServiceRequest.resource_spans", at);
    resources.push(
      resourceSpans(
        reader,
        reader.lengthEnd(body.length, "ExportTraceServiceRequest.resource_spans"),
      ),
    );
    return true;
  });
  return { resourceSpans: resources };
}

/**
 * An `ExportTraceServiceResponse` from its protobuf encoding.
 *
 * @throws {OtlpDecodeError} saying what is wrong and at which byte.
 */
export function decodeTraceResponse(body: Uint8Array): OtlpTraceResponse {
  const reader = new Reader(body);
  let partial: OtlpPartialSuccess | undefined;
  reader.fields(body.length, "ExportTraceServiceResponse", (number, wireType, at) => {
    if (number !== 1) return false;
    reader.expect(wireType, LEN, "ExportTraceServiceResponse.partial_success", at);
    const end = reader.lengthEnd(body.length, "ExportTraceServiceResponse.partial_success");
    let rejectedSpans = 0n;
    let errorMessage = "";
    reader.fields(end, "ExportTracePartialSuccess", (inner, innerType, innerAt) => {
      if (inner === 1) {
        reader.expect(innerType, VARINT, "ExportTracePartialSuccess.rejected_spans", innerAt);
        rejectedSpans = BigInt.asIntN(64, reader.varint64(end));
        return true;
      }
      if (inner === 2) {
        reader.expect(innerType, LEN, "ExportTracePartialSuccess.error_message", innerAt);
        errorMessage = reader.stringField(end, "ExportTracePartialSuccess.error_message");
        return true;
      }
      return false;
    });
    partial = { rejectedSpans, errorMessage };
    return true;
  });
  return partial === undefined ? {} : { partialSuccess: partial };
}

// ---------------------------------------------------------------------------------------------
// Encoding

/** A growable byte buffer with the protobuf primitives; nested messages by length prefix. */
class Writer {
  private buffer = new Uint8Array(256);
  private length = 0;

  private room(bytes: number): void {
    if (this.length + bytes <= this.buffer.length) return;
    let size = this.buffer.length * 2;
    while (size < this.length + bytes) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buffer.subarray(0, this.length));
    this.buffer = next;
  }

  varint(value: number): void {
    this.room(10);
    let rest = value;
    while (rest >= 0x80) {
      this.buffer[this.length++] = (rest % 128) | 0x80;
      rest = Math.floor(rest / 128);
    }
    this.buffer[this.length++] = rest;
  }

  varint64(value: bigint): void {
    this.room(10);
    let rest = BigInt.asUintN(64, value);
    while (rest >= 0x80n) {
      this.buffer[this.length++] = Number(rest & 0x7fn) | 0x80;
      rest >>= 7n;
    }
    this.buffer[this.length++] = Number(rest);
  }

  tag(number: number, wireType: number): void {
    this.varint(number * 8 + wireType);
  }

  bytes(number: number, value: Uint8Array): void {
    this.tag(number, LEN);
    this.varint(value.length);
    this.room(value.length);
    this.buffer.set(value, this.length);
    this.length += value.length;
  }

  string(number: number, value: string): void {
    this.bytes(number, utf8Encoder.encode(value));
  }

  fixed64(number: number, value: bigint): void {
    this.tag(number, I64);
    this.room(8);
    new DataView(this.buffer.buffer, this.length, 8).setBigUint64(
      0,
      BigInt.asUintN(64, value),
      true,
    );
    this.length += 8;
  }

  double(number: number, value: number): void {
    this.tag(number, I64);
    this.room(8);
    new DataView(this.buffer.buffer, this.length, 8).setFloat64(0, value, true);
    this.length += 8;
  }

  /** A nested message: written by `body` into a writer of its own, then length-prefixed. */
  message(number: number, body: (writer: Writer) => void): void {
    const inner = new Writer();
    body(inner);
    this.bytes(number, inner.finish());
  }

  finish(): Uint8Array {
    return this.buffer.slice(0, this.length);
  }
}

function writeAnyValue(writer: Writer, value: OtlpAnyValue): void {
  if ("stringValue" in value) writer.string(1, value.stringValue);
  else if ("boolValue" in value) {
    writer.tag(2, VARINT);
    writer.varint(value.boolValue ? 1 : 0);
  } else if ("intValue" in value) {
    writer.tag(3, VARINT);
    writer.varint64(value.intValue);
  } else if ("doubleValue" in value) writer.double(4, value.doubleValue);
  else if ("arrayValue" in value)
    writer.message(5, (array) => {
      for (const item of value.arrayValue.values)
        array.message(1, (inner) => {
          writeAnyValue(inner, item);
        });
    });
  else if ("kvlistValue" in value)
    writer.message(6, (list) => {
      for (const item of value.kvlistValue.values)
        list.message(1, (inner) => {
          writeKeyValue(inner, item);
        });
    });
  else if ("bytesValue" in value) writer.bytes(7, value.bytesValue);
}

function writeKeyValue(writer: Writer, keyValue: OtlpKeyValue): void {
  if (keyValue.key !== "") writer.string(1, keyValue.key);
  writer.message(2, (inner) => {
    writeAnyValue(inner, keyValue.value);
  });
}

function writeAttributes(writer: Writer, number: number, attributes: readonly OtlpKeyValue[]) {
  for (const attribute of attributes)
    writer.message(number, (inner) => {
      writeKeyValue(inner, attribute);
    });
}

function writeSpan(writer: Writer, value: OtlpSpan): void {
  if (value.traceId.length > 0) writer.bytes(1, value.traceId);
  if (value.spanId.length > 0) writer.bytes(2, value.spanId);
  if (value.traceState !== undefined && value.traceState !== "") writer.string(3, value.traceState);
  if (value.parentSpanId !== undefined && value.parentSpanId.length > 0)
    writer.bytes(4, value.parentSpanId);
  if (value.name !== "") writer.string(5, value.name);
  if (value.kind !== 0) {
    writer.tag(6, VARINT);
    writer.varint64(BigInt(value.kind));
  }
  if (value.startTimeUnixNano !== 0n) writer.fixed64(7, value.startTimeUnixNano);
  if (value.endTimeUnixNano !== 0n) writer.fixed64(8, value.endTimeUnixNano);
  writeAttributes(writer, 9, value.attributes);
  const spanStatus = value.status;
  if (spanStatus !== undefined)
    writer.message(15, (inner) => {
      if (spanStatus.message !== undefined && spanStatus.message !== "")
        inner.string(2, spanStatus.message);
      if (spanStatus.code !== 0) {
        inner.tag(3, VARINT);
        inner.varint64(BigInt(spanStatus.code));
      }
    });
}

/** The protobuf encoding of an `ExportTraceServiceRequest`. */
export function encodeTraceRequest(request: OtlpTraceRequest): Uint8Array {
  const writer = new Writer();
  for (const resource of request.resourceSpans)
    writer.message(1, (rs) => {
      const attributes = resource.resource?.attributes;
      if (attributes !== undefined)
        rs.message(1, (inner) => {
          writeAttributes(inner, 1, attributes);
        });
      for (const scoped of resource.scopeSpans)
        rs.message(2, (ss) => {
          const found = scoped.scope;
          if (found !== undefined)
            ss.message(1, (inner) => {
              if (found.name !== "") inner.string(1, found.name);
              if (found.version !== undefined && found.version !== "")
                inner.string(2, found.version);
            });
          for (const item of scoped.spans)
            ss.message(2, (inner) => {
              writeSpan(inner, item);
            });
        });
      if (resource.schemaUrl !== undefined && resource.schemaUrl !== "")
        rs.string(3, resource.schemaUrl);
    });
  return writer.finish();
}

/** The protobuf encoding of an `ExportTraceServiceResponse`. */
export function encodeTraceResponse(response: OtlpTraceResponse): Uint8Array {
  const writer = new Writer();
  const partial = response.partialSuccess;
  if (partial !== undefined)
    writer.message(1, (inner) => {
      if (partial.rejectedSpans !== 0n) {
        inner.tag(1, VARINT);
        inner.varint64(partial.rejectedSpans);
      }
      if (partial.errorMessage !== "") inner.string(2, partial.errorMessage);
    });
  return writer.finish();
}

// ---------------------------------------------------------------------------------------------
// OTLP/JSON: the protobuf JSON mapping with OTLP's exceptions (trace and span ids as hex, enums
// as integers). Keys are written lowerCamelCase; both lowerCamelCase and the proto's snake_case
// names are read. 64-bit integers are written as decimal strings and read from strings or
// numbers; unknown keys are ignored.

type Json = null | boolean | number | string | readonly Json[] | { readonly [key: string]: Json };
type JsonObject = { readonly [key: string]: Json };

function fail(path: string, what: string): never {
  throw new OtlpDecodeError(`${path}: ${what}`);
}

function snakeOf(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** The value of a field by its lowerCamelCase name or its snake_case one. */
function field(object: JsonObject, key: string): Json | undefined {
  const value = object[key] ?? object[snakeOf(key)];
  return value === null ? undefined : value;
}

function objectAt(value: Json | undefined, path: string): JsonObject | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "object" || value === null || Array.isArray(value))
    fail(path, "expected an object");
  return value as JsonObject;
}

function arrayAt(value: Json | undefined, path: string): readonly Json[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) fail(path, "expected an array");
  return value as readonly Json[];
}

function stringAt(value: Json | undefined, path: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string") fail(path, "expected a string");
  return value;
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_MAX = 2n ** 64n - 1n;

function int64At(value: Json | undefined, path: string, unsigned: boolean): bigint {
  if (value === undefined) return 0n;
  let result: bigint;
  if (typeof value === "number") {
    if (!Number.isInteger(value)) fail(path, `expected an integer (got ${value})`);
    result = BigInt(value);
  } else if (typeof value === "string" && /^-?\d{1,20}$/.test(value)) result = BigInt(value);
  else return fail(path, "expected an integer or a decimal string");
  // A fixed64 written signed (some writers do) is read as its two's complement.
  if (result < INT64_MIN || result > (unsigned ? UINT64_MAX : INT64_MAX))
    fail(path, `out of the range of a ${unsigned ? "fixed64" : "int64"}`);
  return unsigned ? BigInt.asUintN(64, result) : result;
}

function enumAt(value: Json | undefined, path: string, names: readonly string[]): number {
  if (value === undefined) return 0;
  if (typeof value === "number" && Number.isInteger(value) && Math.abs(value) <= 2 ** 31)
    return value;
  if (typeof value === "string") {
    const index = names.indexOf(value);
    if (index !== -1) return index;
  }
  return fail(path, `expected an enum's integer value`);
}

const SPAN_KINDS = [
  "SPAN_KIND_UNSPECIFIED",
  "SPAN_KIND_INTERNAL",
  "SPAN_KIND_SERVER",
  "SPAN_KIND_CLIENT",
  "SPAN_KIND_PRODUCER",
  "SPAN_KIND_CONSUMER",
];
const STATUS_CODES = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];

function hexAt(value: Json | undefined, path: string): Uint8Array | undefined {
  const text = stringAt(value, path);
  if (text === undefined || text === "") return undefined;
  if (text.length % 2 !== 0 || !/^[0-9a-fA-F]+$/.test(text))
    fail(path, "expected hex digits (OTLP/JSON writes ids as hex)");
  return Uint8Array.from(Buffer.from(text, "hex"));
}

function base64At(value: Json | undefined, path: string): Uint8Array {
  const text = stringAt(value, path) ?? "";
  if (!/^[A-Za-z0-9+/\-_]*={0,2}$/.test(text)) fail(path, "expected base64");
  return Uint8Array.from(
    Buffer.from(text, text.includes("-") || text.includes("_") ? "base64url" : "base64"),
  );
}

function doubleAt(value: Json | undefined, path: string): number {
  if (typeof value === "number") return value;
  if (value === "NaN") return Number.NaN;
  if (value === "Infinity") return Number.POSITIVE_INFINITY;
  if (value === "-Infinity") return Number.NEGATIVE_INFINITY;
  if (typeof value === "string" && value.trim() !== "" && Number.isFinite(Number(value)))
    return Number(value);
  return fail(path, "expected a number");
}

function anyValueFromJson(json: Json | undefined, path: string, depth: number): OtlpAnyValue {
  if (depth > MAX_NESTING) fail(path, `attribute values nested deeper than ${MAX_NESTING} levels`);
  const object = objectAt(json, path);
  if (object === undefined) return {};
  let value: Json | undefined;
  if ((value = field(object, "stringValue")) !== undefined)
    return { stringValue: stringAt(value, `${path}.stringValue`) ?? "" };
  if ((value = field(object, "boolValue")) !== undefined) {
    if (typeof value !== "boolean") fail(`${path}.boolValue`, "expected true or false");
    return { boolValue: value };
  }
  if ((value = field(object, "intValue")) !== undefined)
    return { intValue: int64At(value, `${path}.intValue`, false) };
  if ((value = field(object, "doubleValue")) !== undefined)
    return { doubleValue: doubleAt(value, `${path}.doubleValue`) };
  if ((value = field(object, "bytesValue")) !== undefined)
    return { bytesValue: base64At(value, `${path}.bytesValue`) };
  if ((value = field(object, "arrayValue")) !== undefined) {
    const array = objectAt(value, `${path}.arrayValue`) ?? {};
    return {
      arrayValue: {
        values: arrayAt(field(array, "values"), `${path}.arrayValue.values`).map((item, i) =>
          anyValueFromJson(item, `${path}.arrayValue.values[${i}]`, depth + 1),
        ),
      },
    };
  }
  if ((value = field(object, "kvlistValue")) !== undefined) {
    const list = objectAt(value, `${path}.kvlistValue`) ?? {};
    return {
      kvlistValue: {
        values: arrayAt(field(list, "values"), `${path}.kvlistValue.values`).map((item, i) =>
          keyValueFromJson(item, `${path}.kvlistValue.values[${i}]`, depth + 1),
        ),
      },
    };
  }
  return {};
}

function keyValueFromJson(json: Json, path: string, depth: number): OtlpKeyValue {
  const object = objectAt(json, path) ?? {};
  return {
    key: stringAt(field(object, "key"), `${path}.key`) ?? "",
    value: anyValueFromJson(field(object, "value"), `${path}.value`, depth + 1),
  };
}

function attributesFromJson(json: Json | undefined, path: string): OtlpKeyValue[] {
  return arrayAt(json, path).map((item, i) => keyValueFromJson(item, `${path}[${i}]`, 0));
}

function spanFromJson(json: Json, path: string): OtlpSpan {
  const object = objectAt(json, path) ?? {};
  const parentSpanId = hexAt(field(object, "parentSpanId"), `${path}.parentSpanId`);
  const traceState = stringAt(field(object, "traceState"), `${path}.traceState`);
  const statusObject = objectAt(field(object, "status"), `${path}.status`);
  const message =
    statusObject === undefined
      ? undefined
      : stringAt(field(statusObject, "message"), `${path}.status.message`);
  return {
    traceId: hexAt(field(object, "traceId"), `${path}.traceId`) ?? new Uint8Array(0),
    spanId: hexAt(field(object, "spanId"), `${path}.spanId`) ?? new Uint8Array(0),
    ...(parentSpanId === undefined ? {} : { parentSpanId }),
    ...(traceState === undefined || traceState === "" ? {} : { traceState }),
    name: stringAt(field(object, "name"), `${path}.name`) ?? "",
    kind: enumAt(field(object, "kind"), `${path}.kind`, SPAN_KINDS),
    startTimeUnixNano: int64At(
      field(object, "startTimeUnixNano"),
      `${path}.startTimeUnixNano`,
      true,
    ),
    endTimeUnixNano: int64At(field(object, "endTimeUnixNano"), `${path}.endTimeUnixNano`, true),
    attributes: attributesFromJson(field(object, "attributes"), `${path}.attributes`),
    ...(statusObject === undefined
      ? {}
      : {
          status: {
            code: enumAt(field(statusObject, "code"), `${path}.status.code`, STATUS_CODES),
            ...(message === undefined || message === "" ? {} : { message }),
          },
        }),
  };
}

/**
 * An `ExportTraceServiceRequest` from OTLP/JSON.
 *
 * @throws {OtlpDecodeError} naming the path of what is wrong (e.g.
 *   `resourceSpans[0].scopeSpans[1].spans[3].traceId: expected hex digits`).
 */
export function traceRequestFromJson(text: string): OtlpTraceRequest {
  let json: Json;
  try {
    json = JSON.parse(text) as Json;
  } catch (error) {
    return fail("body", `not valid JSON (${(error as Error).message})`);
  }
  const root = objectAt(json, "body") ?? {};
  return {
    resourceSpans: arrayAt(field(root, "resourceSpans"), "resourceSpans").map((item, i) => {
      const path = `resourceSpans[${i}]`;
      const object = objectAt(item, path) ?? {};
      const resource = objectAt(field(object, "resource"), `${path}.resource`);
      const schemaUrl = stringAt(field(object, "schemaUrl"), `${path}.schemaUrl`);
      return {
        ...(resource === undefined
          ? {}
          : {
              resource: {
                attributes: attributesFromJson(
                  field(resource, "attributes"),
                  `${path}.resource.attributes`,
                ),
              },
            }),
        scopeSpans: arrayAt(field(object, "scopeSpans"), `${path}.scopeSpans`).map((s, j) => {
          const scopePath = `${path}.scopeSpans[${j}]`;
          const scoped = objectAt(s, scopePath) ?? {};
          const found = objectAt(field(scoped, "scope"), `${scopePath}.scope`);
          const version =
            found === undefined
              ? undefined
              : stringAt(field(found, "version"), `${scopePath}.scope.version`);
          return {
            ...(found === undefined
              ? {}
              : {
                  scope: {
                    name: stringAt(field(found, "name"), `${scopePath}.scope.name`) ?? "",
                    ...(version === undefined || version === "" ? {} : { version }),
                  },
                }),
            spans: arrayAt(field(scoped, "spans"), `${scopePath}.spans`).map((one, k) =>
              spanFromJson(one, `${scopePath}.spans[${k}]`),
            ),
          };
        }),
        ...(schemaUrl === undefined || schemaUrl === "" ? {} : { schemaUrl }),
      };
    }),
  };
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("hex");
}

function anyValueToJson(value: OtlpAnyValue): JsonObject {
  if ("stringValue" in value) return { stringValue: value.stringValue };
  if ("boolValue" in value) return { boolValue: value.boolValue };
  if ("intValue" in value) return { intValue: value.intValue.toString() };
  if ("doubleValue" in value)
    return {
      doubleValue: Number.isFinite(value.doubleValue)
        ? value.doubleValue
        : String(value.doubleValue),
    };
  if ("bytesValue" in value)
    return {
      bytesValue: Buffer.from(
        value.bytesValue.buffer,
        value.bytesValue.byteOffset,
        value.bytesValue.length,
      ).toString("base64"),
    };
  if ("arrayValue" in value)
    return { arrayValue: { values: value.arrayValue.values.map(anyValueToJson) } };
  if ("kvlistValue" in value)
    return { kvlistValue: { values: value.kvlistValue.values.map(keyValueToJson) } };
  return {};
}

function keyValueToJson(keyValue: OtlpKeyValue): JsonObject {
  return { key: keyValue.key, value: anyValueToJson(keyValue.value) };
}

function spanToJson(value: OtlpSpan): JsonObject {
  return {
    traceId: hex(value.traceId),
    spanId: hex(value.spanId),
    ...(value.traceState === undefined ? {} : { traceState: value.traceState }),
    ...(value.parentSpanId === undefined ? {} : { parentSpanId: hex(value.parentSpanId) }),
    name: value.name,
    kind: value.kind,
    startTimeUnixNano: value.startTimeUnixNano.toString(),
    endTimeUnixNano: value.endTimeUnixNano.toString(),
    attributes: value.attributes.map(keyValueToJson),
    ...(value.status === undefined
      ? {}
      : {
          status: {
            code: value.status.code,
            ...(value.status.message === undefined ? {} : { message: value.status.message }),
          },
        }),
  };
}

/** An `ExportTraceServiceRequest` as OTLP/JSON. */
export function traceRequestToJson(request: OtlpTraceRequest): string {
  return JSON.stringify({
    resourceSpans: request.resourceSpans.map((resource) => ({
      ...(resource.resource === undefined
        ? {}
        : { resource: { attributes: resource.resource.attributes.map(keyValueToJson) } }),
      scopeSpans: resource.scopeSpans.map((scoped) => ({
        ...(scoped.scope === undefined ? {} : { scope: { ...scoped.scope } }),
        spans: scoped.spans.map(spanToJson),
      })),
      ...(resource.schemaUrl === undefined ? {} : { schemaUrl: resource.schemaUrl }),
    })),
  });
}

/** An `ExportTraceServiceResponse` as OTLP/JSON. */
export function traceResponseToJson(response: OtlpTraceResponse): string {
  const partial = response.partialSuccess;
  return JSON.stringify(
    partial === undefined
      ? {}
      : {
          partialSuccess: {
            rejectedSpans: partial.rejectedSpans.toString(),
            errorMessage: partial.errorMessage,
          },
        },
  );
}

/**
 * An `ExportTraceServiceResponse` from OTLP/JSON.
 *
 * @throws {OtlpDecodeError} naming what is wrong.
 */
export function traceResponseFromJson(text: string): OtlpTraceResponse {
  let json: Json;
  try {
    json = JSON.parse(text) as Json;
  } catch (error) {
    return fail("body", `not valid JSON (${(error as Error).message})`);
  }
  const root = objectAt(json, "body") ?? {};
  const partial = objectAt(field(root, "partialSuccess"), "partialSuccess");
  if (partial === undefined) return {};
  return {
    partialSuccess: {
      rejectedSpans: int64At(
        field(partial, "rejectedSpans"),
        "partialSuccess.rejectedSpans",
        false,
      ),
      errorMessage: stringAt(field(partial, "errorMessage"), "partialSuccess.errorMessage") ?? "",
    },
  };
}
