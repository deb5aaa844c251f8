/**
 * A PostgreSQL server of one test's own (the machine's PostgreSQL binaries, a temporary data
 * directory, a free port), for tests that stop and start the server for real without disturbing
 * the shared one. Runs as the `postgres` OS user when the tests run as root (initdb refuses root).
 */
import { execFile } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

import { freePort } from "./ports.js";

const run = promisify(execFile);

export interface ThrowawayPostgres {
  /** A connection string to its `postgres` database. */
  readonly url: string;
  stop(): Promise<void>;
  start(): Promise<void>;
  dispose(): Promise<void>;
}

function binaries(): string {
  const root = "/usr/lib/postgresql";
  const version = existsSync(root) ? readdirSync(root).sort().at(-1) : undefined;
  if (!version) throw new Error("no PostgreSQL server binaries under /usr/lib/postgresql");
  return join(root, version, "bin");
}

export async function startThrowawayPostgres(): Promise<ThrowawayPostgres> {
  const bin = binaries();
  const dir = mkdtempSync(join(tmpdir(), "mcpo-pg-"));
  const data = join(dir, "data");
  const port = await freePort();
  const asRoot = process.getuid?.() === 0;
  if (asRoot) chownSync(dir, 101, 104);
  const as = async (command: string, args: string[]): Promise<void> => {
    if (asRoot)
      await run("runuser", ["-u", "postgres", "--", join(bin, command), ...args], { cwd: dir });
    else await run(join(bin, command), args, { cwd: dir });
  };
  await as("initdb", ["-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]);
  const start = () =>
    as("pg_ctl", [
      "-D",
      data,
      "-l",
      join(dir, "log"),
      "-w",
      "-o",
      `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`,
      "start",
    ]);
  const stop = () => as("pg_ctl", ["-D", data, "-w", "-m", "fast", "stop"]);
  await start();
  return {
    url: `postgresql://postgres@127.0.0.1:${port}/postgres`,
    start,
    stop,
    dispose: async () => {
      await stop().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
