/**
 * Runs the sink until SIGINT or SIGTERM: `npm run sink`. Settings from the environment:
 * KAFKA_BROKERS, SCHEMA_REGISTRY_URL, DATABASE_URL, MCPO_TOPIC_PREFIX (see config/index.ts),
 * MCPO_SINK_GROUP (default mcpo-sink), MCPO_SESSION_TIMEOUT_MS (default 30000), LOG_LEVEL,
 * MCPO_METRICS_PORT (default 9465: Prometheus `/metrics` on loopback; -1: none; 0: any free port).
 * `npm run migrate` (`main.ts migrate`) only applies the schema migrations to DATABASE_URL.
 */
import { loadConnectionConfig } from "../config/index.js";
import { intFromEnv, runAsScript, untilSignal } from "../ops/index.js";
import { migrate } from "./migrate.js";
import { Sink } from "./sink.js";

export async function main(argv: readonly string[] = process.argv.slice(2)): Promise<number> {
  if (argv[0] === "migrate") {
    const applied = await migrate(loadConnectionConfig().databaseUrl);
    process.stdout.write(
      applied.length === 0 ? "schema is current\n" : `applied migrations ${applied.join(", ")}\n`,
    );
    return 0;
  }
  const sessionTimeoutMs = intFromEnv("MCPO_SESSION_TIMEOUT_MS");
  const metricsPort = intFromEnv("MCPO_METRICS_PORT") ?? 9465;
  const sink = new Sink({
    ...(process.env.MCPO_SINK_GROUP ? { groupId: process.env.MCPO_SINK_GROUP } : {}),
    ...(sessionTimeoutMs === undefined ? {} : { sessionTimeoutMs }),
    ...(metricsPort < 0 ? {} : { metricsPort }),
  });
  await sink.start();
  await untilSignal();
  await sink.stop();
  return 0;
}

runAsScript(import.meta.url, "sink", main);
