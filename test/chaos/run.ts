/**
 * The chaos run: `npm run chaos` (on demand; not part of `npm test`).
 *
 * For 10 minutes (`--minutes N`) a simulated fleet of MCP server replicas (`cli/fleet.ts`, each a
 * real `instrument()` interceptor with its own `KafkaExporter`, as `npm run demo` runs it)
 * produces model calls into a Kafka broker of this run's own, while the processor and the sink
 * run as child processes of the CLI (`node --import tsx cli/main.ts processor|sink`) over a
 * throwaway PostgreSQL server. Meanwhile, at random times from a seeded schedule, it SIGKILLs the
 * processor and restarts it, SIGKILLs the sink and restarts it, stops and starts the broker, and
 * stops and starts PostgreSQL, measuring after each fault how long the pipeline takes to make
 * progress again and to catch up. A worker that exits by itself (e.g. it gave up while the broker
 * was down) is restarted, as a supervisor would, and counted.
 *
 * Then traffic stops, the processor and the sink drain (consumer lag 0, no window open, rows no
 * longer changing), and the checks run (test/chaos/verify.ts): one span per event of the log (count
 * and ids), every stored rollup equal to the brute-force oracle over the events read back from the
 * log, and the stored alerts equal to the oracle's transitions. It prints the figures and exits 0
 * only if every check passed; otherwise it lists the mismatches, keeps the workers' logs and
 * exits 1 (2 when the run itself could not be carried out, 130 on Ctrl-C). A worker that exited
 * by itself is listed as a note (its logs are kept) but fails no check.
 *
 *   npm run chaos                              # 10 minutes, a random seed (printed)
 *   npm run chaos -- --minutes 2 --seed 1234   # the same fault schedule as an earlier run
 *
 * Options: --minutes (10), --seed (random), --rate calls/s across the fleet (200), --services (4),
 * --replicas per service (3). The schema registry is the shared one at SCHEMA_REGISTRY_URL (its
 * subjects get this run's unique topic prefix and are deleted at the end); DATABASE_URL names a
 * PostgreSQL server that stays up (the local stack checks it when it starts the broker). The
 * broker, the throwaway PostgreSQL, the workers and the logs (unless a check failed) are removed
 * at the end, also on failure and Ctrl-C.
 */
import { randomBytes, randomInt } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

import { Kafka, logLevel, type Admin } from "kafkajs";
import pg from "pg";

import { FLEET_SERVICES, runFleet, seededRandom, type FleetResult } from "../../cli/fleet.js";
import { modelCallsTopicConfig, topicNames } from "../../config/index.js";
import { KafkaExporter } from "../../producer/exporters/kafka.js";
import { silentLogger } from "../../producer/logger.js";
import { CliWorker, metricByLabel } from "../support/crash.js";
import { startThrowawayPostgres, type ThrowawayPostgres } from "../support/throwaway-postgres.js";
import { pause } from "../support/wait.js";
import { startPrivateKafka, type PrivateKafka } from "../support/private-kafka.js";
import { verify, type VerifyResult } from "./verify.js";

const WINDOW_MS = 5000;
const GRACE_MS = 5000;
/** Short, so an outage makes both revisions (within it) and late events (beyond it). */
const ALLOWED_LATENESS_MS = 20_000;
const IDLE_TIMEOUT_MS = 5000;
const PARTITIONS = 3;
/** How long a fault may take to catch up before it counts as a stall. */
const RECOVERY_TIMEOUT_MS = 180_000;
/** Clean traffic after the last fault's recovery before the fleet stops. */
const CLEAN_TAIL_MS = 10_000;

type FaultKind = "processor-kill" | "sink-kill" | "broker-restart" | "postgres-restart";
const FAULT_KINDS: readonly FaultKind[] = [
  "processor-kill",
  "sink-kill",
  "broker-restart",
  "postgres-restart",
];

interface ScheduledFault {
  readonly kind: FaultKind;
  /** When, ms after traffic starts. */
  readonly atMs: number;
  /** How long the broker or PostgreSQL stays down, or a killed worker stays dead, ms. */
  readonly downMs: number;
}

