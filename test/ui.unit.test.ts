import { readFileSync } from "node:fs";

import { describe, expect, it } from "vitest";

import { SettingsResolver, UI_SETTINGS } from "../cli/config.js";
import { ConfigError, parseUiConfig, uiConfigSchema } from "../config/index.js";
import { DEFAULT_ALERT_RULES } from "../metrics/rules.js";
import { healthOf, pipelineHealth, sumByName } from "../ui/pipeline.js";
import { breaches, rulesView } from "../ui/queries.js";
import { durationParam, publicDir, UiServer } from "../ui/server.js";

describe("ui settings", () => {
  it("default to this host only, port 4000, no password, live alerts on", () => {
    const config = parseUiConfig({});
    expect(config.host).toBe("127.0.0.1");
    expect(config.port).toBe(4000);
    expect(config.password).toBeUndefined();
    expect(config.liveAlerts).toBe(true);
  });

  it("the CLI takes them from flags and MCPO_UI_* variables, the password from the environment only", () => {
    const resolver = new SettingsResolver({ port: "4100" }, undefined, {
      MCPO_UI_HOST: "0.0.0.0",
      MCPO_UI_PASSWORD: "from-env-password",
    });
    expect(resolver.options(uiConfigSchema)).toMatchObject({
      host: "0.0.0.0",
      port: 4100,
      password: "from-env-password",
    });
    const password = UI_SETTINGS.find((setting) => setting.name === "password");
    expect(password?.secret).toBe(true);
  });

  it("a bad port names the key; password and passwordFile together are refused without showing either", () => {
    expect(() => parseUiConfig({ port: 70_000 })).toThrow(/port/);
    let caught: unknown;
    try {
      new UiServer({ password: "pass-word-123", passwordFile: "/nonexistent/ui-password" });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as Error).message).toMatch(/give either password .* or passwordFile/);
    expect((caught as Error).message).not.toContain("pass-word-123");
  });

  it("README's UI section lists every setting's file key and variable", () => {
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
    const start = readme.indexOf("## Web UI: `mcp-observatory ui`");
    expect(start).toBeGreaterThan(0);
    const section = readme.slice(start, readme.indexOf("\n## ", start + 1));
    for (const setting of UI_SETTINGS) {
      expect(section, setting.key).toContain(`\`${setting.key}\``);
      expect(section, setting.key).toContain(`\`${setting.env ?? ""}\``);
    }
  });
});

describe("ui breaches", () => {
  it("a value past its rule's threshold breaches once the rule's denominator reaches its minimum samples", () => {
    // error_rate_high: > 0.05 from 20 calls on.
    expect(breaches({ calls: 19, error_rate: 0.5 })).toEqual([]);
    expect(breaches({ calls: 20, error_rate: 0.5 })).toEqual(["error_rate_high"]);
    expect(breaches({ calls: 20, error_rate: 0.05 })).toEqual([]);
    // low_confidence_rate_high: > 0.25 over the calls with a confidence, from one.
    expect(breaches({ calls: 10, calls_with_confidence: 0, low_confidence_rate: 0.9 })).toEqual([]);
    expect(breaches({ calls: 10, calls_with_confidence: 1, low_confidence_rate: 0.3 })).toEqual([
      "low_confidence_rate_high",
    ]);
    // latency_p95_high: > 30 s from 20 calls on; a null value is never a breach.
    expect(breaches({ calls: 20, latency_p95_ms: 30_001 })).toEqual(["latency_p95_high"]);
    expect(breaches({ calls: 20, latency_p95_ms: null })).toEqual([]);
  });

  it("the rules the pages draw are the processor's defaults", () => {
    expect(rulesView().map((r) => [r.key, r.threshold])).toEqual(
      DEFAULT_ALERT_RULES.map((r) => [r.key, r.threshold]),
    );
  });
});

describe("ui query parameters", () => {
  it("take durations in ms, s, m, h and d, and refuse others naming the parameter", () => {
    expect(durationParam(undefined, 123, "range")).toBe(123);
    expect(durationParam("90s", 0, "range")).toBe(90_000);
    expect(durationParam("6h", 0, "range")).toBe(6 * 3_600_000);
    expect(durationParam("7d", 0, "range")).toBe(7 * 86_400_000);
    expect(() => durationParam("soon", 0, "range")).toThrow(/range: expected a duration/);
    expect(() => durationParam("40d", 0, "range")).toThrow(/range/);
    expect(() => durationParam("10ms", 0, "bucket")).toThrow(/bucket/);
  });

  it("the pages are found beside the server's source (and, built, in the package's ui/public)", () => {
    expect(readFileSync(`${publicDir()}/index.html`, "utf8")).toContain('src="/app.js"');
  });
});

describe("ui pipeline health", () => {
  const exposition = [
    "# HELP mcpo_processor_consumer_lag Records between the processed position and the partition's end",
    "# TYPE mcpo_processor_consumer_lag gauge",
    'mcpo_processor_consumer_lag{partition="0"} 3',
    'mcpo_processor_consumer_lag{partition="1"} 4',
    "mcpo_processor_late_events_total 2",
    'mcpo_processor_dead_lettered_total{code="DECODE"} 1',
    "mcpo_processor_events_total 1500",
    "mcpo_processor_watermark_seconds NaN",
    "# TYPE mcpo_processor_rejected_events_total counter",
    "not a sample",
  ].join("\n");

  it("sums each metric over its label sets (a declared one without samples is 0), skipping comments, malformed lines and NaN", () => {
    const sums = sumByName(exposition);
    expect(sums.get("mcpo_processor_consumer_lag")).toBe(7);
    expect(sums.get("mcpo_processor_late_events_total")).toBe(2);
    expect(sums.has("mcpo_processor_watermark_seconds")).toBe(false);
    // Declared, no sample yet: 0.
    expect(sums.get("mcpo_processor_rejected_events_total")).toBe(0);
    expect(sums.has("not")).toBe(false);
  });

  it("names the component from its metrics and picks lag, late, dead letters and what it handled", () => {
    expect(healthOf("http://p/metrics", sumByName(exposition))).toEqual({
      url: "http://p/metrics",
      component: "processor",
      up: true,
      lag: 7,
      late: 2,
      deadLettered: 1,
      handled: 1500,
    });
    const sink = healthOf(
      "http://s/metrics",
      sumByName('mcpo_sink_consumer_lag{partition="0"} 0\nmcpo_sink_rows_total{table="spans"} 9'),
    );
    expect(sink).toMatchObject({ component: "sink", lag: 0, late: null, handled: 9 });
  });

  it("reports an endpoint that does not answer as down, with why", async () => {
    const [health] = await pipelineHealth(["http://127.0.0.1:1/metrics"], 2000);
    expect(health).toMatchObject({ up: false, component: null, lag: null });
    expect(health?.error).toBeTruthy();
  });
});
