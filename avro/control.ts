/**
 * Control records on the model-calls topic. Besides ModelCallEvents, the topic carries watermark
 * ticks: written by the processor into an idle partition, they record "event time reached T"
 * in the log itself, so a replay closes idle windows exactly where the live run did. They carry
 * the header `mcpo-control: watermark` and the time (µs since the epoch) as a decimal string;
 * every consumer of the topic skips records with a `mcpo-control` header.
 */
export const CONTROL_HEADER = "mcpo-control";
export const WATERMARK_TICK = "watermark";

/** The headers and value of a watermark tick at `eventTimeMicros`. */
export function watermarkTick(eventTimeMicros: number): {
  headers: Record<string, string>;
  value: Buffer;
} {
  return {
    headers: { [CONTROL_HEADER]: WATERMARK_TICK },
    value: Buffer.from(String(eventTimeMicros)),
  };
}

/** What a record's control header says: not a control record, a tick, or an unknown control. */
export function readControl(
  headers: Readonly<Record<string, string>>,
  value: Buffer | null,
):
  | { type: "data" }
  | { type: "tick"; eventTimeMicros: number }
  | { type: "unknown"; reason: string } {
  const control = headers[CONTROL_HEADER];
  if (control === undefined) return { type: "data" };
  if (control !== WATERMARK_TICK)
    return { type: "unknown", reason: `unknown control record ${JSON.stringify(control)}` };
  const time = Number(value?.toString("utf8"));
  if (!Number.isSafeInteger(time) || time < 0)
    return { type: "unknown", reason: "watermark tick without a valid time" };
  return { type: "tick", eventTimeMicros: time };
}
