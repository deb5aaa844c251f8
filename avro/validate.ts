/**
 * Validation of `unknown` values against the contract's Avro schemas, compiled once per schema
 * into plain closures (paths and patterns are fixed at compile time, so a valid value costs no
 * allocation). Checks the Avro types (so a JSON or hand-built value is caught before encoding),
 * finite numbers, exact integers (a long is a number within ±(2^53 − 2), or a bigint within 64
 * bits where the schema marks it `mcpo.bigint`: bigint.ts), and the contract's own field
 * constraints, which the `.avsc` files carry as attributes: `mcpo.min`, `mcpo.max`,
 * `mcpo.minLength`, `mcpo.maxLength`, `mcpo.format` (`uuid`, or `hex` with `mcpo.length` and
 * optionally `mcpo.nonZero`), and on maps `mcpo.maxEntries`, `mcpo.maxKeyLength` and
 * `mcpo.maxValueLength`. Lengths count UTF-16 code units (JavaScript's `length`; at most 3 UTF-8
 * bytes each). One rule needs no attribute: no string and no map key of the contract contains
 * U+0000 (NUL), which PostgreSQL's `text` cannot hold and `jsonb` refuses.
 *
 * Records compile to generated code (as avsc does for its codecs), so each field is read by a
 * fixed property name and checked inline on the valid path; a closure builds the issue only when
 * a value fails.
 */
import { INT64_MAX, INT64_MIN, isBigintLong } from "./bigint.js";
import type { AvroSchema } from "./generated.js";

/** What is wrong with a value, and where. */
export interface FieldIssue {
  /** Dotted path to the field, e.g. `confidence` or `counts.calls`; `$` for the value itself. */
  readonly path: string;
  /** What is wrong, e.g. `above maximum 1`. */
  readonly reason: string;
  /** The offending value (for dead-letter headers: keep it short). */
  readonly value: unknown;
}

/** Returns the first issue found, or undefined when the value is valid. */
export type Validator = (value: unknown) => FieldIssue | undefined;

/** A compiled check of the value at a fixed path. */
type Check = (value: unknown) => FieldIssue | undefined;

interface FieldSchema {
  name: string;
  type: unknown;
  "mcpo.min"?: number;
  "mcpo.max"?: number;
  "mcpo.minLength"?: number;
  "mcpo.maxLength"?: number;
  "mcpo.maxEntries"?: number;
  "mcpo.maxKeyLength"?: number;
  "mcpo.maxValueLength"?: number;
  "mcpo.format"?: "uuid" | "hex";
  "mcpo.length"?: number;
  "mcpo.nonZero"?: boolean;
}

const INT_MIN = -(2 ** 31);
const INT_MAX = 2 ** 31 - 1;
/**
 * The largest long as a number: what avsc reads and writes exactly (2^53 − 2; it refuses 2^53 − 1
 * as a possible precision loss). A long marked `mcpo.bigint` is a bigint instead (bigint.ts).
 */
const LONG_MAX = Number.MAX_SAFE_INTEGER - 1;

/** Options of {@link compileValidator}. */
export interface ValidatorOptions {
  /**
   * The value comes from the Avro decoder of this same schema, so its types are right by
   * construction: check only what Avro cannot say (ranges, formats, finite doubles).
   */
  readonly trustAvroTypes?: boolean;
}

/** Compiles a validator for a record schema (as in the `.avsc` files). */
export function compileValidator(schema: AvroSchema, options: ValidatorOptions = {}): Validator {
  const named: NamedTypes = new Map();
  return compileType(
    schema,
    undefined,
    "$",
    Object.assign(named, { trusted: options.trustAvroTypes === true }),
  );
}

function issue(path: string, reason: string, value: unknown): FieldIssue {
  return { path, reason, value };
}

/** At most this many characters of an offending string go into its issue. */
const PREVIEW_LENGTH = 64;

