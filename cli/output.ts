/** Terminal output of the CLI: aligned tables, numbers, and a progress line. */

/** Renders rows as an aligned text table; numbers right-aligned, null as `-`. */
export function table(
  headers: readonly string[],
  rows: readonly (readonly (string | number | null | undefined)[])[],
): string {
  const cells = rows.map((row) =>
    row.map((cell) => (cell === null || cell === undefined ? "-" : String(cell))),
  );
  const numeric = headers.map((_, column) =>
    rows.every((row) => {
      const cell = row[column];
      return (
        cell === null || cell === undefined || typeof cell === "number" || /^-?[\d.,%]+$/.test(cell)
      );
    }),
  );
  const widths = headers.map((header, column) =>
    Math.max(header.length, ...cells.map((row) => row[column]?.length ?? 0)),
  );
  const line = (values: readonly string[]): string =>
    values
      .map((value, column) =>
        numeric[column] ? value.padStart(widths[column] ?? 0) : value.padEnd(widths[column] ?? 0),
      )
      .join("  ")
      .trimEnd();
  return [line(headers), line(widths.map((width) => "-".repeat(width))), ...cells.map(line)].join(
    "\n",
  );
}

/** A rate as a percentage with one decimal, or null. */
export function percent(value: number | null | undefined): string | null {
  return value === null || value === undefined ? null : `${(value * 100).toFixed(1)}%`;
}

/** 12345 → `12,345`. */
export function count(value: number | bigint): string {
  return value.toLocaleString("en-US");
}

/** Seconds as `1h02m`, `3m05s`, `12s`. */
export function clock(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.max(0, Math.round(seconds));
  if (s >= 3600)
    return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

/** Microseconds since the epoch as an ISO time without the date's noise (UTC). */
export function isoMicros(micros: number): string {
  return new Date(Math.floor(micros / 1000)).toISOString();
}

/**
 * Progress of a long job: a bar redrawn in place on a terminal, plain lines every few seconds
 * otherwise (logs, CI). Writes to stderr so stdout stays for results.
 */
export class Progress {
  private lastDraw = 0;
  private drawn = false;

  constructor(
    private readonly label: string,
    private readonly stream: NodeJS.WriteStream = process.stderr,
    private readonly intervalMs = stream.isTTY ? 100 : 2000,
  ) {}

  update(done: number, total: number, elapsedMs: number, force = false): void {
    const now = Date.now();
    if (!force && now - this.lastDraw < this.intervalMs) return;
    this.lastDraw = now;
    const rate = elapsedMs > 0 ? (done / elapsedMs) * 1000 : 0;
    const fraction = total > 0 ? Math.min(1, done / total) : 1;
    const eta = rate > 0 ? (total - done) / rate : Number.POSITIVE_INFINITY;
    const figures = `${count(done)}/${count(total)} ${(fraction * 100).toFixed(1)}%  ${count(Math.round(rate))} events/s  ETA ${clock(eta)}`;
    if (this.stream.isTTY) {
      const width = 30;
      const filled = Math.round(fraction * width);
      this.stream.write(
        `\r${this.label} [${"#".repeat(filled)}${".".repeat(width - filled)}] ${figures}\u001b[K`,
      );
      this.drawn = true;
    } else this.stream.write(`${this.label}: ${figures}\n`);
  }

  /** Ends the bar's line. */
  done(): void {
    if (this.drawn) this.stream.write("\n");
    this.drawn = false;
  }
}
