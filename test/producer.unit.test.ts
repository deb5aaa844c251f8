import { calcPrice } from "@pydantic/genai-prices";
import { describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";

import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { ModelCallEvent } from "../avro/generated.js";
import { DEFAULT_ALERT_RULES } from "../metrics/index.js";
import { DEFAULT_WINDOW_SETTINGS, PartitionState } from "../processor/partition.js";
import { InMemoryExporter } from "../producer/exporters/memory.js";
import type { EventExporter } from "../producer/exporters/types.js";
import { instrument } from "../producer/interceptor.js";
import { silentLogger, type Logger } from "../producer/logger.js";
import { costNanoUsd, PriceTable, pricePerMillionToPicoPerToken } from "../producer/pricing.js";
import { countTokens, encodingForModel } from "../producer/tokens.js";
import type { MetricsSnapshot, ModelCallInput } from "../producer/types.js";
import {
  ORACLE_DEFAULT_THRESHOLDS,
  oracleAlerts,
  oracleWindow,
  type OracleRule,
  type OracleWindow,
} from "./support/oracle.js";
import { seededRandom } from "./support/seed.js";

const SEED_CALL = {
  model: "gpt-4o",
  prompt: "Hello MCP",
  response: "Hello human",
  confidence: 0.64,
  confidenceGateThreshold: 0.7,
  highRiskPath: true,
  deterministicFallbackTriggered: true,
  promptDiffScore: 0.42,
  shadowAgreement: false,
  isGoldenFinancialScenario: true,
  goldenScenarioPassed: true,
} as const;

function collectingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    warn: (message) => lines.push(`warn ${message}`),
    error: (message) => lines.push(`error ${message}`),
  };
}

describe("the seed's quick start", () => {
  it("records the call, and the snapshot and active alerts reflect it", async () => {
    const exporter = new InMemoryExporter();
    const interceptor = instrument({ serviceName: "example-mcp", exporter, logger: silentLogger });
    const event = await interceptor.interceptModelCall({ ...SEED_CALL });
    expect(exporter.events).toHaveLength(1);
    expect(exporter.events[0]).toBe(event);
    expect(MODEL_CALL_EVENT.check(event)).toBeUndefined();
    expect(Object.isFrozen(event)).toBe(true);

    const promptTokens = await countTokens("gpt-4o", "Hello MCP");
    const completionTokens = await countTokens("gpt-4o", "Hello human");
    expect(event).toMatchObject({
      service: "example-mcp",
      model: "gpt-4o",
      kind: "model_call",
      token_source: "estimated",
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      // gpt-4o: 2.50 USD / 1M input tokens = 2 500 nano-USD per token; 10.00 / 1M output = 10 000.
      cost_nano_usd: promptTokens * 2_500 + completionTokens * 10_000,
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
      prompt_text: null,
      response_text: null,
    });

    const snapshot = interceptor.getMetricsSnapshot();
    expect(snapshot).toMatchObject({
      service: "example-mcp",
      calls: 1,
      fallback_rate: 0,
      retry_rate: 0,
      low_confidence_rate: 1,
      confidence_gate_block_rate: 1,
      prompt_diff_violation_rate: 1,
      shadow_disagreement_rate: 1,
      deterministic_fallback_rate: 1,
      high_risk_path_rate: 1,
      golden_financial_failure_rate: 0,
      error_rate: 0,
      unpriced_calls: 0,
    });
    expect(snapshot.avg_cost_usd).toBeCloseTo(
      (promptTokens * 2_500 + completionTokens * 10_000) / 1e9,
      15,
    );
    expect(interceptor.getActiveAlerts()).toEqual([
      "confidence_gate_block_rate_high",
      "low_confidence_rate_high",
      "prompt_diff_violation_rate_high",
      "shadow_disagreement_rate_high",
      "deterministic_fallback_rate_high",
    ]);
    expect(interceptor.getCounters()).toMatchObject({
      recorded: 1,
      tokensEstimated: 1,
      sent: 1,
      dropped: 0,
    });
  });

  it("works with no exporter at all (local snapshot and alerts only)", async () => {
    const interceptor = instrument({ serviceName: "solo" });
    await interceptor.interceptModelCall({ ...SEED_CALL });
    expect(interceptor.getMetricsSnapshot().calls).toBe(1);
    expect(interceptor.getActiveAlerts().length).toBeGreaterThan(0);
    expect(await interceptor.shutdown()).toEqual({ complete: true, remaining: 0 });
  });
});

