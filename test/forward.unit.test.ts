/**
 * `alerts forward`, the pure parts: the webhook signature as a receiver checks it from the
 * README's recipe, the webhook body and the Alertmanager alert of a transition, which answers are
 * retried, and the settings (URLs, secrets) with errors that name the key.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { describe, expect, it } from "vitest";

import type { AlertEvent } from "../avro/generated.js";
import { CONNECTION_SETTINGS, FORWARD_SETTINGS, SettingsResolver } from "../cli/config.js";
import {
  ConfigError,
  forwardConfigSchema,
  parseForwardConfig,
  retry,
  RetryExhaustedError,
} from "../config/index.js";
import {
  alertmanagerAlert,
  alertmanagerAlertsUrl,
  classifyStatus,
  DeliveryError,
  idempotencyKey,
  isoFromMicros,
  networkFailure,
  verifyWebhookSignature,
  webhookPayload,
  webhookSignature,
} from "../processor/forward-delivery.js";
import { destinationsOf } from "../processor/forward.js";

const MINUTE = 60_000_000;
const BASE = 1_764_000_000_000_000 - (1_764_000_000_000_000 % MINUTE);

const firing: AlertEvent = {
  alert_id: "0123456789abcdef0123456789abcdef",
  service: "payments-mcp",
  rule: "confidence_gate_block_rate_high",
  metric: "confidence_gate_block_rate",
  comparator: "gt",
  state: "firing",
  observed_value: 0.42,
  threshold: 0.2,
  min_samples: 1,
  sample_count: 50,
  window_start: BASE,
  window_end: BASE + MINUTE,
  fired_window_start: BASE,
  emitted_at: BASE + MINUTE,
};
const resolved: AlertEvent = {
  ...firing,
  state: "resolved",
  observed_value: 0.05,
  window_start: BASE + 2 * MINUTE,
  window_end: BASE + 3 * MINUTE,
  emitted_at: BASE + 3 * MINUTE,
};

/** The README's recipe, written out as a receiver would, apart from the product's helpers. */
function receiverAccepts(secret: string, header: string, rawBody: string, now: number): boolean {
  const fields = new Map(
    header.split(",").map((part) => part.split("=", 2) as [string, string | undefined]),
  );
  const t = Number(fields.get("t"));
  const v1 = fields.get("v1") ?? "";
  if (!Number.isInteger(t) || Math.abs(now - t) > 300) return false;
  const expected = createHmac("sha256", secret).update(`${t}.${rawBody}`).digest();
  const given = Buffer.from(v1, "hex");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

describe("webhook signature", () => {
  const secret = "s3cr3t-for-the-webhook-0123456789abcdef";
  const body = JSON.stringify(webhookPayload(firing));
  const t = 1_764_000_123;

  it("is t=<unix>,v1=<hex HMAC-SHA256 of '<t>.<body>'>, as the documented recipe computes it", () => {
    const header = webhookSignature(secret, t, body);
    const hex = createHmac("sha256", secret).update(`${t}.${body}`).digest("hex");
    expect(header).toBe(`t=${t},v1=${hex}`);
    expect(receiverAccepts(secret, header, body, t + 10)).toBe(true);
    expect(verifyWebhookSignature(secret, header, body, t + 10)).toBe(true);
  });

  it("fails for another body, another secret, another timestamp or an old request", () => {
    const header = webhookSignature(secret, t, body);
    const tampered = body.replace("0.42", "0.43");
    expect(receiverAccepts(secret, header, tampered, t)).toBe(false);
    expect(verifyWebhookSignature(secret, header, tampered, t)).toBe(false);
    expect(receiverAccepts("another-secret", header, body, t)).toBe(false);
    expect(verifyWebhookSignature("another-secret", header, body, t)).toBe(false);
    const moved = header.replace(`t=${t}`, `t=${t + 1}`);
    expect(receiverAccepts(secret, moved, body, t)).toBe(false);
    expect(verifyWebhookSignature(secret, moved, body, t)).toBe(false);
    // Replayed ten minutes later: refused by the tolerance.
    expect(receiverAccepts(secret, header, body, t + 600)).toBe(false);
    expect(verifyWebhookSignature(secret, header, body, t + 600)).toBe(false);
    expect(verifyWebhookSignature(secret, "garbage", body, t)).toBe(false);
  });
});

describe("webhook payload", () => {
  it("carries the transition's fields, ISO times, the idempotency key and a plain summary", () => {
    const payload = webhookPayload(firing);
    expect(payload).toEqual({
      version: 1,
      idempotency_key: `${firing.alert_id}:firing`,
      alert_id: firing.alert_id,
      state: "firing",
      service: "payments-mcp",
      rule: "confidence_gate_block_rate_high",
      metric: "confidence_gate_block_rate",
      comparator: "gt",
      observed_value: 0.42,
      threshold: 0.2,
      min_samples: 1,
      sample_count: 50,
      window: { start: "2025-11-24T16:00:00.000Z", end: "2025-11-24T16:01:00.000Z" },
      fired_at: "2025-11-24T16:00:00.000Z",
      emitted_at: "2025-11-24T16:01:00.000Z",
      summary:
        "payments-mcp confidence_gate_block_rate_high FIRING: confidence_gate_block_rate 42% (threshold > 20%, 50 samples)",
    });
    expect(JSON.stringify(payload)).not.toMatch(/https?:/);
    expect(webhookPayload(resolved).idempotency_key).toBe(`${firing.alert_id}:resolved`);
    expect(webhookPayload({ ...firing, observed_value: null }).summary).toContain("no samples");
  });

  it("keeps microseconds in times that have them, and the key differs by state only", () => {
    expect(isoFromMicros(1_764_000_000_123_456)).toBe("2025-11-24T16:00:00.123456Z");
    expect(isoFromMicros(1_764_000_000_123_000)).toBe("2025-11-24T16:00:00.123Z");
    expect(idempotencyKey(firing)).not.toBe(idempotencyKey(resolved));
    expect(idempotencyKey({ ...firing, alert_id: "f".repeat(32) })).not.toBe(
      idempotencyKey(firing),
    );
  });
});

describe("Alertmanager alert", () => {
  const mapping = { severity: "page", firingTtlMs: 3_600_000, generatorUrl: undefined };
  const now = Date.parse("2025-11-24T16:01:05.000Z");

  it("labels the incident, starts at its first window, ends a TTL ahead while firing", () => {
    const alert = alertmanagerAlert(firing, mapping, now);
    expect(alert.labels).toEqual({
      alertname: "confidence_gate_block_rate_high",
      service: "payments-mcp",
      metric: "confidence_gate_block_rate",
      severity: "page",
      alert_id: firing.alert_id,
      source: "mcp-observatory",
    });
    expect(alert.startsAt).toBe("2025-11-24T16:00:00.000Z");
    expect(alert.endsAt).toBe("2025-11-24T17:01:05.000Z");
    expect(alert.annotations.summary).toContain("FIRING");
    expect(alert.annotations.threshold).toBe("> 0.2");
    expect(alert).not.toHaveProperty("generatorURL");
  });

  it("a resolved transition has the same labels and ends at its event time", () => {
    const alert = alertmanagerAlert(
      resolved,
      { ...mapping, generatorUrl: "http://grafana/d/x" },
      now,
    );
    expect(alert.labels).toEqual(alertmanagerAlert(firing, mapping, now).labels);
    expect(alert.startsAt).toBe("2025-11-24T16:00:00.000Z");
    expect(alert.endsAt).toBe("2025-11-24T16:03:00.000Z");
    expect(alert.generatorURL).toBe("http://grafana/d/x");
  });

  it("posts to the v2 API under the base URL", () => {
    expect(alertmanagerAlertsUrl("http://am:9093")).toBe("http://am:9093/api/v2/alerts");
    expect(alertmanagerAlertsUrl("http://am:9093/")).toBe("http://am:9093/api/v2/alerts");
    expect(alertmanagerAlertsUrl("http://am/prefix/api/v2/alerts")).toBe(
      "http://am/prefix/api/v2/alerts",
    );
  });
});

describe("retry classification", () => {
  it("retries 5xx, 408 and 429; refuses other statuses; delivers 2xx", () => {
    for (const status of [200, 201, 202, 204])
      expect(classifyStatus(status), `${status}`).toBe("delivered");
    for (const status of [408, 429, 500, 502, 503, 504])
      expect(classifyStatus(status), `${status}`).toBe("retry");
    for (const status of [301, 302, 400, 401, 403, 404, 409, 413, 422])
      expect(classifyStatus(status), `${status}`).toBe("reject");
  });

  it("network failures and timeouts are retriable", () => {
    const refused = networkFailure(
      "webhook-1",
      new TypeError("fetch failed", { cause: { code: "ECONNREFUSED" } }),
      1000,
    );
    expect(refused.retriable).toBe(true);
    expect(refused.message).toBe("webhook-1 could not be reached (ECONNREFUSED)");
    const timeout = networkFailure(
      "webhook-1",
      new DOMException("timed out", "TimeoutError"),
      1000,
    );
    expect(timeout.code).toBe("FORWARD_TIMEOUT");
    expect(timeout.retriable).toBe(true);
  });

  it("with the project's retry loop: a 503 is tried again up to the cap, a 400 once", async () => {
    const policy = { maxAttempts: 4, baseDelayMs: 10, maxDelayMs: 20 };
    const noWait = { sleep: () => Promise.resolve() };
    let attempts = 0;
    const failing = (status: number) => () => {
      attempts++;
      return Promise.reject(
        new DeliveryError(
          "FORWARD_HTTP_STATUS",
          `HTTP ${status}`,
          status,
          classifyStatus(status) === "retry",
        ),
      );
    };
    await expect(retry(failing(503), policy, noWait)).rejects.toBeInstanceOf(RetryExhaustedError);
    expect(attempts).toBe(4);
    attempts = 0;
    await expect(retry(failing(400), policy, noWait)).rejects.toMatchObject({ status: 400 });
    expect(attempts).toBe(1);
  });
});

describe("forwarder settings", () => {
  const env = {};

  it("no two settings share a flag, variable or file key, nor one of the connection's", () => {
    const all = [...CONNECTION_SETTINGS, ...FORWARD_SETTINGS];
    for (const field of ["flag", "env", "key", "option"] as const)
      expect(new Set(all.map((setting) => setting[field])).size, field).toBe(all.length);
    expect(FORWARD_SETTINGS.filter((s) => s.secret === true).map((s) => s.env)).toEqual([
      "MCPO_WEBHOOK_SECRET",
      "MCPO_WEBHOOK_SECRET_FILE",
      "MCPO_ALERTMANAGER_PASSWORD",
      "MCPO_ALERTMANAGER_PASSWORD_FILE",
      "MCPO_ALERTMANAGER_TOKEN",
      "MCPO_ALERTMANAGER_TOKEN_FILE",
    ]);
  });

  it("an invalid URL names the key", () => {
    expect(() => parseForwardConfig({ webhookUrl: ["ftp://x"] })).toThrow(
      /invalid configuration webhookUrl\.0: expected http\(s\) URLs/,
    );
    expect(() => parseForwardConfig({ alertmanagerUrl: ["not a url"] })).toThrow(
      /invalid configuration alertmanagerUrl\.0/,
    );
  });

  it("the CLI names it as given: the flag, the variable or the file key", () => {
    const settings = (flags: Record<string, unknown>, vars: Record<string, string>) =>
      new SettingsResolver(flags, undefined, vars);
    const fail = (resolver: SettingsResolver): string => {
      try {
        parseForwardConfig(resolver.options(forwardConfigSchema));
      } catch (error) {
        return (resolver.renamed(error, FORWARD_SETTINGS) as Error).message;
      }
      return "no error";
    };
    expect(fail(settings({ webhookUrl: ["http://ok", "nope"] }, {}))).toMatch(
      /^invalid configuration --webhook-url: expected http\(s\) URLs/,
    );
    expect(fail(settings({}, { MCPO_ALERTMANAGER_URL: "http://a:9093,bad" }))).toMatch(
      /^invalid configuration MCPO_ALERTMANAGER_URL: /,
    );
    const dir = mkdtempSync(join(tmpdir(), "mcpo-forward-unit-"));
    try {
      const file = join(dir, "c.yaml");
      writeFileSync(file, "forward:\n  webhookUrl: [http://a/hook, 'mailto:x']\n");
      const fromFile = SettingsResolver.fromFlags({ config: file }, {});
      expect(fail(fromFile)).toMatch(
        new RegExp(`^invalid configuration forward\\.webhookUrl in ${file}: expected http`),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    // Lists: repeated flags and comma-separated variables both give every URL.
    const lists = settings(
      { webhookUrl: ["http://a/1", "http://b/2"] },
      { MCPO_ALERTMANAGER_URL: "http://am1:9093, http://am2:9093" },
    ).options(forwardConfigSchema);
    expect(lists.webhookUrl).toEqual(["http://a/1", "http://b/2"]);
    expect(lists.alertmanagerUrl).toEqual(["http://am1:9093", "http://am2:9093"]);
  });

  it("needs a destination, and a secret with webhooks; secrets never in messages", () => {
    expect(() => destinationsOf(parseForwardConfig({}), env)).toThrow(/at least one destination/);
    expect(() => destinationsOf(parseForwardConfig({ webhookUrl: ["http://h/x"] }), env)).toThrow(
      ConfigError,
    );
    const withSecret = destinationsOf(
      parseForwardConfig({ webhookUrl: ["http://h/x"], webhookSecret: "hunter2-secret-value" }),
      env,
    );
    expect(withSecret.map((d) => `${d.name} ${d.kind} ${d.origin}`)).toEqual([
      "webhook-1 webhook http://h",
    ]);
    let message = "";
    try {
      destinationsOf(
        parseForwardConfig({
          alertmanagerUrl: ["http://am:9093"],
          alertmanagerToken: "tok-abcdef-123456",
          alertmanagerUsername: "ops",
          alertmanagerPassword: "pw-abcdef-123456",
        }),
        env,
      );
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/not both/);
    expect(message).not.toMatch(/tok-abcdef|pw-abcdef/);
    expect(() =>
      destinationsOf(
        parseForwardConfig({ alertmanagerUrl: ["http://am:9093"], alertmanagerUsername: "ops" }),
        env,
      ),
    ).toThrow(/alertmanagerPassword/);
  });

  it("reads the secret from the file its variable names", () => {
    const dir = mkdtempSync(join(tmpdir(), "mcpo-forward-unit-"));
    try {
      const file = join(dir, "secret");
      writeFileSync(file, "from-a-file-0123456789\n");
      const destinations = destinationsOf(parseForwardConfig({ webhookUrl: ["http://h/x"] }), {
        MCPO_WEBHOOK_SECRET_FILE: file,
      });
      expect(destinations).toHaveLength(1);
      expect(() =>
        destinationsOf(parseForwardConfig({ webhookUrl: ["http://h/x"] }), {
          MCPO_WEBHOOK_SECRET_FILE: join(dir, "missing"),
        }),
      ).toThrow(
        /webhookSecretFile \(MCPO_WEBHOOK_SECRET_FILE, forward\.webhookSecretFile\): cannot read/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
