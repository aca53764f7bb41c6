// The collections of large steps: an eden collection once every `every` units of work (however
// they come in); when a large batch was dropped, an eden collection at once and, with a CPU to
// spare, a full one in the background; a full one that the loop waits for only with two CPUs (or
// when told to); nothing when switched off. (What they save is measured by bench/scale.ts: a test
// of a concurrent collection's effect would race JSC's own timer.)

import { describe, expect, test } from "bun:test";
import { StepCollector } from "../src/util/collect.ts";

/** A collector of `every` = 100 on `cpus` CPUs whose collections are recorded by kind. */
function recorded(cpus: number) {
  const calls: string[] = [];
  const c = new StepCollector(
    100,
    () => calls.push("eden"),
    () => calls.push("background"),
    cpus,
    () => calls.push("blocking"),
  );
  return { c, calls };
}

describe("StepCollector", () => {
  test("an eden collection every `every` units, counted across calls; dropped() collects at once, both ways", () => {
    const { c, calls } = recorded(2);
    for (let i = 0; i < 9; i++) c.add(11); // 99 units
    expect(calls).toEqual([]);
    c.add(1);
    expect(calls).toEqual(["eden"]);
    c.add(250); // one collection for a large batch, not one per 100
    expect(calls).toEqual(["eden", "eden"]);
    c.add(99);
    c.dropped(); // both now (two CPUs), and the count starts from zero
    expect(calls).toEqual(["eden", "eden", "eden", "background"]);
    c.add(99);
    expect(calls.length).toBe(4);
    c.add(1);
    expect(calls).toEqual(["eden", "eden", "eden", "background", "eden"]);
  });

  test("switched off: no collection of any kind", () => {
    const { c, calls } = recorded(2);
    c.enabled = false;
    c.add(1000);
    c.dropped();
    c.full(true);
    expect(calls).toEqual([]);
    c.enabled = true;
    c.add(100);
    expect(calls).toEqual(["eden"]);
  });

  test("with one CPU, no collection in the background: it would take the event loop's CPU", () => {
    const { c, calls } = recorded(1);
    c.dropped();
    expect(calls).toEqual(["eden"]);
  });

  test("full(): a blocking full collection with two CPUs; with one, a dropped batch's (unless always)", () => {
    const two = recorded(2);
    two.c.add(99);
    two.c.full();
    two.c.add(1); // counted from zero after it
    expect(two.calls).toEqual(["blocking"]);
    const one = recorded(1);
    one.c.full();
    expect(one.calls).toEqual(["eden"]);
    one.c.full(true);
    expect(one.calls).toEqual(["eden", "blocking"]);
  });
});
