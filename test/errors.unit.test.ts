/**
 * The error family: every error class the project raises is an ObservatoryError with its code and
 * retriable flag, describes itself for logs without secrets, and the CLI maps codes to exit codes
 * in one table.
 */
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

import kafkajs from "kafkajs";
import { afterEach, describe, expect, it, vi } from "vitest";

import { EncodeError } from "../avro/codec.js";
import { retriableStatus, SchemaRegistryError } from "../avro/registry.js";
import { run } from "../cli/main.js";
import { ERROR_EXITS, EXIT, failureOf, failureText, guardOutput } from "../cli/output.js";
import { checkRegistry, UnreachableError } from "../cli/preflight.js";
import {
  ConfigError,
  describeError,
  forgetSecrets,
  isRetriable,
  isSecretName,
  loadConnectionConfig,
  ObservatoryError,
  redactFields,
  redactingLogger,
  redactSecrets,
  redactUrl,
  rememberSecret,
  rememberSecretsIn,
  RetryExhaustedError,
  secretsIn,
  type ConnectionConfig,
} from "../config/index.js";
import { createRecordProducer, KafkaError, kafkaRetriable, toKafkaError } from "../kafka/index.js";
import { MissingTopicError } from "../processor/replay.js";
import * as entry from "../producer/index.js";
import { stderrLogger } from "../producer/logger.js";
import { StackError, type StackErrorCode } from "../stack/process.js";

const REPO_ROOT = fileURLToPath(new URL("..", import.meta.url));

const {
  KafkaJSConnectionError,
  KafkaJSError,
  KafkaJSNonRetriableError,
  KafkaJSNumberOfRetriesExceeded,
  KafkaJSProtocolError,
  KafkaJSRequestTimeoutError,
} = kafkajs;
/** kafkajs's typings give these no argument; at run time they take a message like the others. */
const KafkaJSTimeout = kafkajs.KafkaJSTimeout as unknown as new (message: string) => Error;
const KafkaJSLockTimeout = kafkajs.KafkaJSLockTimeout as unknown as new (message: string) => Error;
const KafkaJSSASLAuthenticationError = kafkajs.KafkaJSSASLAuthenticationError as unknown as new (
  message: string,
) => Error;

function caught(run: () => unknown): unknown {
  try {
    run();
  } catch (error) {
    return error;
  }
  throw new Error("expected a throw");
}

