/**
 * `alerts forward` against real services: AlertEvents on an alerts topic of the test's own (real
 * Kafka and schema registry), delivered to a webhook receiver started here (node:http, checking
 * every signature with the README's recipe) and to a real Alertmanager (Debian's
 * prometheus-alertmanager, started with a temporary directory and stopped by pid). Covers retries
 * (503s), dead letters (a 400), dedupe of a repeated transition, and the kept position: a
 * forwarder killed (SIGKILL) with a delivery in flight resumes at the first alert not
 * acknowledged, losing none and sending no acknowledged one twice.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac, timingSafeEqual } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";

import type { Admin, Producer } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT } from "../avro/contracts.js";
import type { AlertEvent } from "../avro/generated.js";
import { AlertForwarder } from "../processor/forward.js";
import { CliWorkers, metricSeries } from "./support/crash.js";
import { createTopics, quietLogger, services, testKafka, uniqueName } from "./support/isolation.js";
import { freePort } from "./support/ports.js";
import { readWholeTopic } from "./support/cli.js";
import { sendWhenSettled, whenSettled } from "./support/settled-send.js";
import { waitFor } from "./support/wait.js";

const SECRET = "webhook-secret-for-the-forward-test-0123456789";
const MINUTE = 60_000_000;

/** A transition with an id of its own; times a few minutes back from now. */
function alertEvent(n: number, overrides: Partial<AlertEvent> = {}): AlertEvent {
  const nowMicros = Date.now() * 1000;
  const base = nowMicros - (nowMicros % MINUTE) - 5 * MINUTE;
  return {
    alert_id: n.toString(16).padStart(32, "0"),
    service: `svc-${n}`,
    rule: "golden_financial_failure_rate_high",
    metric: "golden_financial_failure_rate",
    comparator: "gt",
    state: "firing",
    observed_value: 0.5,
    threshold: 0,
    min_samples: 1,
    sample_count: 4,
    window_start: base,
    window_end: base + MINUTE,
    fired_window_start: base,
    emitted_at: base + MINUTE,
    ...overrides,
  };
}

/** One request the receiver got. */
interface Received {
  readonly key: string;
  readonly alertId: string;
  readonly signed: boolean;
  readonly status: number | "held";
  readonly body: Record<string, unknown>;
}

/**
 * A webhook receiver: checks each request's signature with the documented recipe (apart from the
 * product's code), answers 503 to the first `failFirst` requests of a key, 400 to `reject`ed
 * alert ids, holds the request of a `hold`ed alert id without answering, and 200 otherwise.
 */
class Receiver {
  readonly requests: Received[] = [];
  failFirst = new Map<string, number>();
  reject = new Set<string>();
  hold = new Set<string>();
  private readonly held: ServerResponse[] = [];
  private server: Server | undefined;
  url = "";

  async start(): Promise<void> {
    this.server = createServer((request, response) => {
      void this.handle(request, response);
    });
    await new Promise<void>((resolve) => this.server?.listen(0, "127.0.0.1", resolve));
    const address = this.server.address();
    const port = typeof address === "object" && address !== null ? address.port : 0;
    this.url = `http://127.0.0.1:${port}/hooks/mcpo`;
  }

  /** The keys answered 2xx, in order. */
  acknowledged(): string[] {
    return this.requests.filter((r) => r.status === 200).map((r) => r.key);
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    const raw = Buffer.concat(chunks).toString("utf8");
    const header = String(request.headers["x-mcpo-signature"] ?? "");
    const fields = new Map(header.split(",").map((p) => p.split("=", 2) as [string, string]));
    const t = Number(fields.get("t"));
    const expected = createHmac("sha256", SECRET).update(`${t}.${raw}`).digest();
    const given = Buffer.from(fields.get("v1") ?? "", "hex");
    const signed =
      Math.abs(Date.now() / 1000 - t) <= 300 &&
      given.length === expected.length &&
      timingSafeEqual(given, expected);
    const key = String(request.headers["x-mcpo-idempotency-key"]);
    const alertId = String(request.headers["x-mcpo-alert-id"]);
    const body = JSON.parse(raw) as Record<string, unknown>;
    const failures = this.failFirst.get(key) ?? 0;
    let status: number | "held";
    if (!signed) status = 401;
    else if (this.hold.has(alertId)) status = "held";
    else if (failures > 0) {
      this.failFirst.set(key, failures - 1);
      status = 503;
    } else status = this.reject.has(alertId) ? 400 : 200;
    this.requests.push({ key, alertId, signed, status, body });
    if (status === "held") {
      this.held.push(response);
      return;
    }
    response.writeHead(status, { "content-type": "text/plain" }).end(`status ${status}`);
  }