interface FaultOutcome extends ScheduledFault {
  readonly startedAtMs: number;
  /** From the restart to the first committed progress of the groups concerned. */
  readonly firstProgressMs: number | null;
  /** From the restart until the groups concerned had read past where the log ended at the restart. */
  readonly caughtUpMs: number | null;
}

// ---------------------------------------------------------------------------------------------
// Options and schedule

interface Options {
  readonly minutes: number;
  readonly seed: number;
  readonly rate: number;
  readonly services: number;
  readonly replicas: number;
}

function parseOptions(argv: readonly string[]): Options {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      minutes: { type: "string" },
      seed: { type: "string" },
      rate: { type: "string" },
      services: { type: "string" },
      replicas: { type: "string" },
    },
    strict: true,
  });
  const number = (name: string, raw: string | undefined, fallback: number, integer: boolean) => {
    if (raw === undefined) return fallback;
    const value = Number(raw);
    if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isSafeInteger(value)))
      throw new Error(
        `--${name}: expected a positive ${integer ? "integer" : "number"}, got ${JSON.stringify(raw)}`,
      );
    return value;
  };
  const services = number("services", values.services, 4, true);
  if (services > FLEET_SERVICES.length)
    throw new Error(`--services: at most ${FLEET_SERVICES.length} (got ${services})`);
  const seed = values.seed === undefined ? randomInt(1, 2 ** 31) : Number(values.seed);
  if (!Number.isSafeInteger(seed) || seed < 0)
    throw new Error(`--seed: expected a non-negative integer, got ${JSON.stringify(values.seed)}`);
  return {
    minutes: number("minutes", values.minutes, 10, false),
    seed,
    rate: number("rate", values.rate, 200, false),
    services,
    replicas: number("replicas", values.replicas, 3, true),
  };
}

/**
 * The faults of a run, from its seed alone: each kind about once every 3.3 minutes (at least
 * once), in a shuffled order, each at a random time in the first half of its own slot of the
 * run's 10%–80% stretch; the broker and PostgreSQL stay down 2–10 s, a killed worker 0–3 s.
 */
function faultSchedule(seed: number, durationMs: number): ScheduledFault[] {
  const random = seededRandom(seed);
  const perKind = Math.max(1, Math.round(durationMs / 200_000));
  const kinds = FAULT_KINDS.flatMap((kind) => Array<FaultKind>(perKind).fill(kind));
  for (let i = kinds.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [kinds[i], kinds[j]] = [kinds[j] as FaultKind, kinds[i] as FaultKind];
  }
  const from = durationMs * 0.1;
  const slot = (durationMs * 0.7) / kinds.length;
  return kinds.map((kind, index) => ({
    kind,
    atMs: Math.round(from + index * slot + random() * slot * 0.5),
    downMs:
      kind === "broker-restart" || kind === "postgres-restart"
        ? 2000 + Math.round(random() * 8000)
        : Math.round(random() * 3000),
  }));
}

// ---------------------------------------------------------------------------------------------
// Output

function say(line = ""): void {
  process.stdout.write(`${line}\n`);
}

const secs = (ms: number | null): string => (ms === null ? "-" : `${(ms / 1000).toFixed(1)} s`);
const count = (n: number): string => Math.round(n).toLocaleString("en");

// ---------------------------------------------------------------------------------------------
// Workers: a CLI child process, restarted when it dies by itself

class SupervisedWorker {
  private runs = 0;
  private closing = false;
  private intentional = false;
  current: CliWorker | undefined;
  /** Exits the run did not cause (the worker stopped by itself), with the tail of its output. */
  readonly unexpectedExits: string[] = [];

  constructor(
    readonly role: "processor" | "sink",
    private readonly env: NodeJS.ProcessEnv,
    private readonly logDir: string,
  ) {}

  start(): CliWorker {
    this.runs++;
    this.intentional = false;
    const worker = new CliWorker(
      `${this.role} run ${this.runs}`,
      [this.role],
      this.env,
      join(this.logDir, `${this.role}-run-${this.runs}.log`),
    );
    this.current = worker;
    void worker.exited.then(async (exit) => {
      if (this.closing || this.intentional || this.current !== worker) return;
      this.unexpectedExits.push(
        `${worker.label} (pid ${worker.pid}) exited by itself (code ${exit.code ?? "none"}, signal ${exit.signal ?? "none"}); output ${worker.logPath}, last lines:\n${worker.tail(8)}`,
      );
      say(
        `  ! ${worker.label} exited by itself (code ${exit.code ?? "none"}); restarting it in 2 s`,
      );
      await pause(2000);
      if (this.keepsRunning(worker)) this.start();
    });
    return worker;
  }

