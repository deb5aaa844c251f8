/**
 * The OTLP codec (otlp/wire.ts) against the official protobuf definitions, both ways, for
 * protobuf and OTLP/JSON; and hostile bodies fail fast with a clear error.
 */
import { createRequire } from "node:module";

import fc from "fast-check";
import { describe, expect, it } from "vitest";

import type {
  OtlpAnyValue,
  OtlpKeyValue,
  OtlpSpan,
  OtlpTraceRequest,
  OtlpTraceResponse,
} from "../otlp/model.js";
import {
  decodeTraceRequest,
  decodeTraceResponse,
  encodeTraceRequest,
  encodeTraceResponse,
  MAX_NESTING,
  OtlpDecodeError,
  traceRequestFromJson,
  traceRequestToJson,
  traceResponseFromJson,
  traceResponseToJson,
} from "../otlp/wire.js";
import { testSeed } from "./support/seed.js";

interface ProtoType {
  fromObject(object: unknown): unknown;
  encode(message: unknown): { finish(): Uint8Array };
  decode(bytes: Uint8Array): unknown;
  toObject(message: unknown, options: Record<string, unknown>): Record<string, unknown>;
}
const require = createRequire(import.meta.url);
const root = (
  require("otlp-protobuf-definitions/build/src/generated/root.js") as {
    opentelemetry: {
      proto: {
        collector: {
          trace: {
            v1: { ExportTraceServiceRequest: ProtoType; ExportTraceServiceResponse: ProtoType };
          };
        };
      };
    };
  }
).opentelemetry.proto.collector.trace.v1;
const OfficialRequest = root.ExportTraceServiceRequest;
const OfficialResponse = root.ExportTraceServiceResponse;

const SEED = testSeed("otlp-codec.unit.test.ts fast-check");

// --- our model -> the official definitions' plain objects, and back ------------------------

type Obj = Record<string, unknown>;

function anyToOfficial(value: OtlpAnyValue): Obj {
  if ("intValue" in value) return { intValue: value.intValue.toString() };
  if ("arrayValue" in value)
    return { arrayValue: { values: value.arrayValue.values.map(anyToOfficial) } };
  if ("kvlistValue" in value)
    return { kvlistValue: { values: value.kvlistValue.values.map(kvToOfficial) } };
  return { ...value };
}
const kvToOfficial = (kv: OtlpKeyValue): Obj => ({ key: kv.key, value: anyToOfficial(kv.value) });

function requestToOfficial(request: OtlpTraceRequest): Obj {
  return {
    resourceSpans: request.resourceSpans.map((rs) => ({
      ...(rs.resource
        ? { resource: { attributes: rs.resource.attributes.map(kvToOfficial) } }
        : {}),
      scopeSpans: rs.scopeSpans.map((ss) => ({
        ...(ss.scope ? { scope: ss.scope } : {}),
        spans: ss.spans.map((span) => ({
          ...span,
          startTimeUnixNano: span.startTimeUnixNano.toString(),
          endTimeUnixNano: span.endTimeUnixNano.toString(),
          attributes: span.attributes.map(kvToOfficial),
        })),
      })),
      ...(rs.schemaUrl === undefined ? {} : { schemaUrl: rs.schemaUrl }),
    })),
  };
}

const bytesOf = (value: unknown): Uint8Array => Uint8Array.from(value as Uint8Array);

function anyFromOfficial(value: Obj | undefined): OtlpAnyValue {
  if (value === undefined) return {};
  if ("stringValue" in value) return { stringValue: value.stringValue as string };
  if ("boolValue" in value) return { boolValue: value.boolValue as boolean };
  if ("intValue" in value) return { intValue: BigInt(value.intValue as string) };
  if ("doubleValue" in value) return { doubleValue: value.doubleValue as number };
  if ("bytesValue" in value) return { bytesValue: bytesOf(value.bytesValue) };
  if ("arrayValue" in value)
    return {
      arrayValue: {
        values: (((value.arrayValue as Obj).values as Obj[] | undefined) ?? []).map(
          anyFromOfficial,
        ),
      },
    };
  if ("kvlistValue" in value)
    return {
      kvlistValue: {
        values: (((value.kvlistValue as Obj).values as Obj[] | undefined) ?? []).map(
          kvFromOfficial,
        ),
      },
    };
  return {};
}
const kvFromOfficial = (kv: Obj): OtlpKeyValue => ({
  key: (kv.key as string | undefined) ?? "",
  value: anyFromOfficial(kv.value as Obj | undefined),
});

