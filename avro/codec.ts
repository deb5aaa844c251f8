/**
 * Encode and decode contract records in the Confluent wire format — magic byte 0, a 4-byte
 * big-endian schema id, then the Avro binary body — with schemas registered in and fetched from a
 * Confluent-compatible registry through `@kafkajs/confluent-schema-registry` (which uses `avsc`).
 *
 * Encoding validates first and throws {@link EncodeError} for a value that breaks the contract
 * (a bug in the caller). Decoding never throws for bad input: it returns a {@link DecodeResult}
 * whose error says what was wrong and where, for the consumers' dead-letter topic. It is bounded
 * in time and memory: before avsc decodes, the body is walked against the writer's schema and
 * counts and lengths that cannot fit in the bytes left are refused (see bounded.ts).
 */
import { COMPATIBILITY, SchemaRegistry, SchemaType } from "@kafkajs/confluent-schema-registry";
import type avro from "avsc";

import { ObservatoryError } from "../config/errors.js";
import { PROVISION_COMMAND } from "../config/provisioning.js";
import { registryEndpointOf, type RegistryTarget } from "../config/security.js";
import { contractType } from "./bigint.js";
import { compileBodyCheck, type BodyCheck } from "./bounded.js";
import type { EventContract } from "./contracts.js";
import {
  registryAgent,
  registryAuthorization,
  registryRequest,
  SchemaRegistryError,
  setSubjectCompatibility,
  type CompatibilityLevel,
} from "./registry.js";

/** The Confluent wire format's magic byte. */
export const MAGIC_BYTE = 0;
/** Magic byte and schema id. */
export const WIRE_HEADER_BYTES = 5;

/** Why a record could not be decoded into a valid value. */
export type DecodeErrorCode =
  /** Shorter than the 5-byte header, or the Avro body ends early. */
  | "TRUNCATED"
  /** The first byte is not 0: not Confluent wire format. */
  | "BAD_MAGIC_BYTE"
  /** The registry has no schema with this id. */
  | "UNKNOWN_SCHEMA_ID"
  /** The registry did not answer; retrying later may succeed. */
  | "REGISTRY_UNAVAILABLE"
  /** The writer's schema cannot be read as this contract's record (another record, an incompatible version). */
  | "INCOMPATIBLE_WRITER_SCHEMA"
  /**
   * The Avro body does not decode: a bad union or enum index, a count or length that cannot fit
   * in the bytes left, an overlong varint, trailing bytes, …
   */
  | "MALFORMED_BODY"
  /** The body decodes but a field breaks the contract (out of range, NaN, bad id, …). */
  | "INVALID_FIELD";

/** A decoding failure, as a value. `message` says what and where, for dead-letter headers. */
export interface DecodeError {
  readonly code: DecodeErrorCode;
  readonly message: string;
  /** The schema id from the header, when the header was readable. */
  readonly schemaId: number | undefined;
  /**
   * For `INVALID_FIELD`: the field's path. (A body refused by the walk names its field, in the
   * writer's record, at the start of `message`: `latency.keys: array block count …`.)
   */
  readonly path: string | undefined;
  /** Whether the same bytes may decode later (only `REGISTRY_UNAVAILABLE`). */
  readonly retriable: boolean;
}

/** The outcome of decoding one record. */
export type DecodeResult<T> =
  | { readonly ok: true; readonly value: T; readonly schemaId: number }
  | { readonly ok: false; readonly error: DecodeError };

/** Encoding refused a value that breaks the contract; a bug in the caller, not bad input. */
export class EncodeError extends ObservatoryError {
  declare readonly code: "INVALID_EVENT";
  constructor(
    readonly record: string,
    readonly path: string,
    readonly reason: string,
  ) {
    // Never retriable: the same value breaks the contract the same way.
    super("INVALID_EVENT", `cannot encode ${record}: ${path} ${reason}`, { retriable: false });
    this.name = "EncodeError";
  }
}