  /** Whether `worker` is still the one to keep running (read afresh: it changes while awaiting). */
  private keepsRunning(worker: CliWorker): boolean {
    return !this.closing && this.current === worker;
  }

  /** SIGKILL by pid; resolves once it has exited. */
  async kill(): Promise<void> {
    const worker = this.current;
    if (!worker || worker.exit) return;
    this.intentional = true;
    await worker.kill("SIGKILL");
  }

  /** Stops the worker for good: SIGTERM, then SIGKILL after `graceMs`. */
  async close(graceMs = 15_000): Promise<void> {
    this.closing = true;
    const worker = this.current;
    if (!worker || worker.exit) return;
    try {
      process.kill(worker.pid, "SIGTERM");
    } catch {
      return;
    }
    const exited = await Promise.race([
      worker.exited.then(() => true),
      pause(graceMs).then(() => false),
    ]);
    if (!exited) await worker.stop();
  }

  get restarts(): number {
    return this.runs - 1;
  }
}

// ---------------------------------------------------------------------------------------------
// Group positions, read from the broker

type Positions = Map<string, bigint>;

class Positioner {
  private admin: Admin | undefined;

  constructor(
    private readonly brokers: string,
    private readonly clientId: string,
  ) {}

  private async connected(): Promise<Admin> {
    if (this.admin) return this.admin;
    const admin = new Kafka({
      clientId: this.clientId,
      brokers: [this.brokers],
      logLevel: logLevel.NOTHING,
      retry: { retries: 1, initialRetryTime: 200 },
      connectionTimeout: 2000,
      requestTimeout: 5000,
    }).admin();
    await admin.connect();
    this.admin = admin;
    return admin;
  }

  /** Runs `work` with the admin client, dropping the client when it fails (a new one next time). */
  async with<T>(work: (admin: Admin) => Promise<T>): Promise<T> {
    const admin = await this.connected();
    try {
      return await work(admin);
    } catch (error) {
      this.admin = undefined;
      await admin.disconnect().catch(() => undefined);
      throw error;
    }
  }

  /** Each partition's end offset of `topics`, as `topic|partition`. */
  ends(topics: readonly string[]): Promise<Positions> {
    return this.with(async (admin) => {
      const ends: Positions = new Map();
      for (const topic of topics)
        for (const { partition, high } of await admin.fetchTopicOffsets(topic))
          ends.set(`${topic}|${partition}`, BigInt(high));
      return ends;
    });
  }

  /** A group's committed offsets on `topics` (0 where it has none). */
  committed(groupId: string, topics: readonly string[]): Promise<Positions> {
    return this.with(async (admin) => {
      const committed: Positions = new Map();
      for (const { topic, partitions } of await admin.fetchOffsets({
        groupId,
        topics: [...topics],
      }))
        for (const { partition, offset } of partitions)
          committed.set(`${topic}|${partition}`, offset === "-1" ? 0n : BigInt(offset));
      return committed;
    });
  }

  async close(): Promise<void> {
    await this.admin?.disconnect().catch(() => undefined);
    this.admin = undefined;
  }
}

/** How far `committed` is behind `ends`, summed. */
function lagOf(ends: Positions, committed: Positions): bigint {
  let lag = 0n;
  for (const [key, end] of ends) {
    const at = committed.get(key) ?? 0n;
    if (end > at) lag += end - at;
  }
  return lag;
}

// ---------------------------------------------------------------------------------------------
// The run

