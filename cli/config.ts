/**
 * The CLI's settings: every key has a flag, an environment variable and a place in the config
 * file, and a default. Precedence: flag, then environment, then file, then default. Errors name
 * the key as the user wrote it (`--window`, `MCPO_WINDOW_MS`, or `processor.windowMs in
 * ./mcp-observatory.yaml`), say what was expected and what was given.
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";

import { parse as parseYaml } from "yaml";

import {
  ConfigError,
  DEFAULTS,
  ENV_NAMES,
  loadConnectionConfig,
  type ConnectionConfig,
} from "../config/index.js";
import { parseMetricsConfig, type MetricsConfig } from "../metrics/index.js";

/** How a value is parsed. */
type Kind = "string" | "duration" | "int" | "port" | "connection";

/** One setting. */
export interface SettingSpec {
  /** Its path in the config file, e.g. `processor.windowMs`. */
  readonly key: string;
  /** Its flag, e.g. `--window`. */
  readonly flag: string;
  /** commander's name for the flag's value (camelCase of the flag). */
  readonly option: string;
  readonly env: string | undefined;
  readonly kind: Kind;
  /** Printed in `--help`. */
  readonly defaultText: string;
  readonly defaultValue: string | number | undefined;
  readonly description: string;
}

function spec(
  key: string,
  flag: string,
  env: string | undefined,
  kind: Kind,
  defaultValue: string | number | undefined,
  description: string,
): SettingSpec {
  const option = flag.replace(/^--/, "").replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
  const defaultText =
    defaultValue === undefined
      ? "none"
      : kind === "duration"
        ? formatDuration(Number(defaultValue))
        : String(defaultValue);
  return { key, flag, option, env, kind, defaultValue, defaultText, description };
}

/** Connection settings (every command that talks to a service takes them). */
export const CONNECTION_SETTINGS = [
  spec(
    "brokers",
    "--brokers",
    ENV_NAMES.kafkaBrokers,
    "connection",
    DEFAULTS.kafkaBrokers,
    "Kafka bootstrap brokers, host:port[,host:port]",
  ),
  spec(
    "schemaRegistryUrl",
    "--schema-registry-url",
    ENV_NAMES.schemaRegistryUrl,
    "connection",
    DEFAULTS.schemaRegistryUrl,
    "Confluent-compatible schema registry URL",
  ),
  spec(
    "databaseUrl",
    "--database-url",
    ENV_NAMES.databaseUrl,
    "connection",
    DEFAULTS.databaseUrl,
    "PostgreSQL connection string",
  ),
  spec(
    "topicPrefix",
    "--topic-prefix",
    ENV_NAMES.topicPrefix,
    "connection",
    DEFAULTS.topicPrefix,
    "prefix of every topic name",
  ),
] as const;

/** Window settings: the processor's, and a replay's (which must match the processor's). */
export const WINDOW_SETTINGS = [
  spec(
    "processor.windowMs",
    "--window",
    "MCPO_WINDOW_MS",
    "duration",
    60_000,
    "tumbling window size",
  ),
  spec(
    "processor.graceMs",
    "--grace",
    "MCPO_GRACE_MS",
    "duration",
    10_000,
    "grace period for late events",
  ),
] as const;

export const PROCESSOR_SETTINGS = [
  ...WINDOW_SETTINGS,
  spec(
    "processor.groupId",
    "--group",
    "MCPO_PROCESSOR_GROUP",
    "string",
    "mcpo-processor",
    "consumer group",
  ),
  spec(
    "processor.idleTimeoutMs",
    "--idle-timeout",
    "MCPO_IDLE_TIMEOUT_MS",
    "duration",
    30_000,
    "an idle partition's windows close after this",
  ),
  spec(
    "processor.checkpointIntervalMs",
    "--checkpoint-interval",
    "MCPO_CHECKPOINT_INTERVAL_MS",
    "duration",
    2000,
    "how often partition state is checkpointed",
  ),
  spec(
    "processor.sessionTimeoutMs",
    "--session-timeout",
    "MCPO_SESSION_TIMEOUT_MS",
    "duration",
    30_000,
    "consumer group session timeout",
  ),
  spec(
    "processor.partitions",
    "--partitions",
    "MCPO_PARTITIONS",
    "int",
    6,
    "partitions of topics it creates",
  ),
  spec(
    "processor.metricsPort",
    "--metrics-port",
    "MCPO_METRICS_PORT",
    "port",
    9464,
    "Prometheus /metrics port on loopback (-1: off, 0: any free port)",
  ),
  spec(
    "processor.metadataMaxAgeMs",
    "--metadata-max-age",
    "MCPO_METADATA_MAX_AGE_MS",
    "duration",
    5000,
    "how soon partitions added to model-calls are noticed",
  ),
] as const;

