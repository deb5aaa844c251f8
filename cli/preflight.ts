/**
 * Before a command starts work, it checks that the services it needs answer, so an unreachable
 * broker, registry or database is one clear line (what, where, which setting, how to fix it)
 * instead of a client library retrying for minutes.
 */
import { connect } from "node:net";

import pg from "pg";

import { ObservatoryError, redactUrl, type ConnectionConfig } from "../config/index.js";

/** A service did not answer. Exit code 3. Retriable: the service may answer later. */
export class UnreachableError extends ObservatoryError {
  declare readonly code: "SERVICE_UNREACHABLE";
  constructor(message: string) {
    super("SERVICE_UNREACHABLE", message, { retriable: true });
    this.name = "UnreachableError";
  }
}

const HINT =
  "start the local stack with `mcp-observatory stack up`, or point the setting at a running service";

function tcpProbe(host: string, port: number, timeoutMs: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (problem: string | undefined): void => {
      socket.destroy();
      resolve(problem);
    };
    socket.setTimeout(timeoutMs, () => {
      done(`no answer within ${timeoutMs} ms`);
    });
    socket.once("connect", () => {
      done(undefined);
    });
    socket.once("error", (error: NodeJS.ErrnoException) => {
      done(error.code ?? error.message);
    });
  });
}

/** At least one bootstrap broker accepts a connection. */
export async function checkKafka(config: ConnectionConfig, timeoutMs = 3000): Promise<void> {
  const problems: string[] = [];
  for (const broker of config.kafkaBrokers) {
    const separator = broker.lastIndexOf(":");
    const problem = await tcpProbe(
      broker.slice(0, separator).replace(/^\[|\]$/g, ""),
      Number(broker.slice(separator + 1)),
      timeoutMs,
    );
    if (problem === undefined) return;
    problems.push(`${broker}: ${problem}`);
  }
  throw new UnreachableError(
    `cannot reach Kafka (${problems.join("; ")}; set by KAFKA_BROKERS or --brokers): ${HINT}`,
  );
}

/** The registry answers its Confluent-compatible API. */
export async function checkRegistry(config: ConnectionConfig, timeoutMs = 3000): Promise<void> {
  const url = `${config.schemaRegistryUrl}/subjects`;
  let problem: string;
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    if (response.ok) return;
    problem = `HTTP ${response.status} from ${url} (is this a Confluent-compatible API? Apicurio's is at /apis/ccompat/v7)`;
  } catch (error) {
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    problem = `${config.schemaRegistryUrl}: ${cause?.code ?? cause?.message ?? (error as Error).message}`;
  }
  throw new UnreachableError(
    `cannot reach the schema registry (${problem}; set by SCHEMA_REGISTRY_URL or --schema-registry-url): ${HINT}`,
  );
}

/** The database accepts a connection and answers `select 1`. */
export async function checkPostgres(config: ConnectionConfig, timeoutMs = 3000): Promise<void> {
  const client = new pg.Client({
    connectionString: config.databaseUrl,
    connectionTimeoutMillis: timeoutMs,
  });
  try {
    await client.connect();
    await client.query("select 1");
  } catch (error) {
    const code = (error as { code?: string }).code;
    const hint =
      code === "3D000"
        ? "create it with `mcp-observatory migrate` (it creates a missing database)"
        : "start PostgreSQL or set DATABASE_URL / --database-url";
    throw new UnreachableError(
      `cannot reach PostgreSQL at ${redactUrl(config.databaseUrl)} (${code ?? ""}${code ? ": " : ""}${(error as Error).message}): ${hint}`,
    );
  } finally {
    await client.end().catch(() => undefined);
  }
}
