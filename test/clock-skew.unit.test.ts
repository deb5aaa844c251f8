/**
 * Issue 13 item 2, the decision itself: a record's time is judged against its log time (the
 * record's timestamp, the broker's append time on model-calls) by the partition driver, the
 * reader every consumer of the log shares. At each boundary, exactly: an event up to
 * `maxClockSkewMicros` ahead of its log time is applied and one microsecond more is not (it is
 * rejected with CLOCK_SKEW, and the state does not see it); with `maxEventAgeMicros` an event that
 * old is applied and one microsecond older is rejected with TOO_OLD; ticks and progress records
 * ahead of their log time are rejected too (the processor ignores and counts them); copies are
 * judged on their time only (the source judged the original's age). The codec is in memory (the
 * registry is not under test).
 */
import { randomUUID } from "node:crypto";

import { describe, expect, it } from "vitest";

import { AvroCodec, type SchemaLookup } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import { copyHeaders, progressRecord, watermarkTick } from "../avro/control.js";
import type { MetricRollup, ModelCallEvent } from "../avro/generated.js";
import {
  modelCallsTopicConfig,
  parseProcessorConfig,
  parseReplayConfig,
  processorConfigSchema,
  replayConfigSchema,
  cliMetaOf,
} from "../config/index.js";
import type { ConsumedRecord } from "../kafka/index.js";
import { DEFAULT_TIME_BOUNDS, judgeTime, PartitionDriver, type Fed } from "../processor/driver.js";
import { DEFAULT_WINDOW_SETTINGS, type WindowSettings } from "../processor/partition.js";
import { timestampTypeWarning, warnUnlessLogAppendTime } from "../processor/processor.js";
import { recordingLogger } from "./support/isolation.js";
import { sampleEvent } from "./support/events.js";

const SECOND = 1_000_000;
const MINUTE = 60 * SECOND;
/** The log time of most records here, ms (a minute's start). */
const LOG_MS = 1_764_000_000_000 - (1_764_000_000_000 % 60_000);
const LOG = LOG_MS * 1000;
const SKEW = 5 * MINUTE;
const HOUR = 60 * MINUTE;
/** 2100-01-01T00:00:00Z, µs. */
const YEAR_2100 = Date.UTC(2100, 0, 1) * 1000;

const SETTINGS: WindowSettings = {
  ...DEFAULT_WINDOW_SETTINGS,
  windowSizeMicros: MINUTE,
  graceMicros: 10 * SECOND,
  allowedLatenessMicros: 0,
};

const SCHEMA_ID = 7;
const lookup: SchemaLookup = {
  getSchema: (id: number) =>
    Promise.reject(Object.assign(new Error(`no schema ${id}`), { status: 404 })),
};
const codec = AvroCodec.forRegisteredSchema(MODEL_CALL_EVENT, SCHEMA_ID, {
  subject: "clock-skew-value",
  registry: lookup,
});

function call(service: string, endMicros: number): ModelCallEvent {
  return sampleEvent({
    event_id: randomUUID(),
    service,
    start_time: endMicros - 2000,
    end_time: endMicros,
  });
}

/** A record of partition 0 as the consumer gives it: its offset and log time (ms). */
function record(
  offset: number,
  timestampMs: number,
  value: Buffer | null,
  headers: Record<string, string> = {},
): ConsumedRecord {
  return {
    topic: "clock-skew.model-calls",
    partition: 0,
    offset: String(offset),
    key: null,
    value,
    headers,
    timestamp: timestampMs,
  };
}

/** A driver of partition 0 (the only home) with these bounds. */
function driver(bounds: { maxClockSkewMicros: number; maxEventAgeMicros: number }) {
  return new PartitionDriver(
    SETTINGS,
    { partition: 0, homePartitions: 1, homeOf: () => 0 },
    codec,
    { nextOffset: 0n },
    bounds,
  );
}

