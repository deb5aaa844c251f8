/**
 * `npm run smoke`: one pass through every service the pipeline needs. With none of KAFKA_BROKERS,
 * SCHEMA_REGISTRY_URL and DATABASE_URL set it first brings the local stack up; otherwise it uses
 * the services those variables name. It registers an Avro schema, produces events in Confluent
 * wire format, consumes and decodes them, and sums them in PostgreSQL.
 */
import { randomUUID } from "node:crypto";

import { COMPATIBILITY, SchemaRegistry, SchemaType } from "@kafkajs/confluent-schema-registry";
import { Kafka, logLevel } from "kafkajs";
import pg from "pg";

import { setSubjectCompatibility } from "../avro/registry.js";
import { ConfigError, ENV_NAMES, loadConnectionConfig } from "../config/index.js";
import { loadStackConfig, StackError, stackUp } from "../stack/index.js";

const SMOKE_SCHEMA = {
  type: "record",
  name: "SmokeModelCall",
  namespace: "io.mcpobservatory.smoke",
  fields: [
    { name: "run_id", type: "string" },
    { name: "service", type: "string" },
    { name: "model", type: "string" },
    { name: "cost_nano_usd", type: ["null", "long"], default: null },
  ],
};

interface SmokeEvent {
  run_id: string;
  service: string;
  model: string;
  cost_nano_usd: number | null;
}

function print(line: string): void {
  process.stdout.write(`${line}\n`);
}

async function main(): Promise<void> {
  const started = Date.now();
  const configured = [ENV_NAMES.kafkaBrokers, ENV_NAMES.schemaRegistryUrl, ENV_NAMES.databaseUrl]
    .map((name) => process.env[name])
    .some((value) => value !== undefined && value !== "");
  if (!configured) {
    const result = await stackUp(loadStackConfig(), print);
    print(`stack up in ${(result.elapsedMs / 1000).toFixed(1)} s`);
  }
  const config = loadConnectionConfig();
  const topic = `${config.topicPrefix}smoke`;
  const subject = `${topic}-value`;
  const runId = randomUUID();

  const kafka = new Kafka({
    clientId: "mcpo-smoke",
    brokers: [...config.kafkaBrokers],
    logLevel: logLevel.ERROR,
  });
  const admin = kafka.admin();
  await admin.connect();
  try {
    if (!(await admin.listTopics()).includes(topic))
      await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: 1 }] });
  } finally {
    await admin.disconnect();
  }

  const registry = new SchemaRegistry({ host: config.schemaRegistryUrl });
  await setSubjectCompatibility(config.schemaRegistryUrl, subject, "BACKWARD");
  const { id } = await registry.register(
    { type: SchemaType.AVRO, schema: JSON.stringify(SMOKE_SCHEMA) },
    { subject, compatibility: COMPATIBILITY.BACKWARD },
  );
  print(`registry  ${subject} → schema id ${id}`);

  const events: SmokeEvent[] = [
    { run_id: runId, service: "example-mcp", model: "gpt-4o", cost_nano_usd: 2_750_000 },
    { run_id: runId, service: "example-mcp", model: "gpt-4o-mini", cost_nano_usd: 165_000 },
    { run_id: runId, service: "example-mcp", model: "unknown-model", cost_nano_usd: null },
  ];
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  try {
    await producer.send({
      topic,
      acks: -1,
      messages: await Promise.all(
        events.map(async (event) => ({
          key: event.service,
          value: await registry.encode(id, event),
        })),
      ),
    });
  } finally {
    await producer.disconnect();
  }
  print(`kafka     produced ${events.length} Avro events to ${topic}`);

  const received = await consumeRun(kafka, topic, runId, registry, events.length);
  print(`kafka     consumed and decoded ${received.length} events back`);

  const client = new pg.Client({ connectionString: config.databaseUrl });
  await client.connect();
  try {
    await client.query(
      "create temp table smoke_calls (model text not null, cost_nano_usd numeric)",
    );
    await client.query("insert into smoke_calls select * from unnest($1::text[], $2::numeric[])", [
      received.map((event) => event.model),
      received.map((event) => event.cost_nano_usd),
    ]);
    const { rows } = await client.query<{ calls: string; priced: string; cost_usd: string }>(
      `select count(*)::text as calls, count(cost_nano_usd)::text as priced,
              (sum(cost_nano_usd) / 1000000000)::numeric(20, 9)::text as cost_usd from smoke_calls`,
    );
    const row = rows[0];
    print(
      `postgres  ${row?.calls ?? "?"} calls, ${row?.priced ?? "?"} with a known cost, total $${row?.cost_usd ?? "?"}`,
    );
  } finally {
    await client.end();
  }
  print(`smoke ok in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

async function consumeRun(
  kafka: Kafka,
  topic: string,
  runId: string,
  registry: SchemaRegistry,
  expected: number,
): Promise<SmokeEvent[]> {
  const groupId = `mcpo-smoke-${runId}`;
  const consumer = kafka.consumer({ groupId });
  const received: SmokeEvent[] = [];
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`only ${received.length} of ${expected} smoke events came back in 30 s`));
      }, 30_000);
      void consumer.run({
        eachMessage: async ({ message }) => {
          if (!message.value) return;
          const decoded = (await registry.decode(message.value)) as SmokeEvent;
          if (decoded.run_id !== runId) return;
          received.push(decoded);
          if (received.length === expected) {
            clearTimeout(timer);
            resolve();
          }
        },
      });
    });
  } finally {
    await consumer.disconnect();
    const admin = kafka.admin();
    await admin.connect();
    await admin.deleteGroups([groupId]).catch(() => undefined);
    await admin.disconnect();
  }
  return received;
}

main().catch((error: unknown) => {
  if (error instanceof ConfigError) {
    process.stderr.write(`smoke: ${error.message}\n`);
    process.exitCode = 2;
    return;
  }
  const label = error instanceof StackError ? `${error.code}: ` : "";
  process.stderr.write(
    `smoke failed: ${label}${error instanceof Error ? error.message : String(error)}\n`,
  );
  process.exitCode = 1;
});
