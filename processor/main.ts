/**
 * Runs the stream processor until SIGINT or SIGTERM: `npm run processor`. Settings from the
 * environment (the CLI of a later issue adds flags and a config file):
 *
 * | variable | default |
 * |---|---|
 * | KAFKA_BROKERS, SCHEMA_REGISTRY_URL, MCPO_TOPIC_PREFIX | see config/index.ts |
 * | MCPO_PROCESSOR_GROUP | mcpo-processor |
 * | MCPO_PROCESSOR_MODE | live (or replay: read to the end, flush, exit) |
 * | MCPO_WINDOW_MS, MCPO_GRACE_MS, MCPO_IDLE_TIMEOUT_MS, MCPO_CHECKPOINT_INTERVAL_MS | 60000, 10000, 30000, 2000 |
 * | MCPO_SESSION_TIMEOUT_MS | 30000 |
 * | MCPO_METRICS_PORT | 9464 (Prometheus `/metrics` on loopback; -1: none; 0: any free port) |
 * | LOG_LEVEL | info (JSON logs through pino) |
 */
import { pathToFileURL } from "node:url";

import { ConfigError } from "../config/index.js";
import { StreamProcessor } from "./processor.js";

function intFromEnv(name: string): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return undefined;
  const value = Number(raw);
  if (!Number.isInteger(value))
    throw new ConfigError(name, `expected an integer (got ${JSON.stringify(raw)})`);
  return value;
}

export async function main(): Promise<number> {
  const mode = process.env.MCPO_PROCESSOR_MODE ?? "live";
  if (mode !== "live" && mode !== "replay")
    throw new ConfigError(
      "MCPO_PROCESSOR_MODE",
      `expected live or replay (got ${JSON.stringify(mode)})`,
    );
  const windowSizeMs = intFromEnv("MCPO_WINDOW_MS");
  const graceMs = intFromEnv("MCPO_GRACE_MS");
  const idleTimeoutMs = intFromEnv("MCPO_IDLE_TIMEOUT_MS");
  const checkpointIntervalMs = intFromEnv("MCPO_CHECKPOINT_INTERVAL_MS");
  const sessionTimeoutMs = intFromEnv("MCPO_SESSION_TIMEOUT_MS");
  const metricsPort = intFromEnv("MCPO_METRICS_PORT") ?? 9464;
  const processor = new StreamProcessor({
    mode,
    ...(process.env.MCPO_PROCESSOR_GROUP ? { groupId: process.env.MCPO_PROCESSOR_GROUP } : {}),
    ...(windowSizeMs === undefined ? {} : { windowSizeMs }),
    ...(graceMs === undefined ? {} : { graceMs }),
    ...(idleTimeoutMs === undefined ? {} : { idleTimeoutMs }),
    ...(checkpointIntervalMs === undefined ? {} : { checkpointIntervalMs }),
    ...(sessionTimeoutMs === undefined ? {} : { sessionTimeoutMs }),
    ...(metricsPort < 0 ? {} : { metricsPort }),
  });
  if (mode === "replay") {
    await processor.runToEnd();
    return 0;
  }
  await processor.start();
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  await processor.stop();
  return 0;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().then(
    (code) => {
      process.exit(code);
    },
    (error: unknown) => {
      const message = error instanceof Error ? error.message : String(error);
      process.stderr.write(
        `${JSON.stringify({ level: "error", component: "processor", message })}\n`,
      );
      process.exit(error instanceof ConfigError ? 2 : 1);
    },
  );
}
