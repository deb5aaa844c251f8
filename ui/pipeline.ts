/**
 * The pipeline page's figures: each configured `/metrics` endpoint of a processor or a sink read
 * (Prometheus text format) and summed over its labels — consumer lag, late events, dead letters
 * and what it handled.
 */

/** One endpoint's health, as the page shows it. */
export interface EndpointHealth {
  readonly url: string;
  /** The component, from its metrics' names (`mcpo_processor_…`: processor), when it answered. */
  readonly component: string | null;
  readonly up: boolean;
  /** Why it is not up (the HTTP status, or the network error's message). */
  readonly error?: string;
  readonly lag: number | null;
  readonly late: number | null;
  readonly deadLettered: number | null;
  /** Events (processor) or rows (sink) handled. */
  readonly handled: number | null;
}

/**
 * Every sample of a Prometheus text exposition, summed by metric name (all label sets together);
 * a metric declared (`# TYPE`) without samples is 0. Other comments and malformed lines are
 * skipped; `NaN` and infinities count as nothing.
 */
export function sumByName(text: string): Map<string, number> {
  const sums = new Map<string, number>();
  for (const line of text.split("\n")) {
    // A declared metric without samples yet (a labelled counter nothing increased) is 0.
    const declared = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) /.exec(line)?.[1];
    if (declared !== undefined) sums.set(declared, sums.get(declared) ?? 0);
    if (line === "" || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)/.exec(line);
    if (!match?.[1] || match[3] === undefined) continue;
    const value = Number(match[3]);
    if (!Number.isFinite(value)) continue;
    sums.set(match[1], (sums.get(match[1]) ?? 0) + value);
  }
  return sums;
}

/** The page's figures from an endpoint's summed metrics. */
export function healthOf(url: string, sums: ReadonlyMap<string, number>): EndpointHealth {
  const component =
    [...sums.keys()]
      .map((name) => /^mcpo_([a-z]+)_consumer_lag$/.exec(name)?.[1])
      .find((name) => name !== undefined) ?? null;
  const pick = (suffix: string): number | null =>
    component === null ? null : (sums.get(`mcpo_${component}_${suffix}`) ?? null);
  return {
    url,
    component,
    up: true,
    lag: pick("consumer_lag"),
    late: pick("late_events_total"),
    deadLettered: pick("dead_lettered_total"),
    handled: pick("events_total") ?? pick("rows_total"),
  };
}

/** Reads every endpoint at once, each within `timeoutMs`; one that fails is reported down. */
export async function pipelineHealth(
  urls: readonly string[],
  timeoutMs = 3000,
): Promise<EndpointHealth[]> {
  return Promise.all(
    urls.map(async (url): Promise<EndpointHealth> => {
      const down = (error: string): EndpointHealth => ({
        url,
        component: null,
        up: false,
        error,
        lag: null,
        late: null,
        deadLettered: null,
        handled: null,
      });
      try {
        const response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
        if (!response.ok) return down(`HTTP ${response.status}`);
        return healthOf(url, sumByName(await response.text()));
      } catch (error) {
        return down(error instanceof Error ? error.message : String(error));
      }
    }),
  );
}
