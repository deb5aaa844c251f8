/**
 * Secrets never printed: every command of the CLI, run as a real process with a known, unique
 * secret in every secret setting (the password of `DATABASE_URL` in its user-info and its
 * `?password=`, the user-info of `SCHEMA_REGISTRY_URL`, `KAFKA_SASL_PASSWORD`,
 * `KAFKA_SASL_OAUTHBEARER_TOKEN`, `KAFKA_SSL_KEY_PASSWORD`, `SCHEMA_REGISTRY_PASSWORD`,
 * `SCHEMA_REGISTRY_TOKEN`, and the same in a config file), with and without `--verbose`, and with
 * settings that make a config error. No secret may appear in stdout, stderr or any file the
 * command wrote.
 *
 * Each command fails fast and touches nothing: Kafka is a socket of this test that drops every
 * connection (the secured runs' TLS handshake fails), or the shared broker over plaintext without
 * credentials (metadata only); the registry is an HTTP server of this test that refuses (401) or
 * answers an empty list, and records the credentials it was sent (so the secrets were in play);
 * PostgreSQL is a port where nothing listens. To cover a new command, add it to COMMANDS.
 */
import { randomUUID } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { runCli, type CommandResult } from "./support/cli.js";
import { services, testKafka, uniqueName } from "./support/isolation.js";

/** A command of the CLI, as the runs need to know it. */
interface CommandCase {
  readonly name: string;
  readonly args: readonly string[];
  /** It talks to Kafka: it may also run against the shared broker over plaintext. */
  readonly kafka: boolean;
  /**
   * After the registry it stops at PostgreSQL (nothing listens there) before doing anything: the
   * registry may let it through. Any other command is refused there (401), so none gets as far
   * as creating a topic on the shared broker.
   */
  readonly stopsAtPostgres?: boolean;
}

/**
 * Every command of the CLI that reads settings. Each runs twice (see plannedRuns): once with
 * settings that reach as far as they can, once with a config error, `--verbose` one of the two.
 */
const COMMANDS: readonly CommandCase[] = [
  { name: "stack status", args: ["stack", "status"], kafka: false },
  { name: "migrate", args: ["migrate"], kafka: false },
  { name: "report", args: ["report", "--since", "1h"], kafka: false },
  { name: "topics create", args: ["topics", "create"], kafka: true },
  { name: "processor", args: ["processor"], kafka: true },
  { name: "sink", args: ["sink"], kafka: true, stopsAtPostgres: true },
  {
    name: "replay --dry-run",
    args: ["replay", "--verify", "--dry-run"],
    kafka: true,
    stopsAtPostgres: true,
  },
  { name: "alerts tail", args: ["alerts", "tail", "--timeout", "1s"], kafka: true },
  { name: "demo", args: ["demo", "--duration", "1s"], kafka: true },
];

const RUN = randomUUID().slice(0, 8);
/** One distinct secret per setting, so a leak names the setting. */
const SECRETS = {
  databasePassword: `dbpw-${RUN}-Q1x`,
  databaseQueryPassword: `dbqp-${RUN}-Q2x`,
  registryUrlPassword: `rgup-${RUN}-Q3x`,
  kafkaSaslPassword: `sasl-${RUN}-Q4x`,
  kafkaOauthBearerToken: `oatk-${RUN}-Q5x`,
  kafkaSslKeyPassword: `sslk-${RUN}-Q6x`,
  registryPassword: `rgpw-${RUN}-Q7x`,
  registryToken: `rgtk-${RUN}-Q8x`,
  fileSaslPassword: `fsas-${RUN}-Q9x`,
  fileRegistryToken: `frtk-${RUN}-Q0x`,
} as const;
const REGISTRY_USER = "registry-user";

/** What must never be printed: each secret, and the Basic credentials made of one. */
const FORBIDDEN: readonly (readonly [string, string])[] = [
  ...Object.entries(SECRETS),
  ...(["registryUrlPassword", "registryPassword"] as const).map(
    (name) =>
      [
        `${name} as Basic credentials`,
        Buffer.from(`${REGISTRY_USER}:${SECRETS[name]}`).toString("base64"),
      ] as const,
  ),
];

type Variant =
  | "secured"
  | "oauth"
  | "plain-basic"
  | "plain-token"
  | "config-file"
  | "conflict"
  | "bad-registry-url"
  | "bad-database-url"
  | "secret-in-file-setting"
  | "bad-config-file";

