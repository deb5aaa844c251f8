/**
 * Loopback ports for the servers tests start themselves (a private broker, a throwaway PostgreSQL,
 * an address where nothing listens), chosen so that nothing else takes one between the choice and
 * the server's bind, even seconds later and across a stop and start of that server:
 *
 * - ports come from below the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`,
 *   32768–60999 by default), so the kernel never hands one out as the local port of an outgoing
 *   connection (kafkajs, pg, the JVMs all open many) nor for a `listen(0)`;
 * - each is reserved across processes by a lock file created exclusively (`O_EXCL`) under
 *   `os.tmpdir()/mcpo-test-ports/`, holding the reserving process's pid: every test worker and
 *   every helper that calls {@link freePort} skips a reserved port; a reservation whose process is
 *   gone is taken over, and this process's reservations are removed when it exits;
 * - before it is returned, the port is bound for a moment (on `127.0.0.1` and on the wildcard), so
 *   a port some unrelated process holds is skipped.
 *
 * The old way (listen on port 0, close, return the number) returned an ephemeral port that any
 * outgoing connection could be given before the JVM bound it.
 */
import { randomInt } from "node:crypto";
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const LOCK_DIR = join(tmpdir(), "mcpo-test-ports");
/** Below this the well-known ports and the shared stack's defaults (9092, 8081, 5432, …) live. */
const LOWEST = 15_000;
const held = new Set<number>();
let exitHookInstalled = false;

/** The ports this machine does not hand out on its own: outside its ephemeral range. */
function candidateRange(): { low: number; high: number } {
  let ephemeral = { low: 32_768, high: 60_999 };
  try {
    const [low, high] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8")
      .trim()
      .split(/\s+/)
      .map(Number);
    if (low !== undefined && high !== undefined && Number.isInteger(low) && Number.isInteger(high))
      ephemeral = { low, high };
  } catch {
    // Not Linux: keep the IANA-like default above.
  }
  if (ephemeral.low - 1 - LOWEST >= 1000) return { low: LOWEST, high: ephemeral.low - 1 };
  if (65_535 - ephemeral.high >= 1000) return { low: ephemeral.high + 1, high: 65_535 };
  throw new Error(
    `freePort: the ephemeral port range ${ephemeral.low}-${ephemeral.high} leaves no room for ` +
      `test ports (need 1000 ports between ${LOWEST} and 65535 outside it)`,
  );
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Creates the port's lock file for this process; false when a live process holds it. */
function reserve(port: number): boolean {
  const path = join(LOCK_DIR, `${port}.lock`);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, "wx");
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      let owner = Number.NaN;
      try {
        owner = Number(readFileSync(path, "utf8"));
      } catch {
        // Removed meanwhile, or being written: judge again on the next attempt.
      }
      // A lock being written has no pid yet; leave it to its writer.
      if (!Number.isInteger(owner) || owner <= 0 || alive(owner)) return false;
      rmSync(path, { force: true });
    }
  }
  return false;
}

function unreserve(port: number): void {
  held.delete(port);
  rmSync(join(LOCK_DIR, `${port}.lock`), { force: true });
}

/** Resolves true when `port` can be bound on `host` right now (then frees it again). */
function bindable(port: number, host: string | undefined): Promise<boolean> {
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

/**
 * A loopback port nothing listens on, reserved for this process until it exits or
 * {@link releasePort}: other callers of `freePort`, in this or any other process, never get it,
 * and the kernel never gives it to a connection.
 */
export async function freePort(): Promise<number> {
  mkdirSync(LOCK_DIR, { recursive: true });
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once("exit", () => {
      for (const port of [...held]) unreserve(port);
    });
  }
  const { low, high } = candidateRange();
  const size = high - low + 1;
  const first = randomInt(0, size);
  for (let i = 0; i < size; i++) {
    const port = low + ((first + i) % size);
    if (held.has(port) || !reserve(port)) continue;
    held.add(port);
    if ((await bindable(port, "127.0.0.1")) && (await bindable(port, undefined))) return port;
    unreserve(port);
  }
  throw new Error(`freePort: no free, unreserved port in ${low}-${high} (locks in ${LOCK_DIR})`);
}

/** Gives a port from {@link freePort} back (optional: reservations end with the process). */
export function releasePort(port: number): void {
  if (held.has(port)) unreserve(port);
}
