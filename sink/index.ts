/**
 * The PostgreSQL side: the sink (topics → PostgreSQL), schema migrations, and the one writer of
 * spans, rollups and alerts (used by the sink and by the PostgresExporter).
 *
 * @module
 */
export { listMigrations, migrate, MIGRATIONS_DIR, type Migration } from "./migrate.js";
export { Sink, type SinkOptions, type SinkStats } from "./sink.js";
export {
  classifyPgError,
  isTransientPgError,
  recordRejection,
  sqlstateOf,
  type PgErrorKind,
  type RecordRejection,
} from "./pg-errors.js";
export { writeIsolating, type IsolationSteps, type Rejected } from "./isolate.js";
export {
  PostgresWriter,
  modelOfRow,
  rollupScope,
  storedModel,
  type OffsetRow,
  type RollupScope,
  type SpanRow,
  type WriteBatch,
  type WriteResult,
} from "./writer.js";
export {
  finishRebuild,
  prepareRebuild,
  verifyRollups,
  type RebuildTarget,
  type RollupDifference,
  type VerifyResult,
  type VerifyScope,
} from "./rebuild.js";
