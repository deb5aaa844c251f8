/**
 * The local stack without Docker: a single-node KRaft Apache Kafka broker and Apicurio Registry,
 * both from Maven Central and run with this machine's Java, plus a check of the PostgreSQL that
 * `DATABASE_URL` names. `up` is idempotent, `down` stops only what `up` started. With
 * `STACK_SECURITY=sasl_ssl` Kafka and the registry are secured (TLS, SASL, ACLs, registry
 * authentication): see `security.ts`.
 *
 * @module
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { createHash } from "node:crypto";

import { redactUrl } from "../config/index.js";
import type { RegistryTarget } from "../config/security.js";
import {
  kafkaDistHome,
  POM_PATH,
  registryDistHome,
  STACK_ADMIN_USER,
  STACK_ENV,
  stackEndpoints,
  type StackConfig,
} from "./config.js";
import {
  ensurePostgresDatabase,
  kafkaRoundTrip,
  postgresSelectOne,
  registryRoundTrip,
  setGlobalCompatibility,
  type KafkaProbeTarget,
} from "./probes.js";
import {
  findJava,
  isRunning,
  portIsFree,
  readRecord,
  removeRecord,
  sleep,
  StackError,
  startDetached,
  stopProcess,
  tail,
  type Java,
  type ProcessRecord,
} from "./process.js";
import {
  ensureSecurityMaterial,
  kafkaSecurityProperties,
  readStorageSecurity,
  registrySecurityProperties,
  scramDigests,
  scramFormatArguments,
  securedStackEndpoints,
  stackKafkaSettings,
  stackRegistryEndpoint,
  syncScramUsers,
  writePrivateFile,
  writeStorageSecurity,
  type StackCredentials,
} from "./security.js";

export {
  loadStackConfig,
  stackEndpoints,
  STACK_ADMIN_USER,
  STACK_ENV,
  type RegistryRole,
  type StackConfig,
  type StackSecurity,
} from "./config.js";
export { StackError } from "./process.js";
export {
  grantAcls,
  securedStackEndpoints,
  signRegistryToken,
  stackClientEnv,
  stackKafkaSettings,
  stackRegistryEndpoint,
  stackTlsFiles,
  unsecuredKafkaToken,
  type AclGrant,
  type AclOperation,
  type SecuredStackEndpoints,
  type StackCredentials,
  type StackPasswordMechanism,
} from "./security.js";

const execFileAsync = promisify(execFile);

/** The processes the stack runs. PostgreSQL is not one: the stack uses the one that runs. */
export type StackService = "kafka" | "registry";
const SERVICES: readonly StackService[] = ["kafka", "registry"];

/** Progress lines; the CLI prints them, tests may collect them. */
export type StackLog = (line: string) => void;

/** What `up` did. */
export interface StackUpResult {
  readonly endpoints: ReturnType<typeof stackEndpoints>;
  /** Services this call started; those already running are not listed. */
  readonly started: readonly StackService[];
  /** Whether Maven had to fetch the distributions in this call. */
  readonly downloaded: boolean;
  readonly elapsedMs: number;
}

/**
 * Brings the stack up and waits until each service really answers: a Kafka produce/consume round
 * trip, a schema registration, and `select 1` on PostgreSQL (creating its database if needed).
 *
 * @throws {StackError} with a code: Java or Maven missing, a port taken, a service that did not start.
 */
