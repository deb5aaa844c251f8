/**
 * What `mcp-observatory alerts forward` sends, and how: the webhook's JSON body and its signature,
 * the Alertmanager v2 alert an AlertEvent becomes, which answers are retried, and one HTTP
 * destination. Pure; the HTTP exchange is ops/http-destination.ts, the service around it
 * ./forward.ts.
 *
 * Webhook signature (verifiable by any receiver): `t` is the request's Unix time in seconds,
 * `v1` the lower-case hex HMAC-SHA256, keyed with the shared secret, of `${t}.${body}` (the raw
 * body bytes as sent); the header `X-MCPO-Signature: t=<t>,v1=<hex>`.
 *
 * @module
 */
import { createHmac, timingSafeEqual } from "node:crypto";

import type { AlertEvent } from "../avro/generated.js";
import { HttpDestination } from "../ops/http-destination.js";

// The generic HTTP delivery lives in ops/http-destination.ts; re-exported for this module's users.
export {
  classifyStatus,
  DeliveryError,
  HttpDestination,
  networkFailure,
  retryAfterMs,
  type AnswerClass,
} from "../ops/http-destination.js";

/** The version of the webhook body; a change that breaks receivers raises it. */
export const WEBHOOK_PAYLOAD_VERSION = 1;

/** Header names of a webhook request. */
export const FORWARD_HEADERS = Object.freeze({
  signature: "x-mcpo-signature",
  alertId: "x-mcpo-alert-id",
  alertState: "x-mcpo-alert-state",
  idempotencyKey: "x-mcpo-idempotency-key",
  attempt: "x-mcpo-delivery-attempt",
} as const);

/** The webhook's JSON body (see README, "Alert routing"). Times are ISO 8601, UTC. */
export interface WebhookPayload {
  readonly version: typeof WEBHOOK_PAYLOAD_VERSION;
  /** `<alert_id>:<state>`: the same for every delivery of one transition, across restarts. */
  readonly idempotency_key: string;
  readonly alert_id: string;
  readonly state: "firing" | "resolved";
  readonly service: string;
  readonly rule: string;
  readonly metric: string;
  readonly comparator: "gt" | "gte" | "lt" | "lte";
  /** The metric's value in the deciding window; null when it had no samples. */
  readonly observed_value: number | null;
  readonly threshold: number;
  readonly min_samples: number;
  readonly sample_count: number;
  /** The deciding window. */
  readonly window: { readonly start: string; readonly end: string };
  /** Start of the window in which the incident began. */
  readonly fired_at: string;
  /** The transition's event time (the deciding window's end). */
  readonly emitted_at: string;
  /** One line of plain text, no links. */
  readonly summary: string;
}

/** Microseconds since the epoch as ISO 8601 (UTC), microseconds kept when there are any. */
export function isoFromMicros(micros: number): string {
  const ms = Math.floor(micros / 1000);
  const iso = new Date(ms).toISOString();
  const rest = micros - ms * 1000;
  return rest === 0 ? iso : `${iso.slice(0, -1)}${String(rest).padStart(3, "0")}Z`;
}

const SYMBOL = { gt: ">", gte: ">=", lt: "<", lte: "<=" } as const;

function shown(metric: string, value: number): string {
  if (metric.endsWith("_rate")) return `${Number((value * 100).toFixed(2))}%`;
  if (metric.endsWith("_ms")) return `${Number(value.toFixed(1))} ms`;
  return String(Number(value.toPrecision(6)));
}

/** One line: `payments-mcp golden_failures FIRING: golden_financial_failure_rate 25% > 0% (4 samples)`. */
export function alertSummary(alert: AlertEvent): string {
  const observed =
    alert.observed_value === null ? "no samples" : shown(alert.metric, alert.observed_value);
  return `${alert.service} ${alert.rule} ${alert.state.toUpperCase()}: ${alert.metric} ${observed} (threshold ${SYMBOL[alert.comparator]} ${shown(alert.metric, alert.threshold)}, ${alert.sample_count} samples)`;
}

/** What a receiver dedupes on: the alert id and its state. */
export function idempotencyKey(alert: Pick<AlertEvent, "alert_id" | "state">): string {
  return `${alert.alert_id}:${alert.state}`;
}

/** The webhook body of an alert transition. */
export function webhookPayload(alert: AlertEvent): WebhookPayload {
  return {
    version: WEBHOOK_PAYLOAD_VERSION,
    idempotency_key: idempotencyKey(alert),
    alert_id: alert.alert_id,
    state: alert.state,
    service: alert.service,
    rule: alert.rule,
    metric: alert.metric,
    comparator: alert.comparator,
    observed_value: alert.observed_value,
    threshold: alert.threshold,
    min_samples: alert.min_samples,
    sample_count: alert.sample_count,
    window: { start: isoFromMicros(alert.window_start), end: isoFromMicros(alert.window_end) },
    fired_at: isoFromMicros(alert.fired_window_start),
    emitted_at: isoFromMicros(alert.emitted_at),
    summary: alertSummary(alert),
  };
}

/** `t=<unixSeconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`. */
export function webhookSignature(
  secret: Buffer | string,
  unixSeconds: number,
  body: string | Buffer,
): string {
  const mac = createHmac("sha256", secret).update(`${unixSeconds}.`).update(body).digest("hex");
  return `t=${unixSeconds},v1=${mac}`;
}

/**
 * A receiver's check of {@link webhookSignature}: the header parses, its `t` is within
 * `toleranceSeconds` of `nowSeconds` (a replayed old request fails), and a `v1` matches (compared
 * in constant time).
 */
