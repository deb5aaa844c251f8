import { request as httpRequest, type IncomingMessage } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";

import { isRetriable, isTlsFailure, ObservatoryError } from "../config/errors.js";
import { retry, type RetryPolicy } from "../config/retry.js";
import {
  registryEndpointOf,
  type RegistryEndpoint,
  type RegistryTarget,
} from "../config/security.js";

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
  registryUrl: RegistryTarget,
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
  registryUrl: RegistryTarget,
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

const REQUEST_TIMEOUT_MS = 10_000;

/** One registry request, retried with {@link retry} while it fails transiently. */
export function registryRequest(
  registry: RegistryTarget,
  path: string,
  method: "GET" | "PUT" | "POST",
  body?: unknown,
  policy: RetryPolicy = REGISTRY_RETRY,
  /** How long one attempt waits for the answer, ms. */
  timeoutMs: number = REQUEST_TIMEOUT_MS,
): Promise<unknown> {
  const endpoint = registryEndpointOf(registry);
  return retry(() => registryAttempt(endpoint, path, method, body, timeoutMs), policy);
}

/** The `Authorization` header of an endpoint's credentials, if it has any. */
export function registryAuthorization(endpoint: RegistryEndpoint): string | undefined {
  const auth = endpoint.auth;
  if (auth === undefined) return undefined;
  return auth.kind === "bearer"
    ? `Bearer ${auth.token}`
    : `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString("base64")}`;
}

/** One HTTPS agent per CA text: keeps connections alive and verifies against that CA. */
const agents = new Map<string, HttpsAgent>();

/** The agent that trusts an endpoint's CA (undefined: the defaults, the system's roots). */
export function registryAgent(endpoint: RegistryEndpoint): HttpsAgent | undefined {
  if (endpoint.ca === undefined || !endpoint.url.startsWith("https:")) return undefined;
  let agent = agents.get(endpoint.ca);
  if (!agent) {
    agent = new HttpsAgent({ ca: endpoint.ca, keepAlive: true });
    agents.set(endpoint.ca, agent);
  }
  return agent;
}

/** A request over node's HTTP(S) client: a custom CA needs an agent, which `fetch` does not take. */
function send(
  endpoint: RegistryEndpoint,
  url: URL,
  method: string,
  payload: string | undefined,
  timeoutMs: number,
): Promise<{ status: number; text: string }> {
  const authorization = registryAuthorization(endpoint);
  const headers: Record<string, string> = {
    "content-type": "application/vnd.schemaregistry.v1+json",
    accept: "application/vnd.schemaregistry.v1+json, application/json",
    ...(authorization === undefined ? {} : { authorization }),
    ...(payload === undefined ? {} : { "content-length": String(Buffer.byteLength(payload)) }),
  };
  const agent = registryAgent(endpoint);
  return new Promise((resolve, reject) => {
    const onResponse = (response: IncomingMessage): void => {
      const chunks: Buffer[] = [];
      response.on("data", (chunk: Buffer) => chunks.push(chunk));
      response.on("error", reject);
      response.on("end", () => {
        resolve({
          status: response.statusCode ?? 0,
          text: Buffer.concat(chunks).toString("utf8"),
        });
      });
    };
    const options = {
      method,
      headers,
      timeout: timeoutMs,
      ...(agent === undefined ? {} : { agent }),
    };
    const request =
      url.protocol === "https:"
        ? httpsRequest(url, options, onResponse)
        : httpRequest(url, options, onResponse);
    request.on("timeout", () => {
      request.destroy(new Error(`no answer within ${timeoutMs} ms`));
    });
    request.on("error", reject);
    request.end(payload);
  });
}

async function registryAttempt(
  endpoint: RegistryEndpoint,
  path: string,
  method: "GET" | "PUT" | "POST",
  body: unknown,
  timeoutMs: number,
): Promise<unknown> {
  const url = `${endpoint.url.replace(/\/+$/, "")}${path}`;
  let response: { status: number; text: string };
  try {
    response = await send(
      endpoint,
      new URL(url),
      method,
      body === undefined ? undefined : JSON.stringify(body),
      timeoutMs,
    );
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new SchemaRegistryError(
      `${method} ${url}: registry did not answer (${code ? `${code}: ` : ""}${(error as Error).message})`,
      undefined,
      undefined,
      // A certificate the CA does not vouch for stays so: no use trying again.
      !isTlsFailure(error),
      { cause: error },
    );
  }
  const text = response.text;
  let parsed: unknown = undefined;
  try {
    parsed = text === "" ? undefined : JSON.parse(text);
  } catch {
    parsed = text;
  }
  if (response.status < 200 || response.status >= 300) {
    const registryCode = (parsed as { error_code?: unknown } | undefined)?.error_code;
    const hint =
      response.status === 401
        ? endpoint.auth === undefined
          ? " (the registry wants credentials: set SCHEMA_REGISTRY_USERNAME and SCHEMA_REGISTRY_PASSWORD, or SCHEMA_REGISTRY_TOKEN)"
          : " (the registry refused the credentials)"
        : response.status === 403
          ? " (these credentials may not do this)"
          : "";
    throw new SchemaRegistryError(
      `${method} ${url}: HTTP ${response.status}${hint} ${text.slice(0, 500)}`,
      response.status,
      typeof registryCode === "number" ? registryCode : undefined,
      retriableStatus(response.status),
    );
  }
  return parsed;
}
