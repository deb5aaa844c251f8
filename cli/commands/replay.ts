/**
 * `replay`: rebuilds rollups and alerts from the model-calls log (the processor's state machine,
 * `processor/replay.ts`) and writes them with the sink's writer into the current tables or into a
 * new version; `--verify` compares them with the stored rollups first and lists any difference.
 */

import type { AlertEvent } from "../../avro/generated.js";
import { ConfigError, replayConfigSchema, endpointOptionsOf } from "../../config/index.js";
import { replayLog, type ReplayStart, type ReplaySummary } from "../../processor/replay.js";
import { migrate } from "../../sink/migrate.js";
import {
  abandonRebuild,
  finishRebuild,
  prepareRebuild,
  verifyRollups,
  type VerifyResult,
} from "../../sink/rebuild.js";
import { openPool, PostgresWriter, type SpanRow } from "../../sink/writer.js";
import type { SettingsResolver } from "../config.js";
import { count, isoMicros, jsonLine, Progress, table } from "../output.js";
import { checkKafka, checkPostgres, checkRegistry } from "../preflight.js";

export interface ReplayFlags {
  readonly from?: ReplayStart;
  readonly service?: readonly string[];
  readonly into: "current" | "new-version";
  readonly verify?: boolean;
  readonly dryRun?: boolean;
  readonly withSpans?: boolean;
  readonly json?: boolean;
}

/** `--from-offset`: `N` (every partition) or `P:N,P:N`. */
export function parseOffsets(raw: string): ReplayStart {
  const text = raw.trim();
  if (/^\d+$/.test(text)) return { kind: "offset", offsets: BigInt(text) };
  const offsets = new Map<number, bigint>();
  for (const part of text.split(",")) {
    const match = /^\s*(\d+):(\d+)\s*$/.exec(part);
    if (!match)
      throw new ConfigError(
        "--from-offset",
        `expected an offset N or partition:offset pairs such as 0:1200,3:80 (got ${JSON.stringify(raw)})`,
      );
    offsets.set(Number(match[1]), BigInt(match[2] ?? "0"));
  }
  return { kind: "offset", offsets };
}

/** `--from`: an ISO time, or a duration meaning that long ago (`2h`). */
export function parseFromTime(raw: string, now = Date.now()): ReplayStart {
  const ago = /^\s*(\d+)\s*(s|m|h|d)\s*$/.exec(raw);
  if (ago) {
    const unit = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[
      ago[2] as "s" | "m" | "h" | "d"
    ];
    return { kind: "time", timestampMs: now - Number(ago[1]) * unit };
  }
  const time = Date.parse(raw);
  if (!Number.isFinite(time))
    throw new ConfigError(
      "--from",
      `expected an ISO time such as 2026-11-25T10:00:00Z or a duration ago such as 2h (got ${JSON.stringify(raw)})`,
    );
  return { kind: "time", timestampMs: time };
}

export interface ReplayReport {
  readonly summary: ReplaySummary;
  readonly target: { readonly rollups: string; readonly alerts: string; readonly written: boolean };
  readonly verify?: VerifyResult & {
    /** False for partial replays (see `replay --help`). */
    readonly alertsCompared: boolean;
    readonly alertsMissingFromStored: readonly string[];
    readonly alertsMissingFromRebuilt: readonly string[];
  };
}

export async function runReplay(settings: SettingsResolver, flags: ReplayFlags): Promise<number> {
  const connection = settings.connection();
  const window = settings.options(replayConfigSchema);
  const metrics = settings.metricsSection();
  if (flags.dryRun && !flags.verify)
    throw new ConfigError("--dry-run", "only makes sense with --verify (it writes nothing)");
  await checkKafka(connection);
  await checkRegistry(connection);
  await checkPostgres(connection);
  await migrate(connection.databaseUrl);

  const pool = openPool(connection.databaseUrl, { max: 4 });
  const target = await prepareRebuild(pool, flags.into);
  const writer = new PostgresWriter(pool, "unnest", target.write);
  const rebuiltAlerts = new Map<string, AlertEvent>();
  const progress = new Progress("replay");
  let summary: ReplaySummary;
  try {
    summary = await replayLog({
      ...endpointOptionsOf(connection),
      ...window,
      metrics,
      ...(flags.service && flags.service.length > 0 ? { services: flags.service } : {}),
      ...(flags.from ? { from: flags.from } : {}),
      withEvents: flags.withSpans ?? false,
      onOutputs: async (outputs) => {
        for (const alert of outputs.alerts) rebuiltAlerts.set(alert.alert_id, alert);
        const spans: SpanRow[] = outputs.events.map(({ event, offset }) => ({
          event,
          source: {
            topic: `${connection.topicPrefix}model-calls`,
            partition: outputs.partition,
            offset,
          },
        }));
        await writer.write({
          rollups: outputs.rollups,
          alerts: flags.dryRun || target.mode === "current" ? [] : outputs.alerts,
          spans: flags.dryRun ? [] : spans,
        });
      },
      onProgress: (p) => {
        progress.update(p.records, p.totalRecords, p.elapsedMs);
      },
    });
    progress.done();
  } catch (error) {
    progress.done();
    await abandonRebuild(pool, target).catch(() => undefined);
    await pool.end();
    throw error;
  }

  let verify: ReplayReport["verify"];
  try {
    if (flags.verify) {
      const partial =
        (flags.from !== undefined && flags.from.kind !== "beginning") ||
        Object.keys(summary.trimmed).length > 0;
      const scope = {
        ...(flags.service && flags.service.length > 0 ? { services: flags.service } : {}),
        fromMicros: null,
        toMicros: summary.lastWindowEndMicros ?? 0,
        ...(partial ? { serviceFloors: summary.serviceFloors } : {}),
      };
      const rollups = await verifyRollups(pool, target.write.rollups, target.stored, scope);
      // A partial replay starts with no alert state (an incident already firing at its start is
      // unknown to it), so its alerts are not compared; a full replay's must match exactly.
      let alertsMissingFromStored: string[] = [];
      let alertsMissingFromRebuilt: string[] = [];
      if (!partial) {
        const stored = await pool.query<{ alert_id: string }>(
          `select alert_id from alerts
           where ($1::text[] is null or service = any($1::text[]))
             and window_end <= timestamptz 'epoch' + $2::bigint * interval '1 microsecond'`,
          [scope.services ?? null, scope.toMicros],
        );
        const storedIds = new Set(stored.rows.map((row) => row.alert_id));
        alertsMissingFromStored = [...rebuiltAlerts.keys()]
          .filter((id) => !storedIds.has(id))
          .sort();
        alertsMissingFromRebuilt = [...storedIds].filter((id) => !rebuiltAlerts.has(id)).sort();
      }
      verify = {
        ...rollups,
        alertsCompared: !partial,
        alertsMissingFromStored,
        alertsMissingFromRebuilt,
      };
    }
    if (flags.dryRun) await abandonRebuild(pool, target);
    else if (target.mode === "current") {
      await finishRebuild(pool, target);
      // Alerts merge their history on upsert: written once the rollups are in place.
      await writer.write({ alerts: [...rebuiltAlerts.values()] });
    }
  } finally {
    await pool.end();
  }

  const report: ReplayReport = {
    summary,
    target: {
      rollups: target.mode === "current" ? target.stored : target.write.rollups,
      alerts: target.write.alerts,
      written: !flags.dryRun,
    },
    ...(verify ? { verify } : {}),
  };
  if (flags.json) process.stdout.write(`${jsonLine(report)}\n`);
  else printReport(report);
  const differences =
    (verify?.differenceCount ?? 0) +
    (verify?.alertsMissingFromStored.length ?? 0) +
    (verify?.alertsMissingFromRebuilt.length ?? 0);
  return differences === 0 ? 0 : 1;
}

