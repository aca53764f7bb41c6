import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { effectiveWeight, initialState, ramping, step, weightFactor, type HealthState } from "../src/health/state.ts";
import { seeds } from "./support/seed.ts";

/** Runs outcomes ("+" pass, "-" fail) from a fresh state, one per ms; returns the states and transitions. */
function run(outcomes: string, rise: number, fall: number): { state: HealthState; transitions: string[] } {
  let s = initialState(0);
  const transitions: string[] = [];
  [...outcomes].forEach((c, i) => {
    const r = step(s, { ok: c === "+", reason: c === "+" ? "ok" : "refused" }, i + 1, { rise, fall });
    s = r.state;
    if (r.transition) transitions.push(`${r.transition}@${i + 1}`);
  });
  return { state: s, transitions };
}

describe("rise and fall", () => {
  test.each([
    // outcomes, rise, fall, up at the end, transitions (at the check's time: the n-th check at n ms)
    ["", 2, 3, true, []],
    ["--", 2, 3, true, []],
    ["---", 2, 3, false, ["down@3"]],
    ["--+--", 2, 3, true, []], // a pass resets the failure count
    ["--+---", 2, 3, false, ["down@6"]],
    ["---+", 2, 3, false, ["down@3"]],
    ["---++", 2, 3, true, ["down@3", "up@5"]],
    ["---+-+", 2, 3, false, ["down@3"]], // a failure resets the pass count
    ["---+-++", 2, 3, true, ["down@3", "up@7"]],
    ["-", 1, 1, false, ["down@1"]],
    ["-+", 1, 1, true, ["down@1", "up@2"]],
    ["-+-+", 1, 1, true, ["down@1", "up@2", "down@3", "up@4"]],
    ["---++---", 2, 3, false, ["down@3", "up@5", "down@8"]],
    ["----------+++++", 5, 10, true, ["down@10", "up@15"]],
    ["----------++++", 5, 10, false, ["down@10"]],
    ["+++---", 2, 3, false, ["down@6"]],
  ])("%p with rise %d, fall %d", (outcomes, rise, fall, up, transitions) => {
    const r = run(outcomes, rise, fall);
    expect(r.state.up).toBe(up);
    expect(r.transitions).toEqual(transitions);
  });

  test("the last reason and the check count are kept; a recovery marks the ramp's start", () => {
    let s = initialState(0);
    s = step(s, { ok: false, reason: "status 503" }, 10, { rise: 1, fall: 1 }).state;
    expect(s).toEqual({ up: false, passes: 0, failures: 0, since: 10, reason: "status 503", checks: 1 });
    s = step(s, { ok: true, reason: "status 200" }, 20, { rise: 1, fall: 1 }).state;
    expect(s).toEqual({ up: true, passes: 0, failures: 0, since: 20, recoveredAt: 20, reason: "status 200", checks: 2 });
  });
});

describe("slow start", () => {
  const down = step(initialState(0), { ok: false, reason: "refused" }, 0, { rise: 1, fall: 1 }).state;
  const recovered = step(down, { ok: true, reason: "connected" }, 1000, { rise: 1, fall: 1 }).state; // up at t = 1000
  test.each([
    // configured weight, slow start (ms), now, effective weight
    [100, 10000, 1000, 1], // the instant of recovery: 1, never 0
    [100, 10000, 1001, 1],
    [100, 10000, 1100, 1],
    [100, 10000, 1101, 2],
    [100, 10000, 2000, 10],
    [100, 10000, 6000, 50],
    [100, 10000, 6001, 51],
    [100, 10000, 10999, 100], // ceil: 99.99 → 100
    [100, 10000, 11000, 100],
    [100, 10000, 99999, 100],
    [1, 10000, 1000, 1],
    [1, 10000, 5000, 1],
    [0, 10000, 5000, 0], // configured 0 stays 0 (drain)
    [10, 0, 1000, 10], // no slow start: the full weight at once
    [2147483647, 10000, 6000, 1073741824], // ceil(2147483647 / 2)
    [3, 3000, 2000, 1],
    [3, 3000, 2001, 2],
    [3, 3000, 3001, 3],
  ])("weight %d, slow start %d ms, at %d ms → %d", (configured, slowStart, now, want) => {
    expect(effectiveWeight(configured, recovered, now, slowStart)).toBe(want);
  });

  test("down is 0, whatever the weight; never checked is the configured weight; no state is the configured weight", () => {
    expect(effectiveWeight(100, down, 5000, 10000)).toBe(0);
    expect(effectiveWeight(100, initialState(0), 0, 10000)).toBe(100);
    expect(effectiveWeight(100, undefined, 0, 10000)).toBe(100);
    expect(weightFactor(down, 5000, 10000)).toBe(0);
  });

  test("ramping() is true exactly during the ramp", () => {
    expect([1000, 10999, 11000].map((t) => ramping(recovered, t, 10000))).toEqual([true, true, false]);
    expect(ramping(recovered, 5000, 0)).toBe(false);
    expect(ramping(down, 5000, 10000)).toBe(false);
    expect(ramping(initialState(0), 5000, 10000)).toBe(false);
  });
});

