/**
 * One settings schema per component (processor, sink, replay). Each key states its default, its
 * check and its description once; the parse functions give a frozen, fully defaulted config and
 * the CLI derives its flags, environment variables, config-file keys and `--help` from the same
 * keys (see {@link cliMetaOf}).
 *
 * Names follow one rule from the key: `idleTimeoutMs` is the flag `--idle-timeout` (a trailing
 * `Ms` dropped, kebab-case), the variable `MCPO_IDLE_TIMEOUT_MS` and the file key
 * `processor.idleTimeoutMs` (section, then the key). A setting whose established name differs
 * says so next to its default (`windowSizeMs` is `--window`, `MCPO_WINDOW_MS`,
 * `processor.windowMs`).
 *
 * Connection settings (brokers, registry, database, topic prefix) are not repeated here: the parse
 * functions accept them and resolve them with {@link connectionFromOptions}.
 *
 * @module
 */
import { z } from "zod";

import {
  ConfigError,
  connectionFromOptions,
  defaultGroupId,
  type ConnectionConfig,
  type EndpointOptions,
} from "./index.js";

/** How the CLI reads a setting's text: `duration` (`10s`), `int`, `port` or `string`. */
export type CliKind = "duration" | "int" | "port" | "string" | "boolean";

/** A setting's place in the CLI, derived from its key (see the module's naming rule). */
export interface CliMeta {
  /** e.g. `--idle-timeout`. */
  readonly flag: string;
  /** e.g. `MCPO_IDLE_TIMEOUT_MS`. */
  readonly env: string;
  /** Its path in the config file, e.g. `processor.idleTimeoutMs`. */
  readonly fileKey: string;
  readonly kind: CliKind;
  /** The CLI's default where it differs from the component's (the metrics ports: on). */
  readonly default?: number | string;
  /** A value that turns the setting off (given to the component as unset): the ports' `-1`. */
  readonly off?: number;
  /** A secret: no flag (the environment or the config file), its value never shown. */
  readonly secret?: boolean;
}

/** What a schema key carries besides its check and default. */
export interface SettingMeta {
  /** One line, also the CLI's `--help` text. */
  readonly description: string;
  /** Present when the CLI takes the setting. */
  readonly cli?: CliMeta;
}

/** A CLI name that differs from the rule, or a CLI-only default, stated next to the key. */
interface CliOverrides {
  readonly flag?: string;
  readonly env?: string;
  /** The key inside the section, e.g. `windowMs`. */
  readonly fileKey?: string;
  readonly default?: number | string;
  readonly off?: number;
  readonly secret?: boolean;
}

interface FieldSpec<S extends z.ZodType = z.ZodType> {
  readonly schema: S;
  readonly description: string;
  /** Taken by the CLI (`{}`: every name by the rule). */
  readonly cli?: CliOverrides;
}