describe("ObservatoryError", () => {
  it("carries code, retriable (false by default), cause and context", () => {
    const cause = new Error("socket hang up");
    const error = new ObservatoryError("BROKER_DOWN", "producing failed", {
      retriable: true,
      cause,
      context: { topic: "mcpo.model-calls", partition: 3, offset: "42", key: "payments-mcp" },
    });
    expect(error).toBeInstanceOf(Error);
    expect(error.name).toBe("ObservatoryError");
    expect(error.message).toBe("producing failed");
    expect(error.code).toBe("BROKER_DOWN");
    expect(error.retriable).toBe(true);
    expect(error.cause).toBe(cause);
    expect(error.context).toEqual({
      topic: "mcpo.model-calls",
      partition: 3,
      offset: "42",
      key: "payments-mcp",
    });
    const plain = new ObservatoryError("X", "y");
    expect(plain.retriable).toBe(false);
    expect(plain.context).toBeUndefined();
    expect("cause" in plain).toBe(false);
  });

  it("describes itself for logs: code, retriable, context and the cause chain, no stack, no passwords", () => {
    const driver = Object.assign(
      new Error(
        'connect to postgresql://writer:s3cr3t@db:5432/obs failed; conninfo "host=db password=hunter2 user=writer"',
      ),
      { code: "ECONNREFUSED" },
    );
    const error = new ObservatoryError("DB_DOWN", "writing to postgres://app:topsecret@db/obs", {
      retriable: true,
      cause: driver,
      context: { topic: "mcpo.metric-rollups", partition: 0 },
    });
    const description = error.toJSON();
    expect(description).toEqual({
      name: "ObservatoryError",
      code: "DB_DOWN",
      message: "writing to postgres://app:***@db/obs",
      retriable: true,
      context: { topic: "mcpo.metric-rollups", partition: 0 },
      cause: {
        name: "Error",
        code: "ECONNREFUSED",
        message:
          'connect to postgresql://writer:***@db:5432/obs failed; conninfo "host=db password=*** user=writer"',
      },
    });
    const logged = JSON.stringify({ error });
    expect(JSON.parse(logged)).toEqual({ error: description });
    for (const secret of ["s3cr3t", "hunter2", "topsecret"]) expect(logged).not.toContain(secret);
    expect(logged).not.toContain("at ");
  });

  it("redacts URL passwords and password= settings, and leaves everything else alone", () => {
    expect(redactSecrets("amqp://u:p@h:1/x and http://h/path?password=abc&x=1")).toBe(
      "amqp://u:***@h:1/x and http://h/path?password=***&x=1",
    );
    expect(redactSecrets("postgres://postgres@127.0.0.1:5432/db, 12:30:45 at 10.0.0.1:9092")).toBe(
      "postgres://postgres@127.0.0.1:5432/db, 12:30:45 at 10.0.0.1:9092",
    );
    expect(describeError("plain string with pwd=x")).toEqual({
      name: "string",
      message: "plain string with pwd=***",
    });
  });

  it("stops describing a cause chain that loops", () => {
    const a = new Error("a");
    const b = new Error("b", { cause: a });
    (a as { cause?: unknown }).cause = b;
    let depth = 0;
    for (let d: { cause?: unknown } | undefined = describeError(b); d; depth++)
      d = d.cause as { cause?: unknown } | undefined;
    expect(depth).toBe(6);
  });

  it("isRetriable: true only for errors carrying retriable: true", () => {
    expect(isRetriable(new ObservatoryError("A", "a", { retriable: true }))).toBe(true);
    expect(isRetriable(Object.assign(new Error("x"), { retriable: true }))).toBe(true);
    expect(isRetriable(new ObservatoryError("A", "a"))).toBe(false);
    expect(isRetriable(new Error("x"))).toBe(false);
    expect(isRetriable({ retriable: "yes" })).toBe(false);
    expect(isRetriable(undefined)).toBe(false);
  });
});

