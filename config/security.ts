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

import { ObservatoryError } from "./errors.js";

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

/** Invalid security configuration; `key` is the option or variable at fault. */
export class SecuritySettingError extends ObservatoryError {
  constructor(
    readonly key: string,
    message: string,
  ) {
    super("CONFIG_INVALID", `invalid configuration ${key}: ${message}`, { retriable: false });
    this.name = "SecuritySettingError";
  }
}

/** A value with the name the user gave it by (option or variable), for errors. */
interface Given {
  readonly value: string;
  readonly key: string;
}

/**
 * Resolves the security settings: each from its option, else its variable. Files named by
 * `…_FILE` settings are read now, except the OAUTHBEARER token file, which is read at each
 * authentication (a sidecar may rotate it).
 *
 * @param labels the name to report for a setting given as an option (a flag or a file key).
 * @throws {SecuritySettingError} naming the setting that is wrong; a secret's value is never in
 *   the message.
 */
export function resolveSecurity(
  options: SecurityOptions,
  env: NodeJS.ProcessEnv,
  labels: Readonly<Partial<Record<SecuritySettingName, string>>> = {},
  /** Parts whose settings the caller gives as objects: their text settings are not read. */
  skip: { readonly kafka?: boolean; readonly registry?: boolean } = {},
): ResolvedSecurity {
  const given = (name: SecuritySettingName): Given | undefined => {
    if (skip.kafka === true && name.startsWith("kafka")) return undefined;
    if (skip.registry === true && name.startsWith("schemaRegistry")) return undefined;
    const option = options[name];
    if (option !== undefined && option !== "") return { value: option, key: labels[name] ?? name };
    const fromEnv = env[SECURITY_ENV[name]];
    if (fromEnv !== undefined && fromEnv !== "") return { value: fromEnv, key: SECURITY_ENV[name] };
    return undefined;
  };
  const fail = (setting: Given, message: string): never => {
    throw new SecuritySettingError(setting.key, message);
  };
  const keyOf = (name: SecuritySettingName): string => labels[name] ?? SECURITY_ENV[name];
  /**
   * A file's text. The path of a secret's file is not echoed: it may be the secret itself, typed
   * into the wrong variable.
   */
  const readText = (setting: Given, secretFile = false): string => {
    try {
      return readFileSync(setting.value, "utf8");
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
      return fail(
        setting,
        `cannot read the file ${secretFile ? "it names" : JSON.stringify(setting.value)} (${code})`,
      );
    }
  };
  /** A secret from its own setting or its file's (trailing newline dropped); not both. */
  const secret = (
    name: SecuritySettingName,
    fileName: SecuritySettingName,
  ): { value: string; key: string } | undefined => {
    const direct = given(name);
    const file = given(fileName);
    if (direct && file) fail(file, `give either ${direct.key} or ${file.key}, not both`);
    if (direct) return direct;
    if (file) return { value: readText(file, true).replace(/\r?\n$/, ""), key: file.key };
    return undefined;
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
        (certFile ?? keyFile) as Given,
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
        protocolGiven as Given,
        `${protocol} needs a SASL mechanism (${keyOf("kafkaSaslMechanism")}): PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER`,
      );
    const mechanism = mechanismGiven.value.trim().toLowerCase();
    if (mechanism === "oauthbearer") {
      const token = given("kafkaOauthBearerToken");
      const tokenFile = given("kafkaOauthBearerTokenFile");
      if (token && tokenFile)
        fail(tokenFile, `give either ${token.key} or ${tokenFile.key}, not both`);
      if (!token && !tokenFile)
        throw new SecuritySettingError(
          keyOf("kafkaOauthBearerToken"),
          `OAUTHBEARER needs a token: set ${SECURITY_ENV.kafkaOauthBearerToken} or ${SECURITY_ENV.kafkaOauthBearerTokenFile} (the library also takes a token provider)`,
        );
      if (tokenFile) readText(tokenFile, true);
      kafkaSasl = {
        mechanism: "oauthbearer",
        oauthBearerProvider: token
          ? () => Promise.resolve({ value: token.value })
          : () => Promise.resolve({ value: readText(tokenFile as Given, true).trim() }),
      };
    } else if (
      mechanism === "plain" ||
      mechanism === "scram-sha-256" ||
      mechanism === "scram-sha-512"
    ) {
      const username = given("kafkaSaslUsername");
      const password = secret("kafkaSaslPassword", "kafkaSaslPasswordFile");
      if (!username)
        throw new SecuritySettingError(
          keyOf("kafkaSaslUsername"),
          `${mechanismGiven.value.toUpperCase()} needs a user name`,
        );
      if (!password)
        throw new SecuritySettingError(
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
    throw new SecuritySettingError(
      token.key,
      "give either a bearer token or a user name and password for the registry, not both",
    );
  if (token) registryAuth = { kind: "bearer", token: token.value };
  else if (username || password) {
    if (!username)
      throw new SecuritySettingError(
        keyOf("schemaRegistryUsername"),
        "a registry password needs a user name",
      );
    if (!password)
      throw new SecuritySettingError(
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
