/**
 * PostgreSQL's errors sorted in one place, by SQLSTATE (see PostgreSQL's "Appendix A. Error
 * Codes"), for the writers of spans, rollups and alerts (the sink and the PostgresExporter):
 *
 * - `transient`: the connection or the server's state at that moment — trying the same write again
 *   later succeeds. Class 08 (connection exception) and node-postgres's connection errors that
 *   carry no SQLSTATE (a refused or reset socket, "Connection terminated…", a pool that timed out
 *   connecting); 57P01..57P03 (the server shutting down or starting) and 57014 (a statement
 *   cancelled: statement_timeout or a cancel request); 40001 and 40P01 (serialization failure,
 *   deadlock); 55P03 (a lock not available in time); classes 53 (insufficient resources) and 58
 *   (system errors).
 * - `record`: what the rows hold — the same rows fail the same way whenever they are written, so
 *   the batch is bisected to find them (`writeIsolating` in isolate.ts). Class 21 (a row touched twice by
 *   one statement), 22 (data exceptions: 22021 a NUL or bad UTF-8, 22P05 \u0000 in jsonb or a
 *   character the database's encoding lacks, 22008 a datetime out of range, 22003 a number out of
 *   range…), 23 (integrity constraint violations) and 54 (program limits: 54000 an index row over
 *   the btree limit, or a batch too big for a statement).
 * - `other`: everything else — the schema (a table missing: not migrated), permissions, a
 *   read-only server, an error of the program itself. Not the rows' fault, so not isolated; the
 *   writers retry it like a transient one (nothing is lost while an operator fixes the cause).
 *
 * @module
 */

/** How a failed write is handled: retried, bisected to the refused rows, or neither. */
export type PgErrorKind = "transient" | "record" | "other";

/** Why PostgreSQL refused a record: its SQLSTATE and the server's message. */
export interface RecordRejection {
  readonly sqlstate: string;
  readonly message: string;
}

/** Node's socket error codes that mean the connection (not the query) failed. */
const CONNECTION_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "EHOSTDOWN",
  "ENETUNREACH",
  "ENETDOWN",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/** node-postgres's errors about the connection, which carry no code. */
const CONNECTION_MESSAGES = [
  /^Connection terminated/,
  /^timeout exceeded when trying to connect/,
  /^Client has encountered a connection error and is not queryable/,
  /^Client was closed and is not queryable/,
  /^Query read timeout/,
  /^Connection closed/i,
];

/** SQLSTATEs (exact) whose failure is the moment's. */
const TRANSIENT_STATES = new Set(["57P01", "57P02", "57P03", "57014", "40001", "40P01", "55P03"]);
/** SQLSTATE classes (first two characters) whose failure is the moment's. */
const TRANSIENT_CLASSES = new Set(["08", "53", "58"]);
/** SQLSTATE classes whose failure is the rows'. */
const RECORD_CLASSES = new Set(["21", "22", "23", "54"]);

const SQLSTATE = /^[0-9A-Z]{5}$/;
const MAX_CAUSE_DEPTH = 5;

/** The error and its causes, outermost first (a few levels). */
function chain(error: unknown): unknown[] {
  const errors: unknown[] = [];
  let current: unknown = error;
  while (current !== undefined && current !== null && errors.length <= MAX_CAUSE_DEPTH) {
    errors.push(current);
    current = current instanceof Error ? current.cause : undefined;
  }
  return errors;
}

/** An error the server sent (node-postgres's DatabaseError: a SQLSTATE and a severity). */
function serverState(error: unknown): string | undefined {
  if (!(error instanceof Error)) return undefined;
  const { code, severity } = error as { code?: unknown; severity?: unknown };
  return typeof code === "string" && SQLSTATE.test(code) && typeof severity === "string"
    ? code
    : undefined;
}

function isConnectionError(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const { code } = error as { code?: unknown };
  if (typeof code === "string" && CONNECTION_CODES.has(code)) return true;
  return CONNECTION_MESSAGES.some((pattern) => pattern.test(error.message));
}

/**
 * The SQLSTATE of an error the server sent (looking through `cause`s), or undefined for any other
 * error (a socket's `ECONNRESET` is not a SQLSTATE).
 */
export function sqlstateOf(error: unknown): string | undefined {
  for (const current of chain(error)) {
    if (isConnectionError(current)) return undefined;
    const state = serverState(current);
    if (state !== undefined) return state;
  }
  return undefined;
}

/** How a failed write is handled (see the module's description), looking through `cause`s. */
export function classifyPgError(error: unknown): PgErrorKind {
  for (const current of chain(error)) {
    if (isConnectionError(current)) return "transient";
    const state = serverState(current);
    if (state === undefined) continue;
    const errorClass = state.slice(0, 2);
    if (TRANSIENT_STATES.has(state) || TRANSIENT_CLASSES.has(errorClass)) return "transient";
    if (RECORD_CLASSES.has(errorClass)) return "record";
    return "other";
  }
  return "other";
}

/** Whether trying the same write again may succeed: a `transient` error. */
export function isTransientPgError(error: unknown): boolean {
  return classifyPgError(error) === "transient";
}

/**
 * The SQLSTATE and the server's message when `error` says the rows are at fault (a `record`
 * error), undefined otherwise. The message is the server's primary one: its detail (which may
 * quote the row's values) is left out.
 */
export function recordRejection(error: unknown): RecordRejection | undefined {
  if (classifyPgError(error) !== "record") return undefined;
  for (const current of chain(error)) {
    const sqlstate = serverState(current);
    if (sqlstate !== undefined && current instanceof Error)
      return { sqlstate, message: current.message };
  }
  return undefined;
}