/** A long string's start, marked as cut (an issue's value ends up in dead-letter headers). */
function preview(text: string): string {
  return text.length <= PREVIEW_LENGTH ? text : `${text.slice(0, PREVIEW_LENGTH - 3)}...`;
}

const NUL = "\u0000";

/** Why a string with a NUL at `index` is refused. */
function nulReason(index: number): string {
  return `contains a NUL character (U+0000) at index ${index}, which PostgreSQL text cannot hold`;
}

/** The length limits a field of a record schema carries (as its `.avsc` attributes say). */
export interface FieldLimits {
  /** Most UTF-16 code units of a string field (`mcpo.maxLength`). */
  readonly maxLength?: number;
  /** Most entries of a map field (`mcpo.maxEntries`). */
  readonly maxEntries?: number;
  /** Most UTF-16 code units of a map field's keys (`mcpo.maxKeyLength`). */
  readonly maxKeyLength?: number;
  /** Most UTF-16 code units of a map field's values (`mcpo.maxValueLength`). */
  readonly maxValueLength?: number;
}

/**
 * The length limits of the top-level field `name` of a record schema, read from its attributes
 * (so code that keeps values within the contract, like the interceptor, never restates them).
 *
 * @throws {Error} when the record has no such field.
 */
export function fieldLimits(schema: AvroSchema, name: string): FieldLimits {
  const field = (schema.fields as FieldSchema[]).find((candidate) => candidate.name === name);
  if (!field) throw new Error(`${String(schema.name)} has no field ${name}`);
  const limits: { -readonly [K in keyof FieldLimits]: FieldLimits[K] } = {};
  if (field["mcpo.maxLength"] !== undefined) limits.maxLength = field["mcpo.maxLength"];
  if (field["mcpo.maxEntries"] !== undefined) limits.maxEntries = field["mcpo.maxEntries"];
  if (field["mcpo.maxKeyLength"] !== undefined) limits.maxKeyLength = field["mcpo.maxKeyLength"];
  if (field["mcpo.maxValueLength"] !== undefined)
    limits.maxValueLength = field["mcpo.maxValueLength"];
  return limits;
}

function join(path: string, name: string): string {
  return path === "$" ? name : `${path}.${name}`;
}

/** Named types (records, enums, fixed) by name; `trusted` as in {@link ValidatorOptions}. */
type NamedTypes = Map<string, Record<string, unknown>> & { trusted?: boolean };

