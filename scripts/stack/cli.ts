#!/usr/bin/env node
/**
 * `npm run stack -- up|down|status|fetch`: the local stack from the command line.
 * Exit codes: 0 ok, 1 failure, 2 bad usage or configuration, 3 (status) something is down.
 */
import { ConfigError } from "../../config/index.js";
import {
  ensureDownloads,
  loadStackConfig,
  stackDown,
  StackError,
  stackStatus,
  stackUp,
} from "./index.js";

const USAGE = "usage: mcp-observatory-stack up|down|status|fetch";

async function main(argv: readonly string[]): Promise<number> {
  const command = argv[0];
  const config = loadStackConfig();
  const print = (line: string): void => {
    process.stdout.write(`${line}\n`);
  };
  switch (command) {
    case "up": {
      const result = await stackUp(config, print);
      print(
        `stack up in ${(result.elapsedMs / 1000).toFixed(1)} s (${result.downloaded ? "cold: downloaded" : "warm"}; ` +
          `started: ${result.started.length > 0 ? result.started.join(", ") : "nothing, all were running"})`,
      );
      print(`export KAFKA_BROKERS=${result.endpoints.kafkaBrokers}`);
      print(`export SCHEMA_REGISTRY_URL=${result.endpoints.schemaRegistryUrl}`);
      print(`export DATABASE_URL=${result.endpoints.databaseUrl}`);
      return 0;
    }
    case "fetch": {
      const downloaded = await ensureDownloads(config, print);
      print(downloaded ? `fetched into ${config.distDir}` : `already in ${config.distDir}`);
      return 0;
    }
    case "down": {
      await stackDown(config, print);
      return 0;
    }
    case "status": {
      const statuses = await stackStatus(config);
      for (const status of statuses) {
        const state = status.answers ? "up" : "down";
        print(
          `${status.service.padEnd(9)} ${state.padEnd(5)} ${status.address}${status.pid === undefined ? "" : ` pid ${status.pid}`} — ${status.detail}`,
        );
      }
      return statuses.every((status) => status.answers) ? 0 : 3;
    }
    default:
      process.stderr.write(`${USAGE}\n`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    if (error instanceof ConfigError) {
      process.stderr.write(`${error.message}\n`);
      process.exitCode = 2;
    } else if (error instanceof StackError) {
      process.stderr.write(`stack: ${error.code}: ${error.message}\n`);
      process.exitCode = 1;
    } else {
      process.stderr.write(
        `stack: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
      );
      process.exitCode = 1;
    }
  },
);