/**
 * The compatibility level the project's subjects are given (see {@link CodecOptions.compatibility}
 * for why).
 */
export const DEFAULT_COMPATIBILITY: CompatibilityLevel = "FULL_TRANSITIVE";

/**
 * The contract's schema is not registered under the subject, and the component may not register it
 * (`autoRegisterSchemas: false`). Not retriable by itself: an operator has to register it.
 */
export class SchemaNotRegisteredError extends ObservatoryError {
  declare readonly code: "SCHEMA_NOT_REGISTERED";

  constructor(
    readonly subject: string,
    readonly record: string,
    /** The subject exists, with other schemas (another version of the contract). */
    subjectExists: boolean,
    options?: { cause?: unknown },
  ) {
    super(
      "SCHEMA_NOT_REGISTERED",
      `${
        subjectExists
          ? `subject ${subject} has no version with this ${record} schema (another version of the contract is registered)`
          : `subject ${subject} does not exist in the schema registry`
      } and autoRegisterSchemas is false: run \`${PROVISION_COMMAND}\` with operator rights (same registry and topic prefix, this version of mcp-observatory) to register it`,
      { ...options, retriable: false },
    );
    this.name = "SchemaNotRegisteredError";
  }
}

/** Options of {@link AvroCodec.register}. */
export interface CodecOptions {
  /** The registry: the base URL of its Confluent-compatible API, or an endpoint with credentials. */
  readonly registryUrl: RegistryTarget;
  /** The subject, usually `<topic>-value` (see {@link valueSubject}). */
  readonly subject: string;
  /**
   * The subject's compatibility level, set explicitly before registering. Default
   * `FULL_TRANSITIVE`: consumers replay the log from its beginning (so they read every older
   * version: backward, transitively) while producers inside users' servers upgrade at their own
   * pace (so older consumers read newer records: forward). Optional fields with defaults are the
   * only changes this allows, which is how the contract evolves.
   */
  readonly compatibility?: CompatibilityLevel;
  /**
   * Whether the codec may change the registry (default true): set the subject's compatibility
   * and register the schema. false: nothing is written; the id of the contract's exact schema is
   * looked up under the subject ({@link AvroCodec.lookup}), for components whose credentials may
   * only read the registry (`autoRegisterSchemas: false`).
   */
  readonly autoRegister?: boolean;
  /** A registry client to share (its schema cache is shared too); one is made otherwise. */
  readonly registry?: SchemaRegistry;
  /**
   * How long a schema id the registry answers "not found" for is taken for a registry that is
   * starting or restarting, ms (default 0: unknown at once, as a replay wants): records with it
   * are retried meanwhile (decode says `REGISTRY_UNAVAILABLE`, retriable), and only then are they
   * `UNKNOWN_SCHEMA_ID`. The processor and the sink pass their `unknownSchemaIdGraceMs`.
   */
  readonly unknownIdGraceMs?: number;
  /**
   * Whether bodies are walked against the writer's schema before avsc decodes them (default
   * true), so a count or length that cannot fit in the bytes left is refused instead of looping
   * or allocating for it. false only to measure the walk's cost (bench:core): never for bytes
   * from Kafka.
   */
  readonly boundedDecoding?: boolean;
}

/** Options of {@link AvroCodec.lookup}: those of {@link AvroCodec.register} that read only. */
export type LookupOptions = Omit<CodecOptions, "compatibility" | "autoRegister">;

/** What a codec asks the registry after it is made: writer schemas by id. */
export type SchemaLookup = Pick<SchemaRegistry, "getSchema">;

/** Options of {@link AvroCodec.forRegisteredSchema}. */
export interface RegisteredSchemaOptions {
  /** The subject the schema is registered under. */
  readonly subject: string;
  /** Where writer schemas of other ids are fetched (a registry client, {@link createRegistryClient}). */
  readonly registry: SchemaLookup;
  /** As in {@link CodecOptions.unknownIdGraceMs}. */
  readonly unknownIdGraceMs?: number;
  /** As in {@link CodecOptions.boundedDecoding}. */
  readonly boundedDecoding?: boolean;
}

