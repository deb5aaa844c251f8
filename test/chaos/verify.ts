/**
 * The chaos run's final checks, once traffic has stopped and the pipeline has drained: what the
 * log holds (read back from the private broker) against what PostgreSQL holds.
 *
 * - Spans: every distinct event id of the model-calls log is one span, and no span is anything
 *   else; the log's distinct ids equal what the exporters reported as sent.
 * - Late events: which events the processor had to count as late follows from the log alone (per
 *   partition in offset order, the largest event time so far, events and watermark ticks, less
 *   the grace: an event whose window ended at or before it, by more than the allowed lateness);
 *   that set is computed here and compared with the late-events topic. Events of closed windows
 *   within the allowed lateness revise them.
 * - Rollups: every `metric_rollups` row (its last revision) against the brute-force oracle
 *   (test/support/oracle.ts) over the on-time and revising events, with the late counts where
 *   the watermark stood; every oracle window must be stored. The run drains until no window is
 *   open, so none is left out.
 * - Alerts: every `alerts` row (one per incident: state and history) against the oracle's
 *   transitions under the default rules, judged on each window's first emission (the on-time
 *   events).
 *
 * Every difference is collected (not only the first), as a line of text.
 */
import pg from "pg";

import { AvroCodec, valueSubject } from "../../avro/codec.js";
import { readControl } from "../../avro/control.js";
import { MODEL_CALL_EVENT } from "../../avro/contracts.js";
import type { ModelCallEvent } from "../../avro/generated.js";
import { partitionForKey, type ConsumedRecord } from "../../kafka/index.js";
import {
  expectMatchesOracle,
  oracleAlerts,
  oracleKey,
  oracleRollups,
  ORACLE_DEFAULT_RULES,
  type OracleWindow,
} from "../support/oracle.js";
import { storedRollups } from "../support/stored-rollups.js";
import { readBetween, type EndOffsets } from "../support/topic-records.js";

/** What the checks need to know about the run. */
export interface VerifyInput {
  readonly brokers: string;
  readonly registryUrl: string;
  readonly databaseUrl: string;
  readonly topics: { readonly modelCalls: string; readonly lateEvents: string };
  readonly ends: { readonly modelCalls: EndOffsets; readonly lateEvents: EndOffsets };
  readonly partitions: number;
  readonly windowMs: number;
  readonly graceMs: number;
  /** The processor's allowed lateness (its default: 1 h). */
  readonly allowedLatenessMs: number;
  /** What the exporters reported as delivered. */
  readonly sent: number;
}

export interface VerifyResult {
  readonly mismatches: string[];
  readonly figures: {
    readonly logRecords: number;
    readonly logEvents: number;
    readonly distinctEventIds: number;
    readonly duplicateEvents: number;
    readonly ticks: number;
    readonly otherControl: number;
    readonly offHome: number;
    readonly spans: number;
    readonly lateByLog: number;
    /** Events of closed windows within the allowed lateness (they revise their windows). */
    readonly revising: number;
    readonly lateTopic: number;
    readonly rollupRows: number;
    readonly oracleWindows: number;
    readonly alertRows: number;
    readonly oracleTransitions: number;
  };
}

/** At most this many lines per kind of difference; the rest are counted. */
const LIST_AT_MOST = 25;

function capped(lines: string[], what: string): string[] {
  if (lines.length <= LIST_AT_MOST) return lines;
  return [...lines.slice(0, LIST_AT_MOST), `… and ${lines.length - LIST_AT_MOST} more ${what}`];
}

const position = (partition: number | string, offset: string): string => `${partition}@${offset}`;

