/**
 * config's retry helper, with an injected sleep and random source: no test waits for a backoff.
 */
import { describe, expect, it } from "vitest";

import {
  backoffCeiling,
  ObservatoryError,
  retry,
  RetryExhaustedError,
  type RetryPolicy,
} from "../config/index.js";

const POLICY: RetryPolicy = { maxAttempts: 6, baseDelayMs: 100, maxDelayMs: 1000 };

/** An operation that fails `failures` times with `error(attempt)`, then resolves `value`. */
function failing<T>(
  failures: number,
  error: (attempt: number) => unknown,
  value: T,
): { run: (attempt: number) => Promise<T>; attempts: number[] } {
  const attempts: number[] = [];
  return {
    attempts,
    run: async (attempt) => {
      attempts.push(attempt);
      await Promise.resolve();
      if (attempts.length <= failures) throw error(attempt);
      return value;
    },
  };
}

const transient = (attempt: number): ObservatoryError =>
  new ObservatoryError("BROKER_DOWN", `attempt ${attempt} failed`, { retriable: true });

/** A sleep that records the delays and returns at once. */
function recordingSleep(): { sleep: (ms: number) => Promise<void>; delays: number[] } {
  const delays: number[] = [];
  return {
    delays,
    sleep: (ms) => {
      delays.push(ms);
      return Promise.resolve();
    },
  };
}

