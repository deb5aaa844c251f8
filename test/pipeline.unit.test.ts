/**
 * The processor's runtime path in RxJS, on virtual time (RxJS's TestScheduler): idle partitions
 * are found by timers on the injected scheduler, checkpoint pacing reads the same clock, and
 * batches go through lanes that keep each partition's order and hold the source back until a
 * batch is handled. Nothing here sleeps.
 */
import { of, Subject } from "rxjs";
import { TestScheduler } from "rxjs/testing";
import { describe, expect, it } from "vitest";

import { due, idlePartitions, Lanes, tickIdlePartitions } from "../processor/pipeline.js";

const testScheduler = () =>
  new TestScheduler((actual, expected) => {
    expect(actual).toEqual(expected);
  });

describe("idle partitions", () => {
  it("emit a partition once it had no activity for the idle time; activity restarts its timer", () => {
    testScheduler().run(({ cold, expectObservable }) => {
      // Partition 1 active at 0 and 400 ms, partition 2 at 100 ms; idle time 1000 ms.
      const activity = cold<number>("a 99ms b 299ms c", { a: 1, b: 2, c: 1 });
      expectObservable(activity.pipe(idlePartitions(1000))).toBe("1100ms y 299ms x", {
        x: 1,
        y: 2,
      });
    });
  });

  it("a partition that stays quiet is emitted once per quiet spell, not again and again", () => {
    testScheduler().run(({ cold, expectObservable }) => {
      const activity = cold<number>("a 4999ms a", { a: 3 });
      expectObservable(activity.pipe(idlePartitions(1000)), "^ 9999ms !").toBe(
        "1000ms x 4999ms x",
        { x: 3 },
      );
    });
  });

  it("checkpoint pacing reads the scheduler's clock", () => {
    const scheduler = testScheduler();
    scheduler.run(() => {
      const start = scheduler.now();
      expect(due(scheduler, start, 2000)).toBe(false);
      scheduler.schedule(() => {
        expect(due(scheduler, start, 2000)).toBe(false);
      }, 1999);
      scheduler.schedule(() => {
        expect(due(scheduler, start, 2000)).toBe(true);
      }, 2000);
    });
  });
});

describe("lanes", () => {
  it("handle one lane's items in order, one at a time, lanes side by side; push resolves when handled", async () => {
    const log: string[] = [];
    const gates = new Map<string, () => void>();
    const lanes = new Lanes<string>(
      (item) =>
        new Promise<void>((resolve) => {
          log.push(`start ${item}`);
          gates.set(item, () => {
            log.push(`end ${item}`);
            resolve();
          });
        }),
    );
    const settled: string[] = [];
    const a1 = lanes.push(1, "a1").then(() => settled.push("a1"));
    const a2 = lanes.push(1, "a2").then(() => settled.push("a2"));
    const b1 = lanes.push(2, "b1").then(() => settled.push("b1"));
    await Promise.resolve();
    // a2 waits for a1 (same lane); b1 runs beside a1.
    expect(log).toEqual(["start a1", "start b1"]);
    gates.get("b1")?.();
    await b1;
    expect(settled).toEqual(["b1"]);
    gates.get("a1")?.();
    await a1;
    await new Promise((resolve) => setImmediate(resolve));
    expect(log).toEqual(["start a1", "start b1", "end b1", "end a1", "start a2"]);
    gates.get("a2")?.();
    await a2;
    expect(settled).toEqual(["b1", "a1", "a2"]);
    lanes.close();
    expect(lanes.closed).toBe(true);
  });

  it("a failing item rejects its own push and the lane goes on", async () => {
    const handled: number[] = [];
    const lanes = new Lanes<number>(async (item) => {
      await Promise.resolve();
      if (item === 2) throw new Error("outputs not written");
      handled.push(item);
    });
    await lanes.push(0, 1);
    await expect(lanes.push(0, 2)).rejects.toThrow("outputs not written");
    await lanes.push(0, 3);
    expect(handled).toEqual([1, 3]);
    lanes.close();
  });

  it("the consumer awaiting its push is held back until the batch is handled (backpressure)", async () => {
    const source = new Subject<number>();
    let release: () => void = () => undefined;
    const lanes = new Lanes<number>(
      () =>
        new Promise<void>((resolve) => {
          release = resolve;
        }),
    );
    let handedOver = false;
    source.subscribe((n) => {
      void lanes.push(0, n).then(() => {
        handedOver = true;
      });
    });
    source.next(1);
    await new Promise((resolve) => setImmediate(resolve));
    expect(handedOver).toBe(false);
    release();
    await new Promise((resolve) => setImmediate(resolve));
    expect(handedOver).toBe(true);
    lanes.close();
  });
});

describe("ticking idle partitions", () => {
  it("a partition that still needs ticks is ticked again after another idle time (its tick failed, or was not read), not never again", () => {
    const scheduler = testScheduler();
    scheduler.run(({ flush }) => {
      const activity = new Subject<number>();
      const attempts: number[] = [];
      const subscription = tickIdlePartitions(activity, 1000, scheduler, () => {
        attempts.push(scheduler.now());
        // Twice its tick is not read (a partition just added: the write failed, or the
        // producer did not know the partition yet); the third time it needs no more.
        return of(attempts.length < 3);
      });
      activity.next(7);
      flush();
      expect(attempts).toEqual([1000, 2000, 3000]);
      subscription.unsubscribe();
    });
  });
});