describe("the project's error classes are ObservatoryErrors", () => {
  it("ConfigError: CONFIG_INVALID, not retriable, names the key, same message", () => {
    const error = caught(() => loadConnectionConfig({}, { KAFKA_BROKERS: "kafka" }));
    expect(error).toBeInstanceOf(ConfigError);
    expect(error).toBeInstanceOf(ObservatoryError);
    const config = error as ConfigError;
    expect([config.name, config.code, config.retriable, config.key]).toEqual([
      "ConfigError",
      "CONFIG_INVALID",
      false,
      "KAFKA_BROKERS",
    ]);
    expect(config.message).toMatch(/^invalid configuration KAFKA_BROKERS: expected host:port/);
    const cause = new Error("ENOENT");
    expect(new ConfigError("--config", "cannot read x", { cause }).cause).toBe(cause);
  });

  it("KafkaError: the code given, retriable as given", () => {
    const error = new KafkaError("probe timed out", "ROUND_TRIP_TIMEOUT", true);
    expect(error).toBeInstanceOf(ObservatoryError);
    expect([error.name, error.code, error.retriable, error.message]).toEqual([
      "KafkaError",
      "ROUND_TRIP_TIMEOUT",
      true,
      "probe timed out",
    ]);
  });

  it("toKafkaError: retriable from kafkajs's own flag and explicit lists, not from the error's name", () => {
    const refused = new KafkaJSConnectionError("Connection error: connect ECONNREFUSED");
    const cases: [string, unknown, string, boolean][] = [
      ["a refused connection", refused, "KafkaJSConnectionError", true],
      [
        "kafkajs's retries exhausted on a refused connection",
        new KafkaJSNumberOfRetriesExceeded(refused, { retryCount: 2, retryTime: 400 }),
        "KafkaJSNumberOfRetriesExceeded",
        true,
      ],
      [
        "kafkajs's retries exhausted, wrapped again as non-retriable by an outer retrier",
        new KafkaJSNonRetriableError(
          new KafkaJSNumberOfRetriesExceeded(refused, { retryCount: 2, retryTime: 400 }),
          // kafkajs passes the root cause along.
          ...([{ cause: refused }] as unknown as []),
        ),
        "KafkaJSNonRetriableError",
        true,
      ],
      [
        "kafkajs's retries exhausted on an error of unknown kind",
        new KafkaJSNumberOfRetriesExceeded(new Error("something odd"), {
          retryCount: 2,
          retryTime: 400,
        }),
        "KafkaJSNumberOfRetriesExceeded",
        false,
      ],
      [
        "a failed authentication",
        new KafkaJSSASLAuthenticationError("SASL PLAIN authentication failed"),
        "SASL_AUTHENTICATION_FAILED",
        false,
      ],
      [
        "a failed authentication, wrapped",
        new KafkaJSNonRetriableError(new KafkaJSSASLAuthenticationError("bad password")),
        "KafkaJSNonRetriableError",
        false,
      ],
      [
        "a request timeout",
        new KafkaJSRequestTimeoutError("Request Produce(key: 0, version: 7) timed out"),
        "KafkaJSRequestTimeoutError",
        true,
      ],
      ["waiting for leaders timed out", new KafkaJSTimeout("timeout"), "KafkaJSTimeout", true],
      ["a lock timed out", new KafkaJSLockTimeout("lock"), "KafkaJSLockTimeout", true],
      [
        "a broker's transient error type",
        new KafkaJSProtocolError({
          message: "There is no leader for this topic-partition",
          type: "LEADER_NOT_AVAILABLE",
          code: 5,
          retriable: true,
        } as unknown as Error),
        "LEADER_NOT_AVAILABLE",
        true,
      ],
      [
        "a broker's refusal",
        new KafkaJSProtocolError({
          message: "Not authorized to access topics",
          type: "TOPIC_AUTHORIZATION_FAILED",
          code: 29,
          retriable: false,
        } as unknown as Error),
        "TOPIC_AUTHORIZATION_FAILED",
        false,
      ],
      [
        "an error named like a connection failure but flagged by nobody",
        Object.assign(new Error("Connection pool full"), { name: "MyConnectionTimeoutError" }),
        "MyConnectionTimeoutError",
        false,
      ],
      ["a bug", new TypeError("x is undefined"), "TypeError", false],
      ["a thrown string", "boom", "Error", false],
    ];
    for (const [what, thrown, code, retriable] of cases) {
      const error = toKafkaError(thrown, "producing 3 record(s) to t");
      expect(error, what).toBeInstanceOf(KafkaError);
      expect(error, what).toBeInstanceOf(ObservatoryError);
      expect([error.code, error.retriable], what).toEqual([code, retriable]);
      expect(kafkaRetriable(thrown), what).toBe(retriable);
      expect(error.cause, what).toBe(thrown);
      expect(error.message, what).toMatch(/^producing 3 record\(s\) to t: /);
    }
    // A generic kafkajs error keeps kafkajs's default: retriable.
    expect(toKafkaError(new KafkaJSError("Closed connection"), "x").retriable).toBe(true);
  });

  it("a producer that cannot reach its broker fails with a retriable KafkaError", async () => {
    const producer = createRecordProducer({
      brokers: ["127.0.0.1:1"],
      clientId: "errors-unit",
      connectionTimeoutMs: 500,
    });
    const error = await producer.connect().catch((thrown: unknown) => thrown);
    await producer.disconnect().catch(() => undefined);
    expect(error).toBeInstanceOf(KafkaError);
    expect((error as KafkaError).retriable).toBe(true);
    expect((error as KafkaError).message).toMatch(/^connecting the producer: /);
  });

  it("SchemaRegistryError: SCHEMA_REGISTRY_ERROR by default or SCHEMA_INCOMPATIBLE, retriable as given, status kept", () => {
    const down = new SchemaRegistryError("no answer", undefined, undefined, true);
    expect(down).toBeInstanceOf(ObservatoryError);
    expect([down.name, down.code, down.retriable, down.status]).toEqual([
      "SchemaRegistryError",
      "SCHEMA_REGISTRY_ERROR",
      true,
      undefined,
    ]);
    const refused = new SchemaRegistryError(
      "incompatible",
      409,
      409,
      false,
      {},
      "SCHEMA_INCOMPATIBLE",
    );
    expect([refused.code, refused.retriable, refused.status, refused.registryErrorCode]).toEqual([
      "SCHEMA_INCOMPATIBLE",
      false,
      409,
      409,
    ]);
    expect([undefined, 500, 503, 408, 429].map(retriableStatus)).toEqual([
      true,
      true,
      true,
      true,
      true,
    ]);
    expect([200, 400, 404, 409, 422].map(retriableStatus)).toEqual([
      false,
      false,
      false,
      false,
      false,
    ]);
  });

  it("EncodeError: INVALID_EVENT, never retriable, same message and fields", () => {
    const error = new EncodeError("ModelCallEvent", "end_time", "is before start_time");
    expect(error).toBeInstanceOf(ObservatoryError);
    expect([error.name, error.code, error.retriable, error.message]).toEqual([
      "EncodeError",
      "INVALID_EVENT",
      false,
      "cannot encode ModelCallEvent: end_time is before start_time",
    ]);
    expect([error.record, error.path, error.reason]).toEqual([
      "ModelCallEvent",
      "end_time",
      "is before start_time",
    ]);
  });

  it("MissingTopicError: TOPIC_MISSING, not retriable", () => {
    const error = new MissingTopicError("nothing to replay: topic x does not exist");
    expect(error).toBeInstanceOf(ObservatoryError);
    expect([error.name, error.code, error.retriable, error.message]).toEqual([
      "MissingTopicError",
      "TOPIC_MISSING",
      false,
      "nothing to replay: topic x does not exist",
    ]);
  });

  it("StackError: its code; retriable only for what may pass by itself", () => {
    const retriable: Record<StackErrorCode, boolean> = {
      JAVA_MISSING: false,
      JAVA_TOO_OLD: false,
      MAVEN_MISSING: false,
      DOWNLOAD_FAILED: true,
      PORT_TAKEN: false,
      START_FAILED: false,
      START_TIMEOUT: true,
      POSTGRES_UNAVAILABLE: true,
    };
    for (const [code, expected] of Object.entries(retriable) as [StackErrorCode, boolean][]) {
      const error = new StackError(code, "message");
      expect(error, code).toBeInstanceOf(ObservatoryError);
      expect([error.name, error.code, error.retriable], code).toEqual([
        "StackError",
        code,
        expected,
      ]);
    }
  });

  it("UnreachableError: SERVICE_UNREACHABLE, retriable", () => {
    const error = new UnreachableError("cannot reach Kafka");
    expect(error).toBeInstanceOf(ObservatoryError);
    expect([error.name, error.code, error.retriable, error.message]).toEqual([
      "UnreachableError",
      "SERVICE_UNREACHABLE",
      true,
      "cannot reach Kafka",
    ]);
  });

  it("the package entry exports the family", () => {
    expect(entry.ObservatoryError).toBe(ObservatoryError);
    expect(entry.RetryExhaustedError).toBe(RetryExhaustedError);
    expect(new entry.ConfigError("k", "m")).toBeInstanceOf(entry.ObservatoryError);
  });
});

