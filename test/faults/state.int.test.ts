/**
 * Faults to a processor's state and life, for real: a processor started with another window size
 * than the one its group's checkpoints were built with. It must not stay up consuming nothing (as
 * a crashed consumer left it before): it stops, says why in one line naming the group and both
 * settings, and the CLI exits non-zero. `/healthz` and `/readyz` say whether a processor lives
 * and works.
 */
import type { Admin, Producer } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { MODEL_CALL_EVENT } from "../../avro/contracts.js";
import type { OpsLogger } from "../../ops/index.js";
import { StateMismatchError } from "../../processor/checkpoints.js";
import { StreamProcessor } from "../../processor/processor.js";
import { runTs } from "../support/cli.js";
import { sampleEvent } from "../support/events.js";
import {
  createTopics,
  recordingLogger,
  services,
  testKafka,
  uniqueName,
} from "../support/isolation.js";
import { waitFor } from "../support/wait.js";

const ORIGIN = 1_764_000_000_000_000;

describe("faults to a processor's state and life", () => {
  let admin: Admin;
  let producer: Producer;
  const running: StreamProcessor[] = [];
  const prefix = `${uniqueName("faults-state")}.`;
  const group = `${prefix}processor`;

  const processor = (windowSizeMs: number, logger: OpsLogger) => {
    const instance = new StreamProcessor({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      groupId: group,
      partitions: 1,
      windowSizeMs,
      checkpointIntervalMs: 100,
      metricsPort: 0,
      logger,
    });
    running.push(instance);
    return instance;
  };

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    const topic = `${prefix}model-calls`;
    await createTopics(admin, [{ topic, numPartitions: 1 }]);
    const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    producer = testKafka().producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    await producer.send({
      topic,
      acks: -1,
      messages: Array.from({ length: 100 }, (_, i) => {
        const event = sampleEvent({
          event_id: crypto.randomUUID(),
          service: "billing",
          start_time: ORIGIN + i * 1_000_000 - 500,
          end_time: ORIGIN + i * 1_000_000,
        });
        return { key: event.service, value: codec.encode(event) };
      }),
    });
  });

  afterAll(async () => {
    await Promise.allSettled(running.map((instance) => instance.stop()));
    await producer.disconnect();
    await admin.disconnect();
  });

  it("a processor alive and in its group answers /healthz and /readyz with 200; stopped, it no longer serves", async () => {
    const first = processor(60_000, recordingLogger());
    await first.start();
    const url = (first.metricsUrl ?? "").replace(/\/metrics$/, "");
    await waitFor(
      "the processor to read the 100 events",
      () => first.stats().events,
      (n) => n === 100,
    );
    const ready = await fetch(`${url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ ok: true, state: "running", partitions: 1 });
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    expect(first.health()).toMatchObject({ alive: true, ready: true });
    await first.stop();
    expect(first.health()).toMatchObject({ alive: false, ready: false });
    await expect(fetch(`${url}/healthz`)).rejects.toThrow();
  });

  it("another window size against the group's checkpoints: it stops with one error naming the group and both settings, instead of staying up consuming nothing", async () => {
    const log = recordingLogger();
    const second = processor(30_000, log);
    await second.start().catch(() => undefined);
    const failure = await Promise.race([
      second.failed,
      new Promise<undefined>((resolve) =>
        setTimeout(() => {
          resolve(undefined);
        }, 30_000),
      ),
    ]);
    expect(failure, "the processor failed within 30 s").toBeInstanceOf(StateMismatchError);
    expect(failure?.message).toContain(group);
    expect(failure?.message).toContain("window 60000 ms");
    expect(failure?.message).toContain("window 30000 ms");
    expect(second.state).toBe("failed");
    expect(second.health().alive).toBe(false);
    const errors = log.lines.filter((line) => line.level === "error");
    expect(errors.map((line) => line.msg)).toEqual(["processor failed; stopping"]);
  });

  it("the CLI's processor with another window size exits non-zero and says why", async () => {
    const result = await runTs(
      "cli/main.ts",
      ["processor", "--window", "30s", "--metrics-port", "0", "--partitions", "1"],
      {
        env: {
          ...process.env,
          KAFKA_BROKERS: services().kafkaBrokers,
          SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
          MCPO_TOPIC_PREFIX: prefix,
          MCPO_PROCESSOR_GROUP: group,
        },
        timeoutMs: 90_000,
      },
    );
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toContain(`group ${group}'s checkpoints were built with window 60000 ms`);
  });
});
