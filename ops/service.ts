/**
 * The consumer-service shell the processor, the sink, the alert forwarder and the OTLP exporter
 * share (the last two through the delivery-service base, ./delivery-service.ts): an explicit
 * lifecycle (new, starting, running, stopping, stopped; a second `start()` is refused), the
 * topics it needs (created, or only checked with `autoCreateTopics: false`), its codecs
 * (registered, or only looked up with `autoRegisterSchemas: false`), its producer and
 * consumer-group member, its Prometheus endpoint, its options from a parsed config
 * ({@link shellOptionsOf}), counters kept once (each {@link Tally} feeds prom-client and `stats()`
 * alike), the one dead-letter record format, and the pause that keeps a member alive while it
 * waits.
 */
import type { Counter, Registry } from "prom-client";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import {
  ALERT_EVENT,
  METRIC_ROLLUP,
  MODEL_CALL_EVENT,
  type EventContract,
} from "../avro/contracts.js";
import type { AlertEvent, MetricRollup, ModelCallEvent } from "../avro/generated.js";
import { ObservatoryError, redactSecrets } from "../config/errors.js";
import { modelCallsTopicConfig, type TopicNames, type RegistryTarget } from "../config/index.js";
import {
  connectAdmin,
  createGroupConsumer,
  createRecordProducer,
  type BatchControl,
  type ConsumedRecord,
  type GroupConsumer,
  type GroupConsumerOptions,
  type KafkaSettings,
  type OutgoingRecord,
  type RecordProducer,
} from "../kafka/index.js";
import { provideTopics } from "../kafka/topics.js";
import { serveMetrics, type Health, type MetricsServer, type OpsLogger } from "./index.js";

/** Where a service is in its life. */
export type ServiceState = "new" | "starting" | "running" | "stopping" | "stopped" | "failed";

/** The codecs of the pipeline's three Avro topics. */
export interface PipelineCodecs {
  readonly events: AvroCodec<ModelCallEvent>;
  readonly rollups: AvroCodec<MetricRollup>;
  readonly alerts: AvroCodec<AlertEvent>;
}

/** A topic a service needs, created when missing. */
export interface TopicSpec {
  readonly name: string;
  readonly partitions: number;
  readonly config?: Readonly<Record<string, string>>;
}

/** A count kept once: it feeds the prom-client counter and `stats()` from the same call. */
export class Tally {
  private total = 0;

  /** `labels`: the counter's labels for this tally, when the counter has labels of its own. */
  constructor(
    private readonly counter: Counter,
    private readonly labels?: Readonly<Record<string, string>>,
  ) {}

  inc(amount = 1, labels: Readonly<Record<string, string>> | undefined = this.labels): void {
    if (amount === 0) return;
    this.total += amount;
    if (labels) this.counter.inc({ ...labels }, amount);
    else this.counter.inc(amount);
  }

  get value(): number {
    return this.total;
  }
}

/**
 * The topics every consumer service of the pipeline needs: model-calls (its retention, and the
 * broker's clock as its timestamps: {@link modelCallsTopicConfig}), the compacted rollups, alerts
 * and dead letters, with `partitions` partitions when it creates them.
 */
export function pipelineTopics(
  topics: TopicNames,
  partitions: number,
  modelCallsRetentionMs: number,
): TopicSpec[] {
  return [
    // The log is the source of truth: kept for ever unless configured otherwise.
    {
      name: topics.modelCalls,
      partitions,
      config: modelCallsTopicConfig(modelCallsRetentionMs),
    },
    { name: topics.metricRollups, partitions, config: { "cleanup.policy": "compact" } },
    { name: topics.alerts, partitions },
    { name: topics.deadLetter, partitions },
  ];
}

/** One of the pipeline's contracts and the topic whose values it is. */
export interface PipelineSubject<T> {
  readonly contract: EventContract<T>;
  readonly topic: string;
}