export async function stackUp(
  config: StackConfig,
  log: StackLog = () => undefined,
  /** Bring up only these services (default: all). */
  only: readonly StackService[] = SERVICES,
): Promise<StackUpResult> {
  const started = Date.now();
  mkdirSync(join(config.dir, "logs"), { recursive: true });

  const database = await ensurePostgresDatabase(config.databaseUrl);
  await postgresSelectOne(config.databaseUrl);
  log(`postgres  ${redactUrl(config.databaseUrl)} answers (database ${database})`);

  const running = new Map<StackService, ProcessRecord>();
  for (const service of SERVICES) {
    const record = readRecord(config.dir, service);
    if (record && isRunning(record)) running.set(service, record);
    else if (record) removeRecord(config.dir, service);
  }
  const toStart = SERVICES.filter((service) => only.includes(service) && !running.has(service));
  for (const service of toStart) await assertPortsFree(config, service);

  let downloaded = false;
  if (toStart.length > 0) downloaded = await ensureDownloads(config, log);

  // Kafka's storage keeps the security it was formatted for; refuse another before anything
  // is written or started. Secured mode: certificates and credentials first; both services and
  // the probes use them.
  const dataDir = join(config.dir, "kafka", "data");
  const formatted = existsSync(join(dataDir, "meta.properties"));
  let credentials: StackCredentials | undefined;
  if (config.security === "sasl_ssl") {
    const material = await ensureSecurityMaterial(config, (wanted) => {
      if (formatted) assertStorageMatches(config, dataDir, wanted);
    });
    credentials = material.credentials;
    if (material.newCertificates)
      log(`security  CA, certificates and credentials made in ${join(config.dir, "tls")}`);
  } else if (formatted) assertStorageMatches(config, dataDir, undefined);

  const startedNow: StackService[] = [];
  const kafkaJava = toStart.includes("kafka")
    ? await findJava({
        purpose: `Apache Kafka ${config.versions.kafka}`,
        minMajor: 17,
        home: config.javaHome,
        homeKey: `${STACK_ENV.javaHome} or JAVA_HOME`,
        searchJvmFolder: false,
      })
    : undefined;
  const registryJava = toStart.includes("registry")
    ? await findJava({
        purpose: `Apicurio Registry ${config.versions.apicurio}`,
        minMajor: 21,
        home: config.registryJavaHome,
        homeKey: STACK_ENV.registryJavaHome,
        searchJvmFolder: true,
      })
    : undefined;

  // The registry's JVM starts slowly: launch it before Kafka's storage is formatted.
  if (registryJava) startRegistry(config, registryJava, log, credentials);
  if (kafkaJava) {
    try {
      await startKafka(config, kafkaJava, log, credentials);
    } catch (error) {
      // Leave nothing half up: the registry this call started goes too.
      if (registryJava) await stackDown(config, () => undefined, ["registry"]);
      throw error;
    }
    startedNow.push("kafka");
  }
  if (registryJava) startedNow.push("registry");

  const endpoints = stackEndpoints(config);
  const probes = probeTargets(config);
  await Promise.all([
    only.includes("kafka")
      ? waitUntil(config, "kafka", () => kafkaRoundTrip(probes.kafka, 15_000)).then(async () => {
          if (credentials === undefined) return;
          const changed = await syncScramUsers(config, credentials);
          if (changed.length > 0) log(`kafka     SCRAM credentials set for ${changed.join(", ")}`);
        })
      : undefined,
    only.includes("registry")
      ? waitUntil(config, "registry", async () => {
          await setGlobalCompatibility(probes.registry, "BACKWARD");
          await registryRoundTrip(probes.registry);
        })
      : undefined,
  ]);
  const secured = config.security === "sasl_ssl";
  if (only.includes("kafka"))
    log(
      `kafka     ${endpoints.kafkaBrokers} answers (Apache Kafka ${config.versions.kafka}, KRaft, ` +
        `${secured ? "SASL_SSL with ACLs, " : ""}produce/consume round trip)`,
    );
  if (only.includes("registry"))
    log(
      `registry  ${endpoints.schemaRegistryUrl} answers (Apicurio Registry ${config.versions.apicurio}, ` +
        `${secured ? "HTTPS with authentication, " : ""}schema registered)`,
    );
  const elapsedMs = Date.now() - started;
  return { endpoints, started: startedNow, downloaded, elapsedMs };
}

/**
 * What the stack's own probes connect with: the addresses (plain stack), or the admin user's
 * credentials and the CA (secured stack).
 */
