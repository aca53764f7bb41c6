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

  /** performance.now() counted while `f` runs. */
  function clockReads(f: () => void): number {
    const now = performance.now.bind(performance);
    let reads = 0;
    performance.now = () => (reads++, now());
    try {
      f();
    } finally {
      performance.now = now;
    }
    return reads;
  }

  const busy = (ms: number) => {
    for (const end = Bun.nanoseconds() + ms * 1e6; Bun.nanoseconds() < end; );
  };

  // The tests' own clock is the pacer's (read around clockReads' count), started just after the
  // pacer's: at any moment it shows at most as much time gone, so that a pause of the process
  // between the two starts (a collection, the machine) cannot make the pacer look late. The calls
  // made past the end are counted from the first one the tests' clock saw past it (none when the
  // pacer saw it first).
  const clock = performance.now.bind(performance);
  const pastTheEnd = (calls: number, late: number) => (late < 0 ? 0 : calls - late);

  test("tiny steps: the clock is read once per 16 calls at most, once the slice has shown they are tiny; the slice still ends on time", () => {
    let calls = 0;
    let late = -1; // the call at which the slice had run out by the test's own clock
    const reads = clockReads(() => {
      const pacer = new Pacer(15);
      const t0 = clock();
      while (!pacer.overdue()) {
        calls++;
        if (late < 0 && clock() - t0 >= 15) late = calls;
      }
    });
    expect(calls).toBeGreaterThan(10_000); // a call without a clock read is far under 1.5 µs
    expect(reads).toBeLessThan(calls / 15);
    expect(pastTheEnd(calls, late)).toBeLessThanOrEqual(16);
  });

  test("tiny steps that turn slow: at most 16 slow steps go by without a clock read", () => {
    let slowCalls = 0;
    let late = -1;
    const pacer = new Pacer(15);
    const t0 = clock();
    // 10 ms of tiny steps (the pacer learns to skip reads), then 1 ms steps: the slice runs out during them
    while (clock() - t0 < 10) pacer.overdue();
    while (!pacer.overdue()) {
      busy(1);
      slowCalls++;
      if (late < 0 && clock() - t0 >= 15) late = slowCalls;
    }
    expect(pastTheEnd(slowCalls, late)).toBeLessThanOrEqual(16);
  });

  test("short steps (50 µs: a file read in a slow guest): the clock is read at most every other call once they have shown it", () => {
    let calls = 0;
    const reads = clockReads(() => {
      const pacer = new Pacer(15);
      for (; calls < 100; calls++) {
        busy(0.05);
        expect(pacer.overdue()).toBe(false);
      }
    });
    expect(reads).toBeLessThan(calls / 2);
  });

  test("slow steps (a hundredth of the slice or more): the clock is read at every call", () => {
    const reads = clockReads(() => {
      const pacer = new Pacer(15);
      for (let i = 0; i < 5; i++) {
        busy(0.2);
        expect(pacer.overdue()).toBe(false);
      }
    });
    expect(reads).toBe(1 + 5); // the slice's start, then each call
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
