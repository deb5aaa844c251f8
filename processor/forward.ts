/**
 * The alert forwarder (`mcp-observatory alerts forward`): a consumer-group member over the alerts
 * topic that delivers every transition to webhooks (signed JSON) and Alertmanagers (v2 API).
 *
 * - **Position**: records are handled one at a time, in order per partition; the group's offset
 *   moves past a record only once every destination accepted it or it was dead-lettered for that
 *   destination, so a restart resumes at the first record not finished.
 * - **Retries**: 5xx, 408, 429, network errors and timeouts are retried with the project's capped
 *   exponential backoff with full jitter (config/retry.ts), up to `maxAttempts`; any other answer
 *   is final. A transition a destination refused, or that ran out of attempts, goes to the
 *   dead-letter topic (`FORWARD_REJECTED`, `FORWARD_RETRIES_EXHAUSTED`, with the destination
 *   and the reason), and the others still get it.
 * - **Duplicates**: at least once. A transition already delivered by this process (a repeated
 *   record: the processor writes a transition again after its own restart; a partition handed
 *   back after a rebalance) is dropped by a bounded in-memory set of (alert id, state). A crash
 *   loses that set, and the record in flight then is sent again: receivers dedupe on the
 *   idempotency key (`<alert_id>:<state>`), and Alertmanager merges equal labels by itself.
 */
import { randomUUID } from "node:crypto";

import { collectDefaultMetrics, Counter, Registry } from "prom-client";

import type { AlertEvent } from "../avro/generated.js";
import {
  ConfigError,
  envOf,
  parseForwardConfig,
  readSecret,
  redactingLogger,
  rememberSecret,
  topicNames,
  type ForwardConfig,
  type ForwardConfigInput,
} from "../config/index.js";
import {
  kafkaSettingsOf,
  type BatchControl,
  type ConsumedBatch,
  type ConsumedRecord,
} from "../kafka/index.js";
import { DeliveryService } from "../ops/delivery-service.js";
import { pinoLogger, type OpsLogger } from "../ops/index.js";
import { deadLetterRecord, shellOptionsOf, Tally, type TopicSpec } from "../ops/service.js";
import {
  alertmanagerDestination,
  idempotencyKey,
  webhookDestination,
  type Destination,
} from "./forward-delivery.js";

/** Settings of {@link AlertForwarder}: the keys of `forwardConfigSchema`, connection settings, a logger. */
export type AlertForwarderOptions = ForwardConfigInput & { readonly logger?: OpsLogger };

/** Counters since start (each also a Prometheus counter). */
export interface ForwardStats {
  /** Alert records read (duplicates included). */
  readonly received: number;
  /** Deliveries a destination accepted. */
  readonly sent: number;
  /** Attempts that failed and were tried again. */
  readonly retried: number;
  /** Deliveries given up on (dead-lettered). */
  readonly failed: number;
  /** Deliveries skipped: the transition was already delivered. */
  readonly deduped: number;
  /** Records sent to the dead-letter topic. */
  readonly deadLettered: number;
}

/** The forwarder's Prometheus metrics, `mcpo_forward_*`. */
export class ForwardMetrics {
  readonly registry = new Registry();
  readonly sent = new Counter({
    name: "mcpo_forward_sent_total",
    help: "Alert transitions a destination accepted",
    labelNames: ["destination", "kind"],
    registers: [this.registry],
  });
  readonly retried = new Counter({
    name: "mcpo_forward_retried_total",
    help: "Delivery attempts that failed and were tried again",
    labelNames: ["destination", "kind"],
    registers: [this.registry],
  });
  readonly failed = new Counter({
    name: "mcpo_forward_failed_total",
    help: "Alert transitions given up on for a destination (dead-lettered), by reason",
    labelNames: ["destination", "kind", "reason"],
    registers: [this.registry],
  });
  readonly deduped = new Counter({
    name: "mcpo_forward_deduped_total",
    help: "Alert transitions not sent again: already delivered (a repeated or redelivered record)",
    labelNames: ["destination", "kind"],
    registers: [this.registry],
  });
  readonly received = new Counter({
    name: "mcpo_forward_received_total",
    help: "Alert records read from the alerts topic",
    registers: [this.registry],
  });
  readonly deadLettered = new Counter({
    name: "mcpo_forward_dead_lettered_total",
    help: "Records sent to the dead-letter topic, by code",
    labelNames: ["code"],
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "mcpo_forward_" });
  }
}

