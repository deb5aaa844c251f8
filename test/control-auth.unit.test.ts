/**
 * Issue 14: control records (watermark ticks, copies, progress records) are recognised by their
 * `mcpo-control` header alone, and every MCP server replica may write to model-calls, so any
 * replica could forge one. One forged progress record naming a source partition that never
 * reports, with time 0, held its home partition's event time at 0: no window there ever closed.
 * With a `controlKey`, the processor signs the control records it writes (an HMAC over their
 * type, fields, value and partition) and the partition driver — the one reader the live processor
 * and replays share — dead-letters a control record whose MAC is missing or wrong
 * (CONTROL_UNAUTHENTICATED) before the state sees it. The codec is in memory.
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { describe, expect, it } from "vitest";

import { AvroCodec, type SchemaLookup } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import {
  CONTROL_MAC_HEADER,
  copyHeaders,
  progressRecord,
  signControl,
  watermarkTick,
} from "../avro/control.js";
import type { MetricRollup, ModelCallEvent } from "../avro/generated.js";
import {
  cliMetaOf,
  ConfigError,
  parseProcessorConfig,
  parseReplayConfig,
  processorConfigSchema,
  replayConfigSchema,
} from "../config/index.js";
import type { ConsumedRecord } from "../kafka/index.js";
import { resolveControlKey } from "../processor/control-key.js";
import { PartitionDriver, type Fed } from "../processor/driver.js";
import { DEFAULT_WINDOW_SETTINGS, type WindowSettings } from "../processor/partition.js";
import { sampleEvent } from "./support/events.js";

const SECOND = 1_000_000;
const MINUTE = 60 * SECOND;
/** The first event's end, µs (a minute's start). */
const T0 = (1_764_000_000_000 - (1_764_000_000_000 % 60_000)) * 1000;

const SETTINGS: WindowSettings = {
  ...DEFAULT_WINDOW_SETTINGS,
  windowSizeMicros: MINUTE,
  graceMicros: 10 * SECOND,
  allowedLatenessMicros: 0,
};
const KEY = Buffer.from("0123456789abcdef0123456789abcdef-control", "utf8");
const OTHER_KEY = Buffer.from("fedcba9876543210fedcba9876543210-control", "utf8");

const lookup: SchemaLookup = {
  getSchema: (id: number) =>
    Promise.reject(Object.assign(new Error(`no schema ${id}`), { status: 404 })),
};
const codec = AvroCodec.forRegisteredSchema(MODEL_CALL_EVENT, 11, {
  subject: "control-auth-value",
  registry: lookup,
});

function call(endMicros: number, service = "svc"): ModelCallEvent {
  return sampleEvent({
    event_id: randomUUID(),
    service,
    start_time: endMicros - 2000,
    end_time: endMicros,
  });
}

/** What a log entry is before it has an offset: a record's value, headers and log time (ms). */
interface Entry {
  readonly value: Buffer | null;
  readonly headers: Record<string, string>;
  readonly timestampMs: number;
}

function eventEntry(event: ModelCallEvent): Entry {
  return {
    value: codec.encode(event),
    headers: {},
    timestampMs: Math.floor(event.end_time / 1000),
  };
}

function controlEntry(
  control: { headers: Record<string, string>; value: Buffer | null },
  timestampMs: number,
): Entry {
  return { value: control.value, headers: control.headers, timestampMs };
}

/** Ten minutes of calls of one service, one every 5 s. */
function tenMinutes(): Entry[] {
  const entries: Entry[] = [];
  for (let end = T0; end < T0 + 10 * MINUTE; end += 5 * SECOND) entries.push(eventEntry(call(end)));
  return entries;
}

interface Run {
  readonly rollups: MetricRollup[];
  readonly fed: Fed[];
  readonly late: number;
}

