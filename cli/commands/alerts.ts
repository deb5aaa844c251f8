/**
 * `alerts tail`: alert transitions as they arrive, as a table or as JSON lines. `alerts forward`:
 * the service that delivers them to webhooks and Alertmanager.
 */
import { randomUUID } from "node:crypto";

import type { AlertEvent } from "../../avro/generated.js";
import {
  topicNames,
  endpointOptionsOf,
  forwardConfigSchema,
  redactSecrets,
} from "../../config/index.js";
import { connectAdmin, kafkaSettingsOf } from "../../kafka/index.js";
import { MissingTopicError } from "../../processor/replay.js";
import { pinoLogger, untilSignal } from "../../ops/index.js";
import { AlertForwarder } from "../../processor/forward.js";
import { subscribeAlerts } from "../../processor/subscribe.js";
import { FORWARD_SETTINGS, type SettingsResolver } from "../config.js";
import { isoMicros, jsonLine, terminalText } from "../output.js";
import { checkKafka, checkRegistry } from "../preflight.js";

export interface TailFlags {
  readonly json?: boolean;
  readonly fromBeginning?: boolean;
  readonly service?: readonly string[];
  /** Exit after this many alerts. */
  readonly maxMessages?: number;
  /** Exit when no alert arrived for this long, ms. */
  readonly timeoutMs?: number;
}

const COLUMNS: readonly { header: string; width: number; value: (alert: AlertEvent) => string }[] =
  [
    { header: "emitted (event time)", width: 24, value: (a) => isoMicros(a.emitted_at) },
    { header: "state", width: 8, value: (a) => a.state.toUpperCase() },
    { header: "service", width: 16, value: (a) => a.service },
    { header: "rule", width: 34, value: (a) => a.rule },
    {
      header: "observed",
      width: 10,
      value: (a) => (a.observed_value === null ? "-" : formatValue(a.metric, a.observed_value)),
    },
    {
      header: "threshold",
      width: 10,
      value: (a) =>
        `${a.comparator === "gt" ? ">" : a.comparator === "gte" ? ">=" : a.comparator === "lt" ? "<" : "<="}${formatValue(a.metric, a.threshold)}`,
    },
    { header: "samples", width: 8, value: (a) => String(a.sample_count) },
    { header: "alert id", width: 32, value: (a) => a.alert_id },
  ];

function formatValue(metric: string, value: number): string {
  if (metric.endsWith("_rate")) return `${(value * 100).toFixed(1)}%`;
  if (metric.endsWith("_ms")) return `${value.toFixed(0)}ms`;
  return String(Number(value.toPrecision(4)));
}

function row(values: readonly string[]): string {
  return values
    .map((value, i) => terminalText(value).padEnd(COLUMNS[i]?.width ?? 0))
    .join(" ")
    .trimEnd();
}

export async function runAlertsTail(settings: SettingsResolver, flags: TailFlags): Promise<number> {
  const connection = settings.connection();
  await checkKafka(connection);
  await checkRegistry(connection);
  const topic = topicNames(connection.topicPrefix).alerts;
  const admin = await connectAdmin(kafkaSettingsOf(connection, "mcpo-alerts-tail"));
  try {
    if (!(await admin.exists(topic)))
      throw new MissingTopicError(
        `topic ${topic} does not exist yet: start the processor (it creates it) or run \`mcp-observatory topics create\`, or check the topic prefix (MCPO_TOPIC_PREFIX or --topic-prefix)`,
      );
  } finally {
    await admin.close();
  }
  const services = flags.service && flags.service.length > 0 ? new Set(flags.service) : undefined;
  const out = process.stdout;
  if (!flags.json) out.write(`${row(COLUMNS.map((c) => c.header))}\n`);
  let printed = 0;
  let idleTimer: NodeJS.Timeout | undefined;
  let finish: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => {
    finish = resolve;
  });
  const armIdle = (): void => {
    if (flags.timeoutMs === undefined) return;
    clearTimeout(idleTimer);
    idleTimer = setTimeout(finish, flags.timeoutMs);
  };
  process.once("SIGINT", finish);
  process.once("SIGTERM", finish);
  const subscription = await subscribeAlerts(
    {
      // A group of its own: every tail sees every alert, and `--from-beginning` means it.
      groupId: `mcpo-alerts-tail-${randomUUID().slice(0, 8)}`,
      fromBeginning: flags.fromBeginning ?? false,
      ...endpointOptionsOf(connection),
      onError: (error) => {
        process.stderr.write(`alerts tail: ${redactSecrets(error.message)}\n`);
      },
    },
    (alert) => {
      if (services && !services.has(alert.service)) return;
      if (flags.maxMessages !== undefined && printed >= flags.maxMessages) return;
      out.write(
        flags.json ? `${jsonLine(alert)}\n` : `${row(COLUMNS.map((c) => c.value(alert)))}\n`,
      );
      printed++;
      armIdle();
      if (flags.maxMessages !== undefined && printed >= flags.maxMessages) finish();
    },
  );
  armIdle();
  await finished;
  clearTimeout(idleTimer);
  await subscription.stop();
  return 0;
}

/**
 * `alerts forward`: runs the alert forwarder until SIGINT/SIGTERM (then stops it: exit 0) or
 * until it fails for good (thrown: the CLI prints it and exits non-zero). A setting the forwarder
 * refuses is named as it was given (flag, variable or file key).
 */
export async function runAlertsForward(settings: SettingsResolver): Promise<number> {
  const connection = settings.connection();
  const { databaseUrl: _unused, ...endpoints } = endpointOptionsOf(connection);
  const options = settings.options(forwardConfigSchema);
  const logLevel = settings.logLevel();
  let forwarder: AlertForwarder;
  try {
    forwarder = new AlertForwarder({
      ...endpoints,
      ...options,
      logger: pinoLogger("alerts-forward", logLevel),
    });
  } catch (error) {
    throw settings.renamed(error, FORWARD_SETTINGS);
  }
  await checkKafka(connection);
  await checkRegistry(connection);
  await forwarder.start();
  const outcome = await Promise.race([untilSignal().then(() => undefined), forwarder.failed]);
  if (outcome) throw outcome;
  await forwarder.stop();
  return 0;
}
