/**
 * The semantic-convention mapping (otlp/semconv.ts) both ways: events → OTLP spans → events
 * through the library's event builder equal in every field that has an attribute; span names;
 * what is rejected and why; the table agrees with the Avro contract's "otel" names.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";

import { CALL_KIND_SYMBOLS, OTEL_FIELD_MAPPING, type ModelCallEvent } from "../avro/generated.js";
import type { OtlpAnyValue, OtlpKeyValue, OtlpSpan } from "../otlp/model.js";
import {
  ATTR,
  eventToSpan,
  exportRequestOf,
  SCOPE_NAME,
  spanNameOf,
  spanToCall,
  VALUE_FIELDS,
} from "../otlp/semconv.js";
import { decodeTraceRequest, encodeTraceRequest } from "../otlp/wire.js";
import { MCPInterceptor } from "../producer/interceptor.js";
import { PriceTable } from "../producer/pricing.js";
import { sampleEvent } from "./support/events.js";
import { testSeed } from "./support/seed.js";

const SEED = testSeed("otlp-semconv.unit.test.ts fast-check");

const builder = new MCPInterceptor({
  serviceName: "ingest-test",
  captureContent: true,
  contentHashKey: null,
  estimateTokens: false,
  logger: {
    warn: () => undefined,
    error: () => undefined,
  },
});

/** The fields with an attribute (the round trip keeps them); the rest are derived by the builder. */
const MAPPED_FIELDS = [
  "trace_id",
  "span_id",
  "parent_span_id",
  "kind",
  "service",
  "service_instance",
  "provider",
  "model",
  "tool_name",
  "mcp_method",
  "start_time",
  "end_time",
  "prompt_tokens",
  "completion_tokens",
  "retries",
  "fallback_used",
  "confidence",
  "confidence_gate_threshold",
  "high_risk_path",
  "deterministic_fallback_triggered",
  "prompt_diff_score",
  "shadow_agreement",
  "is_golden_financial_scenario",
  "golden_scenario_passed",
  "status",
  "error_type",
  "prompt_text",
  "response_text",
  "attributes",
  "cache_read_tokens",
  "cache_write_tokens",
] as const satisfies readonly (keyof ModelCallEvent)[];

function mapped(event: ModelCallEvent): Record<string, unknown> {
  return Object.fromEntries(MAPPED_FIELDS.map((field) => [field, event[field]]));
}

const hex = (bytes: number) =>
  fc
    .uint8Array({ minLength: bytes, maxLength: bytes })
    .filter((value) => value.some((byte) => byte !== 0))
    .map((value) => Buffer.from(value).toString("hex"));
const name = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._/:-]{0,40}$/);
const unit = fc.option(fc.double({ min: 0, max: 1, noNaN: true }), { nil: null });
const count = fc.option(fc.integer({ min: 0, max: 2_000_000_000 }), { nil: null });
const micros = fc.integer({ min: 1_000_000, max: 4_000_000_000_000_000 });