/** Once past its grace, an id still unknown is not asked for again for this long, ms. */
const UNKNOWN_ID_RECHECK_MS = 5000;

/** The TopicNameStrategy subject of a topic's values. */
export function valueSubject(topic: string): string {
  return `${topic}-value`;
}

/**
 * A registry client with the retry and avsc settings the codec expects, and the endpoint's
 * credentials (basic or bearer) and CA.
 */
export function createRegistryClient(target: RegistryTarget): SchemaRegistry {
  const endpoint = registryEndpointOf(target);
  const authorization = registryAuthorization(endpoint);
  const agent = registryAgent(endpoint);
  return new SchemaRegistry({
    host: endpoint.url,
    clientId: "mcp-observatory",
    retry: { retries: 2, initialRetryTimeInSecs: 0.1, maxRetryTimeInSecs: 2 },
    ...(agent === undefined ? {} : { agent }),
    ...(authorization === undefined
      ? {}
      : {
          middlewares: [
            () => ({
              prepareRequest: (next) =>
                next().then((request) => request.enhance({ headers: { authorization } })),
            }),
          ],
        }),
  });
}

interface WriterEntry {
  /** undefined: the writer is the reader's own schema; no resolution needed. */
  readonly resolver: avro.Resolver | undefined;
  /** The bounds check of bodies written with this schema (undefined with `error`). */
  readonly check: BodyCheck | undefined;
  readonly error: DecodeError | undefined;
}

const INITIAL_SCRATCH_BYTES = 16 * 1024;

/**
 * Codec of one contract record on one subject. Create with {@link AvroCodec.register}: it sets
 * the subject's compatibility, registers the contract's schema (idempotent: the same schema gets
 * the same id) and keeps the id; or, for a component that may not write to the registry, with
 * {@link AvroCodec.lookup} (`autoRegister: false`), which only looks the id up. Writer schemas met
 * while decoding are fetched once by id and cached with their resolvers.
 */
export class AvroCodec<T> {
  private readonly readerType: avro.Type;
  private readonly writers = new Map<number, WriterEntry>();
  /**
   * Ids the registry said it does not have: since when (the grace), and until when the verdict
   * "unknown" stands without asking again. Never a verdict for good: the id may come.
   */
  private readonly missing = new Map<number, { since: number; recheckAt: number }>();
  private scratch = Buffer.allocUnsafe(INITIAL_SCRATCH_BYTES);

  private constructor(
    readonly contract: EventContract<T>,
    /** The id under which this codec's (writer) schema is registered. */
    readonly schemaId: number,
    readonly subject: string,
    private readonly registry: SchemaLookup,
    private readonly unknownIdGraceMs: number = 0,
    private readonly boundedDecoding: boolean = true,
  ) {
    // Longs the schema marks `mcpo.bigint` (a rollup's sums) read and write bigints.
    this.readerType = contractType(contract.schema);
    this.writers.set(schemaId, {
      resolver: undefined,
      check: compileBodyCheck(this.readerType),
      error: undefined,
    });
  }

  /**
   * Sets the subject's compatibility explicitly, registers the contract's schema, and returns a
   * codec that encodes with it.
   *
   * @throws {SchemaRegistryError} code `SCHEMA_INCOMPATIBLE` when the registry refuses the schema
   *   as incompatible with the subject's earlier versions; `SCHEMA_REGISTRY_ERROR` otherwise.
   * @throws {RetryExhaustedError} when the registry stayed unreachable through the client's
   *   retries (its `cause` is the last `SchemaRegistryError`).
   * @throws {SchemaNotRegisteredError} with `autoRegister: false`, as {@link lookup}.
   */
  static async register<T>(
    contract: EventContract<T>,
    options: CodecOptions,
  ): Promise<AvroCodec<T>> {
    if (options.autoRegister === false) return AvroCodec.lookup(contract, options);
    const compatibility = options.compatibility ?? DEFAULT_COMPATIBILITY;
    const registry = options.registry ?? createRegistryClient(options.registryUrl);
    await setSubjectCompatibility(options.registryUrl, options.subject, compatibility);
    let id: number;
    try {
      ({ id } = await registry.register(
        { type: SchemaType.AVRO, schema: JSON.stringify(contract.schema) },
        { subject: options.subject, compatibility: COMPATIBILITY[compatibility] },
      ));
    } catch (error) {
      throw toRegistryError(error, contract.name, options.subject, compatibility);
    }
    return new AvroCodec(
      contract,
      id,
      options.subject,
      registry,
      options.unknownIdGraceMs ?? 0,
      options.boundedDecoding ?? true,
    );
  }