/** Settings that reach a service, in turn: for commands that talk to Kafka, and for the others. */
const REACHING_KAFKA: readonly Variant[] = [
  "plain-basic",
  "secured",
  "oauth",
  "plain-token",
  "config-file",
];
const REACHING_OTHERS: readonly Variant[] = ["oauth", "secured", "config-file"];
/** Settings that make a config error, in turn. */
const CONFIG_ERRORS: readonly Variant[] = [
  "conflict",
  "bad-registry-url",
  "bad-database-url",
  "secret-in-file-setting",
  "bad-config-file",
];

interface Run {
  readonly command: CommandCase;
  readonly variant: Variant;
  readonly verbose: boolean;
}

interface Finished extends Run, CommandResult {
  readonly label: string;
  readonly ms: number;
}

let scratch: string;
let kafkaDrop: Server | undefined;
let registry: HttpServer | undefined;
/** The Authorization headers the registry was sent. */
const registryAuthorizations = new Set<string>();
/** The first byte of each connection to the dropping Kafka (22: a TLS handshake). */
const kafkaFirstBytes: number[] = [];
/** Ports where nothing listens: PostgreSQL's, and the local stack's that `stack status` probes. */
let closedPort: number;
let stackPorts: readonly number[] = [];
let topicPrefix: string;
let finished: Finished[] = [];
let wallMs = 0;

function listen(server: Server | HttpServer): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      resolve((server.address() as AddressInfo).port);
    });
  });
}

async function freePort(): Promise<number> {
  const server = createServer();
  const port = await listen(server);
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The environment of one run: the parent's without any setting of ours, then the variant's. */
function envOf(
  command: CommandCase,
  variant: Variant,
  registryPort: number,
  kafkaPort: number,
): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env))
    if (!/^(KAFKA_|SCHEMA_REGISTRY_|DATABASE_URL|MCPO_|STACK_|PG|LOG_LEVEL)/.test(name))
      base[name] = value;
  const registryAt = (path: "deny" | "allow", userInfo = ""): string =>
    `http://${userInfo}127.0.0.1:${registryPort}/${path}/apis/ccompat/v7`;
  const common: NodeJS.ProcessEnv = {
    ...base,
    HOME: join(scratch, "home"),
    STACK_DIR: join(scratch, "stack"),
    // `stack status` probes the local stack's ports: nothing listens there.
    STACK_KAFKA_PORT: String(stackPorts[0]),
    STACK_KAFKA_CONTROLLER_PORT: String(stackPorts[1]),
    STACK_REGISTRY_PORT: String(stackPorts[2]),
    STACK_REGISTRY_MANAGEMENT_PORT: String(stackPorts[3]),
    MCPO_TOPIC_PREFIX: topicPrefix,
    LOG_LEVEL: "debug",
    // Every Kafka secret in every run (read only where the mechanism needs it).
    KAFKA_SASL_USERNAME: "someone",
    KAFKA_SASL_PASSWORD: SECRETS.kafkaSaslPassword,
    KAFKA_SASL_OAUTHBEARER_TOKEN: SECRETS.kafkaOauthBearerToken,
    KAFKA_SSL_KEY_PASSWORD: SECRETS.kafkaSslKeyPassword,
    DATABASE_URL: `postgresql://writer:${SECRETS.databasePassword}@127.0.0.1:${closedPort}/mcpo?sslmode=disable&password=${SECRETS.databaseQueryPassword}`,
  };
  const secured: NodeJS.ProcessEnv = {
    ...common,
    KAFKA_BROKERS: `127.0.0.1:${kafkaPort}`,
    KAFKA_SECURITY_PROTOCOL: "SASL_SSL",
    KAFKA_SASL_MECHANISM: "SCRAM-SHA-512",
    SCHEMA_REGISTRY_URL: registryAt("deny", `${REGISTRY_USER}:${SECRETS.registryUrlPassword}@`),
  };
  const plain: NodeJS.ProcessEnv = {
    ...common,
    // The shared broker over plaintext, no credentials: the runs stop at the registry or
    // PostgreSQL before any topic is created.
    KAFKA_BROKERS: services().kafkaBrokers,
  };
  switch (variant) {
    case "secured":
      return secured;
    case "oauth":
      return {
        ...secured,
        KAFKA_SASL_MECHANISM: "OAUTHBEARER",
        SCHEMA_REGISTRY_URL: registryAt("deny"),
        SCHEMA_REGISTRY_TOKEN: SECRETS.registryToken,
      };
    case "plain-basic":
    case "plain-token":
      return {
        ...plain,
        SCHEMA_REGISTRY_URL: registryAt(command.stopsAtPostgres === true ? "allow" : "deny"),
        ...(variant === "plain-basic"
          ? {
              SCHEMA_REGISTRY_USERNAME: REGISTRY_USER,
              SCHEMA_REGISTRY_PASSWORD: SECRETS.registryPassword,
            }
          : { SCHEMA_REGISTRY_TOKEN: SECRETS.registryToken }),
      };
    case "config-file":
      return { ...common, MCPO_CONFIG: join(scratch, "secrets.yaml") };
    case "bad-config-file":
      return { ...common, MCPO_CONFIG: join(scratch, "broken.yaml") };
    case "conflict":
      // Every secret at once: URL credentials, a user name and password, and a token.
      return {
        ...secured,
        SCHEMA_REGISTRY_USERNAME: REGISTRY_USER,
        SCHEMA_REGISTRY_PASSWORD: SECRETS.registryPassword,
        SCHEMA_REGISTRY_TOKEN: SECRETS.registryToken,
      };
    case "bad-registry-url":
      return {
        ...secured,
        SCHEMA_REGISTRY_URL: `https://${REGISTRY_USER}:${SECRETS.registryUrlPassword}@`,
      };
    case "bad-database-url":
      return {
        ...secured,
        DATABASE_URL: `mysql://writer:${SECRETS.databasePassword}@127.0.0.1:${closedPort}/mcpo?password=${SECRETS.databaseQueryPassword}`,
      };
    case "secret-in-file-setting":
      // A user who put the password itself where its file's name belongs.
      return {
        ...secured,
        KAFKA_SASL_PASSWORD: undefined,
        KAFKA_SASL_PASSWORD_FILE: SECRETS.kafkaSaslPassword,
      };
  }
}