describe("event construction", () => {
  const fixed = 1_764_000_000_000; // ms
  const make = (options: Partial<Parameters<typeof instrument>[0]> = {}) => {
    const exporter = new InMemoryExporter();
    const interceptor = instrument({
      serviceName: "svc",
      serviceInstance: "svc-1",
      exporter,
      logger: silentLogger,
      now: () => fixed,
      ...options,
    });
    return { exporter, interceptor };
  };

  it("prefers provider-reported usage, in either spelling, over estimation", async () => {
    const { interceptor } = make();
    const a = await interceptor.interceptModelCall({
      model: "gpt-4o",
      prompt: "x".repeat(50),
      usage: { promptTokens: 7, completionTokens: 3 },
    });
    expect(a).toMatchObject({
      token_source: "reported",
      prompt_tokens: 7,
      completion_tokens: 3,
      cost_nano_usd: 7 * 2_500 + 3 * 10_000,
    });
    const b = await interceptor.interceptModelCall({
      model: "gpt-4o",
      usage: { inputTokens: 0, outputTokens: 0 },
    });
    // Zero reported tokens are a real zero, distinct from "no usage".
    expect(b).toMatchObject({
      token_source: "reported",
      prompt_tokens: 0,
      completion_tokens: 0,
      cost_nano_usd: 0,
    });
    const c = await interceptor.interceptModelCall({ model: "gpt-4o" });
    expect(c).toMatchObject({
      token_source: "none",
      prompt_tokens: null,
      completion_tokens: null,
      cost_nano_usd: null,
    });
    const { interceptor: noEstimates } = make({ estimateTokens: false });
    expect(await noEstimates.interceptModelCall({ model: "gpt-4o", prompt: "hi" })).toMatchObject({
      token_source: "none",
    });
  });

  it("takes times as dates, ms or a duration, and keeps microseconds", async () => {
    const { interceptor } = make();
    const a = await interceptor.interceptModelCall({
      model: "m",
      startTime: new Date(fixed - 1500),
      endTime: new Date(fixed),
    });
    expect(a).toMatchObject({ start_time: (fixed - 1500) * 1000, end_time: fixed * 1000 });
    const b = await interceptor.interceptModelCall({ model: "m", durationMs: 12.345 });
    expect(b).toMatchObject({ end_time: fixed * 1000, start_time: fixed * 1000 - 12_345 });
  });

  it("marks errors with status and type", async () => {
    const { interceptor } = make();
    const rateLimit = Object.assign(new Error("slow down"), { code: "rate_limit_exceeded" });
    expect(await interceptor.interceptModelCall({ model: "m", error: rateLimit })).toMatchObject({
      status: "error",
      error_type: "rate_limit_exceeded",
    });
    expect(
      await interceptor.interceptModelCall({ model: "m", error: new TypeError("x") }),
    ).toMatchObject({ error_type: "TypeError" });
    expect(
      await interceptor.interceptModelCall({ model: "m", status: "error", errorType: "503" }),
    ).toMatchObject({ error_type: "503" });
    expect(
      await interceptor.interceptModelCall({ model: "m", retries: 2, fallbackUsed: true }),
    ).toMatchObject({ status: "ok", retries: 2, fallback_used: true });
  });

  it("replaces out-of-range inputs by null, says so in attributes, and counts them", async () => {
    const { interceptor } = make();
    const event = await interceptor.interceptModelCall({
      model: "m",
      confidence: 1.7,
      promptDiffScore: Number.NaN,
      retries: -1,
      attributes: { "app.request": "r-1" },
    });
    expect(event).toMatchObject({ confidence: null, prompt_diff_score: null, retries: 0 });
    expect(event?.attributes).toEqual({
      "app.request": "r-1",
      "mcpo.invalid.confidence": "1.7",
      "mcpo.invalid.promptDiffScore": "NaN",
      "mcpo.invalid.retries": "-1",
    });
    expect(interceptor.getCounters().invalidInputs).toBe(3);
  });

  it("ships text only when asked, through the redaction hook, and never when the hook fails", async () => {
    const { interceptor } = make({
      captureContent: true,
      redact: (text) => text.replace(/\d{4}-\d{4}/g, "####"),
    });
    const event = await interceptor.interceptModelCall({
      model: "m",
      prompt: "card 1234-5678",
      response: "ok",
    });
    expect(event).toMatchObject({ prompt_text: "card ####", response_text: "ok" });
    const { interceptor: failing } = make({
      captureContent: true,
      redact: () => {
        throw new Error("boom");
      },
    });
    expect(await failing.interceptModelCall({ model: "m", prompt: "secret" })).toMatchObject({
      prompt_text: null,
    });
  });

  it("counts unknown models as unpriced, with a null cost, never 0", async () => {
    const { interceptor } = make();
    const event = await interceptor.interceptModelCall({
      model: "in-house-llm-7b",
      usage: { promptTokens: 10, completionTokens: 5 },
    });
    expect(event?.cost_nano_usd).toBeNull();
    expect(interceptor.getCounters().unpriced).toBe(1);
    expect(interceptor.getMetricsSnapshot()).toMatchObject({
      unpriced_calls: 1,
      avg_cost_usd: null,
      total_cost_usd: "0.000000000",
    });
    const { interceptor: priced } = make({
      prices: { "in-house-llm-7b": { inputPerMillionUsd: "0.10", outputPerMillionUsd: "0.40" } },
    });
    expect(
      await priced.interceptModelCall({
        model: "in-house-llm-7b",
        usage: { promptTokens: 10, completionTokens: 5 },
      }),
    ).toMatchObject({
      cost_nano_usd: 10 * 100 + 5 * 400,
    });
  });

  it("fails open: an exporter that throws never reaches the host", async () => {
    const logger = collectingLogger();
    const broken: EventExporter = {
      export: () => {
        throw new Error("exporter exploded");
      },
      flush: () => Promise.resolve({ complete: true, remaining: 0 }),
      shutdown: () => Promise.resolve({ complete: true, remaining: 0 }),
      stats: () => ({ sent: 0, dropped: 0, retried: 0, buffered: 0 }),
    };
    const interceptor = instrument({ serviceName: "svc", exporter: broken, logger });
    const event = await interceptor.interceptModelCall({ model: "m" });
    // The host gets the recorded event (undefined would mean the interceptor itself failed).
    expect(event).toMatchObject({ service: "svc", model: "m", kind: "model_call", status: "ok" });
    expect(MODEL_CALL_EVENT.check(event)).toBeUndefined();
    expect(interceptor.getCounters()).toMatchObject({ internalErrors: 1, recorded: 1 });
    expect(logger.lines).toEqual(["error the exporter failed"]);
  });

  it("rejects bad settings naming the option", () => {
    expect(() => instrument({ serviceName: "" })).toThrow(/serviceName/);
    expect(() => instrument({ serviceName: "s", rollingWindowMs: -1 })).toThrow(/rollingWindowMs/);
    expect(() => instrument({ serviceName: "s", bucketMs: 600_000 })).toThrow(/bucketMs/);
    expect(() =>
      instrument({ serviceName: "s", metrics: { thresholds: { prompt_diff: 2 } } }),
    ).toThrow(/metrics.thresholds.prompt_diff/);
    expect(() =>
      instrument({
        serviceName: "s",
        prices: { m: { inputPerMillionUsd: "-1", outputPerMillionUsd: "1" } },
      }),
    ).toThrow(/prices\["m"\]/);
  });
});

