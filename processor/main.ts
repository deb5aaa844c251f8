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
import { ConfigError } from "../config/index.js";
import { intFromEnv, runAsScript, untilSignal } from "../ops/index.js";
import { StreamProcessor } from "./processor.js";

export async function main(): Promise<number> {
  const mode = process.env.MCPO_PROCESSOR_MODE ?? "live";
  if (mode !== "live" && mode !== "replay")
    throw new ConfigError(
      "MCPO_PROCESSOR_MODE",
      `expected live or replay (got ${JSON.stringify(mode)})`,
    );
  const optional = (key: string, name: string): Record<string, number> => {
    const value = intFromEnv(name);
    return value === undefined ? {} : { [key]: value };
  };
  const metricsPort = intFromEnv("MCPO_METRICS_PORT") ?? 9464;
  const processor = new StreamProcessor({
    mode,
    ...(process.env.MCPO_PROCESSOR_GROUP ? { groupId: process.env.MCPO_PROCESSOR_GROUP } : {}),
    ...optional("windowSizeMs", "MCPO_WINDOW_MS"),
    ...optional("graceMs", "MCPO_GRACE_MS"),
    ...optional("idleTimeoutMs", "MCPO_IDLE_TIMEOUT_MS"),
    ...optional("checkpointIntervalMs", "MCPO_CHECKPOINT_INTERVAL_MS"),
    ...optional("sessionTimeoutMs", "MCPO_SESSION_TIMEOUT_MS"),
    ...(metricsPort < 0 ? {} : { metricsPort }),
  });
  if (mode === "replay") {
    await processor.runToEnd();
    return 0;
  }
  await processor.start();
  await untilSignal();
  await processor.stop();
  return 0;
}

runAsScript(import.meta.url, "processor", main);
