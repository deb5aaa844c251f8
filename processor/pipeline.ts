/**
 * The processor's runtime path as RxJS: batches flow through lanes (one per partition, in order,
 * each batch handled to the end before the next: backpressure, since the consumer awaits its
 * batch), and idle partitions are found by timers on an injected scheduler. Nothing here reads the
 * wall clock: time comes from the `SchedulerLike` (RxJS's `asyncScheduler` by default, a
 * `TestScheduler` or virtual clock in tests).
 */
import {
  asyncScheduler,
  concatMap,
  defer,
  from,
  groupBy,
  map,
  mergeMap,
  Subject,
  switchMap,
  tap,
  timer,
  type ObservableInput,
  type OperatorFunction,
  type SchedulerLike,
  type Subscription,
} from "rxjs";

/**
 * Partitions that had no activity for `idleMs`: each activity of a partition restarts its timer;
 * a partition is emitted once per quiet spell.
 */
export function idlePartitions(
  idleMs: number,
  scheduler: SchedulerLike = asyncScheduler,
): OperatorFunction<number, number> {
  return (activity) =>
    activity.pipe(
      groupBy((partition) => partition),
      mergeMap((partition$) =>
        partition$.pipe(
          switchMap(() => timer(idleMs, scheduler)),
          map(() => partition$.key),
        ),
      ),
    );
}

/**
 * Ticks idle partitions: each partition quiet for `idleMs` (see {@link idlePartitions}) gets
 * `tick(partition)`, which says whether to come back: a partition that still needs ticks re-enters
 * `activity` and is ticked again after another idle time — also when its tick could not be
 * written, or was written where the consumer will not read it soon — instead of never again.
 */
export function tickIdlePartitions(
  activity: Subject<number>,
  idleMs: number,
  scheduler: SchedulerLike,
  tick: (partition: number) => ObservableInput<boolean>,
): Subscription {
  return activity
    .pipe(
      idlePartitions(idleMs, scheduler),
      mergeMap((partition) =>
        from(tick(partition)).pipe(
          tap((again) => {
            if (again) activity.next(partition);
          }),
        ),
      ),
    )
    .subscribe();
}

/** Whether `intervalMs` has passed since `lastMs` on the scheduler's clock. */
export function due(scheduler: SchedulerLike, lastMs: number, intervalMs: number): boolean {
  return scheduler.now() - lastMs >= intervalMs;
}

interface LaneItem<T> {
  readonly key: number;
  readonly item: T;
  readonly done: { resolve: () => void; reject: (error: unknown) => void };
}

/**
 * Work items in lanes by key: items of one key are handled one after the other, in the order
 * pushed (`concatMap`), lanes side by side. {@link push} resolves once its item was handled, so
 * a caller that awaits it (the consumer awaiting its batch) holds the source back.
 */
export class Lanes<T> {
  private readonly items = new Subject<LaneItem<T>>();
  private readonly subscription: Subscription;

  constructor(handle: (item: T) => Promise<void>) {
    this.subscription = this.items
      .pipe(
        groupBy((entry) => entry.key),
        mergeMap((lane) =>
          lane.pipe(
            concatMap((entry) =>
              defer(async () => {
                try {
                  await handle(entry.item);
                  entry.done.resolve();
                } catch (error) {
                  entry.done.reject(error);
                }
              }),
            ),
          ),
        ),
      )
      .subscribe();
  }

  /** Queues `item` in lane `key`; resolves when it was handled, rejects with its failure. */
  push(key: number, item: T): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.items.next({ key, item, done: { resolve, reject } });
    });
  }

  /** Stops taking items; those queued and in flight are still handled. */
  close(): void {
    this.items.complete();
  }

  /** Whether every lane is done after {@link close}. */
  get closed(): boolean {
    return this.subscription.closed;
  }
}
