/**
 * The project's one error family. Every failure the project raises on purpose is an
 * {@link ObservatoryError}: a stable `code` to branch on, whether trying again may succeed
 * (`retriable`), the error that caused it (`cause`) and, where it concerns a record, where in the
 * log it happened (`context`). {@link ObservatoryError.toJSON} describes it for logs without
 * secrets. Dependency-free: every part of the project can import it.
 *
 * @module
 */

/** Where in the log an error happened. Every field is optional. */
export interface ErrorContext {
  readonly topic?: string;
  readonly partition?: number;
  /** Offsets are 64-bit: a decimal string. */
  readonly offset?: string;
  /** The record's key, e.g. the service. */
  readonly key?: string;
}

/** Options of {@link ObservatoryError}'s constructor. */
export interface ObservatoryErrorOptions extends ErrorOptions {
  /** Whether trying the same thing again may succeed (default false). */
  readonly retriable?: boolean;
  readonly context?: ErrorContext;
}

/** A plain description of an error for logs: JSON-safe, secrets redacted, no stack. */
export interface ErrorDescription {
  readonly name: string;
  readonly message: string;
  readonly code?: string;
  readonly retriable?: boolean;
  readonly context?: ErrorContext;
  readonly cause?: ErrorDescription;
}

/** Base of every error the project raises on purpose. */
export class ObservatoryError extends Error {
  /** A stable code to branch on, e.g. `CONFIG_INVALID`. */
  readonly code: string;
  /** Whether trying the same thing again may succeed (a broker down, a timeout). */
  readonly retriable: boolean;
  /** Where in the log it happened, when it concerns a record or a partition. */
  readonly context: ErrorContext | undefined;

  constructor(code: string, message: string, options: ObservatoryErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "ObservatoryError";
    this.code = code;
    this.retriable = options.retriable ?? false;
    this.context = options.context;
  }

  /** The error as a plain object for structured logs (also what `JSON.stringify` gives). */
  toJSON(): ErrorDescription {
    return describeError(this);
  }
}

/** Whether an error says that trying again may succeed: its `retriable` is `true`. */
export function isRetriable(error: unknown): boolean {
  return (
    typeof error === "object" &&
    error !== null &&
    (error as { retriable?: unknown }).retriable === true
  );
}

const MAX_CAUSE_DEPTH = 5;

/**
 * Describes any thrown value for logs: name, code, message, retriable, context and the cause
 * chain (a few levels). Passwords in connection strings (`scheme://user:secret@host`,
 * `password=secret`) are replaced by `***`; stacks are left out.
 */
export function describeError(error: unknown): ErrorDescription {
  return describeAt(error, 0);
}

function describeAt(error: unknown, depth: number): ErrorDescription {
  if (!(error instanceof Error))
    return { name: typeof error, message: redactSecrets(String(error)) };
  const fields = error as { code?: unknown; retriable?: unknown };
  const description: {
    -readonly [K in keyof ErrorDescription]: ErrorDescription[K];
  } = { name: error.name, message: redactSecrets(error.message) };
  if (typeof fields.code === "string") description.code = fields.code;
  if (typeof fields.retriable === "boolean") description.retriable = fields.retriable;
  if (error instanceof ObservatoryError && error.context !== undefined)
    description.context = {
      ...error.context,
      ...(error.context.key === undefined ? {} : { key: redactSecrets(error.context.key) }),
    };
  if (error.cause !== undefined && error.cause !== error && depth < MAX_CAUSE_DEPTH)
    description.cause = describeAt(error.cause, depth + 1);
  return description;
}

/** Replaces the password of URLs with credentials and of `password=` settings by `***`. */
export function redactSecrets(text: string): string {
  return text
    .replace(/(\b[a-z][a-z0-9+.-]*:\/\/[^\s:/@]*:)[^\s/@]+@/gi, "$1***@")
    .replace(/\b(password|passwd|pwd)(\s*=\s*)('[^']*'|"[^"]*"|[^\s&;'"]+)/gi, "$1$2***");
}