  /**
   * Looks up the id of the contract's exact schema under the subject (`POST /subjects/{subject}`
   * with the schema, which Confluent's registry and Apicurio's ccompat API both answer with the
   * id and version, or 404) and returns a codec that encodes with it. Changes nothing in the
   * registry: for components whose credentials may only read it.
   *
   * @throws {SchemaNotRegisteredError} naming the subject when the subject does not exist
   *   (40401) or has no version with this schema (40403).
   * @throws {SchemaRegistryError} for another refusal (401, 403, …).
   * @throws {RetryExhaustedError} when the registry did not answer (or answered 5xx) three times.
   */
  static async lookup<T>(
    contract: EventContract<T>,
    options: LookupOptions,
  ): Promise<AvroCodec<T>> {
    let answer: unknown;
    try {
      answer = await registryRequest(
        options.registryUrl,
        `/subjects/${encodeURIComponent(options.subject)}`,
        "POST",
        { schemaType: "AVRO", schema: JSON.stringify(contract.schema) },
      );
    } catch (error) {
      // 40401: no such subject; 40403: the subject has no version with this schema. (A 404
      // without either is another fault, e.g. a registry URL without its API path.)
      if (
        error instanceof SchemaRegistryError &&
        (error.registryErrorCode === 40401 || error.registryErrorCode === 40403)
      )
        throw new SchemaNotRegisteredError(
          options.subject,
          contract.name,
          error.registryErrorCode === 40403,
          { cause: error },
        );
      throw error;
    }
    const id = (answer as { id?: unknown } | null)?.id;
    if (typeof id !== "number" || !Number.isInteger(id))
      throw new SchemaRegistryError(
        `looking up ${contract.name} under ${options.subject}: the registry answered without an id`,
        200,
        undefined,
        false,
      );
    return AvroCodec.forRegisteredSchema(contract, id, {
      subject: options.subject,
      registry: options.registry ?? createRegistryClient(options.registryUrl),
      ...(options.unknownIdGraceMs === undefined
        ? {}
        : { unknownIdGraceMs: options.unknownIdGraceMs }),
      ...(options.boundedDecoding === undefined
        ? {}
        : { boundedDecoding: options.boundedDecoding }),
    });
  }

  /**
   * A codec for a schema already registered under `schemaId` (by {@link register} elsewhere, or a
   * deploy step): no registry call is made here, and `registry` is asked only for the writer
   * schemas of other ids met while decoding. Nothing checks that `schemaId` is the contract's
   * schema: records this codec encodes carry that id.
   */
  static forRegisteredSchema<T>(
    contract: EventContract<T>,
    schemaId: number,
    options: RegisteredSchemaOptions,
  ): AvroCodec<T> {
    return new AvroCodec(
      contract,
      schemaId,
      options.subject,
      options.registry,
      options.unknownIdGraceMs ?? 0,
      options.boundedDecoding ?? true,
    );
  }

