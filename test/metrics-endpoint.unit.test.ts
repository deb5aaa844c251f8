/**
 * The metrics and health endpoint listens where `metricsHost` says: loopback by default (this
 * host only), every interface when told. Answers are checked over the machine's own addresses:
 * 127.0.0.1, and a non-loopback address of the machine when it has one.
 */
import { networkInterfaces } from "node:os";

import { Counter, Registry } from "prom-client";
import { afterEach, describe, expect, it } from "vitest";

import { PROCESSOR_SETTINGS, settingOf, SettingsResolver, SINK_SETTINGS } from "../cli/config.js";
import {
  ConfigError,
  parseProcessorConfig,
  parseSinkConfig,
  processorConfigSchema,
  sinkConfigSchema,
} from "../config/index.js";
import { localUrl, serveMetrics, type MetricsServer } from "../ops/index.js";

const ENDPOINTS = {
  brokers: "127.0.0.1:9092",
  schemaRegistryUrl: "http://127.0.0.1:8081/apis/ccompat/v7",
} as const;

/** A non-loopback address of this machine, of the family asked for, if it has one. */
function machineAddress(family: "IPv4" | "IPv6"): string | undefined {
  for (const entries of Object.values(networkInterfaces()))
    for (const entry of entries ?? [])
      // Link-local IPv6 addresses need a zone: left out.
      if (!entry.internal && entry.family === family && !entry.address.startsWith("fe80:"))
        return entry.address;
  return undefined;
}

function url(address: string, port: number, path = "/metrics"): string {
  return `http://${address.includes(":") ? `[${address}]` : address}:${port}${path}`;
}

/** The error code a fetch failed with (ECONNREFUSED …), or "answered". */
async function outcome(target: string): Promise<string> {
  try {
    const response = await fetch(target, { signal: AbortSignal.timeout(5000) });
    await response.text();
    return `answered ${response.status}`;
  } catch (error) {
    const cause = (error as { cause?: { code?: string } }).cause;
    return cause?.code ?? (error as Error).name;
  }
}

function registryWithOneMetric(): Registry {
  const registry = new Registry();
  new Counter({ name: "mcpo_test_endpoint_total", help: "test", registers: [registry] }).inc(3);
  return registry;
}

describe("serveMetrics", () => {
  const servers: MetricsServer[] = [];
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((server) => server.close()));
  });

  it("by default listens on loopback only: 127.0.0.1 answers; the machine's other address refuses", async () => {
    const server = await serveMetrics(registryWithOneMetric(), 0);
    servers.push(server);
    expect(server.address).toBe("127.0.0.1");
    expect(server.url).toBe(`http://127.0.0.1:${server.port}/metrics`);
    const response = await fetch(server.url);
    expect(response.status).toBe(200);
    expect(await response.text()).toContain("mcpo_test_endpoint_total 3");
    const other = machineAddress("IPv4");
    if (other !== undefined) expect(await outcome(url(other, server.port))).toBe("ECONNREFUSED");
  });

  it("with host 0.0.0.0 answers on a non-loopback address of the machine (or, without one, reports 0.0.0.0), and on loopback", async () => {
    const server = await serveMetrics(registryWithOneMetric(), 0, "0.0.0.0", () => ({
      alive: true,
      ready: false,
      detail: { state: "starting" },
    }));
    servers.push(server);
    expect(server.address).toBe("0.0.0.0");
    // A wildcard address is reached through loopback from this host.
    expect(server.url).toBe(`http://127.0.0.1:${server.port}/metrics`);
    expect(await outcome(server.url)).toBe("answered 200");
    const other = machineAddress("IPv4");
    if (other !== undefined) {
      const metrics = await fetch(url(other, server.port));
      expect(await metrics.text()).toContain("mcpo_test_endpoint_total 3");
      expect(await outcome(url(other, server.port, "/healthz"))).toBe("answered 200");
      expect(await outcome(url(other, server.port, "/readyz"))).toBe("answered 503");
    }
  });

  it("with an IPv6 host: ::1 answers on ::1 only; :: on the machine's IPv6 address too (when the machine has IPv6)", async () => {
    let loopback: MetricsServer;
    try {
      loopback = await serveMetrics(registryWithOneMetric(), 0, "::1");
    } catch (error) {
      // No IPv6 on this machine: nothing to check.
      expect((error as NodeJS.ErrnoException).code).toMatch(/EADDRNOTAVAIL|EAFNOSUPPORT/);
      return;
    }
    servers.push(loopback);
    expect(loopback.address).toBe("::1");
    expect(loopback.url).toBe(`http://[::1]:${loopback.port}/metrics`);
    expect(await outcome(loopback.url)).toBe("answered 200");
    expect(await outcome(url("127.0.0.1", loopback.port))).toBe("ECONNREFUSED");
    const every = await serveMetrics(registryWithOneMetric(), 0, "::");
    servers.push(every);
    expect(every.address).toBe("::");
    expect(every.url).toBe(`http://[::1]:${every.port}/metrics`);
    const other = machineAddress("IPv6");
    if (other !== undefined) expect(await outcome(url(other, every.port))).toBe("answered 200");
  });

  it("localUrl: wildcards through loopback, IPv6 in brackets, names as they are", () => {
    expect(localUrl("0.0.0.0", 9464)).toBe("http://127.0.0.1:9464/metrics");
    expect(localUrl("::", 9464)).toBe("http://[::1]:9464/metrics");
    expect(localUrl("fd00::2", 1, "/healthz")).toBe("http://[fd00::2]:1/healthz");
    expect(localUrl("10.1.2.3", 9465)).toBe("http://10.1.2.3:9465/metrics");
    expect(localUrl("localhost", 9465)).toBe("http://localhost:9465/metrics");
  });
});