describe("the rolling window", () => {
  it("forgets calls older than the window and uses the processor's rules", async () => {
    let now = 1_764_000_000_000;
    const interceptor = instrument({
      serviceName: "svc",
      rollingWindowMs: 60_000,
      bucketMs: 10_000,
      now: () => now,
      logger: silentLogger,
    });
    await interceptor.interceptModelCall({ model: "m", status: "error", errorType: "x" });
    now += 30_000;
    await interceptor.interceptModelCall({ model: "m" });
    expect(interceptor.getMetricsSnapshot()).toMatchObject({ calls: 2, error_rate: 0.5 });
    // Two calls: error_rate_high (> 5 %) waits for 20 samples, as in the processor.
    expect(interceptor.getActiveAlerts()).toEqual([]);
    for (let i = 0; i < 18; i++) await interceptor.interceptModelCall({ model: "m" });
    expect(interceptor.getMetricsSnapshot()).toMatchObject({ calls: 20, error_rate: 0.05 });
    expect(interceptor.getActiveAlerts()).toEqual([]);
    await interceptor.interceptModelCall({ model: "m", status: "error", errorType: "x" });
    expect(interceptor.getActiveAlerts()).toEqual(["error_rate_high"]);
    now += 45_000;
    expect(interceptor.getMetricsSnapshot()).toMatchObject({ calls: 20, error_rate: 0.05 });
    now += 60_000;
    expect(interceptor.getMetricsSnapshot()).toMatchObject({
      calls: 0,
      error_rate: null,
      fallback_rate: null,
    });
    // The alerts are the processor's incidents, not the rolling window's verdict: the incident
    // stays firing until a later window with enough samples is judged ok.
    expect(interceptor.getActiveAlerts()).toEqual(["error_rate_high"]);
    for (let i = 0; i < 20; i++) await interceptor.interceptModelCall({ model: "m" });
    expect(interceptor.getActiveAlerts()).toEqual([]);
  });
});

