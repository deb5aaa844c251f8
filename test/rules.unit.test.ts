import { describe, expect, it } from "vitest";

import type { Comparator, MetricRollup } from "../avro/generated.js";
import { ConfigError } from "../config/index.js";
import {
  AlertTracker,
  alertId,
  compare,
  DEFAULT_ALERT_RULES,
  evaluateRule,
  parseMetricsConfig,
  rollupEvents,
  WindowAccumulator,
  type AlertRule,
  type AlertTrackerState,
} from "../metrics/index.js";
import { sampleEvent } from "./support/events.js";

const MINUTE = 60_000_000;

function windowRollup(
  events: Parameters<typeof sampleEvent>[0][],
  windowIndex: number,
): MetricRollup {
  const start = 1_764_000_000_000_000 - (1_764_000_000_000_000 % MINUTE) + windowIndex * MINUTE;
  const accumulator = new WindowAccumulator();
  for (const overrides of events)
    accumulator.add(
      sampleEvent({ start_time: start + 1000, end_time: start + 2000, ...overrides }),
    );
  return accumulator.toRollup("example-mcp", null, { start, end: start + MINUTE });
}

const errorRule: AlertRule = {
  key: "errors",
  metric: "error_rate",
  comparator: "gt",
  threshold: 0.5,
  minSamples: 2,
};

describe("rule comparators", () => {
  it.each([
    ["gt", 0.5, 0.5, false],
    ["gt", 0.6, 0.5, true],
    ["gte", 0.5, 0.5, true],
    ["gte", 0.4, 0.5, false],
    ["lt", 0.5, 0.5, false],
    ["lt", 0.4, 0.5, true],
    ["lte", 0.5, 0.5, true],
    ["lte", 0.6, 0.5, false],
  ] as const)("%s: %d against %d is %s", (comparator: Comparator, value, threshold, expected) => {
    expect(compare(value, comparator, threshold)).toBe(expected);
  });
});

describe("rule verdicts", () => {
  it("breach, ok, or insufficient below the minimum samples or with a null metric", () => {
    expect(
      evaluateRule(errorRule, windowRollup([{ status: "error" }, { status: "error" }], 0)),
    ).toEqual({
      verdict: "breach",
      value: 1,
      samples: 2,
    });
    expect(
      evaluateRule(errorRule, windowRollup([{ status: "ok" }, { status: "error" }], 0)).verdict,
    ).toBe("ok");
    expect(evaluateRule(errorRule, windowRollup([{ status: "error" }], 0)).verdict).toBe(
      "insufficient",
    );
    const golden: AlertRule = {
      ...errorRule,
      metric: "golden_financial_failure_rate",
      minSamples: 1,
    };
    const noGolden = evaluateRule(
      golden,
      windowRollup([{ is_golden_financial_scenario: false }], 0),
    );
    expect(noGolden).toEqual({ verdict: "insufficient", value: null, samples: 0 });
  });
});

