/**
 * The control records' key (`controlKey`): a secret every processor of a log and every replay of
 * it share. With it, the processor signs each control record it writes into model-calls and every
 * reader ignores control records that do not verify (see avro/control.ts). It is read from the
 * `controlKey` option, else the file `controlKeyFile` names, else the variables
 * `MCPO_CONTROL_KEY` and `MCPO_CONTROL_KEY_FILE` (the CLI also takes `processor.controlKey` and
 * `processor.controlKeyFile` in its config file; never a flag). Its value is never in a message.
 */
import { ConfigError, readSecret, rememberSecret } from "../config/index.js";

/** The least a key may hold, bytes (HMAC-SHA-256's output size). */
export const MIN_CONTROL_KEY_BYTES = 32;

/** The variables a key is read from when no option gives it. */
export const CONTROL_KEY_ENV = "MCPO_CONTROL_KEY";
export const CONTROL_KEY_FILE_ENV = "MCPO_CONTROL_KEY_FILE";

/** Where a key may be given: the options of the processor and of a replay. */
export interface ControlKeyOptions {
  readonly controlKey?: string | undefined;
  readonly controlKeyFile?: string | undefined;
}

const KEY_NAMES = `controlKey (${CONTROL_KEY_ENV}, processor.controlKey)`;
const FILE_NAMES = `controlKeyFile (${CONTROL_KEY_FILE_ENV}, processor.controlKeyFile)`;

/**
 * The key's bytes (its text as UTF-8), or undefined when none is set.
 *
 * @throws {ConfigError} when both the key and its file are given, the file cannot be read, or the
 *   key is shorter than {@link MIN_CONTROL_KEY_BYTES}; the message never holds the key, nor the
 *   file's name (it may be the key itself, put in the wrong setting).
 */
export function resolveControlKey(
  options: ControlKeyOptions,
  env: NodeJS.ProcessEnv = process.env,
): Buffer | undefined {
  const given = (option: string | undefined, variable: string, key: string) => {
    const value = option !== undefined && option !== "" ? option : env[variable];
    return value !== undefined && value !== "" ? { value, key } : undefined;
  };
  const found = readSecret(
    given(options.controlKey, CONTROL_KEY_ENV, KEY_NAMES),
    given(options.controlKeyFile, CONTROL_KEY_FILE_ENV, FILE_NAMES),
  );
  if (!found) return undefined;
  const key = found.bytes;
  const names = found.key;
  const text = key.toString("utf8");
  if (text.trim() !== "") rememberSecret(text);
  if (key.length < MIN_CONTROL_KEY_BYTES)
    throw new ConfigError(
      names,
      `expected a key of at least ${MIN_CONTROL_KEY_BYTES} bytes (got ${key.length} bytes, a secret, not shown); e.g. openssl rand -hex 32`,
    );
  return key;
}
