/**
 * Seeded, varied events for the processor's integration tests: every count of a window gets
 * exercised (retries above 1, every token source, unknown costs, shadow results, golden
 * scenarios, prompt-diff scores on and around the threshold, nulls), and every kind, so spans
 * that count in no metric are in the log too. What decides alerts (confidence, gate, status) is
 * left to the test.
 */
import { randomUUID } from "node:crypto";

import type { CallKind, ModelCallEvent, TokenSource } from "../../avro/generated.js";
import { sampleEvent } from "./events.js";
import type { SeededRandom } from "./seed.js";

const KINDS: readonly CallKind[] = [
  "model_call",
  "model_call",
  "model_call",
  "model_call",
  "model_call",
  "sampling",
  "tool_call",
  "resource_read",
  "prompt_get",
  "other",
];

/** One of `items`, chosen by `random`. */
export function pick<T>(random: SeededRandom, items: readonly T[]): T {
  const item = items[random.int(0, items.length - 1)];
  if (item === undefined) throw new Error("pick from an empty list");
  return item;
}

/**
 * A valid event of `service` ending at `endMicros`, every field but confidence, gate threshold
 * and status drawn from `random` (override those, and anything else, with `overrides`).
 */
export function variedEvent(
  random: SeededRandom,
  service: string,
  endMicros: number,
  models: readonly (string | null)[],
  overrides: Partial<ModelCallEvent> = {},
): ModelCallEvent {
  const kind = pick(random, KINDS);
  const counted = kind === "model_call" || kind === "sampling";
  const source: TokenSource = pick(random, ["reported", "estimated", "none"] as const);
  const prompt = source === "none" ? null : random.int(0, 8000);
  const completion =
    source === "none" ? null : prompt !== null && random.next() < 0.2 ? null : random.int(0, 3000);
  const chance = (p: number): boolean => random.next() < p;
  const maybe = <T>(p: number, value: () => T): T | null => (chance(p) ? value() : null);
  return sampleEvent({
    event_id: randomUUID(),
    kind,
    service,
    service_instance: `${service}-${random.int(0, 2)}`,
    model: counted ? pick(random, models) : null,
    tool_name: kind === "tool_call" ? "lookup" : null,
    start_time: endMicros - random.int(0, 4_000_000),
    end_time: endMicros,
    token_source: source,
    prompt_tokens: prompt,
    completion_tokens: completion,
    cost_nano_usd: maybe(0.8, () => random.int(0, 50_000_000)),
    retries: chance(0.7) ? 0 : random.int(1, 6),
    fallback_used: chance(0.15),
    high_risk_path: chance(0.3),
    deterministic_fallback_triggered: chance(0.4),
    prompt_diff_score: maybe(0.6, () => pick(random, [0, 0.1, 0.29, 0.3, 0.31, 0.5, 0.9, 1])),
    shadow_agreement: maybe(0.5, () => chance(0.8)),
    is_golden_financial_scenario: chance(0.25),
    golden_scenario_passed: maybe(0.7, () => chance(0.85)),
    confidence: null,
    confidence_gate_threshold: null,
    status: "ok",
    error_type: null,
    ...overrides,
  });
}