export const SINK_SETTINGS = [
  spec("sink.groupId", "--group", "MCPO_SINK_GROUP", "string", "mcpo-sink", "consumer group"),
  spec(
    "sink.sessionTimeoutMs",
    "--session-timeout",
    "MCPO_SESSION_TIMEOUT_MS",
    "duration",
    30_000,
    "consumer group session timeout",
  ),
  spec(
    "sink.metricsPort",
    "--metrics-port",
    "MCPO_METRICS_PORT",
    "port",
    9465,
    "Prometheus /metrics port on loopback (-1: off, 0: any free port)",
  ),
] as const;

/** The file a command reads settings from: `--config`, else `MCPO_CONFIG`, else none. */
export interface ConfigFile {
  readonly path: string;
  readonly data: Readonly<Record<string, unknown>>;
}

const FILE_SECTIONS: Readonly<Record<string, readonly string[] | null>> = {
  brokers: null,
  schemaRegistryUrl: null,
  databaseUrl: null,
  topicPrefix: null,
  logLevel: null,
  processor: [
    "windowMs",
    "graceMs",
    "groupId",
    "idleTimeoutMs",
    "checkpointIntervalMs",
    "sessionTimeoutMs",
    "partitions",
    "metricsPort",
    "metadataMaxAgeMs",
  ],
  sink: ["groupId", "sessionTimeoutMs", "metricsPort"],
  metrics: null,
};

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
      `${path} is not valid ${/\.ya?ml$/i.test(path) ? "YAML" : "JSON"}: ${(error as Error).message}`,
    );
  }
  data ??= {};
  if (typeof data !== "object" || Array.isArray(data))
    throw new ConfigError("--config", `${path} must hold an object of settings`);
  const record = data as Record<string, unknown>;
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
    return new SettingsResolver(this.flags, this.file, this.env, { ...this.defaults, ...defaults });
  }

  private fallback(setting: SettingSpec): string | number | undefined {
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

  string(setting: SettingSpec): string {
    const source = this.source(setting);
    if (!source) return String(this.fallback(setting));
    if (typeof source.raw !== "string" || source.raw.trim() === "")
      throw new ConfigError(
        source.label,
        `expected a non-empty string (got ${JSON.stringify(source.raw)})`,
      );
    return source.raw;
  }

  /** A duration in ms: `250ms`, `10s`, `5m`, `1h` or a plain number of ms. */
  duration(setting: SettingSpec, min = 1): number {
    const source = this.source(setting);
    if (!source) return Number(this.fallback(setting));
    const ms = parseDuration(source.raw);
    if (ms === undefined || ms < min)
      throw new ConfigError(
        source.label,
        `expected a duration such as 500ms, 10s or 5m${min > 0 ? "" : " (0 allowed)"} (got ${JSON.stringify(source.raw)})`,
      );
    return ms;
  }

  int(setting: SettingSpec, min: number, max = Number.MAX_SAFE_INTEGER): number {
    const source = this.source(setting);
    if (!source) return Number(this.fallback(setting));
    const value = typeof source.raw === "number" ? source.raw : Number(String(source.raw).trim());
    if (!Number.isInteger(value) || value < min || value > max)
      throw new ConfigError(
        source.label,
        `expected an integer from ${min} to ${max} (got ${JSON.stringify(source.raw)})`,
      );
    return value;
  }

  /** A metrics port: -1 turns the endpoint off (undefined), 0 takes any free port. */
  port(setting: SettingSpec): number | undefined {
    const port = this.int(setting, -1, 65_535);
    return port < 0 ? undefined : port;
  }

  /** Connection settings, validated; errors name the flag, variable or file key. */
  connection(): ConnectionConfig {
    const [brokers, registry, database, prefix] = CONNECTION_SETTINGS.map((setting) =>
      this.source(setting),
    );
    const labels: Record<string, string> = {};
    const pick = (source: Sourced | undefined, name: string): string | undefined => {
      if (!source) return undefined;
      labels[name] = source.label;
      return typeof source.raw === "string" ? source.raw : JSON.stringify(source.raw);
    };
    try {
      return loadConnectionConfig(
        {
          kafkaBrokers: pick(brokers, "kafkaBrokers"),
          schemaRegistryUrl: pick(registry, "schemaRegistryUrl"),
          databaseUrl: pick(database, "databaseUrl"),
          topicPrefix: pick(prefix, "topicPrefix"),
        },
        this.env,
      );
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
        `expected one of ${levels.join(", ")} (got ${JSON.stringify(raw)})`,
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
