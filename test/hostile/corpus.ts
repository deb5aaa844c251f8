/**
 * The hostile corpus: inputs a buggy or hostile replica or MCP client can put into the pipeline,
 * each with the outcome it must have. `corpus.int.test.ts` runs every entry end to end (a raw
 * producer → the processor → the sink → PostgreSQL) with a steady stream of good events around
 * it, which must all land. Entries that need another way in (the exporter, the CLI, a second
 * schema version) have tests of their own in this folder; each names its entry here.
 */
import { randomBytes, randomUUID } from "node:crypto";

import { watermarkTick } from "../../avro/control.js";
import type { ModelCallEvent } from "../../avro/generated.js";
import { emptyAttributesCountAt, sampleEvent } from "../support/events.js";

/** A record as a producer writes it. */
export interface HostileRecord {
  readonly key: string | null;
  readonly value: Buffer | null;
  readonly headers?: Readonly<Record<string, string>>;
  /** The partition to write to (default: by key). */
  readonly partition?: number;
}

/** What the entry's records must come to. */
export interface HostileOutcome {
  /**
   * Every record of the entry is dead-lettered (by the processor and by the sink, each of which
   * reads model-calls), each dead letter with a `mcpo-dlq-code` matching `code` (a regular
   * expression's source, matched whole) and a reason matching `reason`.
   */
  readonly deadLetter?: { readonly code: string; readonly reason: RegExp };
  /**
   * The stored rollups of `service` equal the oracle's over these events (and no other row of
   * the service exists).
   */
  readonly rollups?: { readonly service: string; readonly events: readonly ModelCallEvent[] };
  /** The stored spans of `service`: this many. */
  readonly spans?: { readonly service: string; readonly count: number };
  /** The processor counted at least this many duplicates (`mcpo_processor_duplicate_events_total`). */
  readonly duplicates?: number;
  /** The stored rows of `service`, by scope (the total, its models, the overflow series). */
  readonly scopes?: {
    readonly service: string;
    readonly rows: Readonly<Record<"service" | "model" | "other", number>>;
  };
  /**
   * The processor folded at least this many calls into overflow series
   * (`mcpo_processor_models_folded_total`).
   */
  readonly modelsFolded?: number;
}

/** How an entry builds its records: the model-calls codec and the time it is produced at. */
export interface CorpusContext {
  readonly encode: (event: ModelCallEvent) => Buffer;
  /**
   * Encodes in the wire format without the contract's checks (as a replica with another
   * library, or a hostile one, could).
   */
  readonly encodeUnchecked: (event: ModelCallEvent) => Buffer;
  /** The model-calls topic's partitions. */
  readonly partitions: number;
  /** Now, µs. */
  readonly nowMicros: number;
  /** The processor's window size, µs. */
  readonly windowMicros: number;
}

export interface HostileEntry {
  /** Short and unique: the dead-letter key of its records is `hostile:<name>`. */
  readonly name: string;
  /** The item of the hostile-input issue it covers, and what it is. */
  readonly what: string;
  readonly build: (context: CorpusContext) => {
    readonly records: readonly HostileRecord[];
    readonly outcome: HostileOutcome;
  };
}

/** A valid call of `service` ending at `endMicros`, with unique ids. */
export function goodCall(
  service: string,
  endMicros: number,
  overrides: Partial<ModelCallEvent> = {},
): ModelCallEvent {
  return sampleEvent({
    event_id: randomUUID(),
    span_id: randomBytes(8).toString("hex"),
    service,
    service_instance: `${service}-0`,
    start_time: endMicros - 1000,
    end_time: endMicros,
    ...overrides,
  });
}

/**
 * The empty `attributes` map's zero block count (before the null fields after it) replaced by a
 * varint of about 2^60: a reader that trusts block counts loops (or allocates) for ever.
 */
export function withHugeMapCount(encoded: Buffer): Buffer {
  const at = emptyAttributesCountAt(encoded);
  return Buffer.concat([
    encoded.subarray(0, at),
    Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20]),
    encoded.subarray(at + 1),
  ]);
}

const hostileKey = (name: string): string => `hostile:${name}`;

/** The same record on every partition, so no partition's windows escape it. */
function everywhere(partitions: number, record: Omit<HostileRecord, "partition">): HostileRecord[] {
  return Array.from({ length: partitions }, (_, partition) => ({ ...record, partition }));
}

/** A call the contract refuses at `field`, written anyway: dead-lettered as INVALID_FIELD. */
function invalidField(
  name: string,
  what: string,
  field: RegExp,
  overrides: Partial<ModelCallEvent>,
): HostileEntry {
  return {
    name,
    what,
    build: ({ encodeUnchecked, nowMicros }) => ({
      records: [
        {
          key: hostileKey(name),
          value: encodeUnchecked(goodCall(`${name}-mcp`, nowMicros, overrides)),
        },
      ],
      outcome: { deadLetter: { code: "INVALID_FIELD", reason: field } },
    }),
  };
}

/** 2100-01-01, µs. */
const YEAR_2100 = Date.UTC(2100, 0, 1) * 1000;