interface Groups {
  readonly processor: { readonly id: string; readonly topics: readonly string[] };
  readonly sink: { readonly id: string; readonly topics: readonly string[] };
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const runStarted = Date.now();
  const durationMs = Math.round(options.minutes * 60_000);
  const schedule = faultSchedule(options.seed, durationMs);
  say(`chaos: seed ${options.seed} (replay with --seed ${options.seed})`);
  say(
    `chaos: ${options.minutes} min of traffic, ${options.rate} calls/s, ${options.services} services × ${options.replicas} replicas; ${WINDOW_MS / 1000} s windows, ${GRACE_MS / 1000} s grace, ${ALLOWED_LATENESS_MS / 1000} s allowed lateness`,
  );
  say(
    `chaos: schedule ${schedule.map((f) => `${f.kind}@${secs(f.atMs)} (down ${secs(f.downMs)})`).join(", ")}`,
  );

  const registryUrl = process.env.SCHEMA_REGISTRY_URL;
  const stableDatabaseUrl = process.env.DATABASE_URL;
  if (!registryUrl || !stableDatabaseUrl)
    throw new Error(
      "SCHEMA_REGISTRY_URL (the shared registry) and DATABASE_URL (a PostgreSQL server that stays up, checked when the private broker starts) must be set",
    );
  const prefix = `chaos-${options.seed}-${randomBytes(3).toString("hex")}.`;
  const topics = topicNames(prefix);
  const logDir = mkdtempSync(join(tmpdir(), `mcpo-chaos-${options.seed}-`));
  say(`chaos: topic prefix ${prefix}; worker logs in ${logDir}`);

