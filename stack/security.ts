/**
 * The secured mode of the local stack (`STACK_SECURITY=sasl_ssl`): TLS material, credentials,
 * Kafka's SASL_SSL listener with SCRAM, PLAIN and OAUTHBEARER and the `StandardAuthorizer`, the
 * registry over HTTPS with basic and bearer authentication, ACLs granted with Kafka's own tool,
 * and what a client needs to connect.
 *
 * Everything lives in `<STACK_DIR>/tls/` (mode 0700): a CA, a server certificate for 127.0.0.1
 * and localhost signed by it, a PKCS12 keystore for Kafka, a client certificate (mutual TLS), an
 * RSA key pair the registry verifies bearer tokens with, `credentials.json` and one password file
 * per user. Keys, passwords and tokens are files of mode 0600. It is a test and development
 * stack: its OAUTHBEARER accepts unsigned tokens.
 *
 * @module
 */
import { execFile } from "node:child_process";
import { createHash, createPrivateKey, createSign, randomBytes } from "node:crypto";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";

import { ENV_NAMES, rememberSecret } from "../config/index.js";
import { SECURITY_ENV, type KafkaSasl, type RegistryEndpoint } from "../config/security.js";
import type { KafkaSettings } from "../kafka/index.js";
import {
  STACK_ADMIN_USER,
  STACK_ENV,
  kafkaDistHome,
  stackEndpoints,
  type RegistryRole,
  type StackConfig,
} from "./config.js";
import { findJava, StackError } from "./process.js";

const execFileAsync = promisify(execFile);

/** The files of the secured stack, under `<STACK_DIR>/tls/`. */
export interface StackTlsFiles {
  readonly dir: string;
  /** The CA's certificate (PEM): what clients trust. */
  readonly caCert: string;
  readonly caKey: string;
  /** The server certificate (SAN IP:127.0.0.1, DNS:localhost) and key, PEM: Kafka and the registry. */
  readonly serverCert: string;
  readonly serverKey: string;
  /** The server's key and chain as PKCS12, for Kafka (password in credentials.json). */
  readonly keystore: string;
  /** A client certificate and key (PEM) signed by the CA, for mutual TLS. */
  readonly clientCert: string;
  readonly clientKey: string;
  /** The RSA key pair of registry bearer tokens: the registry verifies with the public key. */
  readonly tokenPrivateKey: string;
  readonly tokenPublicKey: string;
  /** Every user's password, and the keystore's (JSON, 0600). */
  readonly credentials: string;
  /** Kafka client properties of the admin user, for Kafka's command-line tools. */
  readonly adminClientProperties: string;
  /** One file per user holding its password alone (for `…_PASSWORD_FILE` settings). */
  readonly secretsDir: string;
}

export function stackTlsFiles(config: StackConfig): StackTlsFiles {
  const dir = join(config.dir, "tls");
  return {
    dir,
    caCert: join(dir, "ca.crt"),
    caKey: join(dir, "ca.key"),
    serverCert: join(dir, "server.crt"),
    serverKey: join(dir, "server.key"),
    keystore: join(dir, "server.p12"),
    clientCert: join(dir, "client.crt"),
    clientKey: join(dir, "client.key"),
    tokenPrivateKey: join(dir, "registry-token.key"),
    tokenPublicKey: join(dir, "registry-token.pub"),
    credentials: join(dir, "credentials.json"),
    adminClientProperties: join(dir, "admin-client.properties"),
    secretsDir: join(dir, "secrets"),
  };
}

/** The passwords of the secured stack's users (the content of `credentials.json`). */
export interface StackCredentials {
  /** Kafka users by name (`admin` among them): SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN. */
  readonly kafka: Readonly<Record<string, string>>;
  /** Registry users by name (`admin` among them), with their role. */
  readonly registry: Readonly<
    Record<string, { readonly password: string; readonly role: RegistryRole }>
  >;
  /** The PKCS12 keystore's password (Kafka's `ssl.keystore.password`). */
  readonly keystorePassword: string;
}

/** A random password: 24 base64url characters (144 bits). */
function newPassword(): string {
  return randomBytes(18).toString("base64url");
}

/** Writes a file only its owner can read, replacing it whole (never half-written). */
export function writePrivateFile(path: string, content: string): void {
  const temporary = `${path}.${process.pid}.tmp`;
  writeFileSync(temporary, content, { mode: 0o600 });
  chmodSync(temporary, 0o600);
  renameSync(temporary, path);
}

