/**
 * What a replica ships about content and identifiers: prompt and response digests are keyed
 * (HMAC-SHA-256 with the configured key) or absent, never a plain SHA-256 a dictionary reverses;
 * `captureContent` without a redaction hook warns once; the MCP integration records session ids and
 * resource URIs hashed with the key, as sent only when the host opts in, else not at all.
 *
 * Only the public options are used (no module of the key's own), so this file also runs against
 * the code before keyed digests (where it fails: the digest is SHA-256 of the prompt).
 */
import { createHash, createHmac } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { InMemoryTransport } from "@modelcontextprotocol/sdk/inMemory.js";
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import type { ModelCallEvent } from "../avro/generated.js";
import { ConfigError } from "../config/index.js";
import { createExampleServer } from "../examples/simple-mcp-server.js";
import { InMemoryExporter } from "../producer/exporters/memory.js";
import { instrument } from "../producer/interceptor.js";
import { silentLogger, type Logger } from "../producer/logger.js";
import { instrumentMcpServer } from "../producer/mcp.js";
import type { InstrumentOptions } from "../producer/types.js";
import { waitFor } from "./support/wait.js";

/** A known key (37 bytes of text): its digests are computed here with node's createHmac. */
const KEY = "test-content-hash-key-0123456789abcdef";
const OTHER_KEY = "another-content-hash-key-0123456789ab";

const sha256 = (text: string): Buffer => createHash("sha256").update(text, "utf8").digest();
const hmac = (key: string | Buffer, text: string): Buffer =>
  createHmac("sha256", key).update(text, "utf8").digest();

/** Short texts an attacker would try first: answers, numbers, greetings. */
const DICTIONARY = [
  "yes",
  "no",
  "ok",
  "approve",
  "decline",
  "Hello MCP",
  "Hello human",
  ...Array.from({ length: 10_000 }, (_, i) => String(i).padStart(4, "0")),
];

/** The dictionary attack on a digest: the candidate whose SHA-256 it is, if any. */
function reverse(digest: Buffer | null | undefined): string | undefined {
  if (!digest) return undefined;
  return DICTIONARY.find((candidate) => sha256(candidate).equals(digest));
}

function recordingLogger(): Logger & { lines: { level: string; message: string }[] } {
  const lines: { level: string; message: string }[] = [];
  return {
    lines,
    warn: (message, context) =>
      lines.push({ level: "warn", message: `${message} ${JSON.stringify(context ?? {})}` }),
    error: (message, context) =>
      lines.push({ level: "error", message: `${message} ${JSON.stringify(context ?? {})}` }),
  };
}