describe("the CLI's exit codes, from one table", () => {
  it("maps each error code to its exit code and line", () => {
    const cases: [unknown, number, string][] = [
      [
        new ConfigError("--brokers", "expected host:port"),
        2,
        "invalid configuration --brokers: expected host:port",
      ],
      [new UnreachableError("cannot reach Kafka"), 3, "cannot reach Kafka"],
      [
        new StackError("POSTGRES_UNAVAILABLE", "PostgreSQL does not answer"),
        3,
        "stack POSTGRES_UNAVAILABLE: PostgreSQL does not answer",
      ],
      [
        new StackError("PORT_TAKEN", "port 9092 is taken"),
        1,
        "stack PORT_TAKEN: port 9092 is taken",
      ],
      [new MissingTopicError("nothing to replay"), 1, "nothing to replay"],
      [
        new KafkaError("producing failed", "KafkaJSConnectionError", true),
        1,
        "producing failed (run with --verbose for details)",
      ],
      [
        new RetryExhaustedError(3, new Error("down")),
        1,
        "gave up after 3 attempt(s): down (run with --verbose for details)",
      ],
      [new Error("a bug"), 1, "a bug (run with --verbose for details)"],
      ["thrown string", 1, "thrown string (run with --verbose for details)"],
    ];
    for (const [error, exitCode, line] of cases)
      expect(failureOf(error, false), line).toEqual({ exitCode, line });
    expect(failureOf(new Error("a bug"), true)).toEqual({ exitCode: 1, line: "a bug" });
    expect(EXIT).toEqual({ ok: 0, failure: 1, usage: 2, unreachable: 3, interrupted: 130 });
    expect(Object.keys(ERROR_EXITS)).toContain("CONFIG_INVALID");
  });
});

