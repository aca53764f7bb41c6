// Tables for the diff and reconciler tests: arbitrary IPVS tables (few addresses, so that two
// tables share services and destinations), and the table an IpvsTable lists, in the comparable form.
import fc from "fast-check";
import { normalise } from "../../src/daemon/reconciler.ts";
import { destKeyString, serviceKeyString, type Dest, type IpvsTable, type Service, type Table } from "../../src/ipvs/types.ts";

const arbService: fc.Arbitrary<Service> = fc.record({
  family: fc.constant("inet" as const),
  protocol: fc.constantFrom("tcp" as const, "udp" as const),
  address: fc.constantFrom("192.0.2.1", "192.0.2.2", "192.0.2.3"),
  port: fc.constantFrom(80, 443),
  scheduler: fc.constantFrom("wlc", "rr"),
  flags: fc.constantFrom(0, 1),
  timeout: fc.constantFrom(0, 300),
  netmask: fc.constant(32),
});

const arbDest: fc.Arbitrary<Dest> = fc.record({
  address: fc.constantFrom("198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4"),
  port: fc.constantFrom(80, 8080),
  method: fc.constantFrom("masq" as const, "droute" as const, "tunnel" as const),
  weight: fc.integer({ min: 0, max: 100 }),
  upperThreshold: fc.constant(0),
  lowerThreshold: fc.constant(0),
});

export const arbTable: fc.Arbitrary<Table> = fc
  .array(fc.tuple(arbService, fc.array(arbDest, { maxLength: 5 })), { maxLength: 6 })
  .map((rows) => {
    const t: Table = new Map();
    for (const [s, ds] of rows) t.set(serviceKeyString(s), { service: s, dests: new Map(ds.map((d) => [destKeyString(d), d])) });
    return t;
  });

/** What the table holds, as the reconciler compares it (no counters, no HASHED flag). */
/** The table as listed, with plain Maps (the product's tables keep CompactMaps) to compare with toEqual. */
export const listedTable = (ipvs: IpvsTable): Table =>
  new Map(
    ipvs.list().map((s) => {
      const e = normalise(s);
      return [serviceKeyString(e.service), { service: e.service, dests: new Map(e.dests) }];
    }),
  );
