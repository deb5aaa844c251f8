/** Event-time tumbling windows, aligned to the Unix epoch. All times are microseconds. */

/** A window [start, end) in microseconds since the epoch. */
export interface TimeWindow {
  /** Inclusive start, a multiple of the window size. */
  readonly start: number;
  /** Exclusive end: an event exactly at `end` belongs to the next window. */
  readonly end: number;
}

export const MICROS_PER_MILLI = 1_000;
export const MICROS_PER_SECOND = 1_000_000;

/**
 * The tumbling window of `sizeMicros` that holds an event at `eventTimeMicros`.
 *
 * @throws {RangeError} when the size is not a positive safe integer or the time not a safe integer.
 */
export function windowOf(eventTimeMicros: number, sizeMicros: number): TimeWindow {
  if (!Number.isSafeInteger(sizeMicros) || sizeMicros <= 0)
    throw new RangeError(
      `window size must be a positive integer of microseconds (got ${sizeMicros})`,
    );
  if (!Number.isSafeInteger(eventTimeMicros))
    throw new RangeError(`event time must be an integer of microseconds (got ${eventTimeMicros})`);
  // Floor, not truncation, so times before the epoch land in the right window too.
  const remainder = ((eventTimeMicros % sizeMicros) + sizeMicros) % sizeMicros;
  const start = eventTimeMicros - remainder;
  return { start, end: start + sizeMicros };
}
