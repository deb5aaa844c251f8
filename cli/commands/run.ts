/** The long-lived services and the plumbing commands: `processor`, `sink`, `migrate`, `stack`. */
import {
  processorConfigSchema,
  redactUrl,
  sinkConfigSchema,
  type ConnectionConfig,
  endpointOptionsOf,
} from "../../config/index.js";
import { pinoLogger, untilSignal } from "../../ops/index.js";
import { StreamProcessor } from "../../processor/processor.js";
import { ensurePostgresDatabase } from "../../stack/probes.js";
import {
  ensureDownloads,
  loadStackConfig,
  securedStackEndpoints,
  stackClientEnv,
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
  const { databaseUrl: _unused, ...endpoints } = endpointOptionsOf(connection);
  return {
    ...endpoints,
    ...settings.options(processorConfigSchema),
    metrics: settings.metricsSection(),
  };
}

/** The sink's options from the CLI's settings, by schema key (shared with `demo`). */
export function sinkSettings(settings: SettingsResolver, connection: ConnectionConfig) {
  return {
    ...endpointOptionsOf(connection),
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

/**
 * The lines `stack up` ends with: the settings that point a shell at the stack. A `DATABASE_URL`
 * with a password (or other secret) is the user's own, from their environment: it is named
 * without its secrets and not exported again (an export would lose the password).
 */
export function stackExports(endpoints: {
  readonly kafkaBrokers: string;
  readonly schemaRegistryUrl: string;
  readonly databaseUrl: string;
}): string[] {
  const database = redactUrl(endpoints.databaseUrl);
  return [
    `export KAFKA_BROKERS=${endpoints.kafkaBrokers}`,
    `export SCHEMA_REGISTRY_URL=${endpoints.schemaRegistryUrl}`,
    database === endpoints.databaseUrl
      ? `export DATABASE_URL=${database}`
      : `# DATABASE_URL: ${database} (yours, from the environment; its password stays there and is not printed)`,
  ];
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
      for (const line of stackExports(result.endpoints)) print(line);
      if (config.security === "sasl_ssl") {
        // The secured stack's operator: password files and the CA by path, no secret printed.
        const env = stackClientEnv(securedStackEndpoints(config), { kafkaUser: "admin" });
        for (const [name, value] of Object.entries(env))
          if (!["KAFKA_BROKERS", "SCHEMA_REGISTRY_URL", "DATABASE_URL"].includes(name))
            print(`export ${name}=${value}`);
      }
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
