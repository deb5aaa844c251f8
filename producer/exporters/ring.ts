/** A bounded FIFO on a ring buffer: O(1) push, shift and take-from-front. */
export class RingQueue<T> {
  private items: (T | undefined)[];
  private head = 0;
  private size = 0;

  constructor(readonly capacity: number) {
    this.items = new Array<T | undefined>(capacity);
  }

  get length(): number {
    return this.size;
  }

  /** Adds at the back; false (and nothing added) when full. */
  push(item: T): boolean {
    if (this.size === this.capacity) return false;
    this.items[(this.head + this.size) % this.capacity] = item;
    this.size++;
    return true;
  }

  /** Removes and returns the front item. */
  shift(): T | undefined {
    if (this.size === 0) return undefined;
    const item = this.items[this.head];
    this.items[this.head] = undefined;
    this.head = (this.head + 1) % this.capacity;
    this.size--;
    return item;
  }

  /** Removes and returns up to `count` items from the front, in order. */
  take(count: number): T[] {
    const taken: T[] = [];
    while (taken.length < count && this.size > 0) taken.push(this.shift() as T);
    return taken;
  }

  /** Puts items back at the front, in their order (they must fit). */
  unshiftAll(items: readonly T[]): void {
    if (items.length > this.capacity - this.size) throw new RangeError("ring queue overflow");
    for (let i = items.length - 1; i >= 0; i--) {
      this.head = (this.head - 1 + this.capacity) % this.capacity;
      this.items[this.head] = items[i];
      this.size++;
    }
  }
}
