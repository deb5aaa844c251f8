/**
 * The contract's limits: maximum lengths of names, attribute keys and values, a maximum number of
 * attributes, and NUL-free text in every string of the three records, refused by `check` (before
 * encoding) and by `checkDecoded` (after decoding, in the processor and the sink) with the field
 * named; and how the interceptor keeps within them (truncation markers, replaced NULs, counters,
 * the maximum event size).
 */
import avro from "avsc";
import { describe, expect, it } from "vitest";

import { contractType } from "../avro/bigint.js";
import {
  ALERT_EVENT,
  METRIC_ROLLUP,
  MODEL_CALL_EVENT,
  type EventContract,
} from "../avro/contracts.js";
import type { AlertEvent, MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { ConfigError } from "../config/index.js";
import { rollupEvents } from "../metrics/index.js";
import { InMemoryExporter } from "../producer/exporters/memory.js";
import { instrument } from "../producer/interceptor.js";
import { silentLogger, type Logger } from "../producer/logger.js";
import type { InstrumentOptions } from "../producer/types.js";
import { sampleEvent } from "./support/events.js";

/** The marker a truncated value ends with. */
const MARKER = "…[truncated]";

function sampleRollup(): MetricRollup {
  const [rollup] = rollupEvents([sampleEvent()], 60_000_000);
  if (!rollup) throw new Error("no rollup");
  return rollup;
}

function sampleAlert(): AlertEvent {
  return {
    alert_id: "0123456789abcdef0123456789abcdef",
    service: "example-mcp",
    rule: "error_rate_high",
    metric: "error_rate",
    comparator: "gt",
    state: "firing",
    observed_value: 0.5,
    threshold: 0.1,
    min_samples: 10,
    sample_count: 20,
    window_start: 1_764_000_000_000_000,
    window_end: 1_764_000_060_000_000,
    fired_window_start: 1_764_000_000_000_000,
    emitted_at: 1_764_000_060_000_000,
  };
}

interface Record_ {
  readonly contract: EventContract<unknown>;
  readonly sample: () => Record<string, unknown>;
}

const RECORDS: Readonly<Record<string, Record_>> = {
  ModelCallEvent: {
    contract: MODEL_CALL_EVENT,
    sample: () => ({ ...sampleEvent() }),
  },
  MetricRollup: {
    contract: METRIC_ROLLUP,
    sample: () => ({ ...sampleRollup() }),
  },
  AlertEvent: {
    contract: ALERT_EVENT,
    sample: () => ({ ...sampleAlert() }),
  },
};

/** The value after an Avro round trip with the record's own schema (no validation on the way). */
function throughAvro(contract: EventContract<unknown>, value: unknown): unknown {
  const type = contractType(contract.schema);
  return type.fromBuffer(type.toBuffer(value));
}

/** Both checks' first issue for `value`: before encoding, and as the decoder gives it. */
function bothChecks(
  contract: EventContract<unknown>,
  value: unknown,
): { check: unknown; checkDecoded: unknown } {
  return {
    check: contract.check(value),
    checkDecoded: contract.checkDecoded(throughAvro(contract, value)),
  };
}

/** The top-level fields of a record schema whose type is string or [null, string]. */
function stringFields(contract: EventContract<unknown>): string[] {
  const fields = (contract.schema as { fields: { name: string; type: unknown }[] }).fields;
  return fields
    .filter(
      (field) =>
        field.type === "string" ||
        (Array.isArray(field.type) && field.type.includes("string")) ||
        (typeof field.type === "object" &&
          field.type !== null &&
          (field.type as { type?: unknown }).type === "string"),
    )
    .map((field) => field.name);
}

describe("maximum lengths in the contract", () => {
  const NAMES: readonly (readonly [string, string, number])[] = [
    ["ModelCallEvent", "service", 256],
    ["ModelCallEvent", "service_instance", 256],
    ["ModelCallEvent", "provider", 256],
    ["ModelCallEvent", "model", 256],
    ["ModelCallEvent", "tool_name", 256],
    ["ModelCallEvent", "mcp_method", 256],
    ["ModelCallEvent", "error_type", 256],
    ["MetricRollup", "service", 256],
    ["MetricRollup", "model", 256],
    ["AlertEvent", "service", 256],
    ["AlertEvent", "rule", 256],
    ["AlertEvent", "metric", 256],
  ];

  it.each(NAMES)(
    "%s.%s: %i characters pass, one more is refused by check and checkDecoded naming the field",
    (record, field, limit) => {
      const { contract, sample } = RECORDS[record] as Record_;
      const at = { ...sample(), [field]: "n".repeat(limit) };
      expect(bothChecks(contract, at)).toEqual({ check: undefined, checkDecoded: undefined });
      const over = { ...sample(), [field]: "n".repeat(limit + 1) };
      const issues = bothChecks(contract, over);
      for (const issue of [issues.check, issues.checkDecoded])
        expect(issue).toMatchObject({
          path: field,
          reason: expect.stringContaining(`longer than ${limit} characters`) as unknown,
        });
    },
  );

  it("counts UTF-16 code units: 128 astral emoji (256 units) pass, 129 do not", () => {
    expect(MODEL_CALL_EVENT.check(sampleEvent({ model: "🧪".repeat(128) }))).toBeUndefined();
    expect(MODEL_CALL_EVENT.check(sampleEvent({ model: "🧪".repeat(129) }))?.path).toBe("model");
  });

  it("keeps the offending value short in the issue (dead-letter headers)", () => {
    const issue = MODEL_CALL_EVENT.check(sampleEvent({ model: "m".repeat(100_000) }));
    expect(issue?.path).toBe("model");
    expect(String(issue?.value).length).toBeLessThan(100);
  });

  it("limits attribute keys to 256 and values to 1024 characters, and attributes to 128", () => {
    const ok = sampleEvent({
      attributes: Object.fromEntries(
        Array.from({ length: 128 }, (_, i) => [`k${i}`.padEnd(256, "k"), "v".repeat(1024)]),
      ),
    });
    expect(bothChecks(MODEL_CALL_EVENT as EventContract<unknown>, ok)).toEqual({
      check: undefined,
      checkDecoded: undefined,
    });
    const cases: readonly (readonly [Record<string, string>, string, string])[] = [
      [{ ["k".repeat(257)]: "v" }, "attributes", "key longer than 256 characters"],
      [{ k: "v".repeat(1025) }, 'attributes["k"]', "longer than 1024 characters"],
      [
        Object.fromEntries(Array.from({ length: 129 }, (_, i) => [`k${i}`, "v"])),
        "attributes",
        "more than 128 entries",
      ],
    ];
    for (const [attributes, path, reason] of cases) {
      const issues = bothChecks(MODEL_CALL_EVENT, sampleEvent({ attributes }));
      for (const issue of [issues.check, issues.checkDecoded])
        expect(issue, reason).toMatchObject({
          path,
          reason: expect.stringContaining(reason) as unknown,
        });
    }
  });
});

describe("NUL-free text in the contract", () => {
  it("finds the string fields it checks (guards the loops below)", () => {
    expect(stringFields(RECORDS.ModelCallEvent?.contract as EventContract<unknown>)).toHaveLength(
      13,
    );
    expect(stringFields(RECORDS.MetricRollup?.contract as EventContract<unknown>)).toEqual([
      "service",
      "model",
    ]);
    expect(stringFields(RECORDS.AlertEvent?.contract as EventContract<unknown>)).toEqual([
      "alert_id",
      "service",
      "rule",
      "metric",
    ]);
  });

  for (const [record, { contract, sample }] of Object.entries(RECORDS))
    for (const field of stringFields(contract))
      it(`${record}.${field} with a NUL is refused by check and checkDecoded`, () => {
        const valid = sample()[field];
        const withNul =
          typeof valid === "string" && valid.length > 0 ? `\u0000${valid.slice(1)}` : "a\u0000b";
        const issues = bothChecks(contract, { ...sample(), [field]: withNul });
        for (const issue of [issues.check, issues.checkDecoded])
          expect(issue).toMatchObject({
            path: field,
            reason: expect.stringContaining("NUL") as unknown,
          });
      });

  it("refuses a NUL in an attribute key and in an attribute value", () => {
    for (const [attributes, path] of [
      [{ "a\u0000b": "v" }, "attributes"],
      [{ k: "v\u0000" }, 'attributes["k"]'],
    ] as const) {
      const issues = bothChecks(MODEL_CALL_EVENT, sampleEvent({ attributes }));
      for (const issue of [issues.check, issues.checkDecoded])
        expect(issue).toMatchObject({ path, reason: expect.stringContaining("NUL") as unknown });
    }
  });
});

/** Lone surrogates: what cutting a string in the middle of a pair leaves. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function collectingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    warn: (message, context) => lines.push(`warn ${message} ${JSON.stringify(context ?? {})}`),
    error: (message, context) => lines.push(`error ${message} ${JSON.stringify(context ?? {})}`),
  };
}

function setup(options: Partial<InstrumentOptions> = {}) {
  const exporter = new InMemoryExporter();
  const logger = collectingLogger();
  const interceptor = instrument({
    serviceName: "limits-mcp",
    exporter,
    logger,
    estimateTokens: false,
    ...options,
  });
  return { exporter, interceptor, logger };
}

/** The encoded size of an event in the Confluent wire format (5 header bytes + Avro body). */
function encodedBytes(event: ModelCallEvent): number {
  return 5 + avro.Type.forSchema(MODEL_CALL_EVENT.schema as avro.Schema).toBuffer(event).length;
}

describe("the interceptor keeps events within the limits", () => {
  it("truncates names over 256 characters with a visible marker, counts them and says so in a bounded attribute", async () => {
    const { exporter, interceptor } = setup();
    const long = "m".repeat(300);
    const event = await interceptor.interceptModelCall({
      model: long,
      provider: "p".repeat(5_000),
      toolName: "t".repeat(257),
      status: "error",
      errorType: "E".repeat(1_000),
      attributes: { "mcp.method.name": "x".repeat(600) },
    });
    expect(event).toBeDefined();
    expect(exporter.events).toHaveLength(1);
    for (const field of ["model", "provider", "tool_name", "error_type", "mcp_method"] as const) {
      const value = event?.[field] ?? "";
      expect(value.length, field).toBe(256);
      expect(value.endsWith(MARKER), field).toBe(true);
    }
    expect(event?.model).toBe(`${long.slice(0, 256 - MARKER.length)}${MARKER}`);
    expect(MODEL_CALL_EVENT.check(event)).toBeUndefined();
    // model, provider, tool name, error type and mcp_method (the attribute's 600 characters are
    // within the attribute value limit, so it stays whole in the attributes)
    expect(interceptor.getCounters().invalidInputs).toBe(5);
    expect(event?.attributes["mcp.method.name"]).toBe("x".repeat(600));
    expect(event?.attributes["mcpo.invalid.model"]).toContain("300");
    for (const [key, value] of Object.entries(event?.attributes ?? {})) {
      expect(key.length).toBeLessThanOrEqual(256);
      expect(value.length).toBeLessThanOrEqual(1024);
    }
  });

  it("never cuts a surrogate pair in half", async () => {
    const { interceptor } = setup();
    const event = await interceptor.interceptModelCall({ model: `a${"🧪".repeat(200)}` });
    expect(event?.model?.length).toBeLessThanOrEqual(256);
    expect(event?.model?.endsWith(MARKER)).toBe(true);
    expect(LONE_SURROGATE.test(event?.model ?? "\uD800")).toBe(false);
  });

  it("replaces NULs by U+FFFD in names, attribute keys and values and content, counting each field", async () => {
    const { interceptor } = setup({ captureContent: true });
    const event = await interceptor.interceptModelCall({
      model: "gpt\u00004o",
      toolName: "to\u0000ol",
      prompt: "hello\u0000world",
      response: "ok",
      attributes: { "a\u0000b": "c", d: "e\u0000f" },
    });
    expect(event).toMatchObject({
      model: "gpt\uFFFD4o",
      tool_name: "to\uFFFDol",
      prompt_text: "hello\uFFFDworld",
    });
    expect(event?.attributes["a\uFFFDb"]).toBe("c");
    expect(event?.attributes.d).toBe("e\uFFFDf");
    expect(MODEL_CALL_EVENT.check(event)).toBeUndefined();
    expect(interceptor.getCounters().invalidInputs).toBe(5);
  });

  it("truncates attribute keys and values, keeps at most 128 attributes, and bounds its own mcpo.invalid.* values", async () => {
    const { interceptor } = setup();
    const attributes: Record<string, string> = {
      ["k".repeat(300)]: "v",
      big: "v".repeat(5_000),
    };
    for (let i = 0; i < 200; i++) attributes[`a${i}`] = String(i);
    const event = await interceptor.interceptModelCall({
      model: "gpt-4o",
      attributes,
      // A JavaScript caller's nonsense, long and with a NUL: kept as a bounded attribute.
      confidence: `${"9".repeat(5_000)}\u0000` as unknown as number,
    });
    expect(event).toBeDefined();
    expect(MODEL_CALL_EVENT.check(event)).toBeUndefined();
    const kept = event?.attributes ?? {};
    expect(Object.keys(kept)).toHaveLength(128);
    expect(kept[`${"k".repeat(256 - MARKER.length)}${MARKER}`]).toBe("v");
    expect(kept.big).toBe(`${"v".repeat(1024 - MARKER.length)}${MARKER}`);
    const invalid = kept["mcpo.invalid.confidence"] ?? "";
    expect(invalid.length).toBe(1024);
    expect(invalid.endsWith(MARKER)).toBe(true);
    expect(kept["mcpo.invalid.attributes"]).toMatch(/left out/);
    expect(event?.confidence).toBeNull();
    expect(interceptor.getCounters().invalidInputs).toBeGreaterThanOrEqual(4);
  });

  it("refuses a service name or instance over 256 characters or with a NUL at instrument()", () => {
    expect(() => instrument({ serviceName: "s".repeat(257), logger: silentLogger })).toThrow(
      ConfigError,
    );
    expect(() => instrument({ serviceName: "s\u0000", logger: silentLogger })).toThrow(
      /serviceName/,
    );
    expect(() =>
      instrument({ serviceName: "s", serviceInstance: "i".repeat(257), logger: silentLogger }),
    ).toThrow(/serviceInstance/);
    expect(instrument({ serviceName: "s".repeat(256), logger: silentLogger }).serviceName).toBe(
      "s".repeat(256),
    );
  });

  it("cuts the prompt to fit the maximum event size, with a marker, and counts it; the size and digest stay the whole prompt's", async () => {
    const { exporter, interceptor } = setup({ captureContent: true, maxEventBytes: 50_000 });
    const prompt = "p".repeat(100_000);
    const event = await interceptor.interceptModelCall({
      model: "gpt-4o",
      prompt,
      response: "short answer",
    });
    expect(exporter.events).toHaveLength(1);
    expect(event?.prompt_text?.endsWith(MARKER)).toBe(true);
    expect(event?.prompt_text?.length).toBeGreaterThan(45_000);
    expect(event?.response_text).toBe("short answer");
    expect(event?.prompt_size_bytes).toBe(100_000);
    expect(encodedBytes(event as ModelCallEvent)).toBeLessThanOrEqual(50_000);
    expect(interceptor.getCounters()).toMatchObject({
      contentTruncated: 1,
      oversized: 0,
      invalidInputs: 0,
    });
  });

  it("shares the room between a long prompt and a long response, counting multi-byte text in UTF-8 bytes", async () => {
    const { interceptor } = setup({ captureContent: true, maxEventBytes: 50_000 });
    const event = await interceptor.interceptModelCall({
      model: "gpt-4o",
      prompt: "é".repeat(60_000),
      response: "🧪".repeat(30_000),
    });
    expect(event?.prompt_text?.endsWith(MARKER)).toBe(true);
    expect(event?.response_text?.endsWith(MARKER)).toBe(true);
    expect(LONE_SURROGATE.test(event?.response_text ?? "\uD800")).toBe(false);
    expect(event?.prompt_text?.replace(MARKER, "")).toMatch(/^é+$/);
    const bytes = encodedBytes(event as ModelCallEvent);
    expect(bytes).toBeLessThanOrEqual(50_000);
    expect(bytes).toBeGreaterThan(45_000);
    expect(interceptor.getCounters().contentTruncated).toBe(1);
  });

  it("keeps an event that fits as it is", async () => {
    const { interceptor } = setup({ captureContent: true, maxEventBytes: 50_000 });
    const event = await interceptor.interceptModelCall({
      model: "gpt-4o",
      prompt: "p".repeat(40_000),
      response: "r",
    });
    expect(event?.prompt_text).toBe("p".repeat(40_000));
    expect(interceptor.getCounters().contentTruncated).toBe(0);
  });

  it("drops an event still over the maximum size without its content, counting it, and the next one goes out", async () => {
    const { exporter, interceptor, logger } = setup({
      captureContent: true,
      maxEventBytes: 20_000,
    });
    const attributes = Object.fromEntries(
      Array.from({ length: 100 }, (_, i) => [`k${i}`, "v".repeat(1_000)]),
    );
    await interceptor.interceptModelCall({ model: "gpt-4o", prompt: "p", attributes });
    expect(exporter.events).toHaveLength(0);
    expect(interceptor.getCounters()).toMatchObject({ oversized: 1, recorded: 1 });
    expect(logger.lines.some((line) => line.includes("maximum event size"))).toBe(true);
    await interceptor.interceptModelCall({ model: "gpt-4o", prompt: "p" });
    expect(exporter.events).toHaveLength(1);
  });

  it("refuses a maximum event size that is not a positive integer of at least 4096 bytes", () => {
    for (const maxEventBytes of [0, 100, 1.5, Number.NaN])
      expect(
        () => instrument({ serviceName: "s", maxEventBytes, logger: silentLogger }),
        String(maxEventBytes),
      ).toThrow(/maxEventBytes/);
  });
});
