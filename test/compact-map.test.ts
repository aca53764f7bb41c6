// CompactMap: the same answers as a Map for any sequence of operations (the Map is the
// yardstick), across the switch from its array to a real Map; what an iteration sees while the
// map changes; and the heap it saves, which is why it exists.

import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { heapStats } from "bun:jsc";
import { CompactMap, SMALL } from "../src/util/compact-map.ts";
import { seeds } from "./support/seed.ts";

type Step = { op: "set"; k: number; v: number } | { op: "delete"; k: number } | { op: "clear" };

/** Keys from a small range (so that sets hit existing keys and deletes find them), NaN and -0 among them. */
const KEYS = [...Array.from({ length: 3 * SMALL }, (_, i) => `k${i}`), NaN, 0, -0];
const key = (i: number) => KEYS[i % KEYS.length];

const step = fc.oneof(
  { weight: 60, arbitrary: fc.record({ op: fc.constant("set" as const), k: fc.nat(), v: fc.integer() }) },
  { weight: 25, arbitrary: fc.record({ op: fc.constant("delete" as const), k: fc.nat() }) },
  { weight: 1, arbitrary: fc.constant({ op: "clear" as const }) },
);

function same(m: CompactMap<unknown, number>, y: Map<unknown, number>): void {
  expect(m.size).toBe(y.size);
  expect([...m]).toEqual([...y]);
  expect([...m.keys()]).toEqual([...y.keys()]);
  expect([...m.values()]).toEqual([...y.values()]);
  const seen: [unknown, number][] = [];
  m.forEach((v, k, map) => {
    expect(map).toBe(m);
    seen.push([k, v]);
  });
  expect(seen).toEqual([...y]);
}

describe("CompactMap", () => {
  for (const { seed, label } of seeds(1)) {
    test(`answers as a Map does, below and above ${SMALL} entries (${label})`, () => {
      fc.assert(
        fc.property(fc.array(step, { maxLength: 400, size: "max" }), (steps: Step[]) => {
          const m = new CompactMap<unknown, number>();
          const y = new Map<unknown, number>();
          for (const s of steps) {
            if (s.op === "set") {
              expect(m.set(key(s.k), s.v)).toBe(m);
              y.set(key(s.k), s.v);
            } else if (s.op === "delete") {
              expect(m.delete(key(s.k))).toBe(y.delete(key(s.k)));
            } else {
              m.clear();
              y.clear();
            }
            const probe = key(s.op === "clear" ? 0 : s.k + 1);
            expect(m.has(probe)).toBe(y.has(probe));
            expect(m.get(probe)).toBe(y.get(probe));
          }
          same(m, y);
          expect(new CompactMap(y).size).toBe(y.size);
          same(new CompactMap(y), y);
        }),
        { seed, numRuns: 300 },
      );
    });
  }

  test("keys compare as a Map's do: NaN finds NaN, -0 finds 0, a string is not its number", () => {
    const m = new CompactMap<unknown, string>([
      [NaN, "nan"],
      [0, "zero"],
      ["1", "one"],
    ]);
    expect(m.get(NaN)).toBe("nan");
    expect(m.get(-0)).toBe("zero");
    expect(m.has(1)).toBe(false);
    expect(m.size).toBe(3);
    expect(Object.prototype.toString.call(m)).toBe("[object CompactMap]");
  });

  test("an iteration sees the entries as they were when it began; deleting the current entry is safe", () => {
    const m = new CompactMap<string, number>(["a", "b", "c", "d"].map((k, i) => [k, i]));
    const visited: string[] = [];
    for (const [k] of m) {
      visited.push(k);
      m.delete(k); // the current one: as with a Map
      if (k === "a") m.set("e", 9); // added during the iteration: not visited (a Map would visit it)
    }
    expect(visited).toEqual(["a", "b", "c", "d"]);
    expect([...m]).toEqual([["e", 9]]);
  });

  test("an iteration that began before the switch to a real Map goes on over the entries it began with", () => {
    const m = new CompactMap<string, number>(Array.from({ length: SMALL }, (_, i) => [`k${i}`, i]));
    const it = m.keys();
    expect(it.next().value).toBe("k0");
    m.set("extra", -1); // the 33rd entry: the map becomes a real Map
    m.delete("k1");
    expect([...it]).toEqual(Array.from({ length: SMALL - 1 }, (_, i) => `k${i + 1}`));
    expect(m.size).toBe(SMALL);
    expect(m.has("extra")).toBe(true);
    expect(m.has("k1")).toBe(false);
    expect([...m.keys()].at(-1)).toBe("extra");
  });

  test("10,000 maps of 10 entries take less than half the heap of 10,000 Maps", () => {
    const names = Array.from({ length: 10 }, (_, i) => `b${i}`);
    const values = names.map((_, i) => ({ i }));
    // Both sets are kept until both are measured: nothing is freed in between, so each heap
    // difference is that set's own size.
    const kept: Map<string, object>[][] = [];
    const heapOf = (make: () => Map<string, object>) => {
      Bun.gc(true);
      const before = heapStats().heapSize;
      const maps = Array.from({ length: 10_000 }, () => {
        const m = make();
        names.forEach((n, i) => m.set(n, values[i]!));
        return m;
      });
      kept.push(maps);
      Bun.gc(true);
      return heapStats().heapSize - before;
    };
    const compact = heapOf(() => new CompactMap());
    const native = heapOf(() => new Map());
    expect(kept.flat().every((m) => m.size === 10 && m.get("b9") === values[9])).toBe(true);
    expect(compact).toBeLessThan(native / 2);
  });
});