/**
 * Two runs per command: settings that reach a service (the variants in turn), and a config error
 * (in turn), `--verbose` on one of the two (alternately): every command runs with and without it,
 * and (in the orders above) nearly every variant too, in eighteen processes.
 */
function plannedRuns(): Run[] {
  const turns = new Map<readonly Variant[], number>();
  const nextOf = (variants: readonly Variant[]): Variant => {
    const turn = turns.get(variants) ?? 0;
    turns.set(variants, turn + 1);
    return variants[turn % variants.length] ?? "secured";
  };
  return COMMANDS.flatMap((command, i) => [
    {
      command,
      variant: nextOf(command.kafka ? REACHING_KAFKA : REACHING_OTHERS),
      verbose: i % 2 === 0,
    },
    { command, variant: nextOf(CONFIG_ERRORS), verbose: i % 2 === 1 },
  ]);
}

async function runAll(runs: readonly Run[], concurrency: number): Promise<Finished[]> {
  const results: Finished[] = [];
  let next = 0;
  const registryPort = (registry?.address() as AddressInfo).port;
  const kafkaPort = (kafkaDrop?.address() as AddressInfo).port;
  const worker = async (): Promise<void> => {
    for (let index = next++; index < runs.length; index = next++) {
      const planned = runs[index] as Run;
      const args = [...(planned.verbose ? ["--verbose"] : []), ...planned.command.args];
      const started = Date.now();
      const result = await runCli(
        args,
        envOf(planned.command, planned.variant, registryPort, kafkaPort),
        45_000,
      );
      results.push({
        ...planned,
        ...result,
        label: `${planned.command.name} [${planned.variant}${planned.verbose ? ", --verbose" : ""}]`,
        ms: Date.now() - started,
      });
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return results;
}

/** Every file under a folder, with its text. */
function filesUnder(dir: string): { path: string; text: string }[] {
  const found: { path: string; text: string }[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...filesUnder(path));
    else if (entry.isFile()) found.push({ path, text: readFileSync(path, "latin1") });
  }
  return found;
}

function leaksIn(where: string, text: string): string[] {
  return FORBIDDEN.filter(([, secret]) => text.includes(secret)).map(([name, secret]) => {
    const at = text.indexOf(secret);
    const context = text
      .slice(Math.max(0, at - 80), at + secret.length + 40)
      .split(secret)
      .join(`<${name}>`);
    return `${where}: ${name} in …${context}…`;
  });
}

describe("no command prints a secret", () => {
  beforeAll(async () => {
    scratch = mkdtempSync(join(tmpdir(), "mcpo-secret-leak-"));
    mkdirSync(join(scratch, "home"));
    mkdirSync(join(scratch, "stack"));
    topicPrefix = `${uniqueName("leak")}.`;
    const ports = new Set<number>();
    while (ports.size < 5) ports.add(await freePort());
    [closedPort = 0, ...stackPorts] = [...ports];
    kafkaDrop = createServer((socket: Socket) => {
      socket.once("data", (chunk: Buffer) => {
        kafkaFirstBytes.push(chunk[0] ?? -1);
        socket.destroy();
      });
      socket.on("error", () => undefined);
    });
    registry = createHttpServer((request, response) => {
      if (request.headers.authorization) registryAuthorizations.add(request.headers.authorization);
      if (request.url?.startsWith("/allow/"))
        response
          .writeHead(200, { "content-type": "application/vnd.schemaregistry.v1+json" })
          .end("[]");
      else
        response
          .writeHead(401, { "content-type": "application/json" })
          .end('{"error_code":40101,"message":"Unauthorized"}');
    });
    const kafkaPort = await listen(kafkaDrop);
    const registryPort = await listen(registry);
    writeFileSync(
      join(scratch, "secrets.yaml"),
      [
        `brokers: 127.0.0.1:${kafkaPort}`,
        `schemaRegistryUrl: http://127.0.0.1:${registryPort}/deny/apis/ccompat/v7`,
        `databaseUrl: postgresql://writer:${SECRETS.databasePassword}@127.0.0.1:${closedPort}/mcpo`,
        "kafka:",
        "  securityProtocol: SASL_SSL",
        "  saslMechanism: PLAIN",
        "  saslUsername: someone",
        `  saslPassword: ${SECRETS.fileSaslPassword}`,
        "schemaRegistry:",
        `  token: ${SECRETS.fileRegistryToken}`,
        "",
      ].join("\n"),
    );
    writeFileSync(
      join(scratch, "broken.yaml"),
      `kafka:\n  saslPassword: ${SECRETS.fileSaslPassword}\n   saslUsername: [\n`,
    );
    const started = Date.now();
    finished = await runAll(plannedRuns(), 4);
    wallMs = Date.now() - started;
  }, 180_000);

  afterAll(async () => {
    for (const server of [kafkaDrop, registry])
      await new Promise((resolve) => {
        if (server) server.close(resolve);
        else resolve(undefined);
      });
    if (scratch) rmSync(scratch, { recursive: true, force: true });
    // Nothing should have been created; should a command get that far, leave no topic behind.
    const admin = testKafka().admin();
    await admin.connect();
    try {
      const ours = (await admin.listTopics()).filter((topic) => topic.startsWith(topicPrefix));
      if (ours.length > 0) await admin.deleteTopics({ topics: ours });
    } finally {
      await admin.disconnect();
    }
  });

  it("appears in no stdout, stderr or file the commands wrote", () => {
    expect(finished.length).toBe(plannedRuns().length);
    const leaks = finished.flatMap((run) => [
      ...leaksIn(`${run.label} stdout`, run.stdout),
      ...leaksIn(`${run.label} stderr`, run.stderr),
    ]);
    const written = filesUnder(scratch).filter(
      ({ path }) => !path.endsWith("secrets.yaml") && !path.endsWith("broken.yaml"),
    );
    for (const file of written) leaks.push(...leaksIn(file.path, file.text));
    expect(leaks).toEqual([]);
  });

  it("every run failed fast with something to say (config errors with exit code 2)", () => {
    for (const run of finished) {
      const output = `${run.stdout}${run.stderr}`;
      expect(run.code, `${run.label}: ${output}`).not.toBe(0);
      expect(output.trim(), run.label).not.toBe("");
      if (CONFIG_ERRORS.includes(run.variant) || run.variant === "bad-config-file")
        expect(run.code, `${run.label}: ${output}`).toBe(2);
      if (run.verbose && run.command.name !== "stack status")
        expect(run.stderr, `${run.label} prints a stack`).toMatch(/\n\s+at /);
    }
    console.info(
      `secret-leak: ${finished.length} runs in ${(wallMs / 1000).toFixed(1)} s (slowest ${Math.max(...finished.map((run) => run.ms))} ms)`,
    );
  });

  it("the secrets were in play: the registry was sent them, the brokers were asked for TLS", () => {
    const basic = (password: string): string =>
      `Basic ${Buffer.from(`${REGISTRY_USER}:${password}`).toString("base64")}`;
    expect([...registryAuthorizations]).toEqual(
      expect.arrayContaining([basic(SECRETS.registryPassword), `Bearer ${SECRETS.registryToken}`]),
    );
    // 22: a TLS record (ClientHello) from the SASL_SSL runs.
    expect(kafkaFirstBytes).toContain(22);
  });
});
