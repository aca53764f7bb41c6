import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { applyOps, diffService, diffTables } from "../src/ipvs/diff.ts";
import { serviceKeyString, type Dest, type Service, type Table, type TableEntry } from "../src/ipvs/types.ts";
import { seeds } from "./support/seed.ts";
import { arbTable } from "./support/tables.ts";

const clone = (t: Table): Table => new Map([...t].map(([k, e]) => [k, { service: { ...e.service }, dests: new Map([...e.dests].map(([dk, d]) => [dk, { ...d }])) }]));

describe("diff", () => {
  for (const { seed, label } of seeds(1)) {
    test(`property: applying the diff to the actual table gives the desired table; ${label}`, () => {
      fc.assert(
        fc.property(arbTable, arbTable, (desired, actual) => {
          const t = clone(actual);
          applyOps(t, diffTables(desired, actual, () => true));
          expect(t).toEqual(desired);
        }),
        { seed, numRuns: 500 },
      );
    });
  }

  for (const { seed, label } of seeds(2)) {
    test(`property: a table diffed against itself gives no operations; ${label}`, () => {
      fc.assert(
        fc.property(arbTable, (t) => {
          expect(diffTables(t, clone(t), () => true)).toEqual([]);
        }),
        { seed, numRuns: 300 },
      );
    });
  }

  for (const { seed, label } of seeds(3)) {
    test(`property: services that are not owned and not desired are never touched; ${label}`, () => {
      fc.assert(
        fc.property(arbTable, arbTable, (desired, actual) => {
          const ops = diffTables(desired, actual, () => false);
          for (const op of ops) expect(desired.has(serviceKeyString(op.service))).toBe(true);
        }),
        { seed, numRuns: 300 },
      );
    });
  }

  test("only config fields changing → edits in place, never delete+add", () => {
    const svc: Service = { family: "inet", protocol: "tcp", address: "192.0.2.1", port: 80, scheduler: "wlc", flags: 0, timeout: 0, netmask: 32 };
    const d: Dest = { address: "198.51.100.1", port: 80, method: "masq", weight: 10, upperThreshold: 0, lowerThreshold: 0 };
    const actual: TableEntry = { service: svc, dests: new Map([["198.51.100.1:80", d]]) };
    const desired: TableEntry = {
      service: { ...svc, scheduler: "rr", flags: 1, timeout: 60 },
      dests: new Map([["198.51.100.1:80", { ...d, weight: 0, method: "droute" }]]),
    };
    expect(diffService(desired, actual, true).map((o) => o.type)).toEqual(["edit-service", "edit-dest"]);
  });

  test("the kernel's HASHED flag is not a difference", () => {
    const svc: Service = { family: "inet", protocol: "tcp", address: "192.0.2.1", port: 80, scheduler: "wlc", flags: 0, timeout: 0, netmask: 32 };
    expect(diffService({ service: svc, dests: new Map() }, { service: { ...svc, flags: 2 }, dests: new Map() }, true)).toEqual([]);
  });
});
