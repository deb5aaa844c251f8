/**
 * One producer process of the end-to-end benchmark (`bench/e2e.bench.ts` spawns several): a group
 * of simulated MCP server replicas from the shared fleet simulator (`cli/fleet.ts`), each a real
 * `instrument()` interceptor with its own `KafkaExporter`, producing model calls to the
 * model-calls topic at this process's share of the target rate.
 *
 * Settings: one JSON argument (see {@link Settings}); connections from KAFKA_BROKERS,
 * SCHEMA_REGISTRY_URL and MCPO_TOPIC_PREFIX. Output on stdout, one JSON object per line:
 * `{"type":"progress",…}` every second (what the exporters have so far), then
 * `{"type":"result",…}` with the fleet's figures once every exporter has shut down. SIGTERM or
 * SIGINT stops the fleet early (it still flushes and reports).
 */
import { monitorEventLoopDelay } from "node:perf_hooks";

import { z } from "zod";

import { loadConnectionConfig, topicNames } from "../config/index.js";
import { KafkaExporter } from "../producer/exporters/kafka.js";
import { runFleet } from "../cli/fleet.js";

const SettingsSchema = z.object({
  /** Index of this process among the producers (seeds its call generators). */
  index: z.number().int().nonnegative(),
  services: z.array(z.string().min(1)).min(1),
  replicas: z.number().int().positive(),
  /** Model calls per second of this process (all its replicas together). */
  ratePerSecond: z.number().positive(),
  durationMs: z.number().int().positive(),
  /** Wall-clock time to start at (so the producer processes start together). */
  startAtMs: z.number().int().nonnegative(),
  tickMs: z.number().int().positive(),
  compression: z.enum(["none", "gzip", "snappy"]),
  maxBatchSize: z.number().int().positive(),
  lingerMs: z.number().nonnegative(),
  maxQueueSize: z.number().int().positive(),
  driftingService: z.string().optional(),
});
type Settings = z.infer<typeof SettingsSchema>;

/** A progress line: the exporters' counters so far. */
export interface ProducerProgress {
  readonly type: "progress";
  readonly index: number;
  readonly atMs: number;
  /** Events the exporters accepted so far (sent + dropped + buffered). */
  readonly exported: number;
  readonly sent: number;
  readonly dropped: number;
  readonly buffered: number;
  /** CPU time since the fleet started, ms. */
  readonly cpuMs: number;
}

/** The last line: the fleet's result. */
export interface ProducerResult {
  readonly type: "result";
  readonly index: number;
  readonly services: readonly string[];
  readonly replicas: number;
  readonly targetRate: number;
  readonly recorded: number;
  readonly sent: number;
  readonly dropped: number;
  readonly startedAtMs: number;
  readonly endedAtMs: number;
  /** When the last exporter had shut down (everything delivered or dropped). */
  readonly flushedAtMs: number;
  readonly calls: Readonly<Record<string, number>>;
  readonly localAlerts: number;
  readonly cpuMs: number;
  /** Most events waiting in this process's exporters at a progress report. */
  readonly peakBuffered: number;
  /** Event-loop delay while the fleet ran (the longest the exporters could not send). */
  readonly eventLoopDelayP99Ms: number;
  readonly eventLoopDelayMaxMs: number;
}

function emit(line: ProducerProgress | ProducerResult): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function cpuMs(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1000;
}

/**
 * Connects every exporter (producer, topic check, schema registration) before the fleet starts.
 * Otherwise each connects with its first batch, so replicas of different processes that share a
 * partition would start up to a second or two apart and the processor would count the first
 * events of the slower ones as late.
 */
async function warmUp(exporters: readonly KafkaExporter[]): Promise<void> {
  for (const exporter of exporters) await exporter.connect();
}

async function main(): Promise<void> {
  const settings: Settings = SettingsSchema.parse(JSON.parse(process.argv[2] ?? "{}"));
  const connection = loadConnectionConfig();
  const topic = topicNames(connection.topicPrefix).modelCalls;
  // One exporter per replica, made before the start so they can connect first.
  const byReplica = new Map<string, KafkaExporter>();
  for (const service of settings.services)
    for (let replica = 0; replica < settings.replicas; replica++)
      byReplica.set(
        `${service}|${replica}`,
        new KafkaExporter({
          brokers: connection.kafkaBrokers,
          schemaRegistryUrl: connection.schemaRegistryUrl,
          topic,
          clientId: `bench-e2e-p${settings.index}-${service}-${replica}`,
          compression: settings.compression,
          maxBatchSize: settings.maxBatchSize,
          lingerMs: settings.lingerMs,
          maxQueueSize: settings.maxQueueSize,
        }),
      );
  const exporters = [...byReplica.values()];
  await warmUp(exporters);
  const abort = new AbortController();
  const stop = (): void => {
    abort.abort();
  };
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);

  const wait = settings.startAtMs - Date.now();
  if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  else process.stderr.write(`ready ${-wait} ms after the common start time\n`);
  // CPU from here on: the fleet's, not start-up's (module loading through tsx).
  const cpuAtStart = cpuMs();
  // How long the fleet's loop holds the event loop (the exporters' sends wait meanwhile).
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  let peakBuffered = 0;

  const progress = setInterval(() => {
    let sent = 0;
    let dropped = 0;
    let buffered = 0;
    for (const exporter of exporters) {
      const stats = exporter.stats();
      sent += stats.sent;
      dropped += stats.dropped;
      buffered += stats.buffered;
    }
    peakBuffered = Math.max(peakBuffered, buffered);
    emit({
      type: "progress",
      index: settings.index,
      atMs: Date.now(),
      exported: sent + dropped + buffered,
      sent,
      dropped,
      buffered,
      cpuMs: cpuMs() - cpuAtStart,
    });
  }, 1000);

  const result = await runFleet({
    services: settings.services,
    replicas: settings.replicas,
    ratePerSecond: settings.ratePerSecond,
    durationMs: settings.durationMs,
    tickMs: settings.tickMs,
    seed: 1000 + settings.index,
    signal: abort.signal,
    ...(settings.driftingService === undefined
      ? {}
      : { driftingService: settings.driftingService }),
    exporterFor: (service, replica) => {
      const exporter = byReplica.get(`${service}|${replica}`);
      if (!exporter) throw new Error(`no exporter for ${service} replica ${replica}`);
      return exporter;
    },
  });
  clearInterval(progress);
  loopDelay.disable();
  emit({
    type: "result",
    index: settings.index,
    services: settings.services,
    replicas: settings.replicas,
    targetRate: settings.ratePerSecond,
    recorded: result.recorded,
    sent: result.sent,
    dropped: result.dropped,
    startedAtMs: result.startedAtMs,
    endedAtMs: result.endedAtMs,
    flushedAtMs: Date.now(),
    calls: Object.fromEntries(result.calls),
    localAlerts: [...result.localAlerts.values()].reduce((sum, list) => sum + list.length, 0),
    cpuMs: cpuMs() - cpuAtStart,
    peakBuffered,
    eventLoopDelayP99Ms: loopDelay.percentile(99) / 1e6,
    eventLoopDelayMaxMs: loopDelay.max / 1e6,
  });
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(
      `e2e producer failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    process.exit(1);
  },
);
