/**
 * The PostgreSQL sink: idempotent upserts of spans, rollups and alerts.
 * The foundation reserves this entry point; the sink issue fills it.
 *
 * @module
 */
export { loadConnectionConfig, type ConnectionConfig } from "../config/index.js";