/** The pipeline's three contracts and their topics (the subjects are `<topic>-value`). */
export function pipelineSubjects(topics: TopicNames): {
  readonly events: PipelineSubject<ModelCallEvent>;
  readonly rollups: PipelineSubject<MetricRollup>;
  readonly alerts: PipelineSubject<AlertEvent>;
} {
  return {
    events: { contract: MODEL_CALL_EVENT, topic: topics.modelCalls },
    rollups: { contract: METRIC_ROLLUP, topic: topics.metricRollups },
    alerts: { contract: ALERT_EVENT, topic: topics.alerts },
  };
}

/**
 * The pipeline's three codecs: their schemas registered under their topics' subjects, or, with
 * `autoRegister: false`, only looked up there (see {@link AvroCodec.lookup}).
 */
export async function registerPipelineCodecs(
  registryUrl: RegistryTarget,
  topics: TopicNames,
  unknownIdGraceMs = 0,
  autoRegister = true,
): Promise<PipelineCodecs> {
  const codec = <T>({ contract, topic }: PipelineSubject<T>) =>
    AvroCodec.register<T>(contract, {
      registryUrl,
      subject: valueSubject(topic),
      unknownIdGraceMs,
      autoRegister,
    });
  const subjects = pipelineSubjects(topics);
  return {
    events: await codec(subjects.events),
    rollups: await codec(subjects.rollups),
    alerts: await codec(subjects.alerts),
  };
}

/** Where a record came from, as headers (dead letters and late events carry them). */
export function sourceHeaders(
  record: Pick<ConsumedRecord, "topic" | "partition" | "offset">,
): Record<string, string> {
  return {
    "mcpo-source-topic": record.topic,
    "mcpo-source-partition": String(record.partition),
    "mcpo-source-offset": record.offset,
  };
}

/**
 * The most bytes a dead-letter record's key, value and headers take together. The broker refuses
 * a record batch over the topic's `max.message.bytes` — 1 048 588 bytes by default, which the
 * dead-letter topic keeps (the services create it without that setting, and no setting of the
 * project changes it) — so a record must fit with room for the batch's framing. A source topic
 * may take bigger records than that; their dead letters are truncated to fit.
 */
export const DEAD_LETTER_MAX_BYTES = 1_000_000;

/** Bytes of a record's key, value and header names and values (what the broker counts, less framing). */
export function recordBytes(record: OutgoingRecord): number {
  const size = (data: string | Buffer | null | undefined): number =>
    data === null || data === undefined
      ? 0
      : typeof data === "string"
        ? Buffer.byteLength(data)
        : data.length;
  let total = size(record.key) + size(record.value);
  for (const [name, value] of Object.entries(record.headers ?? {}))
    total += size(name) + size(value);
  return total;
}

/**
 * The dead-letter record of `record`: its original key and bytes, where it came from, and why
 * (`mcpo-dlq-code`, `mcpo-dlq-reason` up to 1000 characters, `mcpo-dlq-schema-id` when known, and
 * any `headers` given, e.g. `mcpo-dlq-sqlstate`). A record that would take more than
 * {@link DEAD_LETTER_MAX_BYTES} keeps only the first bytes of its value that fit, and says so:
 * `mcpo-dlq-truncated` holds the original value's size in bytes (and `mcpo-dlq-key-truncated` the
 * key's, for a key too big to fit beside the headers).
 */
