import type { ModelCallEvent } from "../../avro/generated.js";

/** Counters of an exporter, since it was made. */
export interface ExporterStats {
  /** Events the destination acknowledged. */
  readonly sent: number;
  /** Events dropped: buffer full, refused while shutting down, or unencodable. */
  readonly dropped: number;
  /** Failed attempts that were tried again. */
  readonly retried: number;
  /** Events waiting in the buffer (including a batch in flight). */
  readonly buffered: number;
  /**
   * Of `dropped`, events the destination refused as too large on their own (the broker's record
   * size limit); exporters without such a limit leave it out.
   */
  readonly tooLarge?: number;
}

/** What the buffer does when it is full. */
export type OverflowPolicy = "drop-newest" | "drop-oldest" | "block";

/**
 * Where finished events go. `export` must not block the host: it buffers and returns (only the
 * `block` overflow policy returns a promise, resolved when there is room or the wait timed out).
 * It never throws.
 */
export interface EventExporter {
  export(event: ModelCallEvent): void | Promise<void>;
  /** Resolves when everything buffered when it was called has been delivered, or after `timeoutMs`. */
  flush(timeoutMs?: number): Promise<FlushResult>;
  /** Flushes, then releases connections. Runs once; later calls return the same promise. */
  shutdown(timeoutMs?: number): Promise<FlushResult>;
  stats(): ExporterStats;
}

/** How a flush ended. */
export interface FlushResult {
  /** True when nothing was left in the buffer. */
  readonly complete: boolean;
  /** Events still buffered when it returned. */
  readonly remaining: number;
}
