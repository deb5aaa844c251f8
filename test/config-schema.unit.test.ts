/**
 * One settings schema per component: defaults stated once, every invalid value named by its key,
 * unknown keys refused, frozen results, today's messages kept, and the CLI's flags, variables and
 * file keys derived from the schemas' keys (so the order of the keys cannot swap two settings).
 */
import { readFileSync } from "node:fs";

import { describe, expect, it } from "vitest";
import { z } from "zod";

import {
  PROCESSOR_SETTINGS,
  settingOf,
  SettingsResolver,
  settingsOf,
  SINK_SETTINGS,
  WINDOW_SETTINGS,
} from "../cli/config.js";
import {
  ConfigError,
  envOf,
  flagOf,
  parseProcessorConfig,
  parseReplayConfig,
  parseSinkConfig,
  defaultGroupId,
  processorConfigSchema,
  replayConfigSchema,
  sinkConfigSchema,
} from "../config/index.js";
import { StreamProcessor } from "../processor/processor.js";

/** Connection options given explicitly, so no test depends on the environment. */
const ENDPOINTS = {
  brokers: "127.0.0.1:9092",
  schemaRegistryUrl: "http://127.0.0.1:8081/apis/ccompat/v7",
  topicPrefix: "schema-test.",
} as const;

function configError(run: () => unknown): ConfigError {
  try {
    run();
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error("expected a ConfigError");
}

/** Calls a parse function with a value its types refuse, as a JavaScript caller could. */
const loosely = (parse: (options: never) => unknown) => (options: Record<string, unknown>) =>
  parse(options as never);

describe("defaults, stated once in the schemas", () => {
  it("the processor's", () => {
    const config = parseProcessorConfig(ENDPOINTS);
    expect(config).toEqual({
      windowSizeMs: 60_000,
      graceMs: 10_000,
      allowedLatenessMs: 3_600_000,
      maxModelsPerWindow: 200,
      maxClockSkewMs: 300_000,
      maxEventAgeMs: 0,
      metrics: {},
      groupId: "schema-test-processor",
      idleTimeoutMs: 30_000,
      checkpointIntervalMs: 2000,
      sessionTimeoutMs: 30_000,
      partitions: 6,
      metricsHost: "127.0.0.1",
      metadataMaxAgeMs: 5000,
      unknownSchemaIdGraceMs: 15_000,
      modelCallsRetentionMs: -1,
      autoCreateTopics: true,
      autoRegisterSchemas: true,
      resetState: false,
      connection: expect.objectContaining({
        kafkaBrokers: ["127.0.0.1:9092"],
        topicPrefix: "schema-test.",
      }) as unknown,
    });
    expect(config.metricsPort).toBeUndefined();
    expect(config.clientId).toBeUndefined();
  });

  it("the sink's", () => {
    const config = parseSinkConfig({
      ...ENDPOINTS,
      databaseUrl: "postgresql://postgres@127.0.0.1:5432/x",
    });
    expect(config).toMatchObject({
      groupId: "schema-test-sink",
      sessionTimeoutMs: 30_000,
      migrate: true,
      partitions: 6,
      autoCreateTopics: true,
      autoRegisterSchemas: true,
      retryInitialMs: 200,
      retryMaxMs: 10_000,
    });
    expect(config.metricsPort).toBeUndefined();
    expect(config.connection.databaseUrl).toBe("postgresql://postgres@127.0.0.1:5432/x");
  });

  it("consumer groups follow the topic prefix unless given, so deployments under two prefixes never share one", () => {
    expect(defaultGroupId("mcpo.", "processor")).toBe("mcpo-processor");
    expect(defaultGroupId("mcpo.", "sink")).toBe("mcpo-sink");
    expect(defaultGroupId("mcpo-demo.", "processor")).toBe("mcpo-demo-processor");
    expect(defaultGroupId("team_a-", "sink")).toBe("team_a-sink");
    expect(defaultGroupId("", "processor")).toBe("processor");
    const staging = { ...ENDPOINTS, topicPrefix: "staging." };
    expect(parseProcessorConfig(staging).groupId).toBe("staging-processor");
    expect(parseSinkConfig(staging).groupId).toBe("staging-sink");
    expect(parseProcessorConfig({ ...staging, groupId: "mine" }).groupId).toBe("mine");
  });

  it("a replay's, whose window part is the processor's", () => {
    const config = parseReplayConfig(ENDPOINTS);
    expect(config).toMatchObject({
      windowSizeMs: 60_000,
      graceMs: 10_000,
      metrics: {},
      withEvents: false,
      clientId: "mcpo-replay",
    });
    expect(replayConfigSchema.shape.windowSizeMs).toBe(processorConfigSchema.shape.windowSizeMs);
    expect(replayConfigSchema.shape.graceMs).toBe(processorConfigSchema.shape.graceMs);
    expect(replayConfigSchema.shape.metrics).toBe(processorConfigSchema.shape.metrics);
  });

  it("given values are kept, and metrics is handed back as given for the caller to parse", () => {
    const metrics = { thresholds: { lowConfidence: 0.9 } };
    const config = parseProcessorConfig({
      ...ENDPOINTS,
      windowSizeMs: 5000,
      graceMs: 0,
      metricsPort: 0,
      metrics,
    });
    expect([config.windowSizeMs, config.graceMs, config.metricsPort]).toEqual([5000, 0, 0]);
    expect(config.metrics).toBe(metrics);
  });

  it("the CLI's defaults are the schemas' (the metrics ports aside: on in the CLI)", () => {
    const defaults = parseProcessorConfig(ENDPOINTS) as unknown as Record<string, unknown>;
    for (const setting of PROCESSOR_SETTINGS)
      expect([setting.name, setting.defaultValue]).toEqual([
        setting.name,
        setting.name === "metricsPort"
          ? 9464
          : setting.name === "groupId" // resolved from the topic prefix, not a fixed default
            ? undefined
            : defaults[setting.name],
      ]);
    const sink = parseSinkConfig(ENDPOINTS) as unknown as Record<string, unknown>;
    for (const setting of SINK_SETTINGS)
      expect([setting.name, setting.defaultValue]).toEqual([
        setting.name,
        setting.name === "metricsPort"
          ? 9465
          : setting.name === "groupId"
            ? undefined
            : sink[setting.name],
      ]);
  });
});

describe("invalid values, named by key", () => {
  const processor = loosely(parseProcessorConfig);
  const sink = loosely(parseSinkConfig);
  const replay = loosely(parseReplayConfig);
  const cases: [string, (options: Record<string, unknown>) => unknown, string, unknown, string][] =
    [
      ["processor", processor, "windowSizeMs", 0, "expected a positive integer (got 0)"],
      ["processor", processor, "windowSizeMs", 1.5, "expected a positive integer (got 1.5)"],
      ["processor", processor, "windowSizeMs", "60s", 'expected a positive integer (got "60s")'],
      ["processor", processor, "graceMs", -1, "expected a non-negative integer (got -1)"],
      ["processor", processor, "graceMs", 0.5, "expected a non-negative integer (got 0.5)"],
      ["processor", processor, "maxModelsPerWindow", 0, "expected a positive integer (got 0)"],
      [
        "processor",
        processor,
        "maxModelsPerWindow",
        1_000_001,
        "expected a positive integer up to 1000000 (got 1000001)",
      ],
      ["processor", processor, "idleTimeoutMs", 0, "expected a positive integer (got 0)"],
      ["processor", processor, "checkpointIntervalMs", -1, "expected a positive integer (got -1)"],
      ["processor", processor, "sessionTimeoutMs", 0, "expected a positive integer (got 0)"],
      ["processor", processor, "metadataMaxAgeMs", 0, "expected a positive integer (got 0)"],
      ["processor", processor, "partitions", 0, "expected a positive integer (got 0)"],
      [
        "processor",
        processor,
        "partitions",
        10_001,
        "expected a positive integer up to 10000 (got 10001)",
      ],
      ["processor", processor, "metricsPort", 70_000, "expected a port from 0 to 65535"],
      ["processor", processor, "metricsPort", -1, "expected a port from 0 to 65535 (got -1)"],
      ["processor", processor, "groupId", " ", 'expected a non-empty string (got " ")'],
      ["processor", processor, "clientId", "", 'expected a non-empty string (got "")'],
      ["sink", sink, "groupId", 7, "expected a non-empty string (got 7)"],
      ["sink", sink, "sessionTimeoutMs", 0, "expected a positive integer (got 0)"],
      ["sink", sink, "metricsPort", 1.5, "expected a port from 0 to 65535 (got 1.5)"],
      [
        "sink",
        sink,
        "metricsHost",
        "http://0.0.0.0",
        'expected a host name or IP address to listen on, e.g. 127.0.0.1, 0.0.0.0 or :: (got "http://0.0.0.0")',
      ],
      [
        "processor",
        processor,
        "metricsHost",
        "",
        'expected a host name or IP address to listen on, e.g. 127.0.0.1, 0.0.0.0 or :: (got "")',
      ],
      ["sink", sink, "migrate", "yes", 'expected true or false (got "yes")'],
      ["sink", sink, "partitions", -6, "expected a positive integer (got -6)"],
      ["sink", sink, "retryInitialMs", 0, "expected a positive integer (got 0)"],
      ["sink", sink, "retryMaxMs", 0, "expected a positive integer (got 0)"],
      ["replay", replay, "windowSizeMs", 0, "expected a positive integer (got 0)"],
      ["replay", replay, "graceMs", -1, "expected a non-negative integer (got -1)"],
      ["replay", replay, "maxModelsPerWindow", 2.5, "expected a positive integer (got 2.5)"],
      ["replay", replay, "withEvents", 1, "expected true or false (got 1)"],
      ["replay", replay, "clientId", "", 'expected a non-empty string (got "")'],
    ];
  for (const [component, parse, key, value, message] of cases)
    it(`${component} ${key}: ${JSON.stringify(value)}`, () => {
      const error = configError(() => parse({ ...ENDPOINTS, [key]: value }));
      expect(error.key).toBe(key);
      expect(error.message).toContain(`invalid configuration ${key}: ${message}`);
    });

  it("a replay's services: a list of names, the wrong element named", () => {
    expect(configError(() => replay({ ...ENDPOINTS, services: "a" })).key).toBe("services");
    expect(configError(() => replay({ ...ENDPOINTS, services: ["a", ""] })).key).toBe("services.1");
    expect(parseReplayConfig({ ...ENDPOINTS, services: ["a"] }).services).toEqual(["a"]);
  });

  it("connection settings are checked by config/'s connection rules, naming the option", () => {
    const error = configError(() => parseSinkConfig({ ...ENDPOINTS, databaseUrl: "mysql://x" }));
    expect(error.key).toBe("databaseUrl");
    expect(configError(() => parseProcessorConfig({ brokers: "nohost" })).key).toBe("kafkaBrokers");
  });
});

describe("unknown keys", () => {
  it("are refused with their name, and the known keys listed", () => {
    const error = configError(() => loosely(parseProcessorConfig)({ windowMs: 5000 }));
    expect(error.key).toBe("windowMs");
    expect(error.message).toMatch(/^invalid configuration windowMs: unknown option \(known: .*\)/);
    expect(error.message).toContain("windowSizeMs");
    // The processor takes no database; the sink takes no window.
    expect(
      configError(() => loosely(parseProcessorConfig)({ databaseUrl: "postgresql://h/db" })).key,
    ).toBe("databaseUrl");
    expect(configError(() => loosely(parseSinkConfig)({ graceMs: 0 })).key).toBe("graceMs");
  });

  it("objects the caller keeps (logger, scheduler, callbacks) are accepted and left out", () => {
    const logger = { info: () => undefined, warn: () => undefined, error: () => undefined };
    const processor = parseProcessorConfig({ ...ENDPOINTS, logger, scheduler: {} });
    expect("logger" in processor || "scheduler" in processor).toBe(false);
    expect("logger" in parseSinkConfig({ ...ENDPOINTS, logger })).toBe(false);
    const replay = parseReplayConfig({
      ...ENDPOINTS,
      from: { kind: "beginning" },
      onOutputs: () => Promise.resolve(),
    });
    expect("onOutputs" in replay || "from" in replay).toBe(false);
  });
});

describe("results are frozen", () => {
  it("every component's", () => {
    for (const config of [
      parseProcessorConfig(ENDPOINTS),
      parseSinkConfig(ENDPOINTS),
      parseReplayConfig(ENDPOINTS),
    ]) {
      expect(Object.isFrozen(config)).toBe(true);
      expect(Object.isFrozen(config.connection)).toBe(true);
      expect(() => {
        (config as { groupId?: string; clientId?: string }).clientId = "changed";
      }).toThrow(TypeError);
    }
  });
});

describe("parity with the components' own checks", () => {
  // The messages the processor and replay constructors have always given.
  const today: [string, unknown, string][] = [
    ["windowSizeMs", 0, "invalid configuration windowSizeMs: expected a positive integer (got 0)"],
    ["graceMs", -1, "invalid configuration graceMs: expected a non-negative integer (got -1)"],
    [
      "idleTimeoutMs",
      -5,
      "invalid configuration idleTimeoutMs: expected a positive integer (got -5)",
    ],
    [
      "checkpointIntervalMs",
      0,
      "invalid configuration checkpointIntervalMs: expected a positive integer (got 0)",
    ],
    ["partitions", 2.5, "invalid configuration partitions: expected a positive integer (got 2.5)"],
    [
      "sessionTimeoutMs",
      0,
      "invalid configuration sessionTimeoutMs: expected a positive integer (got 0)",
    ],
    [
      "metadataMaxAgeMs",
      0,
      "invalid configuration metadataMaxAgeMs: expected a positive integer (got 0)",
    ],
  ];
  for (const [key, value, message] of today)
    it(`${key} ${JSON.stringify(value)}: the same message as the processor's constructor`, () => {
      const options = { ...ENDPOINTS, [key]: value };
      expect(configError(() => parseProcessorConfig(options)).message).toBe(message);
      expect(configError(() => new StreamProcessor(options)).message).toBe(message);
    });

  it("a replay's window checks give the same messages", () => {
    expect(configError(() => parseReplayConfig({ ...ENDPOINTS, windowSizeMs: -1 })).message).toBe(
      "invalid configuration windowSizeMs: expected a positive integer (got -1)",
    );
    expect(configError(() => parseReplayConfig({ ...ENDPOINTS, graceMs: 1.5 })).message).toBe(
      "invalid configuration graceMs: expected a non-negative integer (got 1.5)",
    );
  });
});

describe("the CLI, derived from the schemas' keys", () => {
  it("flag, variable and file key follow the naming rule, except the names stated as overrides", () => {
    const overrides: Record<string, { flag: string; env: string; key: string }> = {
      "processor.windowSizeMs": {
        flag: "--window",
        env: "MCPO_WINDOW_MS",
        key: "processor.windowMs",
      },
      "processor.groupId": {
        flag: "--group",
        env: "MCPO_PROCESSOR_GROUP",
        key: "processor.groupId",
      },
      "sink.groupId": { flag: "--group", env: "MCPO_SINK_GROUP", key: "sink.groupId" },
    };
    const seen: string[] = [];
    for (const [section, settings] of [
      ["processor", PROCESSOR_SETTINGS],
      ["sink", SINK_SETTINGS],
    ] as const)
      for (const setting of settings) {
        const expected = overrides[`${section}.${setting.name}`] ?? {
          flag: flagOf(setting.name),
          env: envOf(setting.name),
          key: `${section}.${setting.name}`,
        };
        expect({ flag: setting.flag, env: setting.env, key: setting.key }).toEqual(expected);
        seen.push(`${section}.${setting.name}`);
      }
    expect(seen).toEqual(expect.arrayContaining(Object.keys(overrides)));
    expect(flagOf("idleTimeoutMs")).toBe("--idle-timeout");
    expect(envOf("idleTimeoutMs")).toBe("MCPO_IDLE_TIMEOUT_MS");
  });

  it("no two settings of a command share a flag, variable or file key", () => {
    for (const settings of [PROCESSOR_SETTINGS, SINK_SETTINGS, WINDOW_SETTINGS])
      for (const field of ["flag", "env", "key", "option"] as const)
        expect(new Set(settings.map((setting) => setting[field])).size).toBe(settings.length);
  });

  it("values land in their keys whatever the order of the schema's keys", () => {
    const shape = processorConfigSchema.shape;
    const reordered = z.strictObject({
      metricsPort: shape.metricsPort,
      graceMs: shape.graceMs,
      groupId: shape.groupId,
      windowSizeMs: shape.windowSizeMs,
    });
    expect(settingsOf(reordered).map((setting) => setting.name)).toEqual([
      "metricsPort",
      "graceMs",
      "groupId",
      "windowSizeMs",
    ]);
    const flags = { window: "5s", grace: "1s" };
    const env = { MCPO_WINDOW_MS: "7s", MCPO_GRACE_MS: "2s" };
    for (const schema of [processorConfigSchema, reordered, replayConfigSchema]) {
      const fromFlags = new SettingsResolver(flags, undefined, {}).options(schema);
      expect([fromFlags.windowSizeMs, fromFlags.graceMs]).toEqual([5000, 1000]);
      const fromEnv = new SettingsResolver({}, undefined, env).options(schema);
      expect([fromEnv.windowSizeMs, fromEnv.graceMs]).toEqual([7000, 2000]);
    }
    // And by key in the derived table, not by position.
    expect(settingOf(reordered, "windowSizeMs").flag).toBe("--window");
    expect(settingOf(reordered, "graceMs").flag).toBe("--grace");
  });

  it("a command's resolved options are the component's options, by key", () => {
    const resolver = new SettingsResolver(
      { window: "5s", grace: "0", idleTimeout: "3s", partitions: "3", metricsPort: "-1" },
      undefined,
      { MCPO_PROCESSOR_GROUP: "g", MCPO_SINK_GROUP: "s" },
    );
    const processor = resolver.options(processorConfigSchema);
    expect(processor).toEqual({
      windowSizeMs: 5000,
      graceMs: 0,
      allowedLatenessMs: 3_600_000,
      maxModelsPerWindow: 200,
      maxClockSkewMs: 300_000,
      maxEventAgeMs: 0,
      groupId: "g",
      idleTimeoutMs: 3000,
      checkpointIntervalMs: 2000,
      sessionTimeoutMs: 30_000,
      partitions: 3,
      metricsPort: undefined,
      metricsHost: "127.0.0.1",
      metadataMaxAgeMs: 5000,
      unknownSchemaIdGraceMs: 15_000,
      modelCallsRetentionMs: -1,
      autoCreateTopics: true,
      autoRegisterSchemas: true,
      resetState: false,
    });
    expect(parseProcessorConfig({ ...ENDPOINTS, ...processor }).idleTimeoutMs).toBe(3000);
    expect(resolver.options(sinkConfigSchema)).toEqual({
      groupId: "s",
      sessionTimeoutMs: 30_000,
      metricsPort: undefined,
      metricsHost: "127.0.0.1",
      unknownSchemaIdGraceMs: 15_000,
      modelCallsRetentionMs: -1,
      autoCreateTopics: true,
      autoRegisterSchemas: true,
      acceptNewTopics: false,
    });
  });

  it("a switch is on when its flag is given, or true/1 in the environment or the file; anything else is an error naming where", () => {
    const reset = settingOf(processorConfigSchema, "resetState");
    expect([reset.flag, reset.env, reset.key, reset.kind]).toEqual([
      "--reset-state",
      "MCPO_RESET_STATE",
      "processor.resetState",
      "boolean",
    ]);
    const value = (flags: Record<string, unknown>, env: Record<string, string>) =>
      new SettingsResolver(flags, undefined, env).value(reset);
    expect(value({}, {})).toBe(false);
    expect(value({ resetState: true }, {})).toBe(true);
    expect(value({}, { MCPO_RESET_STATE: "1" })).toBe(true);
    expect(value({}, { MCPO_RESET_STATE: "false" })).toBe(false);
    expect(configError(() => value({}, { MCPO_RESET_STATE: "soon" })).message).toContain(
      'MCPO_RESET_STATE: expected true or false (got "soon")',
    );
  });

  it("the CLI's ranges are the schemas'", () => {
    const error = (flags: Record<string, unknown>, name: "graceMs" | "partitions") =>
      configError(() =>
        new SettingsResolver(flags, undefined, {}).value(settingOf(processorConfigSchema, name)),
      ).message;
    expect(error({ grace: "-1" }, "graceMs")).toContain("(0 allowed)");
    expect(error({ partitions: "10001" }, "partitions")).toContain(
      "expected an integer from 1 to 10000",
    );
  });

  it("README's settings table lists every setting's file key, flag and variable", () => {
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
    const start = readme.indexOf("| file key");
    const table = readme.slice(start, readme.indexOf("\n\n", start));
    for (const setting of [...PROCESSOR_SETTINGS, ...SINK_SETTINGS]) {
      const row = table.split("\n").find((line) => line.includes(`\`${setting.key}\``));
      expect(row, setting.key).toBeDefined();
      // Secrets have no flag (never on a command line).
      if (setting.secret !== true) expect(row).toContain(`\`${setting.flag}\``);
      expect(row).toContain(`\`${setting.env ?? ""}\``);
    }
  });
});
