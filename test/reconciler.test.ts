// The reconciler against the in-memory table: it ends at the desired table, maps the kernel's
// answers, keeps to what it owns, corrects drift, and drains removed destinations.
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MemoryIpvsTable } from "../src/ipvs/memory-table.ts";
import { Reconciler } from "../src/daemon/reconciler.ts";
import { configureLog } from "../src/util/log.ts";
import { IpvsError, destKeyString, serviceKeyString, writeOne, type Dest, type Op, type Service, type ServiceKey, type Table } from "../src/ipvs/types.ts";
import { seeds } from "./support/seed.ts";
import { arbTable, listedTable } from "./support/tables.ts";

/** A new daemon on the same table and state dir with an empty config: the addresses of the services it leaves. */
function afterSuccessor(ipvs: MemoryIpvsTable, dir: string): string[] {
  const r = new Reconciler(ipvs, { stateDir: dir });
  r.readActual();
  r.sync(new Map());
  return ipvs.list().map((s) => s.address);
}

describe("reconciler", () => {
  for (const { seed, label } of seeds(4)) {
    test(`property: the real in-memory IPVS table ends equal to the desired table through the reconciler; ${label}`, () => {
      fc.assert(
        fc.property(arbTable, arbTable, (first, second) => {
          const ipvs = new MemoryIpvsTable();
          const r = new Reconciler(ipvs);
          r.sync(first);
          r.sync(second);
          expect(listedTable(ipvs)).toEqual(second);
          // An unchanged config makes zero writes after a fresh read (soft restart).
          const r2 = new Reconciler(ipvs);
          r2.readActual();
          expect(r2.sync(second).ops).toBe(0);
        }),
        { seed, numRuns: 200 },
      );
    });
  }

  for (const { seed, label } of seeds(5)) {
    test(`property: with writes failing at random (batched or alone, refused or unanswered), the resyncs converge and foreign services stay; ${label}`, () => {
      // A table that fails writes by a seeded script, then works: what the daemon meets when the
      // kernel misbehaves for a while.
      class FlakyTable extends MemoryIpvsTable {
        constructor(private readonly fails: boolean[]) {
          super();
        }
        broken = true;
        private n = 0;
        private fail(): Error | undefined {
          if (!this.broken || !this.fails[this.n++ % this.fails.length]) return undefined;
          return this.n % 3 ? new IpvsError("Invalid argument", "EINVAL", 22) : new IpvsError("no answer", "ETIMEDOUT");
        }
        override writeBatch(ops: readonly Op[]): (Error | null)[] {
          return ops.map((op) => {
            const e = this.fail();
            if (e) return e;
            try {
              writeOne(this, op);
              return null;
            } catch (err) {
              return err as Error;
            }
          });
        }
        override addDest(svc: ServiceKey, d: Dest): void {
          const e = this.fail();
          if (e) throw e;
          super.addDest(svc, d);
        }
      }
      const foreign: Service = { family: "inet", protocol: "tcp", address: "203.0.113.9", port: 9, scheduler: "rr", flags: 0, timeout: 0, netmask: 32 };
      configureLog({ level: "off" });
      try {
        fc.assert(
          fc.property(arbTable, arbTable, fc.array(fc.boolean(), { minLength: 1, maxLength: 20 }), (first, second, fails) => {
            const ipvs = new FlakyTable(fails);
            ipvs.broken = false;
            ipvs.addService(foreign);
            ipvs.broken = true;
            const r = new Reconciler(ipvs);
            r.readActual();
            r.sync(first);
            r.resync(second);
            r.resync(second);
            ipvs.broken = false;
            const last = r.resync(second);
            expect(last.errors).toBe(0);
            expect(r.failing.size).toBe(0);
            const listed = listedTable(ipvs);
            const want: Table = new Map([...second, [serviceKeyString(foreign), { service: foreign, dests: new Map() }]]);
            expect(listed).toEqual(want);
            expect(r.counters.driftCorrections).toBe(0); // failed writes are not drift: nobody edited the kernel
          }),
          { seed, numRuns: 300 },
        );
      } finally {
        configureLog({ level: "info" });
      }
    });
  }

  for (const { seed, label } of seeds(6)) {
    test(`property: with connections on random destinations, removals drain (weight 0, never deleted) and the table converges once they end; ${label}`, () => {
      configureLog({ level: "off" });
      try {
        fc.assert(
          fc.property(arbTable, arbTable, fc.array(fc.nat(40), { maxLength: 12 }), (first, second, busy) => {
            const ipvs = new MemoryIpvsTable();
            const r = new Reconciler(ipvs, { drainMs: 60_000 });
            r.sync(first);
            // Some destinations of the first table carry connections.
            const all = ipvs.list().flatMap((s) => s.dests.map((x) => `${serviceKeyString(s)}|${destKeyString(x)}`));
            for (const i of busy) if (all.length) ipvs.activeConnections.set(all[i % all.length]!, 1 + (i % 3));
            r.sync(second);
            // Every busy TCP/SCTP destination of a service that stays is still there, at weight 0
            // unless the config still wants it.
            for (const s of ipvs.list()) {
              for (const x of s.dests) {
                const want = second.get(serviceKeyString(s))?.dests.get(destKeyString(x));
                expect(want ? x.weight === want.weight : x.weight === 0).toBe(true);
              }
            }
            for (const id of ipvs.activeConnections.keys()) {
              const [key, dk] = id.split("|") as [string, string];
              // A busy TCP destination of a service that stays is never deleted while busy.
              const inKernel = ipvs.list().some((s) => serviceKeyString(s) === key && s.dests.some((x) => destKeyString(x) === dk));
              if (second.has(key) && !key.includes("+udp:")) expect(inKernel).toBe(true);
            }
            // The connections end: released, deleted, and the table is the config.
            ipvs.activeConnections.clear();
            r.sync(second, r.releaseDrained());
            expect(listedTable(ipvs)).toEqual(second);
            expect(r.draining.size).toBe(0);
          }),
          { seed, numRuns: 300 },
        );
      } finally {
        configureLog({ level: "info" });
      }
    });
  }

});

