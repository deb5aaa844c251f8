import { defineConfig } from "vitest/config";

const exclude = ["**/node_modules/**", "dist/**", ".stack/**"];
const globalSetup = ["test/support/global-setup.ts"];

/**
 * Tiers by file name: `*.unit.test.ts` (pure), `*.int.test.ts` (real Kafka, registry, Postgres),
 * `*.e2e.test.ts` (the CLI and the README's commands). `npm test` runs all three.
 */
export default defineConfig({
  test: {
    // Two cores: more workers than that only queue behind Kafka and the JVMs.
    maxWorkers: 2,
    projects: [
      {
        test: {
          name: "unit",
          include: ["**/*.unit.test.ts"],
          exclude,
        },
      },
      {
        test: {
          name: "int",
          include: ["**/*.int.test.ts"],
          exclude,
          globalSetup,
          testTimeout: 60_000,
          hookTimeout: 240_000,
        },
      },
      {
        test: {
          name: "e2e",
          include: ["**/*.e2e.test.ts"],
          exclude,
          globalSetup,
          testTimeout: 120_000,
          hookTimeout: 240_000,
        },
      },
    ],
  },
});
