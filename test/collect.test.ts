// The collections of large steps: an eden collection once every `every` units of work (however
// they come in); when a large batch was dropped, an eden collection at once and, with a CPU to
// spare, a full one in the background; a full one that the loop waits for only with two CPUs (or
// when told to); nothing when switched off. (What they save is measured by bench/scale.ts: a test
// of a concurrent collection's effect would race JSC's own timer.)

import { afterEach, describe, expect, test } from "bun:test";
import type { ConfigSource } from "../src/config/source.ts";
import { IpvsDaemon } from "../src/daemon/ipvs-daemon.ts";
import { MemoryIpvsTable } from "../src/ipvs/memory-table.ts";
import { DEFAULT_DESIRED_OPTIONS } from "../src/model/desired.ts";
import { StepCollector } from "../src/util/collect.ts";
import { configureLog } from "../src/util/log.ts";
import { entries } from "./support/config.ts";
import { until } from "./support/until.ts";

configureLog({ level: "off" });

/** A collector of `every` = 100 on `cpus` CPUs whose collections are recorded by kind. */
function recorded(cpus: number) {
  const calls: string[] = [];
  const c = new StepCollector(
    100,
    () => calls.push("eden"),
    () => calls.push("background"),
    () => cpus,
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

describe("the daemon's collections", () => {
  let daemon: IpvsDaemon | undefined;
  afterEach(async () => {
    await daemon?.stop();
    daemon = undefined;
  });

  /** A config of `services` services × 10 backends, in snapshot parts of 4096 keys as the directory source sends them. */
  function parts(services: number): Map<string, unknown>[] {
    const config: Record<string, unknown> = {};
    for (let s = 0; s < services; s++) {
      config[`services/s${s}/frontend`] = { ipv4: `203.0.${113 + (s >> 8)}.${s & 255}`, tcp: 80 };
      for (let b = 0; b < 10; b++) config[`services/s${s}/backends/b${b}`] = { ipv4: `198.51.${100 + (s >> 8)}.${s & 255}`, tcp: 8000 + b };
    }
    const all = [...entries(config)];
    const out = [];
    for (let i = 0; i < all.length; i += 4096) out.push(new Map(all.slice(i, i + 4096)));
    return out;
  }

  /** A -once style daemon given that config in parts: the collections it made by the time of its first apply. */
  async function firstApply(services: number): Promise<string[]> {
    const { c, calls } = recorded(2);
    const source: ConfigSource = { name: "etcd", start: async () => {}, resync: async () => {}, stop: async () => {} };
    const table = new MemoryIpvsTable();
    const d = (daemon = new IpvsDaemon(table, [source], { desired: DEFAULT_DESIRED_OPTIONS, filterEtcdRoutes: false, flush: false, noop: false, resyncMs: 0, collectAfterLargeSteps: "full", collector: c }));
    const ps = parts(services);
    ps.forEach((p, i) => d.snapshot("etcd", p as never, i === ps.length - 1 ? "last" : "more"));
    const applied = d.nextApply();
    await d.start();
    await applied;
    await until(() => table.list().length === services, 10_000);
    return calls;
  }

  test("a small apply (under 20,000 keys) collects nothing; a large one collects as it goes", async () => {
    // 1800 × 11 = 19,800 keys: the garbage is a few MiB, an eden collection alone costs more in a slow guest
    expect(await firstApply(1800)).toEqual([]);
    await daemon?.stop();
    // 1900 × 11 = 20,900 keys in six parts: the part that brings the count past 20,000 (the fifth; the
    // sixth has under 1024 keys),
    // the full collections after taking in and after compiling, and eden ones while compiling and writing
    const calls = await firstApply(1900);
    expect(calls.filter((k) => k === "blocking").length).toBe(2);
    expect(calls.filter((k) => k === "background").length).toBe(1);
    expect(calls.filter((k) => k === "eden").length).toBeGreaterThan(100);
  }, 30_000);
});