/** Feeds the entries, in order, to a driver of `partition` (of `homes` home partitions). */
async function run(
  entries: readonly Entry[],
  controlKey?: Buffer,
  partition = 0,
  homes = 1,
): Promise<Run> {
  const driver = new PartitionDriver(
    SETTINGS,
    { partition, homePartitions: homes, homeOf: () => partition },
    codec,
    { nextOffset: 0n },
    undefined,
    controlKey,
  );
  const rollups: MetricRollup[] = [];
  const fed: Fed[] = [];
  let late = 0;
  let offset = 0;
  for (const entry of entries) {
    const record: ConsumedRecord = {
      topic: "control-auth.model-calls",
      partition,
      offset: String(offset++),
      key: null,
      value: entry.value,
      headers: entry.headers,
      timestamp: entry.timestampMs,
    };
    const result = await driver.feed(record);
    fed.push(result);
    if (result.type === "applied")
      for (const output of result.outputs) {
        if (output.type === "rollup") rollups.push(output.rollup);
        if (output.type === "late") late++;
      }
  }
  return { rollups, fed, late };
}

function codes(fed: readonly Fed[]): string[] {
  return fed.flatMap((result) => (result.type === "invalid" ? [result.read.code] : []));
}

/** A replica's forged progress record: source partition 5 (never reports) at time 0. */
const forgedProgress = (): Entry =>
  controlEntry(
    progressRecord({ sourcePartition: 5, lastOffset: null, sourceTimeMicros: 0 }),
    T0 / 1000,
  );

describe("forged control records with a controlKey", () => {
  it("a forged progress record no longer stalls the partition: it is dead-lettered and every window closes as on the honest log", async () => {
    const events = tenMinutes();
    const honest = await run(events);
    expect(honest.rollups.length, "windows the honest log closes").toBeGreaterThanOrEqual(18);

    const forged = [events[0] as Entry, forgedProgress(), ...events.slice(1)];
    // The defect, still there without a key: the source that never reports holds event time at 0.
    expect((await run(forged)).rollups, "without a key").toEqual([]);

    const keyed = await run(forged, KEY);
    expect(codes(keyed.fed)).toEqual(["CONTROL_UNAUTHENTICATED"]);
    const dead = keyed.fed.find((result) => result.type === "invalid");
    expect(dead?.type === "invalid" && dead.read.message).toMatch(/without a mcpo-control-mac/);
    expect(keyed.rollups).toEqual(honest.rollups);
    // The honest log read with the key: the same (events carry no MAC and need none).
    expect((await run(events, KEY)).rollups).toEqual(honest.rollups);
  });

  it("a forged watermark tick is ignored: it would close windows early and make on-time events late", async () => {
    const events = tenMinutes();
    const honest = await run(events);
    // At 2 minutes in, a tick 4 minutes ahead (within maxClockSkewMs of its log time).
    const at = events.findIndex((entry) => entry.timestampMs >= T0 / 1000 + 120_000);
    const tickMs = T0 / 1000 + 120_000;
    const forged = [
      ...events.slice(0, at),
      controlEntry(watermarkTick((tickMs + 240_000) * 1000), tickMs),
      ...events.slice(at),
    ];
    const unkeyed = await run(forged);
    expect(unkeyed.late, "without a key: on-time events made late").toBeGreaterThan(0);

    const keyed = await run(forged, KEY);
    expect(codes(keyed.fed)).toEqual(["CONTROL_UNAUTHENTICATED"]);
    expect(keyed.late).toBe(0);
    expect(keyed.rollups).toEqual(honest.rollups);
  });

  it("a forged copy is ignored: it would inject an event and register a source that never reports", async () => {
    const events = tenMinutes();
    const honest = await run(events);
    const injected = call(T0 + 30 * SECOND);
    const copy = controlEntry(
      {
        headers: copyHeaders({
          sourcePartition: 0,
          sourceOffset: "0",
          previousOffset: null,
          sourceTimeMicros: T0 + 30 * SECOND,
        }),
        value: codec.encode(injected),
      },
      T0 / 1000 + 30_000,
    );
    const forged = [...events.slice(0, 3), copy, ...events.slice(3)];
    // Partition 1 of two homes: the copy names partition 0 as its source.
    const unkeyed = await run(forged, undefined, 1, 2);
    const calls = (r: Run) =>
      r.rollups.filter((rollup) => rollup.model === null).reduce((n, r) => n + r.counts.calls, 0);
    const honestOn1 = await run(events, undefined, 1, 2);
    // Without a key it is counted, and registers source 0, which never reports again: the
    // partition stalls (no window closes).
    expect(unkeyed.rollups, "without a key").toEqual([]);

    const keyed = await run(forged, KEY, 1, 2);
    expect(codes(keyed.fed)).toEqual(["CONTROL_UNAUTHENTICATED"]);
    expect(keyed.rollups).toEqual(honestOn1.rollups);
    expect(calls(honest)).toBe(calls(honestOn1));
  });
});

