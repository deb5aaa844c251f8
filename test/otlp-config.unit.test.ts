/** The receiver's settings: defaults, errors naming the key, the bearer token kept secret, the README's table. */
import { readFileSync } from "node:fs";

import { describe, expect, it } from "vitest";

import { INGEST_SETTINGS, SettingsResolver } from "../cli/config.js";
import { ConfigError, ingestConfigSchema, parseIngestConfig } from "../config/index.js";
import { OtlpIngest } from "../otlp/ingest.js";

describe("ingest settings", () => {
  it("default to loopback, port 4318 and a 4 MiB body", () => {
    expect(parseIngestConfig({})).toMatchObject({
      host: "127.0.0.1",
      port: 4318,
      maxBodyBytes: 4 * 1024 * 1024,
      requestTimeoutMs: 30_000,
      publishTimeoutMs: 10_000,
      captureContent: false,
    });
  });

  it("name the key that is wrong; a token is never shown", () => {
    expect(() => parseIngestConfig({ port: 70_000 })).toThrow(
      /invalid configuration port: expected a port/,
    );
    expect(() => parseIngestConfig({ host: "bad host!" })).toThrow(/invalid configuration host/);
    let caught: unknown;
    try {
      new OtlpIngest({ bearerToken: "tok-en-123456", bearerTokenFile: "/nonexistent/file" }, {});
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ConfigError);
    expect((caught as Error).message).toMatch(/give either bearerToken .* or bearerTokenFile/);
    expect((caught as Error).message).not.toContain("tok-en-123456");
    expect((caught as Error).message).not.toContain("/nonexistent/file");
  });

  it("the CLI takes them from flags and MCPO_INGEST_* variables (the token from the environment only)", () => {
    const resolver = new SettingsResolver({ port: "4400" }, undefined, {
      MCPO_INGEST_HOST: "0.0.0.0",
      MCPO_INGEST_TOKEN: "from-env-token",
    });
    expect(resolver.options(ingestConfigSchema)).toMatchObject({
      host: "0.0.0.0",
      port: 4400,
      bearerToken: "from-env-token",
    });
    const token = INGEST_SETTINGS.find((setting) => setting.name === "bearerToken");
    expect(token?.secret).toBe(true);
  });

  it("README's ingest table lists every setting's file key and variable", () => {
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
    const start = readme.indexOf("## OpenTelemetry in: `mcp-observatory ingest`");
    const section = readme.slice(start, readme.indexOf("\n## ", start + 1));
    for (const setting of INGEST_SETTINGS) {
      expect(section, setting.key).toContain(`\`${setting.key}\``);
      expect(section, setting.key).toContain(`\`${setting.env ?? ""}\``);
    }
  });
});
