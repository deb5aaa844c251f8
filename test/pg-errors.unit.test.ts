/**
 * PostgreSQL errors sorted by SQLSTATE in one place: what trying again fixes (the connection, the
 * server's state), what the rows themselves cause (isolated by bisecting the batch), and the rest;
 * and the bisecting itself, against a writer that refuses chosen items.
 */
import pg from "pg";
import { describe, expect, it } from "vitest";

import { ObservatoryError } from "../config/index.js";
import { writeIsolating, type Rejected } from "../sink/isolate.js";
import { classifyPgError, recordRejection, sqlstateOf } from "../sink/pg-errors.js";

/** An error as node-postgres raises it for an ErrorResponse of the server. */
function serverError(code: string, message = `the server said ${code}`): pg.DatabaseError {
  const error = new pg.DatabaseError(message, message.length, "error");
  error.code = code;
  error.severity = "ERROR";
  return error;
}

/** An error as Node raises it for a socket. */
function socketError(code: string): Error {
  return Object.assign(new Error(`connect ${code} 127.0.0.1:5432`), {
    code,
    errno: -1,
    syscall: "connect",
  });
}

describe("classifyPgError", () => {
  it.each([
    ["08006", "connection_failure"],
    ["08001", "sqlclient_unable_to_establish_sqlconnection"],
    ["08003", "connection_does_not_exist"],
    ["57P01", "admin_shutdown"],
    ["57P02", "crash_shutdown"],
    ["57P03", "cannot_connect_now"],
    ["57014", "query_canceled (statement_timeout, a cancel request)"],
    ["40001", "serialization_failure"],
    ["40P01", "deadlock_detected"],
    ["53100", "disk_full"],
    ["53200", "out_of_memory"],
    ["53300", "too_many_connections"],
    ["58000", "system_error"],
    ["58030", "io_error"],
    ["55P03", "lock_not_available"],
  ])("%s (%s) is transient", (code) => {
    expect(classifyPgError(serverError(code))).toBe("transient");
    expect(recordRejection(serverError(code))).toBeUndefined();
  });

  it.each([
    ["22021", "character_not_in_repertoire: a NUL in text"],
    ["22P05", "untranslatable_character: \\u0000 in jsonb, a character the encoding lacks"],
    ["22008", "datetime_field_overflow"],
    ["22003", "numeric_value_out_of_range"],
    ["22P02", "invalid_text_representation"],
    ["22001", "string_data_right_truncation"],
    ["23505", "unique_violation"],
    ["23514", "check_violation"],
    ["23502", "not_null_violation"],
    ["54000", "program_limit_exceeded: index row size"],
    ["21000", "cardinality_violation: a row affected twice"],
  ])("%s (%s) is the record's", (code) => {
    const error = serverError(code, `refused (${code})`);
    expect(classifyPgError(error)).toBe("record");
    expect(recordRejection(error)).toEqual({ sqlstate: code, message: `refused (${code})` });
  });

  it.each([
    ["42P01", "undefined_table: the schema is not migrated"],
    ["42501", "insufficient_privilege"],
    ["25006", "read_only_sql_transaction"],
    ["XX000", "internal_error"],
  ])("%s (%s) is neither", (code) => {
    expect(classifyPgError(serverError(code))).toBe("other");
  });

  it.each(["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENOTFOUND"])(
    "a socket's %s is transient (not read as a SQLSTATE)",
    (code) => {
      expect(classifyPgError(socketError(code))).toBe("transient");
      expect(sqlstateOf(socketError(code))).toBeUndefined();
    },
  );

  it.each([
    "Connection terminated unexpectedly",
    "Connection terminated",
    "Connection terminated due to connection timeout",
    "timeout exceeded when trying to connect",
    "Client has encountered a connection error and is not queryable",
  ])("node-postgres's %j (no code) is transient", (message) => {
    expect(classifyPgError(new Error(message))).toBe("transient");
  });

  it("looks through causes: an error wrapping a server's or a socket's error is classified as it", () => {
    const wrapped = new ObservatoryError("WRITE_FAILED", "writing the batch failed", {
      cause: serverError("22021"),
    });
    expect(classifyPgError(wrapped)).toBe("record");
    expect(recordRejection(wrapped)?.sqlstate).toBe("22021");
    expect(
      classifyPgError(
        new Error("outer", { cause: new Error("x", { cause: socketError("ECONNRESET") }) }),
      ),
    ).toBe("transient");
  });

  it("anything else is neither: program errors, values that are no error", () => {
    expect(classifyPgError(new TypeError("cannot read properties of undefined"))).toBe("other");
    expect(classifyPgError("a string")).toBe("other");
    expect(classifyPgError(undefined)).toBe("other");
    expect(classifyPgError({ code: "22021" })).toBe("other");
    expect(sqlstateOf(serverError("22021"))).toBe("22021");
  });
});