function compileType(
  type: unknown,
  field: FieldSchema | undefined,
  path: string,
  named: NamedTypes,
): Check {
  if (typeof type === "string") {
    const definition = named.get(type);
    return definition
      ? compileType(definition, field, path, named)
      : compilePrimitive(type, field, path);
  }
  if (Array.isArray(type)) return compileUnion(type, field, path, named);
  if (typeof type !== "object" || type === null)
    throw new Error(`bad Avro type ${JSON.stringify(type)}`);
  const object = type as Record<string, unknown>;
  switch (object.type) {
    case "record":
      named.set(object.name as string, object);
      return compileRecord(object, path, named);
    case "enum": {
      named.set(object.name as string, object);
      const symbols = new Set(object.symbols as string[]);
      const reason = `expected one of ${[...symbols].join(", ")}`;
      return (value) =>
        typeof value === "string" && symbols.has(value) ? undefined : issue(path, reason, value);
    }
    case "map": {
      // Entries are checked at a placeholder path; a failure is reported at the entry's own path.
      // A key's failure is reported at the map's path (a key too long to name is not repeated).
      const maxEntries = field?.["mcpo.maxEntries"];
      const maxKeyLength = field?.["mcpo.maxKeyLength"];
      const maxValueLength = field?.["mcpo.maxValueLength"];
      const values = compileType(
        object.values,
        maxValueLength === undefined
          ? undefined
          : { name: "", type: object.values, "mcpo.maxLength": maxValueLength },
        "\u0000",
        named,
      );
      const keyTooLong = `has a key longer than ${maxKeyLength} characters (UTF-16 code units)`;
      return (value) => {
        if (typeof value !== "object" || value === null || Array.isArray(value))
          return issue(path, "expected a map (object)", value);
        let entries = 0;
        for (const key in value) {
          entries++;
          const nul = key.indexOf(NUL);
          if (nul !== -1) return issue(path, `has a key that ${nulReason(nul)}`, preview(key));
          if (maxKeyLength !== undefined && key.length > maxKeyLength)
            return issue(path, `${keyTooLong}: ${key.length}`, preview(key));
          const found = values((value as Record<string, unknown>)[key]);
          if (found) return relocate(found, `${path}[${JSON.stringify(key)}]`);
        }
        if (maxEntries !== undefined && entries > maxEntries)
          return issue(path, `has more than ${maxEntries} entries (${entries})`, entries);
        return undefined;
      };
    }
    case "fixed": {
      named.set(object.name as string, object);
      const size = object.size as number;
      const reason = `expected ${size} bytes (Buffer)`;
      return (value) =>
        Buffer.isBuffer(value) && value.length === size ? undefined : issue(path, reason, value);
    }
    case "array": {
      const items = compileType(object.items, undefined, "\u0000", named);
      return (value) => {
        if (!Array.isArray(value)) return issue(path, "expected an array", value);
        for (let i = 0; i < value.length; i++) {
          const found = items(value[i]);
          if (found) return relocate(found, `${path}[${i}]`);
        }
        return undefined;
      };
    }
    default:
      if (isBigintLong(object)) return compileBigint(field, path);
      return compilePrimitive(object.type as string, field, path);
  }
}

/** A long marked `mcpo.bigint`: a bigint within int64, and the field's bounds. */
function compileBigint(field: FieldSchema | undefined, path: string): Check {
  const min = field?.["mcpo.min"];
  const max = field?.["mcpo.max"];
  return (value) => {
    if (typeof value !== "bigint") return issue(path, "expected a bigint (long)", value);
    if (value < INT64_MIN || value > INT64_MAX)
      return issue(path, "outside the 64-bit long range", value);
    if (min !== undefined && value < min) return issue(path, `below minimum ${min}`, value);
    if (max !== undefined && value > max) return issue(path, `above maximum ${max}`, value);
    return undefined;
  };
}

function relocate(found: FieldIssue, at: string): FieldIssue {
  return { ...found, path: found.path.replace("\u0000", at) };
}

function compileUnion(
  branches: unknown[],
  field: FieldSchema | undefined,
  path: string,
  named: NamedTypes,
): Check {
  const nonNull = branches.filter((branch) => branch !== "null");
  if (nonNull.length !== 1) throw new Error("only [null, T] unions are used in the contract");
  const inner = compileType(nonNull[0], field, path, named);
  if (nonNull.length === branches.length) return inner;
  return (value) => (value === null ? undefined : inner(value));
}

function compileRecord(record: Record<string, unknown>, path: string, named: NamedTypes): Check {
  const fields = record.fields as FieldSchema[];
  const checks = fields.map((field) =>
    compileType(field.type, field, join(path, field.name), named),
  );
  const missing = fields.map((field) => issue(join(path, field.name), "missing", undefined));
  const notObject = (value: unknown): FieldIssue =>
    issue(path, `expected a ${String(record.name)} record (object)`, value);
  let body =
    "return function check(o) {\n" +
    "  if (typeof o !== 'object' || o === null || Array.isArray(o)) return notObject(o);\n" +
    "  let v, r;\n";
  fields.forEach((field, i) => {
    if (named.trusted === true && typeSaysItAll(field.type, field, named)) return;
    const fast = fastTest(field.type, field, named);
    body += `  v = o[${JSON.stringify(field.name)}];\n  if (v === undefined) return missing[${i}];\n`;
    body += fast
      ? `  if (!(${fast})) { r = checks[${i}](v); if (r !== undefined) return r; }\n`
      : `  r = checks[${i}](v); if (r !== undefined) return r;\n`;
  });
  body += "  return undefined;\n};";
  // eslint-disable-next-line @typescript-eslint/no-implied-eval -- generated from our own schema, as avsc does
  const factory = new Function("checks", "missing", "notObject", body) as (
    checks: Check[],
    missing: FieldIssue[],
    notObject: (value: unknown) => FieldIssue,
  ) => Check;
  return factory(checks, missing, notObject);
}

