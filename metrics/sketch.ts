import { DDSketch } from "@datadog/sketches-js";

import type { LatencySketch as LatencySketchRecord } from "../avro/generated.js";

/**
 * Relative accuracy of latency quantiles: a reported p-quantile is within ±1% of the true value
 * of the sample at that rank (DDSketch's guarantee, for values above ~1e-9 ms).
 */
export const LATENCY_RELATIVE_ACCURACY = 0.01;

/**
 * A mergeable latency quantile sketch (DDSketch, from `@datadog/sketches-js`), in milliseconds.
 * Merging adds bin counts, so it is associative and commutative, and its canonical record form
 * (non-empty bins in key order) is the same whatever order the values and merges came in.
 */
export class LatencySketch {
  private readonly sketch = new DDSketch({ relativeAccuracy: LATENCY_RELATIVE_ACCURACY });

  /** Adds one latency in milliseconds (negative values count as 0). */
  add(latencyMs: number): void {
    this.sketch.accept(latencyMs > 0 ? latencyMs : 0);
  }

  /**
   * Adds every value of `other` into this sketch, bin by bin. (Not the library's `merge`: merging
   * into an empty sketch copies the other store, and a later merge into that copy loses bins —
   * found by the merge property test; see test/metrics.unit.test.ts.)
   */
  mergeFrom(other: LatencySketch): void {
    const from = other.sketch;
    if (from.count === 0) return;
    const wasEmpty = this.sketch.count === 0;
    const store = from.store;
    for (let key = store.minKey; key <= store.maxKey; key++) {
      const count = store.bins[key - store.offset] ?? 0;
      if (count > 0) this.sketch.store.add(key, count);
    }
    this.sketch.zeroCount += from.zeroCount;
    this.sketch.count += from.count;
    this.sketch.min = wasEmpty ? from.min : Math.min(this.sketch.min, from.min);
    this.sketch.max = wasEmpty ? from.max : Math.max(this.sketch.max, from.max);
  }

  /** How many values the sketch holds. */
  get count(): number {
    return this.sketch.count;
  }

  /** The value at quantile `q` in [0, 1], in milliseconds; null when the sketch is empty. */
  quantile(q: number): number | null {
    if (this.sketch.count === 0) return null;
    const value = this.sketch.getValueAtQuantile(q);
    return Number.isNaN(value) ? null : value;
  }

  /** The canonical record form carried in `MetricRollup.latency`. */
  toRecord(): LatencySketchRecord {
    const store = this.sketch.store;
    const keys: number[] = [];
    const counts: number[] = [];
    if (store.count > 0) {
      for (let key = store.minKey; key <= store.maxKey; key++) {
        const count = store.bins[key - store.offset] ?? 0;
        if (count > 0) {
          keys.push(key);
          counts.push(count);
        }
      }
    }
    const empty = this.sketch.count === 0;
    return {
      relative_accuracy: LATENCY_RELATIVE_ACCURACY,
      zero_count: this.sketch.zeroCount,
      keys,
      counts,
      min_ms: empty ? null : this.sketch.min,
      max_ms: empty ? null : this.sketch.max,
    };
  }

  /**
   * Rebuilds a sketch from its record form.
   *
   * @throws {RangeError} when the record was made with another relative accuracy.
   */
  static fromRecord(record: LatencySketchRecord): LatencySketch {
    if (record.relative_accuracy !== LATENCY_RELATIVE_ACCURACY)
      throw new RangeError(
        `latency sketch has relative accuracy ${record.relative_accuracy}, expected ${LATENCY_RELATIVE_ACCURACY}`,
      );
    const result = new LatencySketch();
    const sketch = result.sketch;
    let total = record.zero_count;
    for (let i = 0; i < record.keys.length; i++) {
      const count = record.counts[i] ?? 0;
      if (count > 0) sketch.store.add(record.keys[i] ?? 0, count);
      total += count;
    }
    sketch.zeroCount = record.zero_count;
    sketch.count = total;
    if (record.min_ms !== null) sketch.min = record.min_ms;
    if (record.max_ms !== null) sketch.max = record.max_ms;
    return result;
  }
}
