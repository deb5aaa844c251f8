/**
 * The migrations' text reaches PostgreSQL as one query, converted to the database's encoding
 * first: a character that encoding lacks (a Greek letter in a comment, in a WIN1252 or LATIN1
 * database) fails the whole migration. So the files are ASCII.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

import { describe, expect, it } from "vitest";

import { REPO_ROOT } from "./support/cli.js";

describe("schema files", () => {
  it("are ASCII, so a database of any server encoding takes them", () => {
    const dir = join(REPO_ROOT, "schema", "migrations");
    const files = [
      join(REPO_ROOT, "schema", "postgres.sql"),
      ...readdirSync(dir)
        .filter((name) => name.endsWith(".sql"))
        .map((name) => join(dir, name)),
    ];
    expect(files.length).toBeGreaterThan(7);
    const offending = files.flatMap((file) =>
      readFileSync(file, "utf8")
        .split("\n")
        .flatMap((line, index) =>
          /[^\t -~]/.test(line)
            ? [`${file.slice(REPO_ROOT.length + 1)}:${index + 1}: ${line}`]
            : [],
        ),
    );
    expect(offending).toEqual([]);
  });
});