/** Whether a decoded value of this field can break nothing but its Avro type. */
function typeSaysItAll(type: unknown, field: FieldSchema, named: NamedTypes): boolean {
  if (Array.isArray(type))
    return type.every((branch) => branch === "null" || typeSaysItAll(branch, field, named));
  const resolved = typeof type === "string" ? (named.get(type) ?? type) : type;
  const name = typeof resolved === "string" ? resolved : (resolved as { type?: unknown }).type;
  const bounded = field["mcpo.min"] !== undefined || field["mcpo.max"] !== undefined;
  switch (name) {
    case "null":
    case "boolean":
    case "enum":
    case "fixed":
    case "bytes":
      return true;
    case "int":
    case "long":
      return !bounded;
    case "string":
    case "map":
      // Avro strings (and map keys) may hold a NUL, which the contract refuses.
      return false;
    case "array":
      return typeSaysItAll((resolved as { items?: unknown }).items, {} as FieldSchema, named);
    default:
      // Doubles can be NaN; records have fields of their own.
      return false;
  }
}

/**
 * A JavaScript expression over `v` that is true for a valid value of a simple type (the inline
 * fast path), or undefined when the type needs its compiled check every time.
 */
function fastTest(type: unknown, field: FieldSchema, named: NamedTypes): string | undefined {
  if (Array.isArray(type)) {
    const nonNull = type.filter((branch) => branch !== "null");
    const inner = nonNull.length === 1 ? fastTest(nonNull[0], field, named) : undefined;
    return inner === undefined ? undefined : `(v === null || (${inner}))`;
  }
  const name = typeof type === "string" ? type : (type as { type?: unknown }).type;
  const definition = typeof type === "string" ? named.get(type) : undefined;
  if (definition?.type === "enum" || name === "enum") {
    const symbols = ((definition ?? type) as { symbols: string[] }).symbols;
    return symbols.map((symbol) => `v === ${JSON.stringify(symbol)}`).join(" || ");
  }
  const min = field["mcpo.min"];
  const max = field["mcpo.max"];
  const bounds = `${min === undefined ? "" : ` && v >= ${min}`}${max === undefined ? "" : ` && v <= ${max}`}`;
  switch (name) {
    case "boolean":
      return "typeof v === 'boolean'";
    case "int":
      return `typeof v === 'number' && (v | 0) === v${bounds}`;
    case "long":
      return isBigintLong(type)
        ? `typeof v === 'bigint' && v >= ${INT64_MIN}n && v <= ${INT64_MAX}n${bounds}`
        : `typeof v === 'number' && Number.isSafeInteger(v) && v >= ${-LONG_MAX} && v <= ${LONG_MAX}${bounds}`;
    case "float":
    case "double":
      // NaN fails every comparison, so the slow path reports it.
      return bounds === ""
        ? "typeof v === 'number' && Number.isFinite(v)"
        : `typeof v === 'number'${bounds}`;
    case "string": {
      if (field["mcpo.format"] !== undefined) return undefined;
      const minLength = field["mcpo.minLength"];
      const maxLength = field["mcpo.maxLength"];
      return (
        "typeof v === 'string'" +
        (minLength === undefined ? "" : ` && v.length >= ${minLength}`) +
        (maxLength === undefined ? "" : ` && v.length <= ${maxLength}`) +
        " && v.indexOf('\\u0000') === -1"
      );
    }
    default:
      return undefined;
  }
}

