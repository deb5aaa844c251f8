/** Valid contract values for tests: a typical event, and fast-check generators of random ones. */
import { createHash, randomUUID } from "node:crypto";

import fc from "fast-check";

import type { ModelCallEvent, TokenSource } from "../../avro/generated.js";

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
    prompt_sha256: createHash("sha256").update("Hello MCP").digest(),
    response_sha256: createHash("sha256").update("Hello human").digest(),
    prompt_text: null,
    response_text: null,
    attributes: { "mcp.session.id": "s-1", "gen_ai.response.id": "chatcmpl-1" },
    ...overrides,
  };
}

const hex = (length: number): fc.Arbitrary<string> =>
  fc
    .array(fc.constantFrom(..."0123456789abcdef".split("")), {
      minLength: length,
      maxLength: length,
    })
    .map((chars) => chars.join(""))
    .filter((text) => !/^0+$/.test(text));

/** A unit-interval double (no NaN), sometimes exactly on a threshold. */
const unitDouble = fc.oneof(
  fc.double({ min: 0, max: 1, noNaN: true }),
  fc.constantFrom(0, 0.25, 0.3, 0.5, 0.7, 1),
);

/**
 * Random valid events of a few services and models, ending within `spanMicros` after
 * `originMicros` (so they fall in a handful of windows).
 */
export function eventArbitrary(
  options: { originMicros?: number; spanMicros?: number } = {},
): fc.Arbitrary<ModelCallEvent> {
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
  return fc
    .record({
      trace_id: hex(32),
      span_id: hex(16),
      parent_span_id: fc.option(hex(16)),
      kind: fc.constantFrom("model_call", "tool_call", "sampling", "other" as const),
      service: fc.constantFrom("svc-a", "svc-b", "svc-c"),
      service_instance: fc.constantFrom("r0", "r1"),
      model: fc.option(fc.constantFrom("gpt-4o", "gpt-4o-mini", "claude-sonnet-4")),
      end_offset: fc.integer({ min: 0, max: span }),
      // Latencies from 0 to ~2 min, skewed to small values like real calls.
      latency: fc.oneof(
        fc.integer({ min: 0, max: 5_000 }),
        fc.integer({ min: 0, max: 120_000_000 }),
      ),
      tokens,
      cost: fc.option(fc.integer({ min: 0, max: 10_000_000_000 })),
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
