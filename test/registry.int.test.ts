import { COMPATIBILITY, SchemaRegistry, SchemaType } from "@kafkajs/confluent-schema-registry";
import { describe, expect, it } from "vitest";

import {
  getCompatibility,
  SchemaRegistryError,
  setSubjectCompatibility,
} from "../avro/registry.js";
import { services, uniqueName } from "./support/isolation.js";

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

describe("schema registry (Apicurio ccompat API)", () => {
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

  it("registers into a subject that exists without a compatibility level of its own", async () => {
    const subject = `${uniqueName("pitfall")}-value`;
    // Another client created the subject and set no level for it.
    await postSchemaDirectly(subject, schemaV1);
    const url = services().schemaRegistryUrl;
    const reported = await getCompatibility(url, subject);
    expect(reported).toBe("NONE"); // Apicurio reports NONE here, not the global level

    // The pitfall: the client compares the subject's level with its own and refuses.
    const v2 = {
      ...schemaV1,
      fields: [...schemaV1.fields, { name: "model", type: ["null", "string"], default: null }],
    };
    await expect(
      registry().register(
        { type: SchemaType.AVRO, schema: JSON.stringify(v2) },
        { subject, compatibility: COMPATIBILITY.BACKWARD },
      ),
    ).rejects.toThrow(/Compatibility does not match/);

    // The remedy: set the subject's level explicitly, then registration works.
    await setSubjectCompatibility(url, subject, "BACKWARD");
    expect(await getCompatibility(url, subject)).toBe("BACKWARD");
    const { id } = await registry().register(
      { type: SchemaType.AVRO, schema: JSON.stringify(v2) },
      { subject, compatibility: COMPATIBILITY.BACKWARD },
    );
    expect(id).toBeGreaterThan(0);
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

  it("reports an unknown subject with the registry's 40401 code", async () => {
    const error = await getCompatibility(
      services().schemaRegistryUrl,
      `${uniqueName("missing")}-value`,
    ).then(
      () => undefined,
      (caught: unknown) => caught,
    );
    expect(error).toBeInstanceOf(SchemaRegistryError);
    expect((error as SchemaRegistryError).status).toBe(404);
    expect((error as SchemaRegistryError).registryErrorCode).toBe(40401);
  });
});