/** A destination's counters. */
interface DestinationTallies {
  readonly sent: Tally;
  readonly retried: Tally;
  readonly deduped: Tally;
}

/** How one destination's delivery of a record ended. */
type Outcome =
  | { readonly kind: "sent" }
  | { readonly kind: "dead"; readonly code: string; readonly reason: string }
  | { readonly kind: "stopped" };

/** The secret settings: the variable each falls back to (the schema's names, `envOf`). */
const SECRET_KEYS = {
  webhookSecret: "webhookSecretFile",
  alertmanagerPassword: "alertmanagerPasswordFile",
  alertmanagerToken: "alertmanagerTokenFile",
} as const;

/**
 * A secret from its option (else its variable), or from the file its `…File` option (else
 * variable) names, read with `readSecret`: its text, remembered so that it is redacted wherever
 * it would appear. Errors name the setting by its key, variable and file key.
 */
function secretOf(
  config: ForwardConfig,
  name: keyof typeof SECRET_KEYS,
  env: NodeJS.ProcessEnv,
): string | undefined {
  const given = (
    key: keyof typeof SECRET_KEYS | (typeof SECRET_KEYS)[keyof typeof SECRET_KEYS],
  ) => {
    const option = config[key];
    const variable = envOf(key);
    const chosen = typeof option === "string" && option !== "" ? option : env[variable];
    return chosen !== undefined && chosen !== ""
      ? { value: chosen, key: `${key} (${variable}, forward.${key})` }
      : undefined;
  };
  const found = readSecret(given(name), given(SECRET_KEYS[name]));
  if (!found) return undefined;
  const text = found.bytes.toString("utf8");
  if (text.trim() === "") throw new ConfigError(found.key, "expected a non-empty secret");
  rememberSecret(text);
  return text;
}

/**
 * The destinations of a config: its webhooks (with the signing secret, required with them) and
 * its Alertmanagers (with basic or bearer authentication, or none).
 *
 * @throws {ConfigError} naming the setting: no destination, a webhook without a secret, a
 *   password without a user name, both basic and bearer authentication.
 */
export function destinationsOf(
  config: ForwardConfig,
  env: NodeJS.ProcessEnv = process.env,
): Destination[] {
  if (config.webhookUrl.length === 0 && config.alertmanagerUrl.length === 0)
    throw new ConfigError(
      "webhookUrl",
      "give at least one destination: --webhook-url (MCPO_WEBHOOK_URL, forward.webhookUrl) or --alertmanager-url (MCPO_ALERTMANAGER_URL, forward.alertmanagerUrl)",
    );
  const destinations: Destination[] = [];
  if (config.webhookUrl.length > 0) {
    const secret = secretOf(config, "webhookSecret", env);
    if (secret === undefined)
      throw new ConfigError(
        "webhookSecret",
        "webhooks are signed: set MCPO_WEBHOOK_SECRET or MCPO_WEBHOOK_SECRET_FILE (forward.webhookSecret or forward.webhookSecretFile in the config file); e.g. openssl rand -hex 32",
      );
    const key = Buffer.from(secret, "utf8");
    config.webhookUrl.forEach((url, i) => {
      destinations.push(webhookDestination(`webhook-${i + 1}`, url, key, config.requestTimeoutMs));
    });
  }
  if (config.alertmanagerUrl.length > 0) {
    const password = secretOf(config, "alertmanagerPassword", env);
    const token = secretOf(config, "alertmanagerToken", env);
    const username = config.alertmanagerUsername;
    if (token !== undefined && (password !== undefined || username !== undefined))
      throw new ConfigError(
        "alertmanagerToken",
        "give either a bearer token or a user name and password for Alertmanager, not both",
      );
    if ((password === undefined) !== (username === undefined))
      throw new ConfigError(
        password === undefined ? "alertmanagerPassword" : "alertmanagerUsername",
        "basic authentication needs both alertmanagerUsername and alertmanagerPassword",
      );
    const authorization =
      token !== undefined
        ? `Bearer ${token}`
        : username !== undefined && password !== undefined
          ? `Basic ${Buffer.from(`${username}:${password}`, "utf8").toString("base64")}`
          : undefined;
    if (authorization !== undefined) rememberSecret(authorization.split(" ")[1] ?? "");
    config.alertmanagerUrl.forEach((url, i) => {
      destinations.push(
        alertmanagerDestination(
          `alertmanager-${i + 1}`,
          url,
          {
            severity: config.alertmanagerSeverity,
            firingTtlMs: config.alertmanagerFiringTtlMs,
            generatorUrl: config.alertmanagerGeneratorUrl,
          },
          authorization,
          config.requestTimeoutMs,
        ),
      );
    });
  }
  return destinations;
}

