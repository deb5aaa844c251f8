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

/**
 * How the CLI reads a setting's text: `duration` (`10s`), `int`, `port`, `string`, `boolean`, or
 * `list` (a repeatable flag, a comma-separated variable, a file's list or string).
 */
export type CliKind = "duration" | "int" | "port" | "string" | "boolean" | "list";

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
  if (inner instanceof z.ZodArray) return "list";
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

/**
 * The settings of every consumer service on the shared shell (ops/service.ts): its group
 * member's session, its metrics endpoint (on `metricsPortDefault` from the CLI), and whether it
 * may create topics and register schemas.
 */
function consumerServiceSettings(metricsPortDefault: number) {
  return {
    sessionTimeoutMs: { ...sessionTimeoutMs, cli: {} },
    metricsPort: { ...metricsPort, cli: { default: metricsPortDefault, off: -1 } },
    metricsHost: { ...metricsHost, cli: {} },
    unknownSchemaIdGraceMs: { ...unknownSchemaIdGraceMs, cli: {} },
    autoCreateTopics: { ...autoCreateTopics, cli: {} },
    autoRegisterSchemas: { ...autoRegisterSchemas, cli: {} },
  };
}

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
    partitions: { ...partitions, cli: {} },
    ...consumerServiceSettings(9464),
    metadataMaxAgeMs: {
      schema: positiveInt().default(5000),
      description: "how soon partitions added to model-calls are noticed",
      cli: {},
    },
    modelCallsRetentionMs: { ...modelCallsRetentionMs, cli: {} },
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
    ...consumerServiceSettings(9465),
    modelCallsRetentionMs: { ...modelCallsRetentionMs, cli: {} },
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

const WEBHOOK_URL = "expected http(s) URLs";
const forwardUrl = (message: string) =>
  z
    .string(message)
    .trim()
    .pipe(z.url({ protocol: /^https?$/, error: message }));

/**
 * The alert forwarder's settings (connection settings aside): `mcp-observatory alerts forward`,
 * the file's `forward` section.
 */
