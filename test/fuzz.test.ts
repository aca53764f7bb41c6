// Fault suite, case 5: thousands of random trees and random value bytes through parsing, the
// merge and the desired-table computation. Nothing may throw out of the store or the model.
import { expect, test } from "bun:test";
import fc from "fast-check";
import { ConfigStore } from "../src/config/store.ts";
import type { RawValue, SourceName } from "../src/config/source.ts";
import { DEFAULT_DESIRED_OPTIONS, DesiredTable, compileAll } from "../src/model/desired.ts";
import { diffTables } from "../src/ipvs/diff.ts";
import { MemoryIpvsTable } from "../src/ipvs/memory-table.ts";
import { Reconciler } from "../src/daemon/reconciler.ts";

const name = fc.constantFrom("a", "b", "web", "x y", "ü", "..", "");
const key = fc.oneof(
  fc.tuple(name).map(([s]) => `services/${s}/frontend`),
  fc.tuple(name, name).map(([s, b]) => `services/${s}/backends/${b}`),
  fc.tuple(name).map(([r]) => `routes/${r}`),
  fc.array(name, { minLength: 1, maxLength: 6 }).map((p) => p.join("/")),
);
const ip4 = fc.oneof(fc.ipV4(), fc.constantFrom("10.0.0.256", "1.2.3", "", "::1"));
const ip6 = fc.oneof(fc.ipV6(), fc.constantFrom("2001:db8:::1", "", "10.0.0.1"));
const num = fc.oneof(fc.integer({ min: -5, max: 70000 }), fc.double(), fc.constantFrom(0, 1, 80, 2147483647, 2147483648), fc.string());
const cidr = fc.oneof(
  fc.tuple(fc.ipV4(), fc.integer({ min: 0, max: 40 })).map(([a, l]) => `${a}/${l}`),
  fc.tuple(fc.ipV6(), fc.integer({ min: 0, max: 140 })).map(([a, l]) => `${a}/${l}`),
  fc.string(),
);
const objectValue = fc.record(
  {
    ipv4: ip4,
    IPv6: ip6,
    tcp: num,
    udp: num,
    weight: num,
    scheduler: fc.constantFrom("rr", "wlc", "bad name", 5),
    persistent: num,
    Prefix4: cidr,
    Prefix: cidr,
    Gateway: fc.oneof(ip4, ip6),
    Gateway6: ip6,
    IpvsMethod: fc.constantFrom("masq", "droute", "tunnel", "filter", "", "nat", 3),
    junk: fc.anything(),
  },
  { requiredKeys: [] },
);
const text = fc.oneof(
  objectValue.map((o) => JSON.stringify(o)),
  fc.string(),
  fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b).toString("latin1")),
  fc.jsonValue().map((v) => JSON.stringify(v)),
);
const event = fc.record({
  source: fc.constantFrom<SourceName>("local", "etcd"),
  key,
  value: fc.option(fc.tuple(text, fc.constantFrom("json" as const, "yaml" as const)), { nil: null }),
});

test("random trees and bytes never throw out of the store, the model or the diff", () => {
  let errors = 0;
  fc.assert(
    fc.property(fc.array(event, { maxLength: 40 }), fc.boolean(), fc.boolean(), (events, filter, elide) => {
      const store = new ConfigStore({ filterEtcdRoutes: filter, onError: () => errors++ });
      const table = new DesiredTable({ ...DEFAULT_DESIRED_OPTIONS, elide });
      const ipvs = new MemoryIpvsTable();
      const rec = new Reconciler(ipvs);
      table.rebuild(store.services, store.routes);
      for (const e of events) {
        const raw: RawValue | null = e.value ? { text: e.value[0], format: e.value[1], origin: "fuzz" } : null;
        const c = store.apply(e.source, { key: e.key, value: raw });
        if (!c) continue;
        const keys = c.kind === "route" ? table.updateRoutes([c], store.services, store.routes) : table.updateServices([c.service], store.services);
        expect(rec.sync(table.table, keys).errors).toBe(0);
      }
      // The incremental table equals a full recompute, and the kernel (in-memory) equals it too.
      const full = compileAll(store.services, store.routes, { ...DEFAULT_DESIRED_OPTIONS, elide });
      expect(diffTables(full, table.table, () => true)).toEqual([]);
      expect(diffTables(full, rec.actual, () => true)).toEqual([]);
    }),
    { seed: 20261125, numRuns: 3000 },
  );
  expect(errors).toBeGreaterThan(1000); // the generator really produced bad values
});
