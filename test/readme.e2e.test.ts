/** The README's commands, as a newcomer types them. */
import { readFileSync } from "node:fs";

import { describe, expect, it } from "vitest";

import { REPO_ROOT, runTs } from "./support/cli.js";
import { services } from "./support/isolation.js";

const readme = readFileSync(`${REPO_ROOT}/README.md`, "utf8");
const scripts = (
  JSON.parse(readFileSync(`${REPO_ROOT}/package.json`, "utf8")) as {
    scripts: Record<string, string>;
  }
).scripts;

describe("README", () => {
  it("names only npm scripts that exist, and `npm test` is `vitest run` (every tier)", () => {
    const named = [...readme.matchAll(/npm run (?:-s )?([\w:-]+)/g)].map((match) => match[1]);
    expect(named.length).toBeGreaterThan(5);
    for (const name of named) expect(Object.keys(scripts), `npm run ${name}`).toContain(name);
    expect(readme).toContain("npm test");
    // `npm test` runs every tier (no --project filter), as the README's Tests section says.
    expect(scripts.test).toBe("vitest run");
  });

  it("is the test command CI runs", () => {
    const ci = readFileSync(`${REPO_ROOT}/.ci/run`, "utf8");
    expect(ci).toMatch(/^npm test$/m);
  });

  it("runs the main job: `npm run smoke` pushes events through Kafka, the registry and PostgreSQL", async () => {
    const endpoints = services();
    const result = await runTs("scripts/smoke.ts", [], {
      env: {
        ...process.env,
        KAFKA_BROKERS: endpoints.kafkaBrokers,
        SCHEMA_REGISTRY_URL: endpoints.schemaRegistryUrl,
        DATABASE_URL: endpoints.databaseUrl,
      },
    });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/schema id \d+/);
    expect(result.stdout).toContain("consumed and decoded 3 events back");
    expect(result.stdout).toContain("3 calls, 2 with a known cost, total $0.002915000");
    expect(result.stdout).toMatch(/smoke ok in \d+\.\d s/);
  });

  it("shows examples/cached-cost.ts as it is, and what it prints: a cached call's cost", async () => {
    const example = readFileSync(`${REPO_ROOT}/examples/cached-cost.ts`, "utf8");
    const code = /\/\/ README: begin\n([\s\S]*?)\/\/ README: end\n/.exec(example)?.[1];
    expect(code).toBeDefined();
    expect(readme).toContain(`\`\`\`ts\n${code ?? ""}\`\`\``);
    const result = await runTs("examples/cached-cost.ts", []);
    expect(result.code, result.stderr).toBe(0);
    // The README's output block is what the example prints, computed by the code.
    expect(result.stdout).toBe("10050 9000 6900000\n10050 null 30450000\n");
    expect(readme).toContain(`\`\`\`\n${result.stdout}\`\`\``);
    expect(readme).toContain("the cached call costs $0.0069, the\nsame tokens uncached $0.03045");
  });

  it("stops with the key's name when a connection setting is invalid", async () => {
    const result = await runTs("scripts/smoke.ts", [], {
      env: { ...process.env, KAFKA_BROKERS: "not a broker list" },
    });
    expect(result.code).toBe(2);
    expect(result.stderr).toContain("KAFKA_BROKERS");
  });
});