/** `idleTimeoutMs` → `--idle-timeout`. */
export function flagOf(key: string): string {
  return `--${key.replace(/Ms$/, "").replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

/** `idleTimeoutMs` → `MCPO_IDLE_TIMEOUT_MS`. */
export function envOf(key: string): string {
  return `MCPO_${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
}

/** The number inside `.default()`/`.optional()`/`.readonly()` wrappers, if it is one. */
function innerType(schema: z.ZodType): z.ZodType {
  let inner: z.ZodType = schema;
  while (
    inner instanceof z.ZodDefault ||
    inner instanceof z.ZodOptional ||
    inner instanceof z.ZodReadonly
  )
    inner = inner.unwrap() as z.ZodType;
  return inner;
}

function kindOf(key: string, schema: z.ZodType): CliKind {
  if (key.endsWith("Ms")) return "duration";
  if (key.endsWith("Port")) return "port";
  const inner = innerType(schema);
  if (inner instanceof z.ZodBoolean) return "boolean";
  return inner instanceof z.ZodNumber ? "int" : "string";
}

/** A section's fields, each with its description and CLI names attached as zod metadata. */
function section<T extends Record<string, FieldSpec>>(
  name: string,
  fields: T,
): { [K in keyof T]: T[K]["schema"] } {
  const shape: Record<string, z.ZodType> = {};
  for (const [key, field] of Object.entries(fields)) {
    const overrides = field.cli;
    const meta: SettingMeta = {
      description: field.description,
      ...(overrides
        ? {
            cli: {
              flag: overrides.flag ?? flagOf(key),
              env: overrides.env ?? envOf(key),
              fileKey: `${name}.${overrides.fileKey ?? key}`,
              kind: kindOf(key, field.schema),
              ...(overrides.default === undefined ? {} : { default: overrides.default }),
              ...(overrides.off === undefined ? {} : { off: overrides.off }),
              ...(overrides.secret === true ? { secret: true } : {}),
            },
          }
        : {}),
    };
    shape[key] = field.schema.meta({ ...meta });
  }
  return shape as { [K in keyof T]: T[K]["schema"] };
}

/** A key's metadata: its description and, when the CLI takes it, its CLI names. */
export function settingMetaOf(schema: z.ZodType): SettingMeta | undefined {
  const meta = schema.meta();
  if (typeof meta?.description !== "string") return undefined;
  const cli = (meta as { cli?: CliMeta }).cli;
  return { description: meta.description, ...(cli ? { cli } : {}) };
}

/** The CLI names of a key, when the CLI takes it. */
export function cliMetaOf(schema: z.ZodType): CliMeta | undefined {
  return settingMetaOf(schema)?.cli;
}

/** The smallest and largest value a numeric key accepts (for the CLI's messages). */
export function boundsOf(schema: z.ZodType): { min: number; max: number } | undefined {
  const inner = innerType(schema);
  if (!(inner instanceof z.ZodNumber)) return undefined;
  return {
    min: inner.minValue ?? Number.MIN_SAFE_INTEGER,
    max: inner.maxValue ?? Number.MAX_SAFE_INTEGER,
  };
}

// Checks, each with the message the components have always given.
const POSITIVE = "expected a positive integer";
const positiveInt = (max = Number.MAX_SAFE_INTEGER) =>
  z.number(POSITIVE).int(POSITIVE).min(1, POSITIVE).max(max, `${POSITIVE} up to ${max}`);
const NON_NEGATIVE = "expected a non-negative integer";
const nonNegativeInt = () => z.number(NON_NEGATIVE).int(NON_NEGATIVE).min(0, NON_NEGATIVE);
const PORT = "expected a port from 0 to 65535";
const port = () => z.number(PORT).int(PORT).min(0, PORT).max(65_535, PORT);
const NON_EMPTY = "expected a non-empty string";
const nonEmpty = () => z.string(NON_EMPTY).refine((value) => value.trim() !== "", NON_EMPTY);
const BOOLEAN = "expected true or false";

// Keys shared by components: stated once, placed in each component's section.
const sessionTimeoutMs = {
  schema: positiveInt().default(30_000),
  description: "consumer group session timeout",
} satisfies FieldSpec;
const partitions = {
  schema: positiveInt(10_000).default(6),
  description: "partitions of topics it creates",
} satisfies FieldSpec;
/** Kafka's `retention.ms` for "keep for ever": model-calls is the source of truth. */
export const UNLIMITED_RETENTION_MS = -1;

/** The topic setting that says whose clock a record's timestamp is. */
export const TIMESTAMP_TYPE_CONFIG = "message.timestamp.type";
/** Its value for the broker's clock at append (the other is `CreateTime`: the producer's). */
export const LOG_APPEND_TIME = "LogAppendTime";

/**
 * The settings model-calls is created with, by every component that creates it: its retention
 * (`retentionMs`, -1: for ever), and the broker's clock as every record's timestamp
 * (`message.timestamp.type=LogAppendTime`). The processor judges each event's time against its
 * record's timestamp (`maxClockSkewMs`, `maxEventAgeMs`): the broker's clock is one clock, not the
 * producers', and it is in the log, so a replay judges every record as the live run did.
 */
export function modelCallsTopicConfig(retentionMs: number): Readonly<Record<string, string>> {
  return Object.freeze({
    "retention.ms": String(retentionMs),
    [TIMESTAMP_TYPE_CONFIG]: LOG_APPEND_TIME,
  });
}

const modelCallsRetentionMs = {
  schema: z
    .number("expected -1 or a positive integer")
    .int("expected -1 or a positive integer")
    .min(-1, "expected -1 or a positive integer")
    .refine((value) => value !== 0, "expected -1 or a positive integer")
    .default(-1),
  description:
    "retention of the model-calls topic when it is created, ms (-1: unlimited; it is the source of truth)",
} satisfies FieldSpec;
const unknownSchemaIdGraceMs = {
  schema: nonNegativeInt().default(15_000),
  description:
    "how long records of a schema id the registry does not know wait before dead-lettering",
} satisfies FieldSpec;
const autoCreateTopics = {
  schema: z.boolean(BOOLEAN).default(true),
  description:
    "create the topics it needs when missing (false: only check that they exist, for credentials without CREATE; run `mcp-observatory topics create` once with operator rights)",
} satisfies FieldSpec;
const autoRegisterSchemas = {
  schema: z.boolean(BOOLEAN).default(true),
  description:
    "register its schemas and set their subjects' compatibility (false: only look the registered schemas up, for read-only registry credentials; run `mcp-observatory topics create` once with operator rights)",
} satisfies FieldSpec;
const metricsPort = {
  schema: port().optional(),
  description: "Prometheus /metrics port, on the metrics host (-1: off, 0: any free port)",
} satisfies FieldSpec;
const HOST = "expected a host name or IP address to listen on, e.g. 127.0.0.1, 0.0.0.0 or ::";
const metricsHost = {
  schema: z
    .string(HOST)
    .regex(/^[A-Za-z0-9._:%-]+$/, HOST)
    .default("127.0.0.1"),
  description:
    "address the /metrics, /healthz and /readyz endpoint listens on (127.0.0.1: this host only; 0.0.0.0 or :: every interface, unauthenticated)",
} satisfies FieldSpec;

/** The window part: the processor's, and a replay's (which must equal the processor's). */
const windowShape = section("processor", {
  windowSizeMs: {
    schema: positiveInt().default(60_000),
    description: "tumbling window size",
    cli: { flag: "--window", env: "MCPO_WINDOW_MS", fileKey: "windowMs" },
  },
  graceMs: {
    schema: nonNegativeInt().default(10_000),
    description: "grace period for late events",
    cli: {},
  },
  allowedLatenessMs: {
    schema: nonNegativeInt().default(3_600_000),
    description:
      "how long after a window closed its events still revise it (a new revision of its rollups; 0: never, they are late)",
    cli: {},
  },
  maxModelsPerWindow: {
    schema: positiveInt(1_000_000).default(200),
    description:
      "distinct models with a series of their own per service and window (the first seen, in log order); the calls of further models go to the window's overflow series (scope 'other')",
    cli: {},
  },
  maxClockSkewMs: {
    schema: positiveInt().default(300_000),
    description:
      "events ending more than this after their record's log time (the broker's append time) are dead-lettered (CLOCK_SKEW), watermark ticks and progress records that far ahead ignored",
    cli: {},
  },
  maxEventAgeMs: {
    schema: nonNegativeInt().default(0),
    description:
      "events ending more than this before their record's log time are dead-lettered (TOO_OLD); 0: no limit (replicas deliver what they buffered through outages)",
    cli: {},
  },
  metrics: {
    // Parsed by the caller with metrics/'s parseMetricsConfig (config/ does not import metrics/).
    schema: z.unknown().default(() => ({})),
    description: "thresholds and alert rules (see metrics/README.md)",
  },
});

/** Window size, grace and metrics: the part a replay shares with the processor. */
export const windowConfigSchema = z.strictObject(windowShape);

/**
 * The control records' key: the processor's, and a replay's (the same), in the file's `processor`
 * section. Secrets: no flag, never shown; read and checked (at least 32 bytes) by the processor.
 */
const controlKeyShape = section("processor", {
  controlKey: {
    schema: nonEmpty().optional(),
    description:
      "secret (at least 32 bytes) every processor and replay of a log shares: control records on model-calls are signed with it, and those whose MAC is missing or wrong are dead-lettered (CONTROL_UNAUTHENTICATED); unset: control records are not authenticated",
    cli: { secret: true },
  },
  controlKeyFile: {
    schema: nonEmpty().optional(),
    description: "a file holding the controlKey (trailing newline dropped)",
    cli: { secret: true },
  },
});

/** The stream processor's settings (connection settings aside). */
export const processorConfigSchema = z.strictObject({
  ...windowShape,
  ...controlKeyShape,
  ...section("processor", {
    groupId: {
      schema: nonEmpty().optional(),
      description:
        "consumer group (default: the topic prefix's stem, then -processor: mcpo-processor)",
      cli: { flag: "--group", env: "MCPO_PROCESSOR_GROUP" },
    },
    idleTimeoutMs: {
      schema: positiveInt().default(30_000),
      description: "an idle partition's windows close after this",
      cli: {},
    },
    checkpointIntervalMs: {
      schema: positiveInt().default(2000),
      description: "how often partition state is checkpointed",
      cli: {},
    },
    sessionTimeoutMs: { ...sessionTimeoutMs, cli: {} },
    partitions: { ...partitions, cli: {} },
    metricsPort: { ...metricsPort, cli: { default: 9464, off: -1 } },
    metricsHost: { ...metricsHost, cli: {} },
    metadataMaxAgeMs: {
      schema: positiveInt().default(5000),
      description: "how soon partitions added to model-calls are noticed",
      cli: {},
    },
    unknownSchemaIdGraceMs: { ...unknownSchemaIdGraceMs, cli: {} },
    modelCallsRetentionMs: { ...modelCallsRetentionMs, cli: {} },
    autoCreateTopics: { ...autoCreateTopics, cli: {} },
    autoRegisterSchemas: { ...autoRegisterSchemas, cli: {} },
    resetState: {
      schema: z.boolean(BOOLEAN).default(false),
      description:
        "discard the group's checkpoints and rebuild every partition's state from the log's start (once, every member stopped)",
      cli: {},
    },
    clientId: {
      schema: nonEmpty().optional(),
      description: "Kafka client id (default mcpo-processor- and a random suffix)",
    },
  }),
});

/** The PostgreSQL sink's settings (connection settings aside). */
export const sinkConfigSchema = z.strictObject(
  section("sink", {
    groupId: {
      schema: nonEmpty().optional(),
      description: "consumer group (default: the topic prefix's stem, then -sink: mcpo-sink)",
      cli: { flag: "--group", env: "MCPO_SINK_GROUP" },
    },
    sessionTimeoutMs: { ...sessionTimeoutMs, cli: {} },
    metricsPort: { ...metricsPort, cli: { default: 9465, off: -1 } },
    metricsHost: { ...metricsHost, cli: {} },
    unknownSchemaIdGraceMs: { ...unknownSchemaIdGraceMs, cli: {} },
    modelCallsRetentionMs: { ...modelCallsRetentionMs, cli: {} },
    autoCreateTopics: { ...autoCreateTopics, cli: {} },
    autoRegisterSchemas: { ...autoRegisterSchemas, cli: {} },
    migrate: {
      schema: z.boolean(BOOLEAN).default(true),
      description: "apply schema migrations at start",
    },
    partitions,
    retryInitialMs: {
      schema: positiveInt().default(200),
      description: "first delay while PostgreSQL is down",
    },
    retryMaxMs: {
      schema: positiveInt().default(10_000),
      description: "longest delay while PostgreSQL is down",
    },
    acceptNewTopics: {
      schema: z.boolean(BOOLEAN).default(false),
      description:
        "stored positions of a topic deleted and created again (or of another cluster) are dropped: the new topic is read from its start",
      cli: {},
    },
  }),
);

/** A replay's settings (connection settings aside): the processor's window part and its own. */
export const replayConfigSchema = z.strictObject({
  ...windowShape,
  ...controlKeyShape,
  ...section("replay", {
    services: {
      schema: z.array(nonEmpty(), "expected a list of service names").readonly().optional(),
      description: "only these services' rollups and alerts are emitted",
    },
    withEvents: {
      schema: z.boolean(BOOLEAN).default(false),
      description: "also hand over the decoded events (to rewrite spans)",
    },
    clientId: {
      schema: nonEmpty().default("mcpo-replay"),
      description: "Kafka client id",
    },
    autoRegisterSchemas: {
      schema: z.boolean(BOOLEAN).optional(),
      description:
        "register the ModelCallEvent schema and set its subject's compatibility (false: only look it up; default MCPO_AUTO_REGISTER_SCHEMAS, else true)",
    },
  }),
});

/** A component: its schema, the connection settings it takes, and what its caller keeps. */
interface Component<S extends z.ZodObject> {
  readonly schema: S;
  readonly connection: readonly (keyof EndpointOptions)[];
  /** Objects handed over as they are (logger, callbacks): accepted, not part of the config. */
  readonly handles: readonly string[];
}

/** TLS, SASL and registry credentials: every component that talks to Kafka and the registry. */
const SECURITY = ["kafkaTls", "kafkaSasl", "schemaRegistryAuth", "schemaRegistryCa"] as const;

const PROCESSOR = {
  schema: processorConfigSchema,
  connection: ["brokers", "schemaRegistryUrl", "topicPrefix", ...SECURITY] as const,
  handles: ["logger", "scheduler"] as const,
} satisfies Component<typeof processorConfigSchema>;

const SINK = {
  schema: sinkConfigSchema,
  connection: ["brokers", "schemaRegistryUrl", "databaseUrl", "topicPrefix", ...SECURITY] as const,
  handles: ["logger"] as const,
} satisfies Component<typeof sinkConfigSchema>;

const REPLAY = {
  schema: replayConfigSchema,
  connection: ["brokers", "schemaRegistryUrl", "databaseUrl", "topicPrefix", ...SECURITY] as const,
  handles: ["from", "onOutputs", "onProgress"] as const,
} satisfies Component<typeof replayConfigSchema>;

type Handles<C extends Component<z.ZodObject>> = {
  readonly [K in C["handles"][number]]?: unknown;
};

/** What {@link parseProcessorConfig} accepts: `ProcessorOptions`. */
export type ProcessorConfigInput = Pick<EndpointOptions, (typeof PROCESSOR.connection)[number]> &
  z.input<typeof processorConfigSchema> &
  Handles<typeof PROCESSOR>;
/** What {@link parseSinkConfig} accepts: `SinkOptions`. */
export type SinkConfigInput = Pick<EndpointOptions, (typeof SINK.connection)[number]> &
  z.input<typeof sinkConfigSchema> &
  Handles<typeof SINK>;
/** What {@link parseReplayConfig} accepts: `ReplayOptions`. */
export type ReplayConfigInput = Pick<EndpointOptions, (typeof REPLAY.connection)[number]> &
  z.input<typeof replayConfigSchema> &
  Handles<typeof REPLAY>;

type Config<S extends z.ZodObject> = Readonly<z.output<S>> & {
  /** Brokers, registry, database and topic prefix: option, then environment, then default. */
  readonly connection: ConnectionConfig;
};
/** A consumer's settings: its group always resolved (see {@link defaultGroupId}). */
type WithGroup<C> = Omit<C, "groupId"> & { readonly groupId: string };
/** The processor's settings, validated, defaulted and frozen. */
export type ProcessorConfig = WithGroup<Config<typeof processorConfigSchema>>;
/** The sink's settings, validated, defaulted and frozen. */
export type SinkConfig = WithGroup<Config<typeof sinkConfigSchema>>;
/** A replay's settings, validated, defaulted and frozen. */
export type ReplayConfig = Config<typeof replayConfigSchema>;

function show(value: unknown): string {
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}

function parseComponent<S extends z.ZodObject>(
  component: Component<S>,
  options: object,
): Config<S> {
  const given = options as Readonly<Record<string, unknown>>;
  const keys = Object.keys(component.schema.shape);
  const known = [...component.connection, ...keys, ...component.handles];
  const settings: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(given)) {
    if (keys.includes(key)) settings[key] = value;
    else if (!known.includes(key))
      throw new ConfigError(key, `unknown option (known: ${known.join(", ")})`);
  }
  const connection = connectionFromOptions(given);
  const result = component.schema.safeParse(settings);
  if (!result.success) {
    const issue = result.error.issues[0];
    const key = issue?.path.map(String).join(".") ?? "";
    const top = issue?.path[0];
    const field: unknown = top === undefined ? undefined : component.schema.shape[String(top)];
    const shown =
      field instanceof z.ZodType && cliMetaOf(field)?.secret === true
        ? "a secret, not shown"
        : show(top === undefined ? settings : settings[String(top)]);
    throw new ConfigError(key, `${issue?.message ?? "invalid"} (got ${shown})`);
  }
  return Object.freeze({ ...result.data, connection });
}