describe("genuine control records", () => {
  const genuineProgress = (partition: number, key = KEY): Entry => {
    const control = progressRecord({
      sourcePartition: 5,
      lastOffset: null,
      sourceTimeMicros: T0 + 20 * SECOND,
    });
    return controlEntry(
      { headers: signControl(key, partition, control.headers, control.value), value: null },
      T0 / 1000 + 20_000,
    );
  };

  it("verify on the partition they were written to, and are applied", async () => {
    const keyed = await run([eventEntry(call(T0)), genuineProgress(0)], KEY);
    expect(keyed.fed.map((result) => result.type)).toEqual(["applied", "applied"]);
    // A signed copy of an event, on its partition: applied and counted.
    const event = call(T0 + SECOND);
    const value = codec.encode(event);
    const headers = copyHeaders({
      sourcePartition: 3,
      sourceOffset: "9",
      previousOffset: null,
      sourceTimeMicros: T0 + SECOND,
    });
    const copy = controlEntry(
      { headers: signControl(KEY, 0, headers, value), value },
      T0 / 1000 + 1000,
    );
    expect((await run([copy], KEY)).fed.map((result) => result.type)).toEqual(["applied"]);
    // A signed tick, likewise.
    const tick = watermarkTick(T0 + 2 * SECOND);
    expect(
      (
        await run(
          [
            controlEntry(
              { headers: signControl(KEY, 0, tick.headers, null), value: null },
              T0 / 1000,
            ),
          ],
          KEY,
        )
      ).fed.map((result) => result.type),
    ).toEqual(["applied"]);
  });

  it("copied to another partition, altered, or signed with another key, they do not verify", async () => {
    // Written for partition 0, appended to partition 1.
    expect(codes((await run([genuineProgress(0)], KEY, 1, 2)).fed)).toEqual([
      "CONTROL_UNAUTHENTICATED",
    ]);
    const moved = (await run([genuineProgress(0)], KEY, 1, 2)).fed[0];
    expect(moved?.type === "invalid" && moved.read.message).toMatch(/does not verify/);
    // The same record on partition 1, signed for partition 1: applied.
    expect((await run([genuineProgress(1)], KEY, 1, 2)).fed.map((r) => r.type)).toEqual([
      "applied",
    ]);
    // Its time changed to 0 after signing.
    const altered = genuineProgress(0);
    const zeroed: Entry = {
      ...altered,
      headers: { ...altered.headers, "mcpo-progress-source-time": "0" },
    };
    expect(codes((await run([zeroed], KEY)).fed)).toEqual(["CONTROL_UNAUTHENTICATED"]);
    // A header a reader interprets added after signing (a last offset).
    const added: Entry = {
      ...altered,
      headers: { ...altered.headers, "mcpo-progress-last-offset": "7" },
    };
    expect(codes((await run([added], KEY)).fed)).toEqual(["CONTROL_UNAUTHENTICATED"]);
    // A copy whose event bytes were swapped.
    const value = codec.encode(call(T0));
    const headers = signControl(
      KEY,
      0,
      copyHeaders({
        sourcePartition: 3,
        sourceOffset: "1",
        previousOffset: null,
        sourceTimeMicros: T0,
      }),
      value,
    );
    const swapped = controlEntry({ headers, value: codec.encode(call(T0)) }, T0 / 1000);
    expect(codes((await run([swapped], KEY)).fed)).toEqual(["CONTROL_UNAUTHENTICATED"]);
    // Another key's MAC, and a MAC that is not hex.
    expect(codes((await run([genuineProgress(0, OTHER_KEY)], KEY)).fed)).toEqual([
      "CONTROL_UNAUTHENTICATED",
    ]);
    const garbled: Entry = {
      ...altered,
      headers: { ...altered.headers, [CONTROL_MAC_HEADER]: "zz" },
    };
    expect(codes((await run([garbled], KEY)).fed)).toEqual(["CONTROL_UNAUTHENTICATED"]);
  });

  it("without a key, signed and unsigned control records alike are applied (behaviour as before)", async () => {
    const result = await run([eventEntry(call(T0)), genuineProgress(0), forgedProgress()]);
    expect(result.fed.map((r) => r.type)).toEqual(["applied", "applied", "applied"]);
  });
});

