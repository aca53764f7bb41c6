// The shared timing pieces of src/util: doubling backoff, the interruptible sleep, the debounce
// with a maximum delay.
import { describe, expect, test } from "bun:test";
import { Backoff, Sleeper } from "../src/util/backoff.ts";
import { Debounce } from "../src/util/debounce.ts";

test("Backoff doubles up to its cap and starts over at reset()", () => {
  const b = new Backoff(250, 1000);
  expect([b.next(), b.next(), b.next(), b.next(), b.ms]).toEqual([250, 500, 1000, 1000, 1000]);
  b.reset();
  expect(b.next()).toBe(250);
});

test("Sleeper: wake() ends a sleep early; a sleep without a time waits for it", async () => {
  const s = new Sleeper();
  const t0 = performance.now();
  const timed = s.sleep(5000);
  setTimeout(() => s.wake(), 20);
  await timed;
  expect(performance.now() - t0).toBeLessThan(1000);
  let woken = false;
  const forever = s.sleep().then(() => (woken = true));
  await Bun.sleep(30);
  expect(woken).toBe(false);
  s.wake();
  await forever;
  expect(woken).toBe(true);
});

test("Debounce: one run after a quiet time, at most the maximum delay after a burst's start; urgent at once", async () => {
  const runs: number[] = [];
  const t0 = performance.now();
  const d = new Debounce(() => runs.push(performance.now() - t0), 40, 150);
  // A burst longer than the maximum delay: a run during it (not before 150 ms), one after it.
  let lastTrigger = 0;
  for (let i = 0; i < 30; i++) {
    d.trigger();
    lastTrigger = performance.now() - t0;
    await Bun.sleep(10);
  }
  await Bun.sleep(150);
  expect(runs[0]!).toBeGreaterThanOrEqual(145);
  expect(runs[0]!).toBeLessThan(lastTrigger);
  expect(runs.at(-1)!).toBeGreaterThanOrEqual(lastTrigger);
  runs.length = 0;
  d.trigger();
  d.trigger(true);
  await Bun.sleep(5);
  expect(runs.length).toBe(1);
  d.trigger();
  d.cancel();
  await Bun.sleep(60);
  expect(runs.length).toBe(1);
  expect(d.pending).toBe(false);
});

describe("oncePerScrape", () => {
  test("one read for the metrics of one scrape (one turn of the event loop), a fresh one for the next", async () => {
    const { oncePerScrape } = await import("../src/metrics/server.ts");
    let reads = 0;
    const view = oncePerScrape(() => ({ n: ++reads }));
    expect([view().n, view().n, view().n]).toEqual([1, 1, 1]);
    await new Promise((r) => setImmediate(r));
    expect([view().n, view().n]).toEqual([2, 2]);
    expect(reads).toBe(2);
  });
});