/** Whether `text` is exactly `length` lower-case hex digits (and, if asked, not all zeros). */
export function isLowerHex(text: string, length: number, nonZero = false): boolean {
  if (text.length !== length) return false;
  let zero = true;
  for (let i = 0; i < length; i++) {
    const code = text.charCodeAt(i);
    if (code === 48) continue;
    zero = false;
    if (!((code > 48 && code <= 57) || (code >= 97 && code <= 102))) return false;
  }
  return !(nonZero && zero);
}

/** Whether `text` is a UUID in its canonical lower-case 8-4-4-4-12 form. */
export function isUuid(text: string): boolean {
  if (text.length !== 36) return false;
  for (let i = 0; i < 36; i++) {
    const code = text.charCodeAt(i);
    if (i === 8 || i === 13 || i === 18 || i === 23) {
      if (code !== 45) return false;
    } else if (!((code >= 48 && code <= 57) || (code >= 97 && code <= 102))) return false;
  }
  return true;
}

function compilePrimitive(name: string, field: FieldSchema | undefined, path: string): Check {
  const min = field?.["mcpo.min"];
  const max = field?.["mcpo.max"];
  const belowMin = `below minimum ${min}`;
  const aboveMax = `above maximum ${max}`;
  switch (name) {
    case "null":
      return (value) => (value === null ? undefined : issue(path, "expected null", value));
    case "boolean":
      return (value) =>
        typeof value === "boolean" ? undefined : issue(path, "expected a boolean", value);
    case "int":
    case "long": {
      const [low, high] = name === "int" ? [INT_MIN, INT_MAX] : [-LONG_MAX, LONG_MAX];
      const notInteger = `expected an integer (${name})`;
      const outside = `outside the exact ${name} range`;
      return (value) => {
        if (typeof value !== "number" || !Number.isInteger(value))
          return issue(path, notInteger, value);
        if (value < low || value > high) return issue(path, outside, value);
        if (min !== undefined && value < min) return issue(path, belowMin, value);
        if (max !== undefined && value > max) return issue(path, aboveMax, value);
        return undefined;
      };
    }
    case "float":
    case "double":
      return (value) => {
        if (typeof value !== "number") return issue(path, "expected a number", value);
        if (!Number.isFinite(value)) return issue(path, "must be a finite number", value);
        if (min !== undefined && value < min) return issue(path, belowMin, value);
        if (max !== undefined && value > max) return issue(path, aboveMax, value);
        return undefined;
      };
    case "string": {
      const minLength = field?.["mcpo.minLength"];
      const tooShort = `shorter than ${minLength} character(s)`;
      const maxLength = field?.["mcpo.maxLength"];
      const tooLong = `longer than ${maxLength} characters (UTF-16 code units)`;
      const format = field?.["mcpo.format"];
      const length = field?.["mcpo.length"] ?? 0;
      const nonZero = field?.["mcpo.nonZero"] === true;
      const badFormat =
        format === "uuid"
          ? "is not a lower-case UUID (8-4-4-4-12 hex digits)"
          : `is not ${length} lower-case hex digits${nonZero ? ", not all zero" : ""}`;
      return (value) => {
        if (typeof value !== "string") return issue(path, "expected a string", value);
        const nul = value.indexOf(NUL);
        if (nul !== -1) return issue(path, nulReason(nul), preview(value));
        if (minLength !== undefined && value.length < minLength)
          return issue(path, tooShort, value);
        if (maxLength !== undefined && value.length > maxLength)
          return issue(path, `${tooLong}: ${value.length}`, preview(value));
        if (format === "uuid" && !isUuid(value)) return issue(path, badFormat, value);
        if (format === "hex" && !isLowerHex(value, length, nonZero))
          return issue(path, badFormat, value);
        return undefined;
      };
    }
    case "bytes":
      return (value) =>
        Buffer.isBuffer(value) ? undefined : issue(path, "expected bytes (Buffer)", value);
    default:
      throw new Error(`unknown Avro type ${name} at ${path}`);
  }
}