describe("the metricsHost setting", () => {
  it("is the processor's and the sink's, default 127.0.0.1, flag --metrics-host, variable MCPO_METRICS_HOST", () => {
    expect(parseProcessorConfig(ENDPOINTS).metricsHost).toBe("127.0.0.1");
    expect(parseSinkConfig(ENDPOINTS).metricsHost).toBe("127.0.0.1");
    expect(parseProcessorConfig({ ...ENDPOINTS, metricsHost: "0.0.0.0" }).metricsHost).toBe(
      "0.0.0.0",
    );
    expect(parseSinkConfig({ ...ENDPOINTS, metricsHost: "::" }).metricsHost).toBe("::");
    for (const [schema, section] of [
      [processorConfigSchema, "processor"],
      [sinkConfigSchema, "sink"],
    ] as const) {
      const setting = settingOf(schema, "metricsHost");
      expect([setting.flag, setting.env, setting.key, setting.kind, setting.defaultValue]).toEqual([
        "--metrics-host",
        "MCPO_METRICS_HOST",
        `${section}.metricsHost`,
        "string",
        "127.0.0.1",
      ]);
    }
    expect(PROCESSOR_SETTINGS.some((setting) => setting.name === "metricsHost")).toBe(true);
    expect(SINK_SETTINGS.some((setting) => setting.name === "metricsHost")).toBe(true);
  });

  it("comes from the flag, then the variable, then the file, else the default", () => {
    const resolve = (
      flags: Record<string, unknown>,
      env: Record<string, string>,
      file?: Record<string, unknown>,
    ) =>
      new SettingsResolver(
        flags,
        file === undefined ? undefined : { path: "mcpo.yaml", data: file },
        env,
      ).options(sinkConfigSchema).metricsHost;
    expect(resolve({}, {})).toBe("127.0.0.1");
    expect(resolve({}, {}, { sink: { metricsHost: "10.0.0.5" } })).toBe("10.0.0.5");
    expect(resolve({}, { MCPO_METRICS_HOST: "0.0.0.0" }, { sink: { metricsHost: "x" } })).toBe(
      "0.0.0.0",
    );
    expect(resolve({ metricsHost: "::1" }, { MCPO_METRICS_HOST: "0.0.0.0" })).toBe("::1");
  });

  it("refuses what is not a host (a URL, a space, empty), naming the key", () => {
    for (const value of ["http://0.0.0.0", "0.0.0.0 ", ""]) {
      let error: unknown;
      try {
        parseProcessorConfig({ ...ENDPOINTS, metricsHost: value });
      } catch (caught) {
        error = caught;
      }
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as ConfigError).key).toBe("metricsHost");
      expect((error as ConfigError).message).toContain("expected a host name or IP address");
    }
  });
});