export const forwardConfigSchema = z.strictObject(
  section("forward", {
    webhookUrl: {
      schema: z.array(forwardUrl(WEBHOOK_URL), WEBHOOK_URL).readonly().default([]),
      description:
        "webhooks each alert is POSTed to as signed JSON (repeat the flag or comma-separate)",
      cli: {},
    },
    webhookSecret: {
      schema: nonEmpty().optional(),
      description:
        "secret the webhook requests are signed with (HMAC-SHA256, header X-MCPO-Signature); required with webhookUrl",
      cli: { secret: true },
    },
    webhookSecretFile: {
      schema: nonEmpty().optional(),
      description: "a file holding the webhookSecret (trailing newline dropped)",
      cli: { secret: true },
    },
    alertmanagerUrl: {
      schema: z
        .array(forwardUrl("expected Alertmanager base URLs"), "expected Alertmanager base URLs")
        .readonly()
        .default([]),
      description:
        "Alertmanager base URLs (http://host:9093): alerts go to its v2 API, POST /api/v2/alerts (repeat or comma-separate: every replica of a cluster)",
      cli: {},
    },
    alertmanagerUsername: {
      schema: nonEmpty().optional(),
      description: "Alertmanager basic-authentication user name (with alertmanagerPassword)",
      cli: {},
    },
    alertmanagerPassword: {
      schema: nonEmpty().optional(),
      description: "Alertmanager basic-authentication password",
      cli: { secret: true },
    },
    alertmanagerPasswordFile: {
      schema: nonEmpty().optional(),
      description: "a file holding the alertmanagerPassword",
      cli: { secret: true },
    },
    alertmanagerToken: {
      schema: nonEmpty().optional(),
      description: "Alertmanager bearer token (instead of basic authentication)",
      cli: { secret: true },
    },
    alertmanagerTokenFile: {
      schema: nonEmpty().optional(),
      description: "a file holding the alertmanagerToken",
      cli: { secret: true },
    },
    alertmanagerSeverity: {
      schema: nonEmpty().default("warning"),
      description: "the severity label of the alerts sent to Alertmanager",
      cli: {},
    },
    alertmanagerGeneratorUrl: {
      schema: forwardUrl("expected an http(s) URL").optional(),
      description:
        "the generatorURL of the alerts sent to Alertmanager (a dashboard, say); none by default",
      cli: {},
    },
    alertmanagerFiringTtlMs: {
      schema: positiveInt().default(86_400_000),
      description:
        "a firing alert is sent to Alertmanager with endsAt this far ahead, so it stays active until its resolving transition (or this passes)",
      cli: {},
    },
    requestTimeoutMs: {
      schema: positiveInt().default(10_000),
      description: "how long one request to a destination may take before it counts as failed",
      cli: { env: "MCPO_FORWARD_REQUEST_TIMEOUT_MS" },
    },
    maxAttempts: {
      schema: positiveInt(1000).default(10),
      description:
        "attempts per alert and destination (5xx, 408, 429, network errors and timeouts are retried); then it is dead-lettered",
      cli: { env: "MCPO_FORWARD_MAX_ATTEMPTS" },
    },
    retryInitialMs: {
      schema: positiveInt().default(500),
      description: "first retry's longest wait (capped exponential backoff with full jitter)",
      cli: { env: "MCPO_FORWARD_RETRY_INITIAL_MS" },
    },
    retryMaxMs: {
      schema: positiveInt().default(30_000),
      description: "longest wait between two attempts",
      cli: { env: "MCPO_FORWARD_RETRY_MAX_MS" },
    },
    dedupeEntries: {
      schema: positiveInt(10_000_000).default(10_000),
      description:
        "how many recent (alert id, state) pairs are remembered to drop a redelivered or repeated transition",
      cli: { env: "MCPO_FORWARD_DEDUPE_ENTRIES" },
    },
    fromBeginning: {
      schema: z.boolean(BOOLEAN).default(false),
      description:
        "a new consumer group starts from the oldest alert on the topic (default: from now); a group with a committed position resumes there",
      cli: { env: "MCPO_FORWARD_FROM_BEGINNING" },
    },
    groupId: {
      schema: nonEmpty().optional(),
      description:
        "consumer group (default: the topic prefix's stem, then -alerts-forward: mcpo-alerts-forward)",
      cli: { flag: "--group", env: "MCPO_FORWARD_GROUP" },
    },
    ...consumerServiceSettings(9466),
    partitions: { ...partitions, cli: {} },
  }),
);

/**
 * The OTLP receiver's settings (connection settings aside): `mcp-observatory ingest`, the file's
 * `ingest` section.
 */
