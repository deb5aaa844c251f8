/**
 * Events that arrive on a partition other than their service's home: the partition state machines
 * of a whole topic, run together in a simulation of the processor's log (copies and progress
 * records appended to the home partitions' logs as the processor appends them), in random
 * interleavings, with sources that restart from a checkpoint and former owners that go on for a
 * while (copies forwarded twice, out of order). Every rollup and alert equals the oracle over all
 * of the services' events, wherever they arrived; reading the logs again, as a replay does, gives
 * the same outputs.
 */
import { describe, expect, it } from "vitest";

import { bigintReplacer } from "../avro/bigint.js";
import type { AlertEvent, MetricRollup, ModelCallEvent } from "../avro/generated.js";
import type { AlertRule } from "../metrics/index.js";
import { homeOf, snapshotFromJson } from "../processor/checkpoints.js";
import {
  DEFAULT_WINDOW_SETTINGS,
  PartitionState,
  type PartitionInput,
  type PartitionOutput,
  type PartitionRouting,
  type PartitionSnapshot,
  type WindowSettings,
} from "../processor/partition.js";
import {
  expectMatchesOracle,
  oracleAlerts,
  oracleKey,
  oracleRollups,
  orderedTransitions,
  transitionOf,
} from "./support/oracle.js";
import { seededRandom, type SeededRandom } from "./support/seed.js";
import { pick, variedEvent } from "./support/varied-events.js";

const SIZE = 60_000_000;
const GRACE = 10_000_000;
const ORIGIN = 1_764_000_000_000_000 - (1_764_000_000_000_000 % SIZE);
const RULES: AlertRule[] = [
  { key: "errors", metric: "error_rate", comparator: "gt", threshold: 0.3, minSamples: 2 },
  { key: "fallbacks", metric: "fallback_rate", comparator: "gt", threshold: 0.2, minSamples: 3 },
];
const SETTINGS: WindowSettings = {
  ...DEFAULT_WINDOW_SETTINGS,
  windowSizeMicros: SIZE,
  graceMicros: GRACE,
  rules: RULES,
};
/** Three home partitions and one added later (it holds only other homes' events). */
const HOMES = 3;
const PARTITIONS = 4;
const SERVICES = ["billing", "search", "support-bot", "payments", "triage", "ledger", "kyc"];
const MODELS = ["gpt-4o", "claude-3-5-sonnet", null];

const routingOf = (partition: number): PartitionRouting => ({
  partition,
  homePartitions: HOMES,
  homeOf: homeOf(HOMES),
});

/** Events in production order, on time (jitter within half the grace), each with a partition. */
function produce(
  random: SeededRandom,
  count: number,
  placement: (event: ModelCallEvent) => number,
): { event: ModelCallEvent; partition: number }[] {
  let clock = ORIGIN + 1_000_000;
  const produced: { event: ModelCallEvent; partition: number }[] = [];
  for (let i = 0; i < count; i++) {
    clock += random.int(0, 2_500_000);
    const service = pick(random, SERVICES);
    const end = clock - random.int(0, GRACE / 2);
    const event = variedEvent(random, service, end, MODELS, {
      status: random.next() < 0.3 ? "error" : "ok",
      error_type: null,
    });
    produced.push({ event, partition: placement(event) });
  }
  return produced;
}

interface Owner {
  state: PartitionState;
  /** The next position to read in the partition's log. */
  cursor: number;
  /** Per home: the last time reported to it. */
  reported: Map<number, number>;
}

interface Simulated {
  /** Every partition's log as it ends up: events, copies, progress records, ticks. */
  logs: PartitionInput[][];
  /** Everything emitted, by every owner, in order (restarts emit some twice). */
  outputs: PartitionOutput[];
}

/**
 * Runs the topic's partitions in a random interleaving until every log is read. Each partition
 * reports its event time to every home now and then (and after its final tick); now and then it
 * saves a checkpoint, or restarts from its last one while its former owner reads a few more
 * records (and forwards and reports what they cause) before it stops.
 */
