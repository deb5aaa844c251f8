/**
 * What the kill-and-restart tests share: the CLI worker (`processor`, `sink`) as a real child
 * process (`node --import tsx cli/main.ts …`, never through npx), its stdout and stderr in a file
 * per run under `os.tmpdir()`, waits that fail at once when the worker dies by itself, its
 * Prometheus metrics, and SIGKILL by pid. When the test fails, every run's log path and tail are
 * printed; when it passes, the logs are deleted.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { onTestFailed, onTestFinished } from "vitest";

import { REPO_ROOT } from "./cli.js";
import { waitFor } from "./wait.js";

/** How a worker ended. */
export interface WorkerExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** The last `lines` lines of a file ("(empty)" / "(unreadable)" otherwise). */
function tailOf(path: string, lines: number): string {
  try {
    const text = readFileSync(path, "utf8").trimEnd();
    return text === "" ? "(empty)" : text.split("\n").slice(-lines).join("\n");
  } catch (error) {
    return `(unreadable: ${(error as Error).message})`;
  }
}

/** The values of a Prometheus text sample's series of `name` whose labels include every pair in `labels`. */
export function metricSeries(
  text: string,
  name: string,
  labels: Readonly<Record<string, string>> = {},
): number[] {
  const values: number[] = [];
  for (const line of text.split("\n")) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!match || match[1] !== name) continue;
    const given = match[2] ?? "";
    if (Object.entries(labels).every(([key, value]) => given.includes(`${key}="${value}"`)))
      values.push(Number(match[3]));
  }
  return values;
}

/** A labelled metric's values by the value of one label, e.g. a gauge by `partition`. */
export function metricByLabel(text: string, name: string, label: string): Map<string, number> {
  const values = new Map<string, number>();
  for (const line of text.split("\n")) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}\s+(\S+)/.exec(line);
    if (!match || match[1] !== name) continue;
    const value = new RegExp(`(?:^|,)${label}="([^"]*)"`).exec(match[2] ?? "")?.[1];
    if (value !== undefined) values.set(value, Number(match[3]));
  }
  return values;
}

/** One run of a CLI worker. */
export class CliWorker {
  readonly pid: number;
  /** Its stdout and stderr. */
  readonly logPath: string;
  /** Set once it has exited. */
  exit: WorkerExit | undefined;
  readonly exited: Promise<WorkerExit>;
  private readonly child: ChildProcess;
  private killedByTest = false;
  private url: string | undefined;