function configError(run: () => unknown): ConfigError {
  try {
    run();
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error("expected a ConfigError");
}

/** One model call through an interceptor made with `options`. */
async function call(
  options: Partial<InstrumentOptions>,
  input: { prompt?: string; response?: string } = { prompt: "yes", response: "0042" },
): Promise<ModelCallEvent> {
  const interceptor = instrument({ serviceName: "privacy-mcp", logger: silentLogger, ...options });
  const event = await interceptor.interceptModelCall({
    model: "gpt-4o",
    usage: { promptTokens: 1, completionTokens: 1 },
    ...input,
  });
  if (!event) throw new Error("no event");
  return event;
}

// No test depends on the environment the suite runs in: both variables are cleared, then set
// where a test needs them.
beforeEach(() => {
  vi.stubEnv("MCPO_CONTENT_HASH_KEY", "");
  vi.stubEnv("MCPO_CONTENT_HASH_KEY_FILE", "");
});
afterEach(() => {
  vi.unstubAllEnvs();
});

const scratch = mkdtempSync(join(tmpdir(), "mcpo-content-hash-"));
afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

describe("prompt and response digests", () => {
  it("a known short prompt's digest is not reversed by a dictionary of SHA-256 digests: it is the HMAC-SHA-256 with the configured key", async () => {
    const event = await call({ contentHashKey: KEY });
    expect(reverse(event.prompt_sha256)).toBeUndefined();
    expect(reverse(event.response_sha256)).toBeUndefined();
    expect(event.prompt_sha256).toEqual(hmac(KEY, "yes"));
    expect(event.response_sha256).toEqual(hmac(KEY, "0042"));
    expect(event.prompt_sha256).not.toEqual(sha256("yes"));
    // Still the whole text's size.
    expect([event.prompt_size_bytes, event.response_size_bytes]).toEqual([3, 4]);
  });

  it("without a key nothing is hashed: both digests are null, the sizes stay", async () => {
    const event = await call({});
    expect(event.prompt_sha256).toBeNull();
    expect(event.response_sha256).toBeNull();
    expect([event.prompt_size_bytes, event.response_size_bytes]).toEqual([3, 4]);
  });

  it("equal texts have equal digests across a fleet sharing the key, and unrelated digests under another key", async () => {
    const a = await call({ contentHashKey: KEY }, { prompt: "Hello MCP" });
    const b = await call({ contentHashKey: KEY }, { prompt: "Hello MCP" });
    const other = await call({ contentHashKey: OTHER_KEY }, { prompt: "Hello MCP" });
    expect(a.prompt_sha256).toEqual(b.prompt_sha256);
    expect(other.prompt_sha256).toEqual(hmac(OTHER_KEY, "Hello MCP"));
    expect(other.prompt_sha256).not.toEqual(a.prompt_sha256);
  });

  it("the key as bytes is the key as the text of those bytes", async () => {
    const asBytes = await call({ contentHashKey: new Uint8Array(Buffer.from(KEY, "utf8")) });
    expect(asBytes.prompt_sha256).toEqual(hmac(KEY, "yes"));
    const binary = Buffer.alloc(32, 0xa5);
    expect((await call({ contentHashKey: binary })).prompt_sha256).toEqual(hmac(binary, "yes"));
  });

  it("the key from MCPO_CONTENT_HASH_KEY, or from the file MCPO_CONTENT_HASH_KEY_FILE names (one trailing newline dropped): the same digests", async () => {
    vi.stubEnv("MCPO_CONTENT_HASH_KEY", KEY);
    expect((await call({})).prompt_sha256).toEqual(hmac(KEY, "yes"));
    vi.stubEnv("MCPO_CONTENT_HASH_KEY", "");
    for (const [name, text] of [
      ["echo", `${KEY}\n`],
      ["crlf", `${KEY}\r\n`],
      ["bare", KEY],
    ] as const) {
      const file = join(scratch, `key-${name}`);
      writeFileSync(file, text);
      vi.stubEnv("MCPO_CONTENT_HASH_KEY_FILE", file);
      expect((await call({})).prompt_sha256, name).toEqual(hmac(KEY, "yes"));
    }
  });

  it("the option wins over the environment; null turns hashing off whatever the environment says", async () => {
    vi.stubEnv("MCPO_CONTENT_HASH_KEY", OTHER_KEY);
    expect((await call({ contentHashKey: KEY })).prompt_sha256).toEqual(hmac(KEY, "yes"));
    expect((await call({ contentHashKey: null })).prompt_sha256).toBeNull();
  });

  it("a short key, both variables, or an unreadable file is refused, naming where, never echoing the key", () => {
    const short = "too-short-key-of-25-bytes";
    const fromOption = configError(() =>
      instrument({ serviceName: "s", logger: silentLogger, contentHashKey: short }),
    );
    expect(fromOption.key).toBe("contentHashKey");
    expect(fromOption.message).toContain("at least 32 bytes (got 25)");
    expect(fromOption.message).not.toContain(short);

    vi.stubEnv("MCPO_CONTENT_HASH_KEY", short);
    const fromEnv = configError(() => instrument({ serviceName: "s", logger: silentLogger }));
    expect(fromEnv.key).toBe("MCPO_CONTENT_HASH_KEY");
    expect(fromEnv.message).not.toContain(short);

    vi.stubEnv("MCPO_CONTENT_HASH_KEY", KEY);
    vi.stubEnv("MCPO_CONTENT_HASH_KEY_FILE", join(scratch, "key-bare"));
    const both = configError(() => instrument({ serviceName: "s", logger: silentLogger }));
    expect(both.message).toContain(
      "give either MCPO_CONTENT_HASH_KEY or MCPO_CONTENT_HASH_KEY_FILE, not both",
    );
    expect(both.message).not.toContain(KEY);

    vi.stubEnv("MCPO_CONTENT_HASH_KEY", "");
    vi.stubEnv("MCPO_CONTENT_HASH_KEY_FILE", join(scratch, "missing"));
    const missing = configError(() => instrument({ serviceName: "s", logger: silentLogger }));
    expect(missing.key).toBe("MCPO_CONTENT_HASH_KEY_FILE");
    expect(missing.message).toContain("(ENOENT)");
  });
});

describe("captureContent without a redact hook", () => {
  it("logs exactly one warning per interceptor, through its logger, however many calls; none with a hook or without captureContent", async () => {
    const logger = recordingLogger();
    const interceptor = instrument({
      serviceName: "privacy-mcp",
      captureContent: true,
      estimateTokens: false,
      logger,
    });
    for (let i = 0; i < 5; i++)
      await interceptor.interceptModelCall({ model: "m", prompt: `card 4111-${i}`, response: "r" });
    const warnings = logger.lines.filter((line) => line.level === "warn");
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.message).toMatch(/captureContent .*redact/);
    // The warning carries no content.
    expect(warnings[0]?.message).not.toContain("4111");

    const second = recordingLogger();
    instrument({ serviceName: "privacy-mcp", captureContent: true, logger: second });
    expect(second.lines.filter((line) => line.level === "warn")).toHaveLength(1);

    for (const options of [
      { captureContent: true, redact: (text: string) => text },
      { captureContent: false },
      {},
    ]) {
      const quiet = recordingLogger();
      const other = instrument({ serviceName: "privacy-mcp", logger: quiet, ...options });
      await other.interceptModelCall({ model: "m", prompt: "p", usage: { promptTokens: 1 } });
      expect(quiet.lines).toEqual([]);
    }
  });
});

