/** The published shape: `npm run build` emits every subpath export the package declares. */
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";

import { beforeAll, describe, expect, it } from "vitest";

import { REPO_ROOT } from "./support/cli.js";

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
    for (const [subpath, target] of Object.entries(pkg.exports)) {
      if (typeof target === "string") continue; // ./package.json
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

  it("builds its command-line entry points with a node shebang", () => {
    for (const [name, target] of Object.entries(pkg.bin)) {
      const text = readFileSync(join(REPO_ROOT, target), "utf8");
      expect(text.startsWith("#!/usr/bin/env node"), name).toBe(true);
    }
  });
});
