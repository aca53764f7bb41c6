// A Map for the many small maps of a large table (a service's backends, its destinations): a JSC
// Map of 10 entries takes about 920 bytes of heap, and a 10,000-service config has 10,000 of them
// in each of the store, the desired table and the kernel's cache (30 MiB of a 60 MiB heap). Up to
// SMALL entries this one keeps its keys and values in one array (about 290 bytes for 10 entries);
// past that, a real Map.
//
// The Map interface and its insertion order; keys compare as Map's do (SameValueZero). One
// difference: an iteration of the array sees the entries as they were when it began (a change
// made during it goes to a copy of the array), where a Map's iteration also visits entries added
// after it began and skips entries deleted before it reaches them. Deleting or updating the entry
// an iteration is at behaves the same in both.

/** Entries kept in the array; a map that grows past this becomes (and stays) a real Map. */
export const SMALL = 32;

export class CompactMap<K, V> implements Map<K, V> {
  /** key0, value0, key1, value1…; null once the map has grown past SMALL entries. */
  private pairs: unknown[] | null = [];
  private big: Map<K, V> | undefined;
  /** An iteration may hold `pairs`: the next change makes a copy first. */
  private shared = false;

  constructor(entries?: Iterable<readonly [K, V]> | null) {
    if (entries) for (const [k, v] of entries) this.set(k, v);
  }

  get size(): number {
    const p = this.pairs;
    return p === null ? this.big!.size : p.length >> 1;
  }

  get(key: K): V | undefined {
    const p = this.pairs;
    if (p === null) return this.big!.get(key);
    const i = find(p, key);
    return i < 0 ? undefined : (p[i + 1] as V);
  }

  has(key: K): boolean {
    const p = this.pairs;
    return p === null ? this.big!.has(key) : find(p, key) >= 0;
  }

  set(key: K, value: V): this {
    const p = this.pairs;
    if (key === 0) key = 0 as K; // -0 is stored as 0, as a Map does
    if (p === null) {
      this.big!.set(key, value);
      return this;
    }
    const i = find(p, key);
    if (i >= 0) {
      if (p[i + 1] !== value) this.writable()[i + 1] = value;
    } else if (p.length < 2 * SMALL) {
      this.writable().push(key, value);
    } else {
      const big = new Map<K, V>();
      for (let j = 0; j < p.length; j += 2) big.set(p[j] as K, p[j + 1] as V);
      big.set(key, value);
      this.big = big;
      this.pairs = null; // an iteration under way keeps the old array
      this.shared = false;
    }
    return this;
  }

  delete(key: K): boolean {
    const p = this.pairs;
    if (p === null) return this.big!.delete(key);
    const i = find(p, key);
    if (i < 0) return false;
    this.writable().splice(i, 2);
    return true;
  }

  clear(): void {
    this.pairs = [];
    this.big = undefined;
    this.shared = false;
  }

  entries(): MapIterator<[K, V]> {
    return this.pairs === null ? this.big!.entries() : (walk(this.hold(), 2) as MapIterator<[K, V]>);
  }

  keys(): MapIterator<K> {
    return this.pairs === null ? this.big!.keys() : (walk(this.hold(), 0) as MapIterator<K>);
  }

  values(): MapIterator<V> {
    return this.pairs === null ? this.big!.values() : (walk(this.hold(), 1) as MapIterator<V>);
  }

  [Symbol.iterator](): MapIterator<[K, V]> {
    return this.entries();
  }

  forEach(callback: (value: V, key: K, map: Map<K, V>) => void, thisArg?: unknown): void {
    for (const [k, v] of this.entries()) callback.call(thisArg, v, k, this);
  }

  get [Symbol.toStringTag](): string {
    return "CompactMap";
  }

  /** The array, for an iteration: marked shared so that a change copies it first. */
  private hold(): unknown[] {
    this.shared = true;
    return this.pairs!;
  }

  private writable(): unknown[] {
    if (this.shared) {
      this.pairs = this.pairs!.slice();
      this.shared = false;
    }
    return this.pairs!;
  }
}

/** The index of `key` in a pairs array, -1 if absent (SameValueZero: NaN finds NaN). */
function find(p: unknown[], key: unknown): number {
  if (key !== key) {
    for (let i = 0; i < p.length; i += 2) if (p[i] !== p[i]) return i;
    return -1;
  }
  for (let i = 0; i < p.length; i += 2) if (p[i] === key) return i;
  return -1;
}

/** what: 0 keys, 1 values, 2 [key, value] pairs. */
function* walk(p: unknown[], what: 0 | 1 | 2): Generator<unknown, undefined, unknown> {
  for (let i = 0; i < p.length; i += 2) yield what === 2 ? [p[i], p[i + 1]] : p[i + what];
  return undefined;
}