/** Feeds events (each its own record, all at `LOG_MS` unless told), in order. */
class Log {
  private offset = 0;
  constructor(readonly driver: PartitionDriver) {}

  async event(event: ModelCallEvent, timestampMs = LOG_MS): Promise<Fed> {
    return this.driver.feed(record(this.offset++, timestampMs, codec.encode(event)));
  }

  async control(
    control: { headers: Record<string, string>; value: Buffer | null },
    timestampMs = LOG_MS,
  ): Promise<Fed> {
    return this.driver.feed(record(this.offset++, timestampMs, control.value, control.headers));
  }
}

/** The type of a feed and, for a rejection, its code. */
function verdict(fed: Fed): string {
  return fed.type === "rejected" ? `rejected ${fed.code}` : fed.type;
}

const rollupsOf = (fed: Fed): MetricRollup[] =>
  fed.type === "applied"
    ? fed.outputs.flatMap((output) => (output.type === "rollup" ? [output.rollup] : []))
    : [];

describe("an event's time against its record's log time", () => {
  it("applies an event up to maxClockSkew ahead of its log time, and rejects one 1 µs more", async () => {
    const log = new Log(driver({ maxClockSkewMicros: SKEW, maxEventAgeMicros: 0 }));
    expect(verdict(await log.event(call("a", LOG + SKEW)))).toBe("applied");
    expect(log.driver.state.ownEventTimeMicros).toBe(LOG + SKEW);
    const ahead = await log.event(call("a", LOG + SKEW + 1));
    expect(verdict(ahead)).toBe("rejected CLOCK_SKEW");
    // Not applied: the partition's event time did not move, and the next record is the next.
    expect(log.driver.state.ownEventTimeMicros).toBe(LOG + SKEW);
    expect(log.driver.nextOffset).toBe(2n);
    if (ahead.type !== "rejected") throw new Error("expected a rejection");
    // The event's time, the log time and the bound, each as a number and a date.
    expect(ahead.message).toContain(String(LOG + SKEW + 1));
    expect(ahead.message).toContain(new Date(LOG_MS).toISOString());
    expect(ahead.message).toContain(String(LOG_MS));
    expect(ahead.message).toContain("maxClockSkewMs 300000");
  });

  it("judges each record by its own log time: the same event time passes on a later record", async () => {
    const log = new Log(driver({ maxClockSkewMicros: SKEW, maxEventAgeMicros: 0 }));
    const end = LOG + SKEW + SECOND;
    expect(verdict(await log.event(call("a", end)))).toBe("rejected CLOCK_SKEW");
    expect(verdict(await log.event(call("a", end), LOG_MS + 1000))).toBe("applied");
  });

  it("keeps one event dated 2100 from closing the partition's windows (the probe)", async () => {
    const log = new Log(driver({ maxClockSkewMicros: SKEW, maxEventAgeMicros: 0 }));
    const fed: Fed[] = [];
    for (let i = 0; i < 50; i++) fed.push(await log.event(call("good", LOG + i * 1000)));
    const bad = await log.event(call("clock-broken", YEAR_2100));
    for (let i = 0; i < 100; i++) fed.push(await log.event(call("good", LOG + 50_000 + i * 1000)));
    expect(verdict(bad)).toBe("rejected CLOCK_SKEW");
    const late = fed.flatMap((f) =>
      f.type === "applied" ? f.outputs.filter((o) => o.type === "late") : [],
    );
    expect(late, "late events").toEqual([]);
    expect(fed.flatMap(rollupsOf), "no window closed yet").toEqual([]);
    // A minute later (a tick at the log's time): the good service's first minute closes whole.
    const tick = await log.control(watermarkTick(LOG + MINUTE + 10 * SECOND), LOG_MS + 70_000);
    expect(verdict(tick)).toBe("applied");
    expect(rollupsOf(tick).map((r) => [r.service, r.model, r.counts.calls])).toEqual([
      ["good", null, 150],
      ["good", "gpt-4o", 150],
    ]);
  });

  it("leaves the age unchecked when maxEventAge is 0 (the default)", async () => {
    const log = new Log(driver({ maxClockSkewMicros: SKEW, maxEventAgeMicros: 0 }));
    expect(verdict(await log.event(call("a", LOG - 3650 * 24 * HOUR)))).toBe("applied");
  });

  it("applies an event exactly maxEventAge old, and rejects one 1 µs older", async () => {
    const log = new Log(driver({ maxClockSkewMicros: SKEW, maxEventAgeMicros: HOUR }));
    expect(verdict(await log.event(call("a", LOG - HOUR)))).toBe("applied");
    const old = await log.event(call("a", LOG - HOUR - 1));
    expect(verdict(old)).toBe("rejected TOO_OLD");
    if (old.type !== "rejected") throw new Error("expected a rejection");
    expect(old.message).toContain(String(LOG - HOUR - 1));
    expect(old.message).toContain("maxEventAgeMs 3600000");
    expect(old.message).toContain(new Date(LOG_MS).toISOString());
    // The rejected event is in no window: the partition's windows hold one call.
    expect(log.driver.state.openSeries).toBe(2);
    expect(log.driver.state.snapshot().windows.find((w) => w.model === null)?.counts.calls).toBe(1);
  });
});

