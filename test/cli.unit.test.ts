/** The CLI's settings resolution, parsing helpers, output helpers and the fleet simulator. */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { describe, expect, it } from "vitest";

import { DEMO_TOPIC_PREFIX, demoConnection } from "../cli/commands/demo.js";
import { parseFromTime, parseOffsets } from "../cli/commands/replay.js";
import {
  CONNECTION_SETTINGS,
  formatDuration,
  parseDuration,
  readConfigFile,
  settingOf,
  SettingsResolver,
} from "../cli/config.js";
import { CallGenerator, runFleet, TOOL_CALL_EVERY } from "../cli/fleet.js";
import { InMemoryExporter } from "../producer/exporters/memory.js";
import { clock, percent, Progress, table } from "../cli/output.js";
import {
  ConfigError,
  defaultGroupId,
  parseProcessorConfig,
  processorConfigSchema,
} from "../config/index.js";

const windowSetting = settingOf(processorConfigSchema, "windowSizeMs");
const graceSetting = settingOf(processorConfigSchema, "graceMs");

function file(name: string, text: string): string {
  const path = join(mkdtempSync(join(tmpdir(), "mcpo-cli-")), name);
  writeFileSync(path, text);
  return path;
}

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error("expected a ConfigError");
}

describe("settings: flag, then environment, then file, then default", () => {
  const yaml = file(
    "settings.yaml",
    "brokers: file-host:9092\nprocessor:\n  windowMs: 30s\n  graceMs: 2000\n",
  );

  it("takes each from the first place that has it", () => {
    const fileOnly = new SettingsResolver({}, readConfigFile(yaml), {});
    expect(fileOnly.duration(windowSetting)).toBe(30_000);
    expect(fileOnly.duration(graceSetting, 0)).toBe(2000);
    expect(fileOnly.connection().kafkaBrokers).toEqual(["file-host:9092"]);

    const envWins = new SettingsResolver({}, readConfigFile(yaml), {
      MCPO_WINDOW_MS: "10s",
      KAFKA_BROKERS: "env-host:9092",
    });
    expect(envWins.duration(windowSetting)).toBe(10_000);
    expect(envWins.connection().kafkaBrokers).toEqual(["env-host:9092"]);

    const flagWins = new SettingsResolver(
      { window: "1m", brokers: "flag-host:1" },
      readConfigFile(yaml),
      {
        MCPO_WINDOW_MS: "10s",
        KAFKA_BROKERS: "env-host:9092",
      },
    );
    expect(flagWins.duration(windowSetting)).toBe(60_000);
    expect(flagWins.connection().kafkaBrokers).toEqual(["flag-host:1"]);

    const defaults = new SettingsResolver({}, undefined, {});
    expect(defaults.duration(windowSetting)).toBe(60_000);
    expect(defaults.withDefaults({ "processor.windowMs": 5000 }).duration(windowSetting)).toBe(
      5000,
    );
    expect(defaults.given(CONNECTION_SETTINGS)).toBe(false);
    expect(envWins.given(CONNECTION_SETTINGS)).toBe(true);
  });

  it("reads JSON too, and MCPO_CONFIG when no --config is given", () => {
    const json = file("settings.json", JSON.stringify({ processor: { windowMs: 15000 } }));
    expect(SettingsResolver.fromFlags({}, { MCPO_CONFIG: json }).duration(windowSetting)).toBe(
      15_000,
    );
    expect(SettingsResolver.fromFlags({ config: json }, {}).duration(windowSetting)).toBe(15_000);
  });

  it("names the key as the user wrote it when a value is wrong", () => {
    expect(
      configError(() =>
        new SettingsResolver({ window: "soon" }, undefined, {}).duration(windowSetting),
      ).key,
    ).toBe("--window");
    expect(
      configError(() =>
        new SettingsResolver({}, undefined, { MCPO_WINDOW_MS: "0" }).duration(windowSetting),
      ).key,
    ).toBe("MCPO_WINDOW_MS");
    const bad = file("bad.yaml", "processor:\n  windowMs: forever\n");
    expect(
      configError(() => new SettingsResolver({}, readConfigFile(bad), {}).duration(windowSetting))
        .key,
    ).toBe(`processor.windowMs in ${bad}`);
    const badBrokers = file("brokers.json", JSON.stringify({ brokers: "nohost" }));
    const error = configError(() =>
      new SettingsResolver({}, readConfigFile(badBrokers), {}).connection(),
    );
    expect(error.key).toBe(`brokers in ${badBrokers}`);
    expect(error.message).toContain("expected host:port");
    expect(
      configError(() =>
        new SettingsResolver({ databaseUrl: "mysql://x" }, undefined, {}).connection(),
      ).key,
    ).toBe("--database-url");
  });

  it("refuses unknown keys, bad syntax and files that are not objects, naming the file", () => {
    expect(configError(() => readConfigFile(file("a.json", '{"brokerz": "x:1"}'))).message).toMatch(
      /brokerz in .*a\.json: unknown key/,
    );
    expect(configError(() => readConfigFile(file("b.yaml", "sink:\n  group: x\n"))).key).toMatch(
      /^sink\.group in /,
    );
    expect(configError(() => readConfigFile(file("c.json", "{"))).message).toMatch(
      /is not valid JSON/,
    );
    expect(configError(() => readConfigFile(file("d.yaml", "- 1\n- 2\n"))).message).toMatch(
      /must hold an object/,
    );
    expect(configError(() => readConfigFile("/nonexistent/mcpo.yaml")).message).toMatch(
      /cannot read/,
    );
  });

  it("checks the metrics section with the processor's own parser", () => {
    const rules = file(
      "rules.yaml",
      "metrics:\n  rules:\n    - key: errors\n      metric: error_rate\n      comparator: gt\n      threshold: 0.1\n      minSamples: 0\n",
    );
    expect(
      configError(() => new SettingsResolver({}, readConfigFile(rules), {}).metrics()).key,
    ).toMatch(/metrics\.rules\[0\]\.minSamples$/);
  });
});

