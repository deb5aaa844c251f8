/**
 * The chaos run's own Kafka broker: the local stack's jars in a temporary folder, on reserved
 * ports (test/support/ports.ts), stopped and started for real. The same recipe as
 * test/support/private-kafka.ts, which cannot be used here: it asks the test runner's injected
 * context for the database URL, and the chaos run is a plain script, not a test.
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
import type { PrivateKafka } from "../support/private-kafka.js";
import { freePort, releasePort } from "../support/ports.js";

/**
 * Starts a broker of this run's own. `databaseUrl` is only what the stack checks at each start
 * (`select 1`): pass a server that stays up, not the one the run stops.
 */
export async function startChaosBroker(databaseUrl: string): Promise<PrivateKafka> {
  const dir = mkdtempSync(join(tmpdir(), "mcpo-chaos-kafka-"));
  let config: StackConfig | undefined;
  let ports: number[] = [];
  const start = async (): Promise<void> => {
    if (config) await stackUp(config, () => undefined, ["kafka"]);
  };
  const stop = async (): Promise<void> => {
    if (config) await stackDown(config, () => undefined, ["kafka"]);
  };
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
