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
export class SchemaRegistryError extends Error {
  constructor(
    message: string,
    /** HTTP status, or undefined when the registry did not answer. */
    readonly status: number | undefined,
    /** The registry's `error_code` (e.g. 40401 subject not found, 409 incompatible), when given. */
    readonly registryErrorCode: number | undefined,
    /** 5xx and network failures are worth retrying; 4xx are not. */
    readonly retriable: boolean,
    options?: { cause?: unknown },
    /** `SCHEMA_INCOMPATIBLE`: the registry refused a schema as incompatible with the subject. */
    readonly code: "SCHEMA_REGISTRY_ERROR" | "SCHEMA_INCOMPATIBLE" = "SCHEMA_REGISTRY_ERROR",
  ) {
    super(message, options);
    this.name = "SchemaRegistryError";
  }
}

/**
 * Sets a subject's compatibility level explicitly (`PUT /config/{subject}`).
 *
 * Why explicitly: a subject created by another client has no level of its own, and Apicurio's
 * ccompat API then reports `NONE` for it instead of the global level, so a client that checks
 * "the subject's level equals mine" before registering refuses to register. Setting the subject's
 * level first makes registration work whoever created the subject.
 *
 * @param registryUrl base URL of the ccompat API, e.g. `http://127.0.0.1:8081/apis/ccompat/v7`.
 * @throws {SchemaRegistryError} when the registry refuses or does not answer.
 */
export async function setSubjectCompatibility(
  registryUrl: string,
  subject: string,
  level: CompatibilityLevel,
): Promise<void> {
  const path = `/config/${encodeURIComponent(subject)}`;
  try {
    await registryRequest(registryUrl, path, "PUT", { compatibility: level });
  } catch (error) {
    // Apicurio answers 409 ("a rule named COMPATIBILITY already exists") when another client
    // created the subject's rule between its check and its insert; the rule exists now, so a
    // second PUT updates it to our level.
    if (!(error instanceof SchemaRegistryError) || error.status !== 409) throw error;
    await registryRequest(registryUrl, path, "PUT", { compatibility: level });
  }
}

/**
 * Reads a subject's own compatibility level, or the global level when `subject` is undefined.
 *
 * @throws {SchemaRegistryError} (status 404, code 40401) when the subject does not exist.
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

async function registryRequest(
  registryUrl: string,
  path: string,
  method: "GET" | "PUT" | "POST",
  body?: unknown,
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
      response.status >= 500,
    );
  }
  return parsed;
}
