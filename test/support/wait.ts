/**
 * Waiting on conditions, not on time: tests poll for the state they expect, with a bound, and a
 * timeout says what was awaited and what was last seen.
 */

/** Resolves after `ms` milliseconds (for pacing a poll loop, never for deciding an outcome). */
export function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Polls `probe` every `intervalMs` until `done(value)` holds, and returns that value. Throws
 * after `timeoutMs` with `what` and the last value seen (or the last error `probe` threw).
 */
export async function waitFor<T>(
  what: string,
  probe: () => T | Promise<T>,
  done: (value: T) => boolean,
  options: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 60_000;
  const intervalMs = options.intervalMs ?? 100;
  const deadline = Date.now() + timeoutMs;
  let last: { value: T } | { error: unknown } = { error: new Error("no probe ran") };
  for (;;) {
    try {
      const value = await probe();
      last = { value };
      if (done(value)) return value;
    } catch (error) {
      last = { error };
    }
    if (Date.now() >= deadline) break;
    await pause(intervalMs);
  }
  const seen =
    "error" in last
      ? `error ${last.error instanceof Error ? last.error.message : String(last.error)}`
      : JSON.stringify(last.value, (_key, value: unknown) =>
          typeof value === "bigint" ? value.toString() : value,
        );
  throw new Error(`waited ${timeoutMs} ms for ${what}; last seen: ${seen}`);
}