function simulate(
  random: SeededRandom,
  produced: readonly { event: ModelCallEvent; partition: number }[],
): Simulated {
  const logs: PartitionInput[][] = Array.from({ length: PARTITIONS }, () => []);
  // Every partition may forward to every home: registered before anything else (the processor
  // does this for partitions added to the topic).
  for (let home = 0; home < HOMES; home++)
    for (let source = 0; source < PARTITIONS; source++)
      if (source !== home)
        logs[home]?.push({
          type: "progress",
          progress: { sourcePartition: source, lastOffset: null, sourceTimeMicros: 0 },
        });
  for (const { event, partition } of produced) {
    const log = logs[partition] ?? [];
    log.push({ type: "event", event, offset: String(log.length) });
  }
  const end = (produced.at(-1)?.event.end_time ?? ORIGIN) + 10 * SIZE;
  for (const log of logs) log.push({ type: "tick", eventTimeMicros: end });

  const outputs: PartitionOutput[] = [];
  const fresh = (partition: number, snapshot?: PartitionSnapshot, cursor = 0): Owner => ({
    state: new PartitionState(SETTINGS, snapshot, routingOf(partition)),
    cursor,
    reported: new Map(),
  });
  const owners = Array.from({ length: PARTITIONS }, (_, partition) => fresh(partition));
  const durable = owners.map(() => ({
    snapshot: undefined as PartitionSnapshot | undefined,
    cursor: 0,
  }));
  const zombies: { partition: number; owner: Owner; left: number }[] = [];

  const step = (partition: number, owner: Owner, forceReport: boolean): void => {
    const log = logs[partition] ?? [];
    const input = log[owner.cursor];
    if (!input) return;
    owner.cursor++;
    for (const output of owner.state.apply(input)) {
      outputs.push(output);
      if (output.type === "forward")
        logs[output.partition]?.push({ type: "copy", event: output.event, origin: output.origin });
    }
    const time = owner.state.ownEventTimeMicros;
    if (time === null || (!forceReport && input.type !== "tick" && random.next() > 0.3)) return;
    for (let home = 0; home < HOMES; home++) {
      if (home === partition || (owner.reported.get(home) ?? -1) >= time) continue;
      owner.reported.set(home, time);
      logs[home]?.push({
        type: "progress",
        progress: {
          sourcePartition: partition,
          lastOffset: owner.state.forwardedTo.get(home) ?? null,
          sourceTimeMicros: time,
        },
      });
    }
  };

  for (;;) {
    const zombie = zombies[0];
    if (zombie && random.next() < 0.5) {
      step(zombie.partition, zombie.owner, false);
      if (--zombie.left <= 0) zombies.shift();
      continue;
    }
    const ready = owners.flatMap((owner, partition) =>
      owner.cursor < (logs[partition]?.length ?? 0) ? [partition] : [],
    );
    if (ready.length === 0) {
      if (zombies.length > 0) {
        zombies.shift();
        continue;
      }
      break;
    }
    const partition = pick(random, ready);
    const owner = owners[partition] as Owner;
    const roll = random.next();
    if (roll < 0.04) {
      durable[partition] = {
        snapshot: snapshotFromJson(
          JSON.parse(JSON.stringify(owner.state.snapshot(), bigintReplacer)) as PartitionSnapshot,
        ),
        cursor: owner.cursor,
      };
    } else if (roll < 0.06) {
      // The owner loses the partition: the next one restores the checkpoint and reads again;
      // the former one goes on for a few records before it notices.
      zombies.push({ partition, owner, left: random.int(1, 20) });
      const saved = durable[partition] ?? { snapshot: undefined, cursor: 0 };
      owners[partition] = fresh(partition, saved.snapshot, saved.cursor);
      continue;
    }
    step(partition, owner, owner.cursor === (logs[partition]?.length ?? 0) - 1);
  }
  return { logs, outputs };
}

/** Each log read once, from the start, as a replay reads it (copies are already there). */
function replay(logs: readonly PartitionInput[][]): PartitionOutput[] {
  return logs.flatMap((log, partition) => {
    const state = new PartitionState(SETTINGS, undefined, routingOf(partition));
    return log.flatMap((input) => state.apply(input));
  });
}

const keyOf = (rollup: MetricRollup): string =>
  oracleKey(rollup.service, rollup.model, rollup.window_start);

/** Rollups and alerts by key, checking that whatever was emitted twice was emitted identically. */
function distinct(outputs: readonly PartitionOutput[]): {
  rollups: Map<string, MetricRollup>;
  alerts: Map<string, AlertEvent>;
  late: number;
} {
  const rollups = new Map<string, MetricRollup>();
  const alerts = new Map<string, AlertEvent>();
  let late = 0;
  for (const output of outputs) {
    if (output.type === "rollup") {
      const key = keyOf(output.rollup);
      const before = rollups.get(key);
      if (before) expect(output.rollup, `rollup ${key} emitted twice, differently`).toEqual(before);
      rollups.set(key, output.rollup);
    } else if (output.type === "alert") {
      const key = `${output.alert.alert_id}|${output.alert.state}`;
      const before = alerts.get(key);
      if (before) expect(output.alert, `alert ${key} emitted twice, differently`).toEqual(before);
      alerts.set(key, output.alert);
    } else if (output.type === "late") late++;
  }
  return { rollups, alerts, late };
}

function expectOracle(
  produced: readonly { event: ModelCallEvent }[],
  outputs: readonly PartitionOutput[],
  where: string,
): void {
  const { rollups, alerts, late } = distinct(outputs);
  expect(late, `${where}: late events`).toBe(0);
  const expected = oracleRollups(
    produced.map((entry) => entry.event),
    SIZE,
    { thresholds: SETTINGS.thresholds },
  );
  expectMatchesOracle(
    [...rollups.values()].map((r) => ({
      service: r.service,
      model: r.model,
      windowStart: r.window_start,
      counts: r.counts,
      rates: r.rates,
    })),
    expected,
    where,
  );
  const rules = RULES.map((rule) => ({ ...rule }));
  expect(orderedTransitions([...alerts.values()].map(transitionOf)), `${where}: alerts`).toEqual(
    orderedTransitions(oracleAlerts(expected.values(), rules)),
  );
}