function spanFromOfficial(span: Obj): OtlpSpan {
  const status = span.status as Obj | undefined;
  return {
    traceId: bytesOf(span.traceId ?? []),
    spanId: bytesOf(span.spanId ?? []),
    ...(span.parentSpanId === undefined ? {} : { parentSpanId: bytesOf(span.parentSpanId) }),
    ...(span.traceState === undefined ? {} : { traceState: span.traceState as string }),
    name: (span.name as string | undefined) ?? "",
    kind: (span.kind as number | undefined) ?? 0,
    startTimeUnixNano: BigInt((span.startTimeUnixNano as string | undefined) ?? "0"),
    endTimeUnixNano: BigInt((span.endTimeUnixNano as string | undefined) ?? "0"),
    attributes: ((span.attributes as Obj[] | undefined) ?? []).map(kvFromOfficial),
    ...(status === undefined
      ? {}
      : {
          status: {
            code: (status.code as number | undefined) ?? 0,
            ...(status.message === undefined ? {} : { message: status.message as string }),
          },
        }),
  };
}

function requestFromOfficial(object: Obj): OtlpTraceRequest {
  return {
    resourceSpans: ((object.resourceSpans as Obj[] | undefined) ?? []).map((rs) => {
      const resource = rs.resource as Obj | undefined;
      return {
        ...(resource === undefined
          ? {}
          : {
              resource: {
                attributes: ((resource.attributes as Obj[] | undefined) ?? []).map(kvFromOfficial),
              },
            }),
        scopeSpans: ((rs.scopeSpans as Obj[] | undefined) ?? []).map((ss) => {
          const scope = ss.scope as Obj | undefined;
          return {
            ...(scope === undefined
              ? {}
              : {
                  scope: {
                    name: (scope.name as string | undefined) ?? "",
                    ...(scope.version === undefined ? {} : { version: scope.version as string }),
                  },
                }),
            spans: ((ss.spans as Obj[] | undefined) ?? []).map(spanFromOfficial),
          };
        }),
        ...(rs.schemaUrl === undefined ? {} : { schemaUrl: rs.schemaUrl as string }),
      };
    }),
  };
}

const officialEncode = (request: OtlpTraceRequest): Uint8Array =>
  OfficialRequest.encode(OfficialRequest.fromObject(requestToOfficial(request))).finish();
const officialDecode = (bytes: Uint8Array): OtlpTraceRequest =>
  requestFromOfficial(OfficialRequest.toObject(OfficialRequest.decode(bytes), { longs: String }));

// --- generators ---------------------------------------------------------------------------

const text = fc.string({ unit: "grapheme", maxLength: 12 });
const nonEmpty = fc.string({ unit: "grapheme", minLength: 1, maxLength: 12 });
const int64 = fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n });
const uint64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
const bytes = (length: number) => fc.uint8Array({ minLength: length, maxLength: length });

/** `json`: values OTLP/JSON carries exactly (no -0). */
function anyValue(json: boolean): fc.Arbitrary<OtlpAnyValue> {
  const { value } = fc.letrec<{ value: OtlpAnyValue; kv: OtlpKeyValue }>((tie) => ({
    value: fc.oneof(
      { depthSize: "small", withCrossShrink: true },
      fc.constant({}),
      text.map((stringValue) => ({ stringValue })),
      fc.boolean().map((boolValue) => ({ boolValue })),
      int64.map((intValue) => ({ intValue })),
      fc.double().map((doubleValue) => ({
        doubleValue: json && Object.is(doubleValue, -0) ? 0 : doubleValue,
      })),
      fc.uint8Array({ maxLength: 8 }).map((bytesValue) => ({ bytesValue })),
      fc.array(tie("value"), { maxLength: 3 }).map((values) => ({ arrayValue: { values } })),
      fc.array(tie("kv"), { maxLength: 3 }).map((values) => ({ kvlistValue: { values } })),
    ),
    kv: fc.record({ key: text, value: tie("value") }),
  }));
  return value;
}