describe("errors thrown back into the Kafka consumer", () => {
  // kafkajs's consumer decides by the error's `type` whether to rejoin the group or to crash.
  const require = createRequire(import.meta.url);
  const { isRebalancing } = require("kafkajs/src/errors") as {
    isRebalancing: (error: unknown) => boolean;
  };

  it("keep the broker's error type, so a commit refused during a rebalance makes the consumer rejoin, not crash", () => {
    for (const type of [
      "REBALANCE_IN_PROGRESS",
      "ILLEGAL_GENERATION",
      "NOT_COORDINATOR_FOR_GROUP",
    ]) {
      const refused = Object.assign(new kafkajs.KafkaJSProtocolError(`refused: ${type}`), { type });
      expect(isRebalancing(refused), `kafkajs's own ${type}`).toBe(true);
      const wrapped = toKafkaError(refused, "committing t[0]@5");
      expect(wrapped.type).toBe(type);
      expect(isRebalancing(wrapped), `${type} wrapped at the kafka/ boundary`).toBe(true);
    }
    const unknownMember = toKafkaError(
      Object.assign(new kafkajs.KafkaJSProtocolError("unknown member"), {
        type: "UNKNOWN_MEMBER_ID",
      }),
      "committing t[0]@5",
    );
    expect(unknownMember.type).toBe("UNKNOWN_MEMBER_ID");
  });
});