export const ingestConfigSchema = z.strictObject(
  section("ingest", {
    host: {
      schema: z
        .string(HOST)
        .regex(/^[A-Za-z0-9._:%-]+$/, HOST)
        .default("127.0.0.1"),
      description:
        "address the OTLP/HTTP receiver listens on (127.0.0.1: this host only; 0.0.0.0 or :: every interface: set a bearerToken)",
      cli: { env: "MCPO_INGEST_HOST" },
    },
    port: {
      schema: port().default(4318),
      description: "port of the OTLP/HTTP receiver (POST /v1/traces; 0: any free port)",
      cli: { env: "MCPO_INGEST_PORT" },
    },
    maxBodyBytes: {
      schema: positiveInt(1024 * 1024 * 1024).default(4 * 1024 * 1024),
      description: "largest request body, bytes, compressed and after gzip alike (larger: 413)",
      cli: { env: "MCPO_INGEST_MAX_BODY_BYTES" },
    },
    requestTimeoutMs: {
      schema: positiveInt().default(30_000),
      description:
        "a request must arrive whole within this (else 408), so slow clients cannot hold the server",
      cli: { env: "MCPO_INGEST_REQUEST_TIMEOUT_MS" },
    },
    publishTimeoutMs: {
      schema: positiveInt().default(10_000),
      description:
        "how long a request waits for Kafka to acknowledge its events; longer, or Kafka failing: 503 with Retry-After",
      cli: { env: "MCPO_INGEST_PUBLISH_TIMEOUT_MS" },
    },
    retryAfterMs: {
      schema: positiveInt().default(5000),
      description: "the Retry-After of 429 and 503 answers (rounded up to seconds)",
      cli: { env: "MCPO_INGEST_RETRY_AFTER_MS" },
    },
    maxConcurrentRequests: {
      schema: positiveInt(100_000).default(64),
      description: "requests handled at once; more are answered 429 with Retry-After",
      cli: { env: "MCPO_INGEST_MAX_CONCURRENT_REQUESTS" },
    },
    bearerToken: {
      schema: nonEmpty().optional(),
      description:
        "secret clients must send as Authorization: Bearer <token> (else 401); unset: no authentication",
      cli: { env: "MCPO_INGEST_TOKEN", secret: true },
    },
    bearerTokenFile: {
      schema: nonEmpty().optional(),
      description: "a file holding the bearerToken (trailing newline dropped)",
      cli: { env: "MCPO_INGEST_TOKEN_FILE", secret: true },
    },
    captureContent: {
      schema: z.boolean(BOOLEAN).default(false),
      description:
        "keep gen_ai.input.messages and gen_ai.output.messages as the events' prompt_text and response_text (default: only their size and keyed digest)",
      cli: { env: "MCPO_INGEST_CAPTURE_CONTENT" },
    },
    metricsPort: { ...metricsPort, cli: { default: 9467, off: -1 } },
    metricsHost: { ...metricsHost, cli: {} },
    partitions: { ...partitions, cli: {} },
    modelCallsRetentionMs: { ...modelCallsRetentionMs, cli: {} },
    autoCreateTopics: { ...autoCreateTopics, cli: {} },
    autoRegisterSchemas: { ...autoRegisterSchemas, cli: {} },
    clientId: {
      schema: nonEmpty().default("mcpo-ingest"),
      description: "Kafka client id",
    },
  }),
);

const METRICS_URL = "expected an http(s) URL of a /metrics endpoint";

/**
 * The web UI's settings (connection settings aside): `mcp-observatory ui`, the file's `ui`
 * section.
 */
export const uiConfigSchema = z.strictObject(
  section("ui", {
    host: {
      schema: z
        .string(HOST)
        .regex(/^[A-Za-z0-9._:%-]+$/, HOST)
        .default("127.0.0.1"),
      description:
        "address the web UI listens on (127.0.0.1: this host only; 0.0.0.0 or :: every interface: set a password)",
      cli: { env: "MCPO_UI_HOST" },
    },
    port: {
      schema: port().default(4000),
      description: "port of the web UI (0: any free port)",
      cli: { env: "MCPO_UI_PORT" },
    },
    user: {
      schema: nonEmpty().default("observatory"),
      description: "user name of the HTTP basic authentication (with a password)",
      cli: { env: "MCPO_UI_USER" },
    },
    password: {
      schema: nonEmpty().optional(),
      description:
        "secret of the HTTP basic authentication: every request must carry user and password (else 401); unset: no authentication",
      cli: { env: "MCPO_UI_PASSWORD", secret: true },
    },
    passwordFile: {
      schema: nonEmpty().optional(),
      description: "a file holding the password (trailing newline dropped)",
      cli: { env: "MCPO_UI_PASSWORD_FILE", secret: true },
    },
    metricsUrl: {
      schema: z.array(forwardUrl(METRICS_URL), METRICS_URL).readonly().default([]),
      description:
        "/metrics endpoints of processors and sinks whose health (lag, late events, dead letters) the pipeline page shows (repeat the flag or comma-separate)",
      cli: { env: "MCPO_UI_METRICS_URL" },
    },
    liveAlerts: {
      schema: z.boolean(BOOLEAN).default(true),
      description:
        "push alert transitions to open pages as they happen, from the alerts topic (needs Kafka and the registry); false: PostgreSQL only",
      cli: { env: "MCPO_UI_LIVE_ALERTS" },
    },
  }),
);