function keyValues(json: boolean): fc.Arbitrary<OtlpKeyValue[]> {
  return fc.array(fc.record({ key: text, value: anyValue(json) }), { maxLength: 4 });
}

function span(json: boolean): fc.Arbitrary<OtlpSpan> {
  return fc.record(
    {
      traceId: bytes(16),
      spanId: bytes(8),
      parentSpanId: bytes(8),
      traceState: nonEmpty,
      name: text,
      kind: fc.integer({ min: 0, max: 5 }),
      startTimeUnixNano: uint64,
      endTimeUnixNano: uint64,
      attributes: keyValues(json),
      status: fc.record(
        { code: fc.integer({ min: 0, max: 2 }), message: nonEmpty },
        { requiredKeys: ["code"] },
      ),
    },
    {
      requiredKeys: [
        "traceId",
        "spanId",
        "name",
        "kind",
        "startTimeUnixNano",
        "endTimeUnixNano",
        "attributes",
      ],
    },
  );
}

function request(json: boolean): fc.Arbitrary<OtlpTraceRequest> {
  return fc.record({
    resourceSpans: fc.array(
      fc.record(
        {
          resource: fc.record({ attributes: keyValues(json) }),
          scopeSpans: fc.array(
            fc.record(
              {
                scope: fc.record({ name: text, version: nonEmpty }, { requiredKeys: ["name"] }),
                spans: fc.array(span(json), { maxLength: 3 }),
              },
              { requiredKeys: ["spans"] },
            ),
            { maxLength: 2 },
          ),
          schemaUrl: nonEmpty,
        },
        { requiredKeys: ["scopeSpans"] },
      ),
      { maxLength: 3 },
    ),
  });
}

/** OTLP/JSON as the official definitions see it: ids base64 (the proto JSON mapping) instead of hex. */
function jsonForOfficial(jsonText: string): Obj {
  return JSON.parse(jsonText, function (this: Obj, key, value: unknown) {
    if (
      (key === "traceId" || key === "spanId" || key === "parentSpanId") &&
      typeof value === "string"
    )
      return Buffer.from(value, "hex").toString("base64");
    return value;
  }) as Obj;
}

describe("protobuf codec against the official definitions", () => {
  it("decodes what the official encoder writes", () => {
    fc.assert(
      fc.property(request(false), (generated) => {
        expect(decodeTraceRequest(officialEncode(generated))).toEqual(generated);
      }),
      { seed: SEED, numRuns: 300 },
    );
  });

  it("writes what the official decoder reads back the same", () => {
    fc.assert(
      fc.property(request(false), (generated) => {
        expect(officialDecode(encodeTraceRequest(generated))).toEqual(generated);
      }),
      { seed: SEED, numRuns: 300 },
    );
  });

  it("responses: partial success both ways", () => {
    fc.assert(
      fc.property(
        fc.option(fc.record({ rejectedSpans: int64, errorMessage: text }), { nil: undefined }),
        (partial) => {
          const response: OtlpTraceResponse =
            partial === undefined ? {} : { partialSuccess: partial };
          const official = OfficialResponse.toObject(
            OfficialResponse.decode(encodeTraceResponse(response)),
            { longs: String, defaults: true },
          );
          if (partial === undefined) expect(official.partialSuccess ?? null).toBeNull();
          else
            expect(official.partialSuccess).toEqual({
              rejectedSpans: partial.rejectedSpans.toString(),
              errorMessage: partial.errorMessage,
            });
          const back = OfficialResponse.encode(
            OfficialResponse.fromObject(
              partial === undefined
                ? {}
                : {
                    partialSuccess: {
                      rejectedSpans: partial.rejectedSpans.toString(),
                      errorMessage: partial.errorMessage,
                    },
                  },
            ),
          ).finish();
          expect(decodeTraceResponse(back)).toEqual(response);
          expect(traceResponseFromJson(traceResponseToJson(response))).toEqual(response);
        },
      ),
      { seed: SEED, numRuns: 200 },
    );
  });
});

