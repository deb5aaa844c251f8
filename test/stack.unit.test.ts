import { describe, expect, it } from "vitest";
import { newKafkaClusterId } from "../stack/index.js";

describe("local stack", () => {
  it("makes Kafka cluster ids the storage tool accepts: 16 random bytes, base64url, never starting with '-'", () => {
    // The storage tool parses `-t <id>` as options; an id starting with '-' (1 in 64 of random
    // base64url ids) is read as a flag and formatting fails ("--cluster-id: expected one argument").
    const seen = new Set<string>();
    for (let i = 0; i < 5000; i++) {
      const id = newKafkaClusterId();
      expect(id).toMatch(/^[A-Za-z0-9_][A-Za-z0-9_-]{21}$/);
      expect(Buffer.from(id, "base64url")).toHaveLength(16);
      seen.add(id);
    }
    expect(seen.size).toBe(5000);
  });
});
