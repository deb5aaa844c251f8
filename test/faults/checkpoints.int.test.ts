/**
 * Faults to the processor's checkpoints, for real: the checkpoint topic deleted while the group's
 * offsets stay (before, the processor started at the group's offset with empty windows and
 * emitted the open window with part of its events as final), and a window-size change made
 * explicit with `--reset-state` (the group's checkpoints discarded, every window rebuilt from the
 * log with the new size, and a restart afterwards continues from the new checkpoints), and
 * model-calls deleted and created again under the same name (its checkpoints' offsets belong to a
 * log that is gone: refused, naming both topic ids; `--reset-state` builds from the new one).
 */
import type { Admin, Producer } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from "vitest";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { MODEL_CALL_EVENT } from "../../avro/contracts.js";
import type { MetricRollup } from "../../avro/generated.js";
import { fetchTopicIds, TopicReplacedError } from "../../kafka/index.js";
import { rollupKey } from "../../metrics/index.js";
import type { OpsLogger } from "../../ops/index.js";
import { StreamProcessor } from "../../processor/processor.js";
import { sampleEvent } from "../support/events.js";
import {
  createTopics,
  recordingLogger,
  services,
  testKafka,
  uniqueName,
} from "../support/isolation.js";
import { readAllRollups } from "../support/topic-records.js";
import { waitFor } from "../support/wait.js";

const SECOND = 1_000_000;
/** A minute boundary (1 764 000 000 s is one). */
const ORIGIN = 1_764_000_000 * SECOND;

interface Setup {
  readonly prefix: string;
  readonly group: string;
  produce(fromSecond: number, toSecond: number): Promise<void>;
  /** Every rollup written so far, the newest version of each key (what compaction keeps). */
  rollups(): Promise<Map<string, MetricRollup>>;
  /** A processor with 60 s windows, run until it read `events` events, then stopped. */
  runThrough(events: number): Promise<void>;
  processor(options: {
    windowSizeMs: number;
    logger: OpsLogger;
    resetState?: boolean;
    idleTimeoutMs?: number;
  }): StreamProcessor;
}

