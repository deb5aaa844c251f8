/**
 * One set of rules for keeping secrets out of every error message, log line and CLI output:
 * which names hold secrets ({@link isSecretName}), how text is redacted ({@link redactSecrets},
 * {@link redactUrl}), how a setting's value may be shown in a message ({@link shownValue}), and
 * the secret values this process knows of ({@link rememberSecret}), replaced wherever they occur.
 * Dependency-free: every part of the project can import it.
 *
 * @module
 */

/** What a secret is replaced by. */
export const REDACTED = "***";

/** Parts of a name (lower case, separators dropped) that say its value is a secret. */
const SECRET_PARTS =
  /pass(?:word|wd|phrase)|secret|token(?!s)|credential|apikey|privatekey|accesskey|authorization|cookie/;
/** Words of a name that say its value is a secret. */
const SECRET_WORDS: ReadonlySet<string> = new Set(["pwd", "pass", "sig", "signature", "jwt"]);
/** Words before `key` that make it a secret key (`sslKey`, `MCPO_HASH_KEY`; not `partitionKey`). */
const KEY_QUALIFIERS: ReadonlySet<string> = new Set([
  "ssl",
  "tls",
  "private",
  "api",
  "access",
  "secret",
  "hash",
  "hmac",
  "signing",
  "encryption",
  "client",
  "master",
  "session",
  "shared",
]);

function wordsOf(name: string): string[] {
  return name
    .replace(/([a-z0-9])([A-Z])/g, "$1 $2")
    .toLowerCase()
    .split(/[^a-z0-9]+/)
    .filter((word) => word !== "");
}

/**
 * Whether a setting, field, header or query parameter of this name holds a secret: its name says
 * password, passphrase, secret, token, credential, API or private key, authorization, cookie,
 * signature (`KAFKA_SASL_PASSWORD`, `sslpassword`, `access_token`, `kafka.sslKeyPassword`,
 * `KAFKA_SSL_KEY_FILE`, `MCPO_HASH_KEY`, a query's `key`). Their `…_FILE` variants count too: a
 * user may put the secret itself where its file's name belongs.
 */
export function isSecretName(name: string): boolean {
  // The shell's working directories, not ODBC's `PWD=` password.
  if (name === "PWD" || name === "OLDPWD") return false;
  const words = wordsOf(name);
  // `KAFKA_SASL_PASSWORD_FILE`, `saslPasswordFile`: the path of a secret's file, not the secret.
  if (words.at(-1) === "file") return false;
  if (SECRET_PARTS.test(words.join(""))) return true;
  return words.some(
    (word, i) =>
      SECRET_WORDS.has(word) ||
      (word === "key" && (words.length === 1 || KEY_QUALIFIERS.has(words[i - 1] ?? ""))),
  );
}

/** A field of a log record or JSON object that holds a secret (`key` alone is a record's key). */
export function isSecretField(name: string): boolean {
  return name.toLowerCase() !== "key" && isSecretName(name);
}

/** Secret values this process knows of (from its environment and settings): see {@link rememberSecret}. */
const known = new Set<string>();
/** {@link known}, longest first (so a secret containing another is replaced whole). */
let knownInOrder: readonly string[] = [];

/**
 * Whether a value is worth replacing wherever it occurs: at least 8 characters, and not a short
 * lower-case word (a password `postgres` would otherwise turn every `postgresql://` into `***ql://`).
 */
function distinctive(value: string): boolean {
  return value.length >= 8 && (value.length >= 16 || /[^a-z]/.test(value));
}

/**
 * Remembers a secret value: from now on {@link redactSecrets} replaces it wherever it occurs in
 * this process's messages, logs and output (also URL-encoded or JSON-escaped), even where no rule
 * recognises it. Values under 8 characters, and lower-case words under 16, are not remembered:
 * replacing them everywhere would garble ordinary text.
 */
export function rememberSecret(value: string): void {
  const forms = [value, encodeURIComponent(value), JSON.stringify(value).slice(1, -1)];
  let added = false;
  for (const form of forms)
    if (distinctive(form) && !known.has(form)) {
      known.add(form);
      added = true;
    }
  if (added) knownInOrder = [...known].sort((a, b) => b.length - a.length);
}