describe("OTLP/JSON", () => {
  it("writes JSON the official definitions read as the same request (ids hex, int64 as strings)", () => {
    fc.assert(
      fc.property(request(true), (generated) => {
        const written = traceRequestToJson(generated);
        const official = OfficialRequest.encode(
          OfficialRequest.fromObject(jsonForOfficial(written)),
        ).finish();
        expect(decodeTraceRequest(official)).toEqual(generated);
        expect(traceRequestFromJson(written)).toEqual(generated);
      }),
      { seed: SEED, numRuns: 300 },
    );
  });

  it("reads the official definitions' JSON (toObject with string longs, ids as hex)", () => {
    fc.assert(
      fc.property(request(true), (generated) => {
        const object = OfficialRequest.toObject(
          OfficialRequest.fromObject(requestToOfficial(generated)),
          {
            longs: String,
            bytes: String,
            json: true,
          },
        );
        const jsonText = JSON.stringify(object, (key, value: unknown) =>
          (key === "traceId" || key === "spanId" || key === "parentSpanId") &&
          typeof value === "string"
            ? Buffer.from(value, "base64").toString("hex")
            : value,
        );
        expect(traceRequestFromJson(jsonText)).toEqual(generated);
      }),
      { seed: SEED, numRuns: 300 },
    );
  });

  it("reads snake_case keys, numbers for 64-bit integers and enum names", () => {
    const parsed = traceRequestFromJson(
      JSON.stringify({
        resource_spans: [
          {
            scope_spans: [
              {
                spans: [
                  {
                    trace_id: "5B8EFFF798038103D269B633813FC60C",
                    span_id: "EEE19B7EC3C1B174",
                    name: "chat gpt-4o",
                    kind: "SPAN_KIND_CLIENT",
                    start_time_unix_nano: 1_700_000_000_000_000_000,
                    end_time_unix_nano: "1700000000500000000",
                    attributes: [{ key: "gen_ai.usage.input_tokens", value: { int_value: 12 } }],
                    status: { code: "STATUS_CODE_ERROR", message: "boom" },
                  },
                ],
              },
            ],
          },
        ],
      }),
    );
    const only = parsed.resourceSpans[0]?.scopeSpans[0]?.spans[0];
    expect(only?.kind).toBe(3);
    expect(Buffer.from(only?.traceId ?? []).toString("hex")).toBe(
      "5b8efff798038103d269b633813fc60c",
    );
    expect(only?.startTimeUnixNano).toBe(1_700_000_000_000_000_000n);
    expect(only?.endTimeUnixNano).toBe(1_700_000_000_500_000_000n);
    expect(only?.attributes).toEqual([
      { key: "gen_ai.usage.input_tokens", value: { intValue: 12n } },
    ]);
    expect(only?.status).toEqual({ code: 2, message: "boom" });
  });
});