describe("the local alerts are the processor's", () => {
  /**
   * The rule keys the processor's state machine reports firing for `service`: the same events,
   * then a tick at `nowMs` (in rule order, as getActiveAlerts gives them).
   */
  function processorFiring(
    events: readonly ModelCallEvent[],
    service: string,
    nowMs: number,
  ): string[] {
    const state = new PartitionState(DEFAULT_WINDOW_SETTINGS);
    for (const event of events) state.apply({ type: "event", event });
    state.apply({ type: "tick", eventTimeMicros: nowMs * 1000 });
    const firing = new Set(
      state
        .snapshot()
        .alerts.active.filter((alert) => alert.service === service)
        .map((alert) => alert.rule),
    );
    return DEFAULT_ALERT_RULES.filter((rule) => firing.has(rule.key)).map((rule) => rule.key);
  }

  const WINDOW_MS = 60_000;
  const GRACE_MS = 10_000;

  it("keeps an incident firing after its window, as the processor does, until a window is judged ok", async () => {
    let now = 1_764_000_000_000;
    const exporter = new InMemoryExporter();
    const interceptor = instrument({
      serviceName: "svc",
      exporter,
      now: () => now,
      logger: silentLogger,
    });
    // 25 calls, 5 errors: error_rate_high breaches in the first window.
    for (let i = 0; i < 25; i++) {
      now += 1000;
      await interceptor.interceptModelCall({ model: "m", status: i % 5 === 0 ? "error" : "ok" });
    }
    // Quiet for ten minutes: the rolling window forgets the calls, the incident stays firing.
    now += 600_000;
    expect(interceptor.getActiveAlerts()).toEqual(processorFiring(exporter.events, "svc", now));
    expect(interceptor.getActiveAlerts()).toEqual(["error_rate_high"]);
  });

  it("for the same calls, getActiveAlerts() equals what the processor's state machine reports firing, at every step", async () => {
    const random = seededRandom("producer.unit local alerts vs processor");
    let now = 1_764_000_000_000 + random.int(0, 59_999);
    const exporter = new InMemoryExporter();
    const interceptor = instrument({
      serviceName: "svc",
      exporter,
      now: () => now,
      logger: silentLogger,
    });
    let compared = 0;
    let firingSeen = 0;
    for (let phase = 0; phase < 12; phase++) {
      const errorRate = random.next() < 0.5 ? 0 : random.next() * 0.3;
      const lowConfidence = random.next() < 0.5 ? 0 : random.next();
      const calls = random.int(0, 60);
      for (let i = 0; i < calls; i++) {
        now += random.int(0, 3000);
        await interceptor.interceptModelCall({
          model: random.next() < 0.5 ? "a" : "b",
          status: random.next() < errorRate ? "error" : "ok",
          confidence: random.next() < lowConfidence ? 0.2 : 0.9,
          durationMs: random.int(1, 5000),
        });
      }
      // Once the windows with calls have closed, the replica and the processor say the same.
      now += random.int(0, 3) === 0 ? random.int(0, 400_000) : WINDOW_MS + GRACE_MS;
      const lastEnd = Math.max(0, ...exporter.events.map((event) => event.end_time / 1000));
      const closedAll = Math.floor(lastEnd / WINDOW_MS) * WINDOW_MS + WINDOW_MS + GRACE_MS <= now;
      const local = interceptor.getActiveAlerts();
      // While a window is open, it is judged as it stands: what the processor reports once it
      // closes with no more calls.
      expect(local, `phase ${phase}`).toEqual(
        processorFiring(exporter.events, "svc", closedAll ? now : now + WINDOW_MS + GRACE_MS),
      );
      compared++;
      if (local.length > 0) firingSeen++;
    }
    expect(compared).toBe(12);
    expect(firingSeen, "some phase had incidents firing").toBeGreaterThan(0);
  });
});