/**
 * Remembers every secret in a record of settings (the environment, a config file's contents):
 * the values of fields whose name is a secret's ({@link isSecretField}), and the secrets inside
 * any value (a URL's password, a `password=` parameter), nested objects and arrays included.
 */
export function rememberSecretsIn(settings: unknown): void {
  const visit = (value: unknown, name: string | undefined, depth: number): void => {
    if (typeof value === "string") {
      if (name !== undefined && isSecretField(name)) rememberSecret(value);
      for (const secret of secretsIn(value)) rememberSecret(secret);
    } else if (typeof value === "object" && value !== null && depth < 8) {
      for (const [key, inner] of Object.entries(value))
        visit(inner, Array.isArray(value) ? name : key, depth + 1);
    }
  };
  visit(settings, undefined, 0);
}

/** Forgets every remembered secret (for tests). */
export function forgetSecrets(): void {
  known.clear();
  knownInOrder = [];
}

/** Told of each secret a rule replaced (see {@link secretsIn}). */
type Found = (secret: string) => void;

/** A setting's, parameter's or flag's name (`KAFKA_SASL_PASSWORD`, `sasl.password`, `--x-token`). */
const NAME = "-*[A-Za-z_][A-Za-z0-9_.-]*";
/** A value after `name=`: quoted (also as JSON-escaped quotes), or up to a separator. */
const VALUE = String.raw`\\"[^"]*?\\"|"(?:[^"\\]|\\.)*"|'[^']*'|[^\s&;,'"<>)}\]]+`;

/**
 * `scheme://user:password@`: the password, up to the last `@` of the authority. Patterns start
 * only where a name can start (a lookbehind) and schemes are short, so a long run of text is
 * scanned once, not once per character.
 */
const URL_PASSWORD =
  /(?<![a-z0-9+.-])([a-z][a-z0-9+.-]{0,31}:\/\/[^\s:/?#@"'<>]*:)([^\s/?#"'<>]*)@/gi;
/** `name=` (query parameters, `key=value` settings, JAAS `password="…"`, env assignments). */
const ASSIGNMENT = new RegExp(`(?<![A-Za-z0-9_.-])(${NAME})(\\s*=\\s*)`, "g");
/** The value after a secret's `name=`, read where the name ended. */
const ASSIGNED_VALUE = new RegExp(VALUE, "y");
/** `"name": "value"` in JSON, and `\"name\":\"value\"` in JSON inside a JSON string. */
const JSON_FIELD = /"([A-Za-z_][A-Za-z0-9_.-]*)"(\s*:\s*)"((?:[^"\\]|\\.)*)"/g;
const ESCAPED_JSON_FIELD = /\\"([A-Za-z_][A-Za-z0-9_.-]*)\\"(\s*:\s*)\\"(.*?)\\"/g;
/** An `Authorization` header or field, with or without its scheme. */
const AUTHORIZATION =
  /\b((?:proxy-)?authorization\\?["']?\s*[:=]\s*\\?["']?)((?:basic|bearer|digest|negotiate|token)\s+)?([^\s"'\\,;]+)/gi;
/** `Bearer <token>` / `Basic <credentials>` anywhere. */
const SCHEME_TOKEN = /\b(bearer|basic)(\s+)([A-Za-z0-9._~+/-]{8,}=*)/gi;

/** Whether the word after `Bearer`/`Basic` is a credential rather than prose (`Basic authentication`). */
function looksLikeCredential(token: string): boolean {
  return /[0-9=._~+/-]/.test(token) || /[A-Z]/.test(token.slice(1));
}

/**
 * Replaces the values of secret `name=value` assignments. Only a secret's value is read past, so
 * a secret nested in another setting's quoted value (`sasl.jaas.config="… password=\"…\""`) is
 * found too.
 */