describe("hostile bodies", () => {
  const valid = encodeTraceRequest({
    resourceSpans: [
      {
        resource: { attributes: [{ key: "service.name", value: { stringValue: "svc" } }] },
        scopeSpans: [
          {
            spans: [
              {
                traceId: new Uint8Array(16).fill(1),
                spanId: new Uint8Array(8).fill(2),
                name: "chat gpt-4o",
                kind: 3,
                startTimeUnixNano: 1n,
                endTimeUnixNano: 2n,
                attributes: [{ key: "gen_ai.request.model", value: { stringValue: "gpt-4o" } }],
              },
            ],
          },
        ],
      },
    ],
  });

  /** Decoding fails with an OtlpDecodeError whose message matches, in well under a second. */
  function rejects(body: Uint8Array, message: RegExp): void {
    const started = performance.now();
    let caught: unknown;
    try {
      decodeTraceRequest(body);
    } catch (error) {
      caught = error;
    }
    expect(performance.now() - started).toBeLessThan(1000);
    expect(caught).toBeInstanceOf(OtlpDecodeError);
    expect((caught as Error).message).toMatch(message);
  }

  it("every truncation of a valid body fails with a clear error", () => {
    for (let length = 1; length < valid.length; length++) {
      let caught: unknown;
      try {
        decodeTraceRequest(valid.subarray(0, length));
      } catch (error) {
        caught = error;
      }
      expect(caught, `cut at ${length}`).toBeInstanceOf(OtlpDecodeError);
      expect((caught as Error).message).toMatch(/truncated|runs past|at byte \d+ of \d+/);
    }
  });

  it("a wrong wire type names the field", () => {
    // Field 1 (resource_spans) as a varint.
    rejects(
      Uint8Array.from([0x08, 0x01]),
      /ExportTraceServiceRequest\.resource_spans: wire type varint, expected length-delimited/,
    );
  });

  it("a huge length fails at once, without allocating it", () => {
    // resource_spans with a length of 2^49.
    rejects(
      Uint8Array.from([0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]),
      /length \d+ runs past the end/,
    );
  });

  it("a varint longer than 10 bytes, group wire types and field number 0 are refused", () => {
    rejects(Uint8Array.from([0x08, ...new Array<number>(11).fill(0xff), 0x01]), /varint/);
    rejects(Uint8Array.from([0x1b]), /unsupported wire type 3/);
    rejects(Uint8Array.from([0x02, 0x00]), /field number 0/);
  });

  it("deep nesting of attribute values stops at the limit", () => {
    // AnyValue { array_value { values: AnyValue { array_value { … } } } }, 300 levels.
    let value = Uint8Array.from([]);
    for (let depth = 0; depth < 300; depth++) {
      const array = Uint8Array.from([0x0a, ...varint(value.length), ...value]);
      value = Uint8Array.from([0x2a, ...varint(array.length), ...array]);
    }
    const keyValue = Uint8Array.from([0x12, ...varint(value.length), ...value]);
    const spanBytes = Uint8Array.from([0x4a, ...varint(keyValue.length), ...keyValue]);
    const scope = Uint8Array.from([0x12, ...varint(spanBytes.length), ...spanBytes]);
    const resource = Uint8Array.from([0x12, ...varint(scope.length), ...scope]);
    const body = Uint8Array.from([0x0a, ...varint(resource.length), ...resource]);
    rejects(body, new RegExp(`nested deeper than ${MAX_NESTING} levels`));
    const json = `{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[{"key":"k","value":${'{"arrayValue":{"values":['.repeat(5000)}${"]}}".repeat(5000)}}]}]}]}]}`;
    expect(() => traceRequestFromJson(json)).toThrow(/nested deeper than/);
  });

  it("unknown fields are skipped, invalid UTF-8 and bad JSON are named", () => {
    // An unknown field 99 (varint) before the real content.
    const withUnknown = Uint8Array.from([0x98, 0x06, 0x05, ...valid]);
    expect(decodeTraceRequest(withUnknown)).toEqual(decodeTraceRequest(valid));
    // A span name of invalid UTF-8.
    const badName = Uint8Array.from([0x2a, 0x02, 0xc3, 0x28]);
    const scope = Uint8Array.from([0x12, badName.length, ...badName]);
    const resource = Uint8Array.from([0x12, scope.length, ...scope]);
    rejects(Uint8Array.from([0x0a, resource.length, ...resource]), /Span\.name: not valid UTF-8/);
    expect(() => traceRequestFromJson("{not json")).toThrow(/body: not valid JSON/);
    expect(() =>
      traceRequestFromJson('{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"xyz"}]}]}]}'),
    ).toThrow(/resourceSpans\[0\]\.scopeSpans\[0\]\.spans\[0\]\.traceId: expected hex digits/);
  });
});

function varint(value: number): number[] {
  const out: number[] = [];
  let rest = value;
  while (rest >= 0x80) {
    out.push((rest % 128) | 0x80);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return out;
}
