/** `report`: the rates of stored rollups for services and a time range. */
import { openPool } from "../../sink/writer.js";

import type { SettingsResolver } from "../config.js";
import { jsonLine } from "../output.js";
import { checkPostgres } from "../preflight.js";
import { queryRates, renderRates } from "../rates.js";

export interface ReportFlags {
  readonly service?: readonly string[];
  readonly fromMs: number;
  readonly toMs: number;
  readonly bucketMs?: number;
  readonly model?: string;
  /** The overflow series (scope 'other') instead of the service totals. */
  readonly otherModels?: boolean;
  readonly json?: boolean;
}

export async function runReport(settings: SettingsResolver, flags: ReportFlags): Promise<number> {
  const connection = settings.connection();
  await checkPostgres(connection);
  const pool = openPool(connection.databaseUrl, { max: 2 });
  try {
    const rows = await queryRates(pool, {
      ...(flags.service ? { services: flags.service } : {}),
      fromMs: flags.fromMs,
      toMs: flags.toMs,
      ...(flags.bucketMs === undefined ? {} : { bucketMs: flags.bucketMs }),
      ...(flags.model === undefined ? {} : { model: flags.model }),
      ...(flags.otherModels === true ? { otherModels: true } : {}),
    });
    if (flags.json) {
      for (const row of rows) process.stdout.write(`${jsonLine(row)}\n`);
      return 0;
    }
    if (rows.length === 0) {
      process.stdout.write(
        `no rollups between ${new Date(flags.fromMs).toISOString()} and ${new Date(flags.toMs).toISOString()}` +
          `${flags.service ? ` for ${flags.service.join(", ")}` : ""}\n`,
      );
      return 0;
    }
    process.stdout.write(`${renderRates(rows)}\n`);
    return 0;
  } finally {
    await pool.end();
  }
}