/** Events as the library builds them (its invariants: mcp_method mirrors the attribute, …). */
const events: fc.Arbitrary<ModelCallEvent> = fc
  .record({
    trace_id: hex(16),
    span_id: hex(8),
    parent_span_id: fc.option(hex(8), { nil: null }),
    kind: fc.constantFrom(...CALL_KIND_SYMBOLS),
    service: name,
    service_instance: name,
    provider: fc.option(name, { nil: null }),
    model: fc.option(name, { nil: null }),
    tool_name: fc.option(name, { nil: null }),
    mcp_method: fc.option(
      fc.constantFrom(
        "tools/call",
        "resources/read",
        "prompts/get",
        "sampling/createMessage",
        "ping",
      ),
      { nil: null },
    ),
    start: micros,
    duration: fc.integer({ min: 0, max: 600_000_000 }),
    prompt_tokens: count,
    completion_tokens: count,
    retries: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
    fallback_used: fc.boolean(),
    confidence: unit,
    confidence_gate_threshold: unit,
    high_risk_path: fc.boolean(),
    deterministic_fallback_triggered: fc.boolean(),
    prompt_diff_score: unit,
    shadow_agreement: fc.option(fc.boolean(), { nil: null }),
    is_golden_financial_scenario: fc.boolean(),
    golden_scenario_passed: fc.option(fc.boolean(), { nil: null }),
    error_type: fc.option(name, { nil: null }),
    prompt_text: fc.option(fc.string({ unit: "grapheme", minLength: 1, maxLength: 40 }), {
      nil: null,
    }),
    response_text: fc.option(fc.string({ unit: "grapheme", minLength: 1, maxLength: 40 }), {
      nil: null,
    }),
    extra: fc.dictionary(
      fc.stringMatching(/^(x|http|net|app)\.[a-z_]{1,12}$/),
      fc.string({ unit: "grapheme", maxLength: 30 }),
      { maxKeys: 6 },
    ),
  })
  .chain((fields) =>
    fc
      .record({
        cache_read_tokens: count,
        cache_write_tokens: count,
      })
      .map((cache) => ({
        ...fields,
        // Reported with the input tokens, as part of them.
        cache_read_tokens:
          fields.prompt_tokens === null || cache.cache_read_tokens === null
            ? null
            : Math.min(cache.cache_read_tokens, fields.prompt_tokens),
        cache_write_tokens:
          fields.prompt_tokens === null || cache.cache_write_tokens === null
            ? null
            : Math.min(
                cache.cache_write_tokens,
                fields.prompt_tokens - Math.min(cache.cache_read_tokens ?? 0, fields.prompt_tokens),
              ),
      })),
  )
  .map(({ start, duration, extra, mcp_method, ...rest }) =>
    sampleEvent({
      ...rest,
      mcp_method,
      start_time: start,
      end_time: start + duration,
      status: rest.error_type === null ? "ok" : "error",
      attributes: mcp_method === null ? extra : { ...extra, [ATTR.mcpMethod]: mcp_method },
    }),
  );

async function roundTrip(batch: readonly ModelCallEvent[]): Promise<ModelCallEvent[]> {
  const request = decodeTraceRequest(encodeTraceRequest(exportRequestOf(batch)));
  const out: ModelCallEvent[] = [];
  for (const resourceSpans of request.resourceSpans) {
    expect(resourceSpans.scopeSpans[0]?.scope?.name).toBe(SCOPE_NAME);
    for (const scoped of resourceSpans.scopeSpans)
      for (const span of scoped.spans) {
        const mapping = spanToCall(span, resourceSpans.resource?.attributes ?? []);
        if (!mapping.ok) throw new Error(mapping.reason);
        const built = await builder.buildForeignEvent(
          mapping.call.input,
          mapping.call.context,
          mapping.call.origin,
        );
        if ("reason" in built) throw new Error(built.reason);
        out.push(built.event);
      }
  }
  return out;
}

const byIds = (a: ModelCallEvent, b: ModelCallEvent) =>
  `${a.service}/${a.service_instance}/${a.trace_id}/${a.span_id}` <
  `${b.service}/${b.service_instance}/${b.trace_id}/${b.span_id}`
    ? -1
    : 1;

describe("events → OTLP spans → events", () => {
  it("keeps every field that has an attribute", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(events, { minLength: 1, maxLength: 6 }), async (batch) => {
        const back = await roundTrip(batch);
        expect(back.map(mapped).sort()).toHaveLength(batch.length);
        expect([...back].sort(byIds).map(mapped)).toEqual([...batch].sort(byIds).map(mapped));
      }),
      { seed: SEED, numRuns: 200 },
    );
  });

  it("prices tokens as the library does and reports them as reported; the same span gets the same event id", async () => {
    const event = sampleEvent({
      model: "gpt-4o",
      provider: "openai",
      prompt_tokens: 1200,
      completion_tokens: 340,
      mcp_method: null,
      attributes: {},
    });
    const [back] = await roundTrip([event]);
    const expected = new PriceTable({}).cost("gpt-4o", "openai", 1200, 340);
    expect(expected).not.toBeNull();
    expect(back?.cost_nano_usd).toBe(expected);
    expect(back?.token_source).toBe("reported");
    const [again] = await roundTrip([event]);
    expect(again?.event_id).toBe(back?.event_id);
  });

  it("groups by service and instance into resources with service.name and service.instance.id", () => {
    const request = exportRequestOf([
      sampleEvent({ service: "a", service_instance: "1" }),
      sampleEvent({ service: "a", service_instance: "2" }),
      sampleEvent({ service: "a", service_instance: "1" }),
    ]);
    expect(request.resourceSpans).toHaveLength(2);
    expect(request.resourceSpans[0]?.resource?.attributes).toEqual([
      { key: "service.name", value: { stringValue: "a" } },
      { key: "service.instance.id", value: { stringValue: "1" } },
    ]);
    expect(request.resourceSpans[0]?.scopeSpans[0]?.spans).toHaveLength(2);
  });
});

