/**
 * Model prices and exact cost. Prices come from `@pydantic/genai-prices` (a maintained table of
 * LLM API prices by provider and model; the data snapshot bundled with the installed version,
 * never fetched at run time), overridable per model by the user.
 *
 * A call is priced over its whole usage: input and output tokens, and the parts of them that have
 * rates of their own — prompt-cache reads and writes and audio input (parts of the input tokens),
 * audio output (part of the output tokens) — with the price the table gives for the call's end
 * time (prices that change at a date, or by time of day, are taken as they were then). The
 * table's rules apply: the input count includes the cached and audio tokens; a part without a
 * rate of its own (a model without a cache-read price, say) is charged at its parent's rate
 * (input, or output for audio output), as if it were not reported; a tiered price's tier is
 * chosen by the whole input count; a per-request price is added once per call. The table's
 * `calcPrice` finds the model (once) and selects the price valid at the call's time; the usage is
 * split and priced here, in integers, by those rules (`test/pricing.unit.test.ts` checks every
 * bundled model against `calcPrice`'s own result).
 *
 * Cost is computed in integers: a price per million tokens is converted exactly (from its
 * decimal form; the table's numbers to the nearest) to pico-USD per token, multiplied by the token
 * counts, and rounded half-up to whole nano-USD once per call. No floating-point sum is involved. A model without a known price costs
 * `null`, which downstream counts as "unpriced", never 0.
 */
import { calcPrice, type ModelPrice as TablePrice, type Provider } from "@pydantic/genai-prices";

/**
 * A user-supplied price in USD per million tokens (a decimal string keeps it exact). The rates
 * of the parts are optional; a part without one is charged at its parent's rate (cache reads,
 * cache writes and audio input at the input rate, audio output at the output rate).
 */
export interface ModelPrice {
  readonly inputPerMillionUsd: string | number;
  readonly outputPerMillionUsd: string | number;
  /** Input tokens read from the prompt cache. */
  readonly cacheReadPerMillionUsd?: string | number;
  /** Input tokens written to the prompt cache. */
  readonly cacheWritePerMillionUsd?: string | number;
  readonly inputAudioPerMillionUsd?: string | number;
  readonly outputAudioPerMillionUsd?: string | number;
}

/**
 * The parts of a call's token counts that have rates of their own. Cache reads, cache writes and
 * audio input are parts of the prompt (input) count, audio output of the completion count; each is
 * a non-negative integer, absent or null when not reported.
 */
export interface UsageDetails {
  readonly cacheReadTokens?: number | null;
  readonly cacheWriteTokens?: number | null;
  readonly inputAudioTokens?: number | null;
  readonly outputAudioTokens?: number | null;
}

/** The kinds of tokens with rates, by their table price keys. */
const RATE_KEYS = {
  input: "input_mtok",
  output: "output_mtok",
  cacheRead: "cache_read_mtok",
  cacheWrite: "cache_write_mtok",
  inputAudio: "input_audio_mtok",
  outputAudio: "output_audio_mtok",
} as const;
type RateKind = keyof typeof RATE_KEYS;
type PartKind = Exclude<RateKind, "input" | "output">;

/** Rates in integer pico-USD (1e-12 USD) per token; a kind without one has none of its own. */
export type TokenRates = { readonly [K in RateKind]?: bigint };

/** A resolved price in integer pico-USD (1e-12 USD) per token. */
export interface ResolvedPrice {
  readonly inputPicoUsdPerToken: bigint;
  readonly outputPicoUsdPerToken: bigint;
  /** Rates of the parts; a part without one is charged at its parent's rate. */
  readonly parts?: { readonly [K in PartKind]?: bigint };
  /** Tiers by input token count: above `start` input tokens, these prices apply to the whole call. */
  readonly tiers: readonly ({
    start: number;
    input: bigint | undefined;
    output: bigint | undefined;
  } & { readonly [K in PartKind]?: bigint })[];
  /** A price per call (the table's per-request price), pico-USD; none: 0. */
  readonly perRequestPicoUsd?: bigint;
  /**
   * Which cache counts the table prices apart for audio (`cache_audio_read_mtok`,
   * `cache_audio_write_mtok`): a call with audio input and such cache tokens cannot be priced, as
   * no usage says how many of its cached tokens were audio.
   */
  readonly cachedAudioApart?: { readonly read: boolean; readonly write: boolean };
  readonly source: "override" | "genai-prices";
}

