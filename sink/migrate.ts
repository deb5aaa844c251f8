/**
 * Schema migrations: `schema/migrations/NNN_name.sql`, applied in order, each once, each in its
 * own transaction, recorded in `schema_migrations`. A session advisory lock keeps two processes
 * from migrating at once. `schema/postgres.sql` runs the same files through psql.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import pg from "pg";

/** The folder of migration files shipped with the package. */
export const MIGRATIONS_DIR = findMigrations(dirname(fileURLToPath(import.meta.url)));

function findMigrations(start: string): string {
  let dir = start;
  for (;;) {
    const candidate = join(dir, "schema", "migrations");
    if (existsSync(candidate)) return candidate;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find schema/migrations above ${start}`);
    dir = parent;
  }
}

/** A migration file. */
export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

export function listMigrations(dir: string = MIGRATIONS_DIR): Migration[] {
  return readdirSync(dir)
    .map((file) => /^(\d+)_([\w-]+)\.sql$/.exec(file))
    .filter((match): match is RegExpExecArray => match !== null)
    .map((match) => ({
      version: Number(match[1]),
      name: match[2] ?? "",
      sql: readFileSync(join(dir, match[0]), "utf8"),
    }))
    .sort((a, b) => a.version - b.version);
}

const LOCK_ID = 0x6d63706f; // "mcpo"

/**
 * Applies the migrations a database lacks.
 *
 * @returns the versions applied now (empty when it was current).
 */
export async function migrate(
  databaseUrl: string,
  migrations: readonly Migration[] = listMigrations(),
): Promise<number[]> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    await client.query("select pg_advisory_lock($1)", [LOCK_ID]);
    await client.query(
      "create table if not exists schema_migrations (version integer primary key, name text not null, applied_at timestamptz not null default now())",
    );
    const applied = new Set(
      (await client.query<{ version: number }>("select version from schema_migrations")).rows.map(
        (row) => row.version,
      ),
    );
    const done: number[] = [];
    for (const migration of migrations) {
      if (applied.has(migration.version)) continue;
      await client.query("begin");
      try {
        await client.query(migration.sql);
        await client.query(
          "insert into schema_migrations (version, name) values ($1, $2) on conflict (version) do nothing",
          [migration.version, migration.name],
        );
        await client.query("commit");
      } catch (error) {
        await client.query("rollback");
        throw new Error(
          `migration ${migration.version}_${migration.name} failed: ${(error as Error).message}`,
          { cause: error },
        );
      }
      done.push(migration.version);
    }
    return done;
  } finally {
    await client.query("select pg_advisory_unlock($1)", [LOCK_ID]).catch(() => undefined);
    await client.end();
  }
}