const OTLP_URL = "expected an http(s) URL";

/**
 * The OTLP exporter's settings (connection settings aside): `mcp-observatory export otlp`, the
 * file's `otlpExport` section. The endpoint, headers, compression and timeout fall back to the
 * OpenTelemetry variables (`OTEL_EXPORTER_OTLP_*`, read by otlp/export.ts), so they have no
 * defaults here.
 */
export const otlpExportConfigSchema = z.strictObject(
  section("otlpExport", {
    endpoint: {
      schema: forwardUrl(OTLP_URL).optional(),
      description:
        "OTLP/HTTP endpoint the spans are POSTed to (/v1/traces is appended unless the URL ends with it); default OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (as is), else OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/traces)",
      cli: { env: "MCPO_OTLP_ENDPOINT" },
    },
    headers: {
      schema: nonEmpty().optional(),
      description:
        "request headers, k=v,k2=v2 with URL-encoded values (secrets: never shown); default OTEL_EXPORTER_OTLP_TRACES_HEADERS, else OTEL_EXPORTER_OTLP_HEADERS",
      cli: { env: "MCPO_OTLP_HEADERS", secret: true },
    },
    compression: {
      schema: z.enum(["gzip", "none"], "expected gzip or none").optional(),
      description:
        "request body compression, gzip or none; default OTEL_EXPORTER_OTLP_TRACES_COMPRESSION, else OTEL_EXPORTER_OTLP_COMPRESSION, else none",
      cli: { env: "MCPO_OTLP_COMPRESSION" },
    },
    timeoutMs: {
      schema: positiveInt().optional(),
      description:
        "how long one export request may take; default OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, else OTEL_EXPORTER_OTLP_TIMEOUT (ms), else 10s",
      cli: { env: "MCPO_OTLP_TIMEOUT_MS" },
    },
    maxSpansPerRequest: {
      schema: positiveInt(1_000_000).default(512),
      description: "most spans in one export request (a consumer batch may take several)",
      cli: { env: "MCPO_OTLP_MAX_SPANS_PER_REQUEST" },
    },
    maxRequestBytes: {
      schema: positiveInt(1024 * 1024 * 1024).default(4 * 1024 * 1024),
      description:
        "largest export request body, bytes before compression (more spans go in the next request)",
      cli: { env: "MCPO_OTLP_MAX_REQUEST_BYTES" },
    },
    retryInitialMs: {
      schema: positiveInt().default(500),
      description:
        "first retry's longest wait after a 429, 5xx or network failure (capped exponential backoff with full jitter; a Retry-After is honoured)",
      cli: { env: "MCPO_OTLP_RETRY_INITIAL_MS" },
    },
    retryMaxMs: {
      schema: positiveInt().default(30_000),
      description:
        "longest wait between two attempts (retries go on until the endpoint takes the spans)",
      cli: { env: "MCPO_OTLP_RETRY_MAX_MS" },
    },
    fromBeginning: {
      schema: z.boolean(BOOLEAN).default(false),
      description:
        "a new consumer group starts from the oldest event on model-calls (default: from now); a group with a committed position resumes there",
      cli: { env: "MCPO_OTLP_FROM_BEGINNING" },
    },
    groupId: {
      schema: nonEmpty().optional(),
      description:
        "consumer group (default: the topic prefix's stem, then -otlp-export: mcpo-otlp-export)",
      cli: { flag: "--group", env: "MCPO_OTLP_EXPORT_GROUP" },
    },
    ...consumerServiceSettings(9468),
    partitions: { ...partitions, cli: {} },
    modelCallsRetentionMs: { ...modelCallsRetentionMs, cli: {} },
  }),
);

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

const FORWARD = {
  schema: forwardConfigSchema,
  connection: ["brokers", "schemaRegistryUrl", "topicPrefix", ...SECURITY] as const,
  handles: ["logger", "fetch"] as const,
} satisfies Component<typeof forwardConfigSchema>;

