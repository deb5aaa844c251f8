/**
 * Operational plumbing shared by the long-running processes (processor, sink, ingest, alerts
 * forward, export otlp, ui): JSON logs through pino, a Prometheus `/metrics` endpoint, and the
 * entry-point boilerplate (environment integers, run until SIGINT/SIGTERM, exit codes).
 *
 * @module
 */
import { createServer, type Server } from "node:http";
import { pathToFileURL } from "node:url";

import { pino } from "pino";
import type { Registry } from "prom-client";

import { ConfigError, redactingLogger } from "../config/index.js";

/** The small logging interface the processes take (inject yours, or use {@link pinoLogger}). */
export interface OpsLogger {
  info(message: string, context?: Readonly<Record<string, unknown>>): void;
  warn(message: string, context?: Readonly<Record<string, unknown>>): void;
  error(message: string, context?: Readonly<Record<string, unknown>>): void;
}

/** JSON lines on stdout through pino, tagged with the component; secrets redacted (`redactingLogger`). */
export function pinoLogger(
  component: string,
  level: string = process.env.LOG_LEVEL ?? "info",
): OpsLogger {
  const logger = pino({ level, base: { component } });
  return redactingLogger({
    info: (message, context) => {
      logger.info(context ?? {}, message);
    },
    warn: (message, context) => {
      logger.warn(context ?? {}, message);
    },
    error: (message, context) => {
      logger.error(context ?? {}, message);
    },
  } satisfies OpsLogger);
}

/** A running `/metrics` endpoint. */
export interface MetricsServer {
  readonly port: number;
  /** The address it listens on, as the socket reports it (`127.0.0.1`, `0.0.0.0`, `::` …). */
  readonly address: string;
  /** Its `/metrics` URL as this host reaches it (a wildcard address through loopback). */
  readonly url: string;
  close(): Promise<void>;
}

/**
 * The URL of `path` on a server listening on `address` and `port`, as this host reaches it: a
 * wildcard address (`0.0.0.0`, `::`) through loopback, an IPv6 address in brackets.
 */
export function localUrl(address: string, port: number, path = "/metrics"): string {
  const host =
    address === "0.0.0.0" || address === ""
      ? "127.0.0.1"
      : address === "::"
        ? "[::1]"
        : address.includes(":")
          ? `[${address}]`
          : address;
  return `http://${host}:${port}${path}`;
}

/** What `/healthz` and `/readyz` answer: alive (the process works), ready (it does its job). */
export interface Health {
  readonly alive: boolean;
  readonly ready: boolean;
  /** Why, as plain fields (state, partitions, the failure). */
  readonly detail: Readonly<Record<string, unknown>>;
}

/**
 * Serves a registry's metrics at `/metrics` on `host` (default 127.0.0.1, loopback: this host
 * only; port 0: any free port), and with `health`, `/healthz` (200 while alive) and `/readyz`
 * (200 while ready), else 503, with the detail as JSON. Nothing is authenticated: bind to an
 * address others can reach only behind a proxy that authenticates, or on a private network.
 */
export async function serveMetrics(
  registry: Registry,
  port: number,
  host = "127.0.0.1",
  health?: () => Health,
): Promise<MetricsServer> {
  const server: Server = createServer((request, response) => {
    if (health && (request.url === "/healthz" || request.url === "/readyz")) {
      const now = health();
      const ok = request.url === "/healthz" ? now.alive : now.ready;
      response
        .writeHead(ok ? 200 : 503, { "content-type": "application/json" })
        .end(JSON.stringify({ ok, ...now.detail }));
      return;
    }
    if (request.url !== "/metrics") {
      response.writeHead(404).end();
      return;
    }
    registry.metrics().then(
      (body) => {
        response.writeHead(200, { "content-type": registry.contentType }).end(body);
      },
      (error: unknown) => {
        response.writeHead(500).end(String(error));
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, resolve);
  });
  const bound = server.address();
  const actualPort = typeof bound === "object" && bound !== null ? bound.port : port;
  const address = typeof bound === "object" && bound !== null ? bound.address : host;
  return {
    port: actualPort,
    address,
    url: localUrl(address, actualPort),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => {
          resolve();
        });
      }),
  };
}

/**
 * An integer from the environment, or undefined when unset.
 *
 * @throws {ConfigError} naming the variable when it is not an integer.
 */
export function intFromEnv(name: string): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return undefined;
  const value = Number(raw);
  if (!Number.isInteger(value))
    throw new ConfigError(name, `expected an integer (got ${JSON.stringify(raw)})`);
  return value;
}

/** Resolves at the first SIGINT or SIGTERM. */
export function untilSignal(): Promise<void> {
  return new Promise((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
}

/**
 * Runs `main` when `moduleUrl` is the script Node was started with, and exits with its code:
 * 2 for a configuration error (the message names the key), 1 for any other failure.
 */
export function runAsScript(
  moduleUrl: string,
  component: string,
  main: () => Promise<number>,
): void {
  if (process.argv[1] === undefined || moduleUrl !== pathToFileURL(process.argv[1]).href) return;
  main().then(
    (code) => {
      process.exit(code);
    },
    (error: unknown) => {
      const message = error instanceof Error ? error.message : String(error);
      process.stderr.write(`${JSON.stringify({ level: "error", component, message })}\n`);
      process.exit(error instanceof ConfigError ? 2 : 1);
    },
  );
}
