import { isRetriable, ObservatoryError } from "../config/errors.js";
import { retry, type RetryPolicy } from "../config/retry.js";

/** Compatibility levels of a Confluent-compatible schema registry. */
export type CompatibilityLevel =
  | "BACKWARD"
  | "BACKWARD_TRANSITIVE"
  | "FORWARD"
  | "FORWARD_TRANSITIVE"
  | "FULL"
  | "FULL_TRANSITIVE"
  | "NONE";

/** A registry call that failed, with the HTTP status and the registry's own error code. */
export class SchemaRegistryError extends ObservatoryError {
  /** `SCHEMA_INCOMPATIBLE`: the registry refused a schema as incompatible with the subject. */
  declare readonly code: "SCHEMA_REGISTRY_ERROR" | "SCHEMA_INCOMPATIBLE";

  /**
   * @param retriable worth trying again: network failures, 5xx, 408 and 429 (see
   *   {@link retriableStatus}); other 4xx are not.
   */
  constructor(
    message: string,
    /** HTTP status, or undefined when the registry did not answer. */
    readonly status: number | undefined,
    /** The registry's `error_code` (e.g. 40401 subject not found, 409 incompatible), when given. */
    readonly registryErrorCode: number | undefined,
    retriable: boolean,
    options?: { cause?: unknown },
    code: "SCHEMA_REGISTRY_ERROR" | "SCHEMA_INCOMPATIBLE" = "SCHEMA_REGISTRY_ERROR",
  ) {
    super(code, message, { ...options, retriable });
    this.name = "SchemaRegistryError";
  }
}

/**
 * Whether a registry answer (or none: `undefined`) is worth trying again: no answer, a server
 * error (5xx), a request timeout (408) or too many requests (429).
 */
export function retriableStatus(status: number | undefined): boolean {
  return status === undefined || status >= 500 || status === 408 || status === 429;
}

/**
 * How the registry calls here retry a registry that did not answer or answered with a transient
 * status: three attempts within about a third of a second, so a registry restarting is ridden
 * out and one that is down is reported quickly (callers such as the exporter retry on their own).
 */
const REGISTRY_RETRY: RetryPolicy = { maxAttempts: 3, baseDelayMs: 100, maxDelayMs: 1000 };

/**
 * Sets a subject's compatibility level explicitly (`PUT /config/{subject}`).
 *
 * Why explicitly: a subject created by another client has no level of its own, and Apicurio's
 * ccompat API then reports `NONE` for it instead of the global level, so a client that checks
 * "the subject's level equals mine" before registering refuses to register. Setting the subject's
 * level first makes registration work whoever created the subject.
 *
 * @param registryUrl base URL of the ccompat API, e.g. `http://127.0.0.1:8081/apis/ccompat/v7`.
 * @throws {SchemaRegistryError} when the registry refuses.
 * @throws {RetryExhaustedError} when the registry did not answer, or kept answering 5xx, 408, 429
 *   or 409, three times; its cause is the last {@link SchemaRegistryError}.
 */
export async function setSubjectCompatibility(
  registryUrl: string,
  subject: string,
  level: CompatibilityLevel,
): Promise<void> {
  const path = `/config/${encodeURIComponent(subject)}`;
  await registryRequest(
    registryUrl,
    path,
    "PUT",
    { compatibility: level },
    {
      ...REGISTRY_RETRY,
      // Apicurio answers 409 ("a rule named COMPATIBILITY already exists") when another client
      // created the subject's rule between its check and its insert; the rule exists now, so the
      // next PUT updates it to our level.
      shouldRetry: (error) =>
        isRetriable(error) || (error instanceof SchemaRegistryError && error.status === 409),
    },
  );
}

/**
 * Reads a subject's own compatibility level, or the global level when `subject` is undefined.
 *
 * @throws {SchemaRegistryError} (status 404, code 40401) when the subject does not exist.
 * @throws {RetryExhaustedError} when the registry did not answer (or answered 5xx, 408, 429)
 *   three times; its cause is the last {@link SchemaRegistryError}.
 */
export async function getCompatibility(
  registryUrl: string,
  subject?: string,
): Promise<CompatibilityLevel> {
  const path = subject === undefined ? "/config" : `/config/${encodeURIComponent(subject)}`;
  const body = await registryRequest(registryUrl, path, "GET");
  const level = (body as { compatibilityLevel?: unknown } | null)?.compatibilityLevel;
  if (typeof level !== "string")
    throw new SchemaRegistryError(
      `registry answered ${path} without compatibilityLevel`,
      200,
      undefined,
      false,
    );
  return level as CompatibilityLevel;
}

/** One registry request, retried with {@link retry} while it fails transiently. */
function registryRequest(
  registryUrl: string,
  path: string,
  method: "GET" | "PUT" | "POST",
  body?: unknown,
  policy: RetryPolicy = REGISTRY_RETRY,
): Promise<unknown> {
  return retry(() => registryAttempt(registryUrl, path, method, body), policy);
}

async function registryAttempt(
  registryUrl: string,
  path: string,
  method: "GET" | "PUT" | "POST",
  body: unknown,
): Promise<unknown> {
  const url = `${registryUrl.replace(/\/+$/, "")}${path}`;
  let response: Response;
  try {
    response = await fetch(url, {
      method,
      headers: {
        "content-type": "application/vnd.schemaregistry.v1+json",
        accept: "application/vnd.schemaregistry.v1+json, application/json",
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(10_000),
    });
  } catch (error) {
    throw new SchemaRegistryError(
      `${method} ${url}: registry did not answer (${(error as Error).message})`,
      undefined,
      undefined,
      true,
      { cause: error },
    );
  }
  const text = await response.text();
  let parsed: unknown = undefined;
  try {
    parsed = text === "" ? undefined : JSON.parse(text);
  } catch {
    parsed = text;
  }
  if (!response.ok) {
    const registryCode = (parsed as { error_code?: unknown } | undefined)?.error_code;
    throw new SchemaRegistryError(
      `${method} ${url}: HTTP ${response.status} ${text}`,
      response.status,
      typeof registryCode === "number" ? registryCode : undefined,
      retriableStatus(response.status),
    );
  }
  return parsed;
}
