import { describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT } from "../avro/contracts.js";
import type { AlertEvent } from "../avro/generated.js";
import { AlertTracker, rollupEvents, type AlertRule } from "../metrics/index.js";
import { subscribeAlerts } from "../processor/subscribe.js";
import { sampleEvent } from "./support/events.js";
import { createTopics, services, testKafka, uniqueName } from "./support/isolation.js";

describe("subscribeAlerts", () => {
  it("hands each transition to the handler once, in order, dropping replayed repeats", async () => {
    const prefix = `${uniqueName("alerts")}.`;
    const topic = `${prefix}alerts`;
    const admin = testKafka().admin();
    await admin.connect();
    await createTopics(admin, [{ topic, numPartitions: 2 }]);
    await admin.disconnect();
    const codec = await AvroCodec.register(ALERT_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });

    // A golden-scenario failure fires, then resolves (transitions from the real tracker).
    const rule: AlertRule = {
      key: "golden",
      metric: "golden_financial_failure_rate",
      comparator: "gt",
      threshold: 0,
      minSamples: 1,
    };
    const tracker = new AlertTracker([rule]);
    const minute = 60_000_000;
    const base = 1_764_000_000_000_000 - (1_764_000_000_000_000 % minute);
    const transitions = [false, true].flatMap((passed, i) =>
      rollupEvents(
        [
          sampleEvent({
            service: "payments",
            golden_scenario_passed: passed,
            start_time: base + i * minute,
            end_time: base + i * minute + 1,
          }),
        ],
        minute,
      )
        .filter((rollup) => rollup.model === null)
        .flatMap((rollup) => tracker.observe(rollup)),
    );
    expect(transitions.map((alert) => alert.state)).toEqual(["firing", "resolved"]);
    const producer = testKafka().producer();
    await producer.connect();
    // The processor restarted once: the firing transition was written twice.
    const [firing, resolved] = transitions as [AlertEvent, AlertEvent];
    await producer.send({
      topic,
      messages: [firing, firing, resolved].map((alert) => ({
        key: alert.service,
        value: codec.encode(alert),
      })),
    });
    await producer.disconnect();

    const received: AlertEvent[] = [];
    const errors: Error[] = [];
    const subscription = await subscribeAlerts(
      {
        groupId: uniqueName("breaker"),
        fromBeginning: true,
        brokers: services().kafkaBrokers,
        schemaRegistryUrl: services().schemaRegistryUrl,
        topicPrefix: prefix,
        onError: (error) => errors.push(error),
      },
      (alert) => {
        received.push(alert);
      },
    );
    const deadline = Date.now() + 30_000;
    while (received.length < 2 && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 100));
    await new Promise((resolve) => setTimeout(resolve, 1000));
    await subscription.stop();
    expect(received).toEqual([firing, resolved]);
    expect(errors).toEqual([]);
  });
});
