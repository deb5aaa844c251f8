/**
 * Least privilege: whether a component may create the topics it needs (`autoCreateTopics`) and
 * register its schemas and set their subjects' compatibility (`autoRegisterSchemas`). Both default
 * to true. Turned off, a component only checks that the topics exist and looks up the schema ids,
 * and an operator provisions both once with {@link PROVISION_COMMAND}.
 *
 * The processor and the sink read the two settings as their other keys (config/schemas.ts); the
 * exporter and `subscribeAlerts` take them as options, falling back to the same environment
 * variables through {@link provisioningSwitch}.
 *
 * @module
 */
import { ObservatoryError } from "./errors.js";
import { ConfigError } from "./index.js";
import { envOf } from "./schemas.js";

/** The command that creates the topics and registers the subjects, with operator rights. */
export const PROVISION_COMMAND = "mcp-observatory topics create";

/** The two least-privilege switches, by their option (and schema) key. */
export type ProvisioningSetting = "autoCreateTopics" | "autoRegisterSchemas";

/**
 * A least-privilege switch: the option when given, else its environment variable
 * (`MCPO_AUTO_CREATE_TOPICS`, `MCPO_AUTO_REGISTER_SCHEMAS`: `true`/`false`, `1`/`0`), else true.
 *
 * @throws {ConfigError} naming the variable when its value is not a boolean.
 */
export function provisioningSwitch(
  key: ProvisioningSetting,
  option: boolean | undefined,
  env: NodeJS.ProcessEnv = process.env,
): boolean {
  if (option !== undefined) {
    if (typeof option !== "boolean")
      throw new ConfigError(key, `expected true or false (got ${JSON.stringify(option)})`);
    return option;
  }
  const name = envOf(key);
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return true;
  const text = raw.trim().toLowerCase();
  if (text === "true" || text === "1") return true;
  if (text === "false" || text === "0") return false;
  throw new ConfigError(name, `expected true or false (got ${JSON.stringify(raw)})`);
}

/**
 * Topics a component needs do not exist and it may not create them (`autoCreateTopics: false`).
 * Not retriable by itself: an operator has to create them.
 */
export class TopicsNotProvisionedError extends ObservatoryError {
  declare readonly code: "TOPIC_MISSING";

  constructor(
    /** The missing topics. */
    readonly topics: readonly string[],
  ) {
    const names = topics.join(", ");
    super(
      "TOPIC_MISSING",
      `${topics.length === 1 ? `topic ${names} does not exist` : `topics ${names} do not exist`} and autoCreateTopics is false: ` +
        `run \`${PROVISION_COMMAND}\` with operator rights (same brokers and topic prefix) to create ${topics.length === 1 ? "it" : "them"}`,
      { retriable: false },
    );
    this.name = "TopicsNotProvisionedError";
  }
}
