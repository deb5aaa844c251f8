/**
 * KafkaExporter's buffer, without a broker: it points at a loopback port where nothing listens,
 * so every delivery attempt really fails and events stay buffered.
 */
import { spawn } from "node:child_process";

import { describe, expect, it } from "vitest";

import { ConfigError } from "../config/index.js";
import { KafkaExporter } from "../producer/exporters/kafka.js";
import type { Logger } from "../producer/logger.js";
import { REPO_ROOT } from "./support/cli.js";
import { sampleEvent } from "./support/events.js";
import { waitFor } from "./support/wait.js";

/**
 * Port 1: nothing listens there, and no unprivileged process (a test's broker or registry JVM)
 * can bind it later, as it could a port found free and released.
 */
const deadBroker = "127.0.0.1:1";

function logger(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  return {
    warnings,
    warn: (message) => warnings.push(message),
    error: (message) => warnings.push(message),
  };
}

function exporter(
  options: ConstructorParameters<typeof KafkaExporter>[0] = {},
  log = logger(),
): KafkaExporter {
  return new KafkaExporter({
    brokers: deadBroker,
    schemaRegistryUrl: "http://127.0.0.1:1/apis/ccompat/v7",
    maxQueueSize: 5,
    lingerMs: 5,
    retryInitialMs: 50,
    retryMaxMs: 200,
    logger: log,
    ...options,
  });
}

describe("KafkaExporter buffer", () => {
  it("keeps events while the broker is unreachable, retrying, and drops the newest when full (one warning)", async () => {
    const log = logger();
    const kafka = exporter({ overflow: "drop-newest" }, log);
    for (let i = 0; i < 8; i++) expect(kafka.export(sampleEvent())).toBeUndefined();
    expect(kafka.stats()).toMatchObject({ buffered: 5, dropped: 3, sent: 0 });
    expect(log.warnings.filter((line) => line === "dropping events")).toHaveLength(1);
    const retrying = "delivery failed; events stay buffered and are retried";
    const after = await waitFor(
      "a failed delivery, retried, with its warning",
      () => ({ ...kafka.stats(), warned: log.warnings.includes(retrying) }),
      (stats) => stats.retried > 0 && stats.warned,
      { timeoutMs: 20_000, intervalMs: 20 },
    );
    // Nothing was lost or sent meanwhile: the buffer still holds the five events.
    expect(after).toMatchObject({ buffered: 5, dropped: 3, sent: 0 });
    expect(log.warnings.filter((line) => line === "dropping events")).toHaveLength(1);
    await kafka.shutdown(100);
  }, 30_000);

  it("drops the oldest with drop-oldest", () => {
    const kafka = exporter({ overflow: "drop-oldest", lingerMs: 60_000 });
    for (let i = 0; i < 7; i++) void kafka.export(sampleEvent());
    expect(kafka.stats()).toMatchObject({ buffered: 5, dropped: 2 });
    void kafka.shutdown(10);
  });

  it("blocks a full buffer's export until the timeout, then drops", async () => {
    const kafka = exporter({ overflow: "block", maxQueueSize: 2, blockTimeoutMs: 150 });
    void kafka.export(sampleEvent());
    void kafka.export(sampleEvent());
    const started = Date.now();
    const waiting = kafka.export(sampleEvent());
    expect(waiting).toBeInstanceOf(Promise);
    await waiting;
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    expect(kafka.stats()).toMatchObject({ buffered: 2, dropped: 1 });
    await kafka.shutdown(10);
  });

  it("gives up a flush at its timeout, says what is left, and shuts down once", async () => {
    const kafka = exporter();
    void kafka.export(sampleEvent());
    void kafka.export(sampleEvent());
    expect(await kafka.flush(100)).toEqual({ complete: false, remaining: 2 });
    const first = kafka.shutdown(50);
    expect(kafka.shutdown(50)).toBe(first);
    expect(await first).toEqual({ complete: false, remaining: 2 });
    // Undelivered at shutdown, and refused after it: both count as dropped.
    void kafka.export(sampleEvent());
    expect(kafka.stats()).toMatchObject({ buffered: 0, dropped: 3 });
  });

  it("rejects bad options naming them", () => {
    expect(() => exporter({ maxQueueSize: 0 })).toThrow(ConfigError);
    expect(() => exporter({ maxQueueSize: 0 })).toThrow(/maxQueueSize/);
    expect(() => exporter({ compression: "lz77" as never })).toThrow(/compression/);
    expect(() => exporter({ overflow: "explode" as never })).toThrow(/overflow/);
    expect(() => new KafkaExporter({ brokers: "not a broker" })).toThrow(/kafkaBrokers/);
  });

  it("does not keep the process alive with its timers: the process exits by itself long before its 30 s linger", async () => {
    // A process that buffers an event for an unreachable broker and never calls shutdown must
    // still exit by itself once it has nothing else to do. Timed from the moment the event is
    // buffered (start-up through tsx takes seconds on a loaded machine): a timer that held the
    // process would keep it for the 30 s linger, then for the retries.
    const script = `
        import { KafkaExporter } from "./producer/exporters/kafka.ts";
        import { silentLogger } from "./producer/logger.ts";
        import { sampleEvent } from "./test/support/events.ts";
        const kafka = new KafkaExporter({ brokers: "${deadBroker}", logger: silentLogger, lingerMs: 30_000, retryInitialMs: 30_000 });
        void kafka.export(sampleEvent());
        process.stdout.write("buffered " + kafka.stats().buffered + "\\n");
      `;
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "--input-type=module", "-e", script],
      {
        cwd: REPO_ROOT,
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let stdout = "";
    let stderr = "";
    let bufferedAt: number | undefined;
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
      if (bufferedAt === undefined && stdout.includes("buffered 1")) bufferedAt = Date.now();
    });
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    // Killed after 90 s at the latest, so a process held by its timers fails the test rather
    // than hanging it.
    const killer = setTimeout(() => child.kill("SIGKILL"), 90_000);
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    clearTimeout(killer);
    const exitedAt = Date.now();
    expect({ code, stdout, stderr }).toMatchObject({ code: 0, stdout: "buffered 1\n" });
    expect(exitedAt - (bufferedAt ?? Number.NaN)).toBeLessThan(20_000);
  }, 120_000);
});
