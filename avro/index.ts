/**
 * The event contract: Avro schemas (the `.avsc` files beside this module) and their registry codec.
 *
 * @module
 */
export {
  getCompatibility,
  SchemaRegistryError,
  setSubjectCompatibility,
  type CompatibilityLevel,
} from "./registry.js";
