/** `mcp-observatory ui`: the web UI over PostgreSQL and the alerts topic, until SIGINT/SIGTERM. */
import { endpointOptionsOf, uiConfigSchema } from "../../config/index.js";
import { pinoLogger, untilSignal } from "../../ops/index.js";
import { UiServer } from "../../ui/server.js";
import type { SettingsResolver } from "../config.js";
import { checkPostgres } from "../preflight.js";

/** The UI's options from the CLI's settings, by schema key; the server checks them again. */
export function uiSettings(settings: SettingsResolver) {
  return { ...endpointOptionsOf(settings.connection()), ...settings.options(uiConfigSchema) };
}

/**
 * Checks PostgreSQL answers, listens, prints the address, and runs until SIGINT/SIGTERM; then
 * closes the live streams, the server and the pool, and exits 0.
 */
export async function runUi(settings: SettingsResolver): Promise<number> {
  const connection = settings.connection();
  const options = uiSettings(settings);
  await checkPostgres(connection);
  const server = new UiServer({ ...options, logger: pinoLogger("ui", settings.logLevel()) });
  await server.start();
  process.stdout.write(`web UI: ${server.url}\n`);
  await untilSignal();
  await server.stop();
  return 0;
}