const PICO_PER_NANO = 1000n;

/** Which parent count each part belongs to. */
const PARENT: Readonly<Record<PartKind, "input" | "output">> = {
  cacheRead: "input",
  cacheWrite: "input",
  inputAudio: "input",
  outputAudio: "output",
};

/** The usage detail field of each part, as {@link UsageDetails} names it. */
const DETAIL: Readonly<Record<PartKind, keyof UsageDetails>> = {
  cacheRead: "cacheReadTokens",
  cacheWrite: "cacheWriteTokens",
  inputAudio: "inputAudioTokens",
  outputAudio: "outputAudioTokens",
};
const PART_KINDS = Object.keys(PARENT) as PartKind[];

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
 * Checks that usage is consistent: each part at most the count it is part of, and the cache reads
 * and writes (which never overlap) together at most the prompt tokens. Audio input may be cached,
 * so it may overlap the cache counts.
 *
 * @throws {RangeError} naming the part and the count it exceeds.
 */
export function checkUsage(
  promptTokens: number | null,
  completionTokens: number | null,
  details: UsageDetails,
): void {
  const totals = { input: promptTokens, output: completionTokens };
  for (const kind of PART_KINDS) {
    const count = details[DETAIL[kind]];
    const total = totals[PARENT[kind]];
    if (count !== null && count !== undefined && total !== null && count > total)
      throw new RangeError(
        `${DETAIL[kind]} (${count}) exceeds the ${PARENT[kind] === "input" ? "prompt" : "completion"} tokens (${total}) it is part of`,
      );
  }
  const cached = (details.cacheReadTokens ?? 0) + (details.cacheWriteTokens ?? 0);
  if (promptTokens !== null && cached > promptTokens)
    throw new RangeError(
      `cacheReadTokens and cacheWriteTokens (${cached} together) exceed the prompt tokens (${promptTokens})`,
    );
}

/**
 * Cost of a call in whole nano-USD, rounded half-up, or null when a token count is unknown or the
 * price cannot split the usage: cached and audio input tokens that overlap (audio that was cached)
 * where both have rates of their own, or both occurring where the price has a rate for cached
 * audio ({@link ResolvedPrice.cachedAudioApart}). Counts must be non-negative integers; `details` are parts of the
 * counts (see {@link UsageDetails}).
 *
 * @throws {RangeError} for inconsistent usage ({@link checkUsage}), or a cost out of range.
 */
