/** The published shape: `npm run build` emits every subpath export the package declares. */
import { execFile } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";

import { beforeAll, describe, expect, it } from "vitest";

import pg from "pg";

import { REPO_ROOT } from "./support/cli.js";
import { createDatabase, dropDatabase } from "./support/isolation.js";

const run = promisify(execFile);

interface PackageJson {
  name: string;
  license: string;
  type: string;
  exports: Record<string, string | { types: string; import: string }>;
  bin: Record<string, string>;
}

const pkg = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as PackageJson;

describe("package", () => {
  beforeAll(async () => {
    await run("npm", ["run", "-s", "build"], { cwd: REPO_ROOT, timeout: 120_000 });
  });

  it("is mcp-observatory, ESM, Apache-2.0 with the licence text", () => {
    expect(pkg.name).toBe("mcp-observatory");
    expect(pkg.type).toBe("module");
    expect(pkg.license).toBe("Apache-2.0");
    const licence = readFileSync(join(REPO_ROOT, "LICENSE"), "utf8");
    expect(licence).toContain("Apache License");
    expect(licence).toContain("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION");
    expect(licence).toContain("END OF TERMS AND CONDITIONS");
  });

  it("builds every subpath export, with types, and each one loads in plain Node.js", async () => {
    const modules = Object.entries(pkg.exports).filter(([, target]) => typeof target !== "string");
    expect(modules.length, "subpath exports with types and an import").toBeGreaterThan(1);
    for (const [subpath, target] of modules) {
      if (typeof target === "string") continue; // ./package.json, filtered out above
      expect(existsSync(join(REPO_ROOT, target.types)), `${subpath} types`).toBe(true);
      // A separate node process: Node's own ESM loader, not the test runner's module graph
      // (CommonJS dependencies expose fewer named exports there).
      const url = pathToFileURL(join(REPO_ROOT, target.import)).href;
      const { stdout } = await run(
        process.execPath,
        [
          "--input-type=module",
          "-e",
          `const m = await import(${JSON.stringify(url)}); console.log(Object.keys(m).length);`,
        ],
        { cwd: REPO_ROOT, timeout: 60_000 },
      );
      expect(Number(stdout.trim()), `${subpath} exports something`).toBeGreaterThan(0);
    }
  });

  it("ships only product code in dist/: the parts' folders, no scripts, tests or benchmarks", () => {
    expect(readdirSync(join(REPO_ROOT, "dist")).sort()).toEqual(
      [
        "avro",
        "cli",
        "config",
        "kafka",
        "metrics",
        "ops",
        "otlp",
        "processor",
        "producer",
        "sink",
        "stack",
        "ui",
      ].sort(),
    );
  });

  it("imports kafkajs only behind the kafka/ boundary", () => {
    const offenders: string[] = [];
    const walk = (dir: string): void => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        const path = join(dir, entry.name);
        if (entry.isDirectory()) walk(path);
        else if (entry.name.endsWith(".js") && /from "kafkajs"/.test(readFileSync(path, "utf8")))
          offenders.push(relative(REPO_ROOT, path));
      }
    };
    walk(join(REPO_ROOT, "dist"));
    expect(offenders).toEqual(["dist/kafka/index.js"]);
  });

  it("installs the mcp-observatory command, which runs in plain Node.js", async () => {
    expect(Object.keys(pkg.bin)).toEqual(["mcp-observatory"]);
    const bin = join(REPO_ROOT, pkg.bin["mcp-observatory"] ?? "");
    expect(readFileSync(bin, "utf8").startsWith("#!/usr/bin/env node")).toBe(true);
    const { stdout } = await run(process.execPath, [bin, "--help"], {
      cwd: REPO_ROOT,
      timeout: 60_000,
    });
    expect(stdout).toContain("Usage: mcp-observatory");
    expect(stdout).toMatch(/^ {2}replay \[options\]/m);
  });

  it("runs the seed's quick start as written: a span and a rollup row land in PostgreSQL", async () => {
    const database = await createDatabase("mcpo_qs");
    try {
      const { stdout } = await run(
        process.execPath,
        ["--import", "tsx", "examples/quickstart.ts"],
        {
          cwd: REPO_ROOT,
          env: { ...process.env, DATABASE_URL: database.url },
          timeout: 120_000,
        },
      );
      expect(stdout).toContain("confidence_gate_block_rate_high");
      const client = new pg.Client({ connectionString: database.url });
      await client.connect();
      try {
        const spans = await client.query<{ service: string; model: string; confidence: number }>(
          "select service, model, confidence from spans",
        );
        expect(spans.rows).toEqual([{ service: "example-mcp", model: "gpt-4o", confidence: 0.64 }]);
        const rollups = await client.query<{ scope: string; model: string; calls: string }>(
          "select scope, model, calls::text from metric_rollups order by scope desc, model",
        );
        expect(rollups.rows).toEqual([
          { scope: "service", model: "", calls: "1" },
          { scope: "model", model: "gpt-4o", calls: "1" },
        ]);
      } finally {
        await client.end();
      }
    } finally {
      await dropDatabase(database);
    }
  });

  it("builds its command-line entry points with a node shebang", () => {
    for (const [name, target] of Object.entries(pkg.bin)) {
      const text = readFileSync(join(REPO_ROOT, target), "utf8");
      expect(text.startsWith("#!/usr/bin/env node"), name).toBe(true);
    }
  });
});