async function openssl(args: readonly string[], cwd: string): Promise<void> {
  try {
    await execFileAsync("openssl", [...args], { cwd, timeout: 60_000 });
  } catch (error) {
    const failure = error as NodeJS.ErrnoException & { stderr?: string };
    throw new StackError(
      "START_FAILED",
      failure.code === "ENOENT"
        ? "the secured stack (STACK_SECURITY=sasl_ssl) makes its certificates with openssl, and no openssl was found: install it (e.g. apt-get install openssl)"
        : `openssl ${args[0] ?? ""} failed: ${failure.stderr ?? failure.message}`,
      { cause: error },
    );
  }
}

/**
 * Makes the CA, the server and client certificates and the token key pair once (all of them
 * again when one is missing: a new CA invalidates the others). Certificates last ten years.
 */
async function ensureCertificates(files: StackTlsFiles): Promise<boolean> {
  const all = [
    files.caCert,
    files.caKey,
    files.serverCert,
    files.serverKey,
    files.clientCert,
    files.clientKey,
    files.tokenPrivateKey,
    files.tokenPublicKey,
  ];
  if (all.every((path) => existsSync(path))) return false;
  const work = join(files.dir, `.making-${process.pid}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { mode: 0o700 });
  try {
    const days = "3650";
    await openssl(
      [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        days,
        "-sha256",
        "-subj",
        "/CN=mcp-observatory local stack CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
      ],
      work,
    );
    for (const [name, subject, usage, altNames] of [
      ["server", "/CN=localhost", "serverAuth,clientAuth", "IP:127.0.0.1,DNS:localhost"],
      ["client", "/CN=mcpo-stack-client", "clientAuth", undefined],
    ] as const) {
      writeFileSync(
        join(work, `${name}.ext`),
        [
          "basicConstraints=CA:FALSE",
          "keyUsage=critical,digitalSignature,keyEncipherment",
          `extendedKeyUsage=${usage}`,
          ...(altNames === undefined ? [] : [`subjectAltName=${altNames}`]),
          "",
        ].join("\n"),
      );
      await openssl(
        [
          "req",
          "-newkey",
          "rsa:2048",
          "-nodes",
          "-keyout",
          `${name}.key`,
          "-out",
          `${name}.csr`,
          "-subj",
          subject,
        ],
        work,
      );
      await openssl(
        [
          "x509",
          "-req",
          "-in",
          `${name}.csr`,
          "-CA",
          "ca.crt",
          "-CAkey",
          "ca.key",
          "-set_serial",
          `0x${randomBytes(16).toString("hex")}`,
          "-days",
          days,
          "-sha256",
          "-extfile",
          `${name}.ext`,
          "-out",
          `${name}.crt`,
        ],
        work,
      );
    }
    await openssl(
      [
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "registry-token.key",
      ],
      work,
    );
    await openssl(
      ["pkey", "-in", "registry-token.key", "-pubout", "-out", "registry-token.pub"],
      work,
    );
    for (const path of all) {
      const name = path.slice(files.dir.length + 1);
      const from = join(work, name);
      chmodSync(from, name.endsWith(".key") ? 0o600 : 0o644);
      renameSync(from, path);
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return true;
}

function readCredentials(path: string): Partial<StackCredentials> {
  if (!existsSync(path)) return {};
  try {
    const value: unknown = JSON.parse(readFileSync(path, "utf8"));
    return typeof value === "object" && value !== null ? value : {};
  } catch (error) {
    throw new StackError(
      "START_FAILED",
      `${path} is not readable JSON (${(error as Error).name}); remove it to have new passwords made`,
      { cause: error },
    );
  }
}

/**
 * The credentials of the configured users: a password given in the settings, else the one kept
 * in credentials.json, else a new random one; written back to credentials.json and to one
 * password file per user. Every password is remembered as a secret (redacted from messages).
 */
function ensureCredentials(
  config: StackConfig,
  files: StackTlsFiles,
  verify: (credentials: StackCredentials) => void,
): StackCredentials {
  const kept = readCredentials(files.credentials);
  const kafka: Record<string, string> = {};
  for (const user of config.kafkaUsers)
    kafka[user.name] = user.password ?? kept.kafka?.[user.name] ?? newPassword();
  const registry: Record<string, { password: string; role: RegistryRole }> = {};
  for (const user of config.registryUsers)
    registry[user.name] = {
      password: user.password ?? kept.registry?.[user.name]?.password ?? newPassword(),
      role: user.role,
    };
  const credentials: StackCredentials = {
    kafka,
    registry,
    keystorePassword: kept.keystorePassword ?? newPassword(),
  };
  verify(credentials);
  const text = `${JSON.stringify(credentials, null, 2)}\n`;
  if (!existsSync(files.credentials) || readFileSync(files.credentials, "utf8") !== text)
    writePrivateFile(files.credentials, text);
  mkdirSync(files.secretsDir, { recursive: true, mode: 0o700 });
  for (const [name, password] of Object.entries(kafka))
    writePrivateFile(join(files.secretsDir, `kafka-${name}.password`), password);
  for (const [name, { password }] of Object.entries(registry))
    writePrivateFile(join(files.secretsDir, `registry-${name}.password`), password);
  rememberCredentials(credentials);
  return credentials;
}

function rememberCredentials(credentials: StackCredentials): void {
  for (const password of Object.values(credentials.kafka)) rememberSecret(password);
  for (const { password } of Object.values(credentials.registry)) rememberSecret(password);
  rememberSecret(credentials.keystorePassword);
}

/**
 * Makes (once) the TLS material and credentials of the secured stack and rewrites the files
 * derived from them: the PKCS12 keystore, the admin client properties, the password files.
 * `verify` sees the credentials before anything is written and may refuse them by throwing.
 *
 * @returns the credentials, and whether new certificates were made.
 * @throws {StackError} `START_FAILED` when openssl is missing or fails.
 */
export async function ensureSecurityMaterial(
  config: StackConfig,
  verify: (credentials: StackCredentials) => void = () => undefined,
): Promise<{ credentials: StackCredentials; newCertificates: boolean }> {
  const files = stackTlsFiles(config);
  mkdirSync(files.dir, { recursive: true, mode: 0o700 });
  chmodSync(files.dir, 0o700);
  const newCertificates = await ensureCertificates(files);
  const credentials = ensureCredentials(config, files, verify);
  // The keystore is cheap to make: made on every start, so it always matches the password kept.
  const passwordFile = join(files.dir, `.keystore-${process.pid}.password`);
  writePrivateFile(passwordFile, credentials.keystorePassword);
  try {
    const temporary = `${files.keystore}.${process.pid}.tmp`;
    await openssl(
      [
        "pkcs12",
        "-export",
        "-in",
        files.serverCert,
        "-inkey",
        files.serverKey,
        "-certfile",
        files.caCert,
        "-name",
        "kafka",
        "-out",
        temporary,
        "-passout",
        `file:${passwordFile}`,
      ],
      files.dir,
    );
    chmodSync(temporary, 0o600);
    renameSync(temporary, files.keystore);
  } finally {
    rmSync(passwordFile, { force: true });
  }
  writePrivateFile(
    files.adminClientProperties,
    kafkaClientProperties(files, STACK_ADMIN_USER, adminPassword(credentials)),
  );
  return { credentials, newCertificates };
}

function adminPassword(credentials: StackCredentials): string {
  const password = credentials.kafka[STACK_ADMIN_USER];
  if (password === undefined) throw new Error(`credentials without the ${STACK_ADMIN_USER} user`);
  return password;
}

/** Kafka client properties (Java clients, Kafka's tools) of a user with SCRAM-SHA-512 and the CA. */
function kafkaClientProperties(files: StackTlsFiles, user: string, password: string): string {
  return [
    "security.protocol=SASL_SSL",
    "sasl.mechanism=SCRAM-SHA-512",
    `sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="${user}" password="${password}";`,
    "ssl.truststore.type=PEM",
    `ssl.truststore.location=${files.caCert}`,
    "",
  ].join("\n");
}

/** The SCRAM mechanisms every Kafka user of the secured stack has credentials for. */
const SCRAM_MECHANISMS = ["SCRAM-SHA-256", "SCRAM-SHA-512"] as const;

/** The storage tool's `--add-scram` arguments: both SCRAM credentials of every Kafka user. */
export function scramFormatArguments(credentials: StackCredentials): string[] {
  const args: string[] = [];
  for (const [name, password] of Object.entries(credentials.kafka))
    for (const mechanism of SCRAM_MECHANISMS)
      args.push("--add-scram", `${mechanism}=[name=${name},password=${password}]`);
  return args;
}

/** What the storage was formatted for, kept next to it (`<STACK_DIR>/kafka/security.json`). */
export interface KafkaStorageSecurity {
  readonly security: StackConfig["security"];
  /** SHA-256 of `name:password` of each SCRAM user in the cluster's metadata. */
  readonly scram: Readonly<Record<string, string>>;
}

export function scramDigests(credentials: StackCredentials): Record<string, string> {
  return Object.fromEntries(
    Object.entries(credentials.kafka).map(([name, password]) => [
      name,
      createHash("sha256").update(`${name}:${password}`).digest("hex"),
    ]),
  );
}

export function storageSecurityPath(config: StackConfig): string {
  return join(config.dir, "kafka", "security.json");
}

/** The recorded security of a formatted storage (`none` for storage formatted before it was recorded). */
export function readStorageSecurity(config: StackConfig): KafkaStorageSecurity {
  const path = storageSecurityPath(config);
  if (!existsSync(path)) return { security: "none", scram: {} };
  return JSON.parse(readFileSync(path, "utf8")) as KafkaStorageSecurity;
}

export function writeStorageSecurity(config: StackConfig, security: KafkaStorageSecurity): void {
  writePrivateFile(storageSecurityPath(config), `${JSON.stringify(security, null, 2)}\n`);
}

/**
 * The listener, SASL, TLS and authorizer lines of `server.properties` in secured mode. The
 * client listener is SASL_SSL with PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and OAUTHBEARER; brokers
 * talk to each other on it as `admin` with SCRAM-SHA-512; the controller listener, on loopback,
 * takes `admin` alone, with SASL PLAIN over plaintext. OAUTHBEARER uses Kafka's unsecured validator, the
 * default when no handler is configured: it accepts unsigned JWTs (`alg: none`) whose `sub` is
 * the principal — for tests only, never for a real cluster.
 */
export function kafkaSecurityProperties(
  config: StackConfig,
  credentials: StackCredentials,
): string[] {
  const files = stackTlsFiles(config);
  const admin = adminPassword(credentials);
  const plainUsers = Object.entries(credentials.kafka)
    .map(([name, password]) => ` user_${name}="${password}"`)
    .join("");
  return [
    `listeners=SASL_SSL://127.0.0.1:${config.kafkaPort},CONTROLLER://127.0.0.1:${config.kafkaControllerPort}`,
    `advertised.listeners=SASL_SSL://127.0.0.1:${config.kafkaPort}`,
    "controller.listener.names=CONTROLLER",
    "inter.broker.listener.name=SASL_SSL",
    "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
    "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
    // The controller listener authenticates too (PLAIN: SCRAM credentials live in the metadata
    // the controller serves), admin alone; otherwise any local process could alter ACLs there.
    "sasl.mechanism.controller.protocol=PLAIN",
    "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
    `listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="${STACK_ADMIN_USER}" password="${admin}" user_${STACK_ADMIN_USER}="${admin}";`,
    "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER",
    `listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="${STACK_ADMIN_USER}" password="${admin}"${plainUsers};`,
    "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;",
    `listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="${STACK_ADMIN_USER}" password="${admin}";`,
    // Tests only: no server callback handler configured means the unsecured validator.
    `listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="${STACK_ADMIN_USER}";`,
    "ssl.keystore.type=PKCS12",
    `ssl.keystore.location=${files.keystore}`,
    `ssl.keystore.password=${credentials.keystorePassword}`,
    `ssl.key.password=${credentials.keystorePassword}`,
    "ssl.truststore.type=PEM",
    `ssl.truststore.location=${files.caCert}`,
    // A client may present a certificate signed by the CA (mutual TLS); SASL names the principal.
    "listener.name.sasl_ssl.ssl.client.auth=requested",
    "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
    `super.users=User:${STACK_ADMIN_USER}`,
    "allow.everyone.if.no.acl.found=false",
  ];
}

