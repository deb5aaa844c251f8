/**
 * Before a command starts work, it checks that the services it needs answer, so an unreachable
 * broker, registry or database is one clear line (what, where, which setting, how to fix it)
 * instead of a client library retrying for minutes.
 */
import { connect } from "node:net";

import pg from "pg";

import { registryRequest, SchemaRegistryError } from "../avro/registry.js";
import {
  isTlsFailure,
  ObservatoryError,
  redactUrl,
  RetryExhaustedError,
  type ConnectionConfig,
} from "../config/index.js";
import { KafkaError, kafkaSettingsOf, probeBrokers } from "../kafka/index.js";

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

/**
 * At least one bootstrap broker accepts a connection, and one answers as the clients will talk
 * to it (TLS and SASL as configured): a wrong password or CA is one line here.
 */
export async function checkKafka(config: ConnectionConfig, timeoutMs = 3000): Promise<void> {
  const problems: string[] = [];
  let reached = false;
  for (const broker of config.kafkaBrokers) {
    const separator = broker.lastIndexOf(":");
    const problem = await tcpProbe(
      broker.slice(0, separator).replace(/^\[|\]$/g, ""),
      Number(broker.slice(separator + 1)),
      timeoutMs,
    );
    if (problem === undefined) {
      reached = true;
      break;
    }
    problems.push(`${broker}: ${problem}`);
  }
  if (!reached)
    throw new UnreachableError(
      `cannot reach Kafka (${problems.join("; ")}; set by KAFKA_BROKERS or --brokers): ${HINT}`,
    );
  try {
    await probeBrokers({
      ...kafkaSettingsOf(config, "mcpo-preflight"),
      connectionTimeoutMs: timeoutMs,
      requestTimeoutMs: Math.max(timeoutMs, 5000),
    });
  } catch (error) {
    if (error instanceof KafkaError && !error.retriable) throw error;
    throw new UnreachableError(
      `cannot reach Kafka (${(error as Error).message}; set by KAFKA_BROKERS or --brokers): ${HINT}`,
    );
  }
}

/** The registry answers its Confluent-compatible API, with the configured credentials and CA. */
export async function checkRegistry(config: ConnectionConfig, timeoutMs = 3000): Promise<void> {
  // For messages: without user-info or secret parameters, should a caller's URL have them.
  const url = `${redactUrl(config.schemaRegistry.url)}/subjects`;
  let problem: string;
  try {
    await registryRequest(
      config.schemaRegistry,
      "/subjects",
      "GET",
      undefined,
      {
        maxAttempts: 1,
        baseDelayMs: 0,
        maxDelayMs: 0,
      },
      timeoutMs,
    );
    return;
  } catch (error) {
    const cause = error instanceof RetryExhaustedError ? error.cause : error;
    if (cause instanceof SchemaRegistryError && (cause.status === 401 || cause.status === 403))
      throw new ObservatoryError(
        "REGISTRY_AUTHENTICATION_FAILED",
        `the schema registry at ${url} refused ${config.schemaRegistry.auth ? "the credentials" : "a client without credentials"} (HTTP ${cause.status}): set SCHEMA_REGISTRY_USERNAME and SCHEMA_REGISTRY_PASSWORD (or _FILE), or SCHEMA_REGISTRY_TOKEN`,
      );
    if (cause instanceof SchemaRegistryError && isTlsFailure(cause.cause))
      throw new ObservatoryError(
        "TLS_HANDSHAKE_FAILED",
        `TLS with the schema registry at ${url} failed (${(cause.cause as Error).message}): set SCHEMA_REGISTRY_CA_FILE to the CA that signed its certificate`,
      );
    if (cause instanceof SchemaRegistryError && cause.status !== undefined)
      problem = `HTTP ${cause.status} from ${url} (is this a Confluent-compatible API? Apicurio's is at /apis/ccompat/v7)`;
    else problem = (cause as Error).message;
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
