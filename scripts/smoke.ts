/**
 * `npm run smoke`: one pass through every service the pipeline needs. With none of KAFKA_BROKERS,
 * SCHEMA_REGISTRY_URL and DATABASE_URL set it first brings the local stack up; otherwise it uses
 * the services those variables name. It registers an Avro schema, produces events in Confluent
 * wire format, consumes and decodes them, and sums them in PostgreSQL.
 */
import { randomUUID } from "node:crypto";

import pg from "pg";

import { AvroCodec } from "../avro/codec.js";
import { defineContract } from "../avro/contracts.js";
import type { AvroSchema } from "../avro/generated.js";
import { ConfigError, ENV_NAMES, loadConnectionConfig } from "../config/index.js";
import {
  connectAdmin,
  createRecordProducer,
  kafkaSettingsOf,
  readTopicToEnd,
} from "../kafka/index.js";
import { loadStackConfig, StackError, stackUp } from "../stack/index.js";

const SMOKE_SCHEMA: AvroSchema = {
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

  const kafka = kafkaSettingsOf(config, "mcpo-smoke");
  const admin = await connectAdmin(kafka);
  try {
    await admin.ensureTopics([{ name: topic, partitions: 1 }]);
  } finally {
    await admin.close();
  }

  const codec = await AvroCodec.register(defineContract<SmokeEvent>(SMOKE_SCHEMA), {
    registryUrl: config.schemaRegistry,
    subject,
    compatibility: "BACKWARD",
  });
  print(`registry  ${subject} → schema id ${codec.schemaId}`);

  const events: SmokeEvent[] = [
    { run_id: runId, service: "example-mcp", model: "gpt-4o", cost_nano_usd: 2_750_000 },
    { run_id: runId, service: "example-mcp", model: "gpt-4o-mini", cost_nano_usd: 165_000 },
    { run_id: runId, service: "example-mcp", model: "unknown-model", cost_nano_usd: null },
  ];
  const producer = createRecordProducer(kafka);
  await producer.connect();
  try {
    await producer.send(
      topic,
      events.map((event) => ({
        key: event.service,
        value: codec.encode(event),
      })),
      "none",
    );
  } finally {
    await producer.disconnect();
  }
  print(`kafka     produced ${events.length} Avro events to ${topic}`);

  // The whole topic as it is now (earlier runs' events too), decoded; this run's kept.
  const received: SmokeEvent[] = [];
  for (const record of await readTopicToEnd(kafka, topic)) {
    const decoded = await codec.decode(record.value ?? Buffer.alloc(0));
    if (!decoded.ok) throw new Error(`${topic}@${record.offset}: ${decoded.error.message}`);
    if (decoded.value.run_id === runId) received.push(decoded.value);
  }
  if (received.length !== events.length)
    throw new Error(`only ${received.length} of ${events.length} smoke events came back`);
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
