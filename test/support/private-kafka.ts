/**
 * A Kafka broker of one test file's own (the local stack's jars, its own folder and ports), for
 * tests that stop and restart the broker for real without disturbing the shared one.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import {
  loadStackConfig,
  stackDown,
  stackUp,
  type StackConfig,
} from "../../scripts/stack/index.js";
import { services } from "./isolation.js";
import { freePort } from "./ports.js";

export interface PrivateKafka {
  readonly brokers: string;
  /** Stops the broker process (SIGTERM, as an operator would). */
  stop(): Promise<void>;
  /** Starts it again on the same port and data. */
  start(): Promise<void>;
  /** Stops it and deletes its data. */
  dispose(): Promise<void>;
}

export async function startPrivateKafka(): Promise<PrivateKafka> {
  const dir = mkdtempSync(join(tmpdir(), "mcpo-private-kafka-"));
  const config: StackConfig = loadStackConfig({
    ...process.env,
    STACK_DIR: dir,
    STACK_DIST_DIR: loadStackConfig().distDir,
    STACK_KAFKA_PORT: String(await freePort()),
    STACK_KAFKA_CONTROLLER_PORT: String(await freePort()),
    STACK_REGISTRY_PORT: String(await freePort()),
    STACK_REGISTRY_MANAGEMENT_PORT: String(await freePort()),
    DATABASE_URL: services().databaseUrl,
  });
  const start = async (): Promise<void> => {
    await stackUp(config, () => undefined, ["kafka"]);
  };
  const stop = async (): Promise<void> => {
    await stackDown(config, () => undefined, ["kafka"]);
  };
  await start();
  return {
    brokers: `127.0.0.1:${config.kafkaPort}`,
    start,
    stop,
    dispose: async () => {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