  /**
   * Encodes a valid value in Confluent wire format with this codec's schema id.
   *
   * @throws {EncodeError} naming the field when the value breaks the contract.
   */
  encode(value: T): Buffer {
    const issue = this.contract.check(value);
    if (issue) throw new EncodeError(this.contract.name, issue.path, issue.reason);
    for (;;) {
      this.scratch[0] = MAGIC_BYTE;
      this.scratch.writeInt32BE(this.schemaId, 1);
      const end = this.readerType.encode(value, this.scratch, WIRE_HEADER_BYTES);
      if (end >= 0) {
        // allocUnsafe takes small buffers from Node's pool: cheaper than a fresh allocation.
        const out = Buffer.allocUnsafe(end);
        this.scratch.copy(out, 0, 0, end);
        return out;
      }
      // A negative end is how many bytes were missing.
      this.scratch = Buffer.allocUnsafe(
        Math.max(this.scratch.length * 2, this.scratch.length - end),
      );
    }
  }

  /**
   * Decodes one record. Never throws for bad bytes: the result says what was wrong and where.
   * Fetches the writer schema from the registry the first time an id is met.
   */
  async decode(buffer: Buffer): Promise<DecodeResult<T>> {
    const header = readHeader(buffer);
    if (!header.ok) return header;
    if (!this.writers.has(header.schemaId)) {
      let unknown: DecodeResult<T> | undefined;
      try {
        unknown = await this.loadWriter(header.schemaId);
      } catch (error) {
        return failure("REGISTRY_UNAVAILABLE", (error as Error).message, header.schemaId);
      }
      if (unknown) return unknown;
    }
    return this.decodeBody(buffer, header.schemaId);
  }

  /**
   * Decodes synchronously when the record's writer schema is already known (the usual case),
   * else returns undefined: call {@link decode} for that record.
   */
  decodeIfKnown(buffer: Buffer): DecodeResult<T> | undefined {
    const header = readHeader(buffer);
    if (!header.ok) return header;
    if (!this.writers.has(header.schemaId)) return undefined;
    return this.decodeBody(buffer, header.schemaId);
  }

  private decodeBody(buffer: Buffer, schemaId: number): DecodeResult<T> {
    const writer = this.writers.get(schemaId);
    if (writer?.error) return { ok: false, error: writer.error };
    // Untrusted bytes: counts and lengths are checked against the bytes left before avsc loops
    // over or allocates for them.
    const defect = this.boundedDecoding ? writer?.check?.(buffer, WIRE_HEADER_BYTES) : undefined;
    if (defect)
      return {
        ok: false,
        error: {
          code: defect.code,
          message: defect.message,
          schemaId,
          path: undefined,
          retriable: false,
        },
      };
    let decoded: { value: unknown; offset: number };
    try {
      decoded = this.readerType.decode(buffer, WIRE_HEADER_BYTES, writer?.resolver);
    } catch (error) {
      return failure(
        "MALFORMED_BODY",
        `Avro body does not decode: ${(error as Error).message}`,
        schemaId,
      );
    }
    if (decoded.offset < 0)
      return failure("TRUNCATED", `Avro body ends early (${buffer.length} bytes in all)`, schemaId);
    if (decoded.offset !== buffer.length)
      return failure(
        "MALFORMED_BODY",
        `${buffer.length - decoded.offset} trailing byte(s) after the ${this.contract.name} record`,
        schemaId,
      );
    const issue = this.contract.checkDecoded(decoded.value);
    if (issue)
      return {
        ok: false,
        error: {
          code: "INVALID_FIELD",
          message: `${this.contract.name}.${issue.path} ${issue.reason} (got ${describe(issue.value)})`,
          schemaId,
          path: issue.path,
          retriable: false,
        },
      };
    return { ok: true, value: decoded.value as T, schemaId };
  }

