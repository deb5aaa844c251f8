/**
 * Model prices and exact cost. Prices come from `@pydantic/genai-prices` (a maintained table of
 * LLM API prices by provider and model; the data snapshot bundled with the installed version,
 * never fetched at run time), overridable per model by the user.
 *
 * Cost is computed in integers: a price per million tokens is converted exactly (from its
 * decimal form) to pico-USD per token, multiplied by the token counts, and rounded half-up to whole
 * nano-USD once per call. No floating-point sum is involved. A model without a known price costs
 * `null`, which downstream counts as "unpriced", never 0.
 */
import { calcPrice } from "@pydantic/genai-prices";

/** A user-supplied price in USD per million tokens (a decimal string keeps it exact). */
export interface ModelPrice {
  readonly inputPerMillionUsd: string | number;
  readonly outputPerMillionUsd: string | number;
}

/** A resolved price in integer pico-USD (1e-12 USD) per token. */
export interface ResolvedPrice {
  readonly inputPicoUsdPerToken: bigint;
  readonly outputPicoUsdPerToken: bigint;
  /** Tiers by input token count: above `start` input tokens, these prices apply to the whole call. */
  readonly tiers: readonly {
    start: number;
    input: bigint | undefined;
    output: bigint | undefined;
  }[];
  readonly source: "override" | "genai-prices";
}

const PICO_PER_NANO = 1000n;

/**
 * A decimal price (USD per million tokens) as integer pico-USD per token: value × 10^6, exactly.
 *
 * @throws {RangeError} for a negative, non-finite or over-precise (below 1e-6 per million) price.
 */
export function pricePerMillionToPicoPerToken(value: string | number): bigint {
  const text = typeof value === "number" ? numberToDecimal(value) : value.trim();
  const match = /^(\d+)(?:\.(\d+))?$/.exec(text);
  if (!match)
    throw new RangeError(`price must be a non-negative decimal (got ${JSON.stringify(value)})`);
  const whole = match[1] ?? "0";
  const fraction = (match[2] ?? "").replace(/0+$/, "");
  if (fraction.length > 6)
    throw new RangeError(
      `price ${text} USD per million tokens is finer than 1e-6 (one pico-USD per token)`,
    );
  return BigInt(whole) * 1_000_000n + BigInt(fraction.padEnd(6, "0") || "0");
}

function numberToDecimal(value: number): string {
  if (!Number.isFinite(value) || value < 0) return String(value);
  // Shortest round-trip form, expanded out of exponent notation.
  const text = String(value);
  if (!text.includes("e")) return text;
  return value.toFixed(20).replace(/0+$/, "").replace(/\.$/, "");
}

/**
 * Cost of a call in whole nano-USD, rounded half-up, or null when a token count is unknown.
 * Counts must be non-negative integers.
 */
export function costNanoUsd(
  price: ResolvedPrice,
  promptTokens: number | null,
  completionTokens: number | null,
): number | null {
  if (promptTokens === null || completionTokens === null) return null;
  let input = price.inputPicoUsdPerToken;
  let output = price.outputPicoUsdPerToken;
  for (const tier of price.tiers) {
    if (promptTokens > tier.start) {
      input = tier.input ?? input;
      output = tier.output ?? output;
    }
  }
  const pico = BigInt(promptTokens) * input + BigInt(completionTokens) * output;
  const nano = (pico + PICO_PER_NANO / 2n) / PICO_PER_NANO;
  if (nano > BigInt(Number.MAX_SAFE_INTEGER))
    throw new RangeError(`cost ${nano} nano-USD is out of range`);
  return Number(nano);
}

interface Tiered {
  base: number;
  tiers: { start: number; price: number }[];
}

function isTiered(value: unknown): value is Tiered {
  return typeof value === "object" && value !== null && "base" in value && "tiers" in value;
}

/** Prices by model: user overrides first, then the bundled table; lookups are cached. */
export class PriceTable {
  private readonly cache = new Map<string, ResolvedPrice | null>();
  private readonly overrides = new Map<string, ResolvedPrice>();

  /**
   * @param overrides prices by model name, taking precedence over the bundled table.
   * @param useBundled whether to look models up in `@pydantic/genai-prices` (default true).
   * @throws {RangeError} naming the model whose override is not a valid price.
   */
  constructor(
    overrides: Readonly<Record<string, ModelPrice>> = {},
    private readonly useBundled = true,
  ) {
    for (const [model, price] of Object.entries(overrides)) {
      try {
        this.overrides.set(model, {
          inputPicoUsdPerToken: pricePerMillionToPicoPerToken(price.inputPerMillionUsd),
          outputPicoUsdPerToken: pricePerMillionToPicoPerToken(price.outputPerMillionUsd),
          tiers: [],
          source: "override",
        });
      } catch (error) {
        throw new RangeError(`prices["${model}"]: ${(error as Error).message}`);
      }
    }
  }

  /** The price of a model (from a provider, if known), or undefined when nobody knows it. */
  lookup(model: string, provider?: string | null): ResolvedPrice | undefined {
    const override = this.overrides.get(model);
    if (override) return override;
    if (!this.useBundled) return undefined;
    const key = `${provider ?? ""}\u0000${model}`;
    let cached = this.cache.get(key);
    if (cached === undefined) {
      cached = resolveBundled(model, provider) ?? null;
      this.cache.set(key, cached);
    }
    return cached ?? undefined;
  }

  /** Cost of a call in nano-USD; null when the model's price or a token count is unknown. */
  cost(
    model: string,
    provider: string | null | undefined,
    promptTokens: number | null,
    completionTokens: number | null,
  ): number | null {
    const price = this.lookup(model, provider);
    return price ? costNanoUsd(price, promptTokens, completionTokens) : null;
  }
}

function resolveBundled(
  model: string,
  provider: string | null | undefined,
): ResolvedPrice | undefined {
  let result: ReturnType<typeof calcPrice>;
  try {
    result = calcPrice(
      { input_tokens: 1, output_tokens: 1 },
      model,
      provider === null || provider === undefined ? {} : { providerId: provider },
    );
  } catch {
    return undefined;
  }
  if (!result) return undefined;
  const input = result.model_price.input_mtok;
  const output = result.model_price.output_mtok;
  const base = (value: unknown): bigint | undefined => {
    if (typeof value === "number") return pricePerMillionToPicoPerToken(value);
    if (isTiered(value)) return pricePerMillionToPicoPerToken(value.base);
    return undefined;
  };
  const inputBase = base(input);
  if (inputBase === undefined) return undefined;
  const starts = new Set<number>([
    ...(isTiered(input) ? input.tiers.map((tier) => tier.start) : []),
    ...(isTiered(output) ? output.tiers.map((tier) => tier.start) : []),
  ]);
  const tierPrice = (value: unknown, start: number): bigint | undefined => {
    if (!isTiered(value)) return undefined;
    const applicable = value.tiers
      .filter((tier) => tier.start <= start)
      .sort((a, b) => b.start - a.start)[0];
    return applicable ? pricePerMillionToPicoPerToken(applicable.price) : undefined;
  };
  return {
    inputPicoUsdPerToken: inputBase,
    outputPicoUsdPerToken: base(output) ?? 0n,
    tiers: [...starts]
      .sort((a, b) => a - b)
      .map((start) => ({
        start,
        input: tierPrice(input, start),
        output: tierPrice(output, start),
      })),
    source: "genai-prices",
  };
}
