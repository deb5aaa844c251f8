/** Terminal output of the CLI: aligned tables, numbers, a progress line, and how errors end it. */
import { bigintReplacer } from "../avro/bigint.js";
import { ObservatoryError, redactSecrets } from "../config/index.js";
import type { StackErrorCode } from "../stack/process.js";

/** The CLI's exit codes. */
export const EXIT = Object.freeze({
  ok: 0,
  /** A failure, or `replay --verify` found differences. */
  failure: 1,
  /** Bad usage or configuration. */
  usage: 2,
  /** A service (Kafka, the registry, PostgreSQL) did not answer. */
  unreachable: 3,
  interrupted: 130,
} as const);

/** How an error with a known code ends the CLI. */
interface ErrorExit {
  readonly exitCode: number;
  /** Printed before the message with the code, e.g. `stack PORT_TAKEN: …`. */
  readonly label?: string;
}

const STACK_EXIT: ErrorExit = { exitCode: EXIT.failure, label: "stack" };

/**
 * The one table from error codes ({@link ObservatoryError.code}) to exit codes. An error listed
 * here says what to do in its message, so it is printed alone; any other error exits 1 with a
 * hint to run with `--verbose`.
 */
export const ERROR_EXITS: Readonly<Record<string, ErrorExit>> = Object.freeze({
  CONFIG_INVALID: { exitCode: EXIT.usage },
  // The group's state was built with other window settings: a configuration to change.
  STATE_MISMATCH: { exitCode: EXIT.usage },
  // Stored progress belongs to a topic deleted and created again: a flag to give, once.
  TOPIC_REPLACED: { exitCode: EXIT.usage },
  SERVICE_UNREACHABLE: { exitCode: EXIT.unreachable },
  // A service refused who we are or how we talk: credentials, CA or protocol to change.
  SASL_AUTHENTICATION_FAILED: { exitCode: EXIT.usage },
  TLS_HANDSHAKE_FAILED: { exitCode: EXIT.usage },
  SECURITY_MISMATCH: { exitCode: EXIT.usage },
  REGISTRY_AUTHENTICATION_FAILED: { exitCode: EXIT.usage },
  TOPIC_MISSING: { exitCode: EXIT.failure },
  // autoRegisterSchemas false and the schema is not registered: `topics create` to run.
  SCHEMA_NOT_REGISTERED: { exitCode: EXIT.failure },
  ...({
    JAVA_MISSING: STACK_EXIT,
    JAVA_TOO_OLD: STACK_EXIT,
    MAVEN_MISSING: STACK_EXIT,
    DOWNLOAD_FAILED: STACK_EXIT,
    PORT_TAKEN: STACK_EXIT,
    START_FAILED: STACK_EXIT,
    START_TIMEOUT: STACK_EXIT,
    POSTGRES_UNAVAILABLE: { ...STACK_EXIT, exitCode: EXIT.unreachable },
  } satisfies Record<StackErrorCode, ErrorExit>),
});

/**
 * The line the CLI prints for an error that ended a command (without the program's name) and
 * the exit code, from {@link ERROR_EXITS}. The line holds no secret (see `redactSecrets`).
 */
export function failureOf(error: unknown, verbose: boolean): { line: string; exitCode: number } {
  const message = redactSecrets(error instanceof Error ? error.message : String(error));
  const known = error instanceof ObservatoryError ? ERROR_EXITS[error.code] : undefined;
  if (known === undefined)
    return {
      line: `${message}${verbose ? "" : " (run with --verbose for details)"}`,
      exitCode: EXIT.failure,
    };
  const code = (error as ObservatoryError).code;
  return {
    line: known.label === undefined ? message : `${known.label} ${code}: ${message}`,
    exitCode: known.exitCode,
  };
}

/**
 * What the CLI prints for an error that ended a command, after the program's name: its line
 * ({@link failureOf}) and with `verbose` its stack, both without secrets.
 */
export function failureText(error: unknown, verbose: boolean): string {
  const { line } = failureOf(error, verbose);
  const stack = verbose && error instanceof Error ? error.stack : undefined;
  return stack === undefined ? line : `${line}\n${redactSecrets(stack)}`;
}

const GUARDED = Symbol("mcpo.guarded");

/**
 * Makes everything written to a stream (the CLI's stdout and stderr) pass through
 * `redactSecrets` first: the last guard, for output no other rule caught (a library's message, a
 * line printed by code that forgot). Each chunk is redacted on its own; the CLI writes whole lines.
 */
export function guardOutput(stream: NodeJS.WritableStream): void {
  const guarded = stream as NodeJS.WritableStream & { [GUARDED]?: true };
  if (guarded[GUARDED] === true) return;
  const write = stream.write.bind(stream) as (chunk: unknown, ...rest: unknown[]) => boolean;
  const redacting = (chunk: unknown, ...rest: unknown[]): boolean => {
    if (typeof chunk === "string") return write(redactSecrets(chunk), ...rest);
    if (chunk instanceof Uint8Array)
      return write(redactSecrets(Buffer.from(chunk).toString("utf8")), ...rest);
    return write(chunk, ...rest);
  };
  stream.write = redacting;
  Object.defineProperty(stream, GUARDED, { value: true });
}

