/**
 * The project's one retry loop: capped exponential backoff with full jitter. Retry k (k = 0 for
 * the first retry) waits a random time in [0, min(maxDelayMs, baseDelayMs · 2^k)], so clients that
 * failed together do not come back together; an error that says how long to wait (a receiver's
 * `Retry-After`, see {@link RetryPolicy.minDelayMs}) raises that wait to it, up to the cap. Only
 * errors that say trying again may succeed are retried (`retriable: true`, see
 * {@link isRetriable}); any other error is rethrown at once, unchanged. After `maxAttempts` attempts the loop gives up with a {@link RetryExhaustedError}
 * whose cause is the last error; with `maxAttempts: Infinity` only the abort signal stops it.
 *
 * @module
 */
import { isRetriable, ObservatoryError } from "./errors.js";

/** How often and how patiently to try. */
export interface RetryPolicy {
  /** Attempts in all, the first one included: a positive integer, or `Infinity`. */
  readonly maxAttempts: number;
  /** The first retry waits up to this long, ms; each further retry up to twice as long. */
  readonly baseDelayMs: number;
  /** No retry waits longer than this, ms. */
  readonly maxDelayMs: number;
  /**
   * Which failures to try again. Default {@link isRetriable}: those whose `retriable` is true.
   * A caller that must not lose its work whatever the failure (the exporters' buffer) says so here.
   */
  readonly shouldRetry?: (error: unknown) => boolean;
  /**
   * The least a retry after `error` waits, ms (the jittered wait is raised to it, but never past
   * `maxDelayMs`), or undefined for none. Default {@link requestedDelayMs}: the error's own
   * `retryAfterMs` (a receiver's `Retry-After`).
   */
  readonly minDelayMs?: (error: unknown) => number | undefined;
}

/** An error's `retryAfterMs` when it is a non-negative finite number (a receiver's `Retry-After`). */
export function requestedDelayMs(error: unknown): number | undefined {
  const value = (error as { retryAfterMs?: unknown } | null | undefined)?.retryAfterMs;
  return typeof value === "number" && Number.isFinite(value) && value >= 0 ? value : undefined;
}

/** Options of {@link retry}. */
export interface RetryOptions {
  /** Stops the retries: a pending wait ends at once and `retry` rejects with the signal's reason. */
  readonly signal?: AbortSignal;
  /** Called before each wait, with the error, the attempt that failed (from 1) and the delay. */
  readonly onRetry?: (error: ObservatoryError | Error, attempt: number, delayMs: number) => void;
  /** Waits `ms` (default a timer); tests inject one that does not wait. */
  readonly sleep?: (ms: number) => Promise<void>;
  /** A random number in [0, 1) for the jitter (default `Math.random`). */
  readonly random?: () => number;
}

/** {@link retry} gave up: every attempt failed with a retriable error. */
export class RetryExhaustedError extends ObservatoryError {
  declare readonly code: "RETRY_EXHAUSTED";

  constructor(
    /** How many attempts were made. */
    readonly attempts: number,
    /** The last attempt's error. */
    lastError: unknown,
  ) {
    super(
      "RETRY_EXHAUSTED",
      `gave up after ${attempts} attempt(s): ${lastError instanceof Error ? lastError.message : String(lastError)}`,
      {
        cause: lastError,
        ...(lastError instanceof ObservatoryError && lastError.context !== undefined
          ? { context: lastError.context }
          : {}),
      },
    );
    this.name = "RetryExhaustedError";
  }
}

/** The longest wait before retry `k` (from 0): min(cap, base · 2^k). */
export function backoffCeiling(policy: RetryPolicy, retryIndex: number): number {
  // 2^60 times any base is past any cap; clamping keeps 0 · 2^k from becoming NaN.
  return Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** Math.min(retryIndex, 60));
}

/**
 * Runs `operation` until it succeeds, retrying retriable failures with capped exponential backoff
 * and full jitter.
 *
 * @param operation gets the attempt's number, from 1.
 * @throws the first non-retriable error, unchanged.
 * @throws {RetryExhaustedError} after `policy.maxAttempts` failed attempts.
 * @throws the signal's reason once `options.signal` aborts.
 */
export async function retry<T>(
  operation: (attempt: number) => Promise<T>,
  policy: RetryPolicy,
  options: RetryOptions = {},
): Promise<T> {
  validate(policy);
  const shouldRetry = policy.shouldRetry ?? isRetriable;
  const random = options.random ?? Math.random;
  const { signal } = options;
  for (let attempt = 1; ; attempt++) {
    signal?.throwIfAborted();
    try {
      return await operation(attempt);
    } catch (error) {
      signal?.throwIfAborted();
      if (!shouldRetry(error)) throw error;
      if (attempt >= policy.maxAttempts) throw new RetryExhaustedError(attempt, error);
      const floor = Math.min(
        (policy.minDelayMs ?? requestedDelayMs)(error) ?? 0,
        policy.maxDelayMs,
      );
      const delayMs = Math.max(floor, random() * backoffCeiling(policy, attempt - 1));
      options.onRetry?.(
        error instanceof Error ? error : new Error(String(error), { cause: error }),
        attempt,
        delayMs,
      );
      await wait(delayMs, signal, options.sleep);
    }
  }
}

function validate(policy: RetryPolicy): void {
  const { maxAttempts, baseDelayMs, maxDelayMs } = policy;
  if (!(maxAttempts === Infinity || (Number.isInteger(maxAttempts) && maxAttempts >= 1)))
    throw new RangeError(`maxAttempts must be a positive integer or Infinity (got ${maxAttempts})`);
  if (!Number.isFinite(baseDelayMs) || baseDelayMs < 0)
    throw new RangeError(`baseDelayMs must be a non-negative number (got ${baseDelayMs})`);
  if (!Number.isFinite(maxDelayMs) || maxDelayMs < 0)
    throw new RangeError(`maxDelayMs must be a non-negative number (got ${maxDelayMs})`);
}

/** Waits `ms` with `sleep` (or a timer), ending early with the signal's reason on abort. */
async function wait(
  ms: number,
  signal: AbortSignal | undefined,
  sleep: ((ms: number) => Promise<void>) | undefined,
): Promise<void> {
  signal?.throwIfAborted();
  const timer: { handle?: NodeJS.Timeout } = {};
  const slept =
    sleep?.(ms) ??
    new Promise<void>((resolve) => {
      timer.handle = setTimeout(resolve, ms);
    });
  if (!signal) return slept;
  const listening = new AbortController();
  const aborted = new Promise<never>((_, reject) => {
    signal.addEventListener(
      "abort",
      () => {
        reject(signal.reason as Error);
      },
      { once: true, signal: listening.signal },
    );
  });
  try {
    await Promise.race([slept, aborted]);
  } finally {
    clearTimeout(timer.handle);
    listening.abort();
  }
}
