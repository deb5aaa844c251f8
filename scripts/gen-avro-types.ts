/**
 * Generates `avro/generated.ts` from the `.avsc` files, the event contract's source of truth:
 * TypeScript types for every record and enum, the schemas themselves as constants, and a table
 * of the OpenTelemetry names the fields map to. `npm run gen:avro` writes the file;
 * `test/avro-generated.unit.test.ts` fails when it is out of date.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The contract's schema files, in the order they are emitted. */
export const SCHEMA_FILES = [
  "ModelCallEvent.avsc",
  "MetricRollup.avsc",
  "AlertEvent.avsc",
] as const;

const AVRO_DIR = fileURLToPath(new URL("../avro/", import.meta.url));
export const GENERATED_PATH = join(AVRO_DIR, "generated.ts");
export const CONTRACT_DOC_PATH = join(AVRO_DIR, "CONTRACT.md");

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
interface AvroField {
  name: string;
  type: AvroType;
  doc?: string;
  default?: Json;
  otel?: string;
}
type AvroType =
  | string
  | AvroType[]
  | { type: "record"; name: string; doc?: string; fields: AvroField[] }
  | { type: "enum"; name: string; symbols: string[]; doc?: string }
  | { type: "fixed"; name: string; size: number }
  | { type: "map"; values: AvroType }
  | { type: "array"; items: AvroType }
  | { type: string; logicalType?: string };

const PRIMITIVES: Record<string, string> = {
  string: "string",
  int: "number",
  long: "number",
  float: "number",
  double: "number",
  boolean: "boolean",
  bytes: "Buffer",
  null: "null",
};

function constName(name: string): string {
  return name.replace(/([a-z0-9])([A-Z])/g, "$1_$2").toUpperCase();
}

function docComment(text: string | undefined, indent: string): string {
  if (text === undefined || text === "") return "";
  return `${indent}/** ${text.replace(/\*\//g, "*\\/")} */\n`;
}

/** Emits declarations for named types (records, enums) depth-first, each once. */
function collect(type: AvroType, out: string[], seen: Set<string>): string {
  if (typeof type === "string") {
    const primitive = PRIMITIVES[type];
    if (primitive !== undefined) return primitive;
    return type; // a reference to a named type emitted already
  }
  if (Array.isArray(type)) return type.map((branch) => collect(branch, out, seen)).join(" | ");
  switch (type.type) {
    case "record": {
      const record = type as { name: string; doc?: string; fields: AvroField[] };
      const lines = record.fields.map((field) => {
        const tsType = collect(field.type, out, seen);
        const doc =
          field.doc === undefined
            ? field.otel === undefined
              ? undefined
              : `OpenTelemetry: \`${field.otel}\`.`
            : field.otel === undefined
              ? field.doc
              : `${field.doc} OpenTelemetry: \`${field.otel}\`.`;
        return `${docComment(doc, "  ")}  readonly ${field.name}: ${tsType};\n`;
      });
      if (!seen.has(record.name)) {
        seen.add(record.name);
        out.push(
          `${docComment(record.doc, "")}export interface ${record.name} {\n${lines.join("")}}\n`,
        );
      }
      return record.name;
    }
    case "enum": {
      const enumType = type as { name: string; symbols: string[]; doc?: string };
      if (!seen.has(enumType.name)) {
        seen.add(enumType.name);
        const symbols = enumType.symbols.map((symbol) => JSON.stringify(symbol));
        out.push(
          `${docComment(enumType.doc, "")}export type ${enumType.name} = ${symbols.join(" | ")};\n` +
            `/** The symbols of {@link ${enumType.name}}, in schema order. */\n` +
            `export const ${constName(enumType.name)}_SYMBOLS: readonly ${enumType.name}[] = [${symbols.join(", ")}];\n`,
        );
      }
      return enumType.name;
    }
    case "fixed": {
      const fixed = type as { name: string; size: number };
      if (!seen.has(fixed.name)) {
        seen.add(fixed.name);
        out.push(`/** ${fixed.size} bytes (Avro fixed). */\nexport type ${fixed.name} = Buffer;\n`);
      }
      return fixed.name;
    }
    case "map":
      return `Readonly<Record<string, ${collect((type as { values: AvroType }).values, out, seen)}>>`;
    case "array":
      return `readonly ${wrap(collect((type as { items: AvroType }).items, out, seen))}[]`;
    default: {
      // A long marked `"mcpo.bigint": true` (avro/bigint.ts) is a bigint: a sum that may pass 2^53.
      if (type.type === "long" && (type as Record<string, unknown>)["mcpo.bigint"] === true)
        return "bigint";
      const primitive = PRIMITIVES[type.type];
      if (primitive === undefined) throw new Error(`unsupported Avro type ${JSON.stringify(type)}`);
      return primitive;
    }
  }
}

