/**
 * `topics create`: provisioning, once, with operator rights. Creates every topic the pipeline
 * uses, with the settings the processor and the sink would create them with, and registers the
 * three contracts under their subjects with their compatibility level. Then replicas, the
 * processor and the sink can run with `autoCreateTopics: false` and `autoRegisterSchemas: false`:
 * credentials without CREATE on the cluster and without write access to the registry.
 *
 * Idempotent: what exists is left as it is and reported as found; a second run changes nothing
 * and says so.
 */
import {
  AvroCodec,
  DEFAULT_COMPATIBILITY,
  SchemaNotRegisteredError,
  valueSubject,
} from "../../avro/codec.js";
import type { EventContract } from "../../avro/contracts.js";
import {
  getCompatibility,
  SchemaRegistryError,
  type CompatibilityLevel,
} from "../../avro/registry.js";
import { processorConfigSchema, topicNames, type RegistryTarget } from "../../config/index.js";
import { connectAdmin, kafkaSettingsOf } from "../../kafka/index.js";
import { pipelineSubjects } from "../../ops/service.js";
import { checkpointTopic } from "../../processor/checkpoints.js";
import { processorTopics } from "../../processor/processor.js";
import { settingOf, type SettingsResolver } from "../config.js";
import { checkKafka, checkRegistry } from "../preflight.js";

/** What `topics create` did to one subject. */
type SubjectOutcome = "registered" | "compatibility set" | "found";

/** The subject's own compatibility level; undefined when it has none (or does not exist). */
async function subjectLevel(
  registry: RegistryTarget,
  subject: string,
): Promise<CompatibilityLevel | undefined> {
  try {
    return await getCompatibility(registry, subject);
  } catch (error) {
    if (error instanceof SchemaRegistryError && error.status === 404) return undefined;
    throw error;
  }
}

/**
 * Registers `contract` under `subject` with the project's compatibility level unless both are
 * there already; says which, and the schema's id.
 */
async function provideSubject(
  registry: RegistryTarget,
  contract: EventContract<unknown>,
  subject: string,
): Promise<{ outcome: SubjectOutcome; id: number; was: CompatibilityLevel | undefined }> {
  const found = await AvroCodec.lookup(contract, { registryUrl: registry, subject }).then(
    (codec) => codec.schemaId,
    (error: unknown) => {
      if (error instanceof SchemaNotRegisteredError) return undefined;
      throw error;
    },
  );
  const level = found === undefined ? undefined : await subjectLevel(registry, subject);
  if (found !== undefined && level === DEFAULT_COMPATIBILITY)
    return { outcome: "found", id: found, was: level };
  // Sets the subject's level, then registers (the same schema keeps its id).
  const codec = await AvroCodec.register(contract, { registryUrl: registry, subject });
  return {
    outcome: found === undefined ? "registered" : "compatibility set",
    id: codec.schemaId,
    was: level,
  };
}

export async function runTopicsCreate(settings: SettingsResolver): Promise<number> {
  const connection = settings.connection();
  const partitions = Number(settings.value(settingOf(processorConfigSchema, "partitions")));
  const retentionMs = Number(
    settings.value(settingOf(processorConfigSchema, "modelCallsRetentionMs")),
  );
  await checkKafka(connection);
  await checkRegistry(connection);
  const print = (line: string): void => {
    process.stdout.write(`${line}\n`);
  };

  const prefix = connection.topicPrefix;
  const names = topicNames(prefix);
  const wanted = processorTopics(
    { ...names, checkpoints: checkpointTopic(prefix) },
    partitions,
    retentionMs,
  );
  const admin = await connectAdmin(kafkaSettingsOf(connection, "mcpo-topics-create"));
  let created: string[];
  try {
    created = await admin.ensureTopics(wanted);
  } finally {
    await admin.close();
  }
  const width = Math.max(...wanted.map((topic) => topic.name.length)) + 2;
  for (const topic of wanted) {
    const settingsText = Object.entries(topic.config ?? {})
      .map(([name, value]) => `${name}=${value}`)
      .join(", ");
    print(
      created.includes(topic.name)
        ? `topic   ${topic.name.padEnd(width)}created (${topic.partitions} partition${topic.partitions === 1 ? "" : "s"}${settingsText === "" ? "" : `; ${settingsText}`})`
        : `topic   ${topic.name.padEnd(width)}found (left as it is)`,
    );
  }

  const registry = connection.schemaRegistry;
  const outcomes: SubjectOutcome[] = [];
  for (const { contract, topic } of Object.values(pipelineSubjects(names))) {
    const subject = valueSubject(topic);
    const done = await provideSubject(registry, contract, subject);
    outcomes.push(done.outcome);
    const detail = `${contract.name} schema id ${done.id}, compatibility ${DEFAULT_COMPATIBILITY}`;
    print(
      `subject ${subject.padEnd(width)}${
        done.outcome === "found"
          ? `found (${detail})`
          : done.outcome === "registered"
            ? `registered (${detail})`
            : `compatibility set (${detail}; was ${done.was ?? "unset"})`
      }`,
    );
  }

  const changed = outcomes.filter((outcome) => outcome !== "found").length;
  print(
    created.length === 0 && changed === 0
      ? `nothing new: all ${wanted.length} topics and ${outcomes.length} subjects were already provisioned`
      : `created ${created.length} of ${wanted.length} topics; registered or updated ${changed} of ${outcomes.length} subjects`,
  );
  return 0;
}
