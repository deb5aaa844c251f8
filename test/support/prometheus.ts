/**
 * A real Prometheus server for a test (the `prometheus` binary: Debian's package, which .ci/run
 * installs): its own temporary folder for the configuration and the TSDB, a free loopback port,
 * scraping the given targets; queried over its HTTP API; stopped by its PID, its folder removed.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { freePort, releasePort } from "./ports.js";
import { waitFor } from "./wait.js";

/** Where the binary is looked for (`PROMETHEUS_BIN` overrides). */
export const PROMETHEUS_BIN = process.env.PROMETHEUS_BIN ?? "/usr/bin/prometheus";

export interface ScrapeJob {
  readonly job: string;
  /** host:port of a /metrics endpoint. */
  readonly target: string;
}

/** One series of a range query. */
export interface RangeSeries {
  readonly metric: Readonly<Record<string, string>>;
  readonly values: readonly [number, string][];
}

export interface PrometheusServer {
  readonly url: string;
  readonly pid: number;
  readonly scrapeIntervalMs: number;
  /** `/api/v1/query_range`; throws with Prometheus's error for a bad expression. */
  queryRange(expr: string, fromMs: number, toMs: number, stepMs: number): Promise<RangeSeries[]>;
  /** Names of every metric the server has samples or metadata of. */
  metricNames(): Promise<string[]>;
  /** The targets' last scrape health, by job. */
  targets(): Promise<{ job: string; health: string; lastScrape: string }[]>;
  /** SIGTERM to its PID, waits for the exit, removes its folder. */
  stop(): Promise<void>;
}

interface ApiResponse<T> {
  status: "success" | "error";
  data?: T;
  error?: string;
  errorType?: string;
}

/** Starts Prometheus scraping `jobs` every `scrapeIntervalMs`; resolves once it is ready. */
export async function startPrometheus(
  jobs: readonly ScrapeJob[],
  scrapeIntervalMs = 1000,
): Promise<PrometheusServer> {
  const dir = mkdtempSync(join(tmpdir(), "mcpo-prometheus-"));
  const port = await freePort();
  const interval = `${scrapeIntervalMs / 1000}s`;
  const config = [
    "global:",
    `  scrape_interval: ${interval}`,
    `  evaluation_interval: ${interval}`,
    "scrape_configs:",
    ...jobs.flatMap(({ job, target }) => [
      `  - job_name: ${JSON.stringify(job)}`,
      `    scrape_interval: ${interval}`,
      `    scrape_timeout: ${interval}`,
      "    static_configs:",
      `      - targets: [${JSON.stringify(target)}]`,
    ]),
    "",
  ].join("\n");
  writeFileSync(join(dir, "prometheus.yml"), config);
  let log = "";
  const child = spawn(
    PROMETHEUS_BIN,
    [
      `--config.file=${join(dir, "prometheus.yml")}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--log.level=warn",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const keep = (chunk: Buffer): void => {
    log = (log + chunk.toString("utf8")).slice(-8000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => {
      resolve();
    });
  });
  const spawnError = new Promise<never>((_, reject) => {
    child.once("error", (error) => {
      reject(new Error(`cannot start ${PROMETHEUS_BIN}: ${error.message}`, { cause: error }));
    });
  });
  const pid = child.pid;
  const url = `http://127.0.0.1:${port}`;
  const stop = async (): Promise<void> => {
    if (pid !== undefined && child.exitCode === null && child.signalCode === null)
      process.kill(pid, "SIGTERM");
    if (pid !== undefined) await exited;
    releasePort(port);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await Promise.race([
      spawnError,
      waitFor(
        `Prometheus ready at ${url}`,
        async () => {
          if (child.exitCode !== null) throw new Error(`Prometheus exited: ${log}`);
          return (await fetch(`${url}/-/ready`)).status;
        },
        (status) => status === 200,
        { timeoutMs: 30_000, intervalMs: 200 },
      ),
    ]);
  } catch (error) {
    await stop();
    throw error;
  }
  if (pid === undefined) throw new Error("Prometheus has no PID");

  async function api<T>(path: string, params: Record<string, string> = {}): Promise<T> {
    const response = await fetch(`${url}${path}?${new URLSearchParams(params).toString()}`);
    const body = (await response.json()) as ApiResponse<T>;
    if (body.status !== "success" || body.data === undefined)
      throw new Error(
        `Prometheus ${path}: ${body.errorType ?? ""} ${body.error ?? response.status}`,
      );
    return body.data;
  }

  return {
    url,
    pid,
    scrapeIntervalMs,
    async queryRange(expr, fromMs, toMs, stepMs) {
      const data = await api<{ resultType: string; result: RangeSeries[] }>("/api/v1/query_range", {
        query: expr,
        start: String(fromMs / 1000),
        end: String(toMs / 1000),
        step: String(stepMs / 1000),
      });
      if (data.resultType !== "matrix")
        throw new Error(`query_range of ${expr} gave a ${data.resultType}, not a matrix`);
      return data.result;
    },
    async metricNames() {
      const names = await api<string[]>("/api/v1/label/__name__/values");
      const metadata = await api<Record<string, unknown>>("/api/v1/metadata");
      return [...new Set([...names, ...Object.keys(metadata)])].sort();
    },
    async targets() {
      const data = await api<{
        activeTargets: { labels: Record<string, string>; health: string; lastScrape: string }[];
      }>("/api/v1/targets");
      return data.activeTargets.map((target) => ({
        job: target.labels.job ?? "",
        health: target.health,
        lastScrape: target.lastScrape,
      }));
    },
    stop,
  };
}
