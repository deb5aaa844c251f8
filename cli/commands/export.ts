/** `mcp-observatory export otlp`: model-calls' events to an OTLP/HTTP endpoint, until SIGINT/SIGTERM. */
import { endpointOptionsOf, otlpExportConfigSchema } from "../../config/index.js";
import { pinoLogger, untilSignal } from "../../ops/index.js";
import { OtlpExporter } from "../../otlp/export.js";
import { OTLP_EXPORT_SETTINGS, type SettingsResolver } from "../config.js";
import { checkKafka, checkRegistry } from "../preflight.js";

/**
 * Checks the settings, Kafka and the registry, and exports until SIGINT/SIGTERM; then lets the
 * request in flight finish (its records committed only if the endpoint took them), leaves the
 * group and exits 0. A consumer that stopped for good exits non-zero.
 */
export async function runExportOtlp(settings: SettingsResolver): Promise<number> {
  const connection = settings.connection();
  const { databaseUrl: _unused, ...endpoints } = endpointOptionsOf(connection);
  const options = settings.options(otlpExportConfigSchema);
  const logLevel = settings.logLevel();
  let exporter: OtlpExporter;
  try {
    exporter = new OtlpExporter({
      ...endpoints,
      ...options,
      logger: pinoLogger("otlp-export", logLevel),
    });
  } catch (error) {
    throw settings.renamed(error, OTLP_EXPORT_SETTINGS);
  }
  await checkKafka(connection);
  await checkRegistry(connection);
  await exporter.start();
  const outcome = await Promise.race([untilSignal().then(() => undefined), exporter.failed]);
  if (outcome) throw outcome;
  await exporter.stop();
  return 0;
}