describe("control records' times against their log time", () => {
  it("applies a tick up to maxClockSkew ahead of its log time, and rejects one 1 µs more without moving event time", async () => {
    const log = new Log(driver({ maxClockSkewMicros: SKEW, maxEventAgeMicros: 0 }));
    await log.event(call("a", LOG));
    const forged = await log.control(watermarkTick(LOG + SKEW + 1));
    expect(verdict(forged)).toBe("rejected CLOCK_SKEW");
    if (forged.type !== "rejected") throw new Error("expected a rejection");
    expect(forged.input.type).toBe("tick");
    expect(log.driver.state.ownEventTimeMicros).toBe(LOG);
    expect(log.driver.state.openSeries, "the open window stays open").toBe(2);
    expect(verdict(await log.control(watermarkTick(LOG + SKEW)))).toBe("applied");
    expect(log.driver.state.ownEventTimeMicros).toBe(LOG + SKEW);
  });

  it("rejects a forged tick dated 2100: the next calls are on time", async () => {
    const log = new Log(driver({ maxClockSkewMicros: SKEW, maxEventAgeMicros: 0 }));
    expect(verdict(await log.control(watermarkTick(YEAR_2100)))).toBe("rejected CLOCK_SKEW");
    const next = await log.event(call("a", LOG));
    expect(next.type === "applied" ? next.outputs : "not applied").toEqual([]);
  });

  it("rejects a progress record whose source time is ahead of its log time", async () => {
    const log = new Log(driver({ maxClockSkewMicros: SKEW, maxEventAgeMicros: 0 }));
    const progress = (time: number) =>
      progressRecord({ sourcePartition: 1, lastOffset: null, sourceTimeMicros: time });
    expect(verdict(await log.control(progress(LOG + SKEW + 1)))).toBe("rejected CLOCK_SKEW");
    expect(log.driver.state.snapshot().sources).toEqual([]);
    expect(verdict(await log.control(progress(LOG + SKEW)))).toBe("applied");
  });

  it("judges a copy on its event time and its source's, never on its age (the source judged that)", async () => {
    const log = new Log(driver({ maxClockSkewMicros: SKEW, maxEventAgeMicros: HOUR }));
    const copy = (event: ModelCallEvent, sourceOffset: string, sourceTimeMicros: number) => ({
      headers: copyHeaders({
        sourcePartition: 1,
        sourceOffset,
        previousOffset: null,
        sourceTimeMicros,
      }),
      value: codec.encode(event),
    });
    // Forwarded ten hours after the original was written (its source was down): still counted.
    expect(verdict(await log.control(copy(call("a", LOG - 10 * HOUR), "0", LOG - 10 * HOUR)))).toBe(
      "applied",
    );
    const future = new Log(driver({ maxClockSkewMicros: SKEW, maxEventAgeMicros: 0 }));
    expect(verdict(await future.control(copy(call("a", YEAR_2100), "0", YEAR_2100)))).toBe(
      "rejected CLOCK_SKEW",
    );
    expect(future.driver.state.ownEventTimeMicros).toBeNull();
    expect(verdict(await future.control(copy(call("a", LOG), "0", YEAR_2100)))).toBe(
      "rejected CLOCK_SKEW",
    );
  });

  it("does not judge a record without a timestamp (-1: the old message format)", async () => {
    const log = new Log(driver({ maxClockSkewMicros: SKEW, maxEventAgeMicros: HOUR }));
    expect(verdict(await log.event(call("a", LOG + HOUR), -1))).toBe("applied");
  });
});