describe("the controlKey setting", () => {
  const secret = "s3cr3t-control-key-value-0123456789-abcdef";

  it("is a secret of both the processor and replay: no flag, never shown", () => {
    for (const schema of [processorConfigSchema, replayConfigSchema])
      for (const name of ["controlKey", "controlKeyFile"] as const) {
        const meta = cliMetaOf(schema.shape[name]);
        expect(meta?.secret, name).toBe(true);
        expect(meta?.fileKey).toBe(`processor.${name}`);
      }
    expect(cliMetaOf(processorConfigSchema.shape.controlKey)?.env).toBe("MCPO_CONTROL_KEY");
    expect(cliMetaOf(processorConfigSchema.shape.controlKeyFile)?.env).toBe(
      "MCPO_CONTROL_KEY_FILE",
    );
    expect(parseReplayConfig({ controlKey: secret }).controlKey).toBe(secret);
    let error: unknown;
    try {
      parseProcessorConfig({ controlKey: 42 as unknown as string });
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect(String(error)).toMatch(/a secret, not shown/);
    expect(String(error)).not.toMatch(/42/);
  });

  it("is read from the option, its file or the environment; short keys and both at once are refused without the value", () => {
    expect(resolveControlKey({}, {})).toBeUndefined();
    expect(resolveControlKey({ controlKey: secret }, {})?.toString()).toBe(secret);
    expect(resolveControlKey({}, { MCPO_CONTROL_KEY: secret })?.toString()).toBe(secret);
    const dir = mkdtempSync(join(tmpdir(), "control-key-"));
    const file = join(dir, "key");
    writeFileSync(file, `${secret}\n`);
    expect(resolveControlKey({ controlKeyFile: file }, {})?.toString()).toBe(secret);
    expect(resolveControlKey({}, { MCPO_CONTROL_KEY_FILE: file })?.toString()).toBe(secret);

    const refused = (options: object, env: NodeJS.ProcessEnv = {}): string => {
      try {
        resolveControlKey(options, env);
      } catch (error) {
        expect(error).toBeInstanceOf(ConfigError);
        return String(error);
      }
      throw new Error("not refused");
    };
    const short = "short-key-value-31-bytes-long!!";
    expect(Buffer.byteLength(short)).toBe(31);
    const tooShort = refused({ controlKey: short });
    expect(tooShort).toMatch(/at least 32 bytes \(got 31 bytes/);
    expect(tooShort).not.toContain(short);
    const both = refused({ controlKey: secret }, { MCPO_CONTROL_KEY_FILE: file });
    expect(both).toMatch(/not both/);
    expect(both).not.toContain(secret);
    // A key put where the file's name belongs: the file is not found, and the value not echoed.
    const misplaced = refused({ controlKeyFile: secret });
    expect(misplaced).toMatch(/cannot read the file it names \(ENOENT\)/);
    expect(misplaced).not.toContain(secret);
  });
});
