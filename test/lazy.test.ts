// util/lazy.ts: a value made at its first use, once.
import { describe, expect, test } from "bun:test";
import { lazy } from "../src/util/lazy.ts";

describe("lazy", () => {
  test("nothing is made before the first call; the first call's value is kept, undefined too", () => {
    let made = 0;
    const value = lazy(() => (made++, { n: made }));
    expect(made).toBe(0);
    const first = value();
    expect(first).toEqual({ n: 1 });
    expect(value()).toBe(first);
    expect(made).toBe(1);
    let calls = 0;
    const none = lazy(() => void calls++);
    expect(none()).toBeUndefined();
    expect(none()).toBeUndefined();
    expect(calls).toBe(1);
  });
});