function probeTargets(config: StackConfig): { kafka: KafkaProbeTarget; registry: RegistryTarget } {
  const endpoints = stackEndpoints(config);
  if (config.security !== "sasl_ssl")
    return { kafka: endpoints.kafkaBrokers, registry: endpoints.schemaRegistryUrl };
  const secured = securedStackEndpoints(config);
  return {
    kafka: stackKafkaSettings(secured, STACK_ADMIN_USER),
    registry: stackRegistryEndpoint(secured, STACK_ADMIN_USER),
  };
}

/** What `down` did per service. */
export type StackDownResult = Record<StackService, "stopped" | "killed" | "not-running">;

/**
 * Stops the processes `up` recorded (and only those; by default every service, else the ones
 * named): SIGTERM, then SIGKILL after 30 s.
 */
export async function stackDown(
  config: StackConfig,
  log: StackLog = () => undefined,
  services: readonly StackService[] = SERVICES,
): Promise<Partial<StackDownResult>> {
  const result: Partial<StackDownResult> = {};
  // The registry first: it is the client of nothing here, but Kafka's controlled shutdown is slower.
  await Promise.all(
    [...services].reverse().map(async (service) => {
      const record = readRecord(config.dir, service);
      const outcome = record ? await stopProcess(record, 30_000) : "not-running";
      removeRecord(config.dir, service);
      result[service] = outcome;
      log(
        `${service.padEnd(9)} ${outcome}${record && outcome !== "not-running" ? ` (pid ${record.pid})` : ""}`,
      );
    }),
  );
  return result;
}

/** One service's state. */
export interface ServiceStatus {
  readonly service: StackService | "postgres";
  readonly running: boolean;
  readonly answers: boolean;
  readonly pid: number | undefined;
  readonly address: string;
  readonly detail: string;
}

/** Reports whether each service runs (by recorded pid) and answers (a quick round trip). */
export async function stackStatus(config: StackConfig): Promise<readonly ServiceStatus[]> {
  const endpoints = stackEndpoints(config);
  let probes: ReturnType<typeof probeTargets> | undefined;
  const check = async (probe: () => Promise<unknown>): Promise<string | undefined> => {
    try {
      await probe();
      return undefined;
    } catch (error) {
      return (error as Error).message;
    }
  };
  const statuses: ServiceStatus[] = [];
  for (const service of SERVICES) {
    const record = readRecord(config.dir, service);
    const running = record !== undefined && isRunning(record);
    const address = service === "kafka" ? endpoints.kafkaBrokers : endpoints.schemaRegistryUrl;
    const failure = await check(() => {
      probes ??= probeTargets(config);
      return service === "kafka"
        ? kafkaRoundTrip(probes.kafka, 10_000)
        : registryRoundTrip(probes.registry);
    });
    statuses.push({
      service,
      running,
      answers: failure === undefined,
      pid: running ? record.pid : undefined,
      address,
      detail:
        failure ??
        (running ? "started by this stack" : "answers, but was not started by this stack"),
    });
  }
  const pgFailure = await check(() => postgresSelectOne(endpoints.databaseUrl));
  statuses.push({
    service: "postgres",
    running: pgFailure === undefined,
    answers: pgFailure === undefined,
    pid: undefined,
    address: redactUrl(endpoints.databaseUrl),
    detail: pgFailure ?? "select 1 answered",
  });
  return statuses;
}

async function assertPortsFree(config: StackConfig, service: StackService): Promise<void> {
  const ports: [number, string][] =
    service === "kafka"
      ? [
          [config.kafkaPort, STACK_ENV.kafkaPort],
          [config.kafkaControllerPort, STACK_ENV.kafkaControllerPort],
        ]
      : [
          [config.registryPort, STACK_ENV.registryPort],
          [config.registryManagementPort, STACK_ENV.registryManagementPort],
        ];
  for (const [port, key] of ports) {
    if (!(await portIsFree(port)))
      throw new StackError(
        "PORT_TAKEN",
        `port ${port} for ${service} is taken by a process this stack did not start. ` +
          `Stop it, or choose another port with ${key}=<port>.`,
      );
  }
}

