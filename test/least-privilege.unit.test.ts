/**
 * The least-privilege switches without services: how `autoCreateTopics` and
 * `autoRegisterSchemas` are read (option, environment, CLI flags and their `--no-` forms), and
 * what the two refusals say.
 */
import { describe, expect, it } from "vitest";

import { SchemaNotRegisteredError } from "../avro/codec.js";
import { SettingsResolver, settingOf } from "../cli/config.js";
import { buildProgram } from "../cli/main.js";
import { ConfigError, processorConfigSchema, sinkConfigSchema } from "../config/index.js";
import {
  PROVISION_COMMAND,
  provisioningSwitch,
  TopicsNotProvisionedError,
} from "../config/provisioning.js";

describe("the switches' values", () => {
  it("an option wins; else the variable (true/false/1/0); else on", () => {
    expect(provisioningSwitch("autoCreateTopics", undefined, {})).toBe(true);
    expect(provisioningSwitch("autoCreateTopics", undefined, { MCPO_AUTO_CREATE_TOPICS: "" })).toBe(
      true,
    );
    expect(
      provisioningSwitch("autoCreateTopics", undefined, { MCPO_AUTO_CREATE_TOPICS: "false" }),
    ).toBe(false);
    expect(
      provisioningSwitch("autoRegisterSchemas", undefined, { MCPO_AUTO_REGISTER_SCHEMAS: "0" }),
    ).toBe(false);
    expect(
      provisioningSwitch("autoRegisterSchemas", undefined, {
        MCPO_AUTO_REGISTER_SCHEMAS: " TRUE ",
      }),
    ).toBe(true);
    expect(provisioningSwitch("autoCreateTopics", true, { MCPO_AUTO_CREATE_TOPICS: "false" })).toBe(
      true,
    );
    expect(provisioningSwitch("autoCreateTopics", false, { MCPO_AUTO_CREATE_TOPICS: "true" })).toBe(
      false,
    );
  });

  it("anything else is a ConfigError naming the variable or option", () => {
    const thrown = (run: () => unknown): ConfigError => {
      try {
        run();
      } catch (error) {
        if (error instanceof ConfigError) return error;
        throw error;
      }
      throw new Error("no error");
    };
    const fromEnv = thrown(() =>
      provisioningSwitch("autoRegisterSchemas", undefined, { MCPO_AUTO_REGISTER_SCHEMAS: "no" }),
    );
    expect(fromEnv.key).toBe("MCPO_AUTO_REGISTER_SCHEMAS");
    expect(fromEnv.message).toContain('expected true or false (got "no")');
    const fromOption = thrown(() =>
      provisioningSwitch("autoCreateTopics", "false" as unknown as boolean, {}),
    );
    expect(fromOption.key).toBe("autoCreateTopics");
  });

  it("the exporter's variables are the processor's and the sink's", () => {
    for (const schema of [processorConfigSchema, sinkConfigSchema]) {
      expect(settingOf(schema, "autoCreateTopics").env).toBe("MCPO_AUTO_CREATE_TOPICS");
      expect(settingOf(schema, "autoRegisterSchemas").env).toBe("MCPO_AUTO_REGISTER_SCHEMAS");
    }
  });
});

describe("the switches on the command line", () => {
  /** What `mcp-observatory <command> <args>` resolves the setting to, with `env`. */
  function resolved(
    command: "processor" | "sink",
    args: readonly string[],
    env: NodeJS.ProcessEnv,
    key: "autoCreateTopics" | "autoRegisterSchemas",
  ): unknown {
    const program = buildProgram(() => undefined);
    const sub = program.commands.find((candidate) => candidate.name() === command);
    if (!sub) throw new Error(`no ${command} command`);
    sub.parseOptions([...args]);
    const schema = command === "processor" ? processorConfigSchema : sinkConfigSchema;
    return new SettingsResolver(sub.opts(), undefined, env).value(settingOf(schema, key));
  }

  it("--no-<switch> turns it off; no flag leaves the environment in charge; the flag turns it on", () => {
    expect(resolved("processor", [], {}, "autoCreateTopics")).toBe(true);
    expect(resolved("processor", ["--no-auto-create-topics"], {}, "autoCreateTopics")).toBe(false);
    expect(
      resolved("processor", [], { MCPO_AUTO_CREATE_TOPICS: "false" }, "autoCreateTopics"),
    ).toBe(false);
    expect(
      resolved(
        "sink",
        ["--auto-register-schemas"],
        { MCPO_AUTO_REGISTER_SCHEMAS: "false" },
        "autoRegisterSchemas",
      ),
    ).toBe(true);
    expect(resolved("sink", ["--no-auto-register-schemas"], {}, "autoRegisterSchemas")).toBe(false);
  });
});

describe("the refusals", () => {
  it("a missing topic names it and the command; not retriable", () => {
    const one = new TopicsNotProvisionedError(["mcpo.model-calls"]);
    expect(one.message).toBe(
      `topic mcpo.model-calls does not exist and autoCreateTopics is false: run \`${PROVISION_COMMAND}\` with operator rights (same brokers and topic prefix) to create it`,
    );
    expect([one.code, one.retriable]).toEqual(["TOPIC_MISSING", false]);
    expect(new TopicsNotProvisionedError(["a", "b"]).message).toMatch(
      /^topics a, b do not exist .* to create them$/,
    );
  });

  it("an unregistered schema names the subject, whether the subject is missing or holds other versions", () => {
    const missing = new SchemaNotRegisteredError("mcpo.alerts-value", "AlertEvent", false);
    expect(missing.message).toContain("subject mcpo.alerts-value does not exist");
    expect(missing.message).toContain(PROVISION_COMMAND);
    expect([missing.code, missing.retriable]).toEqual(["SCHEMA_NOT_REGISTERED", false]);
    const other = new SchemaNotRegisteredError("mcpo.alerts-value", "AlertEvent", true);
    expect(other.message).toContain(
      "subject mcpo.alerts-value has no version with this AlertEvent schema",
    );
  });
});
