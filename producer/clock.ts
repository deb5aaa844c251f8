/**
 * The wall clock spans are timed with: milliseconds since the epoch, with the sub-millisecond
 * resolution of the monotonic clock. `Date.now()` alone truncates to whole milliseconds, so a span
 * started a few microseconds after its parent could get a start a whole millisecond later, and end
 * after its parent. The monotonic clock is anchored to the system clock and re-anchored when the
 * two part by more than a millisecond and a half (NTP slewing, a loaded VM's clocks drifting).
 */
let offset = Date.now() - (performance.timeOrigin + performance.now());
let last = 0;

/**
 * A re-anchoring moves the clock back by at most this much (ms); holding the last reading over
 * such a step keeps the clock from going back. A larger step back is the system clock's own
 * (set back by an administrator or NTP), and is followed.
 */
const MAX_HELD_STEP_MS = 5;

/** Now, in ms since the epoch, to the monotonic clock's resolution; never before an earlier reading unless the system clock stepped back. */
export function wallClockMs(): number {
  let now = performance.timeOrigin + performance.now() + offset;
  const wall = Date.now();
  // `wall` is truncated: the precise time normally lies in [wall, wall + 1).
  if (now < wall - 1 || now > wall + 1.5) {
    offset += wall - now;
    now = wall;
  }
  if (now < last && last - now <= MAX_HELD_STEP_MS) now = last;
  last = now;
  return now;
}

/**
 * A span's end: its start plus the monotonic time it took, but never before the clock's reading
 * now. When the clock steps forward while the span is open (it re-anchors to a system clock that
 * ran ahead), a span started later inside this one (a model call inside a tool call) reads the
 * stepped clock; taking the clock's reading at the end keeps the outer span enclosing it.
 */
export function spanEndMs(startWallMs: number, startedPerfMs: number, now: () => number): number {
  return Math.max(startWallMs + (performance.now() - startedPerfMs), now());
}