  let broker: PrivateKafka | undefined;
  let postgres: ThrowawayPostgres | undefined;
  let positioner: Positioner | undefined;
  const workers: SupervisedWorker[] = [];
  const abort = new AbortController();
  let keepLogs = false;

  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      abort.abort();
      await Promise.allSettled(workers.map((worker) => worker.close(5000)));
      await positioner?.close();
      await broker?.dispose().catch((error: unknown) => {
        process.stderr.write(`chaos: stopping the private broker failed: ${String(error)}\n`);
      });
      await postgres?.dispose().catch((error: unknown) => {
        process.stderr.write(`chaos: stopping the throwaway PostgreSQL failed: ${String(error)}\n`);
      });
      await deleteSubjects(registryUrl, prefix);
      if (keepLogs) say(`chaos: worker logs kept in ${logDir}`);
      else rmSync(logDir, { recursive: true, force: true });
    })());
  let interrupted = false;
  // Read through calls: both change while awaiting (TypeScript narrows plain reads).
  const wasInterrupted = (): boolean => interrupted;
  const isAborted = (): boolean => abort.signal.aborted;
  const onSignal = (): void => {
    if (interrupted) process.exit(130);
    interrupted = true;
    say("\nchaos: interrupted: cleaning up (Ctrl-C again to leave everything as it is)");
    keepLogs = true;
    void cleanup().finally(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  try {
    // 1. The private broker, the throwaway PostgreSQL, the input topic.
    say("chaos: starting a private Kafka broker and a throwaway PostgreSQL …");
    [broker, postgres] = await Promise.all([
      startPrivateKafka(stableDatabaseUrl),
      startThrowawayPostgres(),
    ]);
    const brokers = broker.brokers;
    positioner = new Positioner(brokers, `chaos-monitor-${options.seed}`);
    await positioner.with(async (admin) => {
      await admin.createTopics({
        waitForLeaders: true,
        topics: [
          {
            topic: topics.modelCalls,
            numPartitions: PARTITIONS,
            configEntries: Object.entries(modelCallsTopicConfig(-1)).map(([name, value]) => ({
              name,
              value,
            })),
          },
        ],
      });
    });
    const groups: Groups = {
      processor: { id: `${prefix}processor`, topics: [topics.modelCalls] },
      sink: {
        id: `${prefix}sink`,
        topics: [topics.modelCalls, topics.metricRollups, topics.alerts],
      },
    };
    const common = {
      ...process.env,
      KAFKA_BROKERS: brokers,
      SCHEMA_REGISTRY_URL: registryUrl,
      MCPO_TOPIC_PREFIX: prefix,
      MCPO_SESSION_TIMEOUT_MS: "6000",
      MCPO_METRICS_PORT: "0",
      LOG_LEVEL: "info",
    };
    const processor = new SupervisedWorker(
      "processor",
      {
        ...common,
        MCPO_PROCESSOR_GROUP: groups.processor.id,
        MCPO_WINDOW_MS: String(WINDOW_MS),
        MCPO_GRACE_MS: String(GRACE_MS),
        MCPO_ALLOWED_LATENESS_MS: String(ALLOWED_LATENESS_MS),
        MCPO_IDLE_TIMEOUT_MS: String(IDLE_TIMEOUT_MS),
        MCPO_CHECKPOINT_INTERVAL_MS: "1000",
        MCPO_PARTITIONS: String(PARTITIONS),
      },
      logDir,
    );
    const sink = new SupervisedWorker(
      "sink",
      { ...common, MCPO_SINK_GROUP: groups.sink.id, DATABASE_URL: postgres.url },
      logDir,
    );
    workers.push(processor, sink);

    // 2. The processor (it creates its output topics), then the sink.
    say("chaos: starting the processor and the sink …");
    await processor.start().metricsUrl(120_000);
    await waitUntil(
      "the processor to create its output topics",
      async () => {
        const existing = new Set(await positioner?.with((admin) => admin.listTopics()));
        return [topics.metricRollups, topics.alerts, topics.lateEvents].every((t) =>
          existing.has(t),
        );
      },
      60_000,
    );
    await sink.start().metricsUrl(120_000);

    // 3. The fleet's exporters, connected before traffic starts.
    const services = FLEET_SERVICES.slice(0, options.services);
    const exporters = new Map<string, KafkaExporter>();
    for (const service of services)
      for (let replica = 0; replica < options.replicas; replica++) {
        const exporter = new KafkaExporter({
          brokers: [brokers],
          schemaRegistryUrl: registryUrl,
          topic: topics.modelCalls,
          topicPartitions: PARTITIONS,
          clientId: `chaos-${service}-${replica}`,
          compression: "none",
          maxQueueSize: 1_000_000,
          retryMaxMs: 2000,
          logger: silentLogger,
        });
        await exporter.connect();
        exporters.set(`${service}|${replica}`, exporter);
      }

    // 4. Traffic, and the faults at their times.
    say("chaos: traffic started");
    const trafficStarted = Date.now();
    // The fleet runs until aborted: to the planned end, or a little past the last fault's recovery.
    const fleetCap = durationMs + 15 * 60_000;
    const fleet: Promise<FleetResult> = runFleet({
      services,
      replicas: options.replicas,
      ratePerSecond: options.rate,
      durationMs: fleetCap,
      driftingService: services[0] ?? "",
      driftFrom: (0.3 * durationMs) / fleetCap,
      driftTo: (0.6 * durationMs) / fleetCap,
      seed: options.seed,
      signal: abort.signal,
      exporterFor: (service, replica) => {
        const exporter = exporters.get(`${service}|${replica}`);
        if (!exporter) throw new Error(`no exporter for ${service} replica ${replica}`);
        return exporter;
      },
    });
    const stalls: string[] = [];
    const outcomes: FaultOutcome[] = [];
    const progress = setInterval(() => {
      void positioner
        ?.ends([topics.modelCalls])
        .then((ends) => {
          let total = 0n;
          for (const end of ends.values()) total += end;
          say(
            `  … ${secs(Date.now() - trafficStarted)}: model-calls holds ${count(Number(total))} records`,
          );
        })
        .catch(() => undefined);
    }, 30_000);
    try {
      for (const [index, fault] of schedule.entries()) {
        const wait = trafficStarted + fault.atMs - Date.now();
        if (wait > 0) await pause(wait);
        if (abort.signal.aborted) break;
        const label = `fault ${index + 1}/${schedule.length} ${fault.kind}`;
        const startedAtMs = Date.now();
        say(`  ${secs(startedAtMs - trafficStarted)}: ${label} (down ${secs(fault.downMs)})`);
        let concerned: Groups[keyof Groups][];
        switch (fault.kind) {
          case "processor-kill":
            await processor.kill();
            await pause(fault.downMs);
            processor.start();
            concerned = [groups.processor];
            break;
          case "sink-kill":
            await sink.kill();
            await pause(fault.downMs);
            sink.start();
            concerned = [groups.sink];
            break;
          case "broker-restart":
            await broker.stop();
            await pause(fault.downMs);
            await broker.start();
            concerned = [groups.processor, groups.sink];
            break;
          case "postgres-restart":
            await postgres.stop();
            await pause(fault.downMs);
            await postgres.start();
            concerned = [groups.sink];
            break;
        }
        const recovery = await measureRecovery(positioner, concerned, abort.signal);
        outcomes.push({ ...fault, startedAtMs, ...recovery });
        say(
          `    restarted; first progress after ${secs(recovery.firstProgressMs)}, caught up after ${secs(recovery.caughtUpMs)}`,
        );
        if (recovery.caughtUpMs === null && !isAborted())
          stalls.push(
            `stall: after ${label} (at ${secs(startedAtMs - trafficStarted)}) the ${concerned.map((g) => g.id).join(" and ")} group(s) had not caught up within ${secs(RECOVERY_TIMEOUT_MS)} (first progress: ${secs(recovery.firstProgressMs)}); ${recovery.detail}`,
          );
      }
      const trafficEnd = Math.max(trafficStarted + durationMs, Date.now() + CLEAN_TAIL_MS);
      await pause(trafficEnd - Date.now());
    } finally {
      clearInterval(progress);
      abort.abort();
    }
    const fleetResult = await fleet;
    const trafficMs = fleetResult.endedAtMs - fleetResult.startedAtMs;
    say(
      `chaos: traffic stopped after ${secs(trafficMs)}: ${count(fleetResult.recorded)} calls, ${count(fleetResult.sent)} sent, ${count(fleetResult.dropped)} dropped`,
    );
    if (wasInterrupted()) return 130;

    // 5. Drain: lag 0 for both groups, no window open, rows no longer changing.
    say("chaos: draining …");
    const drainStarted = Date.now();
    const drain = await drainPipeline(positioner, groups, processor, postgres.url);
    say(
      `chaos: ${drain.drained ? "drained" : "NOT drained"} after ${secs(Date.now() - drainStarted)} (${drain.detail})`,
    );
    const finalLag = drain.lag;
    await processor.close();
    await sink.close();

    // 6. The checks.
    say("chaos: checking PostgreSQL against the log …");
    const ends = await positioner.ends([topics.modelCalls, topics.lateEvents]);
    const endsOf = (topic: string) =>
      new Map(
        [...ends]
          .filter(([key]) => key.startsWith(`${topic}|`))
          .map(([key, end]) => [Number(key.slice(topic.length + 1)), end]),
      );
    const result: VerifyResult = await verify({
      brokers,
      registryUrl,
      databaseUrl: postgres.url,
      topics: { modelCalls: topics.modelCalls, lateEvents: topics.lateEvents },
      ends: { modelCalls: endsOf(topics.modelCalls), lateEvents: endsOf(topics.lateEvents) },
      partitions: PARTITIONS,
      windowMs: WINDOW_MS,
      graceMs: GRACE_MS,
      allowedLatenessMs: ALLOWED_LATENESS_MS,
      sent: fleetResult.sent,
    });
    const mismatches = [
      ...stalls,
      ...(drain.drained ? [] : [`stall: the pipeline did not drain: ${drain.detail}`]),
      ...(fleetResult.dropped > 0
        ? [`the exporters dropped ${fleetResult.dropped} events (buffer full or undeliverable)`]
        : []),
      ...(fleetResult.recorded !== fleetResult.sent + fleetResult.dropped
        ? [
            `the fleet recorded ${fleetResult.recorded} calls, but the exporters account for ${fleetResult.sent} sent + ${fleetResult.dropped} dropped`,
          ]
        : []),
      ...result.mismatches,
    ];

    // 7. The figures.
    const f = result.figures;
    say();
    say("== chaos run");
    say(`seed                      ${options.seed}`);
    say(`run time                  ${secs(Date.now() - runStarted)} (traffic ${secs(trafficMs)})`);
    say(
      `events produced           ${count(fleetResult.recorded)} recorded, ${count(fleetResult.sent)} sent, ${count(fleetResult.dropped)} dropped; ${count(fleetResult.shortfall)} short of the asked rate`,
    );
    say(`events/s                  ${count(fleetResult.sent / Math.max(trafficMs / 1000, 0.001))}`);
    say(
      `log (model-calls)         ${count(f.logRecords)} records: ${count(f.logEvents)} events (${count(f.distinctEventIds)} distinct ids, ${count(f.duplicateEvents)} duplicates), ${count(f.ticks)} ticks, ${count(f.otherControl)} other control records; ${count(f.offHome)} events off their home partition`,
    );
    say(
      `late events               ${count(f.lateByLog)} by the log, ${count(f.lateTopic)} on the late-events topic; ${count(f.revising)} within the allowed lateness (revisions)`,
    );
    say(`spans in PostgreSQL       ${count(f.spans)}`);
    say(
      `rollup rows               ${count(f.rollupRows)} stored, ${count(f.oracleWindows)} in the oracle`,
    );
    say(
      `alerts                    ${count(f.alertRows)} incidents stored; ${count(f.oracleTransitions)} transitions in the oracle`,
    );
    say("faults                    kind               count  max first progress  max caught up");
    for (const kind of FAULT_KINDS) {
      const list = outcomes.filter((o) => o.kind === kind);
      const max = (pick: (o: FaultOutcome) => number | null): number | null =>
        list.reduce<number | null>((m, o) => {
          const v = pick(o);
          return v === null ? m : Math.max(m ?? 0, v);
        }, null);
      say(
        `                          ${kind.padEnd(18)} ${String(list.length).padStart(5)}  ${secs(max((o) => o.firstProgressMs)).padStart(18)}  ${secs(max((o) => o.caughtUpMs)).padStart(13)}`,
      );
    }
    say(
      `worker restarts           processor ${processor.restarts}, sink ${sink.restarts} (exited by themselves: processor ${processor.unexpectedExits.length}, sink ${sink.unexpectedExits.length})`,
    );
    say(
      `final lag                 processor ${finalLag.processor}, sink ${finalLag.sink} (records behind the topics' ends)`,
    );
    say(`mismatches                ${mismatches.length}`);
    for (const exit of [...processor.unexpectedExits, ...sink.unexpectedExits])
      say(`  note: ${exit.replace(/\n/g, "\n        ")}`);
    // A worker that died by itself is evidence to look at, even when the data came out right.
    if (processor.unexpectedExits.length + sink.unexpectedExits.length > 0) keepLogs = true;
    if (mismatches.length > 0) {
      keepLogs = true;
      say();
      say(`== mismatches (seed ${options.seed})`);
      for (const line of mismatches) say(`- ${line}`);
      return 1;
    }
    say("all checks passed");
    return 0;
  } catch (error) {
    keepLogs = true;
    throw error;
  } finally {
    process.removeListener("SIGINT", onSignal);
    process.removeListener("SIGTERM", onSignal);
    if (!wasInterrupted()) await cleanup();
  }
}

/** Polls `done` every 500 ms; throws after `timeoutMs` saying what was awaited. */
async function waitUntil(
  what: string,
  done: () => Promise<boolean>,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    try {
      if (await done()) return;
    } catch (error) {
      last = ` (last error: ${(error as Error).message})`;
    }
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for ${what}${last}`);
    await pause(500);
  }
}

/**
 * After a restart: when the groups concerned first commit past where they stood (progress), and
 * when they have read past where their topics ended at the restart (caught up).
 */
async function measureRecovery(
  positioner: Positioner,
  groups: readonly { readonly id: string; readonly topics: readonly string[] }[],
  signal: AbortSignal,
): Promise<{ firstProgressMs: number | null; caughtUpMs: number | null; detail: string }> {
  const restarted = Date.now();
  const read = async () =>
    Promise.all(
      groups.map(async (group) => ({
        ends: await positioner.ends(group.topics),
        committed: await positioner.committed(group.id, group.topics),
      })),
    );
  // Where the log ends and the groups stand at the restart (the broker may need a moment).
  let start: Awaited<ReturnType<typeof read>> | undefined;
  while (!start && !signal.aborted && Date.now() - restarted < RECOVERY_TIMEOUT_MS) {
    start = await read().catch(() => undefined);
    if (!start) await pause(250);
  }
  if (!start)
    return { firstProgressMs: null, caughtUpMs: null, detail: "the broker never answered" };
  const initial = start;
  const none = new Map<string, bigint>();
  let firstProgressMs: number | null = null;
  let detail = "";
  while (!signal.aborted && Date.now() - restarted < RECOVERY_TIMEOUT_MS) {
    const now = await read().catch(() => undefined);
    if (now) {
      const moved = groups.map((_, i) =>
        [...(now[i]?.committed ?? [])].some(
          ([key, at]) => at > (initial[i]?.committed.get(key) ?? 0n),
        ),
      );
      const behind = groups.map((_, i) =>
        lagOf(initial[i]?.ends ?? none, now[i]?.committed ?? none),
      );
      if (firstProgressMs === null && moved.every(Boolean))
        firstProgressMs = Date.now() - restarted;
      detail = groups
        .map((g, i) => `${g.id} ${behind[i]} behind the ends at the restart`)
        .join(", ");
      if (firstProgressMs !== null && behind.every((lag) => lag === 0n))
        return { firstProgressMs, caughtUpMs: Date.now() - restarted, detail };
    }
    await pause(250);
  }
  return { firstProgressMs, caughtUpMs: null, detail };
}

/**
 * Waits until both groups have committed every partition's end, the processor holds no open
 * window, and the stored rows have not changed for three polls in a row.
 */
async function drainPipeline(
  positioner: Positioner,
  groups: Groups,
  processor: SupervisedWorker,
  databaseUrl: string,
): Promise<{ drained: boolean; detail: string; lag: { processor: string; sink: string } }> {
  const deadline = Date.now() + GRACE_MS + IDLE_TIMEOUT_MS + 240_000;
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  let detail = "nothing read yet";
  let lag = { processor: "?", sink: "?" };
  try {
    let previous = "";
    let stable = 0;
    while (Date.now() < deadline) {
      try {
        const processorLag = lagOf(
          await positioner.ends(groups.processor.topics),
          await positioner.committed(groups.processor.id, groups.processor.topics),
        );
        const sinkLag = lagOf(
          await positioner.ends(groups.sink.topics),
          await positioner.committed(groups.sink.id, groups.sink.topics),
        );
        lag = { processor: String(processorLag), sink: String(sinkLag) };
        const worker = processor.current;
        const open =
          worker && !worker.exit
            ? [
                ...metricByLabel(
                  await worker.metricsText(),
                  "mcpo_processor_open_windows",
                  "partition",
                ).values(),
              ].reduce((sum, n) => sum + n, 0)
            : Number.NaN;
        const { rows } = await client.query<{ snapshot: string }>(
          `select concat_ws(' ', (select count(*) from spans), (select count(*) from metric_rollups),
                  (select count(*) from alerts), (select coalesce(sum(jsonb_array_length(history)), 0) from alerts)) as snapshot`,
        );
        const snapshot = rows[0]?.snapshot ?? "";
        stable = snapshot === previous ? stable + 1 : 0;
        previous = snapshot;
        detail = `processor lag ${processorLag}, sink lag ${sinkLag}, open windows ${open}, rows (spans, rollups, alerts, transitions) ${snapshot}, unchanged for ${stable} poll(s)`;
        if (processorLag === 0n && sinkLag === 0n && open === 0 && stable >= 3)
          return { drained: true, detail, lag };
      } catch (error) {
        detail = `${detail}; last error: ${(error as Error).message}`;
      }
      await pause(1000);
    }
    return { drained: false, detail, lag };
  } finally {
    await client.end();
  }
}

/** Deletes this run's subjects from the shared registry (soft, then permanently); best effort. */
async function deleteSubjects(registryUrl: string, prefix: string): Promise<void> {
  try {
    const response = await fetch(`${registryUrl}/subjects`);
    if (!response.ok) return;
    const subjects = ((await response.json()) as string[]).filter((s) => s.startsWith(prefix));
    for (const subject of subjects) {
      const url = `${registryUrl}/subjects/${encodeURIComponent(subject)}`;
      await fetch(url, { method: "DELETE" }).catch(() => undefined);
      await fetch(`${url}?permanent=true`, { method: "DELETE" }).catch(() => undefined);
    }
  } catch {
    // The registry is shared and stays up; a subject left behind is harmless.
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(
      `chaos: the run failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    process.exit(2);
  },
);
