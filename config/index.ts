/**
 * Connection settings shared by every part of the pipeline (producer, processor, sink, the local
 * stack and the tests). One place names the environment variables and their defaults, so the
 * local stack, `docker-compose.yml` and the library always agree.
 *
 * @module
 */
import { z } from "zod";

import { ConfigError, shownValue } from "./errors.js";
import {
  resolveSecurity,
  splitRegistryUrl,
  type KafkaSasl,
  type KafkaTls,
  type RegistryAuth,
  type RegistryEndpoint,
  type SecurityOptions,
  type SecuritySettingName,
} from "./security.js";

export {
  ConfigError,
  describeError,
  isRetriable,
  isTlsFailure,
  ObservatoryError,
  forgetSecrets,
  isSecretField,
  isSecretName,
  REDACTED,
  redactFields,
  redactingLogger,
  redactSecrets,
  redactUrl,
  rememberSecret,
  rememberSecretsIn,
  secretsIn,
  shownValue,
  type ErrorContext,
  type ErrorDescription,
  type ObservatoryErrorOptions,
} from "./errors.js";
export {
  backoffCeiling,
  requestedDelayMs,
  retry,
  RetryExhaustedError,
  type RetryOptions,
  type RetryPolicy,
} from "./retry.js";
export {
  readSecret,
  registryEndpointOf,
  SECRET_SETTINGS,
  SECURITY_ENV,
  SECURITY_PROTOCOLS,
  type GivenSetting,
  type KafkaSasl,
  type KafkaTls,
  type OAuthBearerTokenProvider,
  type PasswordMechanism,
  type RegistryAuth,
  type RegistryEndpoint,
  type RegistryTarget,
  type SecurityOptions,
  type SecurityProtocol,
  type SecuritySettingName,
} from "./security.js";

/** Environment variable names, by setting. */
export const ENV_NAMES = Object.freeze({
  kafkaBrokers: "KAFKA_BROKERS",
  schemaRegistryUrl: "SCHEMA_REGISTRY_URL",
  databaseUrl: "DATABASE_URL",
  topicPrefix: "MCPO_TOPIC_PREFIX",
} as const);

/** Default values: the addresses the local stack and `docker-compose.yml` listen on. */
export const DEFAULTS = Object.freeze({
  kafkaBrokers: "127.0.0.1:9092",
  /** Apicurio Registry's Confluent-compatible API (ccompat v7). */
  schemaRegistryUrl: "http://127.0.0.1:8081/apis/ccompat/v7",
  databaseUrl: "postgresql://postgres@127.0.0.1:5432/mcp_observatory",
  topicPrefix: "mcpo.",
} as const);

/** Validated, frozen connection settings. */
export interface ConnectionConfig {
  /** Bootstrap brokers as `host:port`, at least one. */
  readonly kafkaBrokers: readonly string[];
  /** Base URL of a Confluent-compatible schema registry (no trailing slash). */
  readonly schemaRegistryUrl: string;
  /** A `postgres://` or `postgresql://` connection string. */
  readonly databaseUrl: string;
  /** Prefix of every topic name the project creates, e.g. `mcpo.` gives `mcpo.model-calls`. */
  readonly topicPrefix: string;
  /** TLS to the brokers (security protocol SSL or SASL_SSL); undefined: plaintext. */
  readonly kafkaTls?: KafkaTls;
  /** SASL to the brokers (SASL_SSL or SASL_PLAINTEXT); undefined: none. */
  readonly kafkaSasl?: KafkaSasl;
  /** The registry with its credentials and CA; its `url` is {@link schemaRegistryUrl}. */
  readonly schemaRegistry: RegistryEndpoint;
}

const hostPort = z
  .string()
  .trim()
  .regex(/^[A-Za-z0-9.[\]:-]+:\d{1,5}$/, "expected host:port");

const brokersSchema = z
  .string()
  .trim()
  .min(1, "expected a comma-separated list of host:port")
  .transform((value) => value.split(",").map((part) => part.trim()))
  .pipe(z.array(hostPort).min(1));

const httpUrl = z
  .url({ protocol: /^https?$/, error: "expected an http(s) URL" })
  .transform((value) => value.replace(/\/+$/, ""));

const postgresUrl = z.url({
  protocol: /^postgres(ql)?$/,
  error: "expected a postgres:// or postgresql:// URL",
});

const topicPrefix = z
  .string()
  .regex(/^[A-Za-z0-9._-]*$/, "only letters, digits, '.', '_' and '-' are allowed in topic names");

function parseKey<T>(schema: z.ZodType<T>, key: string, value: string): T {
  const result = schema.safeParse(value);
  if (!result.success) {
    const detail = result.error.issues.map((issue) => issue.message).join("; ");
    throw new ConfigError(key, `${detail} (got ${shownValue(key, value)})`);
  }
  return result.data;
}

/**
 * Options that override the environment; each falls back to its variable, then to the default.
 * The security settings (text, as from the environment) are in {@link SecurityOptions}; the
 * objects (`kafkaTls`, `kafkaSasl`, `schemaRegistryAuth`, `schemaRegistryCa`) are the library's
 * way and replace the text settings of their part.
 */