function wrap(tsType: string): string {
  return tsType.includes(" ") ? `(${tsType})` : tsType;
}

function otelRows(schema: AvroType, prefix: string, rows: string[]): void {
  if (typeof schema !== "object" || Array.isArray(schema) || schema.type !== "record") return;
  for (const field of (schema as { fields: AvroField[] }).fields) {
    if (field.otel !== undefined)
      rows.push(`  ${JSON.stringify(prefix + field.name)}: ${JSON.stringify(field.otel)},\n`);
  }
}

/** The generated module's text. */
export function generate(): string {
  const out: string[] = [];
  const seen = new Set<string>();
  const schemaConsts: string[] = [];
  const otel: string[] = [];
  for (const file of SCHEMA_FILES) {
    const schema = JSON.parse(readFileSync(join(AVRO_DIR, file), "utf8")) as AvroType;
    collect(schema, out, seen);
    const name = file.replace(/\.avsc$/, "");
    schemaConsts.push(
      `/** The schema of {@link ${name}}, as in avro/${file}. */\n` +
        `export const ${constName(name)}_SCHEMA: AvroSchema = ${JSON.stringify(schema)};\n`,
    );
    otelRows(schema, `${name}.`, otel);
  }
  return (
    "// Generated by scripts/gen-avro-types.ts from avro/*.avsc. Do not edit: run `npm run gen:avro`.\n\n" +
    "/** A parsed Avro schema (JSON). */\n" +
    "export type AvroSchema = Readonly<Record<string, unknown>>;\n\n" +
    out.join("\n") +
    "\n" +
    schemaConsts.join("\n") +
    "\n/** Record field → the OpenTelemetry attribute (or span field) it corresponds to. */\n" +
    `export const OTEL_FIELD_MAPPING: Readonly<Record<string, string>> = {\n${otel.join("")}};\n`
  );
}

function typeLabel(type: AvroType): string {
  if (typeof type === "string") return type;
  if (Array.isArray(type)) {
    const inner = type.filter((branch) => branch !== "null").map(typeLabel);
    return type.includes("null") ? `${inner.join(" \\| ")}, nullable` : inner.join(" \\| ");
  }
  switch (type.type) {
    case "record":
      return (type as { name: string }).name;
    case "enum":
      return `${(type as { name: string }).name}: ${(type as { symbols: string[] }).symbols.join(", ")}`;
    case "fixed":
      return `${(type as { name: string }).name} (${(type as { size: number }).size} bytes)`;
    case "map":
      return `map<${typeLabel((type as { values: AvroType }).values)}>`;
    case "array":
      return `array<${typeLabel((type as { items: AvroType }).items)}>`;
    default: {
      if ((type as Record<string, unknown>)["mcpo.bigint"] === true)
        return `${type.type} (bigint in TypeScript)`;
      const logical = (type as { logicalType?: string }).logicalType;
      return logical === undefined ? type.type : `${type.type} (${logical})`;
    }
  }
}

