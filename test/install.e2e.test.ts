/**
 * The published package as a user gets it: `npm pack`, then `npm install <tarball>` into an empty
 * folder outside the repository (its dependencies from the npm registry), and there
 * `npx mcp-observatory demo`, the README's library quick start, and the commands docker-compose.yml
 * runs with their healthchecks, against the running services under this file's own topics and
 * databases. Everything it creates (folders, topics, groups, subjects, databases) goes afterwards.
 */
import { execFile, spawn } from "node:child_process";
import {
  cpSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { promisify } from "node:util";

import pg from "pg";
import { parse } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { REPO_ROOT } from "./support/cli.js";
import {
  createDatabase,
  dropDatabase,
  services,
  testKafka,
  uniqueName,
  type FreshDatabase,
} from "./support/isolation.js";
import { freePort, releasePort } from "./support/ports.js";
import { waitFor } from "./support/wait.js";

const exec = promisify(execFile);

interface PackageJson {
  name: string;
  version: string;
  files: string[];
  bin: Record<string, string>;
}
const pkg = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as PackageJson;

/** What a command printed and how it exited (a failure is a result, not a throw). */
async function sh(
  command: string,
  args: readonly string[],
  options: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs?: number },
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec(command, [...args], {
      cwd: options.cwd,
      env: options.env ?? process.env,
      timeout: options.timeoutMs ?? 120_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code?: number | string; stdout?: string; stderr?: string };
    return {
      code: typeof failed.code === "number" ? failed.code : 1,
      stdout: failed.stdout ?? "",
      stderr: failed.stderr ?? String(error),
    };
  }
}

/** The README's library example ("## The library"), as written. */
function readmeQuickStart(): string {
  const readme = readFileSync(join(REPO_ROOT, "README.md"), "utf8");
  const section = readme.slice(readme.indexOf("\n## The library"));
  const block = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
  if (!block) throw new Error("README.md: no ts block under ## The library");
  return block;
}

let work: string; // temporary: the staged package, the tarball, the user's folder
let app: string; // the user's folder, empty before `npm install`
let tarball: string;
let packed: string[];
/** Topic prefixes used (each test's own, so their consumer groups differ too). */
const prefixes: string[] = [];
let env: NodeJS.ProcessEnv;
const databases: FreshDatabase[] = [];

/** The settings with a topic prefix of their own (deleted with its topics and groups afterwards). */
function ownTopics(): NodeJS.ProcessEnv {
  const prefix = `${uniqueName("install")}.`;
  prefixes.push(prefix);
  return { ...env, MCPO_TOPIC_PREFIX: prefix };
}