export function deadLetterRecord(
  record: ConsumedRecord,
  code: string,
  reason: string,
  options: {
    schemaId?: number;
    source?: Record<string, string>;
    headers?: Readonly<Record<string, string>>;
  } = {},
): OutgoingRecord {
  const headers: Record<string, string> = {
    ...(options.source ?? sourceHeaders(record)),
    "mcpo-dlq-code": code,
    "mcpo-dlq-reason": reason.slice(0, 1000),
    ...(options.schemaId === undefined ? {} : { "mcpo-dlq-schema-id": String(options.schemaId) }),
    ...options.headers,
  };
  const key = record.key;
  const value = record.value ?? Buffer.alloc(0);
  const letter = { key, value, headers };
  if (recordBytes(letter) <= DEAD_LETTER_MAX_BYTES) return letter;
  // The value's first bytes that fit (and the key's, for a key too big to fit beside the headers).
  const cut: Record<string, string> = { ...headers, "mcpo-dlq-truncated": String(value.length) };
  let kept = key;
  let room = DEAD_LETTER_MAX_BYTES - recordBytes({ key, value: null, headers: cut });
  if (key !== null && room < 0) {
    cut["mcpo-dlq-key-truncated"] = String(key.length);
    const keyRoom = DEAD_LETTER_MAX_BYTES - recordBytes({ key: null, value: null, headers: cut });
    kept = key.subarray(0, Math.max(0, keyRoom));
    room = keyRoom - kept.length;
  }
  const valueBytes = Math.min(value.length, Math.max(0, room));
  if (valueBytes === value.length) delete cut["mcpo-dlq-truncated"];
  return { key: kept, value: value.subarray(0, valueBytes), headers: cut };
}

/** Waits up to `ms` in steps of at most a second, heartbeating, until the batch stops running. */
export async function pauseWithHeartbeats(
  control: BatchControl,
  ms: number,
  stopped: () => boolean = () => false,
): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until && control.isRunning() && !stopped()) {
    await new Promise((resolve) => setTimeout(resolve, Math.min(1000, until - Date.now())));
    await control.heartbeat().catch(() => undefined);
  }
}

/** What to do with a batch, given where it starts and where the consumer's state needs to be. */
export type PositionDecision =
  | { readonly action: "go" }
  | { readonly action: "seek"; readonly to: bigint }
  /** The records in [from, to) are no longer in the log: go on from `to`. */
  | { readonly action: "gap"; readonly from: bigint; readonly to: bigint };

/**
 * Heals a consumer's position. A batch that starts at `first` when the state needs `wanted`:
 * go on when they agree; otherwise seek to `wanted` (the group's offset was behind it — the group
 * deleted, its offsets expired — or ahead of it); but when a seek to `wanted` (`sought`) already
 * came back starting further on, the records there are gone (retention, `deleteRecords`, a
 * compacted key): accept the gap rather than seek for ever.
 */
export function healPosition(
  first: bigint,
  wanted: bigint,
  sought: bigint | undefined,
): PositionDecision {
  if (first === wanted) return { action: "go" };
  if (first > wanted && sought === wanted) return { action: "gap", from: wanted, to: first };
  return { action: "seek", to: wanted };
}

/** A second `start()`, or a call that needs a running service. */
export class ServiceStateError extends ObservatoryError {
  constructor(component: string, action: string, state: ServiceState) {
    super("SERVICE_STATE", `${component}: cannot ${action} while ${state}`);
    this.name = "ServiceStateError";
  }
}

/** What a service gives its shell. */
export interface ServiceShellOptions {
  /** `processor`, `sink`, `alerts-forward`, `otlp-export`: names its logs. */
  readonly component: string;
  readonly kafka: KafkaSettings;
  readonly registryUrl: RegistryTarget;
  readonly topics: TopicNames;
  readonly logger: OpsLogger;
  /** How long records of a schema id the registry does not know wait (see `CodecOptions`). */
  readonly unknownSchemaIdGraceMs: number;
  /** false: never create a topic; a missing one stops `start()` (`TopicsNotProvisionedError`). */
  readonly autoCreateTopics: boolean;
  /** false: never write to the registry; the schemas' ids are looked up (`SchemaNotRegisteredError`). */
  readonly autoRegisterSchemas: boolean;
  /** Its Prometheus registry; served on `metricsPort` when given (0: any free port). */
  readonly registry: Registry;
  readonly metricsPort: number | undefined;
  /** The address the metrics endpoint listens on (default 127.0.0.1: loopback only). */
  readonly metricsHost?: string;
}