function constraints(field: Record<string, unknown>): string {
  const parts: string[] = [];
  const { "mcpo.min": min, "mcpo.max": max } = field;
  if (typeof min === "number") parts.push(`≥ ${min}`);
  if (typeof max === "number") parts.push(`≤ ${max}`);
  if (field["mcpo.minLength"] !== undefined) parts.push("non-empty");
  if (typeof field["mcpo.maxLength"] === "number")
    parts.push(`≤ ${field["mcpo.maxLength"]} characters`);
  if (typeof field["mcpo.maxEntries"] === "number")
    parts.push(`≤ ${field["mcpo.maxEntries"]} entries`);
  if (typeof field["mcpo.maxKeyLength"] === "number")
    parts.push(`keys ≤ ${field["mcpo.maxKeyLength"]} characters`);
  if (typeof field["mcpo.maxValueLength"] === "number")
    parts.push(`values ≤ ${field["mcpo.maxValueLength"]} characters`);
  if (field["mcpo.format"] === "uuid") parts.push("UUID");
  if (field["mcpo.format"] === "hex")
    parts.push(
      `${String(field["mcpo.length"])} hex digits${field["mcpo.nonZero"] === true ? ", not all zero" : ""}`,
    );
  return parts.join(", ");
}

function documentRecord(
  record: { name: string; doc?: string; fields: AvroField[] },
  out: string[],
): void {
  out.push(`### ${record.name}\n\n${record.doc ?? ""}\n\n`);
  out.push("| field | type | constraint | OpenTelemetry | meaning |\n|---|---|---|---|---|\n");
  const nested: { name: string; doc?: string; fields: AvroField[] }[] = [];
  for (const field of record.fields) {
    const type = field.type;
    if (typeof type === "object" && !Array.isArray(type) && type.type === "record")
      nested.push(type as { name: string; doc?: string; fields: AvroField[] });
    const otel = field.otel === undefined ? "" : `\`${field.otel}\``;
    const doc = (field.doc ?? "").replace(/\|/g, "\\|");
    out.push(
      `| \`${field.name}\` | ${typeLabel(type)} | ${constraints(field as unknown as Record<string, unknown>)} | ${otel} | ${doc} |\n`,
    );
  }
  out.push("\n");
  for (const inner of nested) documentRecord(inner, out);
}

/** The contract's field reference (markdown), generated like the types. */
export function generateDoc(): string {
  const out: string[] = [
    "# Event contract: field reference\n\n",
    "Generated by `scripts/gen-avro-types.ts` from the `.avsc` files (`npm run gen:avro`); do not edit.\n",
    "Times are microseconds since the Unix epoch (UTC); money is integer nano-USD (1e-9 USD).\n",
    "No string and no map key contains U+0000 (NUL): PostgreSQL's text cannot hold it. Lengths\n",
    "count UTF-16 code units (JavaScript's `length`; at most 3 UTF-8 bytes each).\n",
    "A `long` is a JavaScript number from −(2^53 − 2) to 2^53 − 2 (what avsc reads and writes\n",
    'exactly as a number), except a `long (bigint in TypeScript)` (`"mcpo.bigint": true` in the\n',
    "`.avsc`): a window's sums, exact 64-bit integers (up to 2^63 − 1) as JavaScript bigints, and\n",
    "decimal strings in JSON.\n\n",
  ];
  for (const file of SCHEMA_FILES) {
    const schema = JSON.parse(readFileSync(join(AVRO_DIR, file), "utf8")) as {
      name: string;
      doc?: string;
      fields: AvroField[];
    };
    out.push(`## ${schema.name} (\`avro/${file}\`)\n\n`);
    documentRecord(schema, out);
  }
  return out.join("");
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  writeFileSync(GENERATED_PATH, generate());
  writeFileSync(CONTRACT_DOC_PATH, generateDoc());
  process.stdout.write(`wrote ${GENERATED_PATH} and ${CONTRACT_DOC_PATH}\n`);
}
