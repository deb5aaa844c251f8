/**
 * The ending every benchmark shares: exit 0 (1 when `main` resolves false: a check failed), or
 * print the failure and what the bench needs.
 */
export function runBench(
  main: () => Promise<unknown>,
  needs = "the local stack: npm run stack:up",
): void {
  main().then(
    (ok) => process.exit(ok === false ? 1 : 0),
    (error: unknown) => {
      process.stderr.write(
        `bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\nIt needs ${needs}\n`,
      );
      process.exit(1);
    },
  );
}