  constructor(
    readonly label: string,
    args: readonly string[],
    env: NodeJS.ProcessEnv,
    logPath: string,
  ) {
    this.logPath = logPath;
    const fd = openSync(logPath, "a");
    try {
      this.child = spawn(process.execPath, ["--import", "tsx", "cli/main.ts", ...args], {
        cwd: REPO_ROOT,
        env,
        stdio: ["ignore", fd, fd],
      });
    } finally {
      closeSync(fd);
    }
    if (this.child.pid === undefined) throw new Error(`${label}: spawn gave no pid`);
    this.pid = this.child.pid;
    this.exited = new Promise((resolve) => {
      this.child.once("exit", (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
  }

  /** The last lines of its output. */
  tail(lines = 30): string {
    return tailOf(this.logPath, lines);
  }

  /** Throws, with its exit and output, when the worker has exited without the test killing it. */
  assertRunning(what: string): void {
    if (this.exit && !this.killedByTest) throw this.diedError(what);
  }

  private diedError(what: string): Error {
    return new Error(
      `${this.label} (pid ${this.pid}) exited by itself with code ${this.exit?.code ?? "none"}` +
        ` (signal ${this.exit?.signal ?? "none"}) while ${what}; its output (${this.logPath}), last lines:\n` +
        this.tail(),
    );
  }

  /**
   * {@link waitFor}, but failing at once (with the exit code and the output's tail) when the
   * worker exits by itself meanwhile.
   */
  async waitFor<T>(
    what: string,
    probe: () => T | Promise<T>,
    done: (value: T) => boolean,
    options: { timeoutMs?: number; intervalMs?: number } = {},
  ): Promise<T> {
    const result = await waitFor<{ exited: true } | { exited: false; value: T }>(
      `${what} (${this.label}, output in ${this.logPath})`,
      async () => (this.exit ? { exited: true } : { exited: false, value: await probe() }),
      (seen) => seen.exited || done(seen.value),
      options,
    );
    if (result.exited) throw this.diedError(`waiting for ${what}`);
    return result.value;
  }

  /** Sends `signal` to its pid and resolves with how it exited. */
  async kill(signal: NodeJS.Signals): Promise<WorkerExit> {
    this.assertRunning(`about to be sent ${signal}`);
    this.killedByTest = true;
    process.kill(this.pid, signal);
    return this.exited;
  }

  /** Kills it (SIGKILL, by pid) if it still runs; for cleanup. */
  async stop(): Promise<void> {
    if (this.exit) return;
    this.killedByTest = true;
    try {
      process.kill(this.pid, "SIGKILL");
    } catch {
      return; // already gone
    }
    await this.exited;
  }

  /** Its JSON log records so far (lines that are not JSON objects are left out). */
  logRecords(): Record<string, unknown>[] {
    const records: Record<string, unknown>[] = [];
    for (const line of readFileSync(this.logPath, "utf8").split("\n")) {
      if (!line.startsWith("{")) continue;
      try {
        records.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // A line being written, or not JSON.
      }
    }
    return records;
  }

  /** Its metrics endpoint, from the URL its log prints at start (the port is chosen by the OS). */
  async metricsUrl(timeoutMs = 60_000): Promise<string> {
    this.url ??= await this.waitFor(
      "its log to print the metrics endpoint",
      () => /http:\/\/127\.0\.0\.1:\d+\/metrics/.exec(readFileSync(this.logPath, "utf8"))?.[0],
      (url) => url !== undefined,
      { timeoutMs, intervalMs: 100 },
    );
    return this.url ?? "";
  }

  /** Its metrics endpoint's current text. */
  async metricsText(): Promise<string> {
    const url = await this.metricsUrl();
    try {
      const response = await fetch(url);
      if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
      return await response.text();
    } catch (error) {
      // Unreachable because it died? Then say so, with its output, rather than "fetch failed".
      await Promise.race([this.exited, new Promise((resolve) => setTimeout(resolve, 1000))]);
      this.assertRunning(`its metrics were read (${(error as Error).message})`);
      throw error;
    }
  }

  /** One metric from its endpoint, summed over the series whose labels include `labels`. */
  async metric(name: string, labels: Readonly<Record<string, string>> = {}): Promise<number> {
    const series = metricSeries(await this.metricsText(), name, labels);
    if (series.length === 0)
      throw new Error(`${this.label}'s metrics have no ${name} ${JSON.stringify(labels)}`);
    return series.reduce((sum, value) => sum + value, 0);
  }
}

/**
 * The runs of one test's workers: call {@link CliWorkers.forCurrentTest} inside the test; it
 * kills what still runs when the test ends, prints each run's log path and tail if it failed,
 * and deletes the logs if it passed.
 */
export class CliWorkers {
  readonly dir: string;
  readonly runs: CliWorker[] = [];

  private constructor(readonly label: string) {
    this.dir = mkdtempSync(join(tmpdir(), `mcpo-${label}-`));
  }

  static forCurrentTest(label: string): CliWorkers {
    const workers = new CliWorkers(label);
    onTestFailed(() => {
      process.stderr.write(workers.report());
    });
    onTestFinished(async (context) => {
      await workers.stopAll();
      if (context.task.result?.state !== "fail")
        rmSync(workers.dir, { recursive: true, force: true });
    });
    return workers;
  }

  /** Starts run n+1 of `mcp-observatory <args>`, output to `<dir>/run-<n>.log`. */
  start(args: readonly string[], env: NodeJS.ProcessEnv): CliWorker {
    const run = this.runs.length + 1;
    const worker = new CliWorker(
      `${this.label} run ${run}`,
      args,
      env,
      join(this.dir, `run-${run}.log`),
    );
    this.runs.push(worker);
    return worker;
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.runs.map((run) => run.stop()));
  }

  /** Every run: its log path, how it ended, and its last lines. */
  report(lines = 25): string {
    return (
      this.runs
        .map(
          (run) =>
            `--- ${run.label}, pid ${run.pid}, ${
              run.exit
                ? `exited (code ${run.exit.code ?? "none"}, signal ${run.exit.signal ?? "none"})`
                : "still running"
            }, output in ${run.logPath}; last ${lines} lines:\n${run.tail(lines)}\n`,
        )
        .join("") || `--- ${this.label}: no worker was started\n`
    );
  }
}
