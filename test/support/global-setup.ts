/**
 * Global setup of the integration and end-to-end tiers. It finds the services the tests talk to:
 *
 * 1. `KAFKA_BROKERS`, `SCHEMA_REGISTRY_URL` and `DATABASE_URL` when all three are set;
 * 2. else containers through testcontainers, when a Docker engine answers;
 * 3. else the project's local stack (`stack`), started here if it is not running and
 *    stopped again at teardown (only what this setup started).
 *
 * `MCPO_TEST_SERVICES=env|docker|stack` forces one of them.
 */
import type { TestProject } from "vitest/node";

import { ENV_NAMES } from "../../config/index.js";
import { loadStackConfig, stackDown, stackEndpoints, stackUp } from "../../stack/index.js";
import { dockerAvailable, startContainers } from "./docker.js";
import type { ServiceEndpoints } from "./endpoints.js";

type Teardown = () => Promise<void>;

/** One resolution per process, shared by the tiers (vitest runs each project's global setup). */
let resolution:
  Promise<{ endpoints: ServiceEndpoints; teardown: Teardown | undefined }> | undefined;
let users = 0;

async function resolveServices(): Promise<{
  endpoints: ServiceEndpoints;
  teardown: Teardown | undefined;
}> {
  const forced = process.env.MCPO_TEST_SERVICES;
  if (forced !== undefined && !["env", "docker", "stack"].includes(forced))
    throw new Error(
      `MCPO_TEST_SERVICES must be env, docker or stack (got ${JSON.stringify(forced)})`,
    );

  const fromEnv = {
    kafkaBrokers: process.env[ENV_NAMES.kafkaBrokers],
    schemaRegistryUrl: process.env[ENV_NAMES.schemaRegistryUrl],
    databaseUrl: process.env[ENV_NAMES.databaseUrl],
  };
  const allSet = Object.values(fromEnv).every((value) => value !== undefined && value !== "");
  if (forced === "env" || (forced === undefined && allSet)) {
    if (!allSet)
      throw new Error(
        `MCPO_TEST_SERVICES=env needs ${ENV_NAMES.kafkaBrokers}, ${ENV_NAMES.schemaRegistryUrl} and ${ENV_NAMES.databaseUrl}`,
      );
    return {
      endpoints: {
        kafkaBrokers: fromEnv.kafkaBrokers ?? "",
        schemaRegistryUrl: fromEnv.schemaRegistryUrl ?? "",
        databaseUrl: fromEnv.databaseUrl ?? "",
        source: "env",
      },
      teardown: undefined,
    };
  }

  if (forced === "docker" || (forced === undefined && (await dockerAvailable()))) {
    const containers = await startContainers();
    log(`services: containers (${containers.endpoints.kafkaBrokers})`);
    return { endpoints: containers.endpoints, teardown: containers.stop };
  }

  const config = loadStackConfig();
  const result = await stackUp(config, (line) => {
    log(line);
  });
  log(
    `services: local stack, up in ${(result.elapsedMs / 1000).toFixed(1)} s` +
      (result.started.length > 0
        ? ` (started ${result.started.join(", ")})`
        : " (already running)"),
  );
  const started = result.started;
  return {
    endpoints: { ...stackEndpoints(config), source: "stack" },
    teardown:
      started.length === 0
        ? undefined
        : async () => {
            await stackDown(config, log, started);
          },
  };
}

function log(line: string): void {
  process.stderr.write(`[test services] ${line}\n`);
}

export default async function setup(project: TestProject): Promise<Teardown> {
  resolution ??= resolveServices();
  users += 1;
  const { endpoints } = await resolution;
  project.provide("services", endpoints);
  return async () => {
    users -= 1;
    if (users > 0 || resolution === undefined) return;
    const { teardown } = await resolution;
    resolution = undefined;
    await teardown?.();
  };
}