describe("events away from their service's home partition", () => {
  const cases: {
    name: string;
    placement: (random: SeededRandom) => (e: ModelCallEvent) => number;
  }[] = [
    {
      name: "keyed by replica (any partition)",
      placement: (random) => () => random.int(0, PARTITIONS - 1),
    },
    {
      name: "partitions added mid-stream (later events of some services on the new partition)",
      placement: (random) => {
        let produced = 0;
        return (event) => {
          produced++;
          const home = homeOf(HOMES)(event.service);
          // After the first third, the default partitioner over 4 partitions moves some services.
          if (produced < 100) return home;
          const moved = homeOf(PARTITIONS)(event.service);
          return moved === HOMES ? moved : random.next() < 0.35 ? HOMES : home;
        };
      },
    },
  ];
  for (const { name, placement } of cases)
    it(`${name}: every rollup and alert equals the oracle over all events, through restarts and former owners; a replay of the logs emits the same`, () => {
      const random = seededRandom(`routing.unit ${name}`);
      for (let round = 0; round < 8; round++) {
        const produced = produce(random, random.int(150, 400), placement(random));
        const away = produced.filter((p) => p.partition !== homeOf(HOMES)(p.event.service));
        expect(away.length, "some events are away from home").toBeGreaterThan(5);
        const { logs, outputs } = simulate(random, produced);
        expect(
          outputs.filter((o) => o.type === "forward").length,
          "every away event forwarded (some twice)",
        ).toBeGreaterThanOrEqual(away.length);
        expectOracle(produced, outputs, `live round ${round}`);
        const replayed = replay(logs);
        expectOracle(produced, replayed, `replay round ${round}`);
        expect(
          [...distinct(replayed).rollups.values()].sort((a, b) => (keyOf(a) < keyOf(b) ? -1 : 1)),
        ).toEqual(
          [...distinct(outputs).rollups.values()].sort((a, b) => (keyOf(a) < keyOf(b) ? -1 : 1)),
        );
      }
    });

  it("counts a copy once: again from a restarted source, or out of the source's order, it is skipped", () => {
    const state = new PartitionState(SETTINGS, undefined, routingOf(0));
    const service = SERVICES.find((s) => homeOf(HOMES)(s) === 0) as string;
    const random = seededRandom("routing.unit copies");
    const at = (offset: string, previous: string | null, end: number): PartitionInput => ({
      type: "copy",
      event: variedEvent(random, service, end, ["m"], { kind: "model_call", model: "m" }),
      origin: {
        sourcePartition: 1,
        sourceOffset: offset,
        previousOffset: previous,
        sourceTimeMicros: end,
      },
    });
    const counted = (input: PartitionInput): number => {
      state.apply(input);
      return state
        .snapshot()
        .windows.reduce((sum, r) => sum + (r.model === null ? r.counts.calls : 0), 0);
    };
    expect(counted(at("5", null, ORIGIN + 1000))).toBe(1);
    expect(counted(at("5", null, ORIGIN + 1000)), "the same copy again").toBe(1);
    expect(counted(at("9", "7", ORIGIN + 2000)), "not following 5").toBe(1);
    expect(counted(at("7", "5", ORIGIN + 3000))).toBe(2);
    expect(counted(at("9", "7", ORIGIN + 4000))).toBe(3);
    expect(counted(at("7", "5", ORIGIN + 3000)), "7 again").toBe(3);
  });

  it("holds its windows open until every source partition has passed them", () => {
    const state = new PartitionState(SETTINGS, undefined, routingOf(0));
    const service = SERVICES.find((s) => homeOf(HOMES)(s) === 0) as string;
    const random = seededRandom("routing.unit hold");
    const event = (end: number): PartitionInput => ({
      type: "event",
      event: variedEvent(random, service, end, ["m"], { kind: "model_call", model: "m" }),
      offset: "0",
    });
    state.apply({
      type: "progress",
      progress: { sourcePartition: 3, lastOffset: null, sourceTimeMicros: 0 },
    });
    state.apply(event(ORIGIN + 1000));
    // Its own event time is far past the window, but partition 3 has not reported yet.
    expect(state.apply(event(ORIGIN + 5 * SIZE)).filter((o) => o.type === "rollup")).toEqual([]);
    const progress = (time: number, last: string | null = null): PartitionOutput[] =>
      state.apply({
        type: "progress",
        progress: { sourcePartition: 3, lastOffset: last, sourceTimeMicros: time },
      });
    expect(progress(ORIGIN + SIZE + GRACE - 1).filter((o) => o.type === "rollup")).toEqual([]);
    // A report that does not follow the copies counted here does not count.
    expect(progress(ORIGIN + 3 * SIZE, "12").filter((o) => o.type === "rollup")).toEqual([]);
    const closed = progress(ORIGIN + SIZE + GRACE).flatMap((o) =>
      o.type === "rollup" ? [o.rollup.window_start] : [],
    );
    expect(closed).toEqual([ORIGIN, ORIGIN]);
  });
});