/** The keys of a parsed service config (`config/schemas.ts`) that its shell takes. */
export interface ShellConfig {
  readonly connection: { readonly schemaRegistry: RegistryTarget };
  readonly metricsPort?: number | undefined;
  readonly metricsHost?: string | undefined;
  readonly unknownSchemaIdGraceMs: number;
  readonly autoCreateTopics: boolean;
  readonly autoRegisterSchemas: boolean;
}

/** The shell's options of `component`: its parsed config's common keys and the parts it built. */
export function shellOptionsOf(
  component: string,
  config: ShellConfig,
  parts: {
    readonly kafka: KafkaSettings;
    readonly topics: TopicNames;
    readonly logger: OpsLogger;
    readonly registry: Registry;
  },
): ServiceShellOptions {
  return {
    component,
    kafka: parts.kafka,
    registryUrl: config.connection.schemaRegistry,
    topics: parts.topics,
    logger: parts.logger,
    registry: parts.registry,
    metricsPort: config.metricsPort,
    metricsHost: config.metricsHost,
    unknownSchemaIdGraceMs: config.unknownSchemaIdGraceMs,
    autoCreateTopics: config.autoCreateTopics,
    autoRegisterSchemas: config.autoRegisterSchemas,
  };
}

/**
 * The life of a consumer service. A subclass says which topics it needs, prepares what it owns
 * (`prepare`: a database pool, checkpoints), how its group member consumes
 * (`consumerOptions`), what to do before the member leaves (`beforeStop`) and after
 * (`afterStop`), and what it counted (`stats`).
 */
export abstract class ConsumerService<Stats extends { readonly [K in keyof Stats]: number }> {
  private lifecycle: ServiceState = "new";
  private stopping: Promise<void> | undefined;
  private metricsServer: MetricsServer | undefined;
  protected producer: RecordProducer | undefined;
  protected consumer: GroupConsumer | undefined;
  protected codecs: PipelineCodecs | undefined;
  /** Partitions the member holds; undefined until it joined the group. */
  private assigned: number | undefined;
  private failure: Error | undefined;
  private reportFailure: (error: Error) => void = () => undefined;
  /**
   * Resolves with the error when the service failed for good (its consumer stopped and will not
   * restart, or its state cannot be used): it has stopped by then. A process running the service
   * exits non-zero on it.
   */
  readonly failed: Promise<Error>;

  protected constructor(protected readonly shell: ServiceShellOptions) {
    this.failed = new Promise<Error>((resolve) => {
      this.reportFailure = resolve;
    });
  }

  get state(): ServiceState {
    return this.lifecycle;
  }

  /**
   * Where the Prometheus metrics are served, once started with a metrics port, as this host
   * reaches them (an endpoint on every interface through loopback).
   */
  get metricsUrl(): string | undefined {
    return this.metricsServer?.url;
  }

  /** The address the metrics endpoint listens on, once started with a metrics port. */
  get metricsAddress(): string | undefined {
    return this.metricsServer?.address;
  }

  /**
   * Creates missing topics (checks them, with `autoCreateTopics: false`), registers the schemas
   * (looks them up, with `autoRegisterSchemas: false`), prepares, connects and joins the group.
   */
  async start(): Promise<void> {
    if (this.lifecycle !== "new")
      throw new ServiceStateError(this.shell.component, "start", this.lifecycle);
    this.lifecycle = "starting";
    try {
      const admin = await connectAdmin(this.shell.kafka);
      try {
        const created = await provideTopics(
          admin,
          this.requiredTopics(),
          this.shell.autoCreateTopics,
        );
        if (created.length > 0) this.shell.logger.info("created topics", { topics: created });
        await this.inspect?.(admin);
      } finally {
        await admin.close();
      }
      this.codecs = await registerPipelineCodecs(
        this.shell.registryUrl,
        this.shell.topics,
        this.shell.unknownSchemaIdGraceMs,
        this.shell.autoRegisterSchemas,
      );
      this.producer = createRecordProducer(this.shell.kafka);
      await this.producer.connect();
      await this.prepare();
      const options = this.consumerOptions();
      this.consumer = createGroupConsumer(this.shell.kafka, {
        ...options,
        onAssignment: (partitions) => {
          this.assigned = partitions.length;
          options.onAssignment?.(partitions);
        },
        onCrash: (error) => {
          options.onCrash?.(error);
          this.fail(error);
        },
      });
      await this.consumer.start();
      if (this.shell.metricsPort !== undefined) {
        this.metricsServer = await serveMetrics(
          this.shell.registry,
          this.shell.metricsPort,
          this.shell.metricsHost ?? "127.0.0.1",
          () => this.health(),
        );
        this.shell.logger.info("metrics endpoint", {
          url: this.metricsUrl,
          address: this.metricsServer.address,
        });
      }
    } catch (error) {
      await this.stop().catch(() => undefined);
      throw error;
    }
    if (this.failure) return;
    this.lifecycle = "running";
    this.shell.logger.info(`${this.shell.component} started`, this.startedFields());
  }

