/**
 * `demo`: the whole pipeline on one machine, as a newcomer first meets it. Brings up the local
 * stack when no services are configured, applies the schema, starts the processor and the sink in
 * this process, runs a simulated fleet of MCP server replicas (real interceptors and Kafka
 * exporters) with one service drifting into breach and back, waits until every event is in
 * PostgreSQL and every window closed, then prints what the pipeline derived. Stops everything it
 * started, also on Ctrl-C.
 */
import { randomUUID } from "node:crypto";

import type pg from "pg";

import type { AlertEvent } from "../../avro/generated.js";
import {
  ConfigError,
  parseProcessorConfig,
  processorConfigSchema,
  topicNames,
  type ConnectionConfig,
  endpointOptionsOf,
  uiConfigSchema,
} from "../../config/index.js";
import type { OpsLogger } from "../../ops/index.js";
import { StreamProcessor } from "../../processor/processor.js";
import { subscribeAlerts, type AlertSubscription } from "../../processor/subscribe.js";
import { KafkaExporter } from "../../producer/exporters/kafka.js";
import { silentLogger } from "../../producer/logger.js";
import {
  loadStackConfig,
  stackDown,
  stackEndpoints,
  stackUp,
  type StackService,
} from "../../stack/index.js";
import { INSTALLED } from "../../stack/config.js";
import { ensurePostgresDatabase } from "../../stack/probes.js";
import { migrate } from "../../sink/migrate.js";
import { Sink } from "../../sink/sink.js";
import { openPool } from "../../sink/writer.js";
import { UiServer } from "../../ui/server.js";
import { CONNECTION, settingOf, type SettingsResolver } from "../config.js";
import { FLEET_SERVICES, runFleet, type FleetResult } from "../fleet.js";
import { count, jsonLine, table, terminalLines } from "../output.js";
import { checkKafka, checkPostgres, checkRegistry } from "../preflight.js";
import { queryRates, renderRates, type RatesRow } from "../rates.js";
import { processorSettings, sinkSettings } from "./run.js";

export interface DemoFlags {
  readonly durationMs: number;
  readonly rate: number;
  readonly services: number;
  readonly replicas: number;
  readonly keepStack?: boolean;
  /** After the summary, serve the web UI over the results until Ctrl-C. */
  readonly ui?: boolean;
  readonly json?: boolean;
  readonly verbose?: boolean;
}

/** The demo's topic prefix when none is given (its groups follow it: mcpo-demo-processor, …). */
export const DEMO_TOPIC_PREFIX = "mcpo-demo.";

/** The demo's window defaults: short, so a one-minute run closes a dozen windows. */
export const DEMO_DEFAULTS = Object.freeze({
  "processor.windowMs": 5000,
  "processor.graceMs": 1000,
  "processor.checkpointIntervalMs": 1000,
  "processor.metricsPort": 0,
  "sink.metricsPort": 0,
});

/** What the demo prints with `--json` (and, as tables, without). */
export interface DemoSummary {
  readonly startedAt: string;
  readonly endedAt: string;
  readonly windowMs: number;
  readonly graceMs: number;
  readonly topicPrefix: string;
  readonly services: readonly {
    readonly service: string;
    readonly produced: number;
    readonly spans: number;
    readonly rollupRows: number;
    readonly windows: number;
  }[];
  readonly totals: {
    readonly produced: number;
    readonly sent: number;
    readonly dropped: number;
    /** Calls the fleet could not make at the asked rate (the machine was busy). */
    readonly shortfall: number;
    readonly spans: number;
    readonly rollupRows: number;
    readonly alertRows: number;
  };
  readonly alerts: readonly {
    readonly alertId: string;
    readonly service: string;
    readonly rule: string;
    readonly state: string;
    readonly firedWindowStart: string;
    readonly lastWindowEnd: string;
    readonly transitions: number;
  }[];
  readonly rates: readonly RatesRow[];
  readonly throughput: {
    readonly producedPerSecond: number;
    readonly fleetSeconds: number;
    /** From the fleet's last call to every span, rollup and alert in PostgreSQL. */
    readonly settleSeconds: number;
  };
  readonly metricsEndpoints: { readonly processor?: string; readonly sink?: string };
  /** Whether the demo started the local stack, and whether it stops it on exit. */
  readonly localStack: "not-used" | "started-and-stopped" | "started-and-kept";
}