describe("identifiers the MCP integration records", { timeout: 30_000 }, () => {
  const SESSION = "session-7f3a-alice@example.com";
  const URI = "accounts://acc-1";

  /** Reads a resource through an instrumented server whose transport has a session id. */
  async function readResource(options: Partial<InstrumentOptions>): Promise<ModelCallEvent> {
    const exporter = new InMemoryExporter();
    const interceptor = instrument({
      serviceName: "example-mcp",
      exporter,
      logger: silentLogger,
      ...options,
    });
    const server = createExampleServer(interceptor);
    instrumentMcpServer(server, interceptor);
    const client = new Client({ name: "test-client", version: "1.0.0" });
    const [clientTransport, serverTransport] = InMemoryTransport.createLinkedPair();
    serverTransport.sessionId = SESSION;
    await server.connect(serverTransport);
    await client.connect(clientTransport);
    try {
      await client.readResource({ uri: URI });
      const span = await waitFor(
        "the resource span",
        () => exporter.events.find((event) => event.kind === "resource_read"),
        (found) => found !== undefined,
        { timeoutMs: 20_000, intervalMs: 10 },
      );
      if (!span) throw new Error("no resource span");
      return span;
    } finally {
      await client.close();
      await server.close();
    }
  }

  it("with a key (default policy): the session id and the URI are hmac-sha256: and the hex HMAC-SHA-256 with the key", async () => {
    const span = await readResource({ contentHashKey: KEY });
    expect(span.attributes["mcp.session.id"]).toBe(
      `hmac-sha256:${hmac(KEY, SESSION).toString("hex")}`,
    );
    expect(span.attributes["mcp.resource.uri"]).toBe(
      `hmac-sha256:${hmac(KEY, URI).toString("hex")}`,
    );
    expect(JSON.stringify(span)).not.toContain(SESSION);
    expect(JSON.stringify(span)).not.toContain(URI);
    expect(span.attributes["mcp.method.name"]).toBe("resources/read");
  });

  it("without a key (default policy): neither is recorded", async () => {
    const span = await readResource({});
    expect(span.attributes).not.toHaveProperty("mcp.session.id");
    expect(span.attributes).not.toHaveProperty("mcp.resource.uri");
    expect(JSON.stringify(span)).not.toContain(SESSION);
    expect(span.attributes["mcp.method.name"]).toBe("resources/read");
  });

  it("identifiers: plain records them as sent (key or not); omit never records them", async () => {
    for (const contentHashKey of [undefined, KEY]) {
      const plain = await readResource({
        identifiers: "plain",
        ...(contentHashKey === undefined ? {} : { contentHashKey }),
      });
      expect(plain.attributes).toMatchObject({
        "mcp.session.id": SESSION,
        "mcp.resource.uri": URI,
      });
    }
    const omitted = await readResource({ identifiers: "omit", contentHashKey: KEY });
    expect(omitted.attributes).not.toHaveProperty("mcp.session.id");
    expect(omitted.attributes).not.toHaveProperty("mcp.resource.uri");
  });

  it("identifiers: hashed without a key is refused, naming the option", () => {
    const error = configError(() =>
      instrument({ serviceName: "s", logger: silentLogger, identifiers: "hashed" }),
    );
    expect(error.key).toBe("identifiers");
    expect(error.message).toContain("need a content hash key");
    expect(
      configError(() =>
        instrument({
          serviceName: "s",
          logger: silentLogger,
          identifiers: "everything" as unknown as "plain",
        }),
      ).key,
    ).toBe("identifiers");
  });
});