describe("alert transitions", () => {
  it("fires once, stays quiet while firing, and resolves on a later ok window with the same id", () => {
    const tracker = new AlertTracker([errorRule]);
    const breach = [{ status: "error" as const }, { status: "error" as const }];
    const fired = tracker.observe(windowRollup(breach, 0));
    expect(fired).toHaveLength(1);
    expect(fired[0]).toMatchObject({
      state: "firing",
      rule: "errors",
      observed_value: 1,
      sample_count: 2,
    });
    expect(tracker.observe(windowRollup(breach, 1))).toEqual([]);
    // Too few samples: no verdict, the incident stays open.
    expect(tracker.observe(windowRollup([{ status: "ok" }], 2))).toEqual([]);
    expect(tracker.active()).toHaveLength(1);
    const resolved = tracker.observe(windowRollup([{ status: "ok" }, { status: "ok" }], 3));
    expect(resolved).toHaveLength(1);
    expect(resolved[0]?.state).toBe("resolved");
    expect(resolved[0]?.alert_id).toBe(fired[0]?.alert_id);
    expect(resolved[0]?.fired_window_start).toBe(fired[0]?.window_start);
    expect(resolved[0]?.emitted_at).toBe(resolved[0]?.window_end);
    expect(tracker.active()).toEqual([]);
    // A new incident gets a new id.
    const again = tracker.observe(windowRollup(breach, 4));
    expect(again[0]?.alert_id).not.toBe(fired[0]?.alert_id);
  });

  it("gives the same alerts for the same windows, and survives a snapshot and restore", () => {
    const windows = [
      windowRollup([{ status: "error" }, { status: "error" }], 0),
      windowRollup([{ status: "ok" }, { status: "ok" }], 1),
      windowRollup([{ status: "error" }, { status: "error" }], 2),
    ];
    const straight = new AlertTracker([errorRule]);
    const all = windows.flatMap((w) => straight.observe(w));
    const first = new AlertTracker([errorRule]);
    const part = first.observe(windows[0] as MetricRollup);
    const restored = new AlertTracker(
      [errorRule],
      JSON.parse(JSON.stringify(first.snapshot())) as AlertTrackerState,
    );
    const rest = windows.slice(1).flatMap((w) => restored.observe(w));
    expect([...part, ...rest]).toEqual(all);
    expect(all.map((a) => a.state)).toEqual(["firing", "resolved", "firing"]);
    expect(all[0]?.alert_id).toBe(alertId("example-mcp", "errors", windows[0]?.window_start ?? 0));
    expect(all[0]?.alert_id).toMatch(/^[0-9a-f]{32}$/);
  });

  it("yields non-empty alerts for the seed's quick-start call with the default rules", () => {
    // confidence 0.64 under a 0.70 gate, high-risk path with deterministic fallback,
    // prompt diff 0.42, shadow disagreement, golden scenario passed.
    const quickStart = sampleEvent();
    const [total] = rollupEvents([quickStart], MINUTE).filter((r) => r.model === null);
    const tracker = new AlertTracker(DEFAULT_ALERT_RULES);
    const fired = tracker.observe(total as MetricRollup);
    expect(fired.map((a) => a.rule).sort()).toEqual([
      "confidence_gate_block_rate_high",
      "deterministic_fallback_rate_high",
      "low_confidence_rate_high",
      "prompt_diff_violation_rate_high",
      "shadow_disagreement_rate_high",
    ]);
    expect(fired.every((a) => a.state === "firing")).toBe(true);
  });
});

describe("metrics config", () => {
  it("defaults thresholds and rules", () => {
    const config = parseMetricsConfig({});
    expect(config.thresholds).toEqual({ low_confidence: 0.7, prompt_diff: 0.3 });
    expect(config.rules).toEqual(DEFAULT_ALERT_RULES);
    expect(Object.isFrozen(config.rules)).toBe(true);
  });

  it("takes rules and thresholds, and names the wrong key", () => {
    const config = parseMetricsConfig({
      thresholds: { low_confidence: 0.5 },
      rules: [errorRule],
    });
    expect(config.thresholds).toEqual({ low_confidence: 0.5, prompt_diff: 0.3 });
    expect(config.rules).toEqual([errorRule]);
    const wrong = (input: unknown): ConfigError => {
      try {
        parseMetricsConfig(input);
      } catch (error) {
        if (error instanceof ConfigError) return error;
      }
      throw new Error("expected a ConfigError");
    };
    expect(wrong({ thresholds: { low_confidence: 1.7 } }).key).toBe(
      "metrics.thresholds.low_confidence",
    );
    expect(wrong({ rules: [errorRule, { ...errorRule, key: "b", threshold: "high" }] }).key).toBe(
      "metrics.rules[1].threshold",
    );
    expect(wrong({ rules: [{ ...errorRule, metric: "nonsense_rate" }] }).key).toBe(
      "metrics.rules[0].metric",
    );
    expect(wrong({ rules: [errorRule, errorRule] }).key).toBe("metrics.rules[1].key");
    expect(wrong({ unknownKey: 1 }).message).toContain("unknownKey");
  });
});
