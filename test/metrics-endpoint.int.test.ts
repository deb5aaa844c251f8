/**
 * A running processor's metrics and health endpoint listens on its `metricsHost` (real Kafka and
 * registry): on loopback by default, on every interface when told, answered over a non-loopback
 * address of the machine when it has one.
 */
import { networkInterfaces } from "node:os";

import { afterAll, describe, expect, it } from "vitest";

import { valueSubject } from "../avro/codec.js";
import { StreamProcessor } from "../processor/processor.js";
import { quietLogger, services, testKafka, uniqueName } from "./support/isolation.js";

/** A non-loopback IPv4 address of this machine, if it has one. */
function machineAddress(): string | undefined {
  for (const entries of Object.values(networkInterfaces()))
    for (const entry of entries ?? [])
      if (!entry.internal && entry.family === "IPv4") return entry.address;
  return undefined;
}

/** The error code a fetch failed with (ECONNREFUSED …), or "answered <status>". */
async function outcome(target: string): Promise<string> {
  try {
    const response = await fetch(target, { signal: AbortSignal.timeout(5000) });
    await response.text();
    return `answered ${response.status}`;
  } catch (error) {
    return (error as { cause?: { code?: string } }).cause?.code ?? (error as Error).name;
  }
}

describe("the processor's metrics endpoint", () => {
  const prefix = `${uniqueName("metrics-host")}.`;
  const runs: StreamProcessor[] = [];

  const processor = (group: string, metricsHost?: string) => {
    const run = new StreamProcessor({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      groupId: `${prefix}${group}`,
      partitions: 1,
      metricsPort: 0,
      ...(metricsHost === undefined ? {} : { metricsHost }),
      logger: quietLogger,
    });
    runs.push(run);
    return run;
  };

  afterAll(async () => {
    await Promise.allSettled(runs.map((run) => run.stop()));
    const admin = testKafka().admin();
    await admin.connect();
    const ours = (await admin.listTopics()).filter((topic) => topic.startsWith(prefix));
    if (ours.length > 0) await admin.deleteTopics({ topics: ours }).catch(() => undefined);
    await admin.deleteGroups([`${prefix}loopback`, `${prefix}wildcard`]).catch(() => undefined);
    await admin.disconnect();
    // The subjects are this file's own: removed (soft, then for good).
    for (const topic of ["model-calls", "metric-rollups", "alerts"]) {
      const url = `${services().schemaRegistryUrl}/subjects/${encodeURIComponent(valueSubject(`${prefix}${topic}`))}`;
      await fetch(url, { method: "DELETE" }).catch(() => undefined);
      await fetch(`${url}?permanent=true`, { method: "DELETE" }).catch(() => undefined);
    }
  });

  it("listens on 127.0.0.1 by default and on 0.0.0.0 when metricsHost says so", async () => {
    const loopback = processor("loopback");
    await loopback.start();
    const wildcard = processor("wildcard", "0.0.0.0");
    await wildcard.start();

    expect(loopback.metricsAddress).toBe("127.0.0.1");
    expect(wildcard.metricsAddress).toBe("0.0.0.0");
    for (const run of [loopback, wildcard]) {
      const text = await (await fetch(run.metricsUrl ?? "")).text();
      expect(text).toContain("mcpo_processor_");
    }

    const other = machineAddress();
    if (other !== undefined) {
      const port = (run: StreamProcessor) => new URL(run.metricsUrl ?? "").port;
      expect(await outcome(`http://${other}:${port(loopback)}/metrics`)).toBe("ECONNREFUSED");
      expect(await outcome(`http://${other}:${port(wildcard)}/healthz`)).toBe("answered 200");
      const text = await (await fetch(`http://${other}:${port(wildcard)}/metrics`)).text();
      expect(text).toContain("mcpo_processor_");
    }
  });
});
