/** The processor's Prometheus metrics; each processor has its own registry. */
import { collectDefaultMetrics, Counter, Gauge, Registry } from "prom-client";

import { serveMetrics, type MetricsServer } from "../ops/index.js";

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
  readonly ticks = new Counter({
    name: "mcpo_processor_watermark_ticks_total",
    help: "Watermark ticks read from the model-calls topic",
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
  readonly duplicates = new Counter({
    name: "mcpo_processor_duplicate_events_total",
    help: "Events not counted because their window already counted their event_id (delivered twice)",
    registers: [this.registry],
  });
  readonly modelsFolded = new Counter({
    name: "mcpo_processor_models_folded_total",
    help: "Model calls counted in their window's overflow series (scope 'other'): their model came after the window's first maxModelsPerWindow models",
    registers: [this.registry],
  });
  readonly deadLettered = new Counter({
    name: "mcpo_processor_dead_lettered_total",
    help: "Records sent to the dead-letter topic",
    labelNames: ["code"],
    registers: [this.registry],
  });
  readonly forwarded = new Counter({
    name: "mcpo_processor_forwarded_events_total",
    help: "Events that arrived on a partition other than their service's home, copied there",
    labelNames: ["partition"],
    registers: [this.registry],
  });
  readonly rejectedEvents = new Counter({
    name: "mcpo_processor_rejected_events_total",
    help: "Events and copies not applied: their time is out of bounds of their record's log time (dead-lettered)",
    labelNames: ["code"],
    registers: [this.registry],
  });
  readonly ignoredTicks = new Counter({
    name: "mcpo_processor_ignored_ticks_total",
    help: "Watermark ticks and progress records ignored: their time is ahead of their record's log time",
    labelNames: ["kind"],
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

  /** Serves `/metrics` on `port` (0: any free port) at `host` (default 127.0.0.1). */
  serve(port: number, host?: string): Promise<MetricsServer> {
    return serveMetrics(this.registry, port, host);
  }
}