/** Apicurio's role names. */
const REGISTRY_ROLES: Readonly<Record<RegistryRole, string>> = {
  admin: "sr-admin",
  developer: "sr-developer",
  readonly: "sr-readonly",
};

/** The issuer registry bearer tokens of the secured stack carry (and the registry requires). */
export const REGISTRY_TOKEN_ISSUER = "mcp-observatory-local-stack";

/**
 * The registry's settings in secured mode, for `<registry>/config/application.properties`
 * (Quarkus reads that file from its working folder; the passwords stay off the command line):
 * HTTPS only with the CA-signed certificate; HTTP basic authentication against the configured
 * users (Quarkus's embedded users; Apicurio reads `quarkus.http.auth.basic` at run time, Quarkus
 * warns it is a build-time property); bearer tokens verified locally with the stack's public key
 * (no identity server); Apicurio's role-based authorization with the users' roles (a token's
 * roles are its `groups` claim).
 */
export function registrySecurityProperties(
  config: StackConfig,
  credentials: StackCredentials,
): string {
  const files = stackTlsFiles(config);
  const publicKey = readFileSync(files.tokenPublicKey, "utf8")
    .split("\n")
    .filter((line) => line !== "" && !line.startsWith("-----"))
    .join("");
  const lines = [
    "# Written by the mcp-observatory local stack on every start (STACK_SECURITY=sasl_ssl).",
    `quarkus.http.ssl-port=${config.registryPort}`,
    `quarkus.http.ssl.certificate.files=${files.serverCert}`,
    `quarkus.http.ssl.certificate.key-files=${files.serverKey}`,
    "quarkus.http.insecure-requests=disabled",
    "quarkus.http.auth.basic=true",
    "quarkus.security.users.embedded.enabled=true",
    "quarkus.security.users.embedded.plain-text=true",
    "apicurio.auth.role-based-authorization=true",
    "apicurio.auth.role-source=token",
    "quarkus.oidc.tenant-enabled=true",
    `quarkus.oidc.public-key=${publicKey}`,
    `quarkus.oidc.token.issuer=${REGISTRY_TOKEN_ISSUER}`,
  ];
  for (const [name, { password, role }] of Object.entries(credentials.registry)) {
    lines.push(`quarkus.security.users.embedded.users.${name}=${password}`);
    lines.push(`quarkus.security.users.embedded.roles.${name}=${REGISTRY_ROLES[role]}`);
  }
  return `${lines.join("\n")}\n`;
}

