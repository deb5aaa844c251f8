/**
 * The local stack's command line, run as a user runs it, on ports and a folder of its own so it
 * does not disturb the stack the other tests use. The downloads are shared (STACK_DIST_DIR).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { loadStackConfig } from "../stack/config.js";
import { runTs, type CommandResult } from "./support/cli.js";
import { services, testKafka } from "./support/isolation.js";
import { freePort } from "./support/ports.js";

const CLI = "cli/main.ts";

/** Loopback-only check: the local addresses that listen on `port`, from /proc/net/tcp{,6}. */
function listeningAddresses(port: number): string[] {
  const found: string[] = [];
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    if (!existsSync(file)) continue;
    for (const line of readFileSync(file, "utf8").split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      const [address, portHex] = (fields[1] ?? "").split(":");
      if (fields[3] !== "0A" || portHex === undefined || parseInt(portHex, 16) !== port) continue;
      found.push(address ?? "");
    }
  }
  return found;
}

const LOOPBACK_V4 = "0100007F"; // 127.0.0.1, little-endian hex as /proc prints it
const LOOPBACK_V4_MAPPED = "0000000000000000FFFF00000100007F";
const LOOPBACK_V6 = "00000000000000000000000001000000";

function pidsOf(stackDir: string, service: string): number {
  const record = JSON.parse(readFileSync(join(stackDir, "run", `${service}.json`), "utf8")) as {
    pid: number;
  };
  return record.pid;
}

/** Whether a process still runs; an exited one not yet reaped by init (a zombie) does not. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

/** The shared Kafka and registry (which this file's stack must never stop) still answer. */
async function expectSharedServicesAnswer(): Promise<void> {
  const admin = testKafka().admin();
  await admin.connect();
  try {
    expect((await admin.describeCluster()).brokers.length).toBeGreaterThan(0);
  } finally {
    await admin.disconnect();
  }
  const subjects = await fetch(`${services().schemaRegistryUrl}/subjects`);
  expect(subjects.status).toBe(200);
}