describe("the npm package, installed into an empty folder", () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), "mcpo-install-"));
    // The package as `npm pack` takes it from the repository, with dist/ compiled into the copy
    // (the repository's own dist/ is left to the tests that build it).
    const stage = join(work, "package");
    mkdirSync(stage);
    // Each entry of "files" up to its first pattern (`avro/*.avsc` → avro/): npm pack applies them.
    const copied = new Set(
      ["package.json", ...pkg.files].map((entry) => entry.split("/*")[0] ?? ""),
    );
    for (const entry of copied) {
      mkdirSync(dirname(join(stage, entry)), { recursive: true });
      if (entry !== "dist") cpSync(join(REPO_ROOT, entry), join(stage, entry), { recursive: true });
    }
    const tsc = await sh(
      process.execPath,
      [
        join(REPO_ROOT, "node_modules/typescript/bin/tsc"),
        "-p",
        join(REPO_ROOT, "tsconfig.build.json"),
        "--outDir",
        join(stage, "dist"),
      ],
      { cwd: REPO_ROOT, timeoutMs: 180_000 },
    );
    expect(tsc.code, tsc.stdout + tsc.stderr).toBe(0);
    const pack = await sh("npm", ["pack", "--json", "--pack-destination", work], { cwd: stage });
    expect(pack.code, pack.stderr).toBe(0);
    const [result] = JSON.parse(pack.stdout) as { filename: string; files: { path: string }[] }[];
    tarball = join(work, result?.filename ?? "");
    packed = (result?.files ?? []).map((file) => file.path);

    app = join(work, "app");
    mkdirSync(app);
    const install = await sh(
      "npm",
      ["install", "--prefer-offline", "--no-audit", "--no-fund", tarball],
      { cwd: app, timeoutMs: 180_000 },
    );
    expect(install.code, install.stderr).toBe(0);

    env = {
      ...process.env,
      KAFKA_BROKERS: services().kafkaBrokers,
      SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
      STACK_DIR: join(app, ".stack"),
    };
  }, 300_000);

  afterAll(async () => {
    for (const database of databases) await dropDatabase(database).catch(() => undefined);
    if (prefixes.length > 0) {
      const owned = (name: string): boolean =>
        prefixes.some((prefix) => name.startsWith(prefix.replace(/[._-]+$/, "")));
      const admin = testKafka().admin();
      await admin.connect();
      try {
        const topics = (await admin.listTopics()).filter(owned);
        if (topics.length > 0) await admin.deleteTopics({ topics });
        const groups = (await admin.listGroups()).groups
          .map((group) => group.groupId)
          .filter(owned);
        if (groups.length > 0) await admin.deleteGroups(groups).catch(() => undefined);
      } finally {
        await admin.disconnect();
      }
      const registry = services().schemaRegistryUrl;
      const subjects = (await (await fetch(`${registry}/subjects`)).json()) as string[];
      for (const subject of subjects.filter(owned))
        await fetch(`${registry}/subjects/${encodeURIComponent(subject)}`, { method: "DELETE" });
    }
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it("packs the built code, the schemas, migrations and stack versions, and no tests or sources", () => {
    expect(tarball).toMatch(new RegExp(`${pkg.name}-${pkg.version}\\.tgz$`));
    expect(packed).toEqual(
      expect.arrayContaining([
        "package.json",
        "README.md",
        "LICENSE",
        pkg.bin["mcp-observatory"]?.replace(/^\.\//, ""),
        "dist/producer/index.js",
        "dist/producer/index.d.ts",
        "stack/pom.xml",
        "schema/migrations/001_initial.sql",
        // The web UI: its server compiled, its pages as they are (no build step).
        "dist/ui/server.js",
        "ui/public/index.html",
        "ui/public/app.js",
        "ui/public/style.css",
      ]),
    );
    expect(packed.filter((path) => /^(test|bench|scripts|examples)\//.test(path))).toEqual([]);
    expect(packed.filter((path) => /\.test\.(ts|js)$/.test(path))).toEqual([]);
    // The contract's schemas and documents, and TypeScript only as declarations next to dist/'s code.
    expect(packed).toEqual(
      expect.arrayContaining(["avro/ModelCallEvent.avsc", "avro/CONTRACT.md"]),
    );
    expect(packed.filter((path) => path.endsWith(".ts") && !path.endsWith(".d.ts"))).toEqual([]);
    // docker-compose.yml builds the image from the repository's sources (Dockerfile, tsconfig,
    // the .ts files) and mounts deploy/: none of which the package has, so it is not shipped.
    expect(packed).not.toContain("docker-compose.yml");
  });

  it("installs the mcp-observatory command, executable, which prints its help", async () => {
    expect(readdirSync(app).sort()).toEqual(["node_modules", "package-lock.json", "package.json"]);
    const bin = join(app, "node_modules", pkg.name, pkg.bin["mcp-observatory"] ?? "-");
    expect(statSync(bin).mode & 0o111, "executable").not.toBe(0);
    const help = await sh("npx", ["--no-install", "mcp-observatory", "--help"], { cwd: app });
    expect(help.code, help.stderr).toBe(0);
    expect(help.stdout).toContain("Usage: mcp-observatory");
  });

  it("runs `npx mcp-observatory demo` there against the configured services, and its next steps are npx commands", async () => {
    const database = await createDatabase("mcpo_inst_demo");
    databases.push(database);
    await dropDatabase(database); // the demo creates it, as for a newcomer
    const demo = await sh(
      "npx",
      [
        "--no-install",
        "mcp-observatory",
        "demo",
        "--duration",
        "8s",
        "--rate",
        "100",
        "--services",
        "2",
        "--replicas",
        "1",
      ],
      { cwd: app, env: { ...ownTopics(), DATABASE_URL: database.url }, timeoutMs: 150_000 },
    );
    expect(demo.code, demo.stderr).toBe(0);
    // The configured services, no local stack (no Java or Maven needed where it is installed).
    expect(demo.stdout).not.toContain("starting the local stack");
    expect(demo.stdout).toContain("== in PostgreSQL");
    // Commands a user of the installed package can type (no `npm run` scripts there).
    expect(demo.stdout).toMatch(/^ {2}npx mcp-observatory replay --verify --dry-run /m);
    expect(demo.stdout).not.toContain("npm run");

    const client = new pg.Client({ connectionString: database.url });
    await client.connect();
    try {
      const spans = await client.query<{ service: string; spans: string; rollups: string }>(
        `select s.service, count(*)::text as spans,
                (select count(*) from metric_rollups r where r.service = s.service)::text as rollups
           from spans s group by s.service order by s.service`,
      );
      expect(spans.rows.map((row) => row.service)).toHaveLength(2);
      for (const row of spans.rows) {
        expect(Number(row.spans), row.service).toBeGreaterThan(100);
        expect(Number(row.rollups), row.service).toBeGreaterThan(0);
      }
    } finally {
      await client.end();
    }
  }, 180_000);

  it("runs the README's library quick start there: a span and a rollup row land in PostgreSQL", async () => {
    const database = await createDatabase("mcpo_inst_qs");
    databases.push(database);
    const migrate = await sh("npx", ["--no-install", "mcp-observatory", "migrate"], {
      cwd: app,
      env: { ...env, DATABASE_URL: database.url },
    });
    expect(migrate.code, migrate.stderr).toBe(0);
    const example = readmeQuickStart();
    const connection = "postgresql://user:pass@localhost/mcp";
    expect(example).toContain(connection);
    writeFileSync(join(app, "quickstart.mjs"), example.replace(connection, database.url));
    const run = await sh(process.execPath, ["quickstart.mjs"], { cwd: app, env });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain("confidence_gate_block_rate_high");

    const client = new pg.Client({ connectionString: database.url });
    await client.connect();
    try {
      const spans = await client.query<{ service: string; model: string }>(
        "select service, model from spans",
      );
      expect(spans.rows).toEqual([{ service: "example-mcp", model: "gpt-4o" }]);
      const rollups = await client.query<{ calls: string }>(
        "select calls::text from metric_rollups where scope = 'service'",
      );
      expect(rollups.rows).toEqual([{ calls: "1" }]);
    } finally {
      await client.end();
    }
  });

  it("runs each docker-compose CLI service's command there with its compose settings, and the service's healthcheck passes once it is up", async () => {
    // The installed package is the image's runtime stage: production dependencies and the files
    // the package ships. Only the addresses differ (the services here, not their compose names).
    interface Service {
      command: string[];
      environment: Record<string, string>;
      healthcheck: { test: string[] };
    }
    const compose = parse(readFileSync(join(REPO_ROOT, "docker-compose.yml"), "utf8"), {
      merge: true,
    }) as { services: Record<string, Service> };
    const database = await createDatabase("mcpo_inst_svc");
    databases.push(database);
    const bin = join(app, "node_modules", pkg.name, pkg.bin["mcp-observatory"] ?? "-");
    const names = ["processor", "sink", "ingest", "alerts-forward"];
    const ports: number[] = [];
    const topics = ownTopics();
    const started = names.map(async (name) => {
      const svc = compose.services[name];
      if (!svc) throw new Error(`docker-compose.yml has no service ${name}`);
      const [cmd, flag, script] = svc.healthcheck.test.slice(1);
      expect([cmd, flag], `${name}: a node healthcheck`).toEqual(["node", "-e"]);
      const composePort = svc.environment.MCPO_METRICS_PORT ?? "-";
      const metricsPort = await freePort();
      ports.push(metricsPort);
      const healthcheck = (script ?? "").replace(`:${composePort}/`, `:${metricsPort}/`);
      expect(healthcheck, name).toContain(`127.0.0.1:${metricsPort}/readyz`);
      const healthy = async (): Promise<boolean> =>
        (await sh(process.execPath, ["-e", healthcheck], { cwd: app, timeoutMs: 10_000 })).code ===
        0;
      expect(await healthy(), `${name}: unhealthy before it runs`).toBe(false);
      const serviceEnv: NodeJS.ProcessEnv = {
        ...svc.environment,
        ...topics,
        MCPO_METRICS_PORT: String(metricsPort),
        ...(svc.environment.DATABASE_URL === undefined ? {} : { DATABASE_URL: database.url }),
      };
      if (name === "ingest") {
        const ingestPort = await freePort();
        ports.push(ingestPort);
        serviceEnv.MCPO_INGEST_PORT = String(ingestPort);
      }
      if (name === "alerts-forward") {
        // As a user sets it before `--profile alerts up` (nothing is sent: no alert arrives).
        serviceEnv.MCPO_WEBHOOK_URL = "http://127.0.0.1:9/mcp-observatory";
        serviceEnv.MCPO_WEBHOOK_SECRET = "a-test-secret-of-at-least-thirty-two-bytes";
      }
      const child = spawn(process.execPath, [bin, ...svc.command], {
        cwd: app,
        env: serviceEnv,
        stdio: ["ignore", "ignore", "pipe"],
      });
      let stderr = "";
      child.stderr.on("data", (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      const exited = new Promise<number | string>((resolve) => {
        child.once("exit", (code, signal) => {
          resolve(code ?? signal ?? "?");
        });
      });
      try {
        await waitFor(
          `${name}'s compose healthcheck`,
          healthy,
          (ok) => ok || child.exitCode !== null,
          {
            timeoutMs: 90_000,
            intervalMs: 1000,
          },
        );
        expect(child.exitCode, `${name} exited: ${stderr}`).toBeNull();
      } finally {
        if (child.pid !== undefined && child.exitCode === null) process.kill(child.pid, "SIGTERM");
      }
      expect(await exited, `${name} stops on SIGTERM: ${stderr}`).toBe(0);
    });
    try {
      await Promise.all(started);
    } finally {
      for (const port of ports) releasePort(port);
    }
  }, 150_000);

  it("stops the alert forwarder without a destination, naming the settings (why compose starts it only with its profile)", async () => {
    const forward = await sh(
      process.execPath,
      [join(app, "node_modules/.bin/mcp-observatory"), "alerts", "forward"],
      {
        cwd: app,
        env: { ...ownTopics(), MCPO_METRICS_PORT: "-1" },
      },
    );
    expect(forward.code).toBe(2);
    expect(forward.stderr).toContain("MCPO_WEBHOOK_URL");
  });
});