/**
 * The processor's settings from `ProcessorOptions`: every key checked and defaulted, the
 * connection resolved. `metrics` is returned as given (default `{}`) for `parseMetricsConfig`.
 *
 * @throws {ConfigError} naming the key that is invalid or unknown.
 */
export function parseProcessorConfig(options: ProcessorConfigInput = {}): ProcessorConfig {
  return withGroup(parseComponent(PROCESSOR, options), "processor");
}

function withGroup<C extends { readonly groupId?: string; readonly connection: ConnectionConfig }>(
  config: C,
  component: "processor" | "sink",
): WithGroup<C> {
  return Object.freeze({
    ...config,
    groupId: config.groupId ?? defaultGroupId(config.connection.topicPrefix, component),
  });
}

/**
 * The sink's settings from `SinkOptions`.
 *
 * @throws {ConfigError} naming the key that is invalid or unknown.
 */
export function parseSinkConfig(options: SinkConfigInput = {}): SinkConfig {
  return withGroup(parseComponent(SINK, options), "sink");
}

/**
 * A replay's settings from `ReplayOptions` (its callbacks and `from` stay the caller's).
 *
 * @throws {ConfigError} naming the key that is invalid or unknown.
 */
export function parseReplayConfig(options: ReplayConfigInput = {}): ReplayConfig {
  return parseComponent(REPLAY, options);
}
