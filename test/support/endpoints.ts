/** Where the services the tests use live, as the global setup found or started them. */
export interface ServiceEndpoints {
  /** Comma-separated `host:port` list. */
  readonly kafkaBrokers: string;
  /** Base URL of the ccompat API. */
  readonly schemaRegistryUrl: string;
  /** A PostgreSQL URL; tests create their own databases on that server. */
  readonly databaseUrl: string;
  /** How they were obtained: given by env, testcontainers, or the local stack. */
  readonly source: "env" | "docker" | "stack";
}

declare module "vitest" {
  export interface ProvidedContext {
    services: ServiceEndpoints;
  }
}
