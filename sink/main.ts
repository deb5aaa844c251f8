/**
 * Runs the sink until SIGINT or SIGTERM: `npm run sink`. Settings from the environment:
 * KAFKA_BROKERS, SCHEMA_REGISTRY_URL, DATABASE_URL, MCPO_TOPIC_PREFIX (see config/index.ts),
 * MCPO_SINK_GROUP (default mcpo-sink), MCPO_SESSION_TIMEOUT_MS (default 30000), LOG_LEVEL,
 * MCPO_METRICS_PORT (default 9465: Prometheus `/metrics` on loopback; -1: none; 0: any free port).
 * `npm run migrate` (`main.ts migrate`) only applies the schema migrations to DATABASE_URL.
 */
import { pathToFileURL } from "node:url";

import { ConfigError, loadConnectionConfig } from "../config/index.js";
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
  const session = process.env.MCPO_SESSION_TIMEOUT_MS;
  const sessionTimeoutMs = session === undefined || session === "" ? undefined : Number(session);
  if (sessionTimeoutMs !== undefined && !Number.isInteger(sessionTimeoutMs))
    throw new ConfigError(
      "MCPO_SESSION_TIMEOUT_MS",
      `expected an integer (got ${JSON.stringify(session)})`,
    );
  const port = process.env.MCPO_METRICS_PORT;
  const metricsPort = port === undefined || port === "" ? 9465 : Number(port);
  if (!Number.isInteger(metricsPort))
    throw new ConfigError("MCPO_METRICS_PORT", `expected an integer (got ${JSON.stringify(port)})`);
  const sink = new Sink({
    ...(metricsPort < 0 ? {} : { metricsPort }),
    ...(process.env.MCPO_SINK_GROUP ? { groupId: process.env.MCPO_SINK_GROUP } : {}),
    ...(sessionTimeoutMs === undefined ? {} : { sessionTimeoutMs }),
  });
  await sink.start();
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  await sink.stop();
  return 0;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().then(
    (code) => {
      process.exit(code);
    },
    (error: unknown) => {
      const message = error instanceof Error ? error.message : String(error);
      process.stderr.write(`${JSON.stringify({ level: "error", component: "sink", message })}\n`);
      process.exit(error instanceof ConfigError ? 2 : 1);
    },
  );
}