  async stop(): Promise<void> {
    for (const response of this.held) response.socket?.destroy();
    this.server?.closeAllConnections();
    const server = this.server;
    if (!server) return;
    await new Promise<void>((resolve) => {
      server.close(() => {
        resolve();
      });
    });
  }
}

/** A topic prefix of the test's own, its alerts and dead-letter topics, and a codec. */
async function freshTopics(admin: Admin, label: string) {
  const prefix = `${uniqueName(label)}.`;
  await whenSettled(() =>
    createTopics(admin, [
      { topic: `${prefix}alerts`, numPartitions: 1 },
      { topic: `${prefix}dead-letter`, numPartitions: 1 },
    ]),
  );
  const codec = await AvroCodec.register(ALERT_EVENT, {
    registryUrl: services().schemaRegistryUrl,
    subject: valueSubject(`${prefix}alerts`),
  });
  return { prefix, codec };
}

describe("alerts forward", () => {
  let admin: Admin;
  let producer: Producer;
  const topics: string[] = [];
  const groups: string[] = [];

  beforeAll(async () => {
    admin = testKafka().admin();
    await admin.connect();
    producer = testKafka().producer();
    await producer.connect();
  });
  afterAll(async () => {
    await producer.disconnect();
    if (topics.length > 0) await admin.deleteTopics({ topics }).catch(() => undefined);
    if (groups.length > 0) await admin.deleteGroups(groups).catch(() => undefined);
    await admin.disconnect();
  });

  async function setUp(label: string) {
    const fresh = await freshTopics(admin, label);
    topics.push(`${fresh.prefix}alerts`, `${fresh.prefix}dead-letter`);
    const group = uniqueName(`${label}-group`);
    groups.push(group);
    const produce = async (alerts: readonly AlertEvent[]) => {
      await sendWhenSettled(producer, {
        topic: `${fresh.prefix}alerts`,
        acks: -1,
        messages: alerts.map((alert) => ({ key: alert.service, value: fresh.codec.encode(alert) })),
      });
    };
    const committed = async (): Promise<string> =>
      (await admin.fetchOffsets({ groupId: group, topics: [`${fresh.prefix}alerts`] }))[0]
        ?.partitions[0]?.offset ?? "none";
    return { ...fresh, group, produce, committed };
  }

  function forwarder(prefix: string, group: string, destinations: object): AlertForwarder {
    return new AlertForwarder({
      brokers: services().kafkaBrokers,
      schemaRegistryUrl: services().schemaRegistryUrl,
      topicPrefix: prefix,
      groupId: group,
      fromBeginning: true,
      retryInitialMs: 50,
      retryMaxMs: 200,
      maxAttempts: 5,
      requestTimeoutMs: 5000,
      sessionTimeoutMs: 10_000,
      metricsPort: 0,
      logger: quietLogger,
      ...destinations,
    });
  }

  it(
    "webhook: every request signed; 503s retried until accepted; a 400 dead-lettered with its reason; the position after the last",
    { timeout: 60_000 },
    async () => {
      const { prefix, group, produce, committed } = await setUp("fwd-webhook");
      const receiver = new Receiver();
      await receiver.start();
      const retried = alertEvent(1);
      const refused = alertEvent(2);
      const resolved = alertEvent(1, {
        state: "resolved",
        observed_value: 0,
        window_start: retried.window_end,
        window_end: retried.window_end + MINUTE,
        emitted_at: retried.window_end + MINUTE,
      });
      receiver.failFirst.set(`${retried.alert_id}:firing`, 2);
      receiver.reject.add(refused.alert_id);
      await produce([retried, refused, resolved]);
      const service = forwarder(prefix, group, {
        webhookUrl: [receiver.url],
        webhookSecret: SECRET,
      });
      try {
        await service.start();
        await waitFor(
          "both deliverable transitions to be acknowledged and the refused one dead-lettered",
          () => ({ acked: receiver.acknowledged(), stats: service.stats() }),
          ({ acked, stats }) => acked.length === 2 && stats.deadLettered === 1,
          { timeoutMs: 40_000 },
        );
        await waitFor("the group's position after the third alert", committed, (o) => o === "3", {
          timeoutMs: 10_000,
        });
        const metrics = await (await fetch(service.metricsUrl ?? "")).text();
        await service.stop();
        expect(receiver.requests.every((r) => r.signed)).toBe(true);
        expect(receiver.requests.map((r) => `${r.key} ${r.status}`)).toEqual([
          `${retried.alert_id}:firing 503`,
          `${retried.alert_id}:firing 503`,
          `${retried.alert_id}:firing 200`,
          `${refused.alert_id}:firing 400`,
          `${resolved.alert_id}:resolved 200`,
        ]);
        expect(receiver.requests[2]?.body).toMatchObject({
          version: 1,
          alert_id: retried.alert_id,
          state: "firing",
          service: "svc-1",
          observed_value: 0.5,
        });
        expect(
          metricSeries(metrics, "mcpo_forward_sent_total", { destination: "webhook-1" }),
        ).toEqual([2]);
        expect(
          metricSeries(metrics, "mcpo_forward_retried_total", { destination: "webhook-1" }),
        ).toEqual([2]);
        expect(
          metricSeries(metrics, "mcpo_forward_failed_total", {
            destination: "webhook-1",
            reason: "FORWARD_REJECTED",
          }),
        ).toEqual([1]);
        const letters = await readWholeTopic(`${prefix}dead-letter`);
        expect(letters).toHaveLength(1);
        expect(letters[0]?.headers).toMatchObject({
          "mcpo-dlq-code": "FORWARD_REJECTED",
          "mcpo-forward-destination": "webhook-1",
          "mcpo-forward-alert-id": refused.alert_id,
          "mcpo-source-topic": `${prefix}alerts`,
          "mcpo-source-offset": "1",
        });
        expect(letters[0]?.headers["mcpo-dlq-reason"]).toBe(
          "webhook-1 answered HTTP 400: status 400",
        );
      } finally {
        await service.stop();
        await receiver.stop();
      }
    },
  );

  it(
    "a receiver that never answers times out per request and runs out of attempts (dead-lettered); the other destination still gets the alert",
    { timeout: 60_000 },
    async () => {
      const { prefix, group, produce, committed } = await setUp("fwd-slow");
      const slow = new Receiver();
      const fast = new Receiver();
      await slow.start();
      await fast.start();
      const alert = alertEvent(5);
      slow.hold.add(alert.alert_id);
      await produce([alert]);
      const service = forwarder(prefix, group, {
        webhookUrl: [slow.url, fast.url],
        webhookSecret: SECRET,
        requestTimeoutMs: 400,
        maxAttempts: 2,
      });
      try {
        await service.start();
        await waitFor("the position after the alert", committed, (o) => o === "1", {
          timeoutMs: 40_000,
        });
        expect(fast.acknowledged()).toEqual([`${alert.alert_id}:firing`]);
        expect(slow.requests.map((r) => r.status)).toEqual(["held", "held"]);
        expect(service.stats()).toMatchObject({ sent: 1, retried: 1, failed: 1, deadLettered: 1 });
        const letters = await readWholeTopic(`${prefix}dead-letter`);
        expect(letters.map((l) => l.headers["mcpo-dlq-code"])).toEqual([
          "FORWARD_RETRIES_EXHAUSTED",
        ]);
        expect(letters[0]?.headers["mcpo-forward-destination"]).toBe("webhook-1");
        expect(letters[0]?.headers["mcpo-dlq-reason"]).toBe(
          "gave up after 2 attempt(s): webhook-1 did not answer within 400 ms",
        );
      } finally {
        await service.stop();
        await slow.stop();
        await fast.stop();
      }
    },
  );

  it(
    "dedupe: a transition written twice to the log (a redelivery) reaches the webhook once",
    { timeout: 60_000 },
    async () => {
      const { prefix, group, produce, committed } = await setUp("fwd-dedupe");
      const receiver = new Receiver();
      await receiver.start();
      const first = alertEvent(10);
      const other = alertEvent(11);
      await produce([first, first, other, first]);
      const service = forwarder(prefix, group, {
        webhookUrl: [receiver.url],
        webhookSecret: SECRET,
      });
      try {
        await service.start();
        await waitFor("all four records read", committed, (o) => o === "4", { timeoutMs: 40_000 });
        expect(receiver.acknowledged()).toEqual([
          `${first.alert_id}:firing`,
          `${other.alert_id}:firing`,
        ]);
        expect(service.stats()).toMatchObject({
          received: 4,
          sent: 2,
          deduped: 2,
          deadLettered: 0,
        });
      } finally {
        await service.stop();
        await receiver.stop();
      }
    },
  );

  it(
    "Alertmanager: a firing alert appears with its labels, and its resolved transition resolves it",
    { timeout: 60_000 },
    async () => {
      const binary = "/usr/bin/prometheus-alertmanager";
      expect(
        existsSync(binary),
        `${binary} (Debian's prometheus-alertmanager; .ci/run installs it)`,
      ).toBe(true);
      const { prefix, group, produce } = await setUp("fwd-am");
      const dir = mkdtempSync(join(tmpdir(), "mcpo-alertmanager-"));
      writeFileSync(
        join(dir, "alertmanager.yml"),
        'route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n',
      );
      const port = await freePort();
      const am: ChildProcess = spawn(
        binary,
        [
          `--config.file=${join(dir, "alertmanager.yml")}`,
          `--storage.path=${join(dir, "data")}`,
          `--web.listen-address=127.0.0.1:${port}`,
          "--cluster.listen-address=",
        ],
        { stdio: "ignore" },
      );
      const amUrl = `http://127.0.0.1:${port}`;
      type Listed = { labels: Record<string, string>; endsAt: string; status: { state: string } };
      const listed = async (): Promise<Listed[]> => {
        const response = await fetch(`${amUrl}/api/v2/alerts`);
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        return (await response.json()) as Listed[];
      };
      let service: AlertForwarder | undefined;
      try {
        await waitFor("Alertmanager to answer", listed, () => true, { timeoutMs: 20_000 });
        const fired = alertEvent(20, { service: "payments-mcp" });
        const resolved = alertEvent(20, {
          service: "payments-mcp",
          state: "resolved",
          observed_value: 0,
          window_start: fired.window_end,
          window_end: fired.window_end + MINUTE,
          emitted_at: fired.window_end + MINUTE,
        });
        service = forwarder(prefix, group, {
          alertmanagerUrl: [amUrl],
          alertmanagerSeverity: "page",
        });
        await service.start();
        await produce([fired]);
        const active = await waitFor(
          "the firing alert in Alertmanager",
          listed,
          (alerts) => alerts.some((a) => a.labels.alert_id === fired.alert_id),
          { timeoutMs: 30_000 },
        );
        const alert = active.find((a) => a.labels.alert_id === fired.alert_id);
        expect(alert?.labels).toEqual({
          alertname: "golden_financial_failure_rate_high",
          service: "payments-mcp",
          metric: "golden_financial_failure_rate",
          severity: "page",
          alert_id: fired.alert_id,
          source: "mcp-observatory",
        });
        expect(alert?.status.state).toBe("active");
        expect(Date.parse(alert?.endsAt ?? "")).toBeGreaterThan(Date.now());
        await produce([resolved]);
        // Alertmanager lists only alerts whose endsAt has not passed: a resolved one is gone.
        await waitFor(
          "Alertmanager to resolve the alert",
          listed,
          (alerts) => !alerts.some((a) => a.labels.alert_id === fired.alert_id),
          { timeoutMs: 30_000 },
        );
        expect(service.stats()).toMatchObject({ sent: 2, failed: 0 });
      } finally {
        await service?.stop();
        if (am.pid !== undefined && am.exitCode === null) {
          const exited = new Promise((resolve) => am.once("exit", resolve));
          process.kill(am.pid, "SIGTERM");
          await exited;
        }
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it(
    "killed with a delivery in flight, the forwarder resumes at that alert: none lost, none acknowledged sent twice",
    { timeout: 90_000 },
    async () => {
      const { prefix, group, produce, committed } = await setUp("fwd-resume");
      const receiver = new Receiver();
      await receiver.start();
      const alerts = Array.from({ length: 6 }, (_, i) => alertEvent(30 + i));
      const stuck = alerts[2] as AlertEvent;
      receiver.hold.add(stuck.alert_id);
      await produce(alerts);
      const workers = CliWorkers.forCurrentTest("forward-resume");
      const env = {
        ...process.env,
        KAFKA_BROKERS: services().kafkaBrokers,
        SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
        MCPO_TOPIC_PREFIX: prefix,
        MCPO_FORWARD_GROUP: group,
        MCPO_FORWARD_FROM_BEGINNING: "true",
        MCPO_WEBHOOK_URL: receiver.url,
        MCPO_WEBHOOK_SECRET: SECRET,
        // Longer than the test holds the request: the kill, not a timeout, ends it.
        MCPO_FORWARD_REQUEST_TIMEOUT_MS: "60000",
        MCPO_SESSION_TIMEOUT_MS: "10000",
        MCPO_METRICS_PORT: "0",
        LOG_LEVEL: "info",
      };
      try {
        const first = workers.start(["alerts", "forward"], env);
        await first.waitFor(
          "two alerts acknowledged and the third held in flight",
          () => receiver.requests.map((r) => `${r.alertId.slice(-2)} ${r.status}`),
          () =>
            receiver.acknowledged().length === 2 &&
            receiver.requests.some((r) => r.status === "held"),
          { timeoutMs: 40_000 },
        );
        await waitFor("the position after the second alert", committed, (o) => o === "2", {
          timeoutMs: 10_000,
        });
        expect(await first.kill("SIGKILL")).toEqual({ code: null, signal: "SIGKILL" });
        // More alerts arrive while it is down; the receiver now answers the held one.
        receiver.hold.clear();
        const later = Array.from({ length: 2 }, (_, i) => alertEvent(40 + i));
        await produce(later);
        const second = workers.start(["alerts", "forward"], env);
        await second.waitFor(
          "every alert acknowledged",
          () => receiver.acknowledged().length,
          (n) => n >= 7,
          { timeoutMs: 40_000 },
        );
        await waitFor("the position after the eighth alert", committed, (o) => o === "8", {
          timeoutMs: 10_000,
        });
        expect(await second.kill("SIGTERM")).toEqual({ code: 0, signal: null });
        const all = [...alerts, ...later].map((alert) => `${alert.alert_id}:firing`);
        // Each acknowledged exactly once, in the log's order; the one in flight at the kill was
        // sent again (it was never acknowledged), none before it.
        expect(receiver.acknowledged()).toEqual(all);
        expect(
          receiver.requests.filter((r) => r.alertId === stuck.alert_id).map((r) => r.status),
        ).toEqual(["held", 200]);
        expect(receiver.requests.every((r) => r.signed)).toBe(true);
      } finally {
        await workers.stopAll();
        await receiver.stop();
      }
    },
  );
});
