/**
 * The CLI's settings: every key has a flag, an environment variable and a place in the config
 * file, and a default. Precedence: flag, then environment, then file, then default. Errors name
 * the key as the user wrote it (`--window`, `MCPO_WINDOW_MS`, or `processor.windowMs in
 * ./mcp-observatory.yaml`), say what was expected and what was given.
 *
 * The processor's, sink's and replay's settings are not listed here: they are the keys of their
 * schemas in config/schemas.ts, which state each default, range and help text once and name each
 * flag, variable and file key. Commands read them by key (`settings.options(schema)`), never by
 * position.
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";

import { parse as parseYaml } from "yaml";
import type { z } from "zod";

import {
  boundsOf,
  cliMetaOf,
  ConfigError,
  DEFAULTS,
  ENV_NAMES,
  flagOf,
  forwardConfigSchema,
  ingestConfigSchema,
  otlpExportConfigSchema,
  uiConfigSchema,
  isSecretName,
  loadConnectionConfig,
  processorConfigSchema,
  rememberSecretsIn,
  replayConfigSchema,
  SECRET_SETTINGS,
  SECURITY_ENV,
  settingMetaOf,
  shownValue,
  sinkConfigSchema,
  type ConnectionConfig,
  type ConnectionOptions,
  type SecuritySettingName,
} from "../config/index.js";
import { parseMetricsConfig, type MetricsConfig } from "../metrics/index.js";

/** How a value is parsed. */
type Kind = "string" | "duration" | "int" | "port" | "boolean" | "list" | "connection";

/** One setting. */
export interface SettingSpec {
  /** Its path in the config file, e.g. `processor.windowMs`. */
  readonly key: string;
  /** Its key in the component's schema (or {@link ConnectionOptions}), e.g. `windowSizeMs`. */
  readonly name: string;
  /** Its flag, e.g. `--window`. */
  readonly flag: string;
  /** commander's name for the flag's value (camelCase of the flag). */
  readonly option: string;
  readonly env: string | undefined;
  readonly kind: Kind;
  /** Printed in `--help`. */
  readonly defaultText: string;
  readonly defaultValue: string | number | boolean | undefined;
  readonly description: string;
  /** Numbers: the range accepted, from the schema (ports: from the value that turns them off). */
  readonly min?: number;
  readonly max?: number;
  /** Ports: the value that turns the endpoint off. */
  readonly off?: number;
  /** A secret (password, token): no flag (the environment, the file or a `…_FILE` setting). */
  readonly secret?: boolean;
}

function spec(
  fields: Omit<SettingSpec, "option" | "defaultText" | "flag"> & { readonly flag?: string },
): SettingSpec {
  const flag = fields.flag ?? flagOf(fields.key);
  const option = flag.replace(/^--/, "").replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
  const defaultText =
    fields.defaultValue === undefined
      ? "none"
      : fields.kind === "duration"
        ? formatDuration(Number(fields.defaultValue))
        : String(fields.defaultValue);
  return Object.freeze({ ...fields, flag, option, defaultText });
}

/** Connection settings by their {@link ConnectionOptions} key; the variables and defaults are config/'s. */
export const CONNECTION = Object.freeze({
  kafkaBrokers: spec({
    key: "brokers",
    name: "kafkaBrokers",
    env: ENV_NAMES.kafkaBrokers,
    kind: "connection",
    defaultValue: DEFAULTS.kafkaBrokers,
    description: "Kafka bootstrap brokers, host:port[,host:port]",
  }),
  schemaRegistryUrl: spec({
    key: "schemaRegistryUrl",
    name: "schemaRegistryUrl",
    env: ENV_NAMES.schemaRegistryUrl,
    kind: "connection",
    defaultValue: DEFAULTS.schemaRegistryUrl,
    description: "Confluent-compatible schema registry URL",
  }),
  databaseUrl: spec({
    key: "databaseUrl",
    name: "databaseUrl",
    env: ENV_NAMES.databaseUrl,
    kind: "connection",
    defaultValue: DEFAULTS.databaseUrl,
    description: "PostgreSQL connection string",
  }),
  topicPrefix: spec({
    key: "topicPrefix",
    name: "topicPrefix",
    env: ENV_NAMES.topicPrefix,
    kind: "connection",
    defaultValue: DEFAULTS.topicPrefix,
    description: "prefix of every topic name",
  }),
} satisfies Record<
  keyof Pick<
    ConnectionOptions,
    "kafkaBrokers" | "schemaRegistryUrl" | "databaseUrl" | "topicPrefix"
  >,
  SettingSpec
>);

