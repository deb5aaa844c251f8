/**
 * How every client of the project authenticates and encrypts: TLS and SASL to Kafka, basic or
 * bearer authentication and a CA for the schema registry. One settings block, read like every
 * connection setting (option, then environment variable; the CLI adds flags and the config file),
 * and resolved once into the objects the Kafka and registry clients take.
 *
 * Secrets (passwords, tokens, key passphrases) come from the environment, the config file or a
 * file named by a `…_FILE` variable, never only from a command line; their values never appear in
 * an error message.
 *
 * @module
 */
import { readFileSync } from "node:fs";

import { ConfigError } from "./errors.js";

/**
 * TLS to the brokers. PEM texts (the settings name files; they are read here). The broker's
 * certificate is checked against `ca` (else the system's trusted roots) and its name against the
 * broker's host unless `verifyHostname` is false.
 */
export interface KafkaTls {
  /** The CA certificates the brokers' certificates chain to, PEM. */
  readonly ca?: string;
  /** A client certificate (mutual TLS), PEM, with its `key`. */
  readonly cert?: string;
  readonly key?: string;
  /** The key's passphrase, when it is encrypted. */
  readonly keyPassword?: string;
  /** Check the broker's name against its certificate (default true). */
  readonly verifyHostname?: boolean;
}

/**
 * A bearer token for SASL/OAUTHBEARER. Called whenever a connection authenticates, so a provider
 * that fetches or refreshes tokens keeps long-lived clients authenticated.
 */
export type OAuthBearerTokenProvider = () => Promise<{ readonly value: string }>;

/** SASL mechanisms with a user name and password. */
export type PasswordMechanism = "plain" | "scram-sha-256" | "scram-sha-512";

/** SASL authentication to the brokers. */
export type KafkaSasl =
  | {
      readonly mechanism: PasswordMechanism;
      readonly username: string;
      readonly password: string;
    }
  | {
      readonly mechanism: "oauthbearer";
      readonly oauthBearerProvider: OAuthBearerTokenProvider;
    };

/** Kafka's `security.protocol` values. */
export const SECURITY_PROTOCOLS = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] as const;
export type SecurityProtocol = (typeof SECURITY_PROTOCOLS)[number];

/** How a client authenticates to the schema registry. */
export type RegistryAuth =
  | { readonly kind: "basic"; readonly username: string; readonly password: string }
  | { readonly kind: "bearer"; readonly token: string };

/** A schema registry: its base URL (no credentials in it), authentication and trusted CA. */
export interface RegistryEndpoint {
  /** Base URL of the Confluent-compatible API, without user-info and trailing slash. */
  readonly url: string;
  readonly auth?: RegistryAuth;
  /** CA certificates the registry's certificate chains to, PEM (else the system's roots). */
  readonly ca?: string;
}

/** A registry given as its URL alone, or as an endpoint with credentials and a CA. */
export type RegistryTarget = string | RegistryEndpoint;

/** The endpoint of a {@link RegistryTarget}. */
export function registryEndpointOf(target: RegistryTarget): RegistryEndpoint {
  return typeof target === "string" ? { url: target.replace(/\/+$/, "") } : target;
}

