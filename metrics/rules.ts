/**
 * Alert rules over closed windows, and the per-(service, rule) state machine that turns their
 * verdicts into firing/resolved transitions with deterministic ids.
 */
import { createHash } from "node:crypto";

import type { AlertEvent, Comparator, MetricRollup } from "../avro/generated.js";
import { sampleCount, type MetricName } from "./rates.js";

/** A rule: `metric comparator threshold`, judged only on windows with at least `minSamples`. */
export interface AlertRule {
  /** Unique key, e.g. `confidence_gate_block_rate_high`. */
  readonly key: string;
  readonly metric: MetricName;
  readonly comparator: Comparator;
  readonly threshold: number;
  /** The metric's denominator (latency: calls) must reach this for a verdict. */
  readonly minSamples: number;
}

/**
 * Default rules. Decision-pattern rules judge a window from one sample on: on high-risk paths
 * those events are rare and each matters, and the seed's quick start (one call: confidence 0.64
 * under a 0.70 gate, a high-risk path with a deterministic fallback, prompt diff 0.42, shadow
 * disagreement, golden scenario passed) must show what it triggers. It fires
 * `confidence_gate_block_rate_high`, `low_confidence_rate_high`, `prompt_diff_violation_rate_high`,
 * `shadow_disagreement_rate_high` and `deterministic_fallback_rate_high`; the passed golden
 * scenario keeps `golden_financial_failure_rate_high` quiet. Volume-driven rules (errors,
 * fallbacks, retries, latency) wait for enough samples not to page on one call.
 */
export const DEFAULT_ALERT_RULES: readonly AlertRule[] = Object.freeze([
  {
    key: "golden_financial_failure_rate_high",
    metric: "golden_financial_failure_rate",
    comparator: "gt",
    threshold: 0,
    minSamples: 1,
  },
  {
    key: "confidence_gate_block_rate_high",
    metric: "confidence_gate_block_rate",
    comparator: "gt",
    threshold: 0.2,
    minSamples: 1,
  },
  {
    key: "low_confidence_rate_high",
    metric: "low_confidence_rate",
    comparator: "gt",
    threshold: 0.25,
    minSamples: 1,
  },
  {
    key: "prompt_diff_violation_rate_high",
    metric: "prompt_diff_violation_rate",
    comparator: "gt",
    threshold: 0.2,
    minSamples: 1,
  },
  {
    key: "shadow_disagreement_rate_high",
    metric: "shadow_disagreement_rate",
    comparator: "gt",
    threshold: 0.1,
    minSamples: 1,
  },
  {
    key: "deterministic_fallback_rate_high",
    metric: "deterministic_fallback_rate",
    comparator: "gt",
    threshold: 0.5,
    minSamples: 1,
  },
  {
    key: "error_rate_high",
    metric: "error_rate",
    comparator: "gt",
    threshold: 0.05,
    minSamples: 20,
  },
  {
    key: "fallback_rate_high",
    metric: "fallback_rate",
    comparator: "gt",
    threshold: 0.2,
    minSamples: 20,
  },
  {
    key: "retry_rate_high",
    metric: "retry_rate",
    comparator: "gt",
    threshold: 0.3,
    minSamples: 20,
  },
  {
    key: "latency_p95_high",
    metric: "latency_p95_ms",
    comparator: "gt",
    threshold: 30_000,
    minSamples: 20,
  },
]);

/** `value comparator threshold`. */
export function compare(value: number, comparator: Comparator, threshold: number): boolean {
  switch (comparator) {
    case "gt":
      return value > threshold;
    case "gte":
      return value >= threshold;
    case "lt":
      return value < threshold;
    case "lte":
      return value <= threshold;
  }
}

/** A rule's verdict on one window: breach, ok, or too few samples to say. */
export interface RuleVerdict {
  readonly verdict: "breach" | "ok" | "insufficient";
  /** The metric's value; null when its denominator was 0. */
  readonly value: number | null;
  readonly samples: number;
}

