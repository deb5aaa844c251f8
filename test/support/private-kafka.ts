/**
 * A Kafka broker of one test file's own (the local stack's jars, its own folder and ports), for
 * tests that stop and restart the broker for real without disturbing the shared one. Its ports
 * are reserved (see ports.ts), so they stay free for it across a stop and start.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import {
  loadStackConfig,
  stackDown,
  stackUp,
  StackError,
  type StackConfig,
} from "../../stack/index.js";
import { services } from "./isolation.js";
import { freePort, releasePort } from "./ports.js";

export interface PrivateKafka {
  readonly brokers: string;
  /** Stops the broker process (SIGTERM, as an operator would). */
  stop(): Promise<void>;
  /** Starts it again on the same port and data. */
  start(): Promise<void>;
  /** Stops it and deletes its data. */
  dispose(): Promise<void>;
}

/**
 * Starts a broker of the caller's own. `databaseUrl` is only what the stack checks at each start
 * (`select 1`): a server that stays up (by default the tests' shared one; a script outside the
 * test runner passes its own).
 */
export async function startPrivateKafka(
  databaseUrl: string = services().databaseUrl,
): Promise<PrivateKafka> {
  const dir = mkdtempSync(join(tmpdir(), "mcpo-private-kafka-"));
  let config: StackConfig | undefined;
  let ports: number[] = [];
  const start = async (): Promise<void> => {
    if (config) await stackUp(config, () => undefined, ["kafka"]);
  };
  const stop = async (): Promise<void> => {
    if (config) await stackDown(config, () => undefined, ["kafka"]);
  };
  // Should a process outside the tests hold one of the reserved ports anyway, the first start
  // (which checks them) is retried on other ports.
  for (let attempt = 1; ; attempt++) {
    ports = [await freePort(), await freePort(), await freePort(), await freePort()];
    const [kafka, controller, registry, management] = ports.map(String);
    config = loadStackConfig({
      ...process.env,
      STACK_DIR: dir,
      STACK_DIST_DIR: loadStackConfig().distDir,
      STACK_KAFKA_PORT: kafka,
      STACK_KAFKA_CONTROLLER_PORT: controller,
      STACK_REGISTRY_PORT: registry,
      STACK_REGISTRY_MANAGEMENT_PORT: management,
      DATABASE_URL: databaseUrl,
    });
    try {
      await start();
      break;
    } catch (error) {
      for (const port of ports) releasePort(port);
      if (attempt < 3 && error instanceof StackError && error.code === "PORT_TAKEN") continue;
      await stop().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
      throw error;
    }
  }
  return {
    brokers: `127.0.0.1:${config.kafkaPort}`,
    start,
    stop,
    dispose: async () => {
      await stop();
      rmSync(dir, { recursive: true, force: true });
      for (const port of ports) releasePort(port);
    },
  };
}
