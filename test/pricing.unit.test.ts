/** Prices over the whole usage (cache reads and writes, audio), at the call's end time. */
import { calcPrice, waitForUpdate } from "@pydantic/genai-prices";
import fc from "fast-check";
import { describe, expect, it } from "vitest";

import { InMemoryExporter } from "../producer/exporters/memory.js";
import { silentLogger } from "../producer/logger.js";
import { instrument } from "../producer/index.js";
import { checkUsage, costNanoUsd, PriceTable, type UsageDetails } from "../producer/pricing.js";
import { usageFromAnthropic, usageFromOpenAI } from "../producer/usage.js";
import { testSeed } from "./support/seed.js";

const SEED = testSeed("pricing.unit.test.ts fast-check");

/** Pico-USD of `tokens` tokens at a price in USD per million tokens (an exact integer here). */
const pico = (tokens: number, perMillionUsd: number): number =>
  tokens * Math.round(perMillionUsd * 1e6);

/** Pico-USD as whole nano-USD, rounded half-up. */
const nanoOf = (picoUsd: number): number => Math.round(picoUsd / 1000);

/** The table's own (floating-point) price of a call, in nano-USD. */
function theirs(
  model: string,
  provider: string,
  input: number,
  output: number,
  details: UsageDetails,
  at: Date,
): number | null {
  const usage: Record<string, number> = { input_tokens: input, output_tokens: output };
  if (details.cacheReadTokens) usage.cache_read_tokens = details.cacheReadTokens;
  if (details.cacheWriteTokens) usage.cache_write_tokens = details.cacheWriteTokens;
  if (details.inputAudioTokens) usage.input_audio_tokens = details.inputAudioTokens;
  if (details.outputAudioTokens) usage.output_audio_tokens = details.outputAudioTokens;
  try {
    const result = calcPrice(usage, model, { providerId: provider, timestamp: at });
    return result === null ? null : result.total_price * 1e9;
  } catch {
    return null;
  }
}

const NOW = new Date("2026-12-01T12:00:00Z");

describe("cache tokens", () => {
  const table = new PriceTable();

  it("cache reads cost less than uncached input (Anthropic: 0.30 vs 3 USD per million)", () => {
    const uncached = table.cost("claude-sonnet-4-0", "anthropic", 10_000, 100, {}, NOW);
    const cached = table.cost(
      "claude-sonnet-4-0",
      "anthropic",
      10_000,
      100,
      { cacheReadTokens: 8_000 },
      NOW,
    );
    expect(uncached).toBe(nanoOf(pico(10_000, 3) + pico(100, 15)));
    expect(cached).toBe(nanoOf(pico(2_000, 3) + pico(8_000, 0.3) + pico(100, 15)));
    expect(cached).toBeLessThan(uncached ?? 0);
  });

  it("cache writes have their own rate (Anthropic: 3.75 USD per million)", () => {
    const cost = table.cost(
      "claude-sonnet-4-0",
      "anthropic",
      10_000,
      0,
      { cacheReadTokens: 1_000, cacheWriteTokens: 6_000 },
      NOW,
    );
    expect(cost).toBe(nanoOf(pico(3_000, 3) + pico(1_000, 0.3) + pico(6_000, 3.75)));
  });

  it("OpenAI cached prompt tokens (part of prompt_tokens) at half the input rate for gpt-4o", () => {
    const usage = usageFromOpenAI({
      prompt_tokens: 2_000,
      completion_tokens: 300,
      prompt_tokens_details: { cached_tokens: 1_536 },
    });
    expect(usage).toEqual({ promptTokens: 2_000, completionTokens: 300, cacheReadTokens: 1_536 });
    const cost = table.cost("gpt-4o", "openai", 2_000, 300, { cacheReadTokens: 1_536 }, NOW);
    expect(cost).toBe(nanoOf(pico(464, 2.5) + pico(1_536, 1.25) + pico(300, 10)));
  });

  it("a model without a cache price charges cached tokens at its input rate (the table's rule)", () => {
    // mistral-large has input and output prices only.
    const plain = table.cost("mistral-large-latest", "mistral", 5_000, 500, {}, NOW);
    const cached = table.cost(
      "mistral-large-latest",
      "mistral",
      5_000,
      500,
      { cacheReadTokens: 4_000, cacheWriteTokens: 1_000 },
      NOW,
    );
    expect(plain).not.toBeNull();
    expect(cached).toBe(plain);
    expect(cached).toBe(
      Math.round(theirs("mistral-large-latest", "mistral", 5_000, 500, {}, NOW) ?? -1),
    );
    // An override without cache rates does the same.
    const override = new PriceTable({
      mine: { inputPerMillionUsd: "1", outputPerMillionUsd: "2" },
    });
    expect(override.cost("mine", null, 1_000, 0, { cacheReadTokens: 900 })).toBe(
      nanoOf(pico(1_000, 1)),
    );
  });

  it("overrides take cache and audio rates per million, exactly", () => {
    const overrides = new PriceTable({
      mine: {
        inputPerMillionUsd: "1.10",
        outputPerMillionUsd: "4.40",
        cacheReadPerMillionUsd: "0.275",
        cacheWritePerMillionUsd: "1.375",
        inputAudioPerMillionUsd: 40,
        outputAudioPerMillionUsd: "80",
      },
    });
    // 3 × 0.275 + 1 × 1.375 + 2 × 40 + 4 × 1.10 (rest of the 10 input tokens) = 86.6 micro… in
    // pico: 825 000 + 1 375 000 + 80 000 000 + 4 400 000 = 86 600 000; output 1 × 80 + 1 × 4.40.
    expect(
      overrides.cost("mine", null, 10, 2, {
        cacheReadTokens: 3,
        cacheWriteTokens: 1,
        inputAudioTokens: 2,
        outputAudioTokens: 1,
      }),
    ).toBe(
      Math.round((825_000 + 1_375_000 + 80_000_000 + 4_400_000 + 80_000_000 + 4_400_000) / 1000),
    );
    expect(
      () =>
        new PriceTable({
          bad: { inputPerMillionUsd: 1, outputPerMillionUsd: 1, cacheReadPerMillionUsd: "-1" },
        }),
    ).toThrow(/prices\["bad"\]\.cacheReadPerMillionUsd: price must be a non-negative decimal/);
  });
});

