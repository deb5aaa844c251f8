/**
 * A fresh database of the test file's own, migrated, with a pool and the sink's writer over it:
 * what the tests of stored rows start from. Read the fields inside tests (set in `beforeAll`).
 */
import type pg from "pg";
import { afterAll, beforeAll } from "vitest";

import { migrate } from "../../sink/migrate.js";
import { openPool, PostgresWriter } from "../../sink/writer.js";
import { useFreshDatabase, type FreshDatabase } from "./isolation.js";

export interface FreshWriter {
  readonly database: FreshDatabase;
  readonly pool: pg.Pool;
  readonly writer: PostgresWriter;
}

export function useFreshWriter(prefix: string): FreshWriter {
  const database = useFreshDatabase(prefix);
  let pool: pg.Pool | undefined;
  let writer: PostgresWriter | undefined;
  beforeAll(async () => {
    await migrate(database.current.url);
    pool = openPool(database.current.url, { max: 2 });
    writer = new PostgresWriter(pool);
  });
  afterAll(async () => {
    await pool?.end();
  });
  const ready = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error("useFreshWriter: read it inside a test or hook");
    return value;
  };
  return {
    get database() {
      return database.current;
    },
    get pool() {
      return ready(pool);
    },
    get writer() {
      return ready(writer);
    },
  };
}