/** What a client needs to reach the secured stack. */
export interface SecuredStackEndpoints {
  /** `127.0.0.1:<STACK_KAFKA_PORT>`, a SASL_SSL listener. */
  readonly kafkaBrokers: string;
  /** `https://127.0.0.1:<STACK_REGISTRY_PORT>/apis/ccompat/v7`. */
  readonly schemaRegistryUrl: string;
  readonly databaseUrl: string;
  /** The CA's certificate: its path and PEM text. */
  readonly caFile: string;
  readonly ca: string;
  /** A client certificate and key signed by the CA (mutual TLS), paths. */
  readonly clientCertFile: string;
  readonly clientKeyFile: string;
  readonly credentials: StackCredentials;
  /** Each user's password file (for `KAFKA_SASL_PASSWORD_FILE`, `SCHEMA_REGISTRY_PASSWORD_FILE`). */
  readonly passwordFiles: {
    readonly kafka: Readonly<Record<string, string>>;
    readonly registry: Readonly<Record<string, string>>;
  };
  /** The private key registry bearer tokens are signed with (see {@link signRegistryToken}). */
  readonly tokenPrivateKeyFile: string;
}

/**
 * The addresses, CA and credentials of a secured stack whose material exists (after `stackUp`).
 *
 * @throws {StackError} `START_FAILED` when the stack is not in secured mode or has no material yet.
 */
