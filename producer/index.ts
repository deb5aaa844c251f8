/**
 * The library inside MCP servers: `instrument()`, trace context and exporters.
 * The foundation reserves this entry point; the producer issue fills it.
 *
 * @module
 */
export {
  ConfigError,
  DEFAULTS,
  ENV_NAMES,
  loadConnectionConfig,
  type ConnectionConfig,
  type ConnectionOptions,
} from "../config/index.js";