/**
 * Fetches the distributions through Maven once (Maven's local repository caches the artifacts);
 * later calls find them in the dist folder and return false without running Maven.
 *
 * @throws {StackError} `MAVEN_MISSING` or `DOWNLOAD_FAILED`.
 */
export async function ensureDownloads(
  config: StackConfig,
  log: StackLog = () => undefined,
): Promise<boolean> {
  const pomHash = createHash("sha256").update(readFileSync(POM_PATH)).digest("hex").slice(0, 16);
  const marker = join(config.distDir, `.installed-${pomHash}`);
  if (
    existsSync(marker) &&
    existsSync(kafkaDistHome(config)) &&
    existsSync(registryDistHome(config))
  )
    return false;
  log(
    `fetching Kafka ${config.versions.kafka} and Apicurio Registry ${config.versions.apicurio} through Maven…`,
  );
  try {
    await execFileAsync("mvn", ["-v"], { timeout: 60_000 });
  } catch (error) {
    throw new StackError(
      "MAVEN_MISSING",
      "Maven (mvn) is needed once to fetch Kafka and Apicurio Registry from Maven Central, and it was not found. " +
        "Install it (e.g. apt-get install maven), or point KAFKA_BROKERS, SCHEMA_REGISTRY_URL and DATABASE_URL at running services.",
      { cause: error },
    );
  }
  try {
    await execFileAsync(
      "mvn",
      ["-q", "-B", "-f", POM_PATH, `-Dstack.dist.dir=${config.distDir}`, "package"],
      { timeout: 20 * 60_000, maxBuffer: 64 * 1024 * 1024 },
    );
  } catch (error) {
    const output = error as { stdout?: string; stderr?: string };
    throw new StackError(
      "DOWNLOAD_FAILED",
      `Maven could not fetch the stack's distributions:\n${(output.stdout ?? "") + (output.stderr ?? "")}`,
      { cause: error },
    );
  }
  writeFileSync(marker, new Date().toISOString());
  return true;
}

/**
 * A random Kafka cluster id: 16 bytes, base64url, as Kafka's own `random-uuid` makes them — never
 * starting with '-' (the storage tool would read it as an option) and never the ids Kafka
 * reserves (all zeros, and the metadata topic's id).
 */
export function newKafkaClusterId(): string {
  for (;;) {
    const id = randomBytes(16).toString("base64url");
    if (!id.startsWith("-") && id !== "AAAAAAAAAAAAAAAAAAAAAA" && id !== "AAAAAAAAAAAAAAAAAAAAAQ")
      return id;
  }
}

