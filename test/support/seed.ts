/**
 * Reproducible randomness for tests: a seed from `MCPO_TEST_SEED` when set, else a fresh one,
 * always logged, so a failure can be replayed with `MCPO_TEST_SEED=<seed> npx vitest run <file>`.
 */
import { randomInt } from "node:crypto";

/** A small seeded generator (mulberry32): the same seed gives the same sequence. */
export interface SeededRandom {
  readonly seed: number;
  /** Uniform in [0, 1). */
  next(): number;
  /** Uniform integer in [min, max]. */
  int(min: number, max: number): number;
}

/** The test seed: `MCPO_TEST_SEED` when set (an integer), else random; logged with `label`. */
export function testSeed(label: string): number {
  const raw = process.env.MCPO_TEST_SEED;
  let seed: number;
  if (raw !== undefined && raw !== "") {
    seed = Number(raw);
    if (!Number.isSafeInteger(seed))
      throw new Error(`MCPO_TEST_SEED must be an integer (got ${JSON.stringify(raw)})`);
  } else seed = randomInt(0, 2 ** 31);
  process.stderr.write(`[seed] ${label}: MCPO_TEST_SEED=${seed}\n`);
  return seed;
}

/** A generator seeded by {@link testSeed}. */
export function seededRandom(label: string): SeededRandom {
  const seed = testSeed(label);
  let state = seed >>> 0;
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
  return {
    seed,
    next,
    int: (min, max) => min + Math.floor(next() * (max - min + 1)),
  };
}