export function verifyWebhookSignature(
  secret: Buffer | string,
  header: string,
  body: string | Buffer,
  nowSeconds: number,
  toleranceSeconds = 300,
): boolean {
  const parts = header.split(",").map((part) => part.trim().split("="));
  const t = Number(parts.find(([name]) => name === "t")?.[1]);
  if (!Number.isSafeInteger(t) || Math.abs(nowSeconds - t) > toleranceSeconds) return false;
  const expected = Buffer.from(webhookSignature(secret, t, body).split("v1=")[1] ?? "", "hex");
  return parts
    .filter(([name]) => name === "v1")
    .some(([, hex]) => {
      const given = Buffer.from(hex ?? "", "hex");
      return given.length === expected.length && timingSafeEqual(given, expected);
    });
}

/** An alert as Alertmanager's v2 API takes it (`POST /api/v2/alerts`, a list of these). */
export interface PostableAlert {
  readonly labels: Readonly<Record<string, string>>;
  readonly annotations: Readonly<Record<string, string>>;
  readonly startsAt: string;
  readonly endsAt?: string;
  readonly generatorURL?: string;
}

/** How alerts are labelled and timed for Alertmanager. */
export interface AlertmanagerMapping {
  readonly severity: string;
  /** A firing alert's endsAt is this long after `nowMs`. */
  readonly firingTtlMs: number;
  readonly generatorUrl?: string | undefined;
}

/**
 * The Alertmanager alert of a transition. Labels identify the incident (`alertname` the rule,
 * `service`, `metric`, `severity`, `alert_id`, `source`), so its firing and resolving posts are
 * one alert to Alertmanager. `startsAt` is the incident's first window; a firing alert ends
 * `firingTtlMs` after now (Alertmanager keeps it active until then or until resolved), a resolved
 * one at its event time, so Alertmanager resolves it.
 */
export function alertmanagerAlert(
  alert: AlertEvent,
  mapping: AlertmanagerMapping,
  nowMs: number,
): PostableAlert {
  const payload = webhookPayload(alert);
  return {
    labels: {
      alertname: alert.rule,
      service: alert.service,
      metric: alert.metric,
      severity: mapping.severity,
      alert_id: alert.alert_id,
      source: "mcp-observatory",
    },
    annotations: {
      summary: payload.summary,
      observed_value: alert.observed_value === null ? "" : String(alert.observed_value),
      threshold: `${SYMBOL[alert.comparator]} ${alert.threshold}`,
      sample_count: String(alert.sample_count),
      window_start: payload.window.start,
      window_end: payload.window.end,
    },
    startsAt: payload.fired_at,
    endsAt:
      alert.state === "resolved"
        ? payload.emitted_at
        : new Date(nowMs + mapping.firingTtlMs).toISOString(),
    ...(mapping.generatorUrl === undefined ? {} : { generatorURL: mapping.generatorUrl }),
  };
}

/** One place alerts are delivered to. */
export interface Destination {
  /** `webhook-1`, `alertmanager-2`: a name without the URL (it may hold a secret path). */
  readonly name: string;
  readonly kind: "webhook" | "alertmanager";
  /** Scheme, host and port only, for logs. */
  readonly origin: string;
  /**
   * Delivers one transition (attempt: from 1), or throws a {@link DeliveryError}. An attempt is
   * never cut short but by its timeout: a stop lets it finish.
   */
  send(alert: AlertEvent, attempt: number): Promise<unknown>;
}

/** How a request authenticates: a header value for `Authorization`, or none. */
export type HttpAuthorization = string | undefined;

/** The body's type of every request to a destination. */
const JSON_BODY = { "content-type": "application/json" } as const;

/** A webhook: the signed JSON body of each transition. */
export function webhookDestination(
  name: string,
  url: string,
  secret: Buffer,
  timeoutMs: number,
  now: () => number = Date.now,
): Destination {
  return new HttpDestination(name, "webhook", url, timeoutMs, (alert, attempt) => {
    const body = JSON.stringify(webhookPayload(alert));
    return {
      body,
      headers: {
        ...JSON_BODY,
        [FORWARD_HEADERS.signature]: webhookSignature(secret, Math.floor(now() / 1000), body),
        [FORWARD_HEADERS.alertId]: alert.alert_id,
        [FORWARD_HEADERS.alertState]: alert.state,
        [FORWARD_HEADERS.idempotencyKey]: idempotencyKey(alert),
        [FORWARD_HEADERS.attempt]: String(attempt),
      },
    };
  });
}

function headersOf(authorization: HttpAuthorization): Record<string, string> {
  return authorization === undefined ? {} : { authorization };
}

/** The v2 API's alerts endpoint of an Alertmanager base URL (given as is when it already is). */
export function alertmanagerAlertsUrl(base: string): string {
  const trimmed = base.replace(/\/+$/, "");
  return trimmed.endsWith("/api/v2/alerts") ? trimmed : `${trimmed}/api/v2/alerts`;
}

/** An Alertmanager: each transition posted to its v2 API as a one-alert list. */
export function alertmanagerDestination(
  name: string,
  baseUrl: string,
  mapping: AlertmanagerMapping,
  authorization: HttpAuthorization,
  timeoutMs: number,
  now: () => number = Date.now,
): Destination {
  return new HttpDestination(
    name,
    "alertmanager",
    alertmanagerAlertsUrl(baseUrl),
    timeoutMs,
    (alert) => ({
      body: JSON.stringify([alertmanagerAlert(alert, mapping, now())]),
      headers: { ...JSON_BODY, ...headersOf(authorization) },
    }),
  );
}
