/**
 * PostgreSQL faults at the one place the pipeline holds connections (sink/writer.ts): a
 * connection terminated while a transaction holds it (what a PostgreSQL restart does to a busy
 * sink). Before, the client's `error` event had no listener while it was checked out, and the
 * process died on it (`terminating connection due to administrator command`, seen by the chaos
 * run); now the transaction fails with that error, the client is discarded, and the pool serves
 * the next transaction.
 */
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";

import { inTransaction, openPool } from "../../sink/writer.js";
import { services } from "../support/isolation.js";
import { waitFor } from "../support/wait.js";

describe("a PostgreSQL connection lost under a transaction", () => {
  const lost: Error[] = [];
  const pool = openPool(services().databaseUrl, {
    max: 2,
    onLost: (error) => lost.push(error),
  });
  const admin = new pg.Pool({ connectionString: services().databaseUrl, max: 1 });

  afterAll(async () => {
    await pool.end();
    await admin.end();
  });

  it("fails the transaction with the connection's error, without crashing the process, and the pool goes on", async () => {
    let pid = 0;
    const outcome = await inTransaction(pool, async (client) => {
      const { rows } = await client.query<{ pid: number }>("select pg_backend_pid() as pid");
      pid = rows[0]?.pid ?? 0;
      // Between two queries of the transaction, the server ends the connection.
      await admin.query("select pg_terminate_backend($1)", [pid]);
      await waitFor(
        "the backend to be gone",
        async () =>
          (await admin.query("select 1 from pg_stat_activity where pid = $1", [pid])).rowCount,
        (rows) => rows === 0,
      );
      await new Promise((resolve) => setTimeout(resolve, 200));
      return "committed";
    }).then(
      (value) => ({ value, error: undefined }),
      (error: unknown) => ({ value: undefined, error }),
    );
    expect(pid).toBeGreaterThan(0);
    expect(outcome.value).toBeUndefined();
    expect(outcome.error).toBeInstanceOf(Error);
    expect((outcome.error as Error).message).toMatch(/terminat|connection/i);
    // The broken client was discarded: the next transaction gets a working connection.
    const next = await inTransaction(pool, async (client) => {
      const { rows } = await client.query<{ pid: number }>("select pg_backend_pid() as pid");
      return rows[0]?.pid;
    });
    expect(next).toBeGreaterThan(0);
    expect(next).not.toBe(pid);
  });

  it("an idle pooled connection terminated is dropped and reported, not thrown", async () => {
    const { rows } = await pool.query<{ pid: number }>("select pg_backend_pid() as pid");
    const pid = rows[0]?.pid ?? 0;
    const before = lost.length;
    await admin.query("select pg_terminate_backend($1)", [pid]);
    await waitFor(
      "the pool to report the lost connection",
      () => lost.length,
      (count) => count > before,
    );
    const again = await pool.query<{ one: number }>("select 1 as one");
    expect(again.rows).toEqual([{ one: 1 }]);
  });
});