export interface ConnectionOptions extends SecurityOptions {
  kafkaBrokers?: string | readonly string[];
  schemaRegistryUrl?: string;
  databaseUrl?: string;
  topicPrefix?: string;
  kafkaTls?: KafkaTls;
  kafkaSasl?: KafkaSasl;
  schemaRegistryAuth?: RegistryAuth;
  /** PEM. */
  schemaRegistryCa?: string;
}

/**
 * Resolves connection settings: option, then environment variable, then default.
 *
 * @throws {ConfigError} naming the option or variable whose value is invalid.
 */
export function loadConnectionConfig(
  options: ConnectionOptions = {},
  env: NodeJS.ProcessEnv = process.env,
  /** The name to report for a security setting given as an option (a flag, a file key). */
  labels: Readonly<Partial<Record<SecuritySettingName, string>>> = {},
): ConnectionConfig {
  const pick = (
    key: keyof typeof ENV_NAMES,
    option: string | undefined,
  ): { key: string; value: string } => {
    if (option !== undefined) return { key, value: option };
    const fromEnv = env[ENV_NAMES[key]];
    if (fromEnv !== undefined && fromEnv !== "") return { key: ENV_NAMES[key], value: fromEnv };
    return { key: ENV_NAMES[key], value: DEFAULTS[key] };
  };
  const brokersOption = Array.isArray(options.kafkaBrokers)
    ? options.kafkaBrokers.join(",")
    : (options.kafkaBrokers as string | undefined);

  const brokers = pick("kafkaBrokers", brokersOption);
  const registry = pick("schemaRegistryUrl", options.schemaRegistryUrl);
  const database = pick("databaseUrl", options.databaseUrl);
  const prefix = pick("topicPrefix", options.topicPrefix);

  const security = resolveSecurity(options, env, labels, {
    kafka: options.kafkaTls !== undefined || options.kafkaSasl !== undefined,
    registry: options.schemaRegistryAuth !== undefined || options.schemaRegistryCa !== undefined,
  });
  // Credentials in the registry URL are basic authentication; the URL kept has none.
  const registryGiven = splitRegistryUrl(parseKey(httpUrl, registry.key, registry.value));
  const registryAuth = options.schemaRegistryAuth ?? security.registryAuth;
  if (registryGiven.auth && registryAuth)
    throw new ConfigError(
      registry.key,
      "the URL has credentials and the registry's user name or token is set too: give one",
    );
  const registryCa = options.schemaRegistryCa ?? security.registryCa;
  const kafkaTls = options.kafkaTls ?? security.kafkaTls;
  const kafkaSasl = options.kafkaSasl ?? security.kafkaSasl;
  const schemaRegistry: RegistryEndpoint = Object.freeze({
    url: registryGiven.url,
    ...((registryAuth ?? registryGiven.auth) ? { auth: registryAuth ?? registryGiven.auth } : {}),
    ...(registryCa === undefined ? {} : { ca: registryCa }),
  });
  return Object.freeze({
    kafkaBrokers: Object.freeze(parseKey(brokersSchema, brokers.key, brokers.value)),
    schemaRegistryUrl: schemaRegistry.url,
    databaseUrl: parseKey(postgresUrl, database.key, database.value),
    topicPrefix: parseKey(topicPrefix, prefix.key, prefix.value),
    ...(kafkaTls === undefined ? {} : { kafkaTls }),
    ...(kafkaSasl === undefined ? {} : { kafkaSasl }),
    schemaRegistry,
  });
}

/** The project's topics, by role. */
export interface TopicNames {
  /** ModelCallEvent records, key = service: the source of truth. */
  readonly modelCalls: string;
  /** MetricRollup records, compacted, key = a JSON array (see `rollupKey`). */
  readonly metricRollups: string;
  /** AlertEvent records, key = service. */
  readonly alerts: string;
  /** Records that could not be decoded or validated, with the reason in headers. */
  readonly deadLetter: string;
  /** Events that arrived after their window closed, with their original bytes. */
  readonly lateEvents: string;
}

/** Topic names under a prefix (`MCPO_TOPIC_PREFIX`, default `mcpo.`). */
export function topicNames(prefix: string = DEFAULTS.topicPrefix): TopicNames {
  return Object.freeze({
    modelCalls: `${prefix}model-calls`,
    metricRollups: `${prefix}metric-rollups`,
    alerts: `${prefix}alerts`,
    deadLetter: `${prefix}dead-letter`,
    lateEvents: `${prefix}late-events`,
  });
}

/**
 * A component's consumer group when none is given: the topic prefix's stem and the component
 * (`mcpo.` → `mcpo-processor`, `mcpo-demo.` → `mcpo-demo-processor`), so two deployments with
 * different prefixes on one cluster never share a group.
 */
export function defaultGroupId(
  topicPrefix: string,
  component: "processor" | "sink" | "alerts-forward" | "otlp-export",
): string {
  const stem = topicPrefix.replace(/[._-]+$/, "");
  return stem === "" ? component : `${stem}-${component}`;
}