function quietLogger(verbose: boolean, component: string): OpsLogger {
  const write = (
    level: string,
    message: string,
    context?: Readonly<Record<string, unknown>>,
  ): void => {
    process.stderr.write(
      `${component} ${level}: ${terminalLines(message)}${context ? ` ${jsonLine(context)}` : ""}\n`,
    );
  };
  return {
    info: (message, context) => {
      if (verbose) write("info", message, context);
    },
    warn: (message, context) => {
      if (verbose) write("warn", message, context);
    },
    error: (message, context) => {
      write("error", message, context);
    },
  };
}

/**
 * The demo's connection settings: as configured, but under its own topic prefix unless one is
 * given, so its short windows and its state never go into the topics, checkpoints and consumer
 * groups of a deployment on the same cluster.
 */
export function demoConnection(settings: SettingsResolver): ConnectionConfig {
  return settings.given([CONNECTION.topicPrefix])
    ? settings.connection()
    : Object.freeze({ ...settings.connection(), topicPrefix: DEMO_TOPIC_PREFIX });
}

export async function runDemo(base: SettingsResolver, flags: DemoFlags): Promise<number> {
  if (flags.services < 1 || flags.services > FLEET_SERVICES.length)
    throw new ConfigError(
      "--services",
      `expected 1 to ${FLEET_SERVICES.length} (got ${flags.services})`,
    );
  const settings = base.withDefaults(DEMO_DEFAULTS);
  const say = (line: string): void => {
    if (!flags.json) process.stdout.write(`${terminalLines(line)}\n`);
    else process.stderr.write(`${terminalLines(line)}\n`);
  };
  // Kafka and the registry as configured; when neither is, the local stack's (its ports may be
  // moved with STACK_KAFKA_PORT and STACK_REGISTRY_PORT).
  const configured = settings.given([CONNECTION.kafkaBrokers, CONNECTION.schemaRegistryUrl]);
  const stack = configured ? undefined : loadStackConfig();
  const configuredConnection = demoConnection(settings);
  const connection: ConnectionConfig = stack
    ? Object.freeze({
        ...configuredConnection,
        kafkaBrokers: [stackEndpoints(stack).kafkaBrokers],
        schemaRegistryUrl: stackEndpoints(stack).schemaRegistryUrl,
        schemaRegistry: { url: stackEndpoints(stack).schemaRegistryUrl },
      })
    : configuredConnection;
  const processorOptions = processorSettings(settings, connection);
  const processorConfig = parseProcessorConfig(processorOptions);
  // An idle partition's windows close one grace period (plus margin) after the fleet stops.
  const idleTimeoutMs = settings.given([settingOf(processorConfigSchema, "idleTimeoutMs")])
    ? processorConfig.idleTimeoutMs
    : processorConfig.graceMs + 2000;
  const sinkOptions = sinkSettings(settings, connection);
  const services = FLEET_SERVICES.slice(0, flags.services);

  const abort = new AbortController();
  const onSignal = (): void => {
    say("\nstopping (Ctrl-C) …");
    abort.abort();
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  const cleanups: (() => Promise<unknown>)[] = [];
  const cleanup = async (): Promise<void> => {
    for (const step of cleanups.reverse()) await step().catch(() => undefined);
  };
  try {
    // 1. Services: the configured ones, or the local stack.
    let localStack: DemoSummary["localStack"] = "not-used";
    const answering = async (): Promise<boolean> =>
      checkKafka(connection, 1000)
        .then(
          () => checkRegistry(connection, 2000).then(() => true),
          () => false,
        )
        .catch(() => false);
    if (stack && (await answering())) {
      say(
        `Kafka and the schema registry answer at ${connection.kafkaBrokers.join(",")} and ${connection.schemaRegistryUrl} (a running stack or docker compose): using them`,
      );
    } else if (stack) {
      say(
        "no Kafka or schema registry configured: starting the local stack (Kafka, Apicurio Registry) …",
      );
      const result = await stackUp(stack, (line) => {
        say(`  ${line}`);
      });
      const started: readonly StackService[] = result.started;
      localStack =
        started.length === 0
          ? "not-used"
          : flags.keepStack
            ? "started-and-kept"
            : "started-and-stopped";
      if (started.length > 0 && !flags.keepStack)
        cleanups.push(async () => {
          say(`stopping the local stack services this demo started (${started.join(", ")}) …`);
          await stackDown(stack, () => undefined, started);
        });
    }
    await checkKafka(connection);
    await checkRegistry(connection);
    await ensurePostgresDatabase(connection.databaseUrl);
    await checkPostgres(connection);
    const applied = await migrate(connection.databaseUrl);
    say(
      applied.length > 0 ? `schema: applied migrations ${applied.join(", ")}` : "schema: current",
    );

    // 2. The processor and the sink, in this process.
    const processor = new StreamProcessor({
      ...processorOptions,
      idleTimeoutMs,
      logger: quietLogger(flags.verbose ?? false, "processor"),
    });
    await processor.start();
    cleanups.push(() => processor.stop());
    const sink = new Sink({ ...sinkOptions, logger: quietLogger(flags.verbose ?? false, "sink") });
    await sink.start();
    cleanups.push(() => sink.stop());
    say(
      `processor (group ${processor.groupId}, ${processorConfig.windowSizeMs / 1000} s windows, ${processorConfig.graceMs / 1000} s grace) and sink (group ${sink.groupId}) started`,
    );

    // 3. Alerts as they arrive.
    const transitions: AlertEvent[] = [];
    const subscription: AlertSubscription = await subscribeAlerts(
      {
        groupId: `mcpo-demo-${randomUUID().slice(0, 8)}`,
        fromBeginning: false,
        ...endpointOptionsOf(connection),
      },
      (alert) => {
        if (!services.includes(alert.service)) return;
        transitions.push(alert);
        say(
          `  alert ${alert.state.toUpperCase().padEnd(8)} ${alert.service} ${alert.rule}` +
            (alert.observed_value === null ? "" : ` observed ${formatObserved(alert)}`),
        );
      },
    );
    cleanups.push(() => subscription.stop());

    // 4. The fleet.
    say(
      `fleet: ${services.length} services × ${flags.replicas} replicas, ${flags.rate} calls/s for ${flags.durationMs / 1000} s; ` +
        `${services[0] ?? ""} drifts into breach from 30% to 60% of the run`,
    );
    const progress = setInterval(() => {
      say(
        `  … ${count(processor.stats().events)} events processed, ${count(sink.stats().spansInserted)} spans stored`,
      );
    }, 10_000);
    let fleet: FleetResult;
    try {
      fleet = await runFleet({
        services,
        replicas: flags.replicas,
        ratePerSecond: flags.rate,
        durationMs: flags.durationMs,
        driftingService: services[0] ?? "",
        alignEndToMs: processorConfig.windowSizeMs,
        signal: abort.signal,
        exporterFor: (service, replica) =>
          new KafkaExporter({
            ...endpointOptionsOf(connection),
            topic: topicNames(connection.topicPrefix).modelCalls,
            topicPartitions: processorConfig.partitions,
            clientId: `demo-${service}-${replica}`,
            logger: silentLogger,
          }),
      });
    } finally {
      clearInterval(progress);
    }
    const fleetSeconds = (fleet.endedAtMs - fleet.startedAtMs) / 1000;
    say(
      `fleet done: ${count(fleet.recorded)} calls recorded, ${count(fleet.sent)} sent to Kafka, ${count(fleet.dropped)} dropped`,
    );
    if (abort.signal.aborted) return 130;

    // 5. Wait until PostgreSQL holds everything the pipeline derived.
    const pool = openPool(connection.databaseUrl, { max: 2 });
    cleanups.push(() => pool.end());
    const range = {
      fromMs:
        Math.floor(fleet.startedAtMs / processorConfig.windowSizeMs) * processorConfig.windowSizeMs,
      toMs: fleet.endedAtMs + processorConfig.windowSizeMs,
    };
    say("waiting for the last windows to close and the sink to store everything …");
    const settleStarted = Date.now();
    await settle(pool, {
      services,
      range,
      expectedSpans: fleet.sent,
      processor,
      transitions,
      signal: abort.signal,
      timeoutMs: 90_000 + idleTimeoutMs,
    });
    if (isAborted(abort)) return 130;
    const settleSeconds = (Date.now() - settleStarted) / 1000;

    // 6. The summary, from PostgreSQL.
    const summary = await summarize(pool, {
      services,
      range,
      fleet,
      connection,
      windowMs: processorConfig.windowSizeMs,
      graceMs: processorConfig.graceMs,
      fleetSeconds,
      settleSeconds,
      localStack,
      metricsEndpoints: {
        ...(processor.metricsUrl ? { processor: processor.metricsUrl } : {}),
        ...(sink.metricsUrl ? { sink: sink.metricsUrl } : {}),
      },
    });
    if (flags.json) process.stdout.write(`${jsonLine(summary)}\n`);
    else printSummary(summary);
    if (flags.ui) {
      const uiOptions = settings.options(uiConfigSchema);
      // The pipeline page shows this run's processor and sink unless other endpoints are given.
      const metricsUrl = [processor.metricsUrl, sink.metricsUrl].filter(
        (url): url is string => url !== undefined,
      );
      const ui = new UiServer({
        ...endpointOptionsOf(connection),
        ...uiOptions,
        ...(uiOptions.metricsUrl?.length ? {} : { metricsUrl }),
        logger: quietLogger(flags.verbose ?? false, "ui"),
      });
      await ui.start();
      cleanups.push(() => ui.stop());
      say(`web UI: ${ui.url}  (Ctrl-C stops it and the demo)`);
      await new Promise<void>((resolve) => {
        if (abort.signal.aborted) resolve();
        else
          abort.signal.addEventListener(
            "abort",
            () => {
              resolve();
            },
            { once: true },
          );
      });
    }
    return 0;
  } finally {
    process.removeListener("SIGINT", onSignal);
    process.removeListener("SIGTERM", onSignal);
    await cleanup();
  }
}

/** Read through a call: the signal may change while awaiting (TypeScript narrows property reads). */
function isAborted(controller: AbortController): boolean {
  return controller.signal.aborted;
}

function formatObserved(alert: AlertEvent): string {
  const value = alert.observed_value ?? 0;
  return alert.metric.endsWith("_rate")
    ? `${(value * 100).toFixed(1)}% (threshold ${(alert.threshold * 100).toFixed(0)}%)`
    : `${value.toFixed(1)} (threshold ${alert.threshold})`;
}

async function settle(
  pool: pg.Pool,
  options: {
    services: readonly string[];
    range: { fromMs: number; toMs: number };
    expectedSpans: number;
    processor: StreamProcessor;
    transitions: readonly AlertEvent[];
    signal: AbortSignal;
    timeoutMs: number;
  },
): Promise<void> {
  const deadline = Date.now() + options.timeoutMs;
  let last = "";
  while (!options.signal.aborted) {
    const stats = options.processor.stats();
    const { rows } = await pool.query<{ spans: string; alert_states: string[] }>(
      `select (select count(*) from spans where service = any($1) and end_time >= $2 and end_time < $3)::text as spans,
              array(select alert_id || '|' || (h->>'state') from alerts, jsonb_array_elements(history) h
                    where service = any($1)) as alert_states`,
      [options.services, new Date(options.range.fromMs), new Date(options.range.toMs)],
    );
    const spans = Number(rows[0]?.spans ?? 0);
    const stored = new Set(rows[0]?.alert_states ?? []);
    const alertsStored = options.transitions.every((alert) =>
      stored.has(`${alert.alert_id}|${alert.state}`),
    );
    // Every alert the processor emitted reached the subscription, and every one is in PostgreSQL.
    const alertsSeen = options.transitions.length >= stats.alerts;
    const rollupsStored = await rollupsCaughtUp(pool, options.services, options.range);
    if (
      spans >= options.expectedSpans &&
      stats.openSeries === 0 &&
      alertsSeen &&
      alertsStored &&
      rollupsStored
    )
      return;
    last = `spans ${spans}/${options.expectedSpans}, open series ${stats.openSeries}, alerts seen ${options.transitions.length}/${stats.alerts}, stored ${alertsStored}, rollups stored ${rollupsStored}`;
    if (Date.now() > deadline) throw new Error(`the pipeline did not settle in time (${last})`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

/** Every window that holds spans of the run has its service-total rollup in PostgreSQL. */
async function rollupsCaughtUp(
  pool: pg.Pool,
  services: readonly string[],
  range: { fromMs: number; toMs: number },
): Promise<boolean> {
  const { rows } = await pool.query<{ missing: string }>(
    `select count(*)::text as missing from (
       select distinct s.service, r.window_start
       from spans s
       left join metric_rollups r
         on r.service = s.service and r.scope = 'service' and s.end_time >= r.window_start and s.end_time < r.window_end
       where s.service = any($1) and s.end_time >= $2 and s.end_time < $3 and r.service is null
     ) as m`,
    [services, new Date(range.fromMs), new Date(range.toMs)],
  );
  return Number(rows[0]?.missing ?? 1) === 0;
}

async function summarize(
  pool: pg.Pool,
  input: {
    services: readonly string[];
    range: { fromMs: number; toMs: number };
    fleet: FleetResult;
    connection: ConnectionConfig;
    windowMs: number;
    graceMs: number;
    fleetSeconds: number;
    settleSeconds: number;
    metricsEndpoints: DemoSummary["metricsEndpoints"];
    localStack: DemoSummary["localStack"];
  },
): Promise<DemoSummary> {
  const from = new Date(input.range.fromMs);
  const to = new Date(input.range.toMs);
  const perService = await pool.query<{
    service: string;
    spans: string;
    rollup_rows: string;
    windows: string;
  }>(
    `select s.service,
            (select count(*) from spans where service = s.service and end_time >= $2 and end_time < $3)::text as spans,
            (select count(*) from metric_rollups where service = s.service and window_start >= $2 and window_start < $3)::text as rollup_rows,
            (select count(*) from metric_rollups where service = s.service and scope = 'service' and window_start >= $2 and window_start < $3)::text as windows
     from unnest($1::text[]) as s(service)`,
    [input.services, from, to],
  );
  const alerts = await pool.query<{
    alert_id: string;
    service: string;
    rule: string;
    state: string;
    fired_window_start: Date;
    window_end: Date;
    transitions: number;
  }>(
    `select alert_id, service, rule, state, fired_window_start, window_end, jsonb_array_length(history) as transitions
     from alerts where service = any($1) and fired_window_start >= $2 and fired_window_start < $3
     order by fired_window_start, service, rule`,
    [input.services, from, to],
  );
  const rates = await queryRates(pool, {
    services: input.services,
    fromMs: input.range.fromMs,
    toMs: input.range.toMs,
    lastPerService: 6,
  });
  const services = perService.rows.map((row) => ({
    service: row.service,
    produced: input.fleet.calls.get(row.service) ?? 0,
    spans: Number(row.spans),
    rollupRows: Number(row.rollup_rows),
    windows: Number(row.windows),
  }));
  return {
    startedAt: new Date(input.fleet.startedAtMs).toISOString(),
    endedAt: new Date(input.fleet.endedAtMs).toISOString(),
    windowMs: input.windowMs,
    graceMs: input.graceMs,
    topicPrefix: input.connection.topicPrefix,
    services,
    totals: {
      produced: input.fleet.recorded,
      sent: input.fleet.sent,
      dropped: input.fleet.dropped,
      shortfall: input.fleet.shortfall,
      spans: services.reduce((sum, s) => sum + s.spans, 0),
      rollupRows: services.reduce((sum, s) => sum + s.rollupRows, 0),
      alertRows: alerts.rows.length,
    },
    alerts: alerts.rows.map((row) => ({
      alertId: row.alert_id,
      service: row.service,
      rule: row.rule,
      state: row.state,
      firedWindowStart: row.fired_window_start.toISOString(),
      lastWindowEnd: row.window_end.toISOString(),
      transitions: row.transitions,
    })),
    rates,
    throughput: {
      producedPerSecond: Math.round(input.fleet.recorded / Math.max(input.fleetSeconds, 0.001)),
      fleetSeconds: input.fleetSeconds,
      settleSeconds: input.settleSeconds,
    },
    metricsEndpoints: input.metricsEndpoints,
    localStack: input.localStack,
  };
}

function printSummary(summary: DemoSummary): void {
  const out = (line = ""): void => {
    process.stdout.write(`${terminalLines(line)}\n`);
  };
  out();
  out(
    `== derived rates of the last windows (${summary.windowMs / 1000} s windows, from PostgreSQL)`,
  );
  out(renderRates(summary.rates));
  out();
  out("== alerts");
  out(
    summary.alerts.length === 0
      ? "none"
      : table(
          [
            "service",
            "rule",
            "state",
            "fired (window start)",
            "last transition (window end)",
            "alert id",
          ],
          summary.alerts.map((a) => [
            a.service,
            a.rule,
            a.state,
            a.firedWindowStart,
            a.lastWindowEnd,
            a.alertId,
          ]),
        ),
  );
  out();
  out("== in PostgreSQL");
  out(
    table(
      ["service", "calls produced", "spans", "rollup rows", "windows"],
      [
        ...summary.services.map((s) => [
          s.service,
          count(s.produced),
          count(s.spans),
          count(s.rollupRows),
          count(s.windows),
        ]),
        [
          "total",
          count(summary.totals.produced),
          count(summary.totals.spans),
          count(summary.totals.rollupRows),
          "",
        ],
      ],
    ),
  );
  out();
  out("== throughput");
  out(
    `${count(summary.totals.produced)} calls in ${summary.throughput.fleetSeconds.toFixed(1)} s = ${count(summary.throughput.producedPerSecond)} calls/s produced; ` +
      `${count(summary.totals.dropped)} dropped; ` +
      (summary.totals.shortfall > 0
        ? `${count(summary.totals.shortfall)} calls short of the asked rate (the machine was busy); `
        : "") +
      `everything stored ${summary.throughput.settleSeconds.toFixed(1)} s after the last call ` +
      `(the last windows close ${summary.graceMs / 1000} s grace + idle timeout after it)`,
  );
  const firing = summary.alerts.filter((a) => a.state === "firing").length;
  out(
    `alerts: ${summary.alerts.length} incidents, ${summary.alerts.length - firing} resolved, ${firing} still firing`,
  );
  out();
  out("next steps (same settings):");
  const window = `--window ${summary.windowMs / 1000}s --grace ${summary.graceMs / 1000}s`;
  // In this repository the package's scripts; an installed package has only its command.
  const cli = INSTALLED ? "npx mcp-observatory" : "npm run cli --";
  const steps: [string, string][] = [
    ...(summary.localStack === "started-and-stopped"
      ? [
          [
            INSTALLED ? `${cli} stack up` : "npm run stack:up",
            "the demo stopped the stack it started; its data stays",
          ] as [string, string],
        ]
      : []),
    [`${cli} replay --verify --dry-run ${window}`, "rebuild every rollup from the log and compare"],
    [`${cli} alerts tail --from-beginning`, "the alerts topic"],
    [`${cli} report --since 15m`, "rates from PostgreSQL"],
    [`${cli} ui`, "the web UI: fleet, services, traces, alerts (or run the demo with --ui)"],
  ];
  const width = Math.max(...steps.map(([command]) => command.length));
  for (const [command, what] of steps) out(`  ${command.padEnd(width)}  # ${what}`);
}