function redactAssignments(text: string, hide: (secret: string) => string): string {
  let result = "";
  let done = 0;
  ASSIGNMENT.lastIndex = 0;
  for (let match = ASSIGNMENT.exec(text); match !== null; match = ASSIGNMENT.exec(text)) {
    const name = match[1] ?? "";
    // A bare `key=` is an API key in a query (`?key=`, `&key=`), else a record's key.
    const secret =
      name.toLowerCase() === "key"
        ? /[?&;]/.test(text.charAt(match.index - 1))
        : isSecretName(name);
    if (!secret) continue;
    const valueStart = match.index + match[0].length;
    ASSIGNED_VALUE.lastIndex = valueStart;
    const value = ASSIGNED_VALUE.exec(text)?.[0];
    if (value === undefined) continue;
    const quote = /^(\\"|"|')/.exec(value)?.[1];
    const inner = quote === undefined ? value : value.slice(quote.length, -quote.length);
    result += `${text.slice(done, valueStart)}${quote ?? ""}${hide(inner)}${quote ?? ""}`;
    done = valueStart + value.length;
    ASSIGNMENT.lastIndex = done;
  }
  return result + text.slice(done);
}

/** Redacts text by every rule, calling `found` with each secret replaced. */
function scan(text: string, found: Found | undefined): string {
  const hide = (secret: string): string => {
    if (secret !== REDACTED) found?.(secret);
    return REDACTED;
  };
  let result = redactAssignments(text, hide)
    .replace(URL_PASSWORD, (_, head: string, password: string) =>
      password === "" ? `${head}@` : `${head}${hide(password)}@`,
    )
    .replace(ESCAPED_JSON_FIELD, (match, name: string, sep: string, value: string) =>
      isSecretField(name) ? `\\"${name}\\"${sep}\\"${hide(value)}\\"` : match,
    )
    .replace(JSON_FIELD, (match, name: string, sep: string, value: string) =>
      isSecretField(name) ? `"${name}"${sep}"${hide(value)}"` : match,
    )
    .replace(AUTHORIZATION, (_, head: string, scheme: string | undefined, credential: string) =>
      credential === REDACTED ? _ : `${head}${scheme ?? ""}${hide(credential)}`,
    )
    .replace(SCHEME_TOKEN, (match, scheme: string, space: string, token: string) =>
      looksLikeCredential(token) ? `${scheme}${space}${hide(token)}` : match,
    );
  for (const secret of knownInOrder)
    if (result.includes(secret)) result = result.split(secret).join(REDACTED);
  return result;
}

/**
 * Text with its secrets replaced by `***`: passwords in URLs (`scheme://user:***@host`), values
 * of secret settings and query parameters (`password=`, `sslpassword=`, `token=`,
 * `access_token=`, `KAFKA_SASL_PASSWORD=`, JAAS `password="…"`, a query's `key=`), secret fields
 * of JSON (`"saslPassword":"…"`), `Authorization` headers and `Bearer`/`Basic` credentials, and
 * every secret remembered with {@link rememberSecret}. Everything else is left as it is.
 */
export function redactSecrets(text: string): string {
  return scan(text, undefined);
}

/** The secrets {@link redactSecrets} would replace in a text, by its rules (remembered ones aside). */
export function secretsIn(text: string): string[] {
  const found: string[] = [];
  scan(text, (secret) => found.push(secret));
  return found;
}

/**
 * A connection URL without its secrets, for messages and logs: {@link redactSecrets} applied to
 * it (its password and secret query parameters `***`), so a URL is redacted alike on its own and
 * inside a message, parseable or not.
 */
export function redactUrl(url: string): string {
  return redactSecrets(url);
}

/**
 * A setting's value as an error message may show it, e.g. in `(got ${shownValue(key, raw)})`: a
 * secret's (`secret`, by default when {@link isSecretName} says so of `name`) never, whatever it
 * holds; any other value as JSON, its secrets redacted.
 */
export function shownValue(name: string, value: unknown, secret = isSecretName(name)): string {
  if (secret) return "a secret, not shown";
  if (typeof value === "string") return JSON.stringify(redactSecrets(value));
  let text: string | undefined;
  try {
    text = JSON.stringify(value, (_, inner: unknown) =>
      typeof inner === "bigint" ? inner.toString() : inner,
    );
  } catch {
    text = undefined;
  }
  return redactSecrets(text ?? String(value));
}