export function securedStackEndpoints(config: StackConfig): SecuredStackEndpoints {
  if (config.security !== "sasl_ssl")
    throw new StackError(
      "START_FAILED",
      `the stack is not secured: set ${STACK_ENV.security}=sasl_ssl`,
    );
  const files = stackTlsFiles(config);
  if (!existsSync(files.credentials) || !existsSync(files.caCert))
    throw new StackError(
      "START_FAILED",
      `the secured stack in ${config.dir} has no credentials yet: bring it up first`,
    );
  const kept = readCredentials(files.credentials);
  const credentials: StackCredentials = {
    kafka: kept.kafka ?? {},
    registry: kept.registry ?? {},
    keystorePassword: kept.keystorePassword ?? "",
  };
  rememberCredentials(credentials);
  const endpoints = stackEndpoints(config);
  return {
    ...endpoints,
    caFile: files.caCert,
    ca: readFileSync(files.caCert, "utf8"),
    clientCertFile: files.clientCert,
    clientKeyFile: files.clientKey,
    credentials,
    passwordFiles: {
      kafka: Object.fromEntries(
        Object.keys(credentials.kafka).map((name) => [
          name,
          join(files.secretsDir, `kafka-${name}.password`),
        ]),
      ),
      registry: Object.fromEntries(
        Object.keys(credentials.registry).map((name) => [
          name,
          join(files.secretsDir, `registry-${name}.password`),
        ]),
      ),
    },
    tokenPrivateKeyFile: files.tokenPrivateKey,
  };
}

