// The reconciler's cache of the kernel keeps the desired table's destination maps and objects
// instead of copies (copy on write): a write to the cache must never change a desired table, not
// the current one nor one that comes back later (a config service that wins a VIP again).
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { Reconciler } from "../src/daemon/reconciler.ts";
import { ConfigStore } from "../src/config/store.ts";
import { MemoryIpvsTable } from "../src/ipvs/memory-table.ts";
import { destKeyString, serviceKeyString, type Dest, type Service, type Table } from "../src/ipvs/types.ts";
import { DEFAULT_DESIRED_OPTIONS, DesiredTable, compileAll } from "../src/model/desired.ts";
import { configureLog } from "../src/util/log.ts";
import { del, entries, put } from "./support/config.ts";
import { seeds } from "./support/seed.ts";
import { listedTable } from "./support/tables.ts";

configureLog({ level: "off" });

/** A deep copy in plain values, to compare a table with itself later. */
const frozen = (t: Table) => [...t].map(([k, e]) => [k, { ...e.service }, [...e.dests].map(([dk, d]) => [dk, { ...d }])]);

describe("the cache shares the desired table's destinations", () => {
  test("a VIP won by another config service and then won back keeps its first description", () => {
    const store = new ConfigStore();
    store.snapshot("etcd", entries({
      "services/web/frontend": { ipv4: "192.0.2.1", tcp: 80 },
      "services/web/backends/a": { ipv4: "198.51.100.1", tcp: 8080 },
      "services/web/backends/b": { ipv4: "198.51.100.2", tcp: 8080 },
    }));
    const desired = new DesiredTable(DEFAULT_DESIRED_OPTIONS);
    desired.rebuild(store.services, store.routes);
    const ipvs = new MemoryIpvsTable();
    const rec = new Reconciler(ipvs);
    rec.sync(desired.table);
    const first = frozen(desired.table);
    // "a-web" sorts first: it wins the VIP, the cache's destinations change.
    for (const e of [put("services/a-web/frontend", { ipv4: "192.0.2.1", tcp: 80 }), put("services/a-web/backends/z", { ipv4: "198.51.100.9", tcp: 9090, weight: 3 })]) {
      const c = store.apply("etcd", e)!;
      expect(rec.sync(desired.table, desired.updateServices([(c as { service: string }).service], store.services)).errors).toBe(0);
    }
    expect(frozen(listedTable(ipvs))).toEqual(frozen(desired.table));
    // It leaves: "web" describes the VIP again, as it did at first.
    for (const e of [del("services/a-web/backends/z"), del("services/a-web/frontend")]) {
      const c = store.apply("etcd", e)!;
      expect(rec.sync(desired.table, desired.updateServices([(c as { service: string }).service], store.services)).errors).toBe(0);
    }
    expect(frozen(desired.table)).toEqual(first);
    expect(frozen(compileAll(store.services, store.routes, DEFAULT_DESIRED_OPTIONS))).toEqual(first);
    expect(frozen(listedTable(ipvs))).toEqual(frozen(desired.table));
  });

  const svc = (address: string): Service => ({ family: "inet", protocol: "tcp", address, port: 80, scheduler: "wlc", flags: 0, timeout: 0, netmask: 32 });
  const destArb = fc.record({
    address: fc.constantFrom("198.51.100.1", "198.51.100.2", "198.51.100.3"),
    port: fc.constantFrom(80, 8080),
    method: fc.constantFrom("masq" as const, "droute" as const),
    weight: fc.integer({ min: 0, max: 3 }),
    upperThreshold: fc.constant(0),
    lowerThreshold: fc.constant(0),
  });
  /** Entries (service key → destinations), each table made of them: tables share entries and maps. */
  const entriesArb = fc.array(fc.tuple(fc.constantFrom("192.0.2.1", "192.0.2.2"), fc.array(destArb, { maxLength: 4 })), { minLength: 1, maxLength: 6 });

  for (const { seed, label } of seeds(7)) {
    test(`property: syncing tables that share entries changes none of them; ${label}`, () => {
      fc.assert(
        fc.property(entriesArb, fc.array(fc.array(fc.nat(), { maxLength: 3 }), { minLength: 1, maxLength: 8 }), (made, picks) => {
          const pool = made.map(([vip, ds]) => ({ service: svc(vip), dests: new Map<string, Dest>(ds.map((d) => [destKeyString(d), d])) }));
          const tables: Table[] = picks.map((p) => {
            const t: Table = new Map();
            for (const i of p) {
              const e = pool[i % pool.length]!;
              t.set(serviceKeyString(e.service), e);
            }
            return t;
          });
          const before = tables.map(frozen);
          const ipvs = new MemoryIpvsTable();
          const rec = new Reconciler(ipvs);
          for (const t of tables) {
            expect(rec.sync(t).errors).toBe(0);
            expect(listedTable(ipvs)).toEqual(t);
            expect(tables.map(frozen)).toEqual(before);
          }
        }),
        { seed, numRuns: 500 },
      );
    });
  }
});