export class AlertForwarder extends DeliveryService<ForwardStats> {
  readonly metrics: ForwardMetrics;
  /** Where each alert goes. */
  readonly destinations: readonly Destination[];
  private readonly config: ForwardConfig;
  private readonly count: {
    readonly received: Tally;
    readonly failed: Tally;
  };
  private readonly tallies = new Map<string, DestinationTallies>();
  /** Transitions delivered (or dead-lettered) by this process, oldest first, bounded. */
  private readonly delivered = new Set<string>();

  /** @throws {ConfigError} naming the setting that is invalid or missing. */
  constructor(options: AlertForwarderOptions = {}) {
    const { logger: given, ...settings } = options;
    const config = parseForwardConfig(settings);
    const destinations = destinationsOf(config);
    const connection = config.connection;
    const metrics = new ForwardMetrics();
    super(
      shellOptionsOf("alerts-forward", config, {
        kafka: kafkaSettingsOf(connection, `mcpo-alerts-forward-${randomUUID().slice(0, 8)}`),
        topics: topicNames(connection.topicPrefix),
        logger: redactingLogger(given ?? pinoLogger("alerts-forward")),
        registry: metrics.registry,
      }),
      config,
      { deadLettered: metrics.deadLettered, stopReason: "the forwarder is stopping" },
    );
    this.config = config;
    this.metrics = metrics;
    this.destinations = destinations;
    this.count = {
      received: new Tally(metrics.received),
      failed: new Tally(metrics.failed),
    };
    for (const destination of destinations) {
      const labels = { destination: destination.name, kind: destination.kind };
      this.tallies.set(destination.name, {
        sent: new Tally(metrics.sent, labels),
        retried: new Tally(metrics.retried, labels),
        deduped: new Tally(metrics.deduped, labels),
      });
    }
  }

  protected requiredTopics(): readonly TopicSpec[] {
    return [
      { name: this.topics.alerts, partitions: this.config.partitions },
      { name: this.topics.deadLetter, partitions: this.config.partitions },
    ];
  }

  protected sourceTopic(): string {
    return this.topics.alerts;
  }

  protected override startedFields(): Record<string, unknown> {
    return {
      ...super.startedFields(),
      destinations: this.destinations.map((d) => `${d.name} ${d.origin}`),
    };
  }

  stats(): ForwardStats {
    const sum = (name: keyof DestinationTallies): number =>
      [...this.tallies.values()].reduce((total, tally) => total + tally[name].value, 0);
    return {
      received: this.count.received.value,
      sent: sum("sent"),
      retried: sum("retried"),
      failed: this.count.failed.value,
      deduped: sum("deduped"),
      deadLettered: this.deadLettered.value,
    };
  }