/** A security setting: in the file's `kafka` or `schemaRegistry` section, flag from its file key. */
function security(name: SecuritySettingName, key: string, description: string): SettingSpec {
  const secret = SECRET_SETTINGS.has(name);
  return spec({
    key,
    name,
    flag: `--${key.replace(/\./g, "-").replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`,
    env: SECURITY_ENV[name],
    kind: "connection",
    defaultValue: undefined,
    description,
    ...(secret ? { secret } : {}),
  });
}

/**
 * TLS, SASL and registry authentication, by {@link SecuritySettingName}. Secrets have no flag:
 * they come from the environment, the config file, or the file their `…File` setting names.
 */
export const SECURITY = Object.freeze({
  kafkaSecurityProtocol: security(
    "kafkaSecurityProtocol",
    "kafka.securityProtocol",
    "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (default: SASL_SSL with a SASL mechanism, SSL with a CA or certificate, else PLAINTEXT)",
  ),
  kafkaSaslMechanism: security(
    "kafkaSaslMechanism",
    "kafka.saslMechanism",
    "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER",
  ),
  kafkaSaslUsername: security("kafkaSaslUsername", "kafka.saslUsername", "SASL user name"),
  kafkaSaslPassword: security("kafkaSaslPassword", "kafka.saslPassword", "SASL password"),
  kafkaSaslPasswordFile: security(
    "kafkaSaslPasswordFile",
    "kafka.saslPasswordFile",
    "a file holding the SASL password",
  ),
  kafkaOauthBearerToken: security(
    "kafkaOauthBearerToken",
    "kafka.oauthBearerToken",
    "OAUTHBEARER token",
  ),
  kafkaOauthBearerTokenFile: security(
    "kafkaOauthBearerTokenFile",
    "kafka.oauthBearerTokenFile",
    "a file holding the OAUTHBEARER token, read at each authentication (may be rotated)",
  ),
  kafkaSslCaFile: security(
    "kafkaSslCaFile",
    "kafka.sslCaFile",
    "PEM file of the CA certificates the brokers' certificates chain to (default: the system's)",
  ),
  kafkaSslCertFile: security(
    "kafkaSslCertFile",
    "kafka.sslCertFile",
    "PEM file of a client certificate (mutual TLS)",
  ),
  kafkaSslKeyFile: security(
    "kafkaSslKeyFile",
    "kafka.sslKeyFile",
    "PEM file of the client certificate's key",
  ),
  kafkaSslKeyPassword: security(
    "kafkaSslKeyPassword",
    "kafka.sslKeyPassword",
    "passphrase of the client key",
  ),
  kafkaSslKeyPasswordFile: security(
    "kafkaSslKeyPasswordFile",
    "kafka.sslKeyPasswordFile",
    "a file holding the client key's passphrase",
  ),
  kafkaSslVerifyHostname: security(
    "kafkaSslVerifyHostname",
    "kafka.sslVerifyHostname",
    "check the broker's name against its certificate: true (default) or false",
  ),
  schemaRegistryUsername: security(
    "schemaRegistryUsername",
    "schemaRegistry.username",
    "registry user name (basic authentication)",
  ),
  schemaRegistryPassword: security(
    "schemaRegistryPassword",
    "schemaRegistry.password",
    "registry password",
  ),
  schemaRegistryPasswordFile: security(
    "schemaRegistryPasswordFile",
    "schemaRegistry.passwordFile",
    "a file holding the registry password",
  ),
  schemaRegistryToken: security(
    "schemaRegistryToken",
    "schemaRegistry.token",
    "registry bearer token",
  ),
  schemaRegistryTokenFile: security(
    "schemaRegistryTokenFile",
    "schemaRegistry.tokenFile",
    "a file holding the registry bearer token",
  ),
  schemaRegistryCaFile: security(
    "schemaRegistryCaFile",
    "schemaRegistry.caFile",
    "PEM file of the CA certificates of the registry's certificate (default: the system's)",
  ),
} satisfies Record<SecuritySettingName, SettingSpec>);

