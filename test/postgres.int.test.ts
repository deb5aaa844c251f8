import pg from "pg";
import { describe, expect, it } from "vitest";

import { services, useFreshDatabase } from "./support/isolation.js";

describe("PostgreSQL", () => {
  const database = useFreshDatabase();

  it("answers select 1 on the configured server", async () => {
    const client = new pg.Client({ connectionString: services().databaseUrl });
    await client.connect();
    try {
      const { rows } = await client.query<{ one: number }>("select 1 as one");
      expect(rows).toEqual([{ one: 1 }]);
    } finally {
      await client.end();
    }
  });

  it("gives this file a database of its own, empty, where it can create and query tables", async () => {
    const client = new pg.Client({ connectionString: database.current.url });
    await client.connect();
    try {
      const { rows: current } = await client.query<{ db: string }>(
        "select current_database() as db",
      );
      expect(current[0]?.db).toBe(database.current.name);
      const { rows: tables } = await client.query(
        "select 1 from information_schema.tables where table_schema = 'public'",
      );
      expect(tables).toHaveLength(0);

      await client.query("create table cost (nano_usd numeric not null)");
      await client.query(
        "insert into cost select g::numeric * 1000000001 from generate_series(1, 1000) g",
      );
      const { rows } = await client.query<{ total: string }>(
        "select sum(nano_usd)::text as total from cost",
      );
      // Exact NUMERIC arithmetic: 1000000001 * 500500 = 500500000500500, computed here as a bigint.
      expect(rows[0]?.total).toBe(String(1000000001n * 500500n));
    } finally {
      await client.end();
    }
  });
});
