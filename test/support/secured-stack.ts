/**
 * A secured local stack of one test file's own (`STACK_SECURITY=sasl_ssl`): Kafka with a SASL_SSL
 * listener, SCRAM/PLAIN/OAUTHBEARER users and the StandardAuthorizer, and Apicurio Registry over
 * HTTPS with basic and bearer authentication, in a folder and on ports of its own (the shared
 * stack's downloads). Kafka and the registry start in parallel.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import type { RegistryEndpoint } from "../../config/security.js";
import type { KafkaSettings } from "../../kafka/index.js";
import {
  grantAcls,
  loadStackConfig,
  securedStackEndpoints,
  signRegistryToken,
  stackClientEnv,
  stackDown,
  stackKafkaSettings,
  stackRegistryEndpoint,
  stackUp,
  StackError,
  type AclGrant,
  type RegistryRole,
  type SecuredStackEndpoints,
  type StackConfig,
  type StackPasswordMechanism,
} from "../../stack/index.js";
import { services } from "./isolation.js";
import { freePort, releasePort } from "./ports.js";

export interface SecuredStack {
  /** `127.0.0.1:<port>`, SASL_SSL. */
  readonly brokers: string;
  /** `https://127.0.0.1:<port>/apis/ccompat/v7`. */
  readonly registryUrl: string;
  /** The CA's certificate, PEM, and its file. */
  readonly ca: string;
  readonly caFile: string;
  /** Addresses, CA, client certificate, credentials and password files. */
  readonly endpoints: SecuredStackEndpoints;
  /** Kafka users' passwords by name (`admin` among them), registry users' too. */
  readonly credentials: SecuredStackEndpoints["credentials"];
  /** How long `startSecuredStack` took, ms. */
  readonly startMs: number;
  readonly config: StackConfig;
  /** Client settings of a Kafka user: the CA and SASL (SCRAM-SHA-512 unless told). */
  kafka(user: string, mechanism?: StackPasswordMechanism): KafkaSettings;
  /** A registry user's endpoint: HTTPS with the CA and basic auth. */
  registry(user?: string): RegistryEndpoint;
  /** A bearer token the registry accepts, for `subject` with `roles`. */
  registryToken(subject: string, roles?: readonly RegistryRole[]): string;
  /** The environment of a project process connecting as `kafkaUser` (password files, no secrets). */
  env(kafkaUser: string, registryUser?: string): Record<string, string>;
  /** Grants ACLs with Kafka's AclCommand as the admin user. */
  grantAcls(grants: readonly AclGrant[]): Promise<void>;
  /** Stops Kafka and the registry and removes the folder. */
  dispose(): Promise<void>;
}

export interface SecuredStackOptions {
  /** Kafka users besides `admin` (`STACK_KAFKA_USERS` entries; default replica, processor, sink). */
  readonly kafkaUsers?: readonly string[];
  /** Registry users besides `admin` (`STACK_REGISTRY_USERS` entries, e.g. `reader:readonly`). */
  readonly registryUsers?: readonly string[];
  /** The PostgreSQL the stack checks at start (default: the tests' shared one). */
  readonly databaseUrl?: string;
}

export async function startSecuredStack(options: SecuredStackOptions = {}): Promise<SecuredStack> {
  const started = Date.now();
  const dir = mkdtempSync(join(tmpdir(), "mcpo-secured-stack-"));
  let config: StackConfig | undefined;
  let ports: number[] = [];
  const stop = async (): Promise<void> => {
    if (config) await stackDown(config);
  };
  for (let attempt = 1; ; attempt++) {
    ports = [await freePort(), await freePort(), await freePort(), await freePort()];
    const [kafka, controller, registry, management] = ports.map(String);
    config = loadStackConfig({
      ...process.env,
      STACK_DIR: dir,
      STACK_DIST_DIR: loadStackConfig().distDir,
      STACK_KAFKA_PORT: kafka,
      STACK_KAFKA_CONTROLLER_PORT: controller,
      STACK_REGISTRY_PORT: registry,
      STACK_REGISTRY_MANAGEMENT_PORT: management,
      STACK_SECURITY: "sasl_ssl",
      STACK_KAFKA_USERS: (options.kafkaUsers ?? ["replica", "processor", "sink"]).join(","),
      STACK_REGISTRY_USERS: ["admin", ...(options.registryUsers ?? [])].join(","),
      DATABASE_URL: options.databaseUrl ?? services().databaseUrl,
    });
    try {
      await stackUp(config);
      break;
    } catch (error) {
      for (const port of ports) releasePort(port);
      await stop().catch(() => undefined);
      if (attempt < 3 && error instanceof StackError && error.code === "PORT_TAKEN") continue;
      rmSync(dir, { recursive: true, force: true });
      throw error;
    }
  }
  const stackConfig = config;
  const endpoints = securedStackEndpoints(stackConfig);
  return {
    brokers: endpoints.kafkaBrokers,
    registryUrl: endpoints.schemaRegistryUrl,
    ca: endpoints.ca,
    caFile: endpoints.caFile,
    endpoints,
    credentials: endpoints.credentials,
    startMs: Date.now() - started,
    config: stackConfig,
    kafka: (user, mechanism) =>
      stackKafkaSettings(endpoints, user, {
        ...(mechanism === undefined ? {} : { mechanism }),
        clientId: `test-${user}`,
      }),
    registry: (user) => stackRegistryEndpoint(endpoints, user),
    registryToken: (subject, roles) =>
      signRegistryToken(endpoints, { subject, ...(roles === undefined ? {} : { roles }) }),
    env: (kafkaUser, registryUser) =>
      stackClientEnv(endpoints, {
        kafkaUser,
        ...(registryUser === undefined ? {} : { registryUser }),
      }),
    grantAcls: (grants) => grantAcls(stackConfig, grants),
    dispose: async () => {
      await stop();
      rmSync(dir, { recursive: true, force: true });
      for (const port of ports) releasePort(port);
    },
  };
}