describe("a replay decides the same", () => {
  it("feeding the same records again, or from a snapshot taken after the rejection, gives the same", async () => {
    const bounds = { maxClockSkewMicros: SKEW, maxEventAgeMicros: HOUR };
    const records: ConsumedRecord[] = [];
    let offset = 0;
    const push = (event: ModelCallEvent, ms = LOG_MS) =>
      records.push(record(offset++, ms, codec.encode(event)));
    for (let i = 0; i < 20; i++) push(call("a", LOG + i * SECOND));
    push(call("b", YEAR_2100));
    push(call("a", LOG - 2 * HOUR));
    for (let i = 0; i < 20; i++) push(call("a", LOG + MINUTE + i * SECOND), LOG_MS + 60_000);
    records.push(
      record(
        offset++,
        LOG_MS + 130_000,
        null,
        watermarkTick(LOG + 2 * MINUTE + 20 * SECOND).headers,
      ),
    );
    const run = async (from = 0, start?: PartitionDriver) => {
      const d = start ?? driver(bounds);
      const out: string[] = [];
      for (const r of records.slice(from)) {
        const fed = await d.feed(r);
        out.push(
          fed.type === "applied"
            ? JSON.stringify(
                fed.outputs.map((o) =>
                  o.type === "rollup" ? [o.rollup.service, o.rollup.counts.calls] : o.type,
                ),
              )
            : verdict(fed),
        );
      }
      return { out, driver: d };
    };
    const whole = await run();
    expect(whole.out.filter((v) => v.startsWith("rejected"))).toEqual([
      "rejected CLOCK_SKEW",
      "rejected TOO_OLD",
    ]);
    expect(whole.out.at(-1), "the tick closes the second minute").toBe(
      JSON.stringify([
        ["a", 20],
        ["a", 20],
      ]),
    );
    expect((await run()).out).toEqual(whole.out);
    // Restored from a snapshot taken after the two rejections, it goes on the same.
    const head = driver(bounds);
    for (const r of records.slice(0, 22)) await head.feed(r);
    const restored = new PartitionDriver(
      SETTINGS,
      { partition: 0, homePartitions: 1, homeOf: () => 0 },
      codec,
      { state: head.state.snapshot(), nextOffset: 22n },
      bounds,
    );
    expect((await run(22, restored)).out).toEqual(whole.out.slice(22));
  });
});