/** A SASL mechanism of the secured stack's Kafka listener with a user name and password. */
export type StackPasswordMechanism = "plain" | "scram-sha-256" | "scram-sha-512";

/**
 * Kafka client settings of one user of the secured stack: the CA, and SASL with `mechanism`
 * (default SCRAM-SHA-512) and the user's password.
 */
export function stackKafkaSettings(
  secured: SecuredStackEndpoints,
  user: string,
  options: { mechanism?: StackPasswordMechanism; clientId?: string } = {},
): KafkaSettings {
  const password = secured.credentials.kafka[user];
  if (password === undefined)
    throw new Error(
      `the secured stack has no Kafka user ${user} (${STACK_ENV.kafkaUsers} lists them)`,
    );
  const sasl: KafkaSasl = {
    mechanism: options.mechanism ?? "scram-sha-512",
    username: user,
    password,
  };
  return {
    brokers: [secured.kafkaBrokers],
    clientId: options.clientId ?? `mcpo-stack-${user}`,
    tls: { ca: secured.ca },
    sasl,
  };
}

/** The registry endpoint of one user of the secured stack: HTTPS with the CA and basic auth. */
export function stackRegistryEndpoint(
  secured: SecuredStackEndpoints,
  user: string = STACK_ADMIN_USER,
): RegistryEndpoint {
  const entry = secured.credentials.registry[user];
  if (entry === undefined)
    throw new Error(
      `the secured stack has no registry user ${user} (${STACK_ENV.registryUsers} lists them)`,
    );
  return {
    url: secured.schemaRegistryUrl,
    auth: { kind: "basic", username: user, password: entry.password },
    ca: secured.ca,
  };
}

/**
 * The environment a process of the project needs to reach the secured stack as `kafkaUser`
 * (SCRAM-SHA-512 by default) and `registryUser`: addresses, protocol, CA files and password
 * files (never the passwords themselves).
 */
export function stackClientEnv(
  secured: SecuredStackEndpoints,
  options: {
    kafkaUser: string;
    mechanism?: StackPasswordMechanism;
    registryUser?: string;
  },
): Record<string, string> {
  const kafkaPasswordFile = secured.passwordFiles.kafka[options.kafkaUser];
  const registryUser = options.registryUser ?? STACK_ADMIN_USER;
  const registryPasswordFile = secured.passwordFiles.registry[registryUser];
  if (kafkaPasswordFile === undefined)
    throw new Error(`the secured stack has no Kafka user ${options.kafkaUser}`);
  if (registryPasswordFile === undefined)
    throw new Error(`the secured stack has no registry user ${registryUser}`);
  return {
    [ENV_NAMES.kafkaBrokers]: secured.kafkaBrokers,
    [ENV_NAMES.schemaRegistryUrl]: secured.schemaRegistryUrl,
    [ENV_NAMES.databaseUrl]: secured.databaseUrl,
    [SECURITY_ENV.kafkaSecurityProtocol]: "SASL_SSL",
    [SECURITY_ENV.kafkaSaslMechanism]: (options.mechanism ?? "scram-sha-512").toUpperCase(),
    [SECURITY_ENV.kafkaSaslUsername]: options.kafkaUser,
    [SECURITY_ENV.kafkaSaslPasswordFile]: kafkaPasswordFile,
    [SECURITY_ENV.kafkaSslCaFile]: secured.caFile,
    [SECURITY_ENV.schemaRegistryUsername]: registryUser,
    [SECURITY_ENV.schemaRegistryPasswordFile]: registryPasswordFile,
    [SECURITY_ENV.schemaRegistryCaFile]: secured.caFile,
  };
}

function base64UrlJson(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString("base64url");
}

/**
 * A bearer token the secured stack's registry accepts: a JWT signed (RS256) with the stack's
 * token key, for `subject`, with `roles` (admin, developer, readonly) as its `groups` claim.
 */
export function signRegistryToken(
  secured: Pick<SecuredStackEndpoints, "tokenPrivateKeyFile">,
  options: { subject: string; roles?: readonly RegistryRole[]; ttlSeconds?: number },
): string {
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    iss: REGISTRY_TOKEN_ISSUER,
    sub: options.subject,
    preferred_username: options.subject,
    groups: (options.roles ?? []).map((role) => REGISTRY_ROLES[role]),
    iat: now,
    exp: now + (options.ttlSeconds ?? 600),
  };
  const signed = `${base64UrlJson({ alg: "RS256", typ: "JWT" })}.${base64UrlJson(claims)}`;
  const key = createPrivateKey(readFileSync(secured.tokenPrivateKeyFile));
  const signature = createSign("RSA-SHA256").update(signed).sign(key).toString("base64url");
  const token = `${signed}.${signature}`;
  rememberSecret(token);
  return token;
}

