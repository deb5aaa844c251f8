/** `mcp-observatory ingest`: the OTLP/HTTP trace receiver, until SIGINT/SIGTERM. */
import { endpointOptionsOf, ingestConfigSchema } from "../../config/index.js";
import { pinoLogger, untilSignal } from "../../ops/index.js";
import { OtlpIngest } from "../../otlp/ingest.js";
import type { SettingsResolver } from "../config.js";
import { checkKafka, checkRegistry } from "../preflight.js";

/** The receiver's options from the CLI's settings, by schema key; the receiver checks them again. */
export function ingestSettings(settings: SettingsResolver) {
  const { databaseUrl: _unused, ...endpoints } = endpointOptionsOf(settings.connection());
  return { ...endpoints, ...settings.options(ingestConfigSchema) };
}

/**
 * Checks Kafka and the registry answer, listens, and runs until SIGINT/SIGTERM; then answers the
 * requests in flight (each after Kafka acknowledged its events, or 503), disconnects and exits 0.
 */
export async function runIngest(settings: SettingsResolver): Promise<number> {
  const connection = settings.connection();
  const options = ingestSettings(settings);
  const logLevel = settings.logLevel();
  await checkKafka(connection);
  await checkRegistry(connection);
  const ingest = new OtlpIngest({ ...options, logger: pinoLogger("ingest", logLevel) });
  await ingest.start();
  await untilSignal();
  await ingest.stop();
  return 0;
}