describe("audio tokens", () => {
  it("are priced at the audio rates (gpt-audio: 32 in, 64 out per million; text 2.5 and 10)", () => {
    const table = new PriceTable();
    const cost = table.cost(
      "gpt-audio",
      "openai",
      1_000,
      500,
      { inputAudioTokens: 800, outputAudioTokens: 400 },
      NOW,
    );
    expect(cost).toBe(nanoOf(pico(200, 2.5) + pico(800, 32) + pico(100, 10) + pico(400, 64)));
    expect(cost).toBe(
      Math.round(
        theirs(
          "gpt-audio",
          "openai",
          1_000,
          500,
          { inputAudioTokens: 800, outputAudioTokens: 400 },
          NOW,
        ) ?? -1,
      ),
    );
  });

  it("cached and audio input together cannot be priced where the table prices cached audio apart", () => {
    const table = new PriceTable();
    const details = { cacheReadTokens: 100, inputAudioTokens: 200 };
    // Nobody says how many of the cached tokens were audio: the table refuses, the cost is null.
    expect(theirs("gpt-realtime", "openai", 1_000, 10, details, NOW)).toBeNull();
    expect(table.cost("gpt-realtime", "openai", 1_000, 10, details, NOW)).toBeNull();
    expect(table.lookup("gpt-realtime", "openai", NOW)).toBeDefined();
    // Either alone is priced.
    expect(table.cost("gpt-realtime", "openai", 1_000, 10, { inputAudioTokens: 200 }, NOW)).toBe(
      nanoOf(pico(800, 4) + pico(200, 32) + pico(10, 16)),
    );
  });
});