describe("parsing", () => {
  it("durations", () => {
    expect(parseDuration("250ms")).toBe(250);
    expect(parseDuration("1.5s")).toBe(1500);
    expect(parseDuration("5m")).toBe(300_000);
    expect(parseDuration("1h")).toBe(3_600_000);
    expect(parseDuration(" 42 ")).toBe(42);
    expect(parseDuration(7)).toBe(7);
    for (const bad of ["", "5 minutes", "-1s", "1.5ms", null, {}])
      expect(parseDuration(bad)).toBeUndefined();
    expect(formatDuration(60_000)).toBe("1m");
    expect(formatDuration(10_000)).toBe("10s");
    expect(formatDuration(1500)).toBe("1500ms");
  });

  it("replay starts", () => {
    expect(parseOffsets("120")).toEqual({ kind: "offset", offsets: 120n });
    expect(parseOffsets("0:5, 3:80")).toEqual({
      kind: "offset",
      offsets: new Map([
        [0, 5n],
        [3, 80n],
      ]),
    });
    expect(configError(() => parseOffsets("0:x")).key).toBe("--from-offset");
    expect(parseFromTime("2h", 10_000_000)).toEqual({
      kind: "time",
      timestampMs: 10_000_000 - 7_200_000,
    });
    expect(parseFromTime("2026-11-25T10:00:00Z")).toEqual({
      kind: "time",
      timestampMs: Date.parse("2026-11-25T10:00:00Z"),
    });
    expect(configError(() => parseFromTime("yesterday")).key).toBe("--from");
  });
});

describe("output", () => {
  it("aligns tables: text left, numbers right, null as -", () => {
    expect(
      table(
        ["name", "n"],
        [
          ["a", 1],
          ["bbb", null],
          ["cc", 100],
        ],
      ).split("\n"),
    ).toEqual(["name    n", "----  ---", "a       1", "bbb     -", "cc    100"]);
    expect(percent(0.1234)).toBe("12.3%");
    expect(percent(null)).toBeNull();
    expect(clock(3725)).toBe("1h02m");
    expect(clock(65)).toBe("1m05s");
    expect(clock(Number.POSITIVE_INFINITY)).toBe("?");
  });
});

