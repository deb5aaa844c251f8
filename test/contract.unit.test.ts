import { readFileSync } from "node:fs";

import avro from "avsc";
import fc from "fast-check";
import { describe, expect, it } from "vitest";

import { contractType } from "../avro/bigint.js";
import { ALERT_EVENT, METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import { OTEL_FIELD_MAPPING } from "../avro/generated.js";
import { AlertTracker, DEFAULT_ALERT_RULES, rollupEvents } from "../metrics/index.js";
import {
  CONTRACT_DOC_PATH,
  generate,
  generateDoc,
  GENERATED_PATH,
  SCHEMA_FILES,
} from "../scripts/gen-avro-types.js";
import { EDGE_NAMES, eventArbitrary, sampleEvent } from "./support/events.js";
import { testSeed } from "./support/seed.js";

const SEED = testSeed("contract.unit.test.ts fast-check");

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
    // The names of @opentelemetry/semantic-conventions' incubating GenAI attributes.
    expect(OTEL_FIELD_MAPPING["ModelCallEvent.cache_read_tokens"]).toBe(
      "gen_ai.usage.cache_read.input_tokens",
    );
    expect(OTEL_FIELD_MAPPING["ModelCallEvent.cache_write_tokens"]).toBe(
      "gen_ai.usage.cache_creation.input_tokens",
    );
    // OpenTelemetry defines no audio token attributes: no mapping is made up.
    expect(OTEL_FIELD_MAPPING["ModelCallEvent.input_audio_tokens"]).toBeUndefined();
    expect(OTEL_FIELD_MAPPING["ModelCallEvent.output_audio_tokens"]).toBeUndefined();
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
    ["cache_read_tokens", { cache_read_tokens: -1 }, "below minimum 0"],
    ["cache_write_tokens", { cache_write_tokens: 2.5 }, "integer"],
    ["input_audio_tokens", { input_audio_tokens: 2 ** 60 }, "exact long range"],
    ["output_audio_tokens", { output_audio_tokens: "7" }, "expected"],
    [
      "token_source",
      { token_source: "none", prompt_tokens: null, completion_tokens: null, cache_read_tokens: 5 },
      "unknown usage must stay null",
    ],
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
    // Cache and audio counts: optional parts of the usage, null when not reported.
    expect(
      MODEL_CALL_EVENT.check(
        sampleEvent({
          cache_read_tokens: 300,
          cache_write_tokens: 0,
          input_audio_tokens: 12,
          output_audio_tokens: 40,
        }),
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

  it("gives the metrics core's rollups revision 0 and accepts only non-negative int revisions", () => {
    const [rollup] = rollupEvents([sampleEvent()], 60_000_000);
    if (!rollup) throw new Error("no rollup");
    expect(rollup.revision).toBe(0);
    expect(METRIC_ROLLUP.check({ ...rollup, revision: 3 })).toBeUndefined();
    for (const [revision, reason] of [
      [-1, "below minimum 0"],
      [1.5, "integer"],
      [2 ** 31, "exact int range"],
    ] as const) {
      const issue = METRIC_ROLLUP.check({ ...rollup, revision });
      expect(issue?.path, String(revision)).toBe("revision");
      expect(issue?.reason, String(revision)).toContain(reason);
      expect(METRIC_ROLLUP.checkDecoded({ ...rollup, revision })?.path).toBe("revision");
    }
    const withoutRevision: Record<string, unknown> = { ...rollup };
    delete withoutRevision.revision;
    expect(METRIC_ROLLUP.check(withoutRevision)).toMatchObject({
      path: "revision",
      reason: "missing",
    });
  });
});

describe("edge names and every kind through the contract and Avro", () => {
  // As the codec parses them: a rollup's sums read and write bigints.
  const eventType = contractType(MODEL_CALL_EVENT.schema);
  const rollupType = contractType(METRIC_ROLLUP.schema);
  const alertType = contractType(ALERT_EVENT.schema);

  it("round-trip generated events (every kind, edge and unicode names) through Avro unchanged and valid", () => {
    fc.assert(
      fc.property(eventArbitrary(), (event) => {
        const decoded = eventType.fromBuffer(eventType.toBuffer(event)) as unknown;
        expect(decoded).toEqual(event);
        expect(MODEL_CALL_EVENT.checkDecoded(decoded)).toBeUndefined();
      }),
      { numRuns: 300, seed: SEED },
    );
  });

  it("give rollups and alerts of edge-named services that the contract accepts and Avro keeps", () => {
    const events = EDGE_NAMES.flatMap((service, i) =>
      [0, 1, 2].map((k) =>
        sampleEvent({
          service,
          model: EDGE_NAMES[(i + k) % EDGE_NAMES.length] ?? null,
          status: k === 0 ? "error" : "ok",
        }),
      ),
    );
    const rollups = rollupEvents(events, 60_000_000);
    expect(new Set(rollups.map((r) => r.service))).toEqual(new Set(EDGE_NAMES));
    for (const rollup of rollups) {
      expect(METRIC_ROLLUP.check(rollup), rollup.service).toBeUndefined();
      expect(rollupType.fromBuffer(rollupType.toBuffer(rollup))).toEqual(rollup);
    }
    const tracker = new AlertTracker(DEFAULT_ALERT_RULES);
    const alerts = rollups.filter((r) => r.model === null).flatMap((r) => tracker.observe(r));
    expect(new Set(alerts.map((a) => a.service))).toEqual(new Set(EDGE_NAMES));
    for (const alert of alerts) {
      expect(ALERT_EVENT.check(alert), alert.service).toBeUndefined();
      expect(alertType.fromBuffer(alertType.toBuffer(alert))).toEqual(alert);
    }
  });
});