describe("the price at the call's end time", () => {
  const table = new PriceTable();

  it("takes the price valid then: OpenAI cut o3's price on 2025-06-10 (10/40 → 2/8 USD per million)", () => {
    const before = new Date("2025-06-09T23:59:59Z");
    const after = new Date("2025-06-10T00:00:00Z");
    expect(table.cost("o3", "openai", 1_000_000, 100_000, {}, before)).toBe(
      nanoOf(pico(1_000_000, 10) + pico(100_000, 40)),
    );
    expect(table.cost("o3", "openai", 1_000_000, 100_000, {}, after)).toBe(
      nanoOf(pico(1_000_000, 2) + pico(100_000, 8)),
    );
    expect(table.cost("o3", "openai", 1_000_000, 100_000, {}, before.getTime())).toBe(
      nanoOf(pico(1_000_000, 10) + pico(100_000, 40)),
    );
  });

  it("takes time-of-day prices by the time of day (DeepSeek's off-peak discount, 16:30–00:30 UTC)", () => {
    const peak = new Date("2026-12-01T12:00:00Z");
    const offPeak = new Date("2026-12-01T20:00:00Z");
    const at = (when: Date): number | null =>
      table.cost("deepseek-chat", "deepseek", 1_000_000, 0, { cacheReadTokens: 500_000 }, when);
    expect(at(peak)).toBe(nanoOf(pico(500_000, 0.27) + pico(500_000, 0.07)));
    expect(at(offPeak)).toBe(nanoOf(pico(500_000, 0.135) + pico(500_000, 0.035)));
    expect(at(peak)).toBe(
      Math.round(
        theirs("deepseek-chat", "deepseek", 1_000_000, 0, { cacheReadTokens: 500_000 }, peak) ?? 0,
      ),
    );
  });

  it("the interceptor prices a call at its end time, and ships the cache and audio counts", async () => {
    const exporter = new InMemoryExporter();
    const interceptor = instrument({
      serviceName: "pricing-test",
      exporter,
      logger: silentLogger,
      estimateTokens: false,
      contentHashKey: null,
    });
    const usage = { promptTokens: 1_000_000, completionTokens: 100_000, cacheReadTokens: 400_000 };
    const old = await interceptor.interceptModelCall({
      model: "o3",
      provider: "openai",
      usage,
      endTime: new Date("2025-05-01T00:00:00Z"),
    });
    const recent = await interceptor.interceptModelCall({
      model: "o3",
      provider: "openai",
      usage,
      endTime: new Date("2025-07-01T00:00:00Z"),
    });
    expect(old?.cost_nano_usd).toBe(
      nanoOf(pico(600_000, 10) + pico(400_000, 0.5) + pico(100_000, 40)),
    );
    expect(recent?.cost_nano_usd).toBe(
      nanoOf(pico(600_000, 2) + pico(400_000, 0.5) + pico(100_000, 8)),
    );
    expect(recent).toMatchObject({
      prompt_tokens: 1_000_000,
      cache_read_tokens: 400_000,
      cache_write_tokens: null,
      input_audio_tokens: null,
      output_audio_tokens: null,
    });
    await interceptor.shutdown();
  });
});

describe("usage from the interceptor's input", () => {
  it("takes OpenTelemetry's spellings, and Anthropic's usage converted (its input_tokens exclude the cache)", async () => {
    const exporter = new InMemoryExporter();
    const interceptor = instrument({
      serviceName: "pricing-test",
      exporter,
      logger: silentLogger,
      contentHashKey: null,
    });
    const anthropic = usageFromAnthropic({
      input_tokens: 50,
      output_tokens: 20,
      cache_read_input_tokens: 9_000,
      cache_creation_input_tokens: 1_000,
    });
    expect(anthropic).toEqual({
      promptTokens: 10_050,
      completionTokens: 20,
      cacheReadTokens: 9_000,
      cacheWriteTokens: 1_000,
    });
    const a = await interceptor.interceptModelCall({
      model: "claude-sonnet-4-0",
      provider: "anthropic",
      usage: anthropic,
    });
    const b = await interceptor.interceptModelCall({
      model: "claude-sonnet-4-0",
      provider: "anthropic",
      usage: {
        inputTokens: 10_050,
        outputTokens: 20,
        cacheReadInputTokens: 9_000,
        cacheCreationInputTokens: 1_000,
      },
    });
    for (const event of [a, b]) {
      expect(event).toMatchObject({
        prompt_tokens: 10_050,
        completion_tokens: 20,
        cache_read_tokens: 9_000,
        cache_write_tokens: 1_000,
        token_source: "reported",
      });
      expect(event?.cost_nano_usd).toBe(
        nanoOf(pico(50, 3) + pico(9_000, 0.3) + pico(1_000, 3.75) + pico(20, 15)),
      );
    }
    await interceptor.shutdown();
  });

  it("leaves out parts that exceed their counts, noting why, and prices the counts alone", async () => {
    const exporter = new InMemoryExporter();
    const interceptor = instrument({
      serviceName: "pricing-test",
      exporter,
      logger: silentLogger,
      contentHashKey: null,
    });
    const event = await interceptor.interceptModelCall({
      model: "gpt-4o",
      provider: "openai",
      usage: {
        promptTokens: 100,
        completionTokens: 10,
        cacheReadTokens: 150,
        inputAudioTokens: -1,
      },
    });
    expect(event).toMatchObject({
      prompt_tokens: 100,
      cache_read_tokens: null,
      input_audio_tokens: null,
      cost_nano_usd: nanoOf(pico(100, 2.5) + pico(10, 10)),
    });
    expect(event?.attributes["mcpo.invalid.usage"]).toBe(
      "cacheReadTokens (150) exceeds the prompt tokens (100) it is part of",
    );
    // The negative audio count is refused on its own (and counted).
    expect(interceptor.getCounters().invalidInputs).toBe(2);
    await interceptor.shutdown();
  });

  it("checkUsage names the part and the count it exceeds", () => {
    expect(() => {
      checkUsage(10, 5, { outputAudioTokens: 6 });
    }).toThrow("outputAudioTokens (6) exceeds the completion tokens (5) it is part of");
    expect(() => {
      checkUsage(10, 5, { cacheReadTokens: 6, cacheWriteTokens: 5 });
    }).toThrow("cacheReadTokens and cacheWriteTokens (11 together) exceed the prompt tokens (10)");
    // Audio may be cached: it may overlap the cache counts.
    expect(() => {
      checkUsage(10, 5, { cacheReadTokens: 8, inputAudioTokens: 8 });
    }).not.toThrow();
    const price = {
      inputPicoUsdPerToken: 1n,
      outputPicoUsdPerToken: 1n,
      parts: { cacheRead: 0n, inputAudio: 0n },
      tiers: [],
      source: "override",
    } as const;
    // …but where both have rates of their own, the overlap cannot be split: no cost.
    expect(costNanoUsd(price, 10, 5, { cacheReadTokens: 8, inputAudioTokens: 8 })).toBeNull();
  });
});

