/**
 * The newcomer's path: nothing configured, so `demo` brings up the local stack itself (here on
 * ports of its own), and stops what it started — when it is done, and on Ctrl-C.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { DemoSummary } from "../cli/commands/demo.js";
import { loadStackConfig } from "../stack/index.js";
import { portIsFree } from "../stack/process.js";
import { REPO_ROOT, runTs } from "./support/cli.js";
import {
  createDatabase,
  dropDatabase,
  uniqueName,
  type FreshDatabase,
} from "./support/isolation.js";
import { freePort } from "./support/ports.js";
import { waitFor } from "./support/wait.js";

let stackDir: string;
let database: FreshDatabase;
let env: NodeJS.ProcessEnv;
let ports: { kafka: number; registry: number };

/** Spans in the demo's database, counted by this test. */
async function spansStored(): Promise<number> {
  const client = new pg.Client({ connectionString: database.url });
  await client.connect();
  try {
    const result = await client
      .query<{ count: string }>("select count(*)::text as count from spans")
      .catch((error: unknown) => {
        // Before the demo applied its migrations the table does not exist yet.
        if ((error as { code?: string }).code === "42P01") return { rows: [{ count: "0" }] };
        throw error;
      });
    return Number(result.rows[0]?.count ?? 0);
  } finally {
    await client.end();
  }
}

describe("demo with nothing configured", () => {
  beforeAll(async () => {
    stackDir = mkdtempSync(join(tmpdir(), "mcpo-demo-stack-"));
    database = await createDatabase("mcpo_demo");
    ports = { kafka: await freePort(), registry: await freePort() };
    const prefix = `${uniqueName("demo")}.`;
    env = {
      ...process.env,
      STACK_DIR: stackDir,
      STACK_DIST_DIR: loadStackConfig().distDir,
      STACK_KAFKA_PORT: String(ports.kafka),
      STACK_KAFKA_CONTROLLER_PORT: String(await freePort()),
      STACK_REGISTRY_PORT: String(ports.registry),
      STACK_REGISTRY_MANAGEMENT_PORT: String(await freePort()),
      DATABASE_URL: database.url,
      MCPO_TOPIC_PREFIX: prefix,
      MCPO_PROCESSOR_GROUP: `${prefix}processor`,
      MCPO_SINK_GROUP: `${prefix}sink`,
    };
    // Nothing configured: no Kafka, no registry, no config file.
    delete env.KAFKA_BROKERS;
    delete env.SCHEMA_REGISTRY_URL;
    delete env.MCPO_CONFIG;
  });

  afterAll(async () => {
    await runTs("cli/main.ts", ["stack", "down"], { env });
    await dropDatabase(database).catch(() => undefined);
    rmSync(stackDir, { recursive: true, force: true });
  });

  it("brings up the local stack, runs the fleet through it (every call sent is a span in PostgreSQL), and stops the stack it started", async () => {
    const result = await runTs(
      "cli/main.ts",
      ["demo", "--duration", "8s", "--rate", "200", "--services", "2", "--replicas", "2", "--json"],
      { env },
    );
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toContain(
      "no Kafka or schema registry configured: starting the local stack",
    );
    expect(result.stderr).toContain(`127.0.0.1:${ports.kafka} answers`);
    const summary = JSON.parse(result.stdout.trim().split("\n").at(-1) ?? "{}") as DemoSummary;
    expect(summary.localStack).toBe("started-and-stopped");
    expect(summary.totals.sent).toBeGreaterThan(0);
    expect(summary.totals.sent).toBe(summary.totals.produced);
    expect(summary.totals.spans).toBe(summary.totals.sent);
    // Counted here, not by the demo's own summary query.
    expect(await spansStored()).toBe(summary.totals.sent);
    expect(result.stderr).toContain(
      "stopping the local stack services this demo started (kafka, registry)",
    );
    expect(await portIsFree(ports.kafka)).toBe(true);
    expect(await portIsFree(ports.registry)).toBe(true);
  }, 240_000);

  it("on Ctrl-C mid-run (spans already stored) says it is stopping, exits 130, and stops the stack it started", async () => {
    const child = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        "cli/main.ts",
        "demo",
        "--duration",
        "5m",
        "--rate",
        "200",
        "--services",
        "2",
        "--replicas",
        "1",
      ],
      { cwd: REPO_ROOT, env, stdio: ["ignore", "pipe", "pipe"] },
    );
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    child.once("exit", (code, signal) => {
      exit = { code, signal };
    });
    const output = (): string => `stdout:\n${stdout.slice(-3000)}\nstderr:\n${stderr.slice(-3000)}`;
    try {
      // Mid-run: the fleet is producing and the sink has stored spans from it.
      await waitFor(
        "the demo's sink to store spans of the running fleet",
        async () => {
          if (exit)
            throw new Error(`the demo exited early (${JSON.stringify(exit)}):\n${output()}`);
          return { fleetStarted: stdout.includes("fleet: 2 services"), spans: await spansStored() };
        },
        (seen) => seen.fleetStarted && seen.spans > 0,
        { timeoutMs: 180_000, intervalMs: 500 },
      );
      child.kill("SIGINT");
      // A bound, not a speed target: only so that a hung shutdown fails with the output.
      await waitFor(
        "the demo to exit after Ctrl-C",
        () => (exit ? { exit } : { running: true, output: output().slice(-1500) }),
        (seen) => "exit" in seen,
        { timeoutMs: 90_000, intervalMs: 200 },
      );
    } finally {
      if (!exit) child.kill("SIGKILL");
    }
    expect(exit, output()).toEqual({ code: 130, signal: null });
    expect(stdout).toContain("stopping (Ctrl-C)");
    expect(stdout).toContain("stopping the local stack services this demo started");
    expect(await portIsFree(ports.kafka)).toBe(true);
    expect(await portIsFree(ports.registry)).toBe(true);
  }, 300_000);
});