/** Connection settings (every command that talks to a service takes them), in `--help` order. */
export const CONNECTION_SETTINGS = Object.freeze([
  CONNECTION.kafkaBrokers,
  CONNECTION.schemaRegistryUrl,
  CONNECTION.databaseUrl,
  CONNECTION.topicPrefix,
  ...Object.values(SECURITY),
] as const);

/** A component's settings schema (see config/schemas.ts). */
type SettingsSchema = z.ZodObject;

const derived = new WeakMap<SettingsSchema, readonly SettingSpec[]>();

/**
 * The CLI settings of a component's schema, one per key that carries CLI metadata, in the
 * schema's key order (the order `--help` lists them). Flag, variable, file key, default, range and
 * help text all come from the schema.
 */
export function settingsOf(schema: SettingsSchema): readonly SettingSpec[] {
  const known = derived.get(schema);
  if (known) return known;
  const settings: SettingSpec[] = [];
  for (const [name, field] of Object.entries(schema.shape) as [string, z.ZodType][]) {
    const cli = cliMetaOf(field);
    if (!cli) continue;
    const schemaDefault = field.safeParse(undefined);
    // A list's default is empty: shown as none.
    const defaultValue =
      cli.default ??
      (schemaDefault.success && !Array.isArray(schemaDefault.data)
        ? (schemaDefault.data as string | number | boolean | undefined)
        : undefined);
    const bounds = boundsOf(field);
    settings.push(
      spec({
        key: cli.fileKey,
        name,
        flag: cli.flag,
        env: cli.env,
        kind: cli.kind,
        defaultValue,
        description: settingMetaOf(field)?.description ?? name,
        ...(bounds ? { min: cli.off ?? bounds.min, max: bounds.max } : {}),
        ...(cli.off === undefined ? {} : { off: cli.off }),
        ...(cli.secret === true ? { secret: true } : {}),
      }),
    );
  }
  const frozen = Object.freeze(settings);
  derived.set(schema, frozen);
  return frozen;
}

/** The CLI setting of one schema key, e.g. `settingOf(processorConfigSchema, "graceMs")`. */
export function settingOf<S extends SettingsSchema>(
  schema: S,
  name: keyof S["shape"] & string,
): SettingSpec {
  const setting = settingsOf(schema).find((candidate) => candidate.name === name);
  if (!setting) throw new Error(`${name} is not a CLI setting`);
  return setting;
}

/** Window settings: the processor's, and a replay's (which must match the processor's). */
export const WINDOW_SETTINGS = settingsOf(replayConfigSchema);
export const PROCESSOR_SETTINGS = settingsOf(processorConfigSchema);
export const SINK_SETTINGS = settingsOf(sinkConfigSchema);
export const FORWARD_SETTINGS = settingsOf(forwardConfigSchema);
export const INGEST_SETTINGS = settingsOf(ingestConfigSchema);
export const OTLP_EXPORT_SETTINGS = settingsOf(otlpExportConfigSchema);
export const UI_SETTINGS = settingsOf(uiConfigSchema);

/** The values a command resolved for a schema's CLI settings, by schema key. */
export type CliValues<S extends SettingsSchema> = {
  -readonly [K in keyof z.output<S>]?: z.output<S>[K];
};