/**
 * An unsigned JWT (`alg: none`) for the secured stack's OAUTHBEARER, whose unsecured validator
 * takes its `sub` as the principal (`User:<subject>`). For tests only: a real cluster verifies
 * signed tokens.
 */
export function unsecuredKafkaToken(subject: string, ttlSeconds = 600): string {
  const now = Math.floor(Date.now() / 1000);
  return `${base64UrlJson({ alg: "none" })}.${base64UrlJson({ sub: subject, iat: now, exp: now + ttlSeconds })}.`;
}

/** Operations of Kafka ACLs (AclCommand's `--operation`). */
export type AclOperation =
  | "ALL"
  | "READ"
  | "WRITE"
  | "CREATE"
  | "DELETE"
  | "ALTER"
  | "DESCRIBE"
  | "CLUSTER_ACTION"
  | "DESCRIBE_CONFIGS"
  | "ALTER_CONFIGS"
  | "IDEMPOTENT_WRITE";

/** One ACL to grant: a principal, operations, and exactly one resource. */
export interface AclGrant {
  /** `User:<name>`. */
  readonly principal: string;
  readonly operations: readonly AclOperation[];
  readonly topic?: string;
  readonly group?: string;
  readonly transactionalId?: string;
  /** The cluster resource (e.g. IDEMPOTENT_WRITE, DESCRIBE_CONFIGS). */
  readonly cluster?: true;
  /** LITERAL (default): that name; PREFIXED: every name starting with it. */
  readonly patternType?: "LITERAL" | "PREFIXED";
  /** ALLOW (default) or DENY. */
  readonly permission?: "ALLOW" | "DENY";
  /** The host the rule applies to (default `*`). */
  readonly host?: string;
}

const OPERATION_ARGUMENT: Readonly<Record<AclOperation, string>> = {
  ALL: "All",
  READ: "Read",
  WRITE: "Write",
  CREATE: "Create",
  DELETE: "Delete",
  ALTER: "Alter",
  DESCRIBE: "Describe",
  CLUSTER_ACTION: "ClusterAction",
  DESCRIBE_CONFIGS: "DescribeConfigs",
  ALTER_CONFIGS: "AlterConfigs",
  IDEMPOTENT_WRITE: "IdempotentWrite",
};

/** The AclCommand arguments of one grant (after `--bootstrap-server` and `--command-config`). */
export function aclCommandArguments(grant: AclGrant): string[] {
  if (!/^User:[^\s;,]+$/.test(grant.principal))
    throw new Error(`an ACL principal is User:<name> (got ${JSON.stringify(grant.principal)})`);
  if (grant.operations.length === 0) throw new Error("an ACL grant needs at least one operation");
  const resources = [
    grant.topic === undefined ? [] : ["--topic", grant.topic],
    grant.group === undefined ? [] : ["--group", grant.group],
    grant.transactionalId === undefined ? [] : ["--transactional-id", grant.transactionalId],
    grant.cluster === true ? ["--cluster"] : [],
  ].filter((resource) => resource.length > 0);
  const [resource] = resources;
  if (resources.length !== 1 || resource === undefined)
    throw new Error(
      "an ACL grant names exactly one resource: topic, group, transactionalId or cluster",
    );
  const allow = (grant.permission ?? "ALLOW") === "ALLOW";
  return [
    "--add",
    allow ? "--allow-principal" : "--deny-principal",
    grant.principal,
    allow ? "--allow-host" : "--deny-host",
    grant.host ?? "*",
    ...grant.operations.flatMap((operation) => ["--operation", OPERATION_ARGUMENT[operation]]),
    ...resource,
    "--resource-pattern-type",
    (grant.patternType ?? "LITERAL").toLowerCase(),
  ];
}

const TOOLS_LOG4J2 = `<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stderr" target="SYSTEM_ERR">
      <PatternLayout pattern="%p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN">
      <AppenderRef ref="stderr"/>
    </Root>
  </Loggers>
</Configuration>
`;

/**
 * Runs one of Kafka's command-line tools (a class from the stack's jars) as the admin user of the
 * secured stack: `--bootstrap-server` and `--command-config` come first, then `args`.
 *
 * @returns its standard output.
 * @throws {StackError} `START_FAILED` with the tool's output when it fails.
 */