/** The connection options the processes and exporters take, as their users spell them. */
export interface EndpointOptions {
  /** Overrides `KAFKA_BROKERS`. */
  readonly brokers?: string | readonly string[];
  readonly schemaRegistryUrl?: string;
  readonly databaseUrl?: string;
  readonly topicPrefix?: string;
  /** TLS to the brokers; overrides the `KAFKA_SSL_*` variables. */
  readonly kafkaTls?: KafkaTls;
  /**
   * SASL to the brokers; overrides the `KAFKA_SASL_*` variables. For OAUTHBEARER, a token
   * provider: `{ mechanism: "oauthbearer", oauthBearerProvider: async () => ({ value: token }) }`.
   */
  readonly kafkaSasl?: KafkaSasl;
  /** Registry authentication; overrides the `SCHEMA_REGISTRY_*` credentials. */
  readonly schemaRegistryAuth?: RegistryAuth;
  /** CA certificates of the registry, PEM; overrides `SCHEMA_REGISTRY_CA_FILE`. */
  readonly schemaRegistryCa?: string;
}

/** The security part of {@link EndpointOptions}, which every component's options take. */
export type SecurityEndpointOptions = Pick<
  EndpointOptions,
  "kafkaTls" | "kafkaSasl" | "schemaRegistryAuth" | "schemaRegistryCa"
>;

/**
 * A resolved connection as {@link EndpointOptions}, to hand to a component (the CLI resolves the
 * settings once and passes them on, security included).
 */
export function endpointOptionsOf(connection: ConnectionConfig): EndpointOptions {
  const registry = connection.schemaRegistry;
  return {
    brokers: connection.kafkaBrokers,
    schemaRegistryUrl: registry.url,
    databaseUrl: connection.databaseUrl,
    topicPrefix: connection.topicPrefix,
    ...(connection.kafkaTls === undefined ? {} : { kafkaTls: connection.kafkaTls }),
    ...(connection.kafkaSasl === undefined ? {} : { kafkaSasl: connection.kafkaSasl }),
    ...(registry.auth === undefined ? {} : { schemaRegistryAuth: registry.auth }),
    ...(registry.ca === undefined ? {} : { schemaRegistryCa: registry.ca }),
  };
}

/**
 * {@link loadConnectionConfig} from {@link EndpointOptions}: each unset option falls back to its
 * variable, then its default.
 *
 * @throws {ConfigError} naming the option or variable that is invalid.
 */
export function connectionFromOptions(options: EndpointOptions): ConnectionConfig {
  return loadConnectionConfig({
    kafkaBrokers: options.brokers,
    schemaRegistryUrl: options.schemaRegistryUrl,
    databaseUrl: options.databaseUrl,
    topicPrefix: options.topicPrefix,
    ...(options.kafkaTls === undefined ? {} : { kafkaTls: options.kafkaTls }),
    ...(options.kafkaSasl === undefined ? {} : { kafkaSasl: options.kafkaSasl }),
    ...(options.schemaRegistryAuth === undefined
      ? {}
      : { schemaRegistryAuth: options.schemaRegistryAuth }),
    ...(options.schemaRegistryCa === undefined
      ? {}
      : { schemaRegistryCa: options.schemaRegistryCa }),
  });
}

/** The port of a `host:port` address or URL, for checks that compare configurations. */
export function portOf(address: string): number {
  const url = address.includes("://") ? new URL(address) : new URL(`tcp://${address}`);
  if (url.port !== "") return Number(url.port);
  switch (url.protocol) {
    case "http:":
      return 80;
    case "https:":
      return 443;
    case "postgres:":
    case "postgresql:":
      return 5432;
    default:
      throw new ConfigError("address", `no port in ${JSON.stringify(address)}`);
  }
}

export {
  boundsOf,
  cliMetaOf,
  envOf,
  flagOf,
  forwardConfigSchema,
  ingestConfigSchema,
  LOG_APPEND_TIME,
  otlpExportConfigSchema,
  modelCallsTopicConfig,
  parseForwardConfig,
  parseIngestConfig,
  parseOtlpExportConfig,
  parseProcessorConfig,
  parseReplayConfig,
  parseSinkConfig,
  parseUiConfig,
  processorConfigSchema,
  replayConfigSchema,
  settingMetaOf,
  sinkConfigSchema,
  TIMESTAMP_TYPE_CONFIG,
  uiConfigSchema,
  UNLIMITED_RETENTION_MS,
  windowConfigSchema,
  type CliKind,
  type CliMeta,
  type ForwardConfig,
  type ForwardConfigInput,
  type IngestConfig,
  type IngestConfigInput,
  type OtlpExportConfig,
  type OtlpExportConfigInput,
  type ProcessorConfig,
  type ProcessorConfigInput,
  type ReplayConfig,
  type ReplayConfigInput,
  type SettingMeta,
  type SinkConfig,
  type SinkConfigInput,
  type UiConfig,
  type UiConfigInput,
} from "./schemas.js";
