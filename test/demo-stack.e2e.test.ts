/**
 * The newcomer's path: nothing configured, so `demo` brings up the local stack itself (here on
 * ports of its own), and stops what it started — when it is done, and on Ctrl-C.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { DemoSummary } from "../cli/commands/demo.js";
import { loadStackConfig } from "../scripts/stack/index.js";
import { portIsFree } from "../scripts/stack/process.js";
import { REPO_ROOT, runTs } from "./support/cli.js";
import {
  createDatabase,
  dropDatabase,
  services,
  uniqueName,
  type FreshDatabase,
} from "./support/isolation.js";
import { freePort } from "./support/ports.js";

let stackDir: string;
let database: FreshDatabase;
let env: NodeJS.ProcessEnv;
let ports: { kafka: number; registry: number };

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
    expect(services().databaseUrl).toBeTruthy();
  });

  afterAll(async () => {
    await runTs("cli/main.ts", ["stack", "down"], { env });
    await dropDatabase(database).catch(() => undefined);
    rmSync(stackDir, { recursive: true, force: true });
  });

  it("brings up the local stack, runs the fleet through it, and stops the stack it started", async () => {
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
    expect(summary.totals.sent).toBe(summary.totals.produced);
    expect(summary.totals.spans).toBe(summary.totals.sent);
    expect(result.stderr).toContain(
      "stopping the local stack services this demo started (kafka, registry)",
    );
    expect(await portIsFree(ports.kafka)).toBe(true);
    expect(await portIsFree(ports.registry)).toBe(true);
  }, 240_000);

  it("on Ctrl-C stops the fleet, the processor, the sink and the stack it started, and exits 130", async () => {
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
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((resolve) =>
      child.once("exit", (code) => {
        resolve(code);
      }),
    );
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`the fleet did not start:\n${stdout}\n${stderr}`));
      }, 180_000);
      child.stdout.on("data", (chunk: Buffer) => {
        stdout += chunk.toString();
        if (stdout.includes("fleet: 2 services")) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    await new Promise((resolve) => setTimeout(resolve, 3000));
    const interrupted = Date.now();
    child.kill("SIGINT");
    expect(await exited).toBe(130);
    expect(Date.now() - interrupted).toBeLessThan(60_000);
    expect(stdout).toContain("stopping (Ctrl-C)");
    expect(stdout).toContain("stopping the local stack services this demo started");
    expect(await portIsFree(ports.kafka)).toBe(true);
    expect(await portIsFree(ports.registry)).toBe(true);
  }, 240_000);
});
