/**
 * Keyed digests of what a replica sees: prompt and response text (the events' `prompt_sha256` and
 * `response_sha256`) and the identifiers the MCP integration records (`mcp.session.id`,
 * `mcp.resource.uri`). HMAC-SHA-256 with a key the fleet shares, never a plain SHA-256: a plain
 * digest of a short or guessable text ("yes", a customer number, one of a few thousand templated
 * prompts) is reversed by hashing the candidates, whereas without the key nobody can compute one.
 *
 * With no key configured nothing is hashed: the digest fields are null and those identifiers are
 * left out unless the host opts in to recording them as they are (see {@link IdentifierPolicy}).
 *
 * @module
 */
import { createHmac, createSecretKey, type KeyObject } from "node:crypto";

import { ConfigError, readSecret } from "../config/index.js";

/** The variable holding the key as text (its UTF-8 bytes are the key). */
export const CONTENT_HASH_KEY_ENV = "MCPO_CONTENT_HASH_KEY";
/** The variable naming a file holding the key (its bytes, one trailing newline dropped). */
export const CONTENT_HASH_KEY_FILE_ENV = "MCPO_CONTENT_HASH_KEY_FILE";
/**
 * The shortest key accepted, bytes: HMAC's key should be at least the digest's length (RFC 2104,
 * section 3), so a key is as hard to guess as the digest is to forge.
 */
export const MIN_CONTENT_HASH_KEY_BYTES = 32;
/** What a hashed identifier starts with, so a reader never takes it for the identifier itself. */
export const HASHED_IDENTIFIER_PREFIX = "hmac-sha256:";

/**
 * How the MCP integration records the identifiers it sees (`mcp.session.id`, `mcp.resource.uri`):
 *
 * - `hashed`: `hmac-sha256:` and the hex HMAC-SHA-256 of the identifier with the content hash key
 *   (spans of one session still group together; the identifier itself is not shipped). Needs a
 *   key.
 * - `plain`: as the client sent it.
 * - `omit`: not recorded.
 *
 * The default is `hashed` when a content hash key is configured, else `omit`.
 */
export type IdentifierPolicy = "hashed" | "plain" | "omit";

const POLICIES: readonly IdentifierPolicy[] = ["hashed", "plain", "omit"];

/** A content hash key as an option: text (its UTF-8 bytes) or bytes; null: none, whatever the environment says. */
export type ContentHashKeyOption = string | Uint8Array | null;

/** The key's bytes, checked; `key` names where it came from (never its value). */
function checkedKey(bytes: Buffer, key: string): Buffer {
  if (bytes.length < MIN_CONTENT_HASH_KEY_BYTES)
    throw new ConfigError(
      key,
      `a content hash key needs at least ${MIN_CONTENT_HASH_KEY_BYTES} bytes (got ${bytes.length}); make one with: openssl rand -base64 32`,
    );
  return bytes;
}

/**
 * The content hash key: the option when given (null: none), else {@link CONTENT_HASH_KEY_ENV},
 * else the file {@link CONTENT_HASH_KEY_FILE_ENV} names (one trailing newline dropped, so a key
 * written by `echo` is the same key as the variable's). An empty variable is unset. Undefined: no
 * key.
 *
 * @throws {ConfigError} naming the option or variable at fault: both variables set, a key shorter
 *   than {@link MIN_CONTENT_HASH_KEY_BYTES}, a file that cannot be read. The key's value is never
 *   in the message.
 */
export function resolveContentHashKey(
  option: ContentHashKeyOption | undefined,
  env: Readonly<Record<string, string | undefined>>,
): KeyObject | undefined {
  if (option === null) return undefined;
  if (option !== undefined) {
    if (typeof option !== "string" && !(option instanceof Uint8Array))
      throw new ConfigError("contentHashKey", "expected a string, bytes or null");
    const bytes = typeof option === "string" ? Buffer.from(option, "utf8") : Buffer.from(option);
    return createSecretKey(checkedKey(bytes, "contentHashKey"));
  }
  const given = (variable: string) => {
    const value = env[variable];
    return value !== undefined && value !== "" ? { value, key: variable } : undefined;
  };
  const found = readSecret(given(CONTENT_HASH_KEY_ENV), given(CONTENT_HASH_KEY_FILE_ENV));
  return found && createSecretKey(checkedKey(found.bytes, found.key));
}

/**
 * The identifier policy: the option when given, else `hashed` with a key and `omit` without.
 *
 * @throws {ConfigError} for a value that is not a policy, or `hashed` without a key.
 */
export function resolveIdentifierPolicy(
  option: IdentifierPolicy | undefined,
  hasKey: boolean,
): IdentifierPolicy {
  if (option === undefined) return hasKey ? "hashed" : "omit";
  if (!POLICIES.includes(option))
    throw new ConfigError(
      "identifiers",
      `expected one of ${POLICIES.join(", ")} (got ${JSON.stringify(option)})`,
    );
  if (option === "hashed" && !hasKey)
    throw new ConfigError(
      "identifiers",
      `hashed identifiers need a content hash key: set contentHashKey, ${CONTENT_HASH_KEY_ENV} or ${CONTENT_HASH_KEY_FILE_ENV}`,
    );
  return option;
}

/** HMAC-SHA-256 of a text's UTF-8 bytes with a content hash key (32 bytes). */
export function keyedDigest(key: KeyObject, text: string): Buffer {
  return createHmac("sha256", key).update(text, "utf8").digest();
}

/** An identifier under a policy: itself, its keyed digest (prefixed hex), or undefined (omitted). */
export function recordedIdentifier(
  policy: IdentifierPolicy,
  key: KeyObject | undefined,
  value: string,
): string | undefined {
  if (policy === "plain") return value;
  if (policy === "omit" || key === undefined) return undefined;
  return `${HASHED_IDENTIFIER_PREFIX}${keyedDigest(key, value).toString("hex")}`;
}
