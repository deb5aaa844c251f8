/** Valid contract values for tests: a typical event, and fast-check generators of random ones. */
import { createHash, randomUUID } from "node:crypto";

import fc from "fast-check";

import { CALL_KIND_SYMBOLS, MODEL_CALL_EVENT_SCHEMA } from "../../avro/generated.js";
import type { ModelCallEvent, TokenSource } from "../../avro/generated.js";

const HELLO_MCP_SHA256 = createHash("sha256").update("Hello MCP").digest();
const HELLO_HUMAN_SHA256 = createHash("sha256").update("Hello human").digest();

/** A typical model call, valid per the contract; override what a test is about. */
export function sampleEvent(overrides: Partial<ModelCallEvent> = {}): ModelCallEvent {
  const end = 1_764_000_000_000_000;
  return {
    event_id: randomUUID(),
    trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
    span_id: "00f067aa0ba902b7",
    parent_span_id: "a3ce929d0e0e4736",
    kind: "model_call",
    service: "example-mcp",
    service_instance: "example-mcp-0",
    provider: "openai",
    model: "gpt-4o",
    tool_name: null,
    mcp_method: null,
    start_time: end - 850_000,
    end_time: end,
    prompt_tokens: 412,
    completion_tokens: 96,
    token_source: "reported",
    cost_nano_usd: 1_990_000,
    retries: 0,
    fallback_used: false,
    confidence: 0.64,
    confidence_gate_threshold: 0.7,
    high_risk_path: true,
    deterministic_fallback_triggered: true,
    prompt_diff_score: 0.42,
    shadow_agreement: false,
    is_golden_financial_scenario: true,
    golden_scenario_passed: true,
    status: "ok",
    error_type: null,
    prompt_size_bytes: 9,
    response_size_bytes: 11,
    // Copies: an event owns its buffers.
    prompt_sha256: Buffer.from(HELLO_MCP_SHA256),
    response_sha256: Buffer.from(HELLO_HUMAN_SHA256),
    prompt_text: null,
    response_text: null,
    attributes: { "mcp.session.id": "s-1", "gen_ai.response.id": "chatcmpl-1" },
    cache_read_tokens: null,
    cache_write_tokens: null,
    input_audio_tokens: null,
    output_audio_tokens: null,
    ...overrides,
  };
}

/**
 * Where the closing count of an encoded event's empty `attributes` map is: the map is followed by
 * the fields after it (the usage counts), null, one byte (the union index 0) each.
 *
 * @throws {Error} when the bytes do not end with an empty map and those null fields.
 */
export function emptyAttributesCountAt(encoded: Buffer): number {
  const names = (MODEL_CALL_EVENT_SCHEMA.fields as readonly { name: string }[]).map(
    (field) => field.name,
  );
  const after = names.length - 1 - names.indexOf("attributes");
  const at = encoded.length - 1 - after;
  if (!encoded.subarray(at).equals(Buffer.alloc(after + 1)))
    throw new Error("the event must end with an empty attributes map and null fields after it");
  return at;
}

/** `length` lower-case hex digits, not all zero. */
const hex = (length: number): fc.Arbitrary<string> =>
  fc
    .bigInt({ min: 1n, max: 16n ** BigInt(length) - 1n })
    .map((value) => value.toString(16).padStart(length, "0"));

/** A unit-interval double (no NaN), sometimes exactly on a threshold. */
const unitDouble = fc.oneof(
  fc.double({ min: 0, max: 1, noNaN: true }),
  fc.constantFrom(0, 0.25, 0.3, 0.5, 0.7, 1),
);

/**
 * Names at the edges that every part of the pipeline must carry unchanged: separators the
 * product uses in keys and formats (`|`, `:`, `*` as a service), spaces, quotes and a backslash,
 * astral-plane emoji, combining marks (precomposed and decomposed forms of the same word are two
 * names), right-to-left text, and a name of exactly the contract's maximum length: 256 UTF-16
 * code units (`mcpo.maxLength` in the `.avsc` files), here 128 astral emoji of 4 UTF-8 bytes
 * each (512 bytes), well under PostgreSQL's btree key limit (about 2.7 kB).
 */
export const EDGE_NAMES: readonly string[] = Object.freeze([
  "*",
  "|",
  "a|b",
  "svc:9092",
  "with space",
  " padded ",
  "quote'\"\\",
  "💸-payments",
  "\u00e9clair",
  "e\u0301clair",
  "خدمة-الدفع",
  "🧪".repeat(128),
]);

/**
 * Model names that once addressed other series: `*` was the service total's model (in PostgreSQL
 * and in the rollups topic's key) and `|` separated the key's parts, so they collided with the
 * total or another model; '' is what the total's row holds in its model column. Every test
 * generates them as models now: the total is a scope of its own.
 */
export const RESERVED_MODEL_NAMES: readonly string[] = Object.freeze(["*", "|", "b|c", ""]);

const PLAIN_SERVICES = ["svc-a", "svc-b", "svc-c"] as const;
const PLAIN_MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4"] as const;

/** A name: mostly a few common ones (so windows group), often an edge, sometimes random text. */
function nameArbitrary(
  plain: readonly string[],
  edges: readonly string[],
  randomOk: (name: string) => boolean,
): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 6, arbitrary: fc.constantFrom(...plain) },
    { weight: 3, arbitrary: fc.constantFrom(...edges) },
    {
      weight: 1,
      arbitrary: fc.string({ unit: "grapheme", minLength: 1, maxLength: 24 }).filter(randomOk),
    },
  );
}

