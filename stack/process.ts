import { execFile, spawn } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { promisify } from "node:util";

import { ObservatoryError } from "../config/errors.js";

const execFileAsync = promisify(execFile);

/** The codes of {@link StackError}. */
export type StackErrorCode =
  | "JAVA_MISSING"
  | "JAVA_TOO_OLD"
  | "MAVEN_MISSING"
  | "DOWNLOAD_FAILED"
  | "PORT_TAKEN"
  | "START_FAILED"
  | "START_TIMEOUT"
  | "POSTGRES_UNAVAILABLE";

/**
 * The codes worth trying again as they are: a download that failed on the network, a service
 * slow to start, a database not up yet. Anything else needs a change first (install Java, free
 * the port, read the service's log).
 */
const RETRIABLE_STACK_CODES: ReadonlySet<StackErrorCode> = new Set([
  "DOWNLOAD_FAILED",
  "START_TIMEOUT",
  "POSTGRES_UNAVAILABLE",
]);

/** A failure of the local stack, with a code a caller can branch on. */
export class StackError extends ObservatoryError {
  declare readonly code: StackErrorCode;

  constructor(code: StackErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, { ...options, retriable: RETRIABLE_STACK_CODES.has(code) });
    this.name = "StackError";
  }
}

/** A JDK found on this machine. */
export interface Java {
  readonly executable: string;
  readonly major: number;
}

/** Reads the major version from `java -version` (which prints on stderr). */
export async function probeJava(executable: string): Promise<Java | undefined> {
  try {
    const { stderr, stdout } = await execFileAsync(executable, ["-version"], { timeout: 20_000 });
    const match = /version "(\d+)(?:\.(\d+))?/.exec(stderr + stdout);
    if (!match?.[1]) return undefined;
    // Java 8 and older report "1.8.0_x".
    const major = match[1] === "1" ? Number(match[2]) : Number(match[1]);
    return { executable, major };
  } catch {
    return undefined;
  }
}

/**
 * Finds a JDK of at least `minMajor`: the given home first, then `candidates` (homes), newest first.
 *
 * @throws {StackError} `JAVA_MISSING` or `JAVA_TOO_OLD`, saying what was found and what to set.
 */
export async function findJava(options: {
  purpose: string;
  minMajor: number;
  home: string | undefined;
  homeKey: string;
  searchJvmFolder: boolean;
}): Promise<Java> {
  const tried: string[] = [];
  const candidates: string[] = [];
  if (options.home !== undefined) candidates.push(join(options.home, "bin", "java"));
  candidates.push("java");
  if (options.searchJvmFolder && existsSync("/usr/lib/jvm")) {
    for (const entry of readdirSync("/usr/lib/jvm").sort().reverse()) {
      const executable = join("/usr/lib/jvm", entry, "bin", "java");
      if (existsSync(executable)) candidates.push(executable);
    }
  }
  let best: Java | undefined;
  for (const executable of candidates) {
    const java = await probeJava(executable);
    tried.push(java ? `${executable} (Java ${java.major})` : `${executable} (not found)`);
    if (java && java.major >= options.minMajor) {
      if (options.home !== undefined || !options.searchJvmFolder) return java;
      if (!best || java.major > best.major) best = java;
    }
  }
  if (best) return best;
  const found = tried.filter((line) => !line.endsWith("(not found)"));
  if (found.length === 0)
    throw new StackError(
      "JAVA_MISSING",
      `${options.purpose} needs Java ${options.minMajor} or newer, and no java was found. ` +
        `Install a JDK (e.g. apt-get install openjdk-17-jdk-headless) or set ${options.homeKey}.`,
    );
  throw new StackError(
    "JAVA_TOO_OLD",
    `${options.purpose} needs Java ${options.minMajor} or newer; found only ${found.join(", ")}. ` +
      `Install one or set ${options.homeKey} to its home.`,
  );
}

/** Whether a TCP port on loopback can be bound now. */
export function portIsFree(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => {
      resolve(false);
    });
    server.listen({ port, host, exclusive: true }, () => {
      server.close(() => {
        resolve(true);
      });
    });
  });
}

/** What `up` records about a process it started, so `down` stops only that process. */
export interface ProcessRecord {
  readonly service: string;
  readonly pid: number;
  /** A string that must appear in the process's command line (guards against pid reuse). */
  readonly marker: string;
  readonly startedAt: string;
  readonly log: string;
}

export function recordPath(stackDir: string, service: string): string {
  return join(stackDir, "run", `${service}.json`);
}

export function readRecord(stackDir: string, service: string): ProcessRecord | undefined {
  const path = recordPath(stackDir, service);
  if (!existsSync(path)) return undefined;
  try {
    const value: unknown = JSON.parse(readFileSync(path, "utf8"));
    if (
      typeof value === "object" &&
      value !== null &&
      "pid" in value &&
      typeof value.pid === "number" &&
      "marker" in value &&
      typeof value.marker === "string"
    )
      return value as ProcessRecord;
  } catch (error) {
    process.emitWarning(`ignoring unreadable pid record ${path}: ${String(error)}`);
  }
  return undefined;
}

export function removeRecord(stackDir: string, service: string): void {
  rmSync(recordPath(stackDir, service), { force: true });
}

/** Whether the recorded process is still alive and is still the one we started. */
export function isRunning(record: ProcessRecord): boolean {
  try {
    process.kill(record.pid, 0);
  } catch {
    return false;
  }
  try {
    const cmdline = readFileSync(`/proc/${record.pid}/cmdline`, "utf8");
    return cmdline.includes(record.marker);
  } catch {
    // No /proc (not Linux): the signal check above is all we have.
    return true;
  }
}

/** Starts a long-running process detached from this one, output appended to `log`. */
export function startDetached(options: {
  stackDir: string;
  service: string;
  command: string;
  args: readonly string[];
  cwd: string;
  log: string;
  marker: string;
  env?: NodeJS.ProcessEnv;
}): ProcessRecord {
  mkdirSync(dirname(options.log), { recursive: true });
  mkdirSync(join(options.stackDir, "run"), { recursive: true });
  const fd = openSync(options.log, "a");
  try {
    const child = spawn(options.command, [...options.args], {
      cwd: options.cwd,
      detached: true,
      stdio: ["ignore", fd, fd],
      env: options.env ?? process.env,
    });
    if (child.pid === undefined)
      throw new StackError(
        "START_FAILED",
        `could not start ${options.service}: ${options.command}`,
      );
    child.unref();
    const record: ProcessRecord = {
      service: options.service,
      pid: child.pid,
      marker: options.marker,
      startedAt: new Date().toISOString(),
      log: options.log,
    };
    writeFileSync(recordPath(options.stackDir, options.service), JSON.stringify(record, null, 2));
    return record;
  } finally {
    closeSync(fd);
  }
}

/** Stops a recorded process: SIGTERM, then SIGKILL after `graceMs`. Resolves once it is gone. */
export async function stopProcess(
  record: ProcessRecord,
  graceMs: number,
): Promise<"stopped" | "killed" | "not-running"> {
  if (!isRunning(record)) return "not-running";
  signal(record.pid, "SIGTERM");
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    if (!isRunning(record)) return "stopped";
    await sleep(200);
  }
  signal(record.pid, "SIGKILL");
  while (isRunning(record)) await sleep(100);
  return "killed";
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ESRCH") throw error;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The last lines of a log file, for error messages. */
export function tail(path: string, lines = 20): string {
  try {
    return readFileSync(path, "utf8")
      .split("\n")
      .slice(-lines - 1)
      .join("\n");
  } catch {
    return "(no log)";
  }
}