describe("custom metrics settings (instrument({ metrics }))", () => {
  /** The README's config-file section, as a host would load it. */
  const CONFIG = parseYaml(`
metrics:
  thresholds: { low_confidence: 0.5, prompt_diff: 0.6 }
  rules:
    - { key: any_fallback, metric: fallback_rate, comparator: gt, threshold: 0.01, minSamples: 50 }
    - { key: low_conf, metric: low_confidence_rate, comparator: gte, threshold: 0.3, minSamples: 1 }
    - { key: fast_p95, metric: latency_p95_ms, comparator: lt, threshold: 60000, minSamples: 10 }
    - { key: golden_many, metric: golden_financial_failure_rate, comparator: gt, threshold: 0.9, minSamples: 1 }
`) as { metrics: { thresholds: { low_confidence: number; prompt_diff: number } } & object };
  const CUSTOM_RULES = (CONFIG.metrics as unknown as { rules: OracleRule[] }).rules;
  const DEFAULT_RULES: readonly OracleRule[] = DEFAULT_ALERT_RULES;

  /** 300 random calls (replayable with MCPO_TEST_SEED), ending now, of priced and unpriced models. */
  function calls(): ModelCallInput[] {
    const random = seededRandom("producer.unit custom metrics calls");
    const pick = <T>(values: readonly T[]): T => values[random.int(0, values.length - 1)] as T;
    const maybe = <T>(value: T): T | null => (random.next() < 0.15 ? null : value);
    const unit = () => random.int(0, 100) / 100; // on the thresholds now and then
    return Array.from({ length: 300 }, () => ({
      model: pick(["gpt-4o", "gpt-4o-mini", "in-house-llm-7b"]),
      usage: { promptTokens: random.int(0, 5000), completionTokens: random.int(0, 800) },
      confidence: maybe(unit()),
      confidenceGateThreshold: maybe(pick([0.5, 0.7])),
      promptDiffScore: maybe(unit()),
      shadowAgreement: maybe(random.next() < 0.8),
      highRiskPath: random.next() < 0.3,
      deterministicFallbackTriggered: random.next() < 0.2,
      isGoldenFinancialScenario: random.next() < 0.1,
      goldenScenarioPassed: maybe(random.next() < 0.9),
      retries: random.next() < 0.1 ? random.int(1, 3) : 0,
      fallbackUsed: random.next() < 0.08,
      status: random.next() < 0.03 ? "error" : "ok",
      // Whole microseconds, up to 20 s.
      durationMs: random.int(0, 20_000_000) / 1000,
    }));
  }

  async function record(
    inputs: readonly ModelCallInput[],
    metrics: unknown,
  ): Promise<{
    snapshot: MetricsSnapshot;
    alerts: string[];
    events: InMemoryExporter["events"];
  }> {
    const exporter = new InMemoryExporter();
    const interceptor = instrument({
      serviceName: "svc",
      exporter,
      logger: silentLogger,
      now: () => 1_764_000_005_000,
      estimateTokens: false,
      metrics,
    });
    for (const call of inputs) await interceptor.interceptModelCall(call);
    return {
      snapshot: interceptor.getMetricsSnapshot(),
      alerts: interceptor.getActiveAlerts(),
      events: exporter.events,
    };
  }

  function expectSnapshot(snapshot: MetricsSnapshot, want: OracleWindow): void {
    expect(snapshot.calls).toBe(want.counts.calls);
    expect(snapshot.prompt_tokens).toBe(Number(want.counts.prompt_tokens));
    expect(snapshot.completion_tokens).toBe(Number(want.counts.completion_tokens));
    expect(snapshot.unpriced_calls).toBe(want.counts.calls - want.counts.calls_with_cost);
    expect(snapshot.total_cost_usd).toBe((Number(want.counts.cost_nano_usd) / 1e9).toFixed(9));
    for (const [metric, exact] of Object.entries(want.rates)) {
      const value = snapshot[metric as keyof MetricsSnapshot];
      if (exact === null) expect(value, metric).toBeNull();
      else if (metric.startsWith("latency_"))
        expect(Math.abs(Number(value) - exact), metric).toBeLessThanOrEqual(exact * 0.01 + 1e-9);
      else expect(value, metric).toBeCloseTo(exact, 12);
    }
  }

  /** The rules the oracle says breach over the one window, in rule order. */
  const breaching = (window: OracleWindow, rules: readonly OracleRule[]): string[] =>
    oracleAlerts([window], rules).map((transition) => transition.rule);

  it("take the thresholds into every snapshot rate and the rules into the active alerts, equal to the oracle; the same calls with the defaults give other rates and alerts", async () => {
    const inputs = calls();
    const custom = await record(inputs, CONFIG.metrics);
    const defaults = await record(inputs, undefined);
    expect(custom.events).toHaveLength(300);
    const window = { service: "svc", model: null, start: 0, end: 1 };
    const wantCustom = oracleWindow(custom.events, window, CONFIG.metrics.thresholds);
    const wantDefault = oracleWindow(defaults.events, window, ORACLE_DEFAULT_THRESHOLDS);
    expectSnapshot(custom.snapshot, wantCustom);
    expectSnapshot(defaults.snapshot, wantDefault);
    // The thresholds changed what counts as low confidence and as a prompt-diff violation.
    expect(custom.snapshot.low_confidence_rate).not.toBe(defaults.snapshot.low_confidence_rate);
    expect(custom.snapshot.prompt_diff_violation_rate).not.toBe(
      defaults.snapshot.prompt_diff_violation_rate,
    );
    // The custom rules replace the defaults as a whole.
    expect(custom.alerts).toEqual(breaching(wantCustom, CUSTOM_RULES));
    expect(defaults.alerts).toEqual(breaching(wantDefault, DEFAULT_RULES));
    // A custom rule fires where the default rule on the same metric stays quiet, and a default
    // that fires is gone with the custom rules.
    expect(custom.alerts).toEqual(expect.arrayContaining(["any_fallback", "low_conf", "fast_p95"]));
    expect(defaults.alerts).not.toContain("fallback_rate_high");
    expect(defaults.alerts).toContain("shadow_disagreement_rate_high");
    expect(custom.alerts).not.toContain("shadow_disagreement_rate_high");
  });
});