describe("faults to the processor's checkpoints", () => {
  let admin: Admin;
  let producer: Producer;
  const running: StreamProcessor[] = [];

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
  });

  afterAll(async () => {
    await Promise.allSettled(running.map((instance) => instance.stop()));
    await producer.disconnect();
    await admin.disconnect();
  });

  async function setup(name: string): Promise<Setup> {
    const prefix = `${uniqueName(name)}.`;
    const group = `${prefix}processor`;
    const topic = `${prefix}model-calls`;
    await createTopics(admin, [{ topic, numPartitions: 1 }]);
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    const processor: Setup["processor"] = ({ windowSizeMs, logger, resetState, idleTimeoutMs }) => {
      const instance = new StreamProcessor({
        brokers: services().kafkaBrokers,
        schemaRegistryUrl: services().schemaRegistryUrl,
        topicPrefix: prefix,
        groupId: group,
        partitions: 1,
        windowSizeMs,
        graceMs: 10_000,
        // No idle ticks while the test watches: windows close by event time only.
        idleTimeoutMs: idleTimeoutMs ?? 600_000,
        checkpointIntervalMs: 100,
        metricsPort: 0,
        ...(resetState === undefined ? {} : { resetState }),
        logger,
      });
      running.push(instance);
      return instance;
    };
    return {
      prefix,
      group,
      async produce(fromSecond, toSecond) {
        await producer.send({
          topic,
          acks: -1,
          messages: Array.from({ length: toSecond - fromSecond }, (_, i) => {
            const at = ORIGIN + (fromSecond + i) * SECOND;
            const event = sampleEvent({
              event_id: crypto.randomUUID(),
              service: "billing",
              start_time: at - 500,
              end_time: at,
            });
            return { key: event.service, value: codec.encode(event) };
          }),
        });
      },
      async rollups() {
        const newest = new Map<string, MetricRollup>();
        for (const rollup of await readAllRollups(
          admin,
          services().kafkaBrokers,
          services().schemaRegistryUrl,
          prefix,
        ))
          newest.set(rollupKey(rollup), rollup);
        return newest;
      },
      processor,
      async runThrough(events) {
        const first = processor({ windowSizeMs: 60_000, logger: recordingLogger() });
        await first.start();
        await waitFor(
          `the first processor to read ${events} events`,
          () => first.stats().events,
          (n) => n === events,
        );
        await first.stop();
      },
    };
  }

  /** The service-level rollups (model null): `<start>+<size>` in seconds from ORIGIN → calls. */
  function counts(rollups: Map<string, MetricRollup>): Record<string, number> {
    const byWindow: Record<string, number> = {};
    for (const rollup of rollups.values())
      if (rollup.model === null) {
        const start = (rollup.window_start - ORIGIN) / SECOND;
        const size = (rollup.window_end - rollup.window_start) / SECOND;
        byWindow[`${start}+${size}`] = rollup.counts.calls;
      }
    return byWindow;
  }

  it("the checkpoint topic deleted under a group with offsets: the open window is rebuilt from the log, never emitted with part of its events", async () => {
    const s = await setup("faults-no-checkpoint");
    // 150 events, one a second: minutes 0 and 1 close (the watermark reaches 139 s), minute 2
    // stays open holding 30 events.
    await s.produce(0, 150);
    await s.runThrough(150);
    expect(counts(await s.rollups())).toEqual({ "0+60": 60, "60+60": 60 });

    // The checkpoints are lost; the group's committed offset (150) stays.
    await admin.deleteTopics({ topics: [`${s.prefix}processor-checkpoints`] });
    await waitFor(
      "the checkpoint topic to be gone",
      async () => (await admin.listTopics()).includes(`${s.prefix}processor-checkpoints`),
      (exists) => !exists,
    );
    const committed = await admin.fetchOffsets({
      groupId: s.group,
      topics: [`${s.prefix}model-calls`],
    });
    expect(committed[0]?.partitions[0]?.offset).toBe("150");

    // 50 more: minute 2 gets 30 more (60 in all) and closes (the watermark reaches 189 s).
    await s.produce(150, 200);
    const log = recordingLogger();
    const second = s.processor({ windowSizeMs: 60_000, logger: log });
    await second.start();
    await waitFor(
      "minute 2's rollup",
      async () => counts(await s.rollups())["120+60"],
      (count) => count !== undefined,
    );
    // Before: 30, the events after the group's offset only, emitted as the whole minute.
    expect(counts(await s.rollups())).toEqual({ "0+60": 60, "60+60": 60, "120+60": 60 });
    expect(second.stats().events).toBe(200);
    expect(
      log.lines.filter((line) => line.msg.includes("has no checkpoint")).map((l) => l.level),
    ).toEqual(["warn"]);
  });

  it("--reset-state: another window size rebuilds every window from the log with it, and a restart continues from the new checkpoints", async () => {
    const s = await setup("faults-reset-state");
    await s.produce(0, 150);
    await s.runThrough(150);

    const log = recordingLogger();
    onTestFailed(() => {
      console.log(
        log.lines
          .map((line) => `${line.level} ${line.msg} ${JSON.stringify(line.fields)}`)
          .join("\n"),
      );
    });
    const reset = s.processor({ windowSizeMs: 30_000, resetState: true, logger: log });
    await reset.start();
    // 30 s windows from the start of the log: 0, 30, 60, 90 close (watermark 139 s), 120 open.
    await waitFor(
      "the 30 s windows up to 90 s",
      async () => counts(await s.rollups())["90+30"],
      (count) => count !== undefined,
    );
    expect(reset.state).toBe("running");
    expect(log.lines.filter((line) => line.msg.startsWith("resetting state"))).toHaveLength(1);
    await waitFor(
      "the reset processor to read 150 events",
      () => reset.stats().events,
      (n) => n === 150,
    );
    await reset.stop();

    // A restart without the flag: no mismatch (the 60 s checkpoints are gone), it goes on from the
    // 30 s checkpoint and closes 120 and 150 with their own events only, counted once.
    await s.produce(150, 200);
    const again = s.processor({ windowSizeMs: 30_000, logger: recordingLogger() });
    await again.start();
    await waitFor(
      "the window at 150 s",
      async () => counts(await s.rollups())["150+30"],
      (count) => count !== undefined,
    );
    expect(again.state).toBe("running");
    expect(again.stats().events).toBe(50);
    expect(counts(await s.rollups())).toEqual({
      "0+60": 60,
      "60+60": 60,
      "0+30": 30,
      "30+30": 30,
      "60+30": 30,
      "90+30": 30,
      "120+30": 30,
      "150+30": 30,
    });
  });

  it("model-calls deleted and created again: the group's checkpoints are refused, naming both topic ids; --reset-state builds from the new topic", async () => {
    const s = await setup("faults-topic-replaced");
    const topic = `${s.prefix}model-calls`;
    const kafka = { brokers: services().kafkaBrokers.split(","), clientId: "mcpo-test" };
    await s.produce(0, 150);
    await s.runThrough(150);
    const oldId = (await fetchTopicIds(kafka, [topic])).get(topic);

    await admin.deleteTopics({ topics: [topic] });
    await waitFor(
      "model-calls to be gone",
      async () => (await admin.listTopics()).includes(topic),
      (exists) => !exists,
    );
    await createTopics(admin, [{ topic, numPartitions: 1 }]);
    await s.produce(200, 240);
    const newId = (await fetchTopicIds(kafka, [topic])).get(topic);
    expect(newId).toBeDefined();
    expect(newId).not.toBe(oldId);

    const refused = s.processor({ windowSizeMs: 60_000, logger: recordingLogger() });
    const error = await refused.start().then(
      () => undefined,
      (reason: unknown) => reason,
    );
    // Before: it started on the old checkpoint (next offset 150) and skipped the new topic's
    // first 150 records as already read.
    expect(error).toBeInstanceOf(TopicReplacedError);
    expect((error as Error).message).toContain(s.group);
    expect((error as Error).message).toContain(`stored topic id ${oldId}, now ${newId}`);
    expect((error as Error).message).toContain("--reset-state");
    expect(refused.state).not.toBe("running");

    const reset = s.processor({
      windowSizeMs: 60_000,
      resetState: true,
      logger: recordingLogger(),
    });
    await reset.start();
    await waitFor(
      "the reset processor to read the new topic's 40 events",
      () => reset.stats().events,
      (n) => n === 40,
    );
    await reset.stop();
  });
});
