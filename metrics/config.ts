/**
 * Metrics configuration: the thresholds counts are taken with and the alert rules, parsed from
 * untrusted input (a config file, flags) into frozen values with errors that name the key.
 */
import { z } from "zod";

import type { MetricThresholds } from "../avro/generated.js";
import { ConfigError } from "../config/index.js";
import { DEFAULT_THRESHOLDS } from "./accumulator.js";
import { METRIC_NAMES } from "./rates.js";
import { DEFAULT_ALERT_RULES, type AlertRule } from "./rules.js";

/** Thresholds and rules, validated. */
export interface MetricsConfig {
  readonly thresholds: MetricThresholds;
  readonly rules: readonly AlertRule[];
}

const unit = z.number().min(0).max(1);

const ruleSchema = z.strictObject({
  // An alert's `rule` is at most 256 characters in the contract (AlertEvent.rule).
  key: z
    .string()
    .max(256)
    .regex(/^[a-z0-9_.-]+$/, "lower-case letters, digits, '_', '.', '-'"),
  metric: z.enum(METRIC_NAMES as [string, ...string[]]),
  comparator: z.enum(["gt", "gte", "lt", "lte"]),
  threshold: z.number(),
  minSamples: z.number().int().min(1),
});

const configSchema = z.strictObject({
  thresholds: z
    .strictObject({ low_confidence: unit.optional(), prompt_diff: unit.optional() })
    .optional(),
  rules: z.array(ruleSchema).optional(),
});

/**
 * Parses metrics settings; absent keys take the defaults ({@link DEFAULT_THRESHOLDS},
 * {@link DEFAULT_ALERT_RULES}). Rules replace the defaults as a whole when given.
 *
 * @param input e.g. the `metrics` section of a config file.
 * @param keyPrefix how the section is named in error messages.
 * @throws {ConfigError} naming the first wrong key, e.g. `metrics.rules[2].threshold`.
 */
export function parseMetricsConfig(input: unknown = {}, keyPrefix = "metrics"): MetricsConfig {
  const result = configSchema.safeParse(input ?? {});
  if (!result.success) {
    const first = result.error.issues[0];
    const path = (first?.path ?? [])
      .map((part) => (typeof part === "number" ? `[${part}]` : `.${String(part)}`))
      .join("");
    throw new ConfigError(`${keyPrefix}${path}`, first?.message ?? "invalid");
  }
  const rules = (result.data.rules ?? DEFAULT_ALERT_RULES) as readonly AlertRule[];
  const seen = new Set<string>();
  rules.forEach((rule, index) => {
    if (seen.has(rule.key))
      throw new ConfigError(`${keyPrefix}.rules[${index}].key`, `duplicate rule key ${rule.key}`);
    seen.add(rule.key);
  });
  return Object.freeze({
    thresholds: Object.freeze({ ...DEFAULT_THRESHOLDS, ...result.data.thresholds }),
    rules: Object.freeze(rules.map((rule) => Object.freeze({ ...rule }))),
  });
}
