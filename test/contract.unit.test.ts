import { readFileSync } from "node:fs";

import avro from "avsc";
import { describe, expect, it } from "vitest";

import { ALERT_EVENT, METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import { OTEL_FIELD_MAPPING } from "../avro/generated.js";
import { rollupEvents } from "../metrics/index.js";
import {
  CONTRACT_DOC_PATH,
  generate,
  generateDoc,
  GENERATED_PATH,
  SCHEMA_FILES,
} from "../scripts/gen-avro-types.js";
import { sampleEvent } from "./support/events.js";

describe("generated types", () => {
  it("are up to date with the .avsc files (run `npm run gen:avro` after editing a schema)", () => {
    expect(readFileSync(GENERATED_PATH, "utf8")).toBe(generate());
    expect(readFileSync(CONTRACT_DOC_PATH, "utf8")).toBe(generateDoc());
  });

  it("come from schemas avsc accepts, each with a namespace and BACKWARD-evolvable optional fields", () => {
    for (const file of SCHEMA_FILES) {
      const schema = JSON.parse(
        readFileSync(new URL(`../avro/${file}`, import.meta.url), "utf8"),
      ) as {
        namespace: string;
        fields: { name: string; type: unknown; default?: unknown }[];
      };
      expect(() => avro.Type.forSchema(schema as avro.Schema)).not.toThrow();
      expect(schema.namespace).toBe("io.mcpobservatory");
      for (const field of schema.fields)
        if (Array.isArray(field.type) && field.type[0] === "null")
          expect(field.default, `${file} ${field.name} needs default null`).toBeNull();
    }
  });

  it("map fields to OpenTelemetry GenAI and MCP conventions", () => {
    expect(OTEL_FIELD_MAPPING["ModelCallEvent.prompt_tokens"]).toBe("gen_ai.usage.input_tokens");
    expect(OTEL_FIELD_MAPPING["ModelCallEvent.completion_tokens"]).toBe(
      "gen_ai.usage.output_tokens",
    );
    expect(OTEL_FIELD_MAPPING["ModelCallEvent.mcp_method"]).toBe("mcp.method.name");
    expect(OTEL_FIELD_MAPPING["ModelCallEvent.model"]).toBe("gen_ai.request.model");
  });
});

describe("ModelCallEvent validation", () => {
  it("accepts a typical event", () => {
    expect(MODEL_CALL_EVENT.check(sampleEvent())).toBeUndefined();
    expect(MODEL_CALL_EVENT.is(sampleEvent())).toBe(true);
  });

  it.each([
    ["confidence", { confidence: 1.7 }, "above maximum 1"],
    ["confidence", { confidence: Number.NaN }, "finite"],
    ["prompt_diff_score", { prompt_diff_score: -0.1 }, "below minimum 0"],
    ["prompt_tokens", { prompt_tokens: -5 }, "below minimum 0"],
    ["prompt_tokens", { prompt_tokens: 1.5 }, "integer"],
    ["cost_nano_usd", { cost_nano_usd: 2 ** 60 }, "exact long range"],
    ["retries", { retries: 2 ** 31 }, "exact int range"],
    ["trace_id", { trace_id: "0".repeat(32) }, "not all zero"],
    ["trace_id", { trace_id: "ABC" }, "32 lower-case hex digits"],
    ["span_id", { span_id: "00f067aa0ba902b" }, "16 lower-case hex digits"],
    ["parent_span_id", { parent_span_id: "xyz" }, "16 lower-case hex digits"],
    ["service", { service: "" }, "shorter than 1"],
    ["kind", { kind: "banana" }, "expected one of"],
    ['attributes["n"]', { attributes: { n: 1 } }, "expected a string"],
    ["end_time", { end_time: 1, start_time: 2 }, "before start_time"],
    ["token_source", { token_source: "none" }, "unknown usage must stay null"],
    ["token_source", { prompt_tokens: null, completion_tokens: null }, "no token count"],
  ] as const)("rejects %s: %o", (path, overrides, reason) => {
    const issue = MODEL_CALL_EVENT.check(sampleEvent(overrides as never));
    expect(issue?.path).toBe(path);
    expect(issue?.reason).toContain(reason);
  });

  it("rejects non-objects and missing fields, naming the field", () => {
    expect(MODEL_CALL_EVENT.check(null)?.path).toBe("$");
    const withoutService: Record<string, unknown> = { ...sampleEvent() };
    delete withoutService.service;
    expect(MODEL_CALL_EVENT.check(withoutService)).toMatchObject({
      path: "service",
      reason: "missing",
    });
  });

  it("keeps unknown token usage (none) distinct from zero tokens (reported 0)", () => {
    expect(
      MODEL_CALL_EVENT.check(
        sampleEvent({ token_source: "none", prompt_tokens: null, completion_tokens: null }),
      ),
    ).toBeUndefined();
    expect(
      MODEL_CALL_EVENT.check(
        sampleEvent({ token_source: "reported", prompt_tokens: 0, completion_tokens: 0 }),
      ),
    ).toBeUndefined();
  });
});

describe("MetricRollup and AlertEvent validation", () => {
  it("accepts what the metrics core produces", () => {
    for (const rollup of rollupEvents(
      [sampleEvent(), sampleEvent({ model: "gpt-4o-mini" })],
      60_000_000,
    ))
      expect(METRIC_ROLLUP.check(rollup)).toBeUndefined();
  });

  it("names nested fields", () => {
    const [rollup] = rollupEvents([sampleEvent()], 60_000_000);
    if (!rollup) throw new Error("no rollup");
    expect(METRIC_ROLLUP.check({ ...rollup, counts: { ...rollup.counts, calls: -1 } })?.path).toBe(
      "counts.calls",
    );
    expect(
      METRIC_ROLLUP.check({ ...rollup, rates: { ...rollup.rates, error_rate: 2 } })?.path,
    ).toBe("rates.error_rate");
    expect(METRIC_ROLLUP.check({ ...rollup, window_end: rollup.window_start })?.path).toBe(
      "window_end",
    );
    expect(ALERT_EVENT.check({})?.path).toBe("alert_id");
  });
});