/** The security settings by name, each with its environment variable. */
export const SECURITY_ENV = Object.freeze({
  kafkaSecurityProtocol: "KAFKA_SECURITY_PROTOCOL",
  kafkaSaslMechanism: "KAFKA_SASL_MECHANISM",
  kafkaSaslUsername: "KAFKA_SASL_USERNAME",
  kafkaSaslPassword: "KAFKA_SASL_PASSWORD",
  kafkaSaslPasswordFile: "KAFKA_SASL_PASSWORD_FILE",
  kafkaOauthBearerToken: "KAFKA_SASL_OAUTHBEARER_TOKEN",
  kafkaOauthBearerTokenFile: "KAFKA_SASL_OAUTHBEARER_TOKEN_FILE",
  kafkaSslCaFile: "KAFKA_SSL_CA_FILE",
  kafkaSslCertFile: "KAFKA_SSL_CERT_FILE",
  kafkaSslKeyFile: "KAFKA_SSL_KEY_FILE",
  kafkaSslKeyPassword: "KAFKA_SSL_KEY_PASSWORD",
  kafkaSslKeyPasswordFile: "KAFKA_SSL_KEY_PASSWORD_FILE",
  kafkaSslVerifyHostname: "KAFKA_SSL_VERIFY_HOSTNAME",
  schemaRegistryUsername: "SCHEMA_REGISTRY_USERNAME",
  schemaRegistryPassword: "SCHEMA_REGISTRY_PASSWORD",
  schemaRegistryPasswordFile: "SCHEMA_REGISTRY_PASSWORD_FILE",
  schemaRegistryToken: "SCHEMA_REGISTRY_TOKEN",
  schemaRegistryTokenFile: "SCHEMA_REGISTRY_TOKEN_FILE",
  schemaRegistryCaFile: "SCHEMA_REGISTRY_CA_FILE",
} as const);

export type SecuritySettingName = keyof typeof SECURITY_ENV;

/** The settings whose values are secrets: never echoed, never required on a command line. */
export const SECRET_SETTINGS: ReadonlySet<SecuritySettingName> = new Set([
  "kafkaSaslPassword",
  "kafkaOauthBearerToken",
  "kafkaSslKeyPassword",
  "schemaRegistryPassword",
  "schemaRegistryToken",
]);

/** Security settings as text (from options, the environment, a file), by name. */
export type SecurityOptions = { readonly [K in SecuritySettingName]?: string };

/** The resolved security of a configuration. */
export interface ResolvedSecurity {
  readonly kafkaTls: KafkaTls | undefined;
  readonly kafkaSasl: KafkaSasl | undefined;
  readonly registryAuth: RegistryAuth | undefined;
  readonly registryCa: string | undefined;
}

/** A value with the name the user gave it by (option or variable), for errors. */
export interface GivenSetting {
  readonly value: string;
  readonly key: string;
}

/**
 * A secret given as itself or as the path of a file holding it (a `…_FILE` setting, one trailing
 * newline dropped, so a file written by `echo` holds the same secret): its bytes and the setting
 * it came from; undefined when neither is given. Neither the secret nor the file's path is ever in
 * a message (the path may be the secret, put in the wrong setting).
 *
 * @throws {ConfigError} when both are given (naming the file's setting), or the file cannot be read.
 */
export function readSecret(
  direct: GivenSetting | undefined,
  file: GivenSetting | undefined,
): { readonly bytes: Buffer; readonly key: string } | undefined {
  if (direct && file)
    throw new ConfigError(file.key, `give either ${direct.key} or ${file.key}, not both`);
  if (direct) return { bytes: Buffer.from(direct.value, "utf8"), key: direct.key };
  if (!file) return undefined;
  let bytes: Buffer;
  try {
    bytes = readFileSync(file.value);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    throw new ConfigError(file.key, `cannot read the file it names (${code})`);
  }
  let end = bytes.length;
  if (bytes[end - 1] === 0x0a) end -= bytes[end - 2] === 0x0d ? 2 : 1;
  return { bytes: bytes.subarray(0, end), key: file.key };
}

/**
 * Resolves the security settings: each from its option, else its variable. Files named by
 * `…_FILE` settings are read now, except the OAUTHBEARER token file, which is read at each
 * authentication (a sidecar may rotate it).
 *
 * @param labels the name to report for a setting given as an option (a flag or a file key).
 * @throws {ConfigError} naming the setting that is wrong; a secret's value is never in
 *   the message.
 */
