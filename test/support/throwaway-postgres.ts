/**
 * A PostgreSQL server of one test's own (the machine's PostgreSQL server binaries, a temporary
 * data directory, a reserved port), for tests that stop and start the server for real without
 * disturbing the shared one. Runs as the `postgres` OS user when the tests run as root (initdb
 * refuses root).
 *
 * The binaries are found by, in order: `MCPO_PG_BINDIR`; `pg_config --bindir`; `initdb` on the
 * PATH; the Debian layout `/usr/lib/postgresql/<newest version>/bin`. The `postgres` user's uid
 * and gid are looked up (`id -u postgres`, `id -g postgres`), not assumed.
 */
import { execFile } from "node:child_process";
import {
  accessSync,
  chmodSync,
  chownSync,
  constants,
  copyFileSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { promisify } from "node:util";

import { freePort, releasePort } from "./ports.js";

const run = promisify(execFile);

export interface ThrowawayPostgres {
  /** A connection string to its `postgres` database. */
  readonly url: string;
  stop(): Promise<void>;
  start(): Promise<void>;
  dispose(): Promise<void>;
}

const executable = (path: string): boolean => {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
};

/** Where `initdb` and `pg_ctl` are; throws saying everything that was tried when nowhere. */
async function binaries(): Promise<string> {
  const tried: string[] = [];
  const usable = (dir: string): boolean =>
    executable(join(dir, "initdb")) && executable(join(dir, "pg_ctl"));
  const fromEnv = process.env.MCPO_PG_BINDIR;
  if (fromEnv) {
    if (usable(fromEnv)) return fromEnv;
    tried.push(`MCPO_PG_BINDIR=${fromEnv} (no executable initdb and pg_ctl there)`);
  }
  try {
    const { stdout } = await run("pg_config", ["--bindir"]);
    const dir = stdout.trim();
    if (usable(dir)) return dir;
    tried.push(`pg_config --bindir gave ${dir} (no initdb and pg_ctl there: client-only install?)`);
  } catch (error) {
    tried.push(`pg_config --bindir (${(error as Error).message.split("\n")[0]})`);
  }
  const onPath = (process.env.PATH ?? "").split(delimiter).filter((dir) => dir && usable(dir));
  if (onPath[0]) return onPath[0];
  tried.push("initdb and pg_ctl on the PATH (not found)");
  const debian = "/usr/lib/postgresql";
  const versions = existsSync(debian)
    ? readdirSync(debian)
        .filter((name) => usable(join(debian, name, "bin")))
        .sort((a, b) => Number.parseFloat(a) - Number.parseFloat(b))
    : [];
  const newest = versions.at(-1);
  if (newest) return join(debian, newest, "bin");
  tried.push(`${debian}/<version>/bin (none)`);
  throw new Error(
    "A throwaway PostgreSQL needs the PostgreSQL server binaries (initdb, pg_ctl), e.g. the " +
      "postgresql package; set MCPO_PG_BINDIR to their folder if they are elsewhere. Tried: " +
      tried.join("; "),
  );
}

/** The uid and gid of the `postgres` OS user (needed when running as root). */
async function postgresUser(): Promise<{ uid: number; gid: number }> {
  try {
    const uid = Number((await run("id", ["-u", "postgres"])).stdout.trim());
    const gid = Number((await run("id", ["-g", "postgres"])).stdout.trim());
    if (Number.isInteger(uid) && Number.isInteger(gid)) return { uid, gid };
    throw new Error(`id printed uid ${uid}, gid ${gid}`);
  } catch (error) {
    throw new Error(
      "Tests run as root, and initdb refuses root: a throwaway PostgreSQL runs as the `postgres` " +
        `OS user, which was not found (${(error as Error).message.split("\n")[0]}). Create it ` +
        "(useradd --system postgres) or run the tests as a non-root user.",
    );
  }
}

/** TLS for a throwaway server: its certificate and key (PEM files; copied into its folder). */
export interface ThrowawayPostgresTls {
  readonly certFile: string;
  readonly keyFile: string;
}

/**
 * Starts a server of the caller's own. With `tls`, the server speaks TLS with that certificate
 * and refuses connections over TCP without it (`hostnossl … reject`), so a client that connects
 * at all connected over TLS.
 */
export async function startThrowawayPostgres(
  options: { readonly tls?: ThrowawayPostgresTls } = {},
): Promise<ThrowawayPostgres> {
  const bin = await binaries();
  const asRoot = process.getuid?.() === 0;
  const owner = asRoot ? await postgresUser() : undefined;
  const dir = mkdtempSync(join(tmpdir(), "mcpo-pg-"));
  const data = join(dir, "data");
  const logFile = join(dir, "log");
  if (owner) chownSync(dir, owner.uid, owner.gid);
  const as = async (command: string, args: string[]): Promise<void> => {
    if (asRoot)
      await run("runuser", ["-u", "postgres", "--", join(bin, command), ...args], { cwd: dir });
    else await run(join(bin, command), args, { cwd: dir });
  };
  const logTail = (): string => {
    try {
      return readFileSync(logFile, "utf8").split("\n").slice(-15).join("\n");
    } catch {
      return "(no server log)";
    }
  };
  await as("initdb", ["-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]);
  let tlsOptions = "";
  if (options.tls) {
    // The server wants its key private to its own user.
    const cert = join(dir, "server.crt");
    const key = join(dir, "server.key");
    copyFileSync(options.tls.certFile, cert);
    copyFileSync(options.tls.keyFile, key);
    chmodSync(key, 0o600);
    if (owner) for (const file of [cert, key]) chownSync(file, owner.uid, owner.gid);
    const hba = join(data, "pg_hba.conf");
    writeFileSync(
      hba,
      "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
    );
    if (owner) chownSync(hba, owner.uid, owner.gid);
    tlsOptions = ` -c ssl=on -c ssl_cert_file=${cert} -c ssl_key_file=${key}`;
  }
  let port = 0;
  const start = () =>
    as("pg_ctl", [
      "-D",
      data,
      "-l",
      logFile,
      "-w",
      "-o",
      `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off${tlsOptions}`,
      "start",
    ]);
  const stop = () => as("pg_ctl", ["-D", data, "-w", "-m", "fast", "stop"]);
  // The port is reserved (see ports.ts), so it stays ours across stop and start; should something
  // outside the tests hold it anyway, the first start is retried on another port.
  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    try {
      await start();
      break;
    } catch (error) {
      releasePort(port);
      const log = logTail();
      if (attempt < 3 && /could not bind|already in use/i.test(log)) continue;
      rmSync(dir, { recursive: true, force: true });
      throw new Error(
        `the throwaway PostgreSQL did not start on port ${port}: ${(error as Error).message}\n${log}`,
      );
    }
  }
  return {
    url: `postgresql://postgres@127.0.0.1:${port}/postgres`,
    start,
    stop,
    dispose: async () => {
      await stop().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
      releasePort(port);
    },
  };
}
