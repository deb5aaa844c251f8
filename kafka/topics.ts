/**
 * The topics a component needs, created when it may (`autoCreateTopics`), else only checked: the
 * one path every component (the exporter, the processor, the sink) takes, so a component without
 * the right to create topics fails the same clear way everywhere.
 *
 * @module
 */
import { TopicsNotProvisionedError } from "../config/provisioning.js";
import type { TopicAdmin } from "./index.js";

/** A topic a component needs: its name, and its partitions and settings when it is created. */
export type NeededTopic = Parameters<TopicAdmin["ensureTopics"]>[0][number];

/**
 * With `create`, creates the topics that are missing (with their partitions and settings) and
 * returns their names. Without, creates nothing: returns `[]` when every topic exists.
 *
 * @throws {TopicsNotProvisionedError} without `create`, naming every missing topic and the command
 *   that creates them.
 */
export async function provideTopics(
  admin: TopicAdmin,
  topics: readonly NeededTopic[],
  create: boolean,
): Promise<string[]> {
  if (create) return admin.ensureTopics(topics);
  const missing: string[] = [];
  for (const topic of topics) if (!(await admin.exists(topic.name))) missing.push(topic.name);
  if (missing.length > 0) throw new TopicsNotProvisionedError(missing);
  return [];
}