describe("retry", () => {
  it("retries retriable failures and resolves with the first success, numbering attempts from 1", async () => {
    const operation = failing(3, transient, "done");
    const { sleep, delays } = recordingSleep();
    const retries: [string, number, number][] = [];
    const result = await retry(operation.run, POLICY, {
      sleep,
      random: () => 0.5,
      onRetry: (error, attempt, delayMs) => retries.push([error.message, attempt, delayMs]),
    });
    expect(result).toBe("done");
    expect(operation.attempts).toEqual([1, 2, 3, 4]);
    expect(retries).toEqual([
      ["attempt 1 failed", 1, 50],
      ["attempt 2 failed", 2, 100],
      ["attempt 3 failed", 3, 200],
    ]);
    expect(delays).toEqual([50, 100, 200]);
  });

  it("waits at most min(cap, base · 2^k) before retry k, the whole range from 0 (full jitter)", async () => {
    const policy: RetryPolicy = { maxAttempts: 9, baseDelayMs: 100, maxDelayMs: 1000 };
    const ceilings = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
    expect(ceilings.map((_, k) => backoffCeiling(policy, k))).toEqual(ceilings);

    // The random source's extremes give the range's ends: 0 and (just under) the ceiling.
    for (const [random, expected] of [
      [0, ceilings.map(() => 0)],
      [0.999999, ceilings.map((ceiling) => ceiling * 0.999999)],
    ] as const) {
      const { sleep, delays } = recordingSleep();
      await expect(
        retry(failing(100, transient, 0).run, policy, { sleep, random: () => random }),
      ).rejects.toBeInstanceOf(RetryExhaustedError);
      expect(delays).toHaveLength(8);
      delays.forEach((delay, k) => {
        expect(delay).toBeCloseTo(expected[k] ?? Number.NaN, 6);
      });
    }

    // With Math.random, every delay stays within [0, ceiling] and they spread over the range.
    const { sleep, delays } = recordingSleep();
    const many: RetryPolicy = { maxAttempts: 2001, baseDelayMs: 100, maxDelayMs: 1000 };
    await expect(retry(failing(5000, transient, 0).run, many, { sleep })).rejects.toBeInstanceOf(
      RetryExhaustedError,
    );
    expect(delays).toHaveLength(2000);
    delays.forEach((delay, k) => {
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThanOrEqual(backoffCeiling(many, k));
    });
    const capped = delays.slice(10);
    expect(Math.min(...capped)).toBeLessThan(100);
    expect(Math.max(...capped)).toBeGreaterThan(900);
  });

  it("keeps the cap for any number of retries, and a zero base never waits", () => {
    expect(backoffCeiling({ maxAttempts: Infinity, baseDelayMs: 5, maxDelayMs: 70 }, 5000)).toBe(
      70,
    );
    expect(backoffCeiling({ maxAttempts: Infinity, baseDelayMs: 0, maxDelayMs: 70 }, 5000)).toBe(0);
  });

  it("rethrows a non-retriable error at once, unchanged, without waiting", async () => {
    const refusal = new ObservatoryError("CONFIG_INVALID", "bad setting");
    const plain = new Error("a bug");
    for (const error of [refusal, plain, "a string", { retriable: false }]) {
      const operation = failing(1, () => error, "never");
      const { sleep, delays } = recordingSleep();
      const caught = await retry(operation.run, POLICY, { sleep }).then(
        () => undefined,
        (thrown: unknown) => thrown,
      );
      expect(caught).toBe(error);
      expect(operation.attempts).toEqual([1]);
      expect(delays).toEqual([]);
    }
  });

  it("retries any error carrying retriable: true, not only the project's", async () => {
    const kafkajsLike = Object.assign(new Error("Connection error: ECONNREFUSED"), {
      name: "KafkaJSConnectionError",
      retriable: true,
    });
    const operation = failing(2, () => kafkajsLike, 42);
    expect(await retry(operation.run, POLICY, recordingSleep())).toBe(42);
    expect(operation.attempts).toEqual([1, 2, 3]);
  });

  it("stops at a non-retriable error after retriable ones", async () => {
    const fatal = new ObservatoryError("SCHEMA_INCOMPATIBLE", "refused");
    const operation = failing(3, (attempt) => (attempt < 3 ? transient(attempt) : fatal), 0);
    await expect(retry(operation.run, POLICY, recordingSleep())).rejects.toBe(fatal);
    expect(operation.attempts).toEqual([1, 2, 3]);
  });

  it("gives up after maxAttempts with a RetryExhaustedError: attempts counted, the last error as cause", async () => {
    const last = new ObservatoryError("BROKER_DOWN", "attempt 3 failed", {
      retriable: true,
      context: { topic: "mcpo.model-calls", partition: 2 },
    });
    const operation = failing(10, (attempt) => (attempt === 3 ? last : transient(attempt)), 0);
    const { sleep, delays } = recordingSleep();
    const error = await retry(
      operation.run,
      { ...POLICY, maxAttempts: 3 },
      { sleep, random: () => 0 },
    ).then(
      () => undefined,
      (thrown: unknown) => thrown,
    );
    expect(error).toBeInstanceOf(RetryExhaustedError);
    expect(error).toBeInstanceOf(ObservatoryError);
    const exhausted = error as RetryExhaustedError;
    expect(exhausted.code).toBe("RETRY_EXHAUSTED");
    expect(exhausted.name).toBe("RetryExhaustedError");
    expect(exhausted.attempts).toBe(3);
    expect(exhausted.cause).toBe(last);
    expect(exhausted.retriable).toBe(false);
    expect(exhausted.context).toEqual({ topic: "mcpo.model-calls", partition: 2 });
    expect(exhausted.message).toBe("gave up after 3 attempt(s): attempt 3 failed");
    expect(operation.attempts).toEqual([1, 2, 3]);
    expect(delays).toHaveLength(2);
  });

  it("with maxAttempts 1 tries once: a retriable failure is exhausted at once", async () => {
    const operation = failing(1, transient, 0);
    const { sleep, delays } = recordingSleep();
    const error = await retry(operation.run, { ...POLICY, maxAttempts: 1 }, { sleep }).catch(
      (thrown: unknown) => thrown,
    );
    expect(error).toBeInstanceOf(RetryExhaustedError);
    expect((error as RetryExhaustedError).attempts).toBe(1);
    expect(delays).toEqual([]);
  });

  it("a custom shouldRetry decides instead of the error's flag", async () => {
    const conflict = Object.assign(new Error("HTTP 409"), { status: 409 });
    const operation = failing(2, () => conflict, "ok");
    const policy: RetryPolicy = {
      ...POLICY,
      shouldRetry: (error) => (error as { status?: unknown }).status === 409,
    };
    expect(await retry(operation.run, policy, recordingSleep())).toBe("ok");
    expect(operation.attempts).toEqual([1, 2, 3]);
  });

  it("with maxAttempts Infinity never gives up; the signal stops it, also in the middle of a wait", async () => {
    const controller = new AbortController();
    const operation = failing(Number.POSITIVE_INFINITY, transient, 0);
    let waits = 0;
    const never = new Promise<void>(() => undefined);
    const result = retry(
      operation.run,
      { ...POLICY, maxAttempts: Infinity },
      {
        signal: controller.signal,
        // 500 waits return at once, then one never ends: only the abort can end it.
        sleep: () => (++waits <= 500 ? Promise.resolve() : never),
      },
    ).catch((thrown: unknown) => thrown);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(operation.attempts).toHaveLength(501);
    const reason = new Error("shutting down");
    controller.abort(reason);
    expect(await result).toBe(reason);
    expect(operation.attempts).toHaveLength(501);
  });

  it("does not start when the signal is already aborted, and does not retry after an abort during an attempt", async () => {
    const aborted = AbortSignal.abort(new Error("stopped"));
    let calls = 0;
    await expect(
      retry(
        () => {
          calls++;
          return Promise.resolve(1);
        },
        POLICY,
        { signal: aborted },
      ),
    ).rejects.toThrow("stopped");
    expect(calls).toBe(0);

    const controller = new AbortController();
    const attempts: number[] = [];
    const error = await retry(
      (attempt) => {
        attempts.push(attempt);
        controller.abort(new Error("stop now"));
        return Promise.reject(transient(attempt));
      },
      POLICY,
      { signal: controller.signal, ...recordingSleep() },
    ).catch((thrown: unknown) => thrown);
    expect((error as Error).message).toBe("stop now");
    expect(attempts).toEqual([1]);
  });

  it("waits with a real timer by default, which an abort clears", async () => {
    const controller = new AbortController();
    const started = Date.now();
    const result = retry(
      failing(1, transient, "late").run,
      { maxAttempts: 2, baseDelayMs: 60_000, maxDelayMs: 60_000 },
      { signal: controller.signal, random: () => 1 },
    ).catch((thrown: unknown) => thrown);
    setTimeout(() => {
      controller.abort(new Error("aborted"));
    }, 20);
    expect(((await result) as Error).message).toBe("aborted");
    expect(Date.now() - started).toBeLessThan(5_000);

    // A short real wait ends and the next attempt runs.
    expect(
      await retry(
        failing(1, transient, "after a real wait").run,
        { maxAttempts: 2, baseDelayMs: 5, maxDelayMs: 5 },
        {},
      ),
    ).toBe("after a real wait");
  });

  it("refuses a policy it cannot follow", async () => {
    const run = (): Promise<number> => Promise.resolve(1);
    for (const policy of [
      { maxAttempts: 0, baseDelayMs: 1, maxDelayMs: 1 },
      { maxAttempts: 1.5, baseDelayMs: 1, maxDelayMs: 1 },
      { maxAttempts: 3, baseDelayMs: -1, maxDelayMs: 1 },
      { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: Number.NaN },
    ])
      await expect(retry(run, policy)).rejects.toBeInstanceOf(RangeError);
  });
});
