import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";

import { serveMetrics, type MetricsServer } from "../ops/index.js";

/** The sink's Prometheus metrics (rows/s from the counters' rates). */
export class SinkMetrics {
  readonly registry = new Registry();
  readonly rows = new Counter({
    name: "mcpo_sink_rows_total",
    help: "Rows written",
    labelNames: ["table", "outcome"],
    registers: [this.registry],
  });
  readonly batches = new Counter({
    name: "mcpo_sink_batches_total",
    help: "Batches written (rows and next offsets in one transaction)",
    registers: [this.registry],
  });
  readonly batchSize = new Histogram({
    name: "mcpo_sink_batch_records",
    help: "Records per written batch",
    buckets: [1, 10, 50, 100, 500, 1000, 5000, 10_000],
    registers: [this.registry],
  });
  readonly lag = new Gauge({
    name: "mcpo_sink_consumer_lag",
    help: "Records between the written position and the partition's end",
    labelNames: ["topic", "partition"],
    registers: [this.registry],
  });
  readonly retries = new Counter({
    name: "mcpo_sink_retries_total",
    help: "Failed writes that were retried",
    registers: [this.registry],
  });
  readonly deadLettered = new Counter({
    name: "mcpo_sink_dead_lettered_total",
    help: "Records sent to the dead-letter topic",
    labelNames: ["code"],
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "mcpo_sink_" });
  }

  /** Serves `/metrics` on `port` (0: any free port) at `host` (default 127.0.0.1). */
  serve(port: number, host?: string): Promise<MetricsServer> {
    return serveMetrics(this.registry, port, host);
  }
}