/** The file a command reads settings from: `--config`, else `MCPO_CONFIG`, else none. */
export interface ConfigFile {
  readonly path: string;
  readonly data: Readonly<Record<string, unknown>>;
}

/** Every component's settings (the connection's aside). */
const COMPONENT_SETTINGS: readonly SettingSpec[] = [
  ...PROCESSOR_SETTINGS,
  ...WINDOW_SETTINGS,
  ...SINK_SETTINGS,
  ...FORWARD_SETTINGS,
  ...INGEST_SETTINGS,
  ...OTLP_EXPORT_SETTINGS,
  ...UI_SETTINGS,
];

/** Keys inside a file section (`processor`, `sink`), from the schemas' file keys. */
function sectionKeys(section: string): readonly string[] {
  const keys = COMPONENT_SETTINGS.filter((setting) => setting.key.startsWith(`${section}.`)).map(
    (setting) => setting.key.slice(section.length + 1),
  );
  return [...new Set(keys)];
}

/** Keys inside a connection section (`kafka`, `schemaRegistry`). */
function securityKeys(section: string): readonly string[] {
  return Object.values(SECURITY)
    .filter((setting) => setting.key.startsWith(`${section}.`))
    .map((setting) => setting.key.slice(section.length + 1));
}

const FILE_SECTIONS: Readonly<Record<string, readonly string[] | null>> = {
  ...Object.fromEntries(
    CONNECTION_SETTINGS.filter((setting) => !setting.key.includes(".")).map((setting) => [
      setting.key,
      null,
    ]),
  ),
  kafka: securityKeys("kafka"),
  schemaRegistry: securityKeys("schemaRegistry"),
  logLevel: null,
  processor: sectionKeys("processor"),
  sink: sectionKeys("sink"),
  forward: sectionKeys("forward"),
  ingest: sectionKeys("ingest"),
  otlpExport: sectionKeys("otlpExport"),
  ui: sectionKeys("ui"),
  metrics: null,
};

/** Every file key a default may be given for. */
const FILE_KEYS = new Set(
  [...CONNECTION_SETTINGS, ...COMPONENT_SETTINGS].map((setting) => setting.key),
);

/**
 * Reads and checks a config file (JSON, or YAML by extension `.yaml`/`.yml`). Unknown keys are
 * errors, so a typo does not pass silently.
 *
 * @throws {ConfigError} naming the file and the key.
 */
export function readConfigFile(path: string): ConfigFile {
  const absolute = resolve(path);
  let text: string;
  try {
    text = readFileSync(absolute, "utf8");
  } catch (error) {
    throw new ConfigError("--config", `cannot read ${path}: ${(error as Error).message}`);
  }
  let data: unknown;
  try {
    data = /\.ya?ml$/i.test(path) ? parseYaml(text) : JSON.parse(text);
  } catch (error) {
    throw new ConfigError(
      "--config",
      `${path} is not valid ${/\.ya?ml$/i.test(path) ? "YAML" : "JSON"}: ${parseProblem(error)}`,
    );
  }
  data ??= {};
  if (typeof data !== "object" || Array.isArray(data))
    throw new ConfigError("--config", `${path} must hold an object of settings`);
  const record = data as Record<string, unknown>;
  // Its secrets (kafka.saslPassword, a URL's password, …) are redacted wherever they would appear.
  rememberSecretsIn(record);
  for (const [key, value] of Object.entries(record)) {
    if (!(key in FILE_SECTIONS))
      throw new ConfigError(
        `${key} in ${path}`,
        `unknown key (known: ${Object.keys(FILE_SECTIONS).join(", ")})`,
      );
    const section = FILE_SECTIONS[key];
    if (section) {
      if (typeof value !== "object" || value === null || Array.isArray(value))
        throw new ConfigError(`${key} in ${path}`, "expected an object");
      for (const inner of Object.keys(value))
        if (!section.includes(inner))
          throw new ConfigError(
            `${key}.${inner} in ${path}`,
            `unknown key (known: ${section.join(", ")})`,
          );
    }
  }
  return { path, data: record };
}

