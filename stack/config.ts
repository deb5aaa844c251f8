import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { ConfigError, DEFAULTS, loadConnectionConfig, portOf } from "../config/index.js";

/** Where this package's own files are: the repository root in development, the package root once installed. */
export const PACKAGE_ROOT = findPackageRoot(dirname(fileURLToPath(import.meta.url)));

/** Whether this is an installed package (under node_modules) rather than the repository. */
export const INSTALLED = PACKAGE_ROOT.split(/[\\/]/).includes("node_modules");

function findPackageRoot(start: string): string {
  let dir = start;
  for (;;) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "stack", "pom.xml")))
      return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find stack/pom.xml above ${start}`);
    dir = parent;
  }
}

/** The versions the stack runs, read from `stack/pom.xml` (the one place they are named). */
export interface StackVersions {
  readonly kafka: string;
  readonly apicurio: string;
  readonly log4j: string;
}

export const POM_PATH = join(PACKAGE_ROOT, "stack", "pom.xml");

export function readStackVersions(pomPath: string = POM_PATH): StackVersions {
  const pom = readFileSync(pomPath, "utf8");
  const property = (name: string): string => {
    const match = new RegExp(`<${name.replace(/\./g, "\\.")}>([^<]+)</`).exec(pom);
    if (!match?.[1]) throw new Error(`${pomPath} has no <${name}> property`);
    return match[1].trim();
  };
  return Object.freeze({
    kafka: property("kafka.version"),
    apicurio: property("apicurio.version"),
    log4j: property("log4j.version"),
  });
}

/** Environment variables that configure the local stack. */
export const STACK_ENV = Object.freeze({
  dir: "STACK_DIR",
  distDir: "STACK_DIST_DIR",
  kafkaPort: "STACK_KAFKA_PORT",
  kafkaControllerPort: "STACK_KAFKA_CONTROLLER_PORT",
  registryPort: "STACK_REGISTRY_PORT",
  registryManagementPort: "STACK_REGISTRY_MANAGEMENT_PORT",
  kafkaHeap: "STACK_KAFKA_HEAP",
  registryHeap: "STACK_REGISTRY_HEAP",
  javaHome: "STACK_JAVA_HOME",
  registryJavaHome: "STACK_REGISTRY_JAVA_HOME",
  startTimeoutMs: "STACK_START_TIMEOUT_MS",
  security: "STACK_SECURITY",
  kafkaUsers: "STACK_KAFKA_USERS",
  registryUsers: "STACK_REGISTRY_USERS",
} as const);

/**
 * How the stack's services are secured: `none` (plaintext Kafka, plain HTTP registry, no
 * authentication), or `sasl_ssl` (Kafka's client listener SASL_SSL with ACLs, the registry HTTPS
 * only with basic and bearer authentication; see `stack/security.ts`).
 */
export type StackSecurity = "none" | "sasl_ssl";

/** The registry's roles (Apicurio's `sr-admin`, `sr-developer`, `sr-readonly`). */
export type RegistryRole = "admin" | "developer" | "readonly";

/** A user of the secured stack; `password` undefined: generated once, kept in credentials.json. */
export interface StackUserSetting {
  readonly name: string;
  readonly password: string | undefined;
}

/** A user of the secured stack's registry, with the role it is given. */
export interface StackRegistryUserSetting extends StackUserSetting {
  readonly role: RegistryRole;
}

/** The Kafka super user of the secured stack (inter-broker traffic, ACLs, the stack's probes). */
export const STACK_ADMIN_USER = "admin";

/** Validated settings of the local stack. Ports are loopback ports. */
export interface StackConfig {
  /** Folder for downloads, data, logs and pid records (git-ignored `.stack/` by default). */
  readonly dir: string;
  /** Folder of the downloaded distributions (`<dir>/dist` by default); stacks may share one. */
  readonly distDir: string;
  readonly kafkaPort: number;
  readonly kafkaControllerPort: number;
  readonly registryPort: number;
  /** Apicurio's Quarkus management interface (health, metrics); bound to loopback. */
  readonly registryManagementPort: number;
  /** JVM heap, e.g. `512m`. */
  readonly kafkaHeap: string;
  readonly registryHeap: string;
  /** JDK for Kafka (Java 17+); undefined means `JAVA_HOME`, then `java` on PATH. */
  readonly javaHome: string | undefined;
  /** JDK for Apicurio Registry (Java 21+); undefined means: search for one. */
  readonly registryJavaHome: string | undefined;
  /** How long `up` waits for each service to answer, in ms. */
  readonly startTimeoutMs: number;
  /** The PostgreSQL the stack checks and creates its database in. */
  readonly databaseUrl: string;
  readonly versions: StackVersions;
  /** `none` (default) or `sasl_ssl`. */
  readonly security: StackSecurity;
  /**
   * The Kafka users of the secured stack (SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN), `admin` first
   * (always there, a super user). Unused when `security` is `none`.
   */
  readonly kafkaUsers: readonly StackUserSetting[];
  /** The registry's users in the secured stack, `admin` (role admin) first. */
  readonly registryUsers: readonly StackRegistryUserSetting[];
}

function parsePort(env: NodeJS.ProcessEnv, key: string, fallback: number): number {
  const raw = env[key];
  if (raw === undefined || raw === "") return fallback;
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new ConfigError(key, `expected a port number 1-65535 (got ${JSON.stringify(raw)})`);
  return port;
}

function parseHeap(env: NodeJS.ProcessEnv, key: string, fallback: string): string {
  const raw = env[key];
  if (raw === undefined || raw === "") return fallback;
  if (!/^\d+[mMgG]$/.test(raw))
    throw new ConfigError(
      key,
      `expected a JVM heap size such as 512m or 1g (got ${JSON.stringify(raw)})`,
    );
  return raw;
}

/** Characters a password given in a setting may hold: safe in JAAS, the storage tool and Quarkus. */
const PASSWORD_PATTERN = /^[A-Za-z0-9._~+/-]{1,128}$/;
const USER_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

function parseSecurity(env: NodeJS.ProcessEnv): StackSecurity {
  const raw = env[STACK_ENV.security];
  if (raw === undefined || raw === "") return "none";
  const value = raw.trim().toLowerCase();
  if (value === "none" || value === "sasl_ssl") return value;
  throw new ConfigError(
    STACK_ENV.security,
    `expected none or sasl_ssl (got ${JSON.stringify(raw.slice(0, 40))})`,
  );
}

/**
 * A list of users: `name`, `name=password`, and for the registry `name:role` or
 * `name:role=password`, separated by commas. Never echoes a value: it may hold passwords.
 */
function parseUsers(
  env: NodeJS.ProcessEnv,
  key: string,
  fallback: string,
  withRoles: boolean,
): StackRegistryUserSetting[] {
  const raw = env[key];
  const text = raw === undefined || raw.trim() === "" ? fallback : raw;
  const users: StackRegistryUserSetting[] = [];
  const entries = text
    .split(",")
    .map((entry) => entry.trim())
    .filter((entry) => entry !== "");
  for (const [index, entry] of entries.entries()) {
    const where = `entry ${index + 1}`;
    const equals = entry.indexOf("=");
    const head = equals < 0 ? entry : entry.slice(0, equals);
    const password = equals < 0 ? undefined : entry.slice(equals + 1);
    const colon = head.indexOf(":");
    const name = colon < 0 ? head : head.slice(0, colon);
    const roleText = colon < 0 ? undefined : head.slice(colon + 1);
    if (!USER_NAME_PATTERN.test(name))
      throw new ConfigError(
        key,
        `${where}: a user name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`,
      );
    if (roleText !== undefined && !withRoles)
      throw new ConfigError(key, `${where} (${name}): expected name or name=password`);
    if (
      roleText !== undefined &&
      roleText !== "admin" &&
      roleText !== "developer" &&
      roleText !== "readonly"
    )
      throw new ConfigError(key, `${where} (${name}): the role is admin, developer or readonly`);
    if (password !== undefined && !PASSWORD_PATTERN.test(password))
      throw new ConfigError(
        key,
        `${where} (${name}): a password given here is 1-128 letters, digits or . _ ~ + / - ` +
          "(leave it out to have one generated)",
      );
    if (users.some((user) => user.name === name))
      throw new ConfigError(key, `${where}: user ${name} is listed twice`);
    const role: RegistryRole = roleText ?? (name === STACK_ADMIN_USER ? "admin" : "developer");
    users.push({ name, password, role });
  }
  // The admin is always there, first: the stack's own probes and tools use it.
  const adminIndex = users.findIndex((user) => user.name === STACK_ADMIN_USER);
  const admin = adminIndex < 0 ? undefined : users.splice(adminIndex, 1)[0];
  if (admin !== undefined && withRoles && admin.role !== "admin")
    throw new ConfigError(key, `the user ${STACK_ADMIN_USER} always has the role admin`);
  return [{ name: STACK_ADMIN_USER, password: admin?.password, role: "admin" }, ...users];
}

function parsePositiveInt(env: NodeJS.ProcessEnv, key: string, fallback: number): number {
  const raw = env[key];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0)
    throw new ConfigError(key, `expected a positive integer (got ${JSON.stringify(raw)})`);
  return value;
}

/**
 * Resolves the stack's settings from the environment. The Kafka and registry ports default to the
 * ports of the project's connection defaults, so the stack serves exactly what the library expects.
 *
 * @throws {ConfigError} naming the variable whose value is invalid.
 */
export function loadStackConfig(env: NodeJS.ProcessEnv = process.env): StackConfig {
  const connection = loadConnectionConfig({}, env);
  const defaultKafkaPort = portOf(DEFAULTS.kafkaBrokers);
  const defaultRegistryPort = portOf(DEFAULTS.schemaRegistryUrl);
  // In this repository the stack lives in its git-ignored `.stack/`; an installed package keeps it
  // in the working directory rather than inside node_modules.
  const dir = resolve(
    env[STACK_ENV.dir] ?? join(INSTALLED ? process.cwd() : PACKAGE_ROOT, ".stack"),
  );
  const config: StackConfig = {
    dir,
    distDir: resolve(env[STACK_ENV.distDir] ?? join(dir, "dist")),
    kafkaPort: parsePort(env, STACK_ENV.kafkaPort, defaultKafkaPort),
    kafkaControllerPort: parsePort(env, STACK_ENV.kafkaControllerPort, defaultKafkaPort + 1),
    registryPort: parsePort(env, STACK_ENV.registryPort, defaultRegistryPort),
    registryManagementPort: parsePort(env, STACK_ENV.registryManagementPort, 9081),
    kafkaHeap: parseHeap(env, STACK_ENV.kafkaHeap, "512m"),
    registryHeap: parseHeap(env, STACK_ENV.registryHeap, "512m"),
    javaHome: env[STACK_ENV.javaHome] ?? env.JAVA_HOME ?? undefined,
    registryJavaHome: env[STACK_ENV.registryJavaHome] ?? undefined,
    startTimeoutMs: parsePositiveInt(env, STACK_ENV.startTimeoutMs, 180_000),
    databaseUrl: connection.databaseUrl,
    versions: readStackVersions(),
    security: parseSecurity(env),
    kafkaUsers: parseUsers(env, STACK_ENV.kafkaUsers, "replica,processor,sink", false).map(
      ({ name, password }) => ({ name, password }),
    ),
    registryUsers: parseUsers(env, STACK_ENV.registryUsers, STACK_ADMIN_USER, true),
  };
  const ports = new Map<number, string>();
  for (const [key, port] of [
    [STACK_ENV.kafkaPort, config.kafkaPort],
    [STACK_ENV.kafkaControllerPort, config.kafkaControllerPort],
    [STACK_ENV.registryPort, config.registryPort],
    [STACK_ENV.registryManagementPort, config.registryManagementPort],
  ] as const) {
    const other = ports.get(port);
    if (other !== undefined) throw new ConfigError(key, `port ${port} is already used by ${other}`);
    ports.set(port, key);
  }
  return Object.freeze(config);
}

/** Where the Kafka distribution is unpacked (its jars in `libs/`). */
export function kafkaDistHome(config: StackConfig): string {
  return join(config.distDir, `kafka-${config.versions.kafka}`);
}

/** Where the Apicurio Registry distribution is unpacked. */
export function registryDistHome(config: StackConfig): string {
  return join(config.distDir, `apicurio-registry-${config.versions.apicurio}`);
}

/**
 * The addresses a client uses to reach this stack. In `sasl_ssl` mode the registry's URL is
 * `https:`, and a client also needs the CA and credentials: see `securedStackEndpoints`.
 */
export function stackEndpoints(config: StackConfig): {
  kafkaBrokers: string;
  schemaRegistryUrl: string;
  databaseUrl: string;
} {
  const scheme = config.security === "sasl_ssl" ? "https" : "http";
  return {
    kafkaBrokers: `127.0.0.1:${config.kafkaPort}`,
    schemaRegistryUrl: `${scheme}://127.0.0.1:${config.registryPort}/apis/ccompat/v7`,
    databaseUrl: config.databaseUrl,
  };
}