describe("secrets are never printed", () => {
  const SECRET = "S3cr3t-Pw-9f2c";

  afterEach(() => {
    forgetSecrets();
    vi.restoreAllMocks();
  });

  it("redacts passwords of URLs, secret query parameters and settings, tokens and credentials", () => {
    const cases: [string, string][] = [
      [
        `postgresql://u:${SECRET}@db:5432/obs?sslmode=bogus`,
        "postgresql://u:***@db:5432/obs?sslmode=bogus",
      ],
      // Unparseable: no host.
      [`https://u:${SECRET}@`, "https://u:***@"],
      // An `@` in the password: up to the authority's last one.
      [`postgres://u:p@${SECRET}@db/obs`, "postgres://u:***@db/obs"],
      [
        `postgresql://u@db/obs?sslmode=require&password=${SECRET}&application_name=x`,
        "postgresql://u@db/obs?sslmode=require&password=***&application_name=x",
      ],
      [
        `postgres://db/obs?sslpassword=${SECRET}&sslkey=/k.pem`,
        "postgres://db/obs?sslpassword=***&sslkey=/k.pem",
      ],
      [`http://reg/x?token=${SECRET}`, "http://reg/x?token=***"],
      [`https://h/cb#access_token=${SECRET}&x=1`, "https://h/cb#access_token=***&x=1"],
      [`https://maps/api?key=${SECRET}`, "https://maps/api?key=***"],
      [`Authorization: Basic ${SECRET}`, "Authorization: Basic ***"],
      [`authorization: Bearer ${SECRET}`, "authorization: Bearer ***"],
      [`{"Authorization":"Bearer ${SECRET}"}`, '{"Authorization":"***"}'],
      [`sent with Bearer ${SECRET}.abc.def`, "sent with Bearer ***"],
      [
        `sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="u" password="${SECRET}";`,
        'sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="u" password="***";',
      ],
      [
        `sasl.jaas.config="ScramLoginModule required password=\\"${SECRET}\\";"`,
        'sasl.jaas.config="ScramLoginModule required password=\\"***\\";"',
      ],
      [`KAFKA_SASL_PASSWORD=${SECRET} node x`, "KAFKA_SASL_PASSWORD=*** node x"],
      [`--kafka-sasl-password=${SECRET}`, "--kafka-sasl-password=***"],
      [`host=db password='${SECRET}' user=w`, "host=db password='***' user=w"],
      [
        `{"saslPassword":"${SECRET}","oauthBearerToken":"${SECRET}","user":"u"}`,
        '{"saslPassword":"***","oauthBearerToken":"***","user":"u"}',
      ],
      [`{\\"password\\":\\"${SECRET}\\"}`, '{\\"password\\":\\"***\\"}'],
    ];
    for (const [text, redacted] of cases) {
      expect(redactSecrets(text), text).toBe(redacted);
      // One mechanism: a URL alone and a URL in a message are redacted alike.
      expect(redactUrl(text), text).toBe(redacted);
      expect(redactSecrets(`failed: ${text} (retrying)`)).toBe(`failed: ${redacted} (retrying)`);
      expect(redactSecrets(redacted), "idempotent").toBe(redacted);
    }
  });

  it("redacts long text in one pass: no pattern backtracks over it once per character", () => {
    for (const text of [
      "a.".repeat(200_000),
      "host.name:".repeat(40_000),
      "x_y ".repeat(100_000),
      "-".repeat(400_000),
      "?key=1&".repeat(50_000),
      `password="${"x".repeat(400_000)}`,
    ]) {
      const started = performance.now();
      redactSecrets(text);
      expect(performance.now() - started, text.slice(0, 20)).toBeLessThan(1500);
    }
  });

  it("leaves ordinary text alone", () => {
    for (const text of [
      "postgres://postgres@127.0.0.1:5432/db, 12:30:45 at 10.0.0.1:9092",
      "http://127.0.0.1:8081/apis/ccompat/v7/subjects?deleted=true&x=1",
      "Basic authentication failed; use a bearer token (SCHEMA_REGISTRY_TOKEN)",
      "dead-lettered a record key=payments-mcp offset=42 completion_tokens=17 maxTokens=5",
      "invalid configuration KAFKA_SASL_PASSWORD: expected a non-empty string",
      '{"key":"payments-mcp","tokens":12,"topic":"mcpo.model-calls"}',
    ])
      expect(redactSecrets(text), text).toBe(text);
  });

  it("names: passwords, tokens, secrets, keys of TLS and hashing are secrets; record keys and counts are not", () => {
    for (const name of [
      "KAFKA_SASL_PASSWORD",
      "KAFKA_SASL_OAUTHBEARER_TOKEN",
      "KAFKA_SSL_KEY_PASSWORD",
      "SCHEMA_REGISTRY_PASSWORD",
      "SCHEMA_REGISTRY_TOKEN",
      "schemaRegistry.token",
      "kafka.saslPassword",
      "kafkaOauthBearerToken",
      "sslpassword",
      "client_secret",
      "MCPO_HASH_KEY",
      "x-api-key",
      "Authorization",
      "key",
    ])
      expect(isSecretName(name), name).toBe(true);
    for (const name of [
      "KAFKA_SASL_USERNAME",
      "KAFKA_SASL_MECHANISM",
      "KAFKA_SSL_CA_FILE",
      // Paths of secrets' files, printed by `stack up` for pasting: not secrets themselves.
      "KAFKA_SASL_PASSWORD_FILE",
      "KAFKA_SSL_KEY_FILE",
      "saslPasswordFile",
      "DATABASE_URL",
      "SCHEMA_REGISTRY_URL",
      "partitionKey",
      "completion_tokens",
      "maxTokensPerWindow",
      "sslmode",
      "PWD",
      "OLDPWD",
    ])
      expect(isSecretName(name), name).toBe(false);
  });

  it("remembers the secrets of the environment and replaces them wherever they occur", () => {
    const env = {
      KAFKA_SASL_PASSWORD: SECRET,
      SCHEMA_REGISTRY_TOKEN: "tok-1234567890",
      DATABASE_URL: "postgresql://u:Db-pass-77@db/x?password=Query-pw-88",
      KAFKA_SASL_USERNAME: "someone",
      SHORT_TOKEN: "abc",
      PGPASSWORD: "postgres",
      PWD: "/home/someone/project-dir",
    };
    expect(secretsIn(env.DATABASE_URL)).toEqual(["Query-pw-88", "Db-pass-77"]);
    rememberSecretsIn(env);
    const text = `auth failed for ${SECRET} / ${encodeURIComponent("Db-pass-77")} / tok-1234567890 / Query-pw-88 as someone`;
    expect(redactSecrets(text)).toBe("auth failed for *** / *** / *** / *** as someone");
    // Too short or an ordinary word: not replaced everywhere (a rule still hides it in context).
    expect(redactSecrets("abc postgresql://postgres@db")).toBe("abc postgresql://postgres@db");
    expect(redactSecrets("at /home/someone/project-dir/x.ts")).toBe(
      "at /home/someone/project-dir/x.ts",
    );
    rememberSecret('q"uote-secret-1');
    expect(redactSecrets(JSON.stringify({ x: 'q"uote-secret-1' }))).toBe('{"x":"***"}');
  });

  it("an ObservatoryError's message and stack hold no secret", () => {
    const error = new ObservatoryError("X", `connect postgresql://u:${SECRET}@db failed`);
    expect(error.message).toBe("connect postgresql://u:***@db failed");
    expect(error.stack).toContain("postgresql://u:***@db");
    expect(error.stack).not.toContain(SECRET);
  });

  it("the CLI's error line and --verbose stack hold no secret, whatever threw", () => {
    for (const error of [
      new Error(`connect postgresql://u:${SECRET}@db failed`),
      Object.assign(new Error("request failed"), {
        stack: `Error: request failed with Authorization: Bearer ${SECRET}\n    at x (y.ts:1:1)`,
      }),
      `thrown string password=${SECRET}`,
    ])
      for (const verbose of [false, true]) {
        expect(failureOf(error, verbose).line).not.toContain(SECRET);
        expect(failureText(error, verbose)).not.toContain(SECRET);
      }
    expect(failureText(new Error(`x password=${SECRET}`), true)).toMatch(
      /^x password=\*\*\*\nError: x password=\*\*\*\n\s+at /,
    );
  });

  it("the CLI prints a config error without the secret, with and without --verbose", async () => {
    const printed: string[] = [];
    vi.spyOn(process.stderr, "write").mockImplementation((chunk: string | Uint8Array) => {
      printed.push(String(chunk));
      return true;
    });
    for (const verbose of [[], ["--verbose"]]) {
      const code = await run([
        ...verbose,
        "processor",
        "--schema-registry-url",
        `https://u:${SECRET}@`,
      ]);
      expect(code).toBe(EXIT.usage);
    }
    const output = printed.join("");
    expect(output).toContain("invalid configuration --schema-registry-url");
    expect(output).toContain("https://u:***@");
    expect(output).toContain("    at ");
    expect(output).not.toContain(SECRET);
  });

  it("preflight names the registry without its user-info", async () => {
    const config = {
      kafkaBrokers: ["127.0.0.1:1"],
      schemaRegistryUrl: `http://u:${SECRET}@127.0.0.1:1/apis/ccompat/v7`,
      databaseUrl: "postgresql://u@127.0.0.1:1/x",
      topicPrefix: "mcpo.",
      schemaRegistry: { url: `http://u:${SECRET}@127.0.0.1:1/apis/ccompat/v7` },
    } as ConnectionConfig;
    const error = await checkRegistry(config, 500).then(
      () => undefined,
      (failure: unknown) => failure,
    );
    expect(error).toBeInstanceOf(UnreachableError);
    expect((error as Error).message).toContain("u:***@127.0.0.1:1");
    expect((error as Error).message).not.toContain(SECRET);
    expect((error as Error).stack).not.toContain(SECRET);
  });

  it("log fields: strings redacted, secret fields hidden, errors described, record keys kept", () => {
    const fields = redactFields({
      error: `connect postgresql://u:${SECRET}@db failed`,
      cause: new Error(`password=${SECRET}`),
      sasl: { mechanism: "scram-sha-512", username: "u", password: SECRET },
      headers: [{ authorization: `Bearer ${SECRET}` }],
      key: "payments-mcp",
      tokens: 12,
      at: new Date(0),
    });
    expect(JSON.stringify(fields)).not.toContain(SECRET);
    expect(fields).toMatchObject({
      error: "connect postgresql://u:***@db failed",
      cause: { name: "Error", message: "password=***" },
      sasl: { mechanism: "scram-sha-512", username: "u", password: "***" },
      headers: [{ authorization: "***" }],
      key: "payments-mcp",
      tokens: 12,
      at: new Date(0),
    });
  });

  it("every logger the project gives or wraps redacts messages and fields", () => {
    const lines: string[] = [];
    const recording = {
      level: "info",
      info: (message: string, context?: Readonly<Record<string, unknown>>) => {
        lines.push(JSON.stringify({ message, context }));
      },
      warn: (message: string, context?: Readonly<Record<string, unknown>>) => {
        lines.push(JSON.stringify({ message, context }));
      },
      error: (message: string) => {
        lines.push(message);
      },
    };
    const logger = redactingLogger(recording);
    expect(redactingLogger(logger)).toBe(logger);
    expect(logger.level).toBe("info");
    logger.info(`connected to postgresql://u:${SECRET}@db`);
    logger.warn("delivery failed", { error: `token=${SECRET}`, partition: 3 });
    logger.error(`Authorization: Basic ${SECRET}`);
    expect(lines).toHaveLength(3);
    expect(lines.join("\n")).not.toContain(SECRET);
    expect(lines[1]).toContain('"partition":3');

    const written: string[] = [];
    vi.spyOn(process.stderr, "write").mockImplementation((chunk: string | Uint8Array) => {
      written.push(String(chunk));
      return true;
    });
    stderrLogger.warn(`lost postgresql://u:${SECRET}@db`, { error: `password=${SECRET}` });
    stderrLogger.error("x", { cause: new Error(`Bearer ${SECRET}`) });
    expect(written).toHaveLength(2);
    expect(written.join("")).not.toContain(SECRET);
  });

  it("pinoLogger's JSON lines hold no secret", () => {
    const script = [
      'import { pinoLogger } from "./ops/index.ts";',
      `const secret = ${JSON.stringify(SECRET)};`,
      'pinoLogger("test", "info").error("failed: postgresql://u:" + secret + "@db", {',
      '  error: "sslpassword=" + secret, config: { saslPassword: secret } });',
    ].join("\n");
    const output = execFileSync(
      process.execPath,
      ["--import", "tsx", "--input-type=module", "-e", script],
      {
        cwd: REPO_ROOT,
        encoding: "utf8",
      },
    );
    expect(output).toContain("postgresql://u:***@db");
    expect(output).toContain('"saslPassword":"***"');
    expect(output).not.toContain(SECRET);
  });

  it("the CLI's output streams pass through the redaction, whatever wrote to them", () => {
    const written: string[] = [];
    const stream = {
      write(chunk: string | Uint8Array): boolean {
        written.push(typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8"));
        return true;
      },
    } as unknown as NodeJS.WritableStream;
    guardOutput(stream);
    guardOutput(stream);
    rememberSecret(SECRET);
    stream.write(`plain ${SECRET}\n`);
    stream.write(Buffer.from(`export DATABASE_URL=postgresql://u:other-Pw-1@db\n`));
    expect(written).toEqual(["plain ***\n", "export DATABASE_URL=postgresql://u:***@db\n"]);
  });
});