function printReport(report: ReplayReport): void {
  const s = report.summary;
  const out = (line = ""): void => {
    process.stdout.write(`${line}\n`);
  };
  const seconds = s.durationMs / 1000;
  const invalid = Object.entries(s.invalid);
  out(`replayed ${s.topic} (${s.partitions} partitions) in ${seconds.toFixed(1)} s`);
  for (const [partition, offset] of Object.entries(s.trimmed))
    out(
      `partition ${partition}'s log starts at offset ${offset} (retention or deleteRecords removed what was before): its windows before the first whole one were not rebuilt, and their stored rows are left as they are`,
    );
  out(
    table(
      ["", "value"],
      [
        ["records read", count(s.records)],
        ["events", count(s.events)],
        ["events/s", count(Math.round(s.events / Math.max(seconds, 0.001)))],
        ["watermark ticks", count(s.ticks)],
        ...(s.ignoredTicks === 0
          ? []
          : [["ticks ignored (ahead of their log time)", count(s.ignoredTicks)]]),
        ...(s.copies + s.progress === 0
          ? []
          : [
              ["copies to home partitions", count(s.copies)],
              ["progress records", count(s.progress)],
            ]),
        [
          "invalid records",
          invalid.length === 0 ? "0" : invalid.map(([code, n]) => `${code} ${n}`).join(", "),
        ],
        ["late events", count(s.late)],
        ["duplicates (counted once)", count(s.duplicates)],
        ["windows closed", count(s.windows)],
        ["rollup rows", count(s.rollups)],
        ["alerts fired", count(s.alertsFired)],
        ["alerts resolved", count(s.alertsResolved)],
        ["series still open", count(s.openSeries)],
        [
          "windows",
          s.firstWindowStartMicros === null || s.lastWindowEndMicros === null
            ? "none closed"
            : `${isoMicros(s.firstWindowStartMicros)} .. ${isoMicros(s.lastWindowEndMicros)}`,
        ],
      ],
    ),
  );
  out(
    report.target.written
      ? `written to ${report.target.rollups} and ${report.target.alerts}`
      : "dry run: nothing written",
  );
  const v = report.verify;
  if (!v) return;
  out();
  const alertDiffs = v.alertsMissingFromStored.length + v.alertsMissingFromRebuilt.length;
  if (v.differenceCount === 0 && alertDiffs === 0) {
    out(
      `verify: OK, the ${count(v.rebuiltRows)} rebuilt rollup rows equal the ${count(v.storedRows)} stored ones` +
        (v.alertsCompared
          ? ", and the alerts match"
          : " (alerts are not compared from a mid-log start: alert state before it is unknown)"),
    );
    return;
  }
  out(
    `verify: ${count(v.differenceCount)} rollup rows differ (rebuilt ${count(v.rebuiltRows)}, stored ${count(v.storedRows)}); ` +
      `${alertDiffs} alerts differ`,
  );
  if (v.differences.length > 0)
    out(
      table(
        ["service", "model", "window start", "difference", "columns"],
        v.differences.map((d) => [
          d.service,
          d.scope === "service"
            ? "(all models)"
            : d.scope === "other"
              ? "(other models)"
              : (d.model ?? ""),
          d.windowStart,
          d.kind,
          d.columns.join(", "),
        ]),
      ),
    );
  if (v.differenceCount > v.differences.length)
    out(`… and ${count(v.differenceCount - v.differences.length)} more`);
  for (const id of v.alertsMissingFromStored) out(`alert ${id}: rebuilt, not stored`);
  for (const id of v.alertsMissingFromRebuilt) out(`alert ${id}: stored, not rebuilt`);
}