export async function verify(input: VerifyInput): Promise<VerifyResult> {
  const mismatches: string[] = [];
  const windowMicros = input.windowMs * 1000;
  const graceMicros = input.graceMs * 1000;
  const allowedMicros = input.allowedLatenessMs * 1000;
  const codec = await AvroCodec.register(MODEL_CALL_EVENT, {
    registryUrl: input.registryUrl,
    subject: valueSubject(input.topics.modelCalls),
  });

  // 1. The log, every partition from its start to its end at the drain.
  const records = await readBetween(
    input.brokers,
    input.topics.modelCalls,
    new Map(),
    input.ends.modelCalls,
  );
  const byPartition = new Map<number, ConsumedRecord[]>();
  for (const record of records) {
    const list = byPartition.get(record.partition) ?? [];
    list.push(record);
    byPartition.set(record.partition, list);
  }
  const events: ModelCallEvent[] = [];
  const onTime: ModelCallEvent[] = [];
  const revising: ModelCallEvent[] = [];
  const lateByLog = new Map<string, { event: ModelCallEvent; watermark: number }>();
  const ids = new Set<string>();
  let ticks = 0;
  let otherControl = 0;
  let offHome = 0;
  const undecodable: string[] = [];
  for (const [partition, list] of byPartition) {
    list.sort((a, b) => (BigInt(a.offset) < BigInt(b.offset) ? -1 : 1));
    // The partition's event time: the largest end time or tick so far (no copies or progress
    // records are expected: every event is keyed by its service, so it lands at home).
    let maxEventTime: number | null = null;
    for (const record of list) {
      const control = readControl(record.headers, record.value);
      if (control.type === "tick") {
        ticks++;
        maxEventTime = Math.max(maxEventTime ?? 0, control.eventTimeMicros);
        continue;
      }
      if (control.type !== "data") {
        otherControl++;
        continue;
      }
      const decoded = await codec.decode(record.value ?? Buffer.alloc(0));
      if (!decoded.ok) {
        undecodable.push(`${position(partition, record.offset)}: ${decoded.error.message}`);
        continue;
      }
      const event = decoded.value;
      events.push(event);
      ids.add(event.event_id);
      if (partitionForKey(event.service, input.partitions) !== partition) offHome++;
      const counted = event.kind === "model_call" || event.kind === "sampling";
      const windowEnd =
        event.end_time -
        (((event.end_time % windowMicros) + windowMicros) % windowMicros) +
        windowMicros;
      const watermark = maxEventTime === null ? null : maxEventTime - graceMicros;
      if (counted && watermark !== null && windowEnd <= watermark) {
        if (windowEnd + allowedMicros > watermark) revising.push(event);
        else lateByLog.set(position(partition, record.offset), { event, watermark });
      } else onTime.push(event);
      maxEventTime = Math.max(maxEventTime ?? event.end_time, event.end_time);
    }
  }
  if (undecodable.length > 0)
    mismatches.push(
      ...capped(
        undecodable.map((line) => `model-calls record not decodable: ${line}`),
        "undecodable records",
      ),
    );
  if (otherControl > 0)
    mismatches.push(
      `model-calls holds ${otherControl} copy/progress/unknown control records: events arrived away from home, which this check does not model (off-home events: ${offHome})`,
    );
  if (ids.size !== input.sent)
    mismatches.push(
      `the exporters reported ${input.sent} events sent, the model-calls log holds ${ids.size} distinct event ids (${events.length} event records)`,
    );

  // 2. Late events: the log's verdict against the late-events topic (deduplicated by source).
  const lateRecords = await readBetween(
    input.brokers,
    input.topics.lateEvents,
    new Map(),
    input.ends.lateEvents,
  );
  const lateTopic = new Map<string, string>();
  for (const record of lateRecords)
    lateTopic.set(
      position(
        record.headers["mcpo-source-partition"] ?? "?",
        record.headers["mcpo-source-offset"] ?? "?",
      ),
      record.headers["mcpo-late-watermark-micros"] ?? "?",
    );
  const lateDiff: string[] = [];
  for (const [at, { event, watermark }] of lateByLog) {
    const seen = lateTopic.get(at);
    if (seen === undefined)
      lateDiff.push(
        `event ${event.event_id} (${event.service}, model-calls ${at}) is late by the log (watermark ${watermark}) but not on the late-events topic`,
      );
    else if (seen !== String(watermark))
      lateDiff.push(
        `late event at model-calls ${at}: watermark ${seen} on the late-events topic, ${watermark} by the log`,
      );
  }
  for (const at of lateTopic.keys())
    if (!lateByLog.has(at))
      lateDiff.push(
        `model-calls ${at} is on the late-events topic but on time by the log (a window emitted without it?)`,
      );
  mismatches.push(...capped(lateDiff, "late-event differences"));

  const client = new pg.Client({ connectionString: input.databaseUrl });
  await client.connect();
  try {
    // 3. Spans: ids and count.
    const { rows: spanRows } = await client.query<{ event_id: string }>(
      "select event_id::text as event_id from spans",
    );
    const spanIds = new Set(spanRows.map((row) => row.event_id));
    if (spanIds.size !== spanRows.length)
      mismatches.push(`spans: ${spanRows.length} rows but ${spanIds.size} distinct event ids`);
    const missing = [...ids].filter((id) => !spanIds.has(id));
    const extra = [...spanIds].filter((id) => !ids.has(id));
    if (missing.length > 0 || extra.length > 0 || spanRows.length !== ids.size)
      mismatches.push(
        `spans: ${spanRows.length} rows for ${ids.size} distinct events in the log (${missing.length} missing, ${extra.length} not in the log)`,
        ...capped(
          [
            ...missing.map((id) => `  span missing for event ${id}`),
            ...extra.map((id) => `  span ${id} is not an event of the log`),
          ],
          "span differences",
        ),
      );

    // 4. Rollups against the oracle.
    const lateByKey = new Map<string, number>();
    for (const { event, watermark } of lateByLog.values()) {
      const start = watermark - (((watermark % windowMicros) + windowMicros) % windowMicros);
      for (const model of event.model === null ? [null] : [null, event.model]) {
        const key = oracleKey(event.service, model, start);
        lateByKey.set(key, (lateByKey.get(key) ?? 0) + 1);
      }
    }
    const oracle = oracleRollups([...onTime, ...revising], windowMicros, { lateByKey });
    const firstEmissions = oracleRollups(onTime, windowMicros, { lateByKey });
    const stored = await storedRollups(client);
    const rollupDiff: string[] = [];
    const seen = new Set<string>();
    for (const row of stored) {
      const key = oracleKey(row.service, row.model, row.windowStart);
      seen.add(key);
      const want = oracle.get(key);
      const expected = new Map<string, OracleWindow>(want ? [[key, want]] : []);
      try {
        // One row at a time, so every differing row is listed, not only the first.
        expectMatchesOracle([row], expected, "metric_rollups row");
      } catch (error) {
        rollupDiff.push((error as Error).message.split("\n")[0] ?? String(error));
      }
    }
    for (const [key, want] of oracle)
      if (!seen.has(key))
        rollupDiff.push(
          `metric_rollups: window ${want.service}/${want.model ?? "*"}@${new Date(want.windowStart / 1000).toISOString()} (${want.counts.calls} calls, ${want.counts.late} late) is in the oracle but not stored`,
        );
    mismatches.push(...capped(rollupDiff, "rollup differences"));

    // 5. Alerts: one row per incident, its state and history the oracle's transitions.
    const transitions = oracleAlerts(firstEmissions.values(), ORACLE_DEFAULT_RULES);
    const incidents = new Map<string, { state: string; history: string[]; observed: number[] }>();
    for (const t of transitions) {
      const key = `${t.service}|${t.rule}|${t.firedWindowStart}`;
      const incident = incidents.get(key) ?? { state: t.state, history: [], observed: [] };
      incident.state = t.state;
      incident.history.push(`${t.state}@${t.windowStart}/${t.samples}`);
      incident.observed.push(t.observed ?? Number.NaN);
      incidents.set(key, incident);
    }
    const { rows: alertRows } = await client.query<{
      service: string;
      rule: string;
      fired_us: string;
      state: string;
      history: {
        state: string;
        window_start_us: number;
        observed_value: number | null;
        sample_count: number;
      }[];
    }>(
      `select service, rule, ((extract(epoch from fired_window_start) * 1000000)::bigint)::text as fired_us,
              state, history from alerts`,
    );
    const alertDiff: string[] = [];
    const alertSeen = new Set<string>();
    for (const row of alertRows) {
      const key = `${row.service}|${row.rule}|${row.fired_us}`;
      alertSeen.add(key);
      const want = incidents.get(key);
      if (!want) {
        alertDiff.push(`alerts: incident ${key} (${row.state}) is stored but not in the oracle`);
        continue;
      }
      const history = [...row.history].sort((a, b) => a.window_start_us - b.window_start_us);
      const got = history.map((h) => `${h.state}@${h.window_start_us}/${h.sample_count}`);
      if (row.state !== want.state || got.join(" ") !== want.history.join(" "))
        alertDiff.push(
          `alerts: incident ${key}: stored ${row.state} [${got.join(" ")}], oracle ${want.state} [${want.history.join(" ")}]`,
        );
      else
        history.forEach((h, index) => {
          const exact = want.observed[index] ?? Number.NaN;
          const value = h.observed_value ?? Number.NaN;
          if (!(Math.abs(value - exact) <= Math.abs(exact) * 1e-12 + 1e-12))
            alertDiff.push(
              `alerts: incident ${key}: transition ${index + 1} observed ${value}, oracle ${exact}`,
            );
        });
    }
    for (const [key, want] of incidents)
      if (!alertSeen.has(key))
        alertDiff.push(
          `alerts: incident ${key} (${want.history.join(" ")}) is in the oracle but not stored`,
        );
    mismatches.push(...capped(alertDiff, "alert differences"));

    return {
      mismatches,
      figures: {
        logRecords: records.length,
        logEvents: events.length,
        distinctEventIds: ids.size,
        duplicateEvents: events.length - ids.size,
        ticks,
        otherControl,
        offHome,
        spans: spanRows.length,
        lateByLog: lateByLog.size,
        revising: revising.length,
        lateTopic: lateTopic.size,
        rollupRows: stored.length,
        oracleWindows: oracle.size,
        alertRows: alertRows.length,
        oracleTransitions: transitions.length,
      },
    };
  } finally {
    await client.end();
  }
}