describe("the table", () => {
  it("uses the Avro contract's OpenTelemetry names for every field the contract annotates", () => {
    const event = sampleEvent({
      model: "m",
      provider: "p",
      tool_name: "t",
      mcp_method: "tools/call",
      prompt_tokens: 5,
      completion_tokens: 6,
      status: "error",
      error_type: "E",
      prompt_text: "in",
      response_text: "out",
      cache_read_tokens: 3,
      cache_write_tokens: 4,
    });
    const attributes = new Map(eventToSpan(event).attributes.map((kv) => [kv.key, kv.value]));
    let checked = 0;
    for (const [path, otel] of Object.entries(OTEL_FIELD_MAPPING)) {
      const [record, field] = path.split(".") as [string, keyof ModelCallEvent];
      if (record !== "ModelCallEvent" || !/^[a-z_]+\.[a-z_.]+$/.test(otel)) continue;
      if (field === "service" || field === "service_instance") continue;
      const value = (event as unknown as Record<string, unknown>)[field];
      if (value === undefined) continue;
      const written = attributes.get(otel);
      expect(written, `${field} as ${otel}`).toBeDefined();
      const plain =
        written && "stringValue" in written
          ? written.stringValue
          : written && "intValue" in written
            ? Number(written.intValue)
            : undefined;
      expect(plain, `${field} as ${otel}`).toBe(value);
      checked++;
    }
    expect(checked).toBeGreaterThanOrEqual(9);
    expect(ATTR.serviceName).toBe(OTEL_FIELD_MAPPING["ModelCallEvent.service"]);
    expect(ATTR.serviceInstance).toBe(OTEL_FIELD_MAPPING["ModelCallEvent.service_instance"]);
  });

  it("documents the decision-pattern attributes as mcpo.*", () => {
    expect(
      VALUE_FIELDS.filter((entry) => entry.attribute.startsWith("mcpo.")).map((e) => e.attribute),
    ).toEqual([
      "mcpo.retries",
      "mcpo.fallback_used",
      "mcpo.confidence",
      "mcpo.confidence_gate_threshold",
      "mcpo.high_risk_path",
      "mcpo.deterministic_fallback_triggered",
      "mcpo.prompt_diff_score",
      "mcpo.shadow_agreement",
      "mcpo.golden.is_financial_scenario",
      "mcpo.golden.passed",
    ]);
  });

  it("names spans as the semantic conventions do", () => {
    expect(
      spanNameOf(
        sampleEvent({ mcp_method: "tools/call", tool_name: "get_weather", kind: "tool_call" }),
      ),
    ).toBe("tools/call get_weather");
    expect(
      spanNameOf(
        sampleEvent({
          mcp_method: "prompts/get",
          tool_name: null,
          kind: "prompt_get",
          attributes: { "gen_ai.prompt.name": "summary" },
        }),
      ),
    ).toBe("prompts/get summary");
    expect(
      spanNameOf(
        sampleEvent({
          mcp_method: "resources/read",
          tool_name: null,
          kind: "resource_read",
          attributes: { "mcp.resource.uri": "file:///a.txt" },
        }),
      ),
    ).toBe("resources/read file:///a.txt");
    expect(
      spanNameOf(
        sampleEvent({ mcp_method: null, kind: "model_call", model: "gpt-4o", attributes: {} }),
      ),
    ).toBe("chat gpt-4o");
    expect(
      spanNameOf(
        sampleEvent({
          mcp_method: null,
          kind: "model_call",
          model: "text-embedding-3-small",
          attributes: { "gen_ai.operation.name": "embeddings" },
        }),
      ),
    ).toBe("embeddings text-embedding-3-small");
  });
});

const bytes = (length: number, fill: number) => new Uint8Array(length).fill(fill);
function span(
  attributes: Record<string, OtlpAnyValue>,
  overrides: Partial<OtlpSpan> = {},
): OtlpSpan {
  return {
    traceId: bytes(16, 0xab),
    spanId: bytes(8, 0xcd),
    name: "s",
    kind: 3,
    startTimeUnixNano: 1_700_000_000_000_000_000n,
    endTimeUnixNano: 1_700_000_000_250_000_000n,
    attributes: Object.entries(attributes).map(([key, value]) => ({ key, value })),
    ...overrides,
  };
}
const RESOURCE: OtlpKeyValue[] = [{ key: "service.name", value: { stringValue: "svc" } }];

