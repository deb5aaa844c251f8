/** The long-lived services and the plumbing commands: `processor`, `sink`, `migrate`, `stack`. */
import {
  processorConfigSchema,
  redactUrl,
  sinkConfigSchema,
  type ConnectionConfig,
} from "../../config/index.js";
import { pinoLogger, untilSignal } from "../../ops/index.js";
import { StreamProcessor } from "../../processor/processor.js";
import { ensurePostgresDatabase } from "../../stack/probes.js";
import {
  ensureDownloads,
  loadStackConfig,
  stackDown,
  stackStatus,
  stackUp,
} from "../../stack/index.js";
import { migrate } from "../../sink/migrate.js";
import { Sink } from "../../sink/sink.js";
import type { SettingsResolver } from "../config.js";
import { checkKafka, checkPostgres, checkRegistry } from "../preflight.js";

/**
 * The processor's options from the CLI's settings, every one by its schema key (shared with
 * `demo`); the processor checks them again.
 */
export function processorSettings(settings: SettingsResolver, connection: ConnectionConfig) {
  return {
    brokers: connection.kafkaBrokers,
    schemaRegistryUrl: connection.schemaRegistryUrl,
    topicPrefix: connection.topicPrefix,
    ...settings.options(processorConfigSchema),
    metrics: settings.metricsSection(),
  };
}

/** The sink's options from the CLI's settings, by schema key (shared with `demo`). */
export function sinkSettings(settings: SettingsResolver, connection: ConnectionConfig) {
  return {
    brokers: connection.kafkaBrokers,
    schemaRegistryUrl: connection.schemaRegistryUrl,
    databaseUrl: connection.databaseUrl,
    topicPrefix: connection.topicPrefix,
    ...settings.options(sinkConfigSchema),
  };
}

/**
 * Runs a started service until SIGINT/SIGTERM (then stops it: exit 0) or until it fails for good
 * (it has stopped; the failure is thrown, so the CLI prints it and exits non-zero, never staying
 * up consuming nothing).
 */
async function untilStoppedOrFailed(service: {
  readonly failed: Promise<Error>;
  stop(): Promise<void>;
}): Promise<number> {
  const outcome = await Promise.race([untilSignal().then(() => undefined), service.failed]);
  if (outcome) throw outcome;
  await service.stop();
  return 0;
}

export async function runProcessor(settings: SettingsResolver): Promise<number> {
  const connection = settings.connection();
  const options = processorSettings(settings, connection);
  const logLevel = settings.logLevel();
  await checkKafka(connection);
  await checkRegistry(connection);
  const processor = new StreamProcessor({ ...options, logger: pinoLogger("processor", logLevel) });
  await processor.start();
  return untilStoppedOrFailed(processor);
}

export async function runSink(settings: SettingsResolver): Promise<number> {
  const connection = settings.connection();
  const options = sinkSettings(settings, connection);
  const logLevel = settings.logLevel();
  await checkKafka(connection);
  await checkRegistry(connection);
  await checkPostgres(connection);
  const sink = new Sink({ ...options, logger: pinoLogger("sink", logLevel) });
  await sink.start();
  return untilStoppedOrFailed(sink);
}

export async function runMigrate(settings: SettingsResolver): Promise<number> {
  const connection = settings.connection();
  const created = await ensurePostgresDatabase(connection.databaseUrl);
  const applied = await migrate(connection.databaseUrl);
  const where = redactUrl(connection.databaseUrl);
  if (created === "created") process.stdout.write(`created database ${where}\n`);
  process.stdout.write(
    applied.length === 0
      ? `schema is current in ${where}\n`
      : `applied migrations ${applied.join(", ")} to ${where}\n`,
  );
  return 0;
}

export async function runStack(action: string): Promise<number> {
  const config = loadStackConfig();
  const print = (line: string): void => {
    process.stdout.write(`${line}\n`);
  };
  switch (action) {
    case "up": {
      const result = await stackUp(config, print);
      print(
        `stack up in ${(result.elapsedMs / 1000).toFixed(1)} s (${result.downloaded ? "downloaded the distributions" : "warm"}; ` +
          `started: ${result.started.length > 0 ? result.started.join(", ") : "nothing, all were running"})`,
      );
      print(`export KAFKA_BROKERS=${result.endpoints.kafkaBrokers}`);
      print(`export SCHEMA_REGISTRY_URL=${result.endpoints.schemaRegistryUrl}`);
      print(`export DATABASE_URL=${result.endpoints.databaseUrl}`);
      return 0;
    }
    case "fetch": {
      const downloaded = await ensureDownloads(config, print);
      print(downloaded ? `fetched into ${config.distDir}` : `already in ${config.distDir}`);
      return 0;
    }
    case "down":
      await stackDown(config, print);
      return 0;
    case "status": {
      const statuses = await stackStatus(config);
      for (const status of statuses)
        print(
          `${status.service.padEnd(9)} ${(status.answers ? "up" : "down").padEnd(5)} ${status.address}${status.pid === undefined ? "" : ` pid ${status.pid}`} — ${status.detail}`,
        );
      return statuses.every((status) => status.answers) ? 0 : 3;
    }
    default:
      throw new Error(`unknown stack action ${action}`);
  }
}
