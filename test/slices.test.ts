// Work in slices: the merge sort that pauses (the same order as Array.prototype.sort, which is
// the yardstick here) and the pacer that gives the event loop its turns.

import { describe, expect, test } from "bun:test";
import { countTurns } from "./support/turns.ts";
import fc from "fast-check";
import { Pacer, runSync, sortSteps } from "../src/util/slices.ts";
import { seeds } from "./support/seed.ts";

describe("sortSteps", () => {
  for (const { seed, label } of seeds(1)) {
    test(`sorts as Array.prototype.sort does (${label})`, () => {
      fc.assert(
        fc.property(fc.array(fc.string({ unit: "binary", maxLength: 6 }), { maxLength: 5000 }), (xs) => {
          expect(runSync(sortSteps(xs))).toEqual([...xs].sort());
        }),
        { seed, numRuns: 60 },
      );
    });
  }

  test("a large input pauses many times, and the input is left as it was", () => {
    const xs = Array.from({ length: 20_000 }, (_, i) => `services/s${(i * 7919) % 20_000}/frontend`);
    const before = [...xs];
    const steps = sortSteps(xs);
    let pauses = 0;
    let r = steps.next();
    for (; !r.done; r = steps.next()) pauses++;
    expect(r.value).toEqual([...xs].sort());
    expect(xs).toEqual(before);
    // 20 runs of 1024 sorted, then 5 merge passes of 20,000 moves with a pause every 4096
    expect(pauses).toBeGreaterThanOrEqual(20 + 5 * 4);
  });
});

describe("Pacer", () => {
  test("gives the event loop a turn once a slice has run, not before", async () => {
    const turns = countTurns();
    const zero = new Pacer(0);
    const before = turns.count;
    await zero.due();
    expect(turns.count).toBeGreaterThan(before); // a 0 ms slice is always over
    const long = new Pacer(60_000);
    const mid = turns.count;
    for (let i = 0; i < 100; i++) await long.due();
    expect(turns.count).toBe(mid); // within the slice: no turn
    turns.stop();
  });

  test("run() takes generator steps to their value", async () => {
    function* steps() {
      let n = 0;
      for (let i = 0; i < 10; i++) {
        n += i;
        yield;
      }
      return n;
    }
    expect(await new Pacer(0).run(steps())).toBe(45);
  });
});
