/**
 * The project's one error family. Every failure the project raises on purpose is an
 * {@link ObservatoryError}: a stable `code` to branch on, whether trying again may succeed
 * (`retriable`), the error that caused it (`cause`) and, where it concerns a record, where in the
 * log it happened (`context`). Its message never holds a secret (see ./redact.ts: URL passwords,
 * secret settings, tokens are `***` from the start, so its stack has none either), and
 * {@link ObservatoryError.toJSON} describes it for logs. {@link redactingLogger} gives any logger
 * the same guarantee. Dependency-free: every part of the project can import it.
 *
 * @module
 */
import { isSecretField, redactSecrets, REDACTED } from "./redact.js";

export {
  forgetSecrets,
  isSecretField,
  isSecretName,
  REDACTED,
  redactSecrets,
  redactUrl,
  rememberSecret,
  rememberSecretsIn,
  secretsIn,
  shownValue,
} from "./redact.js";

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
    // Redacted before the stack is captured: neither the message nor the stack holds a secret.
    super(
      redactSecrets(message),
      options.cause === undefined ? undefined : { cause: options.cause },
    );
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

/** Invalid configuration: names the key (option or environment variable) that was wrong. */
export class ConfigError extends ObservatoryError {
  declare readonly code: "CONFIG_INVALID";
  /** The option or environment variable at fault. */
  readonly key: string;

  constructor(key: string, message: string, options?: { cause?: unknown }) {
    // Never retriable: the same settings fail the same way.
    super("CONFIG_INVALID", `invalid configuration ${key}: ${message}`, {
      ...(options?.cause === undefined ? {} : { cause: options.cause }),
      retriable: false,
    });
    this.name = "ConfigError";
    this.key = key;
  }
}

/**
 * Whether a connection failed the TLS check or met a peer that does not speak TLS: an unknown CA,
 * a wrong name, an expired or self-signed certificate, a plain server on a TLS port. Such a
 * failure stays so: trying again does not help.
 */
export function isTlsFailure(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return (
    typeof code === "string" &&
    (code.startsWith("ERR_SSL_") ||
      code.startsWith("ERR_TLS_") ||
      /CERT|SELF_SIGNED|UNABLE_TO_(VERIFY|GET)/.test(code))
  );
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
 * chain (a few levels). Secrets ({@link redactSecrets}: passwords in connection strings,
 * `password=`, tokens) are replaced by `***`; stacks are left out.
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

/**
 * A log record's fields without secrets: strings through {@link redactSecrets}, the value of a
 * field whose name is a secret's (`password`, `saslPassword`, `token`, …) `***`, errors as
 * {@link describeError} describes them, nested objects and arrays alike (other objects by their
 * own enumerable fields, as JSON would show them).
 */
export function redactFields(value: Readonly<Record<string, unknown>>): Record<string, unknown>;
export function redactFields(value: unknown): unknown;
export function redactFields(value: unknown): unknown {
  return redactValue(value, 0);
}

const MAX_FIELD_DEPTH = 8;

function redactValue(value: unknown, depth: number): unknown {
  if (typeof value === "string") return redactSecrets(value);
  if (typeof value !== "object" || value === null) return value;
  if (value instanceof Error) return describeError(value);
  if (value instanceof Date || ArrayBuffer.isView(value)) return value;
  if (depth >= MAX_FIELD_DEPTH) return "[nested too deep]";
  if (Array.isArray(value)) return value.map((item) => redactValue(item, depth + 1));
  const fields: Record<string, unknown> = {};
  for (const [name, inner] of Object.entries(value))
    fields[name] =
      typeof inner === "string" && isSecretField(name) ? REDACTED : redactValue(inner, depth + 1);
  return fields;
}

/** One method of a logger: a message and optional fields. */
type LogMethod = (message: string, context?: Readonly<Record<string, unknown>>) => void;

const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal"] as const;
const REDACTING = Symbol("mcpo.redacting");

/**
 * A logger that passes every message through {@link redactSecrets} and every record's fields
 * through {@link redactFields} before the given one sees them (its other members stay as they
 * are). The project wraps every logger it is given, its own and injected ones, in this.
 */
export function redactingLogger<L extends { warn: LogMethod; error: LogMethod }>(logger: L): L {
  if ((logger as { [REDACTING]?: true })[REDACTING] === true) return logger;
  const wrapped = Object.create(logger) as Record<string, unknown>;
  for (const level of LOG_LEVELS) {
    const method = (logger as Record<string, unknown>)[level];
    if (typeof method !== "function") continue;
    // Defined, not assigned: a frozen logger's members are read-only on the prototype.
    Object.defineProperty(wrapped, level, {
      value: (message: string, context?: Readonly<Record<string, unknown>>): void => {
        const text = redactSecrets(message);
        if (context === undefined) (method as LogMethod).call(logger, text);
        else (method as LogMethod).call(logger, text, redactFields(context));
      },
      enumerable: true,
    });
  }
  Object.defineProperty(wrapped, REDACTING, { value: true });
  return wrapped as L;
}