export function resolveSecurity(
  options: SecurityOptions,
  env: NodeJS.ProcessEnv,
  labels: Readonly<Partial<Record<SecuritySettingName, string>>> = {},
  /** Parts whose settings the caller gives as objects: their text settings are not read. */
  skip: { readonly kafka?: boolean; readonly registry?: boolean } = {},
): ResolvedSecurity {
  const given = (name: SecuritySettingName): GivenSetting | undefined => {
    if (skip.kafka === true && name.startsWith("kafka")) return undefined;
    if (skip.registry === true && name.startsWith("schemaRegistry")) return undefined;
    const option = options[name];
    if (option !== undefined && option !== "") return { value: option, key: labels[name] ?? name };
    const fromEnv = env[SECURITY_ENV[name]];
    if (fromEnv !== undefined && fromEnv !== "") return { value: fromEnv, key: SECURITY_ENV[name] };
    return undefined;
  };
  const fail = (setting: GivenSetting, message: string): never => {
    throw new ConfigError(setting.key, message);
  };
  const keyOf = (name: SecuritySettingName): string => labels[name] ?? SECURITY_ENV[name];
  /** A certificate's or CA's file, PEM. */
  const readText = (setting: GivenSetting): string => {
    try {
      return readFileSync(setting.value, "utf8");
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
      return fail(setting, `cannot read the file ${JSON.stringify(setting.value)} (${code})`);
    }
  };
  /** A secret from its own setting or its file's. */
  const secret = (
    name: SecuritySettingName,
    fileName: SecuritySettingName,
  ): { value: string; key: string } | undefined => {
    const found = readSecret(given(name), given(fileName));
    return found && { value: found.bytes.toString("utf8"), key: found.key };
  };

  // Kafka.
  const protocolGiven = given("kafkaSecurityProtocol");
  const mechanismGiven = given("kafkaSaslMechanism");
  const caFile = given("kafkaSslCaFile");
  const certFile = given("kafkaSslCertFile");
  const keyFile = given("kafkaSslKeyFile");
  let protocol: SecurityProtocol;
  if (protocolGiven) {
    const upper = protocolGiven.value.trim().toUpperCase();
    if (!(SECURITY_PROTOCOLS as readonly string[]).includes(upper))
      fail(
        protocolGiven,
        `expected one of ${SECURITY_PROTOCOLS.join(", ")} (got ${JSON.stringify(protocolGiven.value)})`,
      );
    protocol = upper as SecurityProtocol;
  } else if (mechanismGiven) protocol = "SASL_SSL";
  else if (caFile || certFile) protocol = "SSL";
  else protocol = "PLAINTEXT";
  const tlsOn = protocol === "SSL" || protocol === "SASL_SSL";
  const saslOn = protocol === "SASL_PLAINTEXT" || protocol === "SASL_SSL";

  let kafkaTls: KafkaTls | undefined;
  if (tlsOn) {
    if ((certFile === undefined) !== (keyFile === undefined))
      fail(
        (certFile ?? keyFile) as GivenSetting,
        `a client certificate needs both ${keyOf("kafkaSslCertFile")} and ${keyOf("kafkaSslKeyFile")}`,
      );
    const keyPassword = secret("kafkaSslKeyPassword", "kafkaSslKeyPasswordFile");
    const verify = given("kafkaSslVerifyHostname");
    let verifyHostname = true;
    if (verify) {
      const text = verify.value.trim().toLowerCase();
      if (text === "false" || text === "0") verifyHostname = false;
      else if (text !== "true" && text !== "1")
        fail(verify, `expected true or false (got ${JSON.stringify(verify.value)})`);
    }
    kafkaTls = {
      ...(caFile ? { ca: readText(caFile) } : {}),
      ...(certFile ? { cert: readText(certFile) } : {}),
      ...(keyFile ? { key: readText(keyFile) } : {}),
      ...(keyPassword ? { keyPassword: keyPassword.value } : {}),
      verifyHostname,
    };
  } else {
    const stray = caFile ?? certFile ?? keyFile;
    if (stray)
      fail(
        stray,
        `TLS settings need ${keyOf("kafkaSecurityProtocol")} SSL or SASL_SSL (it is ${protocol})`,
      );
  }

  let kafkaSasl: KafkaSasl | undefined;
  if (saslOn) {
    if (!mechanismGiven)
      return fail(
        protocolGiven as GivenSetting,
        `${protocol} needs a SASL mechanism (${keyOf("kafkaSaslMechanism")}): PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER`,
      );
    const mechanism = mechanismGiven.value.trim().toLowerCase();
    if (mechanism === "oauthbearer") {
      const token = given("kafkaOauthBearerToken");
      const tokenFile = given("kafkaOauthBearerTokenFile");
      // Read now, so a missing file or both settings fail at start; the file again at each
      // authentication (a sidecar may rotate it).
      const first = readSecret(token, tokenFile);
      if (!first)
        throw new ConfigError(
          keyOf("kafkaOauthBearerToken"),
          `OAUTHBEARER needs a token: set ${SECURITY_ENV.kafkaOauthBearerToken} or ${SECURITY_ENV.kafkaOauthBearerTokenFile} (the library also takes a token provider)`,
        );
      kafkaSasl = {
        mechanism: "oauthbearer",
        oauthBearerProvider: () =>
          Promise.resolve({
            value: (readSecret(token, tokenFile) ?? first).bytes.toString("utf8").trim(),
          }),
      };
    } else if (
      mechanism === "plain" ||
      mechanism === "scram-sha-256" ||
      mechanism === "scram-sha-512"
    ) {
      const username = given("kafkaSaslUsername");
      const password = secret("kafkaSaslPassword", "kafkaSaslPasswordFile");
      if (!username)
        throw new ConfigError(
          keyOf("kafkaSaslUsername"),
          `${mechanismGiven.value.toUpperCase()} needs a user name`,
        );
      if (!password)
        throw new ConfigError(
          keyOf("kafkaSaslPassword"),
          `${mechanismGiven.value.toUpperCase()} needs a password: set ${SECURITY_ENV.kafkaSaslPassword} or ${SECURITY_ENV.kafkaSaslPasswordFile}`,
        );
      kafkaSasl = { mechanism, username: username.value, password: password.value };
    } else
      fail(
        mechanismGiven,
        `expected PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER (got ${JSON.stringify(mechanismGiven.value)})`,
      );
  } else if (mechanismGiven)
    fail(
      mechanismGiven,
      `a SASL mechanism needs ${keyOf("kafkaSecurityProtocol")} SASL_SSL or SASL_PLAINTEXT (it is ${protocol})`,
    );

  // The registry.
  const username = given("schemaRegistryUsername");
  const password = secret("schemaRegistryPassword", "schemaRegistryPasswordFile");
  const token = secret("schemaRegistryToken", "schemaRegistryTokenFile");
  let registryAuth: RegistryAuth | undefined;
  if (token && (username || password))
    throw new ConfigError(
      token.key,
      "give either a bearer token or a user name and password for the registry, not both",
    );
  if (token) registryAuth = { kind: "bearer", token: token.value };
  else if (username || password) {
    if (!username)
      throw new ConfigError(
        keyOf("schemaRegistryUsername"),
        "a registry password needs a user name",
      );
    if (!password)
      throw new ConfigError(
        keyOf("schemaRegistryPassword"),
        `a registry user name needs a password: set ${SECURITY_ENV.schemaRegistryPassword} or ${SECURITY_ENV.schemaRegistryPasswordFile}`,
      );
    registryAuth = { kind: "basic", username: username.value, password: password.value };
  }
  const registryCaFile = given("schemaRegistryCaFile");
  return {
    kafkaTls,
    kafkaSasl,
    registryAuth,
    registryCa: registryCaFile ? readText(registryCaFile) : undefined,
  };
}

/**
 * A registry URL's user-info as basic credentials, and the URL without it (HTTP clients refuse
 * URLs with credentials, and messages must not carry them).
 */
export function splitRegistryUrl(url: string): { url: string; auth: RegistryAuth | undefined } {
  const parsed = new URL(url);
  if (parsed.username === "" && parsed.password === "") return { url, auth: undefined };
  const auth: RegistryAuth = {
    kind: "basic",
    username: decodeURIComponent(parsed.username),
    password: decodeURIComponent(parsed.password),
  };
  parsed.username = "";
  parsed.password = "";
  return { url: parsed.toString().replace(/\/+$/, ""), auth };
}
