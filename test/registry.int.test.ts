import { COMPATIBILITY, SchemaRegistry, SchemaType } from "@kafkajs/confluent-schema-registry";
import { createServer, type Server } from "node:http";

import { afterEach, describe, expect, it } from "vitest";

import {
  getCompatibility,
  SchemaRegistryError,
  setSubjectCompatibility,
} from "../avro/registry.js";
import { services, uniqueName } from "./support/isolation.js";
import { detectRegistryKind, testRegistry } from "./support/registry-kind.js";

const schemaV1 = {
  type: "record",
  name: "SmokeEvent",
  namespace: "io.mcpobservatory.test",
  fields: [
    { name: "service", type: "string" },
    { name: "tokens", type: "long" },
  ],
};

function registry(): SchemaRegistry {
  return new SchemaRegistry({ host: services().schemaRegistryUrl });
}

async function postSchemaDirectly(subject: string, schema: object): Promise<number> {
  const response = await fetch(
    `${services().schemaRegistryUrl}/subjects/${encodeURIComponent(subject)}/versions`,
    {
      method: "POST",
      headers: { "content-type": "application/vnd.schemaregistry.v1+json" },
      body: JSON.stringify({ schema: JSON.stringify(schema) }),
    },
  );
  expect(response.status).toBe(200);
  return ((await response.json()) as { id: number }).id;
}

describe("schema registry (Confluent-compatible API)", () => {
  it("registers an Avro schema, encodes in Confluent wire format and decodes back", async () => {
    const subject = `${uniqueName("smoke")}-value`;
    const client = registry();
    await setSubjectCompatibility(services().schemaRegistryUrl, subject, "BACKWARD");
    const { id } = await client.register(
      { type: SchemaType.AVRO, schema: JSON.stringify(schemaV1) },
      { subject, compatibility: COMPATIBILITY.BACKWARD },
    );
    expect(id).toBeGreaterThan(0);

    const payload = { service: "example-mcp", tokens: 1234 };
    const encoded = await client.encode(id, payload);
    expect(encoded[0]).toBe(0); // magic byte
    expect(encoded.readInt32BE(1)).toBe(id); // 4-byte schema id

    // A fresh client knows nothing cached: decoding must fetch the schema by id.
    const decoded: unknown = await registry().decode(encoded);
    expect(decoded).toEqual(payload);
  });

  it("a subject created without a level of its own: Apicurio reports NONE and the client refuses to register, Confluent answers 404/40408 and the client registers; setting the level makes registration work on both", async () => {
    const { kind } = await testRegistry();
    const subject = `${uniqueName("pitfall")}-value`;
    // Another client created the subject and set no level for it.
    await postSchemaDirectly(subject, schemaV1);
    const url = services().schemaRegistryUrl;
    const reported = await getCompatibility(url, subject).then(
      (level) => ({ level }),
      (caught: unknown) => ({ error: caught }),
    );
    const v2 = {
      ...schemaV1,
      fields: [...schemaV1.fields, { name: "model", type: ["null", "string"], default: null }],
    };
    const registerV2 = (): Promise<{ id: number }> =>
      registry().register(
        { type: SchemaType.AVRO, schema: JSON.stringify(v2) },
        { subject, compatibility: COMPATIBILITY.BACKWARD },
      );
    if (kind === "apicurio") {
      // Apicurio reports NONE here, not the global level; the client compares the subject's
      // level with its own and refuses: the pitfall setSubjectCompatibility exists for.
      expect(reported).toEqual({ level: "NONE" });
      await expect(registerV2()).rejects.toThrow(/Compatibility does not match/);
    } else if (kind === "confluent") {
      // Confluent documents 404 with error code 40408 ("does not have subject-level
      // compatibility configured"); the client takes a 404 as a first registration and goes on.
      const error = "error" in reported ? reported.error : reported.level;
      expect(error).toBeInstanceOf(SchemaRegistryError);
      const { status, registryErrorCode } = error as SchemaRegistryError;
      expect([status, registryErrorCode]).toEqual([404, 40408]);
      expect((await registerV2()).id).toBeGreaterThan(0);
    }

    // The remedy, on every registry: set the subject's level explicitly, then registration works.
    await setSubjectCompatibility(url, subject, "BACKWARD");
    expect(await getCompatibility(url, subject)).toBe("BACKWARD");
    const { id } = await registerV2();
    expect(id).toBeGreaterThan(0);
    const latest = (await fetch(
      `${url}/subjects/${encodeURIComponent(subject)}/versions/latest`,
    ).then((response) => response.json())) as { id: number; schema: string };
    expect(latest.id).toBe(id);
    expect(JSON.parse(latest.schema)).toMatchObject({ fields: v2.fields });
  });

  it("refuses a BACKWARD-incompatible change once the level is set", async () => {
    const subject = `${uniqueName("incompat")}-value`;
    const url = services().schemaRegistryUrl;
    await postSchemaDirectly(subject, schemaV1);
    await setSubjectCompatibility(url, subject, "BACKWARD");
    // A new required field without a default cannot read old records.
    const breaking = {
      ...schemaV1,
      fields: [...schemaV1.fields, { name: "required_new", type: "string" }],
    };
    const error = await registry()
      .register(
        { type: SchemaType.AVRO, schema: JSON.stringify(breaking) },
        { subject, compatibility: COMPATIBILITY.BACKWARD },
      )
      .then(
        () => undefined,
        (caught: unknown) => caught,
      );
    expect(error).toBeInstanceOf(Error);
    expect((error as { status?: number }).status).toBe(409);
  });

  it("reports the level of an unknown subject as a 404 SchemaRegistryError with the registry's code (Apicurio 40401, Confluent 40408)", async () => {
    const { kind } = await testRegistry();
    const error = await getCompatibility(
      services().schemaRegistryUrl,
      `${uniqueName("missing")}-value`,
    ).then(
      () => undefined,
      (caught: unknown) => caught,
    );
    expect(error).toBeInstanceOf(SchemaRegistryError);
    expect((error as SchemaRegistryError).status).toBe(404);
    expect((error as SchemaRegistryError).retriable).toBe(false);
    const expectedCode = { apicurio: 40401, confluent: 40408, other: undefined }[kind];
    if (expectedCode !== undefined)
      expect((error as SchemaRegistryError).registryErrorCode).toBe(expectedCode);
  });
});

