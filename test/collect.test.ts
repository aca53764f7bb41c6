// The collections of large steps: an eden collection once every `every` units of work (however
// they come in), both kinds at once when a large batch was dropped. (What they save is measured
// by bench/scale.ts: a test of a concurrent collection's effect would race JSC's own timer.)

import { describe, expect, test } from "bun:test";
import { StepCollector } from "../src/util/collect.ts";

describe("StepCollector", () => {
  test("an eden collection every `every` units, counted across calls; dropped() collects both ways and counts from zero", () => {
    const calls: string[] = [];
    const c = new StepCollector(
      100,
      () => calls.push("eden"),
      () => calls.push("background"),
    );
    for (let i = 0; i < 9; i++) c.add(11); // 99 units
    expect(calls).toEqual([]);
    c.add(1);
    expect(calls).toEqual(["eden"]);
    c.add(250); // one collection for a large batch, not one per 100
    expect(calls).toEqual(["eden", "eden"]);
    c.add(99);
    c.dropped();
    expect(calls).toEqual(["eden", "eden", "eden", "background"]);
    c.add(99); // counted from zero again
    expect(calls.length).toBe(4);
    c.add(1);
    expect(calls).toEqual(["eden", "eden", "eden", "background", "eden"]);
  });
});
