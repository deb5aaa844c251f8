/**
 * Writing a batch that may hold records PostgreSQL refuses, shared by the sink and the
 * PostgresExporter. The batch is written whole; when the server refuses it for what the rows hold
 * (a `record` error, see `classifyPgError` in pg-errors.ts), it is split in halves, each written on its own:
 * a half that succeeds is written, a half that fails is split again, and a single item that fails
 * is refused. With k refused items among n, about 2·k·log2(n) writes.
 *
 * The halves are written left to right, and each refused item is handed to `reject` (and awaited)
 * before anything after it is written. So when a chunk [from, to) is written, every item before
 * `from` is either written or rejected: a position stored with that chunk (the sink's next offset
 * of a partition, in the same transaction) is never ahead of an item not yet written or
 * dead-lettered. Items are written at most once per successful chunk; the writers' statements are
 * idempotent (spans insert once, rollups and alerts upsert), so a chunk written again after a
 * retry changes nothing.
 *
 * @module
 */
import { recordRejection, type RecordRejection } from "./pg-errors.js";

/** An item PostgreSQL refused on its own. */
export interface Rejected<T> {
  readonly item: T;
  /** Its index in the batch. */
  readonly index: number;
  readonly rejection: RecordRejection;
}

/** How {@link writeIsolating} writes and what it does with a refused item. */
export interface IsolationSteps<T> {
  /**
   * Writes `chunk`, the items [from, to) of the batch, in one transaction; throws what PostgreSQL
   * said. Called once with the whole batch first (also when it is empty).
   */
  readonly write: (chunk: readonly T[], from: number, to: number) => Promise<void>;
  /** Called for each refused item, in order, before anything after it is written. */
  readonly reject: (item: T, index: number, rejection: RecordRejection) => Promise<void>;
}

/**
 * Writes `items`, isolating those PostgreSQL refuses (see the module's description).
 *
 * @returns the refused items, in order.
 * @throws any error that is not the rows' fault (a lost connection, a missing table…), unchanged,
 *   for the caller to retry; and what `reject` throws.
 */
export async function writeIsolating<T>(
  items: readonly T[],
  steps: IsolationSteps<T>,
): Promise<Rejected<T>[]> {
  const rejected: Rejected<T>[] = [];
  const attempt = async (from: number, to: number): Promise<void> => {
    try {
      await steps.write(items.slice(from, to), from, to);
      return;
    } catch (error) {
      const rejection = recordRejection(error);
      if (rejection === undefined || to - from === 0) throw error;
      if (to - from === 1) {
        const item = items[from] as T;
        await steps.reject(item, from, rejection);
        rejected.push({ item, index: from, rejection });
        return;
      }
    }
    const middle = from + Math.ceil((to - from) / 2);
    await attempt(from, middle);
    await attempt(middle, to);
  };
  await attempt(0, items.length);
  return rejected;
}