async function startKafka(
  config: StackConfig,
  java: Java,
  log: StackLog,
  credentials: StackCredentials | undefined,
): Promise<void> {
  const home = join(config.dir, "kafka");
  const dataDir = join(home, "data");
  mkdirSync(dataDir, { recursive: true });
  const properties = join(home, "server.properties");
  const formatted = existsSync(join(dataDir, "meta.properties"));
  const text = kafkaProperties(config, dataDir, credentials);
  // Secured, the file holds passwords: its owner alone reads it.
  if (credentials === undefined) writeFileSync(properties, text);
  else writePrivateFile(properties, text);
  const log4j = join(home, "log4j2.xml");
  writeFileSync(log4j, KAFKA_LOG4J2);
  const classpath = `${join(kafkaDistHome(config), "libs")}/*`;
  const logFile = join(config.dir, "logs", "kafka.log");

  if (!formatted) {
    const clusterId = newKafkaClusterId();
    try {
      await execFileAsync(
        java.executable,
        [
          `-Dlog4j2.configurationFile=${log4j}`,
          "-cp",
          classpath,
          "kafka.tools.StorageTool",
          "format",
          "-t",
          clusterId,
          "-c",
          properties,
          // Secured: both SCRAM credentials of every user, in the cluster's first metadata.
          ...(credentials === undefined ? [] : scramFormatArguments(credentials)),
        ],
        { timeout: 120_000 },
      );
      writeStorageSecurity(
        config,
        credentials === undefined
          ? { security: "none", scram: {} }
          : { security: "sasl_ssl", scram: scramDigests(credentials) },
      );
    } catch (error) {
      const output = error as { stdout?: string; stderr?: string };
      throw new StackError(
        "START_FAILED",
        `formatting Kafka storage failed:\n${(output.stdout ?? "") + (output.stderr ?? "")}`,
        {
          cause: error,
        },
      );
    }
    log(
      `kafka     storage formatted in ${dataDir} (cluster ${clusterId}` +
        `${credentials === undefined ? "" : `, SCRAM users ${Object.keys(credentials.kafka).join(", ")}`})`,
    );
  }
  startDetached({
    stackDir: config.dir,
    service: "kafka",
    command: java.executable,
    args: [
      `-Xms${config.kafkaHeap}`,
      `-Xmx${config.kafkaHeap}`,
      "-XX:+UseG1GC",
      "-XX:MaxGCPauseMillis=20",
      "-Djava.awt.headless=true",
      `-Dlog4j2.configurationFile=${log4j}`,
      `-Dmcpo.stack=${config.dir}`,
      "-cp",
      classpath,
      "kafka.Kafka",
      properties,
    ],
    cwd: home,
    log: logFile,
    marker: `-Dmcpo.stack=${config.dir}`,
  });
  log(`kafka     starting with Java ${java.major} (log: ${logFile})`);
}

/**
 * Refuses to start a storage formatted for the other security mode (its SCRAM users and the
 * inter-broker listener would not match), or whose admin password changed since.
 */
function assertStorageMatches(
  config: StackConfig,
  dataDir: string,
  credentials: StackCredentials | undefined,
): void {
  const recorded = readStorageSecurity(config);
  const startOver = `use another ${STACK_ENV.dir}, or remove ${dataDir} to start over (its topics are lost)`;
  if (recorded.security !== config.security)
    throw new StackError(
      "START_FAILED",
      `Kafka's storage in ${dataDir} was formatted for ${STACK_ENV.security}=${recorded.security}, ` +
        `not ${config.security}: ${startOver}.`,
    );
  if (
    credentials !== undefined &&
    recorded.scram[STACK_ADMIN_USER] !== scramDigests(credentials)[STACK_ADMIN_USER]
  )
    throw new StackError(
      "START_FAILED",
      `the ${STACK_ADMIN_USER} password changed since Kafka's storage in ${dataDir} was formatted ` +
        `(brokers authenticate with it): give the old one in ${STACK_ENV.kafkaUsers} (admin=<password>), or ${startOver}.`,
    );
}

function startRegistry(
  config: StackConfig,
  java: Java,
  log: StackLog,
  credentials: StackCredentials | undefined,
): void {
  const home = join(config.dir, "registry");
  mkdirSync(join(home, "data"), { recursive: true });
  const logFile = join(config.dir, "logs", "registry.log");
  // Quarkus reads config/application.properties in its working folder: the secured settings go
  // there (passwords stay off the command line); the plain stack has none.
  const settings = join(home, "config", "application.properties");
  if (credentials === undefined) rmSync(settings, { force: true });
  else {
    mkdirSync(join(home, "config"), { recursive: true, mode: 0o700 });
    chmodSync(join(home, "config"), 0o700);
    writePrivateFile(settings, registrySecurityProperties(config, credentials));
  }
  startDetached({
    stackDir: config.dir,
    service: "registry",
    command: java.executable,
    args: [
      `-Xmx${config.registryHeap}`,
      "-XX:+UseSerialGC",
      `-Dmcpo.stack=${config.dir}`,
      "-Dquarkus.http.host=127.0.0.1",
      `-Dquarkus.http.port=${config.registryPort}`,
      "-Dquarkus.management.host=127.0.0.1",
      `-Dquarkus.management.port=${config.registryManagementPort}`,
      "-Dquarkus.http.access-log.enabled=false",
      // Persist schemas across restarts: Kafka keeps records that carry these schema ids.
      "-Dapicurio.storage.kind=sql",
      "-Dapicurio.storage.sql.kind=h2",
      `-Dapicurio.datasource.url=jdbc:h2:file:${join(home, "data", "registry")}`,
      "-jar",
      join(registryDistHome(config), "quarkus-run.jar"),
    ],
    cwd: home,
    log: logFile,
    marker: `-Dmcpo.stack=${config.dir}`,
  });
  log(`registry  starting with Java ${java.major} (log: ${logFile})`);
}

