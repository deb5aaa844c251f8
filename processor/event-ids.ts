/**
 * The event ids one window has counted, so that an event delivered twice (an exporter that
 * resends a batch after a partial success, a producer replaced mid-send) counts once.
 *
 * An event id is a UUID (the contract requires its canonical lower-case form), kept as its 128
 * bits: 16 bytes per id in insertion order, and a hash table of positions into that list. Nothing
 * is dropped or approximated, so no two distinct ids can be taken for one another; the hash is
 * seeded per process, so ids chosen to collide cannot turn lookups into scans. The ids are kept
 * and serialised in the order they were added, so a set restored from a checkpoint and fed the
 * rest of the log holds what an uninterrupted run holds, byte for byte.
 */

/** A seed per process: the table's layout differs between processes, its content does not. */
const SEED = (Math.random() * 0x1_0000_0000) >>> 0;

const WORDS = 4;
const EMPTY = -1;

/** The four 32-bit words of a lower-case UUID; of any other string, 128 bits of its hash. */
function wordsOf(id: string, out: Uint32Array, at: number): void {
  if (
    id.length === 36 &&
    id.charCodeAt(8) === 45 &&
    id.charCodeAt(13) === 45 &&
    id.charCodeAt(18) === 45 &&
    id.charCodeAt(23) === 45
  ) {
    const w0 = parseHex(id, 0, 8);
    const w1 = parseHex(id, 9, 13) * 0x10000 + parseHex(id, 14, 18);
    const w2 = parseHex(id, 19, 23) * 0x10000 + parseHex(id, 24, 28);
    const w3 = parseHex(id, 28, 36);
    if (w0 >= 0 && w1 >= 0 && w2 >= 0 && w3 >= 0) {
      out[at] = w0;
      out[at + 1] = w1;
      out[at + 2] = w2;
      out[at + 3] = w3;
      return;
    }
  }
  // Not a UUID (events are validated before they are counted, so only a caller of the library
  // API passing ids of its own gets here): four independently seeded 32-bit FNV-1a hashes.
  for (let word = 0; word < WORDS; word++) {
    let hash = (0x811c9dc5 ^ Math.imul(word + 1, 0x9e3779b1)) >>> 0;
    for (let i = 0; i < id.length; i++) hash = Math.imul(hash ^ id.charCodeAt(i), 0x01000193);
    out[at + word] = hash >>> 0;
  }
}

/** The value of `text[from, to)` as lower-case hex digits; -1 when one is not. */
function parseHex(text: string, from: number, to: number): number {
  let value = 0;
  for (let i = from; i < to; i++) {
    const code = text.charCodeAt(i);
    const digit = code >= 48 && code <= 57 ? code - 48 : code >= 97 && code <= 102 ? code - 87 : -1;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

function mix(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

export class EventIdSet {
  /** The ids, 4 words each, in the order they were added. */
  private ids = new Uint32Array(WORDS * 8);
  private count = 0;
  /** Open addressing: positions into `ids`, EMPTY where none. A power of two, at most half full. */
  private table = new Int32Array(16).fill(EMPTY);
  private readonly probe = new Uint32Array(WORDS);

  /** How many ids it holds. */
  get size(): number {
    return this.count;
  }

  /** Adds `id`; false when it was already there. */
  add(id: string): boolean {
    wordsOf(id, this.probe, 0);
    return this.addWords(this.probe, 0);
  }

  /** Whether it holds `id`. */
  has(id: string): boolean {
    wordsOf(id, this.probe, 0);
    return this.find(this.probe, 0) !== EMPTY;
  }

  /** The ids as base64 of 16 bytes each (big-endian words), in the order they were added. */
  toBase64(): string {
    const bytes = Buffer.alloc(this.count * WORDS * 4);
    for (let i = 0; i < this.count * WORDS; i++) bytes.writeUInt32BE(this.ids[i] as number, i * 4);
    return bytes.toString("base64");
  }

  /**
   * The set {@link toBase64} wrote.
   *
   * @throws {RangeError} when the text is not a whole number of 16-byte ids.
   */
  static fromBase64(text: string): EventIdSet {
    const bytes = Buffer.from(text, "base64");
    if (bytes.length % (WORDS * 4) !== 0)
      throw new RangeError(`event ids: ${bytes.length} bytes is not a whole number of 16-byte ids`);
    const set = new EventIdSet();
    const words = new Uint32Array(WORDS);
    for (let at = 0; at < bytes.length; at += WORDS * 4) {
      for (let word = 0; word < WORDS; word++) words[word] = bytes.readUInt32BE(at + word * 4);
      set.addWords(words, 0);
    }
    return set;
  }

  private slotOf(words: Uint32Array, at: number): number {
    let h = SEED;
    for (let word = 0; word < WORDS; word++) h = mix(h ^ (words[at + word] as number));
    return h & (this.table.length - 1);
  }

  private equals(index: number, words: Uint32Array, at: number): boolean {
    const base = index * WORDS;
    for (let word = 0; word < WORDS; word++)
      if (this.ids[base + word] !== words[at + word]) return false;
    return true;
  }

  /** The position of the id in `ids`, or EMPTY. */
  private find(words: Uint32Array, at: number): number {
    const mask = this.table.length - 1;
    for (let slot = this.slotOf(words, at); ; slot = (slot + 1) & mask) {
      const index = this.table[slot] as number;
      if (index === EMPTY || this.equals(index, words, at)) return index;
    }
  }

  private addWords(words: Uint32Array, at: number): boolean {
    const mask = this.table.length - 1;
    let slot = this.slotOf(words, at);
    for (; ; slot = (slot + 1) & mask) {
      const index = this.table[slot] as number;
      if (index === EMPTY) break;
      if (this.equals(index, words, at)) return false;
    }
    if ((this.count + 1) * WORDS > this.ids.length) {
      const grown = new Uint32Array(this.ids.length * 2);
      grown.set(this.ids);
      this.ids = grown;
    }
    const base = this.count * WORDS;
    for (let word = 0; word < WORDS; word++) this.ids[base + word] = words[at + word] as number;
    this.table[slot] = this.count;
    this.count++;
    if (this.count * 2 > this.table.length) this.rehash();
    return true;
  }

  private rehash(): void {
    this.table = new Int32Array(this.table.length * 2).fill(EMPTY);
    const mask = this.table.length - 1;
    for (let index = 0; index < this.count; index++) {
      let slot = this.slotOf(this.ids, index * WORDS);
      while (this.table[slot] !== EMPTY) slot = (slot + 1) & mask;
      this.table[slot] = index;
    }
  }
}
