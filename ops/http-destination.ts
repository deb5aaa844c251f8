/**
 * Delivering over HTTP, shared by the services that push what they read to other systems (the
 * alert forwarder, the OTLP exporter): one POST with a timeout covering the whole exchange, its
 * answer classified (delivered, retry later, refused), a failure as a {@link DeliveryError} the
 * project's retry loop (config/retry.ts) understands, and a `Retry-After` (seconds or an HTTP
 * date) carried on the error as the least the next attempt waits.
 *
 * @module
 */
import { ObservatoryError, redactSecrets } from "../config/index.js";

/** What to do after an answer: done, try again later, or give up (dead-letter). */
export type AnswerClass = "delivered" | "retry" | "reject";

/**
 * 2xx: delivered. 408, 429 and 5xx: the receiver may take it later, retried. Any other status
 * (400, 401, 403, 404, 413, 422, redirects…): the same request fails the same way, not retried.
 */
export function classifyStatus(status: number): AnswerClass {
  if (status >= 200 && status < 300) return "delivered";
  if (status === 408 || status === 429 || status >= 500) return "retry";
  return "reject";
}

/**
 * A `Retry-After` header as milliseconds from `nowMs`: delay-seconds (`120`) or an HTTP date
 * (`Wed, 21 Oct 2026 07:28:00 GMT`; a date in the past is 0). Undefined when absent or unreadable.
 */
export function retryAfterMs(
  header: string | null | undefined,
  nowMs = Date.now(),
): number | undefined {
  if (header === null || header === undefined) return undefined;
  const text = header.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at - nowMs);
}

/** A delivery attempt failed; `retriable` says whether another attempt may succeed. */
export class DeliveryError extends ObservatoryError {
  constructor(
    code: "FORWARD_HTTP_STATUS" | "FORWARD_NETWORK" | "FORWARD_TIMEOUT",
    message: string,
    readonly status: number | undefined,
    retriable: boolean,
    cause?: unknown,
    /**
     * The receiver's `Retry-After` (429, 503), ms: the least the next attempt waits (the retry
     * loop reads it, capped at its policy's longest wait).
     */
    readonly retryAfterMs?: number,
  ) {
    super(code, message, { retriable, ...(cause === undefined ? {} : { cause }) });
    this.name = "DeliveryError";
  }
}

/**
 * A thrown value of `fetch` as a {@link DeliveryError}: a timeout and a network failure
 * (refused, reset, DNS) are retriable.
 */
export function networkFailure(
  destination: string,
  error: unknown,
  timeoutMs: number,
): DeliveryError {
  const name = (error as { name?: unknown } | null)?.name;
  if (name === "TimeoutError")
    return new DeliveryError(
      "FORWARD_TIMEOUT",
      `${destination} did not answer within ${timeoutMs} ms`,
      undefined,
      true,
      error,
    );
  const cause = (error as { cause?: { code?: unknown; message?: unknown } } | null)?.cause;
  const detail =
    typeof cause?.code === "string"
      ? cause.code
      : typeof cause?.message === "string"
        ? cause.message
        : error instanceof Error
          ? error.message
          : String(error);
  return new DeliveryError(
    "FORWARD_NETWORK",
    `${destination} could not be reached (${detail})`,
    undefined,
    true,
    error,
  );
}

/** One request's body and headers (the content type among them). */
export interface HttpRequest {
  readonly body: string | Uint8Array;
  readonly headers: Readonly<Record<string, string>>;
}

/** A 2xx answer: its status and body. */
export interface HttpAnswer {
  readonly status: number;
  readonly body: Buffer;
}

/** Text of an answer's body for a message: one line, at most 200 characters, secrets redacted. */
function excerptOf(body: Buffer): string {
  return redactSecrets(
    body
      .toString("utf8")
      // A binary body (a protobuf google.rpc.Status) keeps its readable text only.
      // eslint-disable-next-line no-control-regex
      .replace(/[\u0000-\u001f\u007f\ufffd]+/g, " ")
      .replace(/\s+/g, " ")
      .trim()
      .slice(0, 200),
  );
}

/**
 * An HTTP destination: a POST of what `request` makes of an item, with a timeout; the answer
 * classified. `name` (never the URL: it may hold a secret path) names it in messages.
 */
export class HttpDestination<T, K extends string = string> {
  /** Scheme, host and port only, for logs. */
  readonly origin: string;

  constructor(
    readonly name: string,
    readonly kind: K,
    private readonly url: string,
    private readonly timeoutMs: number,
    private readonly request: (item: T, attempt: number) => HttpRequest,
  ) {
    this.origin = new URL(url).origin;
  }

  /**
   * Sends one item (attempt: from 1) and returns the 2xx answer, or throws a
   * {@link DeliveryError}: retriable for 408, 429, 5xx (with the `Retry-After` of a 429 or 503),
   * network failures and timeouts. An attempt is never cut short but by its timeout.
   */
  async send(item: T, attempt: number): Promise<HttpAnswer> {
    const { body, headers } = this.request(item, attempt);
    let response: Response;
    // The timeout covers the whole exchange, the answer's body too: a receiver that trickles
    // its answer cannot hold the item.
    const signal = AbortSignal.timeout(this.timeoutMs);
    try {
      response = await fetch(this.url, {
        method: "POST",
        body,
        headers,
        redirect: "manual",
        signal,
      });
    } catch (error) {
      throw networkFailure(this.name, error, this.timeoutMs);
    }
    let answer: Buffer;
    try {
      answer = Buffer.from(await response.arrayBuffer());
    } catch (error) {
      throw networkFailure(this.name, error, this.timeoutMs);
    }
    const verdict = classifyStatus(response.status);
    if (verdict === "delivered") return { status: response.status, body: answer };
    const excerpt = excerptOf(answer);
    const wait =
      response.status === 429 || response.status === 503
        ? retryAfterMs(response.headers.get("retry-after"))
        : undefined;
    throw new DeliveryError(
      "FORWARD_HTTP_STATUS",
      `${this.name} answered HTTP ${response.status}${excerpt === "" ? "" : `: ${excerpt}`}`,
      response.status,
      verdict === "retry",
      undefined,
      wait,
    );
  }
}
