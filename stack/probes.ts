import pg from "pg";

import { registryRequest } from "../avro/registry.js";
import type { RegistryTarget } from "../config/security.js";
import { roundTrip, type KafkaSettings } from "../kafka/index.js";
import { StackError } from "./process.js";

const PROBE_TOPIC = "__mcpo_stack_probe";

/** The brokers to probe: an address, or client settings with TLS and SASL (the secured stack). */
export type KafkaProbeTarget = string | Pick<KafkaSettings, "brokers" | "tls" | "sasl">;

/** A real produce/consume round trip through the stack's probe topic (see `roundTrip`). */
export async function kafkaRoundTrip(target: KafkaProbeTarget, timeoutMs: number): Promise<void> {
  const security = typeof target === "string" ? { brokers: [target] } : target;
  await roundTrip(
    { ...security, clientId: "mcpo-stack-probe", connectionTimeoutMs: 3000 },
    { topic: PROBE_TOPIC, timeoutMs, retentionMs: 60 * 60 * 1000 },
  );
}

/** Registers a small Avro schema through the ccompat API and reads it back by id. */
export async function registryRoundTrip(baseUrl: RegistryTarget): Promise<number> {
  const schema = JSON.stringify({
    type: "record",
    name: "StackProbe",
    namespace: "io.mcpobservatory.stack",
    fields: [{ name: "at", type: "long" }],
  });
  const registered = await requestJson(baseUrl, `/subjects/${PROBE_TOPIC}-value/versions`, {
    method: "POST",
    body: JSON.stringify({ schema }),
  });
  const id = (registered as { id?: unknown }).id;
  if (typeof id !== "number")
    throw new Error(`registry answered without an id: ${JSON.stringify(registered)}`);
  const fetched = (await requestJson(baseUrl, `/schemas/ids/${id}`)) as { schema?: unknown };
  if (typeof fetched.schema !== "string") throw new Error(`schema ${id} could not be read back`);
  return id;
}

/**
 * Sets the registry's global compatibility level. Apicurio's default is NONE; our event contract
 * promises BACKWARD evolution, so the stack says so explicitly.
 */
export async function setGlobalCompatibility(
  baseUrl: RegistryTarget,
  level: "BACKWARD",
): Promise<void> {
  await requestJson(baseUrl, "/config", {
    method: "PUT",
    body: JSON.stringify({ compatibility: level }),
  });
}

/** One try: the stack's start-up loop is the retry. */
const ONCE = { maxAttempts: 1, baseDelayMs: 0, maxDelayMs: 0 };

/**
 * A registry call: by URL as before (plain stack), or through the registry client with the
 * endpoint's credentials and CA (secured stack).
 */
async function requestJson(
  target: RegistryTarget,
  path: string,
  init: { method?: "GET" | "PUT" | "POST"; body?: string } = {},
): Promise<unknown> {
  if (typeof target !== "string")
    return registryRequest(
      target,
      path,
      init.method ?? "GET",
      init.body === undefined ? undefined : (JSON.parse(init.body) as unknown),
      ONCE,
    );
  const url = `${target}${path}`;
  const response = await fetch(url, {
    method: init.method ?? "GET",
    headers: {
      "content-type": "application/vnd.schemaregistry.v1+json",
      accept: "application/json",
    },
    ...(init.body === undefined ? {} : { body: init.body }),
    signal: AbortSignal.timeout(5000),
  });
  const text = await response.text();
  if (!response.ok)
    throw new Error(`${init.method ?? "GET"} ${url}: HTTP ${response.status} ${text}`);
  return JSON.parse(text) as unknown;
}

/**
 * Checks the PostgreSQL server behind `databaseUrl` (`select 1`) and creates its database when it
 * does not exist yet.
 *
 * @returns whether the database was created.
 * @throws {StackError} `POSTGRES_UNAVAILABLE` when the server does not answer.
 */
export async function ensurePostgresDatabase(databaseUrl: string): Promise<"created" | "exists"> {
  const target = new URL(databaseUrl);
  const database = decodeURIComponent(target.pathname.replace(/^\//, "")) || "postgres";
  const admin = new URL(databaseUrl);
  admin.pathname = "/postgres";
  const client = new pg.Client({
    connectionString: admin.toString(),
    connectionTimeoutMillis: 5000,
  });
  try {
    await client.connect();
  } catch (error) {
    throw new StackError(
      "POSTGRES_UNAVAILABLE",
      `PostgreSQL at ${target.host} does not answer (${(error as Error).message}). Start it ` +
        `(on Debian: pg_ctlcluster --skip-systemctl-redirect <version> main start) or set DATABASE_URL.`,
      { cause: error },
    );
  }
  try {
    await client.query("select 1");
    const exists = await client.query("select 1 from pg_database where datname = $1", [database]);
    if (exists.rowCount === 0) {
      try {
        await client.query(`create database ${pg.escapeIdentifier(database)}`);
        return "created";
      } catch (error) {
        // 42P04 duplicate_database: created concurrently by another process; that is fine.
        if ((error as { code?: string }).code !== "42P04") throw error;
      }
    }
    return "exists";
  } finally {
    await client.end();
  }
}

/** `select 1` against the database itself. */
export async function postgresSelectOne(databaseUrl: string): Promise<void> {
  const client = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    const result = await client.query<{ one: number }>("select 1 as one");
    if (result.rows[0]?.one !== 1) throw new Error("select 1 did not return 1");
  } finally {
    await client.end();
  }
}