export function costNanoUsd(
  price: ResolvedPrice,
  promptTokens: number | null,
  completionTokens: number | null,
  details: UsageDetails = {},
): number | null {
  checkUsage(promptTokens, completionTokens, details);
  if (promptTokens === null || completionTokens === null) return null;
  const rates: { [K in RateKind]?: bigint } = {
    input: price.inputPicoUsdPerToken,
    output: price.outputPicoUsdPerToken,
    ...price.parts,
  };
  for (const tier of price.tiers) {
    if (promptTokens > tier.start) {
      rates.input = tier.input ?? rates.input;
      rates.output = tier.output ?? rates.output;
      for (const kind of PART_KINDS) rates[kind] = tier[kind] ?? rates[kind];
    }
  }
  const apart = price.cachedAudioApart;
  if (
    apart !== undefined &&
    (details.inputAudioTokens ?? 0) > 0 &&
    ((apart.read && (details.cacheReadTokens ?? 0) > 0) ||
      (apart.write && (details.cacheWriteTokens ?? 0) > 0))
  )
    return null;
  // What is left of each count once the parts with rates of their own are taken out of it.
  const rest = { input: promptTokens, output: completionTokens };
  let pico = price.perRequestPicoUsd ?? 0n;
  for (const kind of PART_KINDS) {
    const count = details[DETAIL[kind]] ?? 0;
    const rate = rates[kind];
    if (rate === undefined || count === 0) continue;
    rest[PARENT[kind]] -= count;
    pico += BigInt(count) * rate;
  }
  if (rest.input < 0) return null;
  pico += BigInt(rest.input) * (rates.input ?? 0n) + BigInt(rest.output) * (rates.output ?? 0n);
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
  /** What the bundled table knows of a model, by provider and model name; null: nothing. */
  private readonly found = new Map<string, Found | null>();
  /** Resolved prices of the table's price entries (a model's price, or one of its periods). */
  private readonly resolved = new WeakMap<TablePrice, ResolvedPrice | null>();
  private readonly overrides = new Map<string, ResolvedPrice>();

  /**
   * @param overrides prices by model name, taking precedence over the bundled table.
   * @param useBundled whether to look models up in `@pydantic/genai-prices` (default true).
   * @throws {RangeError} naming the model and field whose override is not a valid price.
   */
  constructor(
    overrides: Readonly<Record<string, ModelPrice>> = {},
    private readonly useBundled = true,
  ) {
    for (const [model, price] of Object.entries(overrides)) {
      let field = "inputPerMillionUsd";
      try {
        const input = pricePerMillionToPicoPerToken(price.inputPerMillionUsd);
        field = "outputPerMillionUsd";
        const output = pricePerMillionToPicoPerToken(price.outputPerMillionUsd);
        const parts: { [K in PartKind]?: bigint } = {};
        for (const [kind, key] of [
          ["cacheRead", "cacheReadPerMillionUsd"],
          ["cacheWrite", "cacheWritePerMillionUsd"],
          ["inputAudio", "inputAudioPerMillionUsd"],
          ["outputAudio", "outputAudioPerMillionUsd"],
        ] as const) {
          field = key;
          const value = price[key];
          if (value !== undefined) parts[kind] = pricePerMillionToPicoPerToken(value);
        }
        this.overrides.set(model, {
          inputPicoUsdPerToken: input,
          outputPicoUsdPerToken: output,
          parts,
          tiers: [],
          source: "override",
        });
      } catch (error) {
        throw new RangeError(`prices["${model}"].${field}: ${(error as Error).message}`);
      }
    }
  }

  /**
   * The price of a model (from a provider, if known) at a time (ms since the epoch or a Date;
   * default now: the table's prices may change over time), or undefined when nobody knows it.
   */
  lookup(model: string, provider?: string | null, at?: Date | number): ResolvedPrice | undefined {
    const override = this.overrides.get(model);
    if (override) return override;
    return this.bundled(model, provider, at === undefined ? Date.now() : +at);
  }

  /**
   * Cost of a call in nano-USD, at the price valid at `at` (the call's end, ms since the epoch
   * or a Date; default now); null when the model's price or a token count is unknown, or the
   * price cannot split the usage (see {@link costNanoUsd}).
   *
   * @throws {RangeError} for inconsistent usage ({@link checkUsage}).
   */
  cost(
    model: string,
    provider: string | null | undefined,
    promptTokens: number | null,
    completionTokens: number | null,
    details: UsageDetails = {},
    at?: Date | number,
  ): number | null {
    checkUsage(promptTokens, completionTokens, details);
    if (promptTokens === null || completionTokens === null) return null;
    const price = this.lookup(model, provider, at);
    return price ? costNanoUsd(price, promptTokens, completionTokens, details) : null;
  }

  /** The table's price of a model at `atMs`, as its `calcPrice` selects it for that time. */
  private bundled(
    model: string,
    provider: string | null | undefined,
    atMs: number,
  ): ResolvedPrice | undefined {
    if (!this.useBundled || !Number.isFinite(atMs)) return undefined;
    const key = `${provider ?? ""}\u0000${model}`;
    let found = this.found.get(key);
    if (found === undefined) {
      found = findBundled(model, provider);
      this.found.set(key, found);
    }
    if (found === null) return undefined;
    const prices = found.provider.models[0]?.prices;
    if (prices !== undefined && !Array.isArray(prices)) return this.resolve(prices);
    // Prices that change over time (at dates, or by time of day, at whole seconds): the table
    // selects the one valid at the call's time; the last second's selection is kept.
    const second = Math.floor(atMs / 1000);
    if (found.last?.second === second) return found.last.price;
    const result = calcPrice({ input_tokens: 0, output_tokens: 0 }, model, {
      provider: found.provider,
      ...(provider === null || provider === undefined ? {} : { providerId: provider }),
      timestamp: new Date(atMs),
    });
    const price = result ? this.resolve(result.model_price) : undefined;
    found.last = { second, price };
    return price;
  }

  private resolve(price: TablePrice): ResolvedPrice | undefined {
    let resolved = this.resolved.get(price);
    if (resolved === undefined) {
      resolved = resolveTablePrice(price) ?? null;
      this.resolved.set(price, resolved);
    }
    return resolved ?? undefined;
  }
}