describe("traceModelCall", () => {
  it("times the call (its span covers at least the time the call took), passes the result through, and nests calls made inside it", async () => {
    const exporter = new InMemoryExporter();
    const interceptor = instrument({ serviceName: "svc", exporter, logger: silentLogger });
    let tookMs = 0;
    const result = await interceptor.traceModelCall(
      { model: "gpt-4o", highRiskPath: true },
      async () => {
        const started = performance.now();
        await interceptor.interceptModelCall({
          model: "gpt-4o-mini",
          usage: { promptTokens: 1, completionTokens: 1 },
        });
        // Some real asynchronous work inside the span.
        await new Promise((resolve) => setTimeout(resolve, 20));
        tookMs = performance.now() - started;
        return { answer: 42, usage: { prompt_tokens: 11, completion_tokens: 4 } };
      },
      (r) => ({
        usage: { promptTokens: r.usage.prompt_tokens, completionTokens: r.usage.completion_tokens },
        confidence: 0.9,
      }),
    );
    expect(result.answer).toBe(42);
    expect(exporter.events).toHaveLength(2);
    const [inner, outer] = exporter.events;
    expect(outer).toMatchObject({
      model: "gpt-4o",
      prompt_tokens: 11,
      completion_tokens: 4,
      confidence: 0.9,
      high_risk_path: true,
    });
    // The span's duration is at least what the call itself measured (µs, truncated).
    expect(tookMs).toBeGreaterThan(0);
    expect((outer?.end_time ?? 0) - (outer?.start_time ?? 0)).toBeGreaterThanOrEqual(
      Math.floor(tookMs * 1000) - 1,
    );
    expect(inner?.parent_span_id).toBe(outer?.span_id);
    expect(inner?.trace_id).toBe(outer?.trace_id);
    expect(inner?.start_time).toBeGreaterThanOrEqual(outer?.start_time ?? Infinity);
    expect(inner?.end_time).toBeLessThanOrEqual(outer?.end_time ?? -Infinity);
  });

  it("rethrows the call's own error unchanged and records it", async () => {
    const exporter = new InMemoryExporter();
    const interceptor = instrument({ serviceName: "svc", exporter, logger: silentLogger });
    const failure = new RangeError("model said no");
    await expect(
      interceptor.traceModelCall({ model: "m" }, () => Promise.reject(failure)),
    ).rejects.toBe(failure);
    expect(exporter.events[0]).toMatchObject({ status: "error", error_type: "RangeError" });
  });
});

