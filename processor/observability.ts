/**
 * The processor's operational surface: JSON logs (pino) and Prometheus metrics (prom-client) on
 * an HTTP endpoint. Each processor has its own metrics registry, so several can run in one process.
 */
import { createServer, type Server } from "node:http";

import { pino } from "pino";
import { collectDefaultMetrics, Counter, Gauge, Registry } from "prom-client";

import type { ProcessorLogger } from "./processor.js";

/** A pino logger behind the processor's small logging interface. */
export function pinoLogger(level: string = process.env.LOG_LEVEL ?? "info"): ProcessorLogger {
  const logger = pino({ level, base: { component: "processor" } });
  return {
    info: (message, context) => {
      logger.info(context ?? {}, message);
    },
    warn: (message, context) => {
      logger.warn(context ?? {}, message);
    },
    error: (message, context) => {
      logger.error(context ?? {}, message);
    },
  };
}

/** A running `/metrics` endpoint. */
export interface MetricsServer {
  readonly port: number;
  close(): Promise<void>;
}

/** Serves a registry's metrics at `/metrics` on loopback (port 0: any free port). */
export async function serveMetrics(
  registry: Registry,
  port: number,
  host = "127.0.0.1",
): Promise<MetricsServer> {
  const server: Server = createServer((request, response) => {
    if (request.url !== "/metrics") {
      response.writeHead(404).end();
      return;
    }
    registry.metrics().then(
      (body) => {
        response.writeHead(200, { "content-type": registry.contentType }).end(body);
      },
      (error: unknown) => {
        response.writeHead(500).end(String(error));
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, resolve);
  });
  const address = server.address();
  return {
    port: typeof address === "object" && address !== null ? address.port : port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => {
          resolve();
        });
      }),
  };
}

/** The processor's Prometheus metrics. */
export class ProcessorMetrics {
  readonly registry = new Registry();
  readonly records = new Counter({
    name: "mcpo_processor_records_total",
    help: "Records read from the model-calls topic",
    registers: [this.registry],
  });
  readonly events = new Counter({
    name: "mcpo_processor_events_total",
    help: "ModelCallEvents decoded and windowed",
    registers: [this.registry],
  });
  readonly rollups = new Counter({
    name: "mcpo_processor_rollups_total",
    help: "Rollups produced",
    registers: [this.registry],
  });
  readonly alerts = new Counter({
    name: "mcpo_processor_alerts_total",
    help: "Alert transitions produced",
    registers: [this.registry],
  });
  readonly late = new Counter({
    name: "mcpo_processor_late_events_total",
    help: "Late events forwarded to the late-events topic",
    registers: [this.registry],
  });
  readonly deadLettered = new Counter({
    name: "mcpo_processor_dead_lettered_total",
    help: "Records sent to the dead-letter topic",
    labelNames: ["code"],
    registers: [this.registry],
  });
  readonly checkpoints = new Counter({
    name: "mcpo_processor_checkpoints_total",
    help: "Partition checkpoints written",
    registers: [this.registry],
  });
  readonly openWindows = new Gauge({
    name: "mcpo_processor_open_windows",
    help: "Open (service, model, window) accumulators",
    labelNames: ["partition"],
    registers: [this.registry],
  });
  readonly watermark = new Gauge({
    name: "mcpo_processor_watermark_seconds",
    help: "Watermark per partition (event time, seconds since the epoch)",
    labelNames: ["partition"],
    registers: [this.registry],
  });
  readonly lag = new Gauge({
    name: "mcpo_processor_consumer_lag",
    help: "Records between the processed position and the partition's end",
    labelNames: ["partition"],
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "mcpo_processor_" });
  }

  /** Serves `/metrics` on `port` (0: any free port); resolves with the bound port. */
  serve(port: number, host = "127.0.0.1"): Promise<MetricsServer> {
    return serveMetrics(this.registry, port, host);
  }
}