describe("spans in", () => {
  it("rejects a plain HTTP span, naming it", () => {
    const mapping = spanToCall(
      span({ "http.request.method": { stringValue: "GET" } }, { name: "GET /health" }),
      RESOURCE,
    );
    expect(mapping.ok).toBe(false);
    expect(mapping.ok ? "" : mapping.reason).toMatch(
      /^span cdcdcdcdcdcdcdcd "GET \/health": no gen_ai\.\*, mcp\.\* or mcpo\.\* attribute/,
    );
  });

  it("rejects impossible values, naming the attribute", () => {
    const reason = (attributes: Record<string, OtlpAnyValue>) => {
      const mapping = spanToCall(
        span({ "gen_ai.request.model": { stringValue: "gpt-4o" }, ...attributes }),
        RESOURCE,
      );
      return mapping.ok ? "accepted" : mapping.reason;
    };
    expect(reason({ "gen_ai.usage.input_tokens": { intValue: -5n } })).toMatch(
      /gen_ai\.usage\.input_tokens must be a non-negative integer \(got -5\)/,
    );
    expect(reason({ "mcpo.confidence": { doubleValue: 1.5 } })).toMatch(
      /mcpo\.confidence must be a number in \[0, 1\]/,
    );
    expect(reason({ "mcpo.fallback_used": { intValue: 1n } })).toMatch(
      /mcpo\.fallback_used must be a boolean/,
    );
    expect(reason({ "gen_ai.request.model": { intValue: 4n } })).toMatch(
      /gen_ai\.request\.model must be a string/,
    );
    expect(reason({ "mcpo.kind": { stringValue: "nonsense" } })).toMatch(
      /mcpo\.kind must be one of/,
    );
    expect(spanToCall(span({ "gen_ai.request.model": { stringValue: "m" } }), []).ok).toBe(false);
    const backwards = spanToCall(
      span({ "gen_ai.request.model": { stringValue: "m" } }, { endTimeUnixNano: 1n }),
      RESOURCE,
    );
    expect(backwards.ok ? "" : backwards.reason).toMatch(/ends before it starts/);
  });

  it("reads the older and OpenLLMetry spellings as fallbacks", () => {
    const mapping = spanToCall(
      span({
        "gen_ai.system": { stringValue: "openai" },
        "gen_ai.request.model": { stringValue: "gpt-4o" },
        "gen_ai.usage.prompt_tokens": { intValue: 10n },
        "llm.usage.completion_tokens": { intValue: 4n },
      }),
      RESOURCE,
    );
    if (!mapping.ok) throw new Error(mapping.reason);
    expect(mapping.call.input.provider).toBe("openai");
    expect(mapping.call.input.usage).toEqual({ inputTokens: 10, outputTokens: 4 });
    expect(mapping.call.input.kind).toBe("model_call");
    expect(mapping.call.origin.serviceInstance).toBe("svc");
  });

  it("an ERROR status or error.type makes an error; the MCP method gives the kind", async () => {
    const mapping = spanToCall(
      span(
        {
          "mcp.method.name": { stringValue: "tools/call" },
          "gen_ai.tool.name": { stringValue: "lookup" },
          "jsonrpc.request.id": { stringValue: "7" },
          "rpc.response.status_code": { stringValue: "-32603" },
        },
        { status: { code: 2, message: "internal" }, parentSpanId: bytes(8, 0x11) },
      ),
      RESOURCE,
    );
    if (!mapping.ok) throw new Error(mapping.reason);
    const built = await builder.buildForeignEvent(
      mapping.call.input,
      mapping.call.context,
      mapping.call.origin,
    );
    if ("reason" in built) throw new Error(built.reason);
    expect(built.event).toMatchObject({
      kind: "tool_call",
      tool_name: "lookup",
      mcp_method: "tools/call",
      status: "error",
      parent_span_id: "1111111111111111",
      start_time: 1_700_000_000_000_000,
      end_time: 1_700_000_000_250_000,
      attributes: {
        "mcp.method.name": "tools/call",
        "jsonrpc.request.id": "7",
        "rpc.response.status_code": "-32603",
      },
    });
  });
});