// An independent model of rise/fall, by windows instead of counters: the state flips to down at
// check i when every check since the last flip (at most `fall` of them, ending at i) failed and
// there were at least `fall` of them; to up likewise with `rise` passes.
function model(outcomes: boolean[], rise: number, fall: number): { up: boolean; flips: number[] } {
  let up = true;
  let last = 0; // checks before index `last` belong to the previous state
  const flips: number[] = [];
  for (let i = 0; i < outcomes.length; i++) {
    const need = up ? fall : rise;
    if (i + 1 - last < need) continue;
    const window = outcomes.slice(i + 1 - need, i + 1);
    if (window.every((ok) => ok === !up)) {
      up = !up;
      last = i + 1;
      flips.push(i + 1);
    }
  }
  return { up, flips };
}

describe("properties", () => {
  for (const { seed, label } of seeds(20260515)) {
    test(`rise/fall equals the window model (${label})`, () => {
      fc.assert(
        fc.property(fc.array(fc.boolean(), { maxLength: 60 }), fc.integer({ min: 1, max: 6 }), fc.integer({ min: 1, max: 6 }), (outcomes, rise, fall) => {
          const r = run(outcomes.map((ok) => (ok ? "+" : "-")).join(""), rise, fall);
          const m = model(outcomes, rise, fall);
          expect(r.state.up).toBe(m.up);
          expect(r.transitions.map((t) => Number(t.split("@")[1]))).toEqual(m.flips);
          // transitions alternate, down first
          r.transitions.forEach((t, i) => expect(t.startsWith(i % 2 === 0 ? "down" : "up")).toBe(true));
        }),
        { seed, numRuns: 500 },
      );
    });

    test(`the ramp: within [1, configured], never decreasing, within 1 of configured × elapsed / slowStart, configured once over (${label})`, () => {
      fc.assert(
        fc.property(
          fc.integer({ min: 1, max: 2147483647 }),
          fc.integer({ min: 1, max: 24 * 3600 * 1000 }),
          fc.array(fc.double({ min: 0, max: 2, noNaN: true }), { minLength: 1, maxLength: 20 }),
          (configured, slowStart, fractions) => {
            const down = step(initialState(0), { ok: false, reason: "x" }, 0, { rise: 1, fall: 1 }).state;
            const up = step(down, { ok: true, reason: "y" }, 5, { rise: 1, fall: 1 }).state;
            let prev = 0;
            for (const f of [...fractions].sort((a, b) => a - b)) {
              const now = 5 + f * slowStart;
              const w = effectiveWeight(configured, up, now, slowStart);
              expect(Number.isInteger(w)).toBe(true);
              expect(w).toBeGreaterThanOrEqual(Math.max(1, prev));
              expect(w).toBeLessThanOrEqual(configured);
              if (now - 5 >= slowStart) expect(w).toBe(configured);
              else {
                const exact = (configured * (now - 5)) / slowStart;
                // ceil: at most one above the exact share (1e-6: float rounding of the two formulas)
                expect(w - exact).toBeGreaterThanOrEqual(-1e-6);
                expect(w - exact).toBeLessThan(1 + 1e-6);
              }
              prev = w;
            }
          },
        ),
        { seed, numRuns: 500 },
      );
    });
  }
});
