/**
 * The one replay's end of the log: windows the log's event time has closed are rebuilt; windows
 * still open at the end stay open (reported, not emitted), exactly as the live processor leaves
 * them — a replay never emits a window as final that the live run has not closed.
 */
import type { Admin } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { MODEL_CALL_EVENT } from "../avro/contracts.js";
import type { MetricRollup } from "../avro/generated.js";
import { replayLog } from "../processor/replay.js";
import { sampleEvent } from "./support/events.js";
import { createTopics, services, testKafka, uniqueName } from "./support/isolation.js";

const MINUTE = 60_000_000;
const ORIGIN = 1_764_000_000_000_000 - (1_764_000_000_000_000 % MINUTE);

describe("replay at the end of the log", () => {
  let admin: Admin;
  const prefix = `${uniqueName("replay-end")}.`;

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    const topic = `${prefix}model-calls`;
    await createTopics(admin, [{ topic, numPartitions: 1 }]);
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    const at = (endMicros: number) =>
      sampleEvent({
        event_id: crypto.randomUUID(),
        service: "billing",
        model: "gpt-4o",
        start_time: endMicros - 1000,
        end_time: endMicros,
      });
    // Three calls in the first minute; the last call, two minutes later, closes it (and the
    // empty second minute) but its own minute stays open: nothing later in the log closes it.
    const events = [at(ORIGIN + 1_000_000), at(ORIGIN + 2_000_000), at(ORIGIN + 3_000_000)];
    events.push(at(ORIGIN + 2 * MINUTE + 30_000_000));
    const producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    await producer.send({
      topic,
      acks: -1,
      messages: events.map((event) => ({ key: event.service, value: codec.encode(event) })),
    });
    await producer.disconnect();
  });

  afterAll(async () => {
    await admin.disconnect();
  });

  it("rebuilds the windows the log closed and leaves the last one open, reported as open series", async () => {
    const rollups: MetricRollup[] = [];
    const summary = await replayLog({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      onOutputs: (outputs) => {
        rollups.push(...outputs.rollups);
        return Promise.resolve();
      },
    });
    expect(
      rollups.map((r) => [r.model, (r.window_start - ORIGIN) / MINUTE, r.counts.calls]),
    ).toEqual([
      [null, 0, 3],
      ["gpt-4o", 0, 3],
    ]);
    expect(summary).toMatchObject({ events: 4, windows: 1, rollups: 2, openSeries: 2 });
  });
});