describe("which registry answers (test/support/registry-kind.ts)", () => {
  const servers: Server[] = [];
  afterEach(async () => {
    for (const server of servers.splice(0))
      await new Promise<void>((resolve) => {
        server.close(() => {
          resolve();
        });
        server.closeAllConnections();
      });
  });

  /** A local HTTP server answering every request with `status` and `body` (a stand-in for a registry's root resource, to test the detection alone). */
  async function standIn(status: number, body: string): Promise<string> {
    const server = createServer((_request, response) => {
      response.writeHead(status, { "content-type": "application/json" });
      response.end(body);
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const address = server.address();
    if (typeof address !== "object" || address === null) throw new Error("no address");
    return `http://127.0.0.1:${address.port}`;
  }

  it("recognises the test stack's registry: Apicurio when its system/info names Apicurio", async () => {
    const url = services().schemaRegistryUrl;
    const root = url.replace(/\/apis\/ccompat\/v\d+\/?$/, "");
    const info = await fetch(`${root}/apis/registry/v3/system/info`).then(
      async (response) =>
        response.ok ? ((await response.json()) as { name?: string; version?: string }) : undefined,
      () => undefined,
    );
    const identity = await detectRegistryKind(url);
    if (info?.name !== undefined && /apicurio/i.test(info.name)) {
      expect(identity.kind).toBe("apicurio");
      expect(identity.description).toBe(`${info.name} ${info.version ?? ""}`.trim());
    } else expect(identity.kind).not.toBe("apicurio");
    expect(await testRegistry()).toEqual(identity);
  });

  it("calls a registry whose GET / answers {} Confluent, one answering otherwise other, and throws when nothing answers", async () => {
    expect((await detectRegistryKind(await standIn(200, "{}"))).kind).toBe("confluent");
    expect((await detectRegistryKind(await standIn(404, '{"error_code":404}'))).kind).toBe("other");
    // A ccompat-looking path on a server that is not Apicurio is not taken for Apicurio.
    const notApicurio = await standIn(200, '{"name":"Something Else"}');
    expect((await detectRegistryKind(`${notApicurio}/apis/ccompat/v7`)).kind).toBe("other");
    const closed = await standIn(200, "{}");
    const server = servers.pop();
    await new Promise<void>((resolve) => {
      server?.close(() => {
        resolve();
      });
    });
    await expect(detectRegistryKind(closed)).rejects.toThrow(/no schema registry answers/);
  });
});