describe("local stack CLI (up, status, down)", () => {
  let stackDir: string;
  let env: NodeJS.ProcessEnv;
  let ports: { kafka: number; controller: number; registry: number; management: number };
  const run = (command: string, extraEnv: NodeJS.ProcessEnv = {}): Promise<CommandResult> =>
    runTs(CLI, ["stack", command], { env: { ...env, ...extraEnv } });

  beforeAll(async () => {
    stackDir = mkdtempSync(join(tmpdir(), "mcpo-stack-e2e-"));
    ports = {
      kafka: await freePort(),
      controller: await freePort(),
      registry: await freePort(),
      management: await freePort(),
    };
    env = {
      ...process.env,
      STACK_DIR: stackDir,
      STACK_DIST_DIR: loadStackConfig().distDir,
      STACK_KAFKA_PORT: String(ports.kafka),
      STACK_KAFKA_CONTROLLER_PORT: String(ports.controller),
      STACK_REGISTRY_PORT: String(ports.registry),
      STACK_REGISTRY_MANAGEMENT_PORT: String(ports.management),
      DATABASE_URL: services().databaseUrl,
    };
    const fetched = await run("fetch");
    expect(fetched.code, fetched.stderr).toBe(0);
  });

  afterAll(async () => {
    await run("down");
    rmSync(stackDir, { recursive: true, force: true });
  });

  it("comes up on loopback only, is idempotent, stops its own processes while the shared services keep answering, and comes up again without formatting its storage again", async () => {
    const first = await run("up");
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toContain("started: kafka, registry");
    expect(first.stdout).toContain(`export KAFKA_BROKERS=127.0.0.1:${ports.kafka}`);
    expect(first.stdout).toContain(
      `export SCHEMA_REGISTRY_URL=http://127.0.0.1:${ports.registry}/apis/ccompat/v7`,
    );
    expect(first.stdout).toMatch(/stack up in \d+\.\d s/);
    const kafkaPid = pidsOf(stackDir, "kafka");
    const registryPid = pidsOf(stackDir, "registry");

    for (const port of Object.values(ports)) {
      const addresses = listeningAddresses(port);
      expect(addresses.length, `nothing listens on ${port}`).toBeGreaterThan(0);
      for (const address of addresses)
        expect([LOOPBACK_V4, LOOPBACK_V4_MAPPED, LOOPBACK_V6]).toContain(address);
    }

    const second = await run("up");
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).toContain("started: nothing, all were running");
    expect(pidsOf(stackDir, "kafka")).toBe(kafkaPid);

    const status = await run("status");
    expect(status.code, status.stdout).toBe(0);
    expect(status.stdout).toMatch(/kafka\s+up/);
    expect(status.stdout).toMatch(/registry\s+up/);

    const down = await run("down");
    expect(down.code, down.stderr).toBe(0);
    expect(alive(kafkaPid)).toBe(false);
    expect(alive(registryPid)).toBe(false);
    // Only its own: the services the other tests use still answer.
    await expectSharedServicesAnswer();
    expect(existsSync(join(stackDir, "run", "kafka.json"))).toBe(false);

    const afterDown = await run("status");
    expect(afterDown.code).toBe(3);
    expect(afterDown.stdout).toMatch(/kafka\s+down/);

    // A second `up` after `down` reuses the formatted storage and the registry's data.
    const again = await run("up");
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain("started: kafka, registry");
    expect(again.stdout).not.toContain("storage formatted");
    const restartedKafka = pidsOf(stackDir, "kafka");
    expect(restartedKafka).not.toBe(kafkaPid);
    const finalDown = await run("down");
    expect(finalDown.code).toBe(0);
    expect(alive(restartedKafka)).toBe(false);
    // Two cold starts of both JVMs and seven CLI runs: on a loaded two-core box this takes well
    // over the tier's default two minutes.
  }, 360_000);

  it("refuses a taken port, naming the port and the variable that moves it", async () => {
    const squatter: Server = createServer();
    await new Promise<void>((resolve, reject) => {
      // Taken already (e.g. a stack left running by a failed test above): say so, do not hang.
      squatter.once("error", (error) => {
        reject(new Error(`cannot squat port ${ports.kafka} for this test: ${error.message}`));
      });
      squatter.listen(ports.kafka, "127.0.0.1", resolve);
    });
    try {
      const result = await run("up");
      expect(result.code).toBe(1);
      expect(result.stderr).toContain("PORT_TAKEN");
      expect(result.stderr).toContain(`port ${ports.kafka}`);
      expect(result.stderr).toContain("STACK_KAFKA_PORT");
    } finally {
      await new Promise<void>((resolve) =>
        squatter.close(() => {
          resolve();
        }),
      );
    }
  });

  it("says clearly when Java is missing", async () => {
    const result = await run("up", {
      PATH: "/nonexistent",
      JAVA_HOME: "",
      STACK_JAVA_HOME: "/nonexistent-jdk",
    });
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("JAVA_MISSING");
    expect(result.stderr).toContain("STACK_JAVA_HOME");
  });

  it("says clearly when Maven is missing and the downloads are not there", async () => {
    const emptyDist = mkdtempSync(join(tmpdir(), "mcpo-dist-"));
    try {
      const result = await run("up", { PATH: "/nonexistent", STACK_DIST_DIR: emptyDist });
      expect(result.code).toBe(1);
      expect(result.stderr).toContain("MAVEN_MISSING");
    } finally {
      rmSync(emptyDist, { recursive: true, force: true });
    }
  });

  it("stops with a message naming the key when the configuration is invalid", async () => {
    const result = await run("status", { STACK_REGISTRY_PORT: "not-a-port" });
    expect(result.code).toBe(2);
    expect(result.stderr).toContain("STACK_REGISTRY_PORT");
  });
});
