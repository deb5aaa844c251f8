/**
 * Which schema registry answers at a Confluent-compatible URL, so tests assert behaviour that is
 * specific to one registry only when that registry is the one answering (the README lets users
 * bring their own Confluent registry).
 *
 * - Apicurio Registry serves its own API next to the ccompat one: `<base>/apis/ccompat/v7` has a
 *   sibling `<base>/apis/registry/v3/system/info` (v2 on older releases) naming the product.
 * - Confluent Schema Registry answers its root resource, `GET /`, with an empty JSON object `{}`.
 * - Anything else (Karapace, Redpanda, …) is `other`: only the common behaviour is asserted.
 */
import { services } from "./isolation.js";

export type RegistryKind = "apicurio" | "confluent" | "other";

export interface RegistryIdentity {
  readonly kind: RegistryKind;
  /** What the registry says it is, e.g. `Apicurio Registry (SQL) 3.3.3`, or how it was recognised. */
  readonly description: string;
}

async function getJson(url: string): Promise<{ status: number; body: unknown } | undefined> {
  try {
    const response = await fetch(url, {
      headers: { accept: "application/json" },
      redirect: "manual",
      signal: AbortSignal.timeout(5000),
    });
    const text = await response.text();
    try {
      return { status: response.status, body: JSON.parse(text) as unknown };
    } catch {
      return { status: response.status, body: undefined };
    }
  } catch {
    return undefined;
  }
}

/**
 * Asks the registry at `registryUrl` (the ccompat base URL the tests use) what it is.
 *
 * @throws when nothing answers at `registryUrl` at all.
 */
export async function detectRegistryKind(registryUrl: string): Promise<RegistryIdentity> {
  const base = registryUrl.replace(/\/+$/, "");
  const apicurioRoot = /^(.*)\/apis\/ccompat\/v\d+$/.exec(base)?.[1];
  if (apicurioRoot !== undefined)
    for (const version of ["v3", "v2"]) {
      const info = await getJson(`${apicurioRoot}/apis/registry/${version}/system/info`);
      const body = info?.body as { name?: unknown; version?: unknown } | undefined;
      if (info?.status === 200 && typeof body?.name === "string" && /apicurio/i.test(body.name))
        return {
          kind: "apicurio",
          description:
            `${body.name} ${typeof body.version === "string" ? body.version : ""}`.trim(),
        };
    }
  const root = await getJson(`${base}/`);
  if (root === undefined) throw new Error(`no schema registry answers at ${registryUrl}`);
  if (
    root.status === 200 &&
    typeof root.body === "object" &&
    root.body !== null &&
    !Array.isArray(root.body) &&
    Object.keys(root.body).length === 0
  )
    return { kind: "confluent", description: "Confluent Schema Registry (GET / answers {})" };
  return {
    kind: "other",
    description: `a Confluent-compatible registry (GET / answered HTTP ${root.status})`,
  };
}

let cached: Promise<RegistryIdentity> | undefined;

/** The kind of the registry the tests use (asked once per test file, and logged). */
export function testRegistry(): Promise<RegistryIdentity> {
  cached ??= detectRegistryKind(services().schemaRegistryUrl).then((identity) => {
    process.stderr.write(`[registry] ${identity.kind}: ${identity.description}\n`);
    return identity;
  });
  return cached;
}