  /**
   * Fetches and caches a writer schema. An id the registry does not have is not cached: within
   * its grace it throws (retriable: a registry that restarts answers 404 for a while), after it
   * the result is `UNKNOWN_SCHEMA_ID`, asked again every few seconds.
   */
  private async loadWriter(schemaId: number): Promise<DecodeResult<T> | undefined> {
    const now = Date.now();
    const missing = this.missing.get(schemaId);
    const unknown = () =>
      failure("UNKNOWN_SCHEMA_ID", `the registry has no schema with id ${schemaId}`, schemaId);
    if (missing && now < missing.recheckAt) return unknown();
    let writerType: avro.Type;
    try {
      writerType = (await this.registry.getSchema(schemaId)) as unknown as avro.Type;
    } catch (error) {
      const status = (error as { status?: unknown }).status;
      if (status === 404) {
        const since = missing?.since ?? now;
        if (now - since < this.unknownIdGraceMs) {
          this.missing.set(schemaId, { since, recheckAt: now });
          throw new SchemaRegistryError(
            `the registry has no schema with id ${schemaId} yet (it may be starting): retrying`,
            404,
            undefined,
            true,
            { cause: error },
          );
        }
        this.missing.set(schemaId, { since, recheckAt: now + UNKNOWN_ID_RECHECK_MS });
        return unknown();
      }
      // Not cached: the next record with this id asks again.
      throw new SchemaRegistryError(
        `schema ${schemaId} could not be fetched: ${(error as Error).message}`,
        typeof status === "number" ? status : undefined,
        undefined,
        true,
        { cause: error },
      );
    }
    this.missing.delete(schemaId);
    try {
      this.writers.set(schemaId, {
        resolver: this.readerType.createResolver(writerType),
        // Compiled once per writer schema: the bounds are the writer's (its fields, counts, …).
        check: compileBodyCheck(writerType),
        error: undefined,
      });
    } catch (error) {
      this.writers.set(schemaId, {
        resolver: undefined,
        check: undefined,
        error: failure(
          "INCOMPATIBLE_WRITER_SCHEMA",
          `schema ${schemaId} (${String(writerType.name)}) cannot be read as ${this.contract.name}: ${(error as Error).message}`,
          schemaId,
        ).error,
      });
    }
    return undefined;
  }
}

/** Reads the wire header; a failure result when it is not Confluent wire format. */
export function readHeader(
  buffer: Buffer,
):
  | { readonly ok: true; readonly schemaId: number }
  | { readonly ok: false; readonly error: DecodeError } {
  if (buffer.length < WIRE_HEADER_BYTES)
    return failure(
      "TRUNCATED",
      `${buffer.length} byte(s), shorter than the 5-byte wire header`,
      undefined,
    );
  if (buffer[0] !== MAGIC_BYTE)
    return failure(
      "BAD_MAGIC_BYTE",
      `magic byte is ${buffer[0]}, expected 0 (Confluent wire format)`,
      undefined,
    );
  return { ok: true, schemaId: buffer.readInt32BE(1) };
}

function failure(
  code: DecodeErrorCode,
  message: string,
  schemaId: number | undefined,
): { readonly ok: false; readonly error: DecodeError } {
  return {
    ok: false,
    error: { code, message, schemaId, path: undefined, retriable: code === "REGISTRY_UNAVAILABLE" },
  };
}

function describe(value: unknown): string {
  if (
    typeof value === "number" ||
    typeof value === "bigint" ||
    typeof value === "boolean" ||
    value === null ||
    value === undefined
  )
    return String(value);
  const text = JSON.stringify(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function toRegistryError(
  error: unknown,
  record: string,
  subject: string,
  compatibility: CompatibilityLevel,
): SchemaRegistryError {
  if (error instanceof SchemaRegistryError) return error;
  const status = (error as { status?: unknown }).status;
  const message = error instanceof Error ? error.message : String(error);
  if (status === 409)
    return new SchemaRegistryError(
      `${record} schema is not ${compatibility} compatible with the earlier versions of subject ${subject}: ${message}`,
      409,
      409,
      false,
      { cause: error },
      "SCHEMA_INCOMPATIBLE",
    );
  return new SchemaRegistryError(
    `registering ${record} under ${subject} failed: ${message}`,
    typeof status === "number" ? status : undefined,
    undefined,
    typeof status !== "number" || status >= 500,
    { cause: error },
  );
}
