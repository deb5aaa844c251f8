import { createServer, type Server } from "node:http";

import { describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { defineContract, METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import {
  METRIC_ROLLUP_SCHEMA,
  MODEL_CALL_EVENT_SCHEMA,
  type AvroSchema,
  type MetricRollup,
  type ModelCallEvent,
} from "../avro/generated.js";
import { getCompatibility, SchemaRegistryError } from "../avro/registry.js";
import { rollupEvents } from "../metrics/index.js";
import { sampleEvent } from "./support/events.js";
import { services, uniqueName } from "./support/isolation.js";

type Field = { name: string; type: unknown; default?: unknown };
const v1Fields = (MODEL_CALL_EVENT_SCHEMA as { fields: Field[] }).fields;

function withFields(fields: Field[]): AvroSchema {
  return { ...MODEL_CALL_EVENT_SCHEMA, fields };
}

/** v2: one more optional field, with a default, as the contract evolves. */
type ModelCallEventV2 = ModelCallEvent & { readonly reasoning_tokens: number | null };
const V2 = defineContract<ModelCallEventV2>(
  withFields([...v1Fields, { name: "reasoning_tokens", type: ["null", "long"], default: null }]),
);

async function register<T>(
  contract: Parameters<typeof AvroCodec.register<T>>[0],
  subject: string,
  compatibility?: "BACKWARD",
) {
  return AvroCodec.register(contract, {
    registryUrl: services().schemaRegistryUrl,
    subject,
    ...(compatibility === undefined ? {} : { compatibility }),
  });
}

describe("schema evolution against the real registry", () => {
  it("registers a v2 with an added optional field under a BACKWARD subject as its second version, with a new id", async () => {
    const subject = valueSubject(uniqueName("evo-backward"));
    const v1 = await register(MODEL_CALL_EVENT, subject, "BACKWARD");
    const v2 = await register(V2, subject, "BACKWARD");
    expect(v2.schemaId).not.toBe(v1.schemaId);
    const url = services().schemaRegistryUrl;
    expect(await getCompatibility(url, subject)).toBe("BACKWARD");
    const response = await fetch(`${url}/subjects/${encodeURIComponent(subject)}/versions`);
    const versions: unknown = await response.json();
    expect(versions).toEqual([1, 2]);
  });

  it("lets a v1 reader decode v2 records and a v2 reader decode v1 records", async () => {
    const subject = valueSubject(uniqueName("evo-full"));
    const v1 = await register(MODEL_CALL_EVENT, subject);
    const v2 = await register(V2, subject);

    const newer: ModelCallEventV2 = { ...sampleEvent(), reasoning_tokens: 1234 };
    const readByV1 = await v1.decode(v2.encode(newer));
    const { reasoning_tokens: _ignored, ...projected } = newer;
    expect(readByV1).toEqual({ ok: true, value: projected, schemaId: v2.schemaId });

    const older = sampleEvent();
    const readByV2 = await v2.decode(v1.encode(older));
    expect(readByV2).toEqual({
      ok: true,
      value: { ...older, reasoning_tokens: null },
      schemaId: v1.schemaId,
    });
  });

  it("refuses removing a required field and changing a type, and says so clearly", async () => {
    const subject = valueSubject(uniqueName("evo-breaking"));
    await register(MODEL_CALL_EVENT, subject);

    const removed = defineContract(
      withFields(v1Fields.filter((field) => field.name !== "service_instance")),
    );
    const retyped = defineContract(
      withFields(
        v1Fields.map((field) =>
          field.name === "retries" ? { ...field, type: "string", default: "0" } : field,
        ),
      ),
    );
    for (const [what, contract] of [
      ["removing service_instance", removed],
      ["retries int → string", retyped],
    ] as const) {
      const error = await register(contract, subject).then(
        () => undefined,
        (caught: unknown) => caught,
      );
      expect(error, what).toBeInstanceOf(SchemaRegistryError);
      const registryError = error as SchemaRegistryError;
      expect(registryError.code, what).toBe("SCHEMA_INCOMPATIBLE");
      expect(registryError.status, what).toBe(409);
      expect(registryError.retriable, what).toBe(false);
      expect(registryError.message, what).toContain(
        `ModelCallEvent schema is not FULL_TRANSITIVE compatible with the earlier versions of subject ${subject}`,
      );
    }
  });
});

describe("MetricRollup's revision field", () => {
  /** MetricRollup as registered before revisions: the same record without `revision`. */
  type MetricRollupV1 = Omit<MetricRollup, "revision">;
  const BEFORE_REVISIONS = defineContract<MetricRollupV1>({
    ...METRIC_ROLLUP_SCHEMA,
    fields: (METRIC_ROLLUP_SCHEMA as { fields: Field[] }).fields.filter(
      (field) => field.name !== "revision",
    ),
  });

  it("is a compatible evolution: registered after the schema without it, old records read as revision 0 and new ones by old readers", async () => {
    expect(
      (METRIC_ROLLUP_SCHEMA as { fields: Field[] }).fields.map((field) => field.name),
    ).toContain("revision");
    const subject = valueSubject(uniqueName("evo-revision"));
    // The subject's compatibility is the codec's default, FULL_TRANSITIVE, as the services use.
    const before = await register(BEFORE_REVISIONS, subject);
    const now = await register(METRIC_ROLLUP, subject);
    expect(now.schemaId).not.toBe(before.schemaId);
    expect(await getCompatibility(services().schemaRegistryUrl, subject)).toBe("FULL_TRANSITIVE");

    const [rollup] = rollupEvents([sampleEvent()], 60_000_000);
    if (!rollup) throw new Error("no rollup");
    const { revision: _revision, ...older } = rollup;
    expect(await now.decode(before.encode(older))).toEqual({
      ok: true,
      value: { ...older, revision: 0 },
      schemaId: before.schemaId,
    });
    const revised: MetricRollup = { ...rollup, revision: 2 };
    expect(await now.decode(now.encode(revised))).toEqual({
      ok: true,
      value: revised,
      schemaId: now.schemaId,
    });
    expect(await before.decode(now.encode(revised))).toEqual({
      ok: true,
      value: older,
      schemaId: now.schemaId,
    });
  });
});

describe("ModelCallEvent's cache and audio token fields", () => {
  const USAGE_FIELDS = [
    "cache_read_tokens",
    "cache_write_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
  ] as const;
  /** ModelCallEvent as registered before the fields: the same record without them. */
  type Before = Omit<ModelCallEvent, (typeof USAGE_FIELDS)[number]>;
  const BEFORE_USAGE = defineContract<Before>(
    withFields(
      v1Fields.filter((field) => !(USAGE_FIELDS as readonly string[]).includes(field.name)),
    ),
  );

  it("is a compatible evolution: registered after the schema without them, old records read with them null and new ones by old readers", async () => {
    // Appended at the end, optional, default null.
    expect(v1Fields.slice(-USAGE_FIELDS.length).map((field) => field.name)).toEqual([
      ...USAGE_FIELDS,
    ]);
    for (const field of v1Fields.slice(-USAGE_FIELDS.length))
      expect(field, field.name).toMatchObject({ type: ["null", "long"], default: null });
    const subject = valueSubject(uniqueName("evo-usage"));
    // The codec's default compatibility, FULL_TRANSITIVE, as the services use.
    const before = await register(BEFORE_USAGE, subject);
    const now = await register(MODEL_CALL_EVENT, subject);
    expect(now.schemaId).not.toBe(before.schemaId);
    const url = services().schemaRegistryUrl;
    expect(await getCompatibility(url, subject)).toBe("FULL_TRANSITIVE");
    const response = await fetch(`${url}/subjects/${encodeURIComponent(subject)}/versions`);
    expect(await response.json()).toEqual([1, 2]);

    const {
      cache_read_tokens: _read,
      cache_write_tokens: _write,
      input_audio_tokens: _inputAudio,
      output_audio_tokens: _outputAudio,
      ...older
    } = sampleEvent();
    expect(await now.decode(before.encode(older))).toEqual({
      ok: true,
      value: {
        ...older,
        cache_read_tokens: null,
        cache_write_tokens: null,
        input_audio_tokens: null,
        output_audio_tokens: null,
      },
      schemaId: before.schemaId,
    });
    const cached = sampleEvent({
      prompt_tokens: 4_000,
      cache_read_tokens: 3_072,
      cache_write_tokens: 512,
      input_audio_tokens: 100,
      output_audio_tokens: 20,
    });
    expect(await now.decode(now.encode(cached))).toEqual({
      ok: true,
      value: cached,
      schemaId: now.schemaId,
    });
    const {
      cache_read_tokens: _r,
      cache_write_tokens: _w,
      input_audio_tokens: _ia,
      output_audio_tokens: _oa,
      ...projected
    } = cached;
    expect(await before.decode(now.encode(cached))).toEqual({
      ok: true,
      value: projected,
      schemaId: now.schemaId,
    });
  });
});

describe("a registry that stops answering", () => {
  it("decoding a record whose writer schema is not cached yet returns a retriable REGISTRY_UNAVAILABLE error value, not a throw", async () => {
    // A pass-through to the real registry that the test can close.
    const target = services().schemaRegistryUrl;
    const proxy: Server = createServer((request, response) => {
      const chunks: Buffer[] = [];
      request.on("data", (chunk: Buffer) => chunks.push(chunk));
      request.on("end", () => {
        const body = chunks.length > 0 ? Buffer.concat(chunks) : undefined;
        void fetch(`${target}${request.url ?? ""}`, {
          method: request.method ?? "GET",
          headers: { "content-type": request.headers["content-type"] ?? "application/json" },
          ...(body === undefined ? {} : { body }),
        })
          .then(async (upstream) => {
            response.writeHead(upstream.status, {
              "content-type": upstream.headers.get("content-type") ?? "",
            });
            response.end(Buffer.from(await upstream.arrayBuffer()));
          })
          .catch((error: unknown) => {
            response.writeHead(502);
            response.end(String(error));
          });
      });
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    const address = proxy.address();
    const port = typeof address === "object" && address !== null ? address.port : 0;
    const viaProxy = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: `http://127.0.0.1:${port}`,
      subject: valueSubject(uniqueName("proxied")),
    });
    // Another writer version, registered directly: the proxied codec has not seen its id yet.
    const direct = await register(V2, valueSubject(uniqueName("other-writer")));
    const record = direct.encode({ ...sampleEvent(), reasoning_tokens: 7 });
    await new Promise<void>((resolve) => {
      proxy.close(() => {
        resolve();
      });
      proxy.closeAllConnections();
    });

    const result = await viaProxy.decode(record);
    expect(result).toMatchObject({
      ok: false,
      error: { code: "REGISTRY_UNAVAILABLE", retriable: true, schemaId: direct.schemaId },
    });
  });
});