describe("the settings", () => {
  it("default to 5 minutes of skew and no age limit, for the processor and a replay alike", () => {
    const endpoints = { brokers: "127.0.0.1:9092", topicPrefix: "clock-skew." };
    expect(parseProcessorConfig(endpoints)).toMatchObject({
      maxClockSkewMs: 300_000,
      maxEventAgeMs: 0,
    });
    expect(parseReplayConfig(endpoints)).toMatchObject({
      maxClockSkewMs: 300_000,
      maxEventAgeMs: 0,
    });
    expect(replayConfigSchema.shape.maxClockSkewMs).toBe(
      processorConfigSchema.shape.maxClockSkewMs,
    );
    expect(replayConfigSchema.shape.maxEventAgeMs).toBe(processorConfigSchema.shape.maxEventAgeMs);
    expect(DEFAULT_TIME_BOUNDS).toEqual({ maxClockSkewMicros: 300_000_000, maxEventAgeMicros: 0 });
    expect(cliMetaOf(processorConfigSchema.shape.maxClockSkewMs)).toMatchObject({
      flag: "--max-clock-skew",
      env: "MCPO_MAX_CLOCK_SKEW_MS",
      fileKey: "processor.maxClockSkewMs",
    });
    expect(cliMetaOf(processorConfigSchema.shape.maxEventAgeMs)).toMatchObject({
      flag: "--max-event-age",
      env: "MCPO_MAX_EVENT_AGE_MS",
      fileKey: "processor.maxEventAgeMs",
    });
    expect(() => parseProcessorConfig({ ...endpoints, maxClockSkewMs: 0 })).toThrow(
      /maxClockSkewMs/,
    );
  });

  it("judge a call in direct mode against the wall clock it was handed over at", () => {
    const at = (end: number) => judgeTime({ type: "event", event: call("a", end) }, LOG_MS);
    expect(at(LOG + SKEW)).toBeUndefined();
    expect(at(LOG + SKEW + 1)?.code).toBe("CLOCK_SKEW");
  });
});

describe("model-calls' timestamps", () => {
  it("are the broker's: the topic is created with LogAppendTime and its retention", () => {
    expect(modelCallsTopicConfig(-1)).toEqual({
      "retention.ms": "-1",
      "message.timestamp.type": "LogAppendTime",
    });
    expect(modelCallsTopicConfig(3_600_000)["retention.ms"]).toBe("3600000");
  });

  it("a topic created without LogAppendTime gets one warning: the topic, what it means, the command", async () => {
    expect(timestampTypeWarning("mcpo.model-calls", "LogAppendTime", ["b:9092"])).toBeUndefined();
    const logger = recordingLogger();
    const admin = {
      topicConfig: (topic: string, names: readonly string[]) =>
        Promise.resolve(
          new Map(names.map((name) => [name, topic === "mcpo.model-calls" ? "CreateTime" : "?"])),
        ),
    };
    await warnUnlessLogAppendTime(admin, "mcpo.model-calls", ["b1:9092", "b2:9092"], logger);
    expect(logger.lines).toHaveLength(1);
    const [line] = logger.lines;
    expect(line?.level).toBe("warn");
    expect(line?.msg).toContain("mcpo.model-calls");
    expect(line?.msg).toContain("trusts each producer's clock");
    expect(line?.msg).toContain(
      "kafka-configs --bootstrap-server b1:9092,b2:9092 --alter --entity-type topics --entity-name mcpo.model-calls --add-config message.timestamp.type=LogAppendTime",
    );
    expect(line?.fields).toEqual({
      topic: "mcpo.model-calls",
      "message.timestamp.type": "CreateTime",
    });
    // LogAppendTime: nothing said.
    const quiet = recordingLogger();
    await warnUnlessLogAppendTime(
      {
        topicConfig: () => Promise.resolve(new Map([["message.timestamp.type", "LogAppendTime"]])),
      },
      "mcpo.model-calls",
      ["b:9092"],
      quiet,
    );
    expect(quiet.lines).toEqual([]);
    // Settings that cannot be read: says it could not check.
    const unread = recordingLogger();
    await warnUnlessLogAppendTime(
      { topicConfig: () => Promise.reject(new Error("not authorized")) },
      "mcpo.model-calls",
      ["b:9092"],
      unread,
    );
    expect(unread.lines.map((l) => l.msg)).toEqual([
      "could not read the settings of mcpo.model-calls; its timestamp type is not checked",
    ]);
  });
});