/** Judges one rule on one closed window's rollup. A null metric never breaches. */
export function evaluateRule(rule: AlertRule, rollup: MetricRollup): RuleVerdict {
  const value = rollup.rates[rule.metric];
  const samples = sampleCount(rule.metric, rollup.counts);
  if (value === null || samples < rule.minSamples || samples === 0)
    return { verdict: "insufficient", value, samples };
  return {
    verdict: compare(value, rule.comparator, rule.threshold) ? "breach" : "ok",
    value,
    samples,
  };
}

/**
 * The id of an incident: the same service, rule and first breaching window always give the same
 * id, so a replay of the log produces the same alerts.
 */
export function alertId(service: string, ruleKey: string, firedWindowStart: number): string {
  return createHash("sha256")
    .update(`${service}\u0000${ruleKey}\u0000${firedWindowStart}`)
    .digest("hex")
    .slice(0, 32);
}

/** One incident in progress. */
export interface ActiveAlert {
  readonly service: string;
  readonly rule: string;
  readonly alertId: string;
  readonly firedWindowStart: number;
}

/** The tracker's state, plain data: what a processor checkpoints. */
export interface AlertTrackerState {
  readonly active: readonly ActiveAlert[];
}

/**
 * Turns verdicts on closed service-level windows into transitions per (service, rule): `firing`
 * when a window breaches while the rule is quiet, `resolved` when a later window is judged ok. A
 * window with too few samples changes nothing. Windows must be observed in event-time order per
 * service.
 */
export class AlertTracker {
  private readonly firing = new Map<string, ActiveAlert>();

  constructor(
    readonly rules: readonly AlertRule[] = DEFAULT_ALERT_RULES,
    state?: AlertTrackerState,
  ) {
    const keys = new Set<string>();
    for (const rule of rules) {
      if (keys.has(rule.key)) throw new RangeError(`duplicate alert rule key ${rule.key}`);
      keys.add(rule.key);
    }
    for (const alert of state?.active ?? [])
      this.firing.set(slot(alert.service, alert.rule), alert);
  }

  /**
   * Judges every rule on a closed window's service-level rollup (model null) and returns the
   * transitions, in rule order.
   */
  observe(rollup: MetricRollup): AlertEvent[] {
    const transitions: AlertEvent[] = [];
    for (const rule of this.rules) {
      const { verdict, value, samples } = evaluateRule(rule, rollup);
      const key = slot(rollup.service, rule.key);
      const active = this.firing.get(key);
      let state: AlertEvent["state"] | undefined;
      let incident: ActiveAlert | undefined;
      if (verdict === "breach" && !active) {
        incident = {
          service: rollup.service,
          rule: rule.key,
          alertId: alertId(rollup.service, rule.key, rollup.window_start),
          firedWindowStart: rollup.window_start,
        };
        this.firing.set(key, incident);
        state = "firing";
      } else if (verdict === "ok" && active) {
        this.firing.delete(key);
        incident = active;
        state = "resolved";
      }
      if (state && incident)
        transitions.push({
          alert_id: incident.alertId,
          service: rollup.service,
          rule: rule.key,
          metric: rule.metric,
          comparator: rule.comparator,
          state,
          observed_value: value,
          threshold: rule.threshold,
          min_samples: rule.minSamples,
          sample_count: samples,
          window_start: rollup.window_start,
          window_end: rollup.window_end,
          fired_window_start: incident.firedWindowStart,
          emitted_at: rollup.window_end,
        });
    }
    return transitions;
  }

  /** Incidents now firing, optionally for one service, sorted by service then rule. */
  active(service?: string): ActiveAlert[] {
    return [...this.firing.values()]
      .filter((alert) => service === undefined || alert.service === service)
      .sort((a, b) => byCodeUnits(a.service, b.service) || byCodeUnits(a.rule, b.rule));
  }

  /** The state to checkpoint; `new AlertTracker(rules, state)` restores it. */
  snapshot(): AlertTrackerState {
    return { active: this.active() };
  }
}

/** Locale-independent order, so every machine sorts alike. */
function byCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function slot(service: string, rule: string): string {
  return `${service}\u0000${rule}`;
}