  protected async onBatch(batch: ConsumedBatch, control: BatchControl): Promise<void> {
    for (const record of batch.records) {
      if (this.stopped(control)) return;
      const finished = await this.handle(record, control);
      if (!finished) return; // stopping: this record is read again at the next start
      // The position moves past this record only now: every destination has it (or its dead
      // letter is written).
      await this.commitPast(control, record.offset);
    }
  }

  /** Delivers one record everywhere; false when the forwarder stopped before it was done. */
  private async handle(record: ConsumedRecord, control: BatchControl): Promise<boolean> {
    this.count.received.inc();
    const decoded = await this.decodeWaiting(this.pipelineCodecs.alerts, record, control);
    if (decoded === undefined) return false;
    if (!decoded.ok) {
      const letter = deadLetterRecord(record, decoded.code, decoded.reason);
      if (!(await this.sendDeadLetter(control, [letter], decoded.code))) return false;
      this.logger.warn("an alert record does not decode; dead-lettered it", {
        partition: record.partition,
        offset: record.offset,
        code: decoded.code,
      });
      return true;
    }
    const alert = decoded.value;
    const key = idempotencyKey(alert);
    if (this.delivered.has(key)) {
      for (const destination of this.destinations)
        this.tallies.get(destination.name)?.deduped.inc();
      this.logger.info("alert transition already delivered; not sent again", {
        alertId: alert.alert_id,
        state: alert.state,
        offset: record.offset,
      });
      return true;
    }
    const outcomes = await Promise.all(
      this.destinations.map((destination) => this.deliver(destination, alert, control)),
    );
    if (outcomes.some((outcome) => outcome.kind === "stopped")) return false;
    for (const [i, outcome] of outcomes.entries()) {
      if (outcome.kind !== "dead") continue;
      const destination = this.destinations[i] as Destination;
      const letter = deadLetterRecord(record, outcome.code, outcome.reason, {
        headers: {
          "mcpo-forward-destination": destination.name,
          "mcpo-forward-kind": destination.kind,
          "mcpo-forward-alert-id": alert.alert_id,
          "mcpo-forward-state": alert.state,
        },
      });
      if (!(await this.sendDeadLetter(control, [letter], outcome.code))) return false;
      this.count.failed.inc(1, {
        destination: destination.name,
        kind: destination.kind,
        reason: outcome.code,
      });
      this.logger.warn("alert transition dead-lettered for a destination", {
        destination: destination.name,
        alertId: alert.alert_id,
        state: alert.state,
        code: outcome.code,
        reason: outcome.reason,
      });
    }
    this.remember(key);
    return true;
  }

  private remember(key: string): void {
    this.delivered.add(key);
    if (this.delivered.size > this.config.dedupeEntries) {
      const oldest = this.delivered.values().next();
      if (oldest.done !== true) this.delivered.delete(oldest.value);
    }
  }

  /** One destination's delivery of an alert, retried while retriable and attempts remain. */
  private async deliver(
    destination: Destination,
    alert: AlertEvent,
    control: BatchControl,
  ): Promise<Outcome> {
    const tallies = this.tallies.get(destination.name) as DestinationTallies;
    let result;
    try {
      result = await this.retryDelivery(
        control,
        (attempt) => destination.send(alert, attempt),
        this.config.maxAttempts,
        (error, attempt, waitMs) => {
          tallies.retried.inc();
          this.logger.warn("delivery failed; retrying", {
            destination: destination.name,
            alertId: alert.alert_id,
            state: alert.state,
            attempt,
            error: error.message,
            waitMs: Math.round(waitMs),
          });
        },
      );
    } catch (error) {
      return {
        kind: "dead",
        code: "FORWARD_FAILED",
        reason: error instanceof Error ? error.message : String(error),
      };
    }
    switch (result.kind) {
      case "done":
        tallies.sent.inc();
        return { kind: "sent" };
      case "stopped":
        return { kind: "stopped" };
      case "exhausted":
        return { kind: "dead", code: "FORWARD_RETRIES_EXHAUSTED", reason: result.error.message };
      case "refused":
        return { kind: "dead", code: "FORWARD_REJECTED", reason: result.error.message };
    }
  }
}
