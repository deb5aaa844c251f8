/**
 * The stream processor: event-time tumbling windows, rollups and alerts.
 * The foundation reserves this entry point; the processor issue fills it.
 *
 * @module
 */
export { loadConnectionConfig, type ConnectionConfig } from "../config/index.js";