describe("token estimation with the real tokenizer", () => {
  it("matches the published token ids' counts for fixed strings", async () => {
    // OpenAI's cookbook: "tiktoken is great!" is 6 tokens in both cl100k_base and o200k_base;
    // tiktoken's README: "hello world" is [15339, 1917] in cl100k_base.
    expect(await countTokens("gpt-4o", "tiktoken is great!")).toBe(6);
    expect(await countTokens("gpt-4", "tiktoken is great!")).toBe(6);
    expect(await countTokens("gpt-4", "hello world")).toBe(2);
    expect(await countTokens("gpt-4o", "")).toBe(0);
  });

  it("picks each model's encoding, and documents the approximation for other vendors", () => {
    expect(encodingForModel("gpt-4o")).toEqual({ encoding: "o200k_base", exact: true });
    expect(encodingForModel("gpt-4")).toEqual({ encoding: "cl100k_base", exact: true });
    expect(encodingForModel("gpt-3.5-turbo")).toEqual({ encoding: "cl100k_base", exact: true });
    expect(encodingForModel("claude-sonnet-4-5")).toEqual({ encoding: "o200k_base", exact: false });
  });
});

describe("cost arithmetic", () => {
  it("converts decimal prices exactly and rounds the cost half-up once", () => {
    expect(pricePerMillionToPicoPerToken("2.5")).toBe(2_500_000n);
    expect(pricePerMillionToPicoPerToken(0.15)).toBe(150_000n);
    expect(pricePerMillionToPicoPerToken("0.0375")).toBe(37_500n);
    expect(() => pricePerMillionToPicoPerToken("0.0000001")).toThrow(/finer than 1e-6/);
    expect(() => pricePerMillionToPicoPerToken("-1")).toThrow(/non-negative decimal/);
    const price = {
      inputPicoUsdPerToken: 37_500n,
      outputPicoUsdPerToken: 150_000n,
      tiers: [],
      source: "override",
    } as const;
    // 3 × 37.5 nano = 112.5 → 113 (half-up); 0.1 + 0.2 style sums stay exact.
    expect(costNanoUsd(price, 3, 0)).toBe(113);
    expect(costNanoUsd(price, 1, 1)).toBe(188); // 37.5 + 150 = 187.5 → 188
    expect(costNanoUsd(price, null, 1)).toBeNull();
  });

  it("agrees with the price package's own calculation, tiers included", () => {
    const table = new PriceTable();
    for (const [model, input, output] of [
      ["gpt-4o", 1_000, 500],
      ["gpt-4o-mini", 123_456, 789],
      ["claude-3-5-haiku-latest", 50_000, 2_000],
      ["gemini-1.5-pro", 300_000, 1_000], // above the 128k tier
      ["gemini-1.5-pro", 100_000, 1_000], // below it
    ] as const) {
      const ours = table.cost(model, null, input, output);
      const theirs = calcPrice({ input_tokens: input, output_tokens: output }, model)?.total_price;
      expect(ours, model).not.toBeNull();
      expect((ours ?? 0) / 1e9, `${model} ${input}`).toBeCloseTo(theirs ?? -1, 9);
    }
    expect(table.lookup("llama-3.1-8b")).toBeUndefined();
  });
});
