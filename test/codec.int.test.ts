import avro from "avsc";
import { beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, EncodeError, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT, METRIC_ROLLUP, MODEL_CALL_EVENT } from "../avro/contracts.js";
import { MODEL_CALL_EVENT_SCHEMA, type ModelCallEvent } from "../avro/generated.js";
import { getCompatibility } from "../avro/registry.js";
import { AlertTracker, rollupEvents } from "../metrics/index.js";
import { sampleEvent } from "./support/events.js";
import { services, uniqueName } from "./support/isolation.js";

/** Wire-format bytes with a body avsc wrote without our validation (to fake a bad producer). */
function rawRecord(schemaId: number, value: Record<string, unknown>): Buffer {
  const body = avro.Type.forSchema(MODEL_CALL_EVENT_SCHEMA as avro.Schema).toBuffer(value);
  const header = Buffer.alloc(5);
  header.writeInt32BE(schemaId, 1);
  return Buffer.concat([header, body]);
}

describe("Avro codec against the real registry", () => {
  let codec: AvroCodec<ModelCallEvent>;
  const topic = uniqueName("model-calls");

  beforeAll(async () => {
    codec = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
  });

  it("registers all three schemas, sets each subject's compatibility to FULL_TRANSITIVE, and round-trips a value of each through a second codec", async () => {
    const url = services().schemaRegistryUrl;
    expect(await getCompatibility(url, valueSubject(topic))).toBe("FULL_TRANSITIVE");

    const event = sampleEvent();
    const encoded = codec.encode(event);
    expect(encoded[0]).toBe(0);
    expect(encoded.readInt32BE(1)).toBe(codec.schemaId);
    // A second codec (another process, say) fetches the writer schema by id and decodes.
    const reader = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: url,
      subject: valueSubject(topic),
    });
    expect(await reader.decode(encoded)).toEqual({
      ok: true,
      value: event,
      schemaId: codec.schemaId,
    });

    const events = [
      sampleEvent(),
      sampleEvent({ model: "gpt-4o-mini", status: "error", error_type: "Timeout" }),
    ];
    const rollups = rollupEvents(events, 60_000_000);
    expect(rollups.length).toBeGreaterThan(0);
    const rollupSubject = valueSubject(uniqueName("metric-rollups"));
    const rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
      registryUrl: url,
      subject: rollupSubject,
    });
    expect(await getCompatibility(url, rollupSubject)).toBe("FULL_TRANSITIVE");
    const rollupReader = await AvroCodec.register(METRIC_ROLLUP, {
      registryUrl: url,
      subject: rollupSubject,
    });
    for (const rollup of rollups)
      expect(await rollupReader.decode(rollupCodec.encode(rollup))).toEqual({
        ok: true,
        value: rollup,
        schemaId: rollupCodec.schemaId,
      });

    const totals = rollups.filter((rollup) => rollup.model === null);
    expect(totals, "one service total among the rollups").toHaveLength(1);
    const [total] = totals;
    const alerts = new AlertTracker().observe(total ?? (undefined as never));
    expect(alerts.length).toBeGreaterThan(0);
    const alertSubject = valueSubject(uniqueName("alerts"));
    const alertCodec = await AvroCodec.register(ALERT_EVENT, {
      registryUrl: url,
      subject: alertSubject,
    });
    expect(await getCompatibility(url, alertSubject)).toBe("FULL_TRANSITIVE");
    const alertReader = await AvroCodec.register(ALERT_EVENT, {
      registryUrl: url,
      subject: alertSubject,
    });
    for (const alert of alerts)
      expect(await alertReader.decode(alertCodec.encode(alert))).toEqual({
        ok: true,
        value: alert,
        schemaId: alertCodec.schemaId,
      });
  });

  it("registers idempotently: the same schema gets the same id", async () => {
    const again = await AvroCodec.register(MODEL_CALL_EVENT, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(topic),
    });
    expect(again.schemaId).toBe(codec.schemaId);
  });

  it("refuses to encode an event that breaks the contract, naming the field", () => {
    expect(() => codec.encode(sampleEvent({ confidence: 1.7 }))).toThrow(EncodeError);
    expect(() => codec.encode(sampleEvent({ confidence: 1.7 }))).toThrow(
      /confidence above maximum 1/,
    );
  });

  it("turns every kind of bad record into a typed error value, never a throw", async () => {
    const good = codec.encode(sampleEvent());
    const cases: [string, Buffer, string, string | undefined][] = [
      ["empty", Buffer.alloc(0), "TRUNCATED", undefined],
      ["short header", good.subarray(0, 3), "TRUNCATED", undefined],
      [
        "wrong magic byte",
        Buffer.concat([Buffer.from([1]), good.subarray(1)]),
        "BAD_MAGIC_BYTE",
        undefined,
      ],
      ["truncated body", good.subarray(0, good.length - 7), "TRUNCATED", undefined],
      ["trailing bytes", Buffer.concat([good, Buffer.from([0, 0])]), "MALFORMED_BODY", undefined],
      // Three empty strings, then union index 5 for parent_span_id: there is no such branch.
      [
        "bad union index",
        Buffer.concat([good.subarray(0, 5), Buffer.from("0000000a", "hex")]),
        "MALFORMED_BODY",
        undefined,
      ],
      // Valid prefix, then enum index 6 for kind: CallKind has six symbols (0-5).
      [
        "bad enum index",
        Buffer.concat([good.subarray(0, 5), Buffer.from("000000000c" + "00".repeat(40), "hex")]),
        "MALFORMED_BODY",
        undefined,
      ],
      [
        "confidence 1.7",
        rawRecord(codec.schemaId, { ...sampleEvent(), confidence: 1.7 }),
        "INVALID_FIELD",
        "confidence",
      ],
      [
        "negative tokens",
        rawRecord(codec.schemaId, { ...sampleEvent(), prompt_tokens: -3 }),
        "INVALID_FIELD",
        "prompt_tokens",
      ],
      [
        "NaN score",
        rawRecord(codec.schemaId, { ...sampleEvent(), prompt_diff_score: Number.NaN }),
        "INVALID_FIELD",
        "prompt_diff_score",
      ],
      [
        "bad trace id",
        rawRecord(codec.schemaId, { ...sampleEvent(), trace_id: "nope" }),
        "INVALID_FIELD",
        "trace_id",
      ],
    ];
    for (const [name, bytes, code, path] of cases) {
      const result = await codec.decode(bytes);
      expect(result.ok, name).toBe(false);
      if (result.ok) continue;
      expect(result.error.code, name).toBe(code);
      expect(result.error.path, name).toBe(path);
      expect(result.error.retriable, name).toBe(false);
      expect(result.error.message.length, name).toBeGreaterThan(10);
    }
    const nan = await codec.decode(
      rawRecord(codec.schemaId, { ...sampleEvent(), prompt_diff_score: Number.NaN }),
    );
    expect(!nan.ok && nan.error.message).toContain(
      "ModelCallEvent.prompt_diff_score must be a finite number (got NaN)",
    );
  });

  it("reports an unknown schema id, and a writer schema of another record, as typed errors", async () => {
    const good = codec.encode(sampleEvent());
    const unknownId = Buffer.from(good);
    unknownId.writeInt32BE(2_000_000_000, 1);
    const unknown = await codec.decode(unknownId);
    expect(unknown).toMatchObject({
      ok: false,
      error: { code: "UNKNOWN_SCHEMA_ID", schemaId: 2_000_000_000 },
    });

    const rollupCodec = await AvroCodec.register(METRIC_ROLLUP, {
      registryUrl: services().schemaRegistryUrl,
      subject: valueSubject(uniqueName("wrong-topic")),
    });
    const [rollup] = rollupEvents([sampleEvent()], 60_000_000);
    const misplaced = await codec.decode(rollupCodec.encode(rollup ?? (undefined as never)));
    expect(misplaced).toMatchObject({ ok: false, error: { code: "INCOMPATIBLE_WRITER_SCHEMA" } });
    expect(!misplaced.ok && misplaced.error.message).toContain("cannot be read as ModelCallEvent");
  });

  it("decodes synchronously once the writer schema is known", () => {
    const encoded = codec.encode(sampleEvent());
    expect(codec.decodeIfKnown(encoded)).toMatchObject({ ok: true });
    const unknownId = Buffer.from(encoded);
    unknownId.writeInt32BE(2_000_000_001, 1);
    expect(codec.decodeIfKnown(unknownId)).toBeUndefined();
  });
});