/** A part of a token count (a cache or audio count): at most the count, null without one. */
function part(value: number | null, total: number | null): number | null {
  return value === null || total === null ? null : Math.min(value, total);
}

/** Options of {@link eventArbitrary}. */
export interface EventArbitraryOptions {
  /** Event end times start here (µs; default 1 764 000 000 000 000). */
  readonly originMicros?: number;
  /** …and end within this many µs after it (default 5 min: a handful of windows). */
  readonly spanMicros?: number;
}

/**
 * Random valid events of every kind of the contract, of a few common services and models and of
 * edge names ({@link EDGE_NAMES}, random unicode text), ending within `spanMicros` after
 * `originMicros`.
 */
export function eventArbitrary(options: EventArbitraryOptions = {}): fc.Arbitrary<ModelCallEvent> {
  const origin = options.originMicros ?? 1_764_000_000_000_000;
  const span = options.spanMicros ?? 5 * 60_000_000;
  interface Tokens {
    source: TokenSource;
    prompt: number | null;
    completion: number | null;
  }
  const tokens = fc.constantFrom<TokenSource>("reported", "estimated", "none").chain((source) =>
    source === "none"
      ? fc.constant<Tokens>({ source, prompt: null, completion: null })
      : fc
          .tuple(fc.option(fc.nat(200_000)), fc.option(fc.nat(50_000)))
          .filter(([prompt, completion]) => prompt !== null || completion !== null)
          .map(([prompt, completion]): Tokens => ({ source, prompt, completion })),
  );
  const modelEdges = [...EDGE_NAMES, ...RESERVED_MODEL_NAMES];
  const service = nameArbitrary(PLAIN_SERVICES, EDGE_NAMES, () => true);
  const model = nameArbitrary(PLAIN_MODELS, modelEdges, () => true);
  // Every kind of the contract; model calls (which the metrics count) most often.
  const kind = fc.oneof(
    { weight: 6, arbitrary: fc.constant("model_call" as const) },
    { weight: 2, arbitrary: fc.constant("sampling" as const) },
    { weight: 3, arbitrary: fc.constantFrom(...CALL_KIND_SYMBOLS) },
  );
  return fc
    .record({
      trace_id: hex(32),
      span_id: hex(16),
      parent_span_id: fc.option(hex(16)),
      kind,
      service,
      service_instance: fc.constantFrom("r0", "r1", "réplica 2"),
      model: fc.option(model, { freq: 8 }),
      end_offset: fc.integer({ min: 0, max: span }),
      // Latencies from 0 to ~2 min, skewed to small values like real calls.
      latency: fc.oneof(
        fc.integer({ min: 0, max: 5_000 }),
        fc.integer({ min: 0, max: 120_000_000 }),
      ),
      tokens,
      cost: fc.option(fc.integer({ min: 0, max: 10_000_000_000 })),
      // Cache and audio counts, parts of the prompt and completion counts (kept only with a count).
      details: fc.record({
        cache_read: fc.option(fc.nat(100_000)),
        cache_write: fc.option(fc.nat(100_000)),
        input_audio: fc.option(fc.nat(100_000)),
        output_audio: fc.option(fc.nat(50_000)),
      }),
      retries: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 5 })),
      fallback_used: fc.boolean(),
      confidence: fc.option(unitDouble),
      gate: fc.option(unitDouble),
      high_risk_path: fc.boolean(),
      deterministic_fallback_triggered: fc.boolean(),
      prompt_diff_score: fc.option(unitDouble),
      shadow_agreement: fc.option(fc.boolean()),
      is_golden: fc.boolean(),
      golden_passed: fc.option(fc.boolean()),
      status: fc.constantFrom("ok", "ok", "ok", "error" as const),
    })
    .map((r): ModelCallEvent =>
      sampleEvent({
        event_id: randomUUID(),
        trace_id: r.trace_id,
        span_id: r.span_id,
        parent_span_id: r.parent_span_id,
        kind: r.kind,
        service: r.service,
        service_instance: r.service_instance,
        model: r.model,
        start_time: origin + r.end_offset - r.latency,
        end_time: origin + r.end_offset,
        token_source: r.tokens.source,
        prompt_tokens: r.tokens.prompt,
        completion_tokens: r.tokens.completion,
        cache_read_tokens: part(r.details.cache_read, r.tokens.prompt),
        cache_write_tokens: part(r.details.cache_write, r.tokens.prompt),
        input_audio_tokens: part(r.details.input_audio, r.tokens.prompt),
        output_audio_tokens: part(r.details.output_audio, r.tokens.completion),
        cost_nano_usd: r.cost,
        retries: r.retries,
        fallback_used: r.fallback_used,
        confidence: r.confidence,
        confidence_gate_threshold: r.gate,
        high_risk_path: r.high_risk_path,
        deterministic_fallback_triggered: r.deterministic_fallback_triggered,
        prompt_diff_score: r.prompt_diff_score,
        shadow_agreement: r.shadow_agreement,
        is_golden_financial_scenario: r.is_golden,
        golden_scenario_passed: r.golden_passed,
        status: r.status,
        error_type: r.status === "error" ? "RateLimitError" : null,
      }),
    );
}