  /**
   * Alive until it stopped or failed; ready while running in the group (an assignment came, even
   * an empty one: more members than partitions).
   */
  health(): Health {
    const alive = this.lifecycle !== "stopped" && this.lifecycle !== "failed";
    return {
      alive,
      ready: alive && this.lifecycle === "running" && this.assigned !== undefined,
      detail: {
        state: this.lifecycle,
        partitions: this.assigned ?? null,
        // Served on /healthz and /readyz: without secrets, as in the logs.
        ...(this.failure ? { failure: redactSecrets(this.failure.message) } : {}),
      },
    };
  }

  /**
   * The service cannot go on (its consumer stopped for good, or its state cannot be used): says
   * why in one line, stops, and resolves {@link failed}.
   */
  protected fail(error: Error): void {
    if (this.failure) return;
    this.failure = error;
    this.shell.logger.error(`${this.shell.component} failed; stopping`, {
      error: error.message,
      ...((error as { code?: unknown }).code === undefined
        ? {}
        : { code: (error as { code?: unknown }).code }),
    });
    void this.stop()
      .catch(() => undefined)
      .finally(() => {
        this.lifecycle = "failed";
        this.reportFailure(error);
      });
  }

  /** Checkpoints what it can, leaves the group (after the batch in flight), closes; once. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.lifecycle = "stopping";
      try {
        await this.beforeStop();
        await this.consumer?.stop();
      } finally {
        await this.producer?.disconnect().catch(() => undefined);
        await this.afterStop().catch(() => undefined);
        await this.metricsServer?.close();
        this.lifecycle = this.failure ? "failed" : "stopped";
        this.shell.logger.info(`${this.shell.component} stopped`, { ...this.stats() });
      }
    })();
    return this.stopping;
  }

  /** True once `stop()` was called. */
  protected get isStopping(): boolean {
    return this.stopping !== undefined;
  }

  /** The started service's codecs. */
  protected get pipelineCodecs(): PipelineCodecs {
    if (!this.codecs) throw new ServiceStateError(this.shell.component, "decode", this.lifecycle);
    return this.codecs;
  }

  /** The started service's producer. */
  protected get startedProducer(): RecordProducer {
    if (!this.producer)
      throw new ServiceStateError(this.shell.component, "produce", this.lifecycle);
    return this.producer;
  }

  /** Counters since start. */
  abstract stats(): Stats;
  protected abstract requiredTopics(): readonly TopicSpec[];
  protected abstract consumerOptions(): GroupConsumerOptions;
  /** Looks at the topics once they exist (the admin client is closed afterwards). */
  protected inspect?(admin: Awaited<ReturnType<typeof connectAdmin>>): Promise<void>;
  protected prepare(): Promise<void> {
    return Promise.resolve();
  }
  protected beforeStop(): Promise<void> {
    return Promise.resolve();
  }
  protected afterStop(): Promise<void> {
    return Promise.resolve();
  }
  protected startedFields(): Record<string, unknown> {
    return {};
  }
}
