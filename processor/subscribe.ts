/**
 * Subscribing to alerts: for services that react to them (e.g. trip a circuit breaker when the
 * golden financial scenarios start failing). A consumer group over the alerts topic; each
 * transition reaches the handler once per (alert id, state) — replays and restarts of the
 * processor write identical transitions again, and the subscription drops those repeats.
 */
import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT } from "../avro/contracts.js";
import type { AlertEvent } from "../avro/generated.js";
import {
  connectionFromOptions,
  topicNames,
  type SecurityEndpointOptions,
} from "../config/index.js";
import { provisioningSwitch } from "../config/provisioning.js";
import { createGroupConsumer, kafkaSettingsOf } from "../kafka/index.js";

/** Options of {@link subscribeAlerts}. */
export interface AlertSubscriptionOptions extends SecurityEndpointOptions {
  /** The consumer group: subscribers in one group share the alerts; each group sees them all. */
  readonly groupId: string;
  /** Start from the oldest alert (true) or from now (false, default) when the group is new. */
  readonly fromBeginning?: boolean;
  readonly brokers?: string | readonly string[];
  readonly schemaRegistryUrl?: string;
  readonly topicPrefix?: string;
  /** Called when the handler throws or a record cannot be decoded; the subscription goes on. */
  readonly onError?: (error: Error) => void;
  /** How many recent (alert id, state) pairs are remembered to drop repeats (default 10 000). */
  readonly dedupeWindow?: number;
  /**
   * Register the AlertEvent schema and set its subject's compatibility (default
   * `MCPO_AUTO_REGISTER_SCHEMAS`, then true). false: write nothing to the registry, look the
   * schema up (a `SchemaNotRegisteredError` naming the subject when it is not registered).
   */
  readonly autoRegisterSchemas?: boolean;
}

/** A running subscription. */
export interface AlertSubscription {
  stop(): Promise<void>;
}

/**
 * Calls `handler` for every alert transition, in order per service. The offset is committed after
 * the handler returns, so a crash repeats at most the batch being handled.
 *
 * @throws {ConfigError} naming an invalid setting; Kafka or registry errors while starting.
 */
export async function subscribeAlerts(
  options: AlertSubscriptionOptions,
  handler: (alert: AlertEvent) => void | Promise<void>,
): Promise<AlertSubscription> {
  const connection = connectionFromOptions(options);
  const topic = topicNames(connection.topicPrefix).alerts;
  const codec = await AvroCodec.register(ALERT_EVENT, {
    registryUrl: connection.schemaRegistry,
    subject: valueSubject(topic),
    autoRegister: provisioningSwitch("autoRegisterSchemas", options.autoRegisterSchemas),
  });
  const seen = new Set<string>();
  const limit = options.dedupeWindow ?? 10_000;
  const report = (error: unknown): void => {
    options.onError?.(error instanceof Error ? error : new Error(String(error)));
  };
  const consumer = createGroupConsumer(
    kafkaSettingsOf(connection, `mcpo-alerts-${options.groupId}`),
    {
      groupId: options.groupId,
      topics: [topic],
      fromBeginning: options.fromBeginning ?? false,
      onBatch: async (batch, control) => {
        for (const record of batch.records) {
          if (!control.isRunning() || control.isStale()) return;
          const decoded = await codec.decode(record.value ?? Buffer.alloc(0));
          if (!decoded.ok)
            report(
              new Error(
                `alert at ${topic}[${record.partition}]@${record.offset}: ${decoded.error.message}`,
              ),
            );
          else {
            const key = `${decoded.value.alert_id}|${decoded.value.state}`;
            if (!seen.has(key)) {
              seen.add(key);
              if (seen.size > limit) seen.delete(seen.values().next().value as string);
              try {
                await handler(decoded.value);
              } catch (error) {
                report(error);
              }
            }
          }
          control.resolveOffset(record.offset);
        }
        // Through the batch (its error keeps the broker's type: a rebalance makes the member
        // rejoin), so the batch in flight at a stop commits too.
        const last = batch.records.at(-1);
        if (last) await control.commit((BigInt(last.offset) + 1n).toString());
      },
      onCrash: report,
    },
  );
  await consumer.start();
  return { stop: () => consumer.stop() };
}