describe("reconciler error mapping against the in-memory table", () => {
  const svc: Service = { family: "inet", protocol: "tcp", address: "192.0.2.1", port: 80, scheduler: "wlc", flags: 0, timeout: 0, netmask: 32 };
  const d: Dest = { address: "198.51.100.1", port: 80, method: "masq", weight: 10, upperThreshold: 0, lowerThreshold: 0 };
  const desired: Table = new Map([[serviceKeyString(svc), { service: svc, dests: new Map([[destKeyString(d), d]]) }]]);

  test("EEXIST on add becomes an edit; a stale cache still converges", () => {
    const ipvs = new MemoryIpvsTable();
    ipvs.addService({ ...svc, scheduler: "rr" });
    ipvs.addDest(svc, { ...d, weight: 1 });
    const r = new Reconciler(ipvs); // never read the kernel: believes it is empty
    const res = r.sync(desired);
    expect(res.errors).toBe(0);
    expect(ipvs.list()[0]!.scheduler).toBe("wlc");
    expect(ipvs.list()[0]!.dests[0]!.weight).toBe(10);
  });

  test("deleting what is already gone is not an error", () => {
    const ipvs = new MemoryIpvsTable();
    const r = new Reconciler(ipvs);
    r.sync(desired);
    ipvs.flush(); // removed behind the reconciler's back
    expect(r.sync(new Map()).errors).toBe(0);
  });

  test("foreign services are left alone; owned ones survive a restart through the state dir", () => {
    const dir = mkdtempSync(join(tmpdir(), "clusterf-state-"));
    try {
      const ipvs = new MemoryIpvsTable();
      const foreign: Service = { ...svc, address: "192.0.2.99" };
      ipvs.addService(foreign);
      const r = new Reconciler(ipvs, { stateDir: dir });
      r.readActual();
      r.sync(desired);
      expect(ipvs.list()).toHaveLength(2);
      // A new daemon with an empty config removes what the old one created, not the foreign one.
      expect(afterSuccessor(ipvs, dir)).toEqual(["192.0.2.99"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a daemon killed in the middle of a large sync: its successor removes what it created, the foreign service stays", () => {
    const dir = mkdtempSync(join(tmpdir(), "clusterf-state-"));
    try {
      // 300 services: several slices of diff and writes; the process dies at the third batch.
      const many: Table = new Map();
      for (let i = 0; i < 300; i++) {
        const s: Service = { ...svc, address: `198.51.100.${1 + (i % 250)}`, port: 1000 + i };
        many.set(serviceKeyString(s), { service: s, dests: new Map([[destKeyString(d), d]]) });
      }
      class DyingTable extends MemoryIpvsTable {
        batches = 0;
        override writeBatch(ops: readonly Op[]): (Error | null)[] {
          if (++this.batches === 3) throw new Error("killed");
          return super.writeBatch(ops);
        }
      }
      const ipvs = new DyingTable();
      const foreign: Service = { ...svc, address: "203.0.113.99" };
      ipvs.addService(foreign);
      const r = new Reconciler(ipvs, { stateDir: dir });
      r.readActual();
      expect(() => r.sync(many)).toThrow("killed");
      const created = ipvs.list().length - 1;
      expect(created).toBeGreaterThan(0);
      expect(created).toBeLessThan(300);
      // The successor finds the same table (a fresh copy: the dead one's would throw again).
      const table = new MemoryIpvsTable();
      for (const s of ipvs.list()) {
        table.addService(s);
        for (const x of s.dests) table.addDest(s, x);
      }
      expect(afterSuccessor(table, dir)).toEqual(["203.0.113.99"]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("drift is corrected by a resync and counted", () => {
    const ipvs = new MemoryIpvsTable();
    const r = new Reconciler(ipvs);
    r.sync(desired);
    ipvs.editDest(svc, { ...d, weight: 99 });
    const res = r.resync(desired);
    expect(res.ops).toBe(1);
    expect(r.counters.driftCorrections).toBe(1);
    expect(ipvs.list()[0]!.dests[0]!.weight).toBe(10);
  });

  test("a foreign service added by hand is not counted as drift, and left alone", () => {
    const ipvs = new MemoryIpvsTable();
    const r = new Reconciler(ipvs);
    r.sync(desired);
    ipvs.addService({ ...svc, address: "192.0.2.99" });
    const res = r.resync(desired);
    expect(res.ops).toBe(0);
    expect(r.counters.driftCorrections).toBe(0);
    expect(ipvs.list()).toHaveLength(2);
  });

  test("a service the kernel refuses is reported and retried; the others are programmed; logged once", () => {
    // The in-memory table stands in for a kernel without the "nope" scheduler module.
    class PickyTable extends MemoryIpvsTable {
      override addService(s: Service): void {
        if (s.scheduler === "nope") throw new IpvsError(`${serviceKeyString(s)}: No such file or directory`, "ENOENT", 2);
        super.addService(s);
      }
    }
    const ipvs = new PickyTable();
    const bad: Service = { ...svc, address: "192.0.2.2", scheduler: "nope" };
    const table: Table = new Map([...desired, [serviceKeyString(bad), { service: bad, dests: new Map([[destKeyString(d), d]]) }]]);
    const r = new Reconciler(ipvs);
    const first = r.sync(table);
    expect(first).toMatchObject({ ops: 2, errors: 1, newFailures: 1 });
    expect(ipvs.list().map((s) => s.address)).toEqual(["192.0.2.1"]);
    expect([...r.failing.keys()]).toEqual([serviceKeyString(bad)]);
    // The retry meets the same refusal: not new (logged once, the table counts as in sync).
    const again = r.resync(table);
    expect(again).toMatchObject({ errors: 1, newFailures: 0 });
    // Fixed in the config: programmed, no longer failing.
    const fixed: Service = { ...bad, scheduler: "rr" };
    table.set(serviceKeyString(bad), { service: fixed, dests: new Map([[destKeyString(d), d]]) });
    expect(r.sync(table, [serviceKeyString(bad)])).toMatchObject({ ops: 2, errors: 0 });
    expect(r.failing.size).toBe(0);
    expect(ipvs.list()).toHaveLength(2);
  });

  test("a batch without an answer fails its services and is not re-sent op by op; the retry re-reads", () => {
    let deaf = true;
    class DeafTable extends MemoryIpvsTable {
      override writeBatch(ops: readonly Op[]): (Error | null)[] {
        if (!deaf) return super.writeBatch(ops);
        const e = new IpvsError("netlink: no answer within 5000 ms; socket reopened", "ETIMEDOUT");
        return ops.map(() => e);
      }
      override addService(s: Service): void {
        if (deaf) throw new Error("must not be re-sent alone");
        super.addService(s);
      }
    }
    const ipvs = new DeafTable();
    const other: Service = { ...svc, address: "192.0.2.3" };
    const table: Table = new Map([...desired, [serviceKeyString(other), { service: other, dests: new Map([[destKeyString(d), d]]) }]]);
    const r = new Reconciler(ipvs);
    expect(r.sync(table)).toMatchObject({ ops: 0, errors: 2, newFailures: 2 });
    expect(r.failing.size).toBe(2);
    deaf = false;
    expect(r.resync(table)).toMatchObject({ ops: 4, errors: 0 });
    expect(r.failing.size).toBe(0);
    expect(ipvs.list()).toHaveLength(2);
  });

  test("a destination that leaves the config with active connections drains (weight 0) and goes when they end", () => {
    const ipvs = new MemoryIpvsTable();
    const r = new Reconciler(ipvs, { drainMs: 60_000 });
    const d2: Dest = { ...d, address: "198.51.100.2", weight: 7 };
    const d3: Dest = { ...d, address: "198.51.100.3", weight: 4 };
    const entry = (...ds: Dest[]): Table => new Map([[serviceKeyString(svc), { service: svc, dests: new Map(ds.map((x) => [destKeyString(x), x])) }]]);
    const weights = () => Object.fromEntries(ipvs.list()[0]!.dests.map((x) => [x.address, x.weight]));
    r.sync(entry(d, d2, d3));
    ipvs.activeConnections.set(`${serviceKeyString(svc)}|${destKeyString(d2)}`, 3);

    // d2 (3 connections) and d3 (none) leave: d3 is deleted, d2 drains.
    expect(r.sync(entry(d))).toMatchObject({ ops: 2, errors: 0 });
    expect(weights()).toEqual({ "198.51.100.1": 10, "198.51.100.2": 0 });
    expect(r.sync(entry(d)).ops).toBe(0); // stable while draining
    expect(r.resync(entry(d)).ops).toBe(0);
    expect(r.counters.driftCorrections).toBe(0);
    expect(r.releaseDrained()).toEqual([]);

    // Its connections end: released, then deleted by the sync of that service.
    ipvs.activeConnections.delete(`${serviceKeyString(svc)}|${destKeyString(d2)}`);
    expect(r.releaseDrained()).toEqual([serviceKeyString(svc)]);
    expect(r.sync(entry(d), [serviceKeyString(svc)]).ops).toBe(1);
    expect(weights()).toEqual({ "198.51.100.1": 10 });
    expect(r.draining.size).toBe(0);

    // Back in the config while draining: its weight returns, the drain is forgotten.
    r.sync(entry(d, d2));
    ipvs.activeConnections.set(`${serviceKeyString(svc)}|${destKeyString(d2)}`, 1);
    r.sync(entry(d));
    expect(weights()["198.51.100.2"]).toBe(0);
    r.sync(entry(d, d2));
    expect(weights()["198.51.100.2"]).toBe(7);
    expect(r.draining.size).toBe(0);

    // Deleted by hand while draining: not brought back.
    r.sync(entry(d, d2));
    r.sync(entry(d));
    expect(r.draining.size).toBe(1);
    ipvs.deleteDest(svc, d2);
    expect(r.resync(entry(d)).ops).toBe(0);
    expect(weights()).toEqual({ "198.51.100.1": 10 });
    expect(r.draining.size).toBe(0);

    // Time is up: deleted even with connections left.
    r.sync(entry(d, d2));
    r.sync(entry(d));
    expect(r.draining.size).toBe(1);
    expect(r.releaseDrained(Date.now() + 59_000)).toEqual([]);
    expect(r.releaseDrained(Date.now() + 61_000)).toEqual([serviceKeyString(svc)]);
    r.sync(entry(d));
    expect(weights()).toEqual({ "198.51.100.1": 10 });
  });

  test("no drain for UDP, with drainMs 0, or when the whole service goes", () => {
    const udp: Service = { ...svc, protocol: "udp" };
    for (const [service, drainMs] of [[udp, 60_000], [svc, 0]] as const) {
      const ipvs = new MemoryIpvsTable();
      const r = new Reconciler(ipvs, { drainMs });
      r.sync(new Map([[serviceKeyString(service), { service, dests: new Map([[destKeyString(d), d]]) }]]));
      ipvs.activeConnections.set(`${serviceKeyString(service)}|${destKeyString(d)}`, 5);
      expect(r.sync(new Map([[serviceKeyString(service), { service, dests: new Map() }]])).ops).toBe(1);
      expect(ipvs.list()[0]!.dests).toEqual([]);
      expect(r.draining.size).toBe(0);
    }
    const ipvs = new MemoryIpvsTable();
    const r = new Reconciler(ipvs, { drainMs: 60_000 });
    r.sync(desired);
    ipvs.activeConnections.set(`${serviceKeyString(svc)}|${destKeyString(d)}`, 5);
    r.sync(new Map());
    expect(ipvs.list()).toEqual([]);
    expect(r.draining.size).toBe(0);
  });
});
