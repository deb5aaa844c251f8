/**
 * The wall clock spans are timed with: milliseconds since the epoch, with the sub-millisecond
 * resolution of the monotonic clock. `Date.now()` alone truncates to whole milliseconds, so a span
 * started a few microseconds after its parent could get a start a whole millisecond later, and end
 * after its parent. The monotonic clock is anchored to the system clock and re-anchored when the
 * two part by more than a millisecond or two (NTP steps, long uptimes).
 */
let offset = Date.now() - (performance.timeOrigin + performance.now());

export function wallClockMs(): number {
  const precise = performance.timeOrigin + performance.now() + offset;
  const wall = Date.now();
  // `wall` is truncated: the precise time normally lies in [wall, wall + 1).
  if (precise < wall - 1 || precise > wall + 2) {
    offset += wall - precise;
    return wall;
  }
  return precise;
}
