import { redactingLogger } from "../config/errors.js";

/**
 * The logger the library reports its own failures to. The interceptor never throws into the
 * host: what goes wrong inside it is logged here (inject yours, e.g. a pino child logger).
 */
export interface Logger {
  warn(message: string, context?: Readonly<Record<string, unknown>>): void;
  error(message: string, context?: Readonly<Record<string, unknown>>): void;
}

/**
 * Writes one JSON line per message to stderr, without secrets (passwords in URLs, tokens, secret
 * fields: see `redactingLogger`).
 */
export const stderrLogger: Logger = redactingLogger({
  warn(message, context) {
    process.stderr.write(
      `${JSON.stringify({ level: "warn", component: "mcp-observatory", message, ...context })}\n`,
    );
  },
  error(message, context) {
    process.stderr.write(
      `${JSON.stringify({ level: "error", component: "mcp-observatory", message, ...context })}\n`,
    );
  },
} satisfies Logger);

/** Discards everything (for tests and benchmarks). */
export const silentLogger: Logger = {
  warn() {
    /* discarded on purpose */
  },
  error() {
    /* discarded on purpose */
  },
};
