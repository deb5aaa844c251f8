import type { ModelCallEvent } from "../../avro/generated.js";
import type { EventExporter, ExporterStats, FlushResult } from "./types.js";

/**
 * Keeps events in memory, in order: for tests and for embedding (read `events`). Bounded: past
 * `capacity` it drops the oldest and counts them.
 */
export class InMemoryExporter implements EventExporter {
  private readonly stored: ModelCallEvent[] = [];
  private dropped = 0;
  private closed = false;

  constructor(private readonly capacity = 100_000) {}

  /** The events exported so far, oldest first. */
  get events(): readonly ModelCallEvent[] {
    return this.stored;
  }

  export(event: ModelCallEvent): void {
    if (this.closed) {
      this.dropped++;
      return;
    }
    this.stored.push(event);
    if (this.stored.length > this.capacity) {
      this.stored.shift();
      this.dropped++;
    }
  }

  /** Empties the store (the counters stay). */
  clear(): void {
    this.stored.length = 0;
  }

  flush(): Promise<FlushResult> {
    return Promise.resolve({ complete: true, remaining: 0 });
  }

  shutdown(): Promise<FlushResult> {
    this.closed = true;
    return Promise.resolve({ complete: true, remaining: 0 });
  }

  stats(): ExporterStats {
    return { sent: this.stored.length, dropped: this.dropped, retried: 0, buffered: 0 };
  }
}