describe("agreement with the table's own calculation", () => {
  it("every bundled model, random usage and times: the exact cost is the table's to within rounding", async () => {
    const providers = (await waitForUpdate()) ?? [];
    const models = providers.flatMap((provider) =>
      provider.models.map((model) => ({ provider: provider.id, model: model.id })),
    );
    expect(models.length).toBeGreaterThan(500);
    const table = new PriceTable();
    let compared = 0;
    fc.assert(
      fc.property(
        fc.constantFrom(...models),
        fc.integer({ min: 0, max: 400_000 }),
        fc.integer({ min: 0, max: 50_000 }),
        fc.record({
          cacheRead: fc.double({ min: 0, max: 1, noNaN: true }),
          cacheWrite: fc.double({ min: 0, max: 1, noNaN: true }),
          inputAudio: fc.option(fc.double({ min: 0, max: 1, noNaN: true })),
          outputAudio: fc.option(fc.double({ min: 0, max: 1, noNaN: true })),
        }),
        fc.date({
          min: new Date("2024-01-01T00:00:00Z"),
          max: new Date("2027-12-31T00:00:00Z"),
          noInvalidDate: true,
        }),
        ({ provider, model }, input, output, shares, at) => {
          const cacheRead = Math.floor(input * shares.cacheRead);
          const details: UsageDetails = {
            cacheReadTokens: cacheRead,
            cacheWriteTokens: Math.floor((input - cacheRead) * shares.cacheWrite),
            inputAudioTokens:
              shares.inputAudio === null
                ? null
                : Math.floor((input - cacheRead) * shares.inputAudio),
            outputAudioTokens:
              shares.outputAudio === null ? null : Math.floor(output * shares.outputAudio),
          };
          const ours = table.cost(model, provider, input, output, details, at);
          const expected = theirs(model, provider, input, output, details, at);
          if (expected === null || ours === null) {
            // Unknown to both, or a free model (no prices at all) the table prices 0: unpriced here.
            if (ours !== null || (expected !== null && expected !== 0))
              expect({ ours, expected }, `${provider}/${model}`).toEqual({ ours, expected: ours });
            return;
          }
          compared++;
          // The table's prices rounded to whole pico-USD per token (a few are repeating decimals,
          // like 0.0833… per million): at most half a pico-USD per token apart.
          const tolerance = 1 + (input + output) * 0.0005;
          expect(
            Math.abs(ours - expected),
            `${provider}/${model} ${input}/${output} ${JSON.stringify(details)} ${at.toISOString()}`,
          ).toBeLessThanOrEqual(tolerance);
        },
      ),
      { seed: SEED, numRuns: 3_000 },
    );
    expect(compared).toBeGreaterThan(1_000);
  });
});