/** Polls `probe` until it passes; fails fast when the recorded process has died. */
async function waitUntil(
  config: StackConfig,
  service: StackService,
  probe: () => Promise<void>,
): Promise<void> {
  const deadline = Date.now() + config.startTimeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      await probe();
      return;
    } catch (error) {
      lastError = error;
    }
    const record = readRecord(config.dir, service);
    if (record && !isRunning(record)) {
      removeRecord(config.dir, service);
      throw new StackError(
        "START_FAILED",
        `${service} exited during start-up. Last lines of ${record.log}:\n${tail(record.log)}`,
      );
    }
    if (Date.now() > deadline) {
      throw new StackError(
        "START_TIMEOUT",
        `${service} did not answer within ${config.startTimeoutMs} ms (last error: ${(lastError as Error).message}). ` +
          `See ${record?.log ?? join(config.dir, "logs")}.`,
        { cause: lastError },
      );
    }
    await sleep(500);
  }
}

function kafkaProperties(
  config: StackConfig,
  dataDir: string,
  credentials: StackCredentials | undefined,
): string {
  const listeners =
    credentials === undefined
      ? [
          `listeners=PLAINTEXT://127.0.0.1:${config.kafkaPort},CONTROLLER://127.0.0.1:${config.kafkaControllerPort}`,
          `advertised.listeners=PLAINTEXT://127.0.0.1:${config.kafkaPort}`,
          "controller.listener.names=CONTROLLER",
          "inter.broker.listener.name=PLAINTEXT",
          "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]
      : kafkaSecurityProperties(config, credentials);
  const lines = [
    "# Written by the mcp-observatory local stack on every start; edit stack instead.",
    "process.roles=broker,controller",
    "node.id=1",
    `controller.quorum.voters=1@127.0.0.1:${config.kafkaControllerPort}`,
    ...listeners,
    `log.dirs=${dataDir}`,
    "num.partitions=3",
    // One node: internal topics cannot have more than one replica.
    "offsets.topic.replication.factor=1",
    "offsets.topic.num.partitions=10",
    "transaction.state.log.replication.factor=1",
    "transaction.state.log.min.isr=1",
    "transaction.state.log.num.partitions=10",
    "share.coordinator.state.topic.replication.factor=1",
    "share.coordinator.state.topic.min.isr=1",
    "default.replication.factor=1",
    "min.insync.replicas=1",
    "group.initial.rebalance.delay.ms=0",
    "auto.create.topics.enable=true",
    "delete.topic.enable=true",
    "log.retention.hours=168",
    "log.segment.bytes=104857600",
    "num.network.threads=2",
    "num.io.threads=4",
    "background.threads=4",
    "log.cleaner.threads=1",
    "log.cleaner.dedupe.buffer.size=16777216",
  ];
  return `${lines.join("\n")}\n`;
}

const KAFKA_LOG4J2 = `<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
    <Logger name="org.apache.kafka.storage.internals.log" level="WARN"/>
    <Logger name="org.apache.kafka.raft" level="WARN"/>
    <Root level="INFO">
      <AppenderRef ref="stdout"/>
    </Root>
  </Loggers>
</Configuration>
`;