export async function runKafkaTool(
  config: StackConfig,
  mainClass: string,
  args: readonly string[],
  what: string,
): Promise<string> {
  const files = stackTlsFiles(config);
  const java = await findJava({
    purpose: `Apache Kafka ${config.versions.kafka}'s tools`,
    minMajor: 17,
    home: config.javaHome,
    homeKey: `${STACK_ENV.javaHome} or JAVA_HOME`,
    searchJvmFolder: false,
  });
  const log4j = join(config.dir, "kafka", "tools-log4j2.xml");
  if (!existsSync(log4j)) writeFileSync(log4j, TOOLS_LOG4J2);
  try {
    const { stdout, stderr } = await execFileAsync(
      java.executable,
      [
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        `-Dlog4j2.configurationFile=${log4j}`,
        "-cp",
        `${join(kafkaDistHome(config), "libs")}/*`,
        mainClass,
        "--bootstrap-server",
        `127.0.0.1:${config.kafkaPort}`,
        "--command-config",
        files.adminClientProperties,
        ...args,
      ],
      { timeout: 120_000, maxBuffer: 16 * 1024 * 1024 },
    );
    // The tools print some failures and still exit 0.
    if (/Error while executing|Exception/.test(stdout + stderr))
      throw Object.assign(new Error("the tool reported an error"), { stdout, stderr });
    return stdout;
  } catch (error) {
    const output = error as { stdout?: string; stderr?: string };
    throw new StackError(
      "START_FAILED",
      `${what} failed:\n${((output.stdout ?? "") + (output.stderr ?? "")).trim() || (error as Error).message}`,
      { cause: error },
    );
  }
}

/**
 * Grants ACLs on the secured stack's Kafka with operator rights: Kafka's own `AclCommand` (what
 * `kafka-acls.sh` runs) as the admin user. One run per grant, a few at a time.
 *
 * @throws {StackError} `START_FAILED` when the tool fails (its output in the message).
 */
export async function grantAcls(config: StackConfig, grants: readonly AclGrant[]): Promise<void> {
  if (config.security !== "sasl_ssl")
    throw new StackError(
      "START_FAILED",
      `ACLs need the secured stack: set ${STACK_ENV.security}=sasl_ssl`,
    );
  const commands = grants.map((grant) => aclCommandArguments(grant));
  const queue = [...commands.entries()];
  const worker = async (): Promise<void> => {
    for (let next = queue.shift(); next !== undefined; next = queue.shift()) {
      const [index, args] = next;
      await runKafkaTool(
        config,
        "org.apache.kafka.tools.AclCommand",
        args,
        `granting ACL ${index + 1} (${grants[index]?.principal ?? ""})`,
      );
    }
  };
  await Promise.all([worker(), worker(), worker()]);
}

/**
 * Brings the SCRAM credentials in the cluster's metadata in line with credentials.json, with
 * Kafka's `ConfigCommand` as the admin user: users added to `STACK_KAFKA_USERS` (or given another
 * password) after the storage was formatted get both SCRAM credentials, users taken out lose
 * theirs. Returns the names it changed.
 */
export async function syncScramUsers(
  config: StackConfig,
  credentials: StackCredentials,
): Promise<string[]> {
  const recorded = readStorageSecurity(config);
  const wanted = scramDigests(credentials);
  const changed: string[] = [];
  for (const [name, digest] of Object.entries(wanted)) {
    if (recorded.scram[name] === digest) continue;
    const password = credentials.kafka[name] ?? "";
    // One mechanism per request: the broker refuses to alter a user's credentials twice in one.
    for (const mechanism of SCRAM_MECHANISMS)
      await runKafkaTool(
        config,
        "kafka.admin.ConfigCommand",
        [
          "--alter",
          "--entity-type",
          "users",
          "--entity-name",
          name,
          "--add-config",
          `${mechanism}=[password=${password}]`,
        ],
        `setting the ${mechanism} credentials of ${name}`,
      );
    changed.push(name);
  }
  for (const name of Object.keys(recorded.scram)) {
    if (name in wanted) continue;
    for (const mechanism of SCRAM_MECHANISMS)
      await runKafkaTool(
        config,
        "kafka.admin.ConfigCommand",
        ["--alter", "--entity-type", "users", "--entity-name", name, "--delete-config", mechanism],
        `removing the ${mechanism} credentials of ${name}`,
      );
    changed.push(name);
  }
  if (changed.length > 0) writeStorageSecurity(config, { security: "sasl_ssl", scram: wanted });
  return changed;
}