/** Items of a fake write: a name, refused alone and in any chunk when it starts with `bad`. */
function refusingWriter(transientOnce: ReadonlySet<number> = new Set()) {
  const stored: string[] = [];
  const calls: string[] = [];
  let attempt = 0;
  const write = (chunk: readonly string[], from: number, to: number): Promise<void> => {
    attempt++;
    calls.push(`write ${from}-${to}`);
    if (transientOnce.has(attempt)) return Promise.reject(socketError("ECONNRESET"));
    const bad = chunk.find((item) => item.startsWith("bad"));
    if (bad) return Promise.reject(serverError("22021", `refused ${bad}`));
    stored.push(...chunk);
    return Promise.resolve();
  };
  return { stored, calls, write };
}

describe("writeIsolating", () => {
  it("writes a batch without bad items in one write", async () => {
    const fake = refusingWriter();
    const items = ["a", "b", "c"];
    const rejected = await writeIsolating(items, {
      write: fake.write,
      reject: () => Promise.resolve(),
    });
    expect(rejected).toEqual([]);
    expect(fake.calls).toEqual(["write 0-3"]);
    expect(fake.stored).toEqual(items);
  });

  it("writes an empty batch once (a position-only write)", async () => {
    const fake = refusingWriter();
    await writeIsolating([], { write: fake.write, reject: () => Promise.resolve() });
    expect(fake.calls).toEqual(["write 0-0"]);
  });

  it("bisects down to each bad item, writes every other item once, in order, and rejects each bad one before anything after it is written", async () => {
    const items = Array.from({ length: 100 }, (_, i) =>
      i === 0 || i === 37 || i === 38 || i === 99 ? `bad-${i}` : `ok-${i}`,
    );
    const fake = refusingWriter();
    const handled: string[] = [];
    const order: string[] = [];
    const rejected = await writeIsolating(items, {
      write: async (chunk, from, to) => {
        // Everything before the chunk is written or rejected: a position stored with it is safe.
        expect(handled).toHaveLength(from);
        await fake.write(chunk, from, to);
        handled.push(...chunk);
        order.push(...chunk);
      },
      reject: (item, index, rejection) => {
        expect(handled).toHaveLength(index);
        handled.push(item);
        order.push(`rejected ${item} ${rejection.sqlstate} ${rejection.message}`);
        return Promise.resolve();
      },
    });
    expect(rejected.map((r: Rejected<string>) => [r.index, r.item, r.rejection.sqlstate])).toEqual([
      [0, "bad-0", "22021"],
      [37, "bad-37", "22021"],
      [38, "bad-38", "22021"],
      [99, "bad-99", "22021"],
    ]);
    expect(fake.stored).toEqual(items.filter((item) => item.startsWith("ok")));
    expect(order).toHaveLength(100);
    expect(order.filter((entry) => entry.startsWith("rejected"))).toEqual([
      "rejected bad-0 22021 refused bad-0",
      "rejected bad-37 22021 refused bad-37",
      "rejected bad-38 22021 refused bad-38",
      "rejected bad-99 22021 refused bad-99",
    ]);
    // Bisecting, not one write per item: a few writes per bad item.
    expect(fake.calls.length).toBeLessThan(4 * 2 * Math.ceil(Math.log2(100)) + 1);
  });

  it("passes any other failure on unchanged, to be retried by the caller", async () => {
    const fake = refusingWriter(new Set([2]));
    const items = ["a", "bad", "c", "d"];
    await expect(
      writeIsolating(items, { write: fake.write, reject: () => Promise.resolve() }),
    ).rejects.toThrow(/ECONNRESET/);
    const server = (): Promise<void> => Promise.reject(serverError("42P01", "no table"));
    await expect(
      writeIsolating(items, { write: server, reject: () => Promise.resolve() }),
    ).rejects.toThrow("no table");
  });

  it("a failing reject stops the isolation with its error", async () => {
    const fake = refusingWriter();
    await expect(
      writeIsolating(["a", "bad", "c"], {
        write: fake.write,
        reject: () => Promise.reject(new Error("the dead-letter topic is gone")),
      }),
    ).rejects.toThrow("the dead-letter topic is gone");
    expect(fake.stored).toEqual(["a"]);
  });
});
