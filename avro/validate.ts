/**
 * Validation of `unknown` values against the contract's Avro schemas, compiled once per schema.
 * Checks the Avro types (so a JSON or hand-built value is caught before encoding), finite numbers,
 * safe integers, and the contract's own field constraints, which the `.avsc` files carry as
 * attributes: `mcpo.min`, `mcpo.max`, `mcpo.pattern`, `mcpo.minLength`.
 */
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

type Check = (value: unknown, path: string) => FieldIssue | undefined;

interface FieldSchema {
  name: string;
  type: unknown;
  "mcpo.min"?: number;
  "mcpo.max"?: number;
  "mcpo.pattern"?: string;
  "mcpo.minLength"?: number;
}

const INT_MIN = -(2 ** 31);
const INT_MAX = 2 ** 31 - 1;

/** Compiles a validator for a record schema (as in the `.avsc` files). */
export function compileValidator(schema: AvroSchema): Validator {
  const named = new Map<string, Check>();
  const check = compileType(schema, undefined, named);
  return (value) => check(value, "$");
}

function issue(path: string, reason: string, value: unknown): FieldIssue {
  return { path, reason, value };
}

function join(path: string, name: string): string {
  return path === "$" ? name : `${path}.${name}`;
}

function compileType(
  type: unknown,
  field: FieldSchema | undefined,
  named: Map<string, Check>,
): Check {
  if (typeof type === "string") return compilePrimitive(type, field, named);
  if (Array.isArray(type)) return compileUnion(type, field, named);
  if (typeof type !== "object" || type === null)
    throw new Error(`bad Avro type ${JSON.stringify(type)}`);
  const object = type as Record<string, unknown>;
  switch (object.type) {
    case "record":
      return compileRecord(object, named);
    case "enum": {
      const symbols = new Set(object.symbols as string[]);
      const check: Check = (value, path) =>
        typeof value === "string" && symbols.has(value)
          ? undefined
          : issue(path, `expected one of ${[...symbols].join(", ")}`, value);
      named.set(object.name as string, check);
      return check;
    }
    case "map": {
      const values = compileType(object.values, undefined, named);
      return (value, path) => {
        if (typeof value !== "object" || value === null || Array.isArray(value))
          return issue(path, "expected a map (object)", value);
        for (const [key, entry] of Object.entries(value)) {
          const found = values(entry, `${path}[${JSON.stringify(key)}]`);
          if (found) return found;
        }
        return undefined;
      };
    }
    case "array": {
      const items = compileType(object.items, undefined, named);
      return (value, path) => {
        if (!Array.isArray(value)) return issue(path, "expected an array", value);
        for (let i = 0; i < value.length; i++) {
          const found = items(value[i], `${path}[${i}]`);
          if (found) return found;
        }
        return undefined;
      };
    }
    default:
      return compilePrimitive(object.type as string, field, named);
  }
}

function compileUnion(
  branches: unknown[],
  field: FieldSchema | undefined,
  named: Map<string, Check>,
): Check {
  const nonNull = branches.filter((branch) => branch !== "null");
  const nullable = nonNull.length < branches.length;
  if (nonNull.length !== 1) throw new Error("only [null, T] unions are used in the contract");
  const inner = compileType(nonNull[0], field, named);
  return (value, path) => {
    if (value === null) return nullable ? undefined : issue(path, "must not be null", value);
    return inner(value, path);
  };
}

function compileRecord(record: Record<string, unknown>, named: Map<string, Check>): Check {
  const fields = record.fields as FieldSchema[];
  const checks: [string, Check][] = [];
  const check: Check = (value, path) => {
    if (typeof value !== "object" || value === null || Array.isArray(value))
      return issue(path, `expected a ${String(record.name)} record (object)`, value);
    const object = value as Record<string, unknown>;
    for (const [name, fieldCheck] of checks) {
      const fieldPath = join(path, name);
      if (!(name in object)) return issue(fieldPath, "missing", undefined);
      const found = fieldCheck(object[name], fieldPath);
      if (found) return found;
    }
    return undefined;
  };
  named.set(record.name as string, check);
  for (const field of fields) checks.push([field.name, compileType(field.type, field, named)]);
  return check;
}

function compilePrimitive(
  name: string,
  field: FieldSchema | undefined,
  named: Map<string, Check>,
): Check {
  const min = field?.["mcpo.min"];
  const max = field?.["mcpo.max"];
  const range: Check = (value, path) => {
    const number = value as number;
    if (min !== undefined && number < min) return issue(path, `below minimum ${min}`, value);
    if (max !== undefined && number > max) return issue(path, `above maximum ${max}`, value);
    return undefined;
  };
  switch (name) {
    case "null":
      return (value, path) => (value === null ? undefined : issue(path, "expected null", value));
    case "boolean":
      return (value, path) =>
        typeof value === "boolean" ? undefined : issue(path, "expected a boolean", value);
    case "int":
    case "long": {
      const [low, high] =
        name === "int" ? [INT_MIN, INT_MAX] : [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER];
      return (value, path) => {
        if (typeof value !== "number" || !Number.isInteger(value))
          return issue(path, `expected an integer (${name})`, value);
        if (value < low || value > high)
          return issue(path, `outside the exact ${name} range`, value);
        return range(value, path);
      };
    }
    case "float":
    case "double":
      return (value, path) => {
        if (typeof value !== "number") return issue(path, "expected a number", value);
        if (!Number.isFinite(value)) return issue(path, "must be a finite number", value);
        return range(value, path);
      };
    case "string": {
      const pattern =
        field?.["mcpo.pattern"] === undefined ? undefined : new RegExp(field["mcpo.pattern"]);
      const minLength = field?.["mcpo.minLength"];
      return (value, path) => {
        if (typeof value !== "string") return issue(path, "expected a string", value);
        if (minLength !== undefined && value.length < minLength)
          return issue(path, `shorter than ${minLength} character(s)`, value);
        if (pattern && !pattern.test(value))
          return issue(path, `does not match ${pattern.source}`, value);
        return undefined;
      };
    }
    case "bytes":
      return (value, path) =>
        Buffer.isBuffer(value) ? undefined : issue(path, "expected bytes (Buffer)", value);
    default: {
      // A reference to a named type defined earlier in the schema.
      return (value, path) => {
        const check = named.get(name);
        if (!check) return issue(path, `unknown Avro type ${name}`, value);
        return check(value, path);
      };
    }
  }
}