/**
 * A parser's complaint about a config file without the file's text (it may hold secrets): YAML's
 * first line (what and where, not the excerpt below it); JSON's without the excerpt Node quotes.
 */
function parseProblem(error: unknown): string {
  const first = (error instanceof Error ? error.message : String(error)).split("\n")[0] ?? "";
  return first
    .replace(/:\s*$/, "")
    .replace(/,\s*(?:\.\.\.)?".*$/, "")
    .replace(/^(Unexpected token)\s+'.*?'/, "$1");
}

/**
 * `(got …)` of a message about a setting's value: a secret's is never shown (its spec says
 * `secret`, or its name is a secret's), any other value without the secrets it may hold.
 */
function got(setting: SettingSpec, raw: unknown): string {
  const secret =
    setting.secret === true ||
    [setting.name, setting.key, setting.env ?? ""].some((name) => isSecretName(name));
  return `(got ${shownValue(setting.env ?? setting.key, raw, secret)})`;
}

/** Where a value came from, as the user would name it in an error. */
interface Sourced {
  readonly raw: unknown;
  readonly label: string;
}

/** Resolves settings for one command from its parsed flags, the environment and the file. */
export class SettingsResolver {
  constructor(
    private readonly flags: Readonly<Record<string, unknown>>,
    private readonly file: ConfigFile | undefined,
    private readonly env: NodeJS.ProcessEnv = process.env,
    /** Defaults of this command that differ from the settings' own, by file key. */
    private readonly defaults: Readonly<Record<string, string | number>> = {},
  ) {}

  /** The same settings with other defaults (the demo's short windows, for instance). */
  withDefaults(defaults: Readonly<Record<string, string | number>>): SettingsResolver {
    for (const key of Object.keys(defaults))
      if (!FILE_KEYS.has(key)) throw new Error(`no setting has the file key ${key}`);
    return new SettingsResolver(this.flags, this.file, this.env, { ...this.defaults, ...defaults });
  }

  private fallback(setting: SettingSpec): string | number | boolean | undefined {
    return this.defaults[setting.key] ?? setting.defaultValue;
  }

  /** The file given by `--config` or `MCPO_CONFIG`, read and checked. */
  static fromFlags(
    flags: Readonly<Record<string, unknown>>,
    env: NodeJS.ProcessEnv = process.env,
  ): SettingsResolver {
    const path =
      typeof flags.config === "string"
        ? flags.config
        : env.MCPO_CONFIG
          ? env.MCPO_CONFIG
          : undefined;
    return new SettingsResolver(flags, path === undefined ? undefined : readConfigFile(path), env);
  }

  private source(setting: SettingSpec): Sourced | undefined {
    const flag = this.flags[setting.option];
    if (flag !== undefined) return { raw: flag, label: setting.flag };
    const fromEnv = setting.env === undefined ? undefined : this.env[setting.env];
    if (fromEnv !== undefined && fromEnv !== "")
      return { raw: fromEnv, label: setting.env as string };
    const fromFile = this.fileValue(setting.key);
    if (fromFile !== undefined && this.file)
      return { raw: fromFile, label: `${setting.key} in ${this.file.path}` };
    return undefined;
  }

  private fileValue(key: string): unknown {
    let value: unknown = this.file?.data;
    for (const part of key.split(".")) {
      if (typeof value !== "object" || value === null) return undefined;
      value = (value as Record<string, unknown>)[part];
    }
    return value;
  }

  /** Whether any of these settings was given (flag, environment or file). */
  given(settings: readonly SettingSpec[]): boolean {
    return settings.some((setting) => this.source(setting) !== undefined);
  }

  string(setting: SettingSpec): string | undefined {
    const source = this.source(setting);
    if (!source) {
      const fallback = this.fallback(setting);
      return fallback === undefined ? undefined : String(fallback);
    }
    if (typeof source.raw !== "string" || source.raw.trim() === "")
      throw new ConfigError(
        source.label,
        `expected a non-empty string ${got(setting, source.raw)}`,
      );
    return source.raw;
  }

  /**
   * A duration in ms: `250ms`, `10s`, `5m`, `1h` or a plain number of ms, at least `min` (by
   * default the least its schema accepts).
   */
  duration(setting: SettingSpec, min = setting.min ?? 1): number {
    const source = this.source(setting);
    if (!source) return Number(this.fallback(setting));
    const ms = parseDuration(source.raw);
    if (ms === undefined || ms < min)
      throw new ConfigError(
        source.label,
        `expected a duration such as 500ms, 10s or 5m${min > 0 ? "" : " (0 allowed)"} ${got(setting, source.raw)}`,
      );
    return ms;
  }

  /** An integer from `min` to `max` (by default the range its schema accepts). */
  int(
    setting: SettingSpec,
    min = setting.min ?? Number.MIN_SAFE_INTEGER,
    max = setting.max ?? Number.MAX_SAFE_INTEGER,
  ): number {
    const source = this.source(setting);
    if (!source) return Number(this.fallback(setting));
    const value = typeof source.raw === "number" ? source.raw : Number(String(source.raw).trim());
    if (!Number.isInteger(value) || value < min || value > max)
      throw new ConfigError(
        source.label,
        `expected an integer from ${min} to ${max} ${got(setting, source.raw)}`,
      );
    return value;
  }

  /** A metrics port: -1 turns the endpoint off (undefined), 0 takes any free port. */
  port(setting: SettingSpec): number | undefined {
    const port = this.int(setting);
    return port === (setting.off ?? -1) ? undefined : port;
  }

  /**
   * A switch: the flag given (no value), or `true`/`false` (also `1`/`0`) in the environment or
   * the file.
   */
  boolean(setting: SettingSpec): boolean {
    const source = this.source(setting);
    if (!source) return this.fallback(setting) === true;
    if (typeof source.raw === "boolean") return source.raw;
    const text = String(source.raw).trim().toLowerCase();
    if (text === "true" || text === "1") return true;
    if (text === "false" || text === "0") return false;
    throw new ConfigError(source.label, `expected true or false ${got(setting, source.raw)}`);
  }

  /**
   * A list: the flag's values (repeated or comma-separated), a comma-separated variable, or the
   * file's list (or comma-separated string); empty when not given.
   */
  list(setting: SettingSpec): string[] {
    const source = this.source(setting);
    if (!source) return [];
    const split = (text: string): string[] =>
      text
        .split(",")
        .map((part) => part.trim())
        .filter((part) => part !== "");
    const raw = source.raw;
    const values: unknown[] = Array.isArray(raw)
      ? (raw as unknown[]).flatMap((item) => (typeof item === "string" ? split(item) : [item]))
      : typeof raw === "string"
        ? split(raw)
        : [raw];
    if (values.length === 0 || values.some((value) => typeof value !== "string"))
      throw new ConfigError(
        source.label,
        `expected a list of strings or a comma-separated string ${got(setting, raw)}`,
      );
    return values as string[];
  }

  /**
   * Where a setting of this command was given, as the user would name it in an error (its flag,
   * its variable, or its key in the file), else its file key.
   */
  labelOf(setting: SettingSpec): string {
    return this.source(setting)?.label ?? setting.key;
  }

  /**
   * A component's {@link ConfigError} naming one of its schema keys (`webhookUrl.1`), named
   * instead as the user gave that setting (`--webhook-url`, `MCPO_WEBHOOK_URL`, or
   * `forward.webhookUrl in ./file.yaml`); any other error as it is.
   */
  renamed(error: unknown, settings: readonly SettingSpec[]): unknown {
    if (!(error instanceof ConfigError)) return error;
    const name = error.key.split(".")[0];
    const setting = settings.find((candidate) => candidate.name === name);
    if (!setting) return error;
    return new ConfigError(
      this.labelOf(setting),
      error.message.replace(/^invalid configuration \S+: /, ""),
      { cause: error },
    );
  }

  /** One setting's value, read as its kind says. */
  value(setting: SettingSpec): string | number | boolean | readonly string[] | undefined {
    switch (setting.kind) {
      case "list":
        return this.list(setting);
      case "boolean":
        return this.boolean(setting);
      case "duration":
      case "int":
        // Not given and no default: unset (not NaN), so the component's own fallback applies.
        if (this.source(setting) === undefined && this.fallback(setting) === undefined)
          return undefined;
        return setting.kind === "duration" ? this.duration(setting) : this.int(setting);
      case "port":
        return this.port(setting);
      case "string":
        return this.string(setting);
      case "connection":
        throw new Error(`${setting.key} is a connection setting: use connection()`);
    }
  }

  /**
   * Every CLI setting of a component's schema, by schema key: `options(processorConfigSchema)`
   * gives `{ windowSizeMs, graceMs, groupId, … }`, ready for the component's options.
   */
  options<S extends SettingsSchema>(schema: S): CliValues<S> {
    const values: Record<string, unknown> = {};
    for (const setting of settingsOf(schema)) values[setting.name] = this.value(setting);
    return values as CliValues<S>;
  }

  /** Connection settings, validated; errors name the flag, variable or file key. */
  connection(): ConnectionConfig {
    const labels: Record<string, string> = {};
    const options: Record<string, string> = {};
    for (const setting of CONNECTION_SETTINGS) {
      const source = this.source(setting);
      if (!source) continue;
      labels[setting.name] = source.label;
      options[setting.name] =
        typeof source.raw === "string" ? source.raw : JSON.stringify(source.raw);
    }
    try {
      return loadConnectionConfig(options, this.env, labels);
    } catch (error) {
      if (error instanceof ConfigError && labels[error.key] !== undefined)
        throw new ConfigError(
          labels[error.key] as string,
          error.message.replace(/^invalid configuration \S+: /, ""),
        );
      throw error;
    }
  }

  /** Thresholds and alert rules: the file's `metrics` section. */
  metrics(): MetricsConfig {
    const section = this.fileValue("metrics");
    return parseMetricsConfig(
      section ?? {},
      this.file ? `metrics in ${this.file.path}: metrics` : "metrics",
    );
  }

  /** The raw `metrics` section, for components that parse it themselves. */
  metricsSection(): unknown {
    this.metrics();
    return this.fileValue("metrics") ?? {};
  }

  logLevel(): string {
    const flag = this.flags.logLevel;
    const raw =
      typeof flag === "string"
        ? flag
        : (this.env.LOG_LEVEL ?? this.fileValue("logLevel") ?? "info");
    const levels = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];
    if (typeof raw !== "string" || !levels.includes(raw))
      throw new ConfigError(
        typeof flag === "string" ? "--log-level" : this.env.LOG_LEVEL ? "LOG_LEVEL" : "logLevel",
        `expected one of ${levels.join(", ")} (got ${shownValue("logLevel", raw)})`,
      );
    return raw;
  }
}

/** `250ms`, `10s`, `5m`, `1h`, `1.5s` or a plain number of ms; undefined when not a duration. */
export function parseDuration(raw: unknown): number | undefined {
  if (typeof raw === "number") return Number.isInteger(raw) ? raw : undefined;
  if (typeof raw !== "string") return undefined;
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(raw);
  if (!match) return undefined;
  const factor = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2] ?? "ms"] ?? 1;
  const ms = Number(match[1]) * factor;
  return Number.isInteger(ms) ? ms : undefined;
}

/** 60000 → `60s`, 1500 → `1500ms`, 300000 → `5m`. */
export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0 && ms > 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

/** `--help` text of a setting: description, variable, file key and default. */
export function settingHelp(setting: SettingSpec): string {
  return `${setting.description} [env ${setting.env ?? "-"}, file ${setting.key}, default ${setting.defaultText}]`;
}