export const CORPUS: readonly HostileEntry[] = [
  {
    name: "map-bomb",
    what: "item 1: an attributes map whose block count is about 2^60",
    build: ({ encode, nowMicros }) => ({
      records: [
        {
          key: hostileKey("map-bomb"),
          value: withHugeMapCount(encode(goodCall("bomb-mcp", nowMicros, { attributes: {} }))),
        },
      ],
      outcome: { deadLetter: { code: "MALFORMED_BODY", reason: /attributes/ } },
    }),
  },
  {
    name: "truncated",
    what: "item 1: an event cut in half",
    build: ({ encode, nowMicros }) => {
      const whole = encode(goodCall("cut-mcp", nowMicros));
      return {
        records: [{ key: hostileKey("truncated"), value: whole.subarray(0, whole.length >> 1) }],
        outcome: { deadLetter: { code: "TRUNCATED|MALFORMED_BODY", reason: /./ } },
      };
    },
  },
  {
    name: "no-value",
    what: "a record with no value and no control header",
    build: () => ({
      records: [{ key: hostileKey("no-value"), value: null }],
      outcome: { deadLetter: { code: "[A-Z_]+", reason: /./ } },
    }),
  },
  {
    name: "star-model",
    what: "item 5: a model named '*' beside the service total, '' and names with '|'",
    build: ({ encode, nowMicros }) => {
      const events = [
        goodCall("star-mcp", nowMicros, { model: "gpt-4o" }),
        goodCall("star-mcp", nowMicros, { model: "gpt-4o" }),
        goodCall("star-mcp", nowMicros, { model: "gpt-4o" }),
        goodCall("star-mcp", nowMicros, { model: "*" }),
        goodCall("star-mcp", nowMicros, { model: "" }),
        goodCall("star-mcp", nowMicros, { model: "a|b" }),
      ];
      return {
        records: events.map((event) => ({ key: event.service, value: encode(event) })),
        outcome: { rollups: { service: "star-mcp", events } },
      };
    },
  },
  {
    name: "duplicates",
    what: "item 6: the same record bytes produced twice, and one three times (an exporter's resend)",
    build: ({ encode, nowMicros }) => {
      const events = [
        goodCall("dup-mcp", nowMicros, { model: "gpt-4o", cost_nano_usd: 1_000 }),
        goodCall("dup-mcp", nowMicros, { model: "gpt-4o", cost_nano_usd: 2_000 }),
        goodCall("dup-mcp", nowMicros, { model: "claude", cost_nano_usd: 4_000 }),
      ];
      const [first, , third] = events.map((event) => ({
        key: event.service,
        value: encode(event),
      }));
      const records = events.map((event) => ({ key: event.service, value: encode(event) }));
      if (first && third) records.push(first, third, third);
      return {
        records,
        outcome: {
          rollups: { service: "dup-mcp", events },
          spans: { service: "dup-mcp", count: events.length },
          duplicates: 3,
        },
      };
    },
  },
  {
    name: "many-models",
    what: "cardinality guards: 300 distinct model names in one window (a client naming a model per call)",
    build: ({ encode, nowMicros, windowMicros }) => {
      // All in the window now is in, in the order model-000 … model-299.
      const start = nowMicros - (nowMicros % windowMicros);
      const events = Array.from({ length: 300 }, (_, i) =>
        goodCall("many-models-mcp", Math.max(start + 1000, nowMicros - 300 + i), {
          model: `model-${String(i).padStart(3, "0")}`,
        }),
      );
      return {
        records: events.map((event) => ({ key: event.service, value: encode(event) })),
        outcome: {
          // The first 200 models a row each, the other 100 one overflow row; the total all 300.
          rollups: { service: "many-models-mcp", events },
          scopes: { service: "many-models-mcp", rows: { service: 1, model: 200, other: 1 } },
          spans: { service: "many-models-mcp", count: 300 },
          modelsFolded: 100,
        },
      };
    },
  },
  invalidField(
    "nul-name",
    "limits: a NUL in tool_name (PostgreSQL text cannot hold it)",
    /tool_name/,
    {
      tool_name: "a\u0000b",
    },
  ),
  invalidField("long-model", "limits: a model name of 3000 characters", /model/, {
    model: "m".repeat(3000),
  }),
  invalidField("many-attributes", "limits: 500 attributes", /attributes/, {
    attributes: Object.fromEntries(Array.from({ length: 500 }, (_, i) => [`k${i}`, "v"])),
  }),
  {
    name: "year-2100",
    what: "item 2: a call dated 2100 on every partition (a host clock that is wrong)",
    build: ({ encode, partitions }) => ({
      records: everywhere(partitions, {
        key: hostileKey("year-2100"),
        value: encode(
          goodCall("clock-mcp", YEAR_2100, { start_time: YEAR_2100 - 1000, end_time: YEAR_2100 }),
        ),
      }),
      outcome: { deadLetter: { code: "CLOCK_SKEW", reason: /2100/ } },
    }),
  },
  {
    name: "forged-tick",
    what: "item 2: a watermark tick dated 2100 on every partition",
    build: ({ partitions }) => {
      const tick = watermarkTick(YEAR_2100);
      return {
        records: everywhere(partitions, {
          key: hostileKey("forged-tick"),
          value: tick.value,
          headers: tick.headers,
        }),
        // Ignored and counted, not dead-lettered: the steady stream's windows show it did nothing.
        outcome: {},
      };
    },
  },
];