describe("progress", () => {
  const stream = (isTTY: boolean) => {
    const written: string[] = [];
    return {
      written,
      stream: {
        isTTY,
        write: (text: string) => written.push(text),
      } as unknown as NodeJS.WriteStream,
    };
  };

  it("redraws a bar with events/s and ETA in place on a terminal", () => {
    const tty = stream(true);
    const progress = new Progress("replay", tty.stream, 0);
    progress.update(250_000, 1_000_000, 2000, true);
    progress.update(500_000, 1_000_000, 4000, true);
    progress.done();
    expect(tty.written[0]).toMatch(
      /^\rreplay \[#{8}\.{22}\] 250,000\/1,000,000 25\.0% {2}125,000 events\/s {2}ETA 6s/,
    );
    expect(tty.written[1]).toMatch(/^\rreplay \[#{15}\.{15}\] 500,000\/1,000,000 50\.0%/);
    expect(tty.written.at(-1)).toBe("\n");
  });

  it("prints plain lines, at most every interval, when not on a terminal", () => {
    const plain = stream(false);
    const progress = new Progress("replay", plain.stream, 60_000);
    progress.update(1, 10, 1000);
    progress.update(2, 10, 2000); // within the interval: not printed
    progress.update(10, 10, 3000, true);
    progress.done();
    expect(plain.written).toEqual([
      "replay: 1/10 10.0%  1 events/s  ETA 9s\n",
      "replay: 10/10 100.0%  3 events/s  ETA 0s\n",
    ]);
  });
});

describe("fleet simulator", () => {
  it("is seeded: the same seed gives the same calls", () => {
    const a = new CallGenerator(7);
    const b = new CallGenerator(7);
    for (let i = 0; i < 200; i++)
      expect(a.next(1_000_000, i % 2 === 0)).toEqual(b.next(1_000_000, i % 2 === 0));
  });

  it("drifts: a drifting service breaches the default rules, a healthy one does not", () => {
    const share = (drifting: boolean) => {
      const generator = new CallGenerator(1);
      let gated = 0;
      let blocked = 0;
      let golden = 0;
      let goldenFailed = 0;
      for (let i = 0; i < 5000; i++) {
        const call = generator.next(1_000_000, drifting);
        if (call.confidenceGateThreshold !== undefined && call.confidenceGateThreshold !== null) {
          gated++;
          if ((call.confidence ?? 1) < call.confidenceGateThreshold) blocked++;
        }
        if (call.isGoldenFinancialScenario) {
          golden++;
          if (call.goldenScenarioPassed === false) goldenFailed++;
        }
      }
      return { gateBlockRate: blocked / gated, goldenFailureRate: goldenFailed / golden };
    };
    const healthy = share(false);
    const drifting = share(true);
    expect(healthy.gateBlockRate).toBeLessThan(0.02);
    expect(healthy.goldenFailureRate).toBe(0);
    expect(drifting.gateBlockRate).toBeGreaterThan(0.5);
    expect(drifting.goldenFailureRate).toBeGreaterThan(0.2);
  });
});

describe("fleet run", () => {
  it("makes about the asked rate, with end times spread over the run, and drifts only its drifting service in the middle", async () => {
    const exporters: InMemoryExporter[] = [];
    let virtualMs = 1_764_000_000_000;
    const result = await runFleet({
      services: ["payments-mcp", "search-mcp"],
      replicas: 2,
      ratePerSecond: 2000,
      durationMs: 1500,
      driftingService: "payments-mcp",
      // A virtual clock, 25 ms a reading (two readings a round): the rate, the spread and the
      // drift stretch are the fleet's, whatever else the machine is doing.
      clock: () => (virtualMs += 25),
      exporterFor: () => {
        const exporter = new InMemoryExporter();
        exporters.push(exporter);
        return exporter;
      },
    });
    const events = exporters.flatMap((exporter) => exporter.events);
    expect(events.length).toBe(result.recorded);
    expect(result.recorded + result.shortfall).toBeGreaterThan(2000);
    expect(result.recorded).toBeLessThan(3400);
    expect(new Set(events.map((e) => e.service_instance)).size).toBe(4);
    // Spread, not bursts stamped with one time: many distinct milliseconds.
    expect(new Set(events.map((e) => Math.floor(e.end_time / 1000))).size).toBeGreaterThan(500);
    const span = result.endedAtMs - result.startedAtMs;
    const inDrift = (e: (typeof events)[number]) => {
      const t = e.end_time / 1000 - result.startedAtMs;
      return t >= span * 0.32 && t < span * 0.58;
    };
    const gateBlocks = (list: typeof events) =>
      list.filter(
        (e) =>
          e.confidence_gate_threshold !== null && (e.confidence ?? 1) < e.confidence_gate_threshold,
      ).length / Math.max(1, list.filter((e) => e.confidence_gate_threshold !== null).length);
    expect(
      gateBlocks(events.filter((e) => e.service === "payments-mcp" && inDrift(e))),
    ).toBeGreaterThan(0.5);
    expect(gateBlocks(events.filter((e) => e.service === "search-mcp"))).toBeLessThan(0.05);
    expect(
      gateBlocks(events.filter((e) => e.service === "payments-mcp" && !inDrift(e))),
    ).toBeLessThan(0.1);
  });
});

describe("fleet traces", () => {
  it("makes one call in TOOL_CALL_EVERY inside an MCP tool call: a tool_call span (tools/call) with the model call as its child, spanning it, in one trace", async () => {
    const exporter = new InMemoryExporter();
    const result = await runFleet({
      services: ["payments-mcp"],
      replicas: 1,
      ratePerSecond: 1000,
      durationMs: 600,
      exporterFor: () => exporter,
    });
    const events = exporter.events;
    expect(events.length).toBe(result.recorded);
    const tools = events.filter((e) => e.kind === "tool_call");
    const models = events.filter((e) => e.kind === "model_call");
    expect(tools.length).toBe(Math.floor(models.length / TOOL_CALL_EVERY));
    expect(tools.length).toBeGreaterThan(5);
    for (const tool of tools) {
      const children = models.filter((m) => m.parent_span_id === tool.span_id);
      expect(children.length).toBe(1);
      const child = children[0] as (typeof models)[number];
      expect(child.trace_id).toBe(tool.trace_id);
      expect(tool.parent_span_id).toBeNull();
      expect(tool.mcp_method).toBe("tools/call");
      expect(tool.tool_name).toBe(child.tool_name);
      expect(tool.model).toBeNull();
      expect(tool.start_time).toBeLessThan(child.start_time);
      expect(tool.end_time).toBe(child.end_time);
    }
    // Every other model call is a root span of its own trace.
    expect(models.filter((m) => m.parent_span_id === null).length).toBe(
      models.length - tools.length,
    );
  });
});

describe("the demo's names", () => {
  it("are its own unless a topic prefix is given: topics under mcpo-demo., groups mcpo-demo-processor and mcpo-demo-sink", () => {
    const own = demoConnection(new SettingsResolver({}, undefined, {}));
    expect(own.topicPrefix).toBe(DEMO_TOPIC_PREFIX);
    expect(DEMO_TOPIC_PREFIX).not.toBe(CONNECTION_SETTINGS[3].defaultValue);
    expect(defaultGroupId(own.topicPrefix, "processor")).toBe("mcpo-demo-processor");
    expect(defaultGroupId(own.topicPrefix, "sink")).toBe("mcpo-demo-sink");
    // No --group anywhere: the group is left to the component (not the text "undefined").
    const nothing = new SettingsResolver({}, undefined, {});
    expect(nothing.options(processorConfigSchema).groupId).toBeUndefined();
    expect(
      parseProcessorConfig({ ...nothing.options(processorConfigSchema), topicPrefix: "mcpo." })
        .groupId,
    ).toBe("mcpo-processor");
    const given = new SettingsResolver({}, undefined, { MCPO_TOPIC_PREFIX: "trial." });
    expect(demoConnection(given).topicPrefix).toBe("trial.");
    expect(
      demoConnection(new SettingsResolver({ topicPrefix: "x." }, undefined, {})).topicPrefix,
    ).toBe("x.");
  });
});
