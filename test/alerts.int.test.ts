import { describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT } from "../avro/contracts.js";
import type { AlertEvent } from "../avro/generated.js";
import { AlertTracker, rollupEvents, type AlertRule } from "../metrics/index.js";
import { subscribeAlerts } from "../processor/subscribe.js";
import { sampleEvent } from "./support/events.js";
import { createTopics, services, testKafka, uniqueName } from "./support/isolation.js";
import { waitFor } from "./support/wait.js";

describe("subscribeAlerts", () => {
  it("hands each transition to the handler once, in order, dropping a replayed repeat read before a later transition", async () => {
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

    // A golden-scenario failure fires, resolves, and fires again in a third window: a new
    // incident with its own id (transitions from the real tracker).
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
    const transitions = [false, true, false].flatMap((passed, i) =>
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
    expect(transitions.map((alert) => alert.state)).toEqual(["firing", "resolved", "firing"]);
    const [firing, resolved, refiring] = transitions as [AlertEvent, AlertEvent, AlertEvent];
    expect(refiring.alert_id).not.toBe(firing.alert_id);
    const producer = testKafka().producer();
    await producer.connect();
    // The processor restarted once: the first firing transition was written twice. All four
    // share the key, so one partition, read in this order.
    await producer.send({
      topic,
      messages: [firing, firing, resolved, refiring].map((alert) => ({
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
    try {
      // The last record of the partition reached the handler: every record before it, the
      // repeat included, has been read, so what the handler got is final.
      await waitFor(
        "the third transition (the last record on the partition) to reach the handler",
        () => received.map((alert) => `${alert.state} ${alert.alert_id.slice(0, 8)}`),
        () =>
          received.some(
            (alert) => alert.alert_id === refiring.alert_id && alert.state === refiring.state,
          ),
        { timeoutMs: 60_000 },
      );
    } finally {
      await subscription.stop();
    }
    expect(received).toEqual([firing, resolved, refiring]);
    expect(errors).toEqual([]);
  }, 90_000);
});
