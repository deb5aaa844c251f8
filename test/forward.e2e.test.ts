/**
 * `mcp-observatory alerts forward` as a user runs it: started with a webhook and its secret in
 * the environment, it forwards an alert from the alerts topic, and SIGTERM stops it with exit 0.
 * Its output never shows the secret.
 */
import { createServer } from "node:http";

import { describe, expect, it } from "vitest";

import { AvroCodec, valueSubject } from "../avro/codec.js";
import { ALERT_EVENT } from "../avro/contracts.js";
import type { AlertEvent } from "../avro/generated.js";
import { startCli } from "./support/cli.js";
import { createTopics, services, testKafka, uniqueName } from "./support/isolation.js";
import { sendWhenSettled, whenSettled } from "./support/settled-send.js";
import { waitFor } from "./support/wait.js";

describe("mcp-observatory alerts forward", () => {
  it(
    "forwards an alert to a webhook and exits 0 on SIGTERM, its secret never printed",
    { timeout: 90_000 },
    async () => {
      const secret = "e2e-forward-secret-9f8e7d6c5b4a39281706";
      const prefix = `${uniqueName("fwd-e2e")}.`;
      const topic = `${prefix}alerts`;
      const group = uniqueName("fwd-e2e-group");
      const admin = testKafka().admin();
      await admin.connect();
      await whenSettled(() => createTopics(admin, [{ topic }, { topic: `${prefix}dead-letter` }]));
      const received: { body: string; headers: Record<string, unknown> }[] = [];
      const server = createServer((request, response) => {
        let body = "";
        request.on("data", (chunk: Buffer) => (body += chunk.toString("utf8")));
        request.on("end", () => {
          received.push({ body, headers: { ...request.headers } });
          response.writeHead(204).end();
        });
      });
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      const cli = startCli(["alerts", "forward", "--webhook-url", `http://127.0.0.1:${port}/in`], {
        ...process.env,
        KAFKA_BROKERS: services().kafkaBrokers,
        SCHEMA_REGISTRY_URL: services().schemaRegistryUrl,
        MCPO_TOPIC_PREFIX: prefix,
        MCPO_FORWARD_GROUP: group,
        MCPO_FORWARD_FROM_BEGINNING: "true",
        MCPO_WEBHOOK_SECRET: secret,
        MCPO_METRICS_PORT: "0",
      });
      try {
        const codec = await AvroCodec.register(ALERT_EVENT, {
          registryUrl: services().schemaRegistryUrl,
          subject: valueSubject(topic),
        });
        const micros = Date.now() * 1000;
        const alert: AlertEvent = {
          alert_id: "e2e0000000000000000000000000beef",
          service: "payments-mcp",
          rule: "error_rate_high",
          metric: "error_rate",
          comparator: "gt",
          state: "firing",
          observed_value: 0.09,
          threshold: 0.05,
          min_samples: 20,
          sample_count: 120,
          window_start: micros - 120_000_000,
          window_end: micros - 60_000_000,
          fired_window_start: micros - 120_000_000,
          emitted_at: micros - 60_000_000,
        };
        const producer = testKafka().producer();
        await producer.connect();
        await sendWhenSettled(producer, {
          topic,
          messages: [{ key: alert.service, value: codec.encode(alert) }],
        });
        await producer.disconnect();
        await waitFor(
          "the alert at the webhook",
          () => ({
            received: received.length,
            exit: cli.exitCode(),
            err: cli.stderr().slice(-500),
          }),
          (seen) => seen.received > 0 || seen.exit !== undefined,
          { timeoutMs: 60_000 },
        );
        expect(cli.exitCode(), cli.stderr()).toBeUndefined();
        expect(received).toHaveLength(1);
        expect(JSON.parse(received[0]?.body ?? "{}")).toMatchObject({
          alert_id: alert.alert_id,
          state: "firing",
          service: "payments-mcp",
        });
        expect(received[0]?.headers["x-mcpo-signature"]).toMatch(/^t=\d+,v1=[0-9a-f]{64}$/);
        expect(await cli.stop("SIGTERM")).toBe(0);
        expect(cli.stdout()).toMatch(/"msg":"alerts-forward stopped"/);
        expect(cli.stdout() + cli.stderr()).not.toContain(secret);
      } finally {
        await cli.stop("SIGKILL");
        server.closeAllConnections();
        await new Promise<void>((resolve) => {
          server.close(() => {
            resolve();
          });
        });
        await admin
          .deleteTopics({ topics: [topic, `${prefix}dead-letter`] })
          .catch(() => undefined);
        await admin.deleteGroups([group]).catch(() => undefined);
        await admin.disconnect();
      }
    },
  );
});