/** The bundled table's provider of a model, with only that model; the last selection made. */
interface Found {
  readonly provider: Provider;
  last?: { readonly second: number; readonly price: ResolvedPrice | undefined };
}

/** The bundled table's provider of a model, with only that model; null when none has it. */
function findBundled(model: string, provider: string | null | undefined): Found | null {
  let result: ReturnType<typeof calcPrice>;
  try {
    result = calcPrice(
      { input_tokens: 0, output_tokens: 0 },
      model,
      provider === null || provider === undefined ? {} : { providerId: provider },
    );
  } catch {
    return null;
  }
  if (!result) return null;
  const { id, name, api_pattern } = result.provider;
  // The same match later, without searching the whole table.
  return { provider: { id, name, api_pattern, models: [result.model] } };
}

/**
 * A table price (a JavaScript number of USD per million tokens) in pico-USD per token, to the
 * nearest: the table's numbers carry binary noise (0.18000000000000002 for 0.18), and no price of
 * it is finer than 1e-6 USD per million.
 */
function tablePicoPerToken(value: number): bigint {
  return BigInt(Math.round(value * 1_000_000));
}

/** A price entry of the table in pico-USD; undefined without an input price. */
function resolveTablePrice(price: TablePrice): ResolvedPrice | undefined {
  const base = (value: unknown): bigint | undefined => {
    if (typeof value === "number") return tablePicoPerToken(value);
    if (isTiered(value)) return tablePicoPerToken(value.base);
    return undefined;
  };
  const inputBase = base(price[RATE_KEYS.input]);
  if (inputBase === undefined) return undefined;
  const starts = new Set<number>();
  for (const key of Object.values(RATE_KEYS)) {
    const value = price[key];
    if (isTiered(value)) for (const tier of value.tiers) starts.add(tier.start);
  }
  const tierPrice = (value: unknown, start: number): bigint | undefined => {
    if (!isTiered(value)) return undefined;
    const applicable = value.tiers
      .filter((tier) => tier.start <= start)
      .sort((a, b) => b.start - a.start)[0];
    return applicable ? tablePicoPerToken(applicable.price) : undefined;
  };
  const parts: { [K in PartKind]?: bigint } = {};
  for (const kind of PART_KINDS) {
    const rate = base(price[RATE_KEYS[kind]]);
    if (rate !== undefined) parts[kind] = rate;
  }
  const requests = price["requests_kcount"];
  return {
    inputPicoUsdPerToken: inputBase,
    outputPicoUsdPerToken: base(price[RATE_KEYS.output]) ?? 0n,
    parts,
    tiers: [...starts]
      .sort((a, b) => a - b)
      .map((start) => {
        const tier: {
          start: number;
          input: bigint | undefined;
          output: bigint | undefined;
        } & { [K in PartKind]?: bigint } = {
          start,
          input: tierPrice(price[RATE_KEYS.input], start),
          output: tierPrice(price[RATE_KEYS.output], start),
        };
        for (const kind of PART_KINDS) {
          const rate = tierPrice(price[RATE_KEYS[kind]], start);
          if (rate !== undefined) tier[kind] = rate;
        }
        return tier;
      }),
    // USD per thousand requests → pico-USD per request: × 10^9.
    ...(typeof requests === "number"
      ? { perRequestPicoUsd: BigInt(Math.round(requests * 1e9)) }
      : {}),
    cachedAudioApart: {
      read: price["cache_audio_read_mtok"] !== undefined,
      write: price["cache_audio_write_mtok"] !== undefined,
    },
    source: "genai-prices",
  };
}
