#!/usr/bin/env node
/**
 * `mcp-observatory`: one command line for the whole pipeline. Every command's `--help` lists its
 * flags with their environment variable, config-file key and default.
 *
 * Exit codes: 0 ok; 1 failure (or `replay --verify` found differences); 2 bad usage or
 * configuration; 3 a service (Kafka, the registry, PostgreSQL) did not answer; 130 interrupted.
 * Errors map to them in one table, `ERROR_EXITS` in ./output.ts.
 */
import { realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";

import { Argument, Command, CommanderError, InvalidArgumentError, Option } from "commander";

import {
  ConfigError,
  processorConfigSchema,
  redactSecrets,
  rememberSecretsIn,
} from "../config/index.js";
import { runAlertsForward, runAlertsTail } from "./commands/alerts.js";
import { runDemo } from "./commands/demo.js";
import { runExportOtlp } from "./commands/export.js";
import { parseFromTime, parseOffsets, runReplay } from "./commands/replay.js";
import { runReport } from "./commands/report.js";
import { runIngest } from "./commands/ingest.js";
import { runMigrate, runProcessor, runSink, runStack } from "./commands/run.js";
import { runTopicsCreate } from "./commands/topics.js";
import { runUi } from "./commands/ui.js";
import {
  CONNECTION,
  CONNECTION_SETTINGS,
  parseDuration,
  PROCESSOR_SETTINGS,
  FORWARD_SETTINGS,
  INGEST_SETTINGS,
  OTLP_EXPORT_SETTINGS,
  SettingsResolver,
  settingHelp,
  settingOf,
  SINK_SETTINGS,
  UI_SETTINGS,
  WINDOW_SETTINGS,
  type SettingSpec,
} from "./config.js";
import { EXIT, failureOf, failureText, guardOutput } from "./output.js";

function addSettings(command: Command, settings: readonly SettingSpec[]): Command {
  for (const setting of settings) {
    // Secrets are never taken on a command line (it shows in `ps` and shell history).
    if (setting.secret === true) continue;
    if (setting.kind === "list")
      // Repeatable, each value also comma-separated.
      command.option(`${setting.flag} <values>`, settingHelp(setting), collect);
    else
      command.option(
        setting.kind === "boolean" ? setting.flag : `${setting.flag} <value>`,
        settingHelp(setting),
      );
    // A switch that is on by default is turned off with --no-<name>. Given beside the positive
    // flag, commander sets no value unless one of them is given: the environment and the file
    // still apply.
    if (setting.kind === "boolean" && setting.defaultValue === true)
      command.option(`--no-${setting.flag.replace(/^--/, "")}`, `turn ${setting.flag} off`);
  }
  return command;
}

function positiveInt(name: string) {
  return (raw: string): number => {
    const value = Number(raw);
    if (!Number.isInteger(value) || value < 1)
      throw new InvalidArgumentError(`expected a positive integer for ${name}.`);
    return value;
  };
}

function duration(name: string) {
  return (raw: string): number => {
    const value = parseDuration(raw);
    if (value === undefined || value < 1)
      throw new InvalidArgumentError(`expected a duration such as 500ms, 30s or 5m for ${name}.`);
    return value;
  };
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [
    ...(previous ?? []),
    ...value
      .split(",")
      .map((part) => part.trim())
      .filter(Boolean),
  ];
}

/** Builds the program; `run` receives each action's exit code. */
export function buildProgram(setExitCode: (code: number) => void): Command {
  const program = new Command("mcp-observatory");
  program
    .description(
      "Observability for MCP servers: interceptors → Kafka → stream processor → PostgreSQL.\n" +
        "Settings come from flags, then environment variables, then a config file (--config), then defaults.",
    )
    .option("--config <file>", "settings file, JSON or YAML [env MCPO_CONFIG]")
    .option(
      "--log-level <level>",
      "log level of long-running services [env LOG_LEVEL, default info]",
    )
    .option("--verbose", "stack traces on errors; component logs in the demo")
    .exitOverride()
    .configureOutput({
      // One line: what was wrong (and commander's "did you mean"), then where to look.
      outputError: (text, write) => {
        const message = text
          .trim()
          .replace(/^error: /, "")
          .replace(/\s*\n\s*/g, " ");
        write(`mcp-observatory: ${redactSecrets(message)} (see --help)\n`);
      },
    })
    .addHelpText(
      "after",
      `
Examples:
  $ mcp-observatory demo                                  # the whole pipeline on this machine, ~1 minute
  $ mcp-observatory demo --duration 2m --rate 1000 --services 6 --replicas 4
  $ mcp-observatory stack up                              # local Kafka + Apicurio Registry (no Docker)
  $ mcp-observatory migrate                               # create or update the PostgreSQL schema
  $ mcp-observatory topics create                         # create the topics, register the schemas (operator rights)
  $ mcp-observatory processor --window 60s --grace 10s    # run the stream processor
  $ mcp-observatory sink                                  # run the PostgreSQL sink
  $ mcp-observatory ingest                                # OTLP/HTTP traces in on 127.0.0.1:4318
  $ mcp-observatory ui                                    # the web UI on http://127.0.0.1:4000/
  $ mcp-observatory export otlp --endpoint http://127.0.0.1:4318   # events out as OTLP spans (Jaeger, Tempo, a Collector)
  $ mcp-observatory replay --verify --dry-run             # rebuild every rollup from the log and compare
  $ mcp-observatory alerts tail --from-beginning --json
  $ mcp-observatory alerts forward --webhook-url https://hooks.example/mcpo --alertmanager-url http://127.0.0.1:9093
  $ mcp-observatory report --service payments-mcp --since 6h --bucket 1h`,
    );

  const settingsOf = (command: Command): SettingsResolver =>
    SettingsResolver.fromFlags(command.optsWithGlobals());
  const verboseOf = (command: Command): boolean => command.optsWithGlobals().verbose === true;

  program
    .command("stack")
    .description(
      "start, stop or inspect the local stack: Apache Kafka (KRaft) and Apicurio Registry",
    )
    .addArgument(new Argument("<action>", "what to do").choices(["up", "down", "status", "fetch"]))
    .addHelpText(
      "after",
      "\nPostgreSQL is not started: the stack uses the one at DATABASE_URL (and creates its database).\n" +
        "Ports and folders: STACK_KAFKA_PORT, STACK_REGISTRY_PORT, STACK_DIR (see README).",
    )
    .action(async (action: string) => {
      setExitCode(await runStack(action));
    });

  program
    .command("migrate")
    .description("create the database if missing and apply the schema migrations")
    .option("--database-url <value>", settingHelp(CONNECTION.databaseUrl))
    .action(async (_options: unknown, command: Command) => {
      setExitCode(await runMigrate(settingsOf(command)));
    });

  const topics = program
    .command("topics")
    .description("provision the topics and schema subjects (once, with operator rights)");
  addSettings(
    topics
      .command("create")
      .description(
        "create every topic with its settings and register the schemas with their compatibility; idempotent (prints what it created, registered or found)",
      )
      .addHelpText(
        "after",
        "\nThen the processor, the sink and the replicas' exporters can run with autoCreateTopics and autoRegisterSchemas false\n" +
          "(MCPO_AUTO_CREATE_TOPICS=false, MCPO_AUTO_REGISTER_SCHEMAS=false): no CREATE on the cluster, no writes to the registry.",
      ),
    [
      ...CONNECTION_SETTINGS.filter((s) => s.key !== "databaseUrl"),
      settingOf(processorConfigSchema, "partitions"),
      settingOf(processorConfigSchema, "modelCallsRetentionMs"),
    ],
  ).action(async (_options: unknown, command: Command) => {
    setExitCode(await runTopicsCreate(settingsOf(command)));
  });

  addSettings(
    program
      .command("processor")
      .description(
        "run the stream processor until SIGINT/SIGTERM (event-time windows, rollups, alerts)",
      ),
    [...CONNECTION_SETTINGS.filter((s) => s.key !== "databaseUrl"), ...PROCESSOR_SETTINGS],
  ).action(async (_options: unknown, command: Command) => {
    setExitCode(await runProcessor(settingsOf(command)));
  });

  addSettings(program.command("sink").description("run the PostgreSQL sink until SIGINT/SIGTERM"), [
    ...CONNECTION_SETTINGS,
    ...SINK_SETTINGS,
  ]).action(async (_options: unknown, command: Command) => {
    setExitCode(await runSink(settingsOf(command)));
  });

  addSettings(
    program
      .command("ingest")
      .description(
        "run the OTLP/HTTP trace receiver until SIGINT/SIGTERM: GenAI and MCP spans from any OpenTelemetry SDK become events on model-calls",
      ),
    [...CONNECTION_SETTINGS.filter((s) => s.key !== "databaseUrl"), ...INGEST_SETTINGS],
  ).action(async (_options: unknown, command: Command) => {
    setExitCode(await runIngest(settingsOf(command)));
  });

  addSettings(
    program
      .command("ui")
      .description(
        "serve the web UI until SIGINT/SIGTERM: fleet, service, alerts and trace pages over PostgreSQL, live alert transitions from the alerts topic",
      ),
    [...CONNECTION_SETTINGS, ...UI_SETTINGS],
  ).action(async (_options: unknown, command: Command) => {
    setExitCode(await runUi(settingsOf(command)));
  });

  const exporters = program
    .command("export")
    .description("send the pipeline's events to other systems");
  addSettings(
    exporters
      .command("otlp")
      .description(
        "send model-calls' events as OTLP spans (OTLP/HTTP protobuf, POST <endpoint>/v1/traces) until SIGINT/SIGTERM; the group's position moves only past spans the endpoint accepted or that were dead-lettered",
      )
      .addHelpText(
        "after",
        "\nThe OpenTelemetry variables are read when no flag gives the setting: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT\n" +
          "(as is) or OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/traces), OTEL_EXPORTER_OTLP_[TRACES_]HEADERS (k=v,k2=v2;\n" +
          "never shown), OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION (gzip|none), OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT (ms).",
      ),
    [...CONNECTION_SETTINGS.filter((s) => s.key !== "databaseUrl"), ...OTLP_EXPORT_SETTINGS],
  ).action(async (_options: unknown, command: Command) => {
    setExitCode(await runExportOtlp(settingsOf(command)));
  });

  addSettings(
    program
      .command("replay")
      .description(
        "rebuild rollups and alerts from the model-calls log into PostgreSQL, with progress; --verify compares with the stored ones",
      )
      .option("--from-beginning", "replay the whole log (the default)")
      .option("--from <time>", "start at an ISO time, or that long ago (e.g. 2h)")
      .option("--from-offset <offsets>", "start at offset N in every partition, or P:N,P:N")
      .option("--service <names>", "only these services (repeat or comma-separate)", collect)
      .addOption(
        new Option("--into <target>", "current tables, or new metric_rollups_vN/alerts_vN tables")
          .choices(["current", "new-version"])
          .default("current"),
      )
      .option(
        "--verify",
        "compare the rebuilt rollups (and alert ids) with the stored ones; exit 1 on any difference",
      )
      .option("--dry-run", "with --verify: compare only, write nothing")
      .option("--with-spans", "also insert the events' spans (insert-once: existing rows stay)")
      .option("--json", "print the summary as one JSON object")
      .addHelpText(
        "after",
        "\n--window and --grace must equal the live processor's; thresholds and rules come from the config file's metrics section.",
      ),
    [...CONNECTION_SETTINGS, ...WINDOW_SETTINGS],
  ).action(async (options: Record<string, unknown>, command: Command) => {
    const starts = [options.fromBeginning, options.from, options.fromOffset].filter(
      (value) => value !== undefined,
    );
    if (starts.length > 1)
      throw new ConfigError("--from", "give one of --from-beginning, --from and --from-offset");
    setExitCode(
      await runReplay(settingsOf(command), {
        ...(typeof options.from === "string" ? { from: parseFromTime(options.from) } : {}),
        ...(typeof options.fromOffset === "string"
          ? { from: parseOffsets(options.fromOffset) }
          : {}),
        ...(Array.isArray(options.service) ? { service: options.service as string[] } : {}),
        into: options.into === "new-version" ? "new-version" : "current",
        verify: options.verify === true,
        dryRun: options.dryRun === true,
        withSpans: options.withSpans === true,
        json: options.json === true,
      }),
    );
  });

  const alerts = program.command("alerts").description("alerts on the alerts topic");
  addSettings(
    alerts
      .command("tail")
      .description("print alert transitions as they arrive (a table, or --json lines) until Ctrl-C")
      .option("--json", "one JSON object (the AlertEvent) per line")
      .option("--from-beginning", "start from the oldest alert instead of now")
      .option("--service <names>", "only these services (repeat or comma-separate)", collect)
      .option("--max-messages <n>", "exit after n alerts", positiveInt("--max-messages"))
      .option(
        "--timeout <duration>",
        "exit when no alert arrived for this long",
        duration("--timeout"),
      ),
    CONNECTION_SETTINGS.filter((s) => s.key !== "databaseUrl"),
  ).action(async (options: Record<string, unknown>, command: Command) => {
    setExitCode(
      await runAlertsTail(settingsOf(command), {
        json: options.json === true,
        fromBeginning: options.fromBeginning === true,
        ...(Array.isArray(options.service) ? { service: options.service as string[] } : {}),
        ...(typeof options.maxMessages === "number" ? { maxMessages: options.maxMessages } : {}),
        ...(typeof options.timeout === "number" ? { timeoutMs: options.timeout } : {}),
      }),
    );
  });

  addSettings(
    alerts
      .command("forward")
      .description(
        "deliver alert transitions to webhooks (signed JSON) and Alertmanager (v2 API) until SIGINT/SIGTERM; the group's position moves only past delivered or dead-lettered alerts",
      )
      .addHelpText(
        "after",
        "\nSecrets have no flag: MCPO_WEBHOOK_SECRET (or MCPO_WEBHOOK_SECRET_FILE), MCPO_ALERTMANAGER_PASSWORD,\n" +
          "MCPO_ALERTMANAGER_TOKEN (or their _FILE variants), or the config file's forward section.",
      ),
    [...CONNECTION_SETTINGS.filter((s) => s.key !== "databaseUrl"), ...FORWARD_SETTINGS],
  ).action(async (_options: unknown, command: Command) => {
    setExitCode(await runAlertsForward(settingsOf(command)));
  });

  program
    .command("report")
    .description("the derived rates of stored rollups for services and a time range")
    .option("--service <names>", "only these services (repeat or comma-separate)", collect)
    .option("--since <time>", "from an ISO time, or that long ago", "1h")
    .option("--until <time>", "to an ISO time (default now)")
    .option(
      "--bucket <duration>",
      "merge windows into buckets of this size (e.g. 1h)",
      duration("--bucket"),
    )
    .option("--model <name>", "one model instead of the service totals")
    .option(
      "--other-models",
      "the overflow series instead of the service totals: the calls of the models beyond each window's first maxModelsPerWindow",
    )
    .option("--json", "one JSON object per row")
    .option("--database-url <value>", settingHelp(CONNECTION.databaseUrl))
    .action(async (options: Record<string, unknown>, command: Command) => {
      const now = Date.now();
      const since = String(options.since);
      const from = parseFromTime(since, now);
      if (from.kind !== "time") throw new ConfigError("--since", "expected a time");
      const until = typeof options.until === "string" ? Date.parse(options.until) : now;
      if (!Number.isFinite(until))
        throw new ConfigError(
          "--until",
          `expected an ISO time (got ${JSON.stringify(options.until)})`,
        );
      if (options.otherModels === true && typeof options.model === "string")
        throw new ConfigError("--other-models", "give either --model or --other-models, not both");
      setExitCode(
        await runReport(settingsOf(command), {
          ...(Array.isArray(options.service) ? { service: options.service as string[] } : {}),
          fromMs: from.timestampMs,
          toMs: until,
          ...(typeof options.bucket === "number" ? { bucketMs: options.bucket } : {}),
          ...(typeof options.model === "string" ? { model: options.model } : {}),
          ...(options.otherModels === true ? { otherModels: true } : {}),
          json: options.json === true,
        }),
      );
    });

  addSettings(
    program
      .command("demo")
      .description(
        "the main job: local stack (unless configured), schema, processor, sink and a simulated fleet of MCP replicas; prints what the pipeline derived",
      )
      .option("--duration <duration>", "how long the fleet runs", duration("--duration"), 60_000)
      .option("--rate <n>", "model calls per second across the fleet", positiveInt("--rate"), 400)
      .option("--services <n>", "services in the fleet (1-8)", positiveInt("--services"), 4)
      .option("--replicas <n>", "replicas per service", positiveInt("--replicas"), 3)
      .option(
        "--keep-stack",
        "leave the local stack running afterwards (for replay, alerts tail, report)",
      )
      .option(
        "--ui",
        "after the summary, serve the web UI over the results until Ctrl-C (its address is printed; the ui settings from MCPO_UI_* or the file's ui section, port 4000)",
      )
      .option("--json", "print the summary as one JSON object (progress goes to stderr)")
      .addHelpText(
        "after",
        "\nThe demo's windows default to 5s with 1s grace (--window, --grace).",
      ),
    [...CONNECTION_SETTINGS, ...WINDOW_SETTINGS],
  ).action(async (options: Record<string, unknown>, command: Command) => {
    setExitCode(
      await runDemo(settingsOf(command), {
        durationMs: Number(options.duration),
        rate: Number(options.rate),
        services: Number(options.services),
        replicas: Number(options.replicas),
        keepStack: options.keepStack === true,
        ui: options.ui === true,
        json: options.json === true,
        verbose: verboseOf(command),
      }),
    );
  });

  return program;
}

/** Runs the CLI and resolves with the exit code; prints one line per error (`--verbose`: the stack). */
export async function run(argv: readonly string[]): Promise<number> {
  let code = 0;
  const program = buildProgram((value) => {
    code = value;
  });
  const verbose = argv.includes("--verbose");
  try {
    await program.parseAsync([...argv], { from: "user" });
    return code;
  } catch (error) {
    // Commander printed the message.
    if (error instanceof CommanderError) return error.exitCode === 0 ? EXIT.ok : EXIT.usage;
    // The line, and with --verbose the stack, without secrets.
    process.stderr.write(`mcp-observatory: ${failureText(error, verbose)}\n`);
    return failureOf(error, verbose).exitCode;
  }
}

const invokedDirectly =
  process.argv[1] !== undefined &&
  realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
if (invokedDirectly) {
  // Secrets never printed: the secrets of the environment and the command line (secret
  // settings, URL passwords) are replaced wherever they would appear, and everything written to
  // stdout and stderr, and any crash, passes through the same redaction as errors and logs.
  rememberSecretsIn(process.env);
  rememberSecretsIn(process.argv);
  guardOutput(process.stdout);
  guardOutput(process.stderr);
  const crash = (error: unknown): void => {
    process.stderr.write(`mcp-observatory: ${failureText(error, true)}\n`);
    process.exit(EXIT.failure);
  };
  process.on("uncaughtException", crash);
  process.on("unhandledRejection", crash);
  // `mcp-observatory alerts tail | head`: a closed pipe ends the command quietly, as in any CLI.
  process.stdout.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code === "EPIPE") process.exit(0);
    throw error;
  });
  void run(process.argv.slice(2)).then((code) => {
    process.exit(code);
  });
}