const INGEST = {
  schema: ingestConfigSchema,
  connection: ["brokers", "schemaRegistryUrl", "topicPrefix", ...SECURITY] as const,
  handles: ["logger"] as const,
} satisfies Component<typeof ingestConfigSchema>;

const UI = {
  schema: uiConfigSchema,
  connection: ["brokers", "schemaRegistryUrl", "databaseUrl", "topicPrefix", ...SECURITY] as const,
  handles: ["logger"] as const,
} satisfies Component<typeof uiConfigSchema>;

const OTLP_EXPORT = {
  schema: otlpExportConfigSchema,
  connection: ["brokers", "schemaRegistryUrl", "topicPrefix", ...SECURITY] as const,
  handles: ["logger"] as const,
} satisfies Component<typeof otlpExportConfigSchema>;

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

/** What {@link parseForwardConfig} accepts: `AlertForwarderOptions`. */
export type ForwardConfigInput = Pick<EndpointOptions, (typeof FORWARD.connection)[number]> &
  z.input<typeof forwardConfigSchema> &
  Handles<typeof FORWARD>;

/** What {@link parseIngestConfig} accepts: `IngestOptions`. */
export type IngestConfigInput = Pick<EndpointOptions, (typeof INGEST.connection)[number]> &
  z.input<typeof ingestConfigSchema> &
  Handles<typeof INGEST>;

/** What {@link parseUiConfig} accepts: `UiOptions`. */
export type UiConfigInput = Pick<EndpointOptions, (typeof UI.connection)[number]> &
  z.input<typeof uiConfigSchema> &
  Handles<typeof UI>;

/** What {@link parseOtlpExportConfig} accepts: `OtlpExporterOptions`. */
export type OtlpExportConfigInput = Pick<EndpointOptions, (typeof OTLP_EXPORT.connection)[number]> &
  z.input<typeof otlpExportConfigSchema> &
  Handles<typeof OTLP_EXPORT>;

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
/** The alert forwarder's settings, validated, defaulted and frozen. */
export type ForwardConfig = WithGroup<Config<typeof forwardConfigSchema>>;

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
  component: "processor" | "sink" | "alerts-forward" | "otlp-export",
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

/**
 * The alert forwarder's settings from `AlertForwarderOptions` (its secrets are read by the
 * forwarder, with `readSecret`).
 *
 * @throws {ConfigError} naming the key that is invalid or unknown.
 */
export function parseForwardConfig(options: ForwardConfigInput = {}): ForwardConfig {
  return withGroup(parseComponent(FORWARD, options), "alerts-forward");
}

/** The OTLP receiver's settings, validated, defaulted and frozen. */
export type IngestConfig = Config<typeof ingestConfigSchema>;

/**
 * The OTLP receiver's settings from `IngestOptions` (its bearer token is read by the receiver,
 * with `readSecret`).
 *
 * @throws {ConfigError} naming the key that is invalid or unknown.
 */
export function parseIngestConfig(options: IngestConfigInput = {}): IngestConfig {
  return parseComponent(INGEST, options);
}

/** The OTLP exporter's settings, validated, defaulted and frozen. */
export type OtlpExportConfig = WithGroup<Config<typeof otlpExportConfigSchema>>;

/**
 * The OTLP exporter's settings from `OtlpExporterOptions` (the OpenTelemetry variables are read
 * by the exporter, see otlp/export.ts).
 *
 * @throws {ConfigError} naming the key that is invalid or unknown.
 */
export function parseOtlpExportConfig(options: OtlpExportConfigInput = {}): OtlpExportConfig {
  return withGroup(parseComponent(OTLP_EXPORT, options), "otlp-export");
}

/** The web UI's settings, validated, defaulted and frozen. */
export type UiConfig = Config<typeof uiConfigSchema>;

/**
 * The web UI's settings from `UiOptions` (its password is read by the server, with
 * `readSecret`).
 *
 * @throws {ConfigError} naming the key that is invalid or unknown.
 */
export function parseUiConfig(options: UiConfigInput = {}): UiConfig {
  return parseComponent(UI, options);
}