/**
 * Characters that a terminal acts on instead of showing: C0 controls (ESC starts the sequences
 * that move the cursor, recolour, retitle the window or write the clipboard), DEL, C1 controls
 * (U+009B is a one-character CSI for some terminals), the bidirectional overrides and isolates
 * that reorder what follows them, and the Unicode line and paragraph separators.
 */
const TERMINAL_CONTROLS =
  // eslint-disable-next-line no-control-regex -- finding control characters is the point
  /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/gu;
/** The same, except the line feed: for whole lines of output the CLI itself broke. */
const TERMINAL_CONTROLS_BUT_NEWLINE =
  // eslint-disable-next-line no-control-regex -- finding control characters is the point
  /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/gu;

function escapeControl(char: string): string {
  const code = char.charCodeAt(0);
  return code <= 0xff
    ? `\\x${code.toString(16).padStart(2, "0")}`
    : `\\u${code.toString(16).padStart(4, "0")}`;
}

/**
 * A value for the terminal: every control character (see above), the line feed included, shown
 * as a visible escape (`\x1b`, `\u202e`), so a service, model or rule name a client chose can
 * neither drive the terminal nor forge lines of output.
 */
export function terminalText(value: string): string {
  return value.replace(TERMINAL_CONTROLS, escapeControl);
}

/** {@link terminalText} for output the CLI broke into lines itself: line feeds stay. */
export function terminalLines(text: string): string {
  return text.replace(TERMINAL_CONTROLS_BUT_NEWLINE, escapeControl);
}

/**
 * One line of JSON output: `JSON.stringify`, which escapes C0 controls but leaves C1 controls,
 * bidirectional controls and U+2028/U+2029 as they are, with those escaped too (`\u009b`): the
 * same value for a JSON reader, nothing a terminal acts on. Bigints (a rollup's sums) are
 * decimal strings, exact whatever their size.
 */
export function jsonLine(value: unknown): string {
  return JSON.stringify(value, bigintReplacer).replace(
    /[\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/gu,
    (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/**
 * Renders rows as an aligned text table; numbers right-aligned, null as `-`. Cells pass through
 * {@link terminalText}.
 */
export function table(
  headers: readonly string[],
  rows: readonly (readonly (string | number | null | undefined)[])[],
): string {
  const cells = rows.map((row) =>
    row.map((cell) => (cell === null || cell === undefined ? "-" : terminalText(String(cell)))),
  );
  const numeric = headers.map((_, column) =>
    rows.every((row) => {
      const cell = row[column];
      return (
        cell === null || cell === undefined || typeof cell === "number" || /^-?[\d.,%]+$/.test(cell)
      );
    }),
  );
  const widths = headers.map((header, column) =>
    Math.max(header.length, ...cells.map((row) => row[column]?.length ?? 0)),
  );
  const line = (values: readonly string[]): string =>
    values
      .map((value, column) =>
        numeric[column] ? value.padStart(widths[column] ?? 0) : value.padEnd(widths[column] ?? 0),
      )
      .join("  ")
      .trimEnd();
  return [line(headers), line(widths.map((width) => "-".repeat(width))), ...cells.map(line)].join(
    "\n",
  );
}

/** A rate as a percentage with one decimal, or null. */
export function percent(value: number | null | undefined): string | null {
  return value === null || value === undefined ? null : `${(value * 100).toFixed(1)}%`;
}

/** 12345 → `12,345`. */
export function count(value: number | bigint): string {
  return value.toLocaleString("en-US");
}

/** Seconds as `1h02m`, `3m05s`, `12s`. */
export function clock(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.max(0, Math.round(seconds));
  if (s >= 3600)
    return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

/** Microseconds since the epoch as an ISO time without the date's noise (UTC). */
export function isoMicros(micros: number): string {
  return new Date(Math.floor(micros / 1000)).toISOString();
}

/**
 * Progress of a long job: a bar redrawn in place on a terminal, plain lines every few seconds
 * otherwise (logs, CI). Writes to stderr so stdout stays for results.
 */
export class Progress {
  private lastDraw = 0;
  private drawn = false;

  constructor(
    private readonly label: string,
    private readonly stream: NodeJS.WriteStream = process.stderr,
    private readonly intervalMs = stream.isTTY ? 100 : 2000,
  ) {}

  update(done: number, total: number, elapsedMs: number, force = false): void {
    const now = Date.now();
    if (!force && now - this.lastDraw < this.intervalMs) return;
    this.lastDraw = now;
    const rate = elapsedMs > 0 ? (done / elapsedMs) * 1000 : 0;
    const fraction = total > 0 ? Math.min(1, done / total) : 1;
    const eta = rate > 0 ? (total - done) / rate : Number.POSITIVE_INFINITY;
    const figures = `${count(done)}/${count(total)} ${(fraction * 100).toFixed(1)}%  ${count(Math.round(rate))} events/s  ETA ${clock(eta)}`;
    if (this.stream.isTTY) {
      const width = 30;
      const filled = Math.round(fraction * width);
      this.stream.write(
        `\r${this.label} [${"#".repeat(filled)}${".".repeat(width - filled)}] ${figures}\u001b[K`,
      );
      this.drawn = true;
    } else this.stream.write(`${this.label}: ${figures}\n`);
  }

  /** Ends the bar's line. */
  done(): void {
    if (this.drawn) this.stream.write("\n");
    this.drawn = false;
  }
}
