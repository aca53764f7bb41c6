// Fault suite, case 5: thousands of random config trees through parsing, the merge of the two
// sources, the desired table and the reconciler. The trees are mostly valid (services with
// frontends and backends, routes with gateways, filter and methods, keys in any case, JSON and
// YAML), with a minority of corrupt values (bad JSON, bad values, wrong types, odd keys and
// paths). Nothing may throw; the result is compared with an independent model
// (test/model/ipvs-model.ts) fed from the events themselves: the store keeps each key's last good
// value, the local source wins, -filter-etcd-routes drops etcd routes.
import { expect, test } from "bun:test";
import fc from "fast-check";
import YAML from "yaml";
import { ConfigStore } from "../src/config/store.ts";
import type { RawValue, SourceName } from "../src/config/source.ts";
import { DEFAULT_DESIRED_OPTIONS, DesiredTable, compileAll, type DesiredOptions } from "../src/model/desired.ts";
import { applyOps, diffTables } from "../src/ipvs/diff.ts";
import { MemoryIpvsTable } from "../src/ipvs/memory-table.ts";
import { Reconciler } from "../src/daemon/reconciler.ts";
import { destKeyString, serviceKeyString, type Dest, type DestKey, type Service, type ServiceKey, type Table } from "../src/ipvs/types.ts";
import { entryKey, modelTable, type ModelBackend, type ModelConfig, type ModelEntry, type ModelFrontend, type ModelRoute } from "./model/ipvs-model.ts";
import { seeds } from "./support/seed.ts";

// ---- valid values: the model's view and the text the product reads ----

const VIP4 = ["192.0.2.1", "192.0.2.2", "192.0.2.3"];
const VIP6 = ["2001:db8::1", "2001:db8::2"];
const HOST4 = ["198.51.100.1", "198.51.100.2", "198.51.100.65", "198.51.100.130", "203.0.113.1", "203.0.113.200"];
const HOST6 = ["2001:db8:100::1", "2001:db8:100::41", "2001:db8:100::82", "2001:db8:200::1"];
const PREFIX4 = ["198.51.100.0/24", "198.51.100.0/25", "198.51.100.64/26", "198.51.100.77/26", "198.51.100.2/32", "203.0.113.0/24", "0.0.0.0/0"];
const PREFIX6 = ["2001:db8:100::/48", "2001:db8:100::40/122", "2001:db8::/32", "::/0"];
const GATEWAY4 = ["192.0.2.254", "192.0.2.253"];
const GATEWAY6 = ["2001:db8::fe", "2001:db8::fd"];

/** A field in any letter case (keys match case-insensitively). */
const anyCase = (name: string) =>
  fc.constantFrom(name, name.toLowerCase(), name.toUpperCase(), name[0]!.toUpperCase() + name.slice(1).toLowerCase());

type Field = [string, unknown];
/** A present field rendered under a key spelled in any case. */
const field = (name: string, v: unknown): fc.Arbitrary<Field[]> => anyCase(name).map((k) => [[k, v]]);
/** An absent field: left out, or null (keeps the default), or "" where a string means absent. */
const absent = (name: string, emptyString: boolean): fc.Arbitrary<Field[]> =>
  fc.oneof({ weight: 4, arbitrary: fc.constant<Field[]>([]) }, { weight: 1, arbitrary: field(name, null) }, { weight: emptyString ? 1 : 0, arbitrary: field(name, "") });
const opt = <T>(name: string, values: readonly T[], emptyString = false, absentWeight = 1): fc.Arbitrary<{ v?: T; fields: Field[] }> =>
  fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom(...values).chain((v) => field(name, v).map((fields) => ({ v, fields }))) },
    { weight: absentWeight, arbitrary: absent(name, emptyString).map((fields) => ({ fields })) },
  );
/** Unknown keys: warned about, the value still applies. */
const junk: fc.Arbitrary<Field[]> = fc.oneof(
  { weight: 5, arbitrary: fc.constant<Field[]>([]) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom("junk", "comment", "ipv5", "Weight2"), fc.jsonValue()).map((f) => [f]) },
);
/**
 * The same key twice in one object, spelled differently: the last one wins. `decoy` puts an
 * earlier spelling with another valid value in front of the real field.
 */
const withDecoy = (fields: Field[], decoys: Record<string, unknown>): fc.Arbitrary<Field[]> =>
  fc.boolean().map((on) => {
    if (!on) return fields;
    const first = fields.find(([k]) => k.toLowerCase() in decoys);
    if (!first) return fields;
    const name = first[0].toLowerCase();
    const spelling = first[0] === name ? name.toUpperCase() : name;
    return [[spelling, decoys[name]], ...fields];
  });

type Valid<T> = { model: T; fields: Field[] };

const frontend: fc.Arbitrary<Valid<ModelFrontend>> = fc
  .record({
    ipv4: opt("ipv4", VIP4, true),
    ipv6: opt("ipv6", VIP6, true, 2),
    tcp: opt("tcp", [80, 443]),
    udp: opt("udp", [53, 80], false, 2),
    scheduler: opt("scheduler", ["rr", "wlc", "sh"], true),
    persistent: opt("persistent", [0, 300], false, 3),
    junk,
  })
  .chain((r) => {
    const model: ModelFrontend = {};
    if (r.ipv4.v) model.ipv4 = r.ipv4.v;
    if (r.ipv6.v) model.ipv6 = r.ipv6.v;
    if (r.tcp.v) model.tcp = r.tcp.v;
    if (r.udp.v) model.udp = r.udp.v;
    if (r.scheduler.v) model.scheduler = r.scheduler.v;
    if (r.persistent.v) model.persistent = r.persistent.v;
    const fields = [r.ipv4, r.ipv6, r.tcp, r.udp, r.scheduler, r.persistent].flatMap((f) => f.fields).concat(r.junk);
    return withDecoy(fields, { ipv4: "192.0.2.99", tcp: 9 }).map((f) => ({ model, fields: f }));
  });

const backend: fc.Arbitrary<Valid<ModelBackend>> = fc
  .record({
    ipv4: opt("ipv4", HOST4, true),
    ipv6: opt("ipv6", HOST6, true, 2),
    tcp: opt("tcp", [80, 8080]),
    udp: opt("udp", [53, 5353], false, 2),
    weight: opt("weight", [0, 1, 5, 10, 2000000000, 2147483647], false, 2),
    junk,
  })
  .chain((r) => {
    const model: ModelBackend = {};
    if (r.ipv4.v) model.ipv4 = r.ipv4.v;
    if (r.ipv6.v) model.ipv6 = r.ipv6.v;
    if (r.tcp.v) model.tcp = r.tcp.v;
    if (r.udp.v) model.udp = r.udp.v;
    if (r.weight.v !== undefined) model.weight = r.weight.v;
    const fields = [r.ipv4, r.ipv6, r.tcp, r.udp, r.weight].flatMap((f) => f.fields).concat(r.junk);
    return withDecoy(fields, { weight: 77, ipv4: "198.51.100.99" }).map((f) => ({ model, fields: f }));
  });

const route: fc.Arbitrary<Valid<ModelRoute>> = fc
  .record({
    prefix4: opt("Prefix4", PREFIX4, true),
    prefix6: opt("Prefix6", PREFIX6, true, 2),
    gateway4: opt("Gateway4", GATEWAY4, true, 3),
    gateway6: opt("Gateway6", GATEWAY6, true, 4),
    method: opt("IpvsMethod", ["masq", "droute", "tunnel", "filter"] as const, true),
    // The family-neutral names, family taken from the value (for at most one family each).
    neutralPrefix: fc.constantFrom(undefined, 4, 6),
    neutralGateway: fc.constantFrom(undefined, 4, 6),
    junk,
  })
  .map((r) => {
    // A route with a prefix takes gateways only of the families it has a prefix for (docs/config.md).
    if (r.prefix4.v || r.prefix6.v) {
      if (!r.prefix4.v && r.gateway4.v) r.gateway4 = { fields: [] };
      if (!r.prefix6.v && r.gateway6.v) r.gateway6 = { fields: [] };
    }
    const model: ModelRoute = {};
    if (r.prefix4.v) model.prefix4 = r.prefix4.v;
    if (r.prefix6.v) model.prefix6 = r.prefix6.v;
    if (r.gateway4.v) model.gateway4 = r.gateway4.v;
    if (r.gateway6.v) model.gateway6 = r.gateway6.v;
    if (r.method.v) model.method = r.method.v;
    const neutral = (fields: Field[], to: string, on: boolean): Field[] => (on ? fields.map(([, v]) => [to, v]) : fields);
    const fields = [
      ...neutral(r.prefix4.fields, "Prefix", r.neutralPrefix === 4 && !!r.prefix4.v),
      ...neutral(r.prefix6.fields, "prefix", r.neutralPrefix === 6 && !!r.prefix6.v),
      ...neutral(r.gateway4.fields, "Gateway", r.neutralGateway === 4 && !!r.gateway4.v),
      ...neutral(r.gateway6.fields, "GATEWAY", r.neutralGateway === 6 && !!r.gateway6.v),
      ...r.method.fields,
      ...r.junk,
    ];
    return { model, fields };
  });

// ---- keys, corruptions, events ----

const serviceName = fc.constantFrom("a", "web", "x y", "ü");
const backendName = fc.constantFrom("b1", "b2", "B1", "b3", "é");
const routeName = fc.constantFrom("r1", "r2", "R3", "default", "z");

type Kind = "frontend" | "backend" | "route";
const keyOf = (kind: Kind): fc.Arbitrary<string> =>
  kind === "frontend"
    ? serviceName.map((s) => `services/${s}/frontend`)
    : kind === "backend"
      ? fc.tuple(serviceName, backendName).map(([s, b]) => `services/${s}/backends/${b}`)
      : routeName.map((r) => `routes/${r}`);

/** Keys outside the layout: warned about or skipped, never config. */
const oddKey = fc.constantFrom("services/a", "services/a/backends", "services/a/frontend/x", "services/../frontend", "services//frontend", "routes/r1/x", "README", "other/services/a/frontend", "services/a/backends/.");

/** Values that must be refused whole, for a key of the given kind (the key keeps its last good value). */
const BAD_VALUES: Record<Kind, Record<string, unknown>[]> = {
  frontend: [{ tcp: 0 }, { tcp: 65536 }, { tcp: "80" }, { udp: 80.5 }, { ipv4: "192.0.2.256" }, { ipv4: "2001:db8::1" }, { ipv6: "2001:db8:::1" }, { ipv4: 5 }, { scheduler: "bad name" }, { scheduler: 5 }, { persistent: -1 }],
  backend: [{ weight: -1 }, { weight: 2147483648 }, { weight: "10" }, { weight: 1.5 }, { tcp: 0 }, { ipv4: "198.51.100" }, { ipv6: "192.0.2.1" }, { udp: [53] }],
  route: [{ Prefix4: "198.51.100.0/33" }, { Prefix4: "2001:db8::/48" }, { Prefix4: "198.51.100.0" }, { Prefix6: "2001:db8::/129" }, { IpvsMethod: "nat" }, { IpvsMethod: 3 }, { Gateway4: "2001:db8::1" }, { Gateway: "x" }, { Prefix: "junk/8" },
    { Prefix: "", Prefix4: "198.51.100.0/24", Prefix6: "", Gateway6: "2001:db8::fe" }, { Prefix: "", Prefix4: "", Prefix6: "2001:db8::/32", Gateway4: "192.0.2.254" }],
};
const badText = (kind: Kind, valid: fc.Arbitrary<Valid<unknown>>): fc.Arbitrary<{ text: string; format: "json" | "yaml" }> =>
  fc.oneof(
    // A valid value spoiled by one bad field.
    fc.tuple(valid, fc.constantFrom(...BAD_VALUES[kind])).map(([v, bad]) => {
      // Every spelling of the bad field goes, or a later spelling of it would win.
      const spoilt = Object.keys(bad).map((k) => k.toLowerCase());
      const fields = v.fields.filter(([k]) => !spoilt.includes(k.toLowerCase()));
      return { text: JSON.stringify(Object.fromEntries([...fields, ...Object.entries(bad)])), format: "json" as const };
    }),
    // Not an object, or not JSON at all ("#" first: no JSON text starts so).
    fc.constantFrom("", "  ", "null", "[]", "42", '"frontend"', '{"ipv4": "192.0.2.1"', "{ipv4: 1}", "{} {}").map((text) => ({ text, format: "json" as const })),
    fc.string({ maxLength: 40 }).map((s) => ({ text: `#${s}`, format: "json" as const })),
    fc.constantFrom("- a\n- b\n", "just text", "ipv4: [\n", "42\n").map((text) => ({ text, format: "yaml" as const })),
  );

type Event =
  | { source: SourceName; key: string; kind: Kind; model: ModelFrontend | ModelBackend | ModelRoute; text: string; format: "json" | "yaml" }
  | { source: SourceName; key: string; delete: true }
  | { source: SourceName; key: string; bad: true; text: string; format: "json" | "yaml" };

const source = fc.constantFrom<SourceName>("local", "etcd");
const VALID: Record<Kind, fc.Arbitrary<Valid<ModelFrontend | ModelBackend | ModelRoute>>> = { frontend, backend, route };
const kind = fc.constantFrom<Kind>("frontend", "backend", "backend", "backend", "route");

const event: fc.Arbitrary<Event> = fc.oneof(
  {
    weight: 75,
    arbitrary: kind.chain((k) =>
      fc.record({ source, key: keyOf(k), v: VALID[k], yaml: fc.boolean() }).map(({ source, key, v, yaml }) => {
        const obj = Object.fromEntries(v.fields);
        return { source, key, kind: k, model: v.model, text: yaml ? YAML.stringify(obj) : JSON.stringify(obj), format: yaml ? ("yaml" as const) : ("json" as const) };
      }),
    ),
  },
  { weight: 10, arbitrary: kind.chain((k) => fc.record({ source, key: keyOf(k), delete: fc.constant(true as const) })) },
  { weight: 12, arbitrary: kind.chain((k) => fc.record({ source, key: keyOf(k), bad: fc.constant(true as const), t: badText(k, VALID[k]) }).map(({ t, ...e }) => ({ ...e, ...t }))) },
  { weight: 3, arbitrary: fc.record({ source, key: oddKey, bad: fc.constant(true as const), t: VALID.backend }).map(({ t, ...e }) => ({ ...e, text: JSON.stringify(Object.fromEntries(t.fields)), format: "json" as const })) },
);

// ---- the model of the store ----

type Stored = { kind: Kind; model: ModelFrontend | ModelBackend | ModelRoute };

/** The merged config: per key the local value, else etcd's (whose routes -filter-etcd-routes drops). */
function mergedConfig(values: Record<SourceName, Map<string, Stored>>, filterEtcdRoutes: boolean): ModelConfig {
  const cfg: ModelConfig = { services: {}, routes: {} };
  const keys = new Set([...values.local.keys(), ...values.etcd.keys()]);
  for (const key of keys) {
    const local = values.local.get(key);
    const etcd = values.etcd.get(key);
    const s = local ?? (etcd && !(filterEtcdRoutes && etcd.kind === "route") ? etcd : undefined);
    if (!s) continue;
    const parts = key.split("/");
    if (s.kind === "route") {
      cfg.routes[parts[1]!] = s.model as ModelRoute;
      continue;
    }
    const svc = (cfg.services[parts[1]!] ??= { backends: {} });
    if (s.kind === "frontend") svc.frontend = s.model as ModelFrontend;
    else svc.backends[parts[3]!] = s.model as ModelBackend;
  }
  return cfg;
}

// ---- the product's tables in the model's shape ----

type Row = { service: Service; dests: Iterable<Dest> };

/** A product table in the model's shape; fields the model leaves out must have their fixed values. */
function shape(rows: Iterable<Row>): { entries: ModelEntry[]; odd: unknown[] } {
  const odd: unknown[] = [];
  const entries: ModelEntry[] = [];
  for (const { service: s, dests } of rows) {
    if (s.flags !== (s.timeout ? 1 : 0) || s.netmask !== (s.family === "inet" ? 32 : 128)) odd.push(s);
    const ds = [...dests].map((d) => {
      if (d.upperThreshold || d.lowerThreshold || (d.method !== "masq" && d.method !== "droute" && d.method !== "tunnel")) odd.push(d);
      return { address: d.address, port: d.port, method: d.method as "masq", weight: d.weight };
    });
    ds.sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : a.port - b.port));
    const key = entryKey(s.family, s.protocol, s.address, s.port);
    entries.push({ key, family: s.family, protocol: s.protocol as "tcp", address: s.address, port: s.port, scheduler: s.scheduler, persistent: s.timeout, dests: ds });
  }
  entries.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  return { entries, odd };
}
const rowsOf = (t: Table): Row[] => [...t.values()].map((e) => ({ service: e.service, dests: e.dests.values() }));

// ---- a kernel that holds something before the daemon starts ----

/** The in-memory table, noting which services got a successful write. */
class RecordingTable extends MemoryIpvsTable {
  readonly written = new Set<string>();
  private note(s: Service | ServiceKey): void {
    this.written.add(entryKey(s.family, s.protocol, s.address, s.port));
  }
  override addService(s: Service): void {
    super.addService(s);
    this.note(s);
  }
  override editService(s: Service): void {
    super.editService(s);
    this.note(s);
  }
  override deleteService(s: ServiceKey): void {
    super.deleteService(s);
    this.note(s);
  }
  override addDest(s: ServiceKey, d: Dest): void {
    super.addDest(s, d);
    this.note(s);
  }
  override editDest(s: ServiceKey, d: Dest): void {
    super.editDest(s, d);
    this.note(s);
  }
  override deleteDest(s: ServiceKey, d: DestKey): void {
    super.deleteDest(s, d);
    this.note(s);
  }
}

const startService: fc.Arbitrary<Row> = fc.record({
  service: fc.oneof(
    fc.record({ family: fc.constant("inet" as const), address: fc.constantFrom(...VIP4, "203.0.113.50") }),
    fc.record({ family: fc.constant("inet6" as const), address: fc.constantFrom(...VIP6) }),
  ).chain((a) =>
    fc.record({
      family: fc.constant(a.family),
      address: fc.constant(a.address),
      protocol: fc.constantFrom("tcp" as const, "udp" as const),
      port: fc.constantFrom(53, 80, 443),
      scheduler: fc.constantFrom("wlc", "rr"),
      flags: fc.constant(0),
      timeout: fc.constant(0),
      netmask: fc.constant(a.family === "inet" ? 32 : 128),
    }),
  ),
  dests: fc.array(
    fc.record({
      address: fc.constantFrom(...HOST4, ...GATEWAY4, ...HOST6),
      port: fc.constantFrom(80, 8080),
      method: fc.constantFrom("masq" as const, "droute" as const),
      weight: fc.nat(50),
      upperThreshold: fc.constant(0),
      lowerThreshold: fc.constant(0),
    }),
    { maxLength: 3 },
  ),
});

for (const { seed, label } of seeds(20261125)) {
  test(`random config trees (mostly valid, some corrupt) give exactly the model's table, incrementally and in the kernel; ${label}`, () => {
    let runs = 0;
    let withDests = 0;
    let errors = 0;
    let gatewayDests = 0;
    fc.assert(
      fc.property(
        fc.array(event, { minLength: 12, maxLength: 40, size: "max" }),
        fc.record({ filter: fc.boolean(), elide: fc.boolean(), defaultMethod: fc.constantFrom("masq" as const, "droute" as const, "tunnel" as const), scheduler: fc.constantFrom("wlc", "lc") }),
        fc.array(startService, { maxLength: 4 }),
        (events, o, start) => {
          runs++;
          const opts: DesiredOptions = { ...DEFAULT_DESIRED_OPTIONS, elide: o.elide, defaultMethod: o.defaultMethod, scheduler: o.scheduler };
          const store = new ConfigStore({ filterEtcdRoutes: o.filter, onError: () => errors++ });
          const table = new DesiredTable(opts);
          const ipvs = new RecordingTable();
          for (const row of start) {
            try {
              ipvs.addService(row.service);
            } catch {} // the same service twice in the start table: the first stays
            for (const d of row.dests) {
              if (d.address.includes(":") !== (row.service.family === "inet6")) continue;
              try {
                ipvs.addDest(row.service, d);
              } catch {}
            }
          }
          // The kernel before, as plain config data (for the diff below) and in the model's shape.
          const ipvs0 = ipvs.list().map(({ dests, ...service }) => ({ service, dests: dests.map(({ address, port, method, weight, upperThreshold, lowerThreshold }) => ({ address, port, method, weight, upperThreshold, lowerThreshold })) }));
          const before = shape(ipvs0);
          ipvs.written.clear();
          const rec = new Reconciler(ipvs);
          rec.readActual();
          table.rebuild(store.services, store.routes);
          rec.sync(table.table);

          const values: Record<SourceName, Map<string, Stored>> = { local: new Map(), etcd: new Map() };
          const everDesired = new Set<string>();
          let model: ModelEntry[] = [];
          for (const e of events) {
            const raw: RawValue | null = "delete" in e ? null : { text: e.text, format: e.format, origin: "fuzz" };
            if ("kind" in e) values[e.source].set(e.key, { kind: e.kind, model: e.model });
            else if ("delete" in e) values[e.source].delete(e.key);
            const c = store.apply(e.source, { key: e.key, value: raw });
            if (c) {
              const keys = c.kind === "route" ? table.updateRoutes([c], store.services, store.routes) : table.updateServices([c.service], store.services);
              expect(rec.sync(table.table, keys).errors).toBe(0);
            }
            model = modelTable(mergedConfig(values, o.filter), opts);
            for (const m of model) everDesired.add(m.key);
          }

          // A fresh computation equals the incremental one, and both equal the model.
          const full = shape(rowsOf(compileAll(store.services, store.routes, opts)));
          expect(full).toEqual({ entries: model, odd: [] });
          expect(shape(rowsOf(table.table))).toEqual({ entries: model, odd: [] });
          // The diff from the starting kernel, applied to it, gives the desired table (owning all).
          const startTable: Table = new Map(ipvs0.map((r) => [serviceKeyString(r.service), { service: r.service, dests: new Map(r.dests.map((d) => [destKeyString(d), d])) }]));
          applyOps(startTable, diffTables(table.table, startTable, () => true));
          expect(shape(rowsOf(startTable))).toEqual({ entries: model, odd: [] });
          // The kernel followed every event: the model, plus the services that were there before and
          // that the daemon never wrote to (not its own: never removed). It writes only to services
          // that the config describes or described.
          expect([...ipvs.written].filter((k) => !everDesired.has(k))).toEqual([]);
          const foreign = before.entries.filter((e) => !ipvs.written.has(e.key) && !model.some((m) => m.key === e.key));
          const want = [...model, ...foreign].sort((a, b) => (a.key < b.key ? -1 : 1));
          expect(shape(ipvs.list().map((s) => ({ service: s, dests: s.dests })))).toEqual({ entries: want, odd: [] });
          // And a restart on it writes nothing.
          const again = new Reconciler(ipvs);
          again.readActual();
          expect(again.sync(compileAll(store.services, store.routes, opts)).ops).toBe(0);

          const dests = model.flatMap((m) => m.dests);
          if (dests.length) withDests++;
          if (dests.some((d) => GATEWAY4.includes(d.address) || GATEWAY6.includes(d.address))) gatewayDests++;
        },
      ),
      { seed, numRuns: 1000, includeErrorInReport: true },
    );
    console.log(`${runs} runs: ${withDests} end with destinations, ${gatewayDests} with a gateway destination; ${errors} bad values refused`);
    // The trees are mostly valid: most runs reach the model and the diff with real destinations.
    expect(withDests / runs).toBeGreaterThanOrEqual(0.7);
    expect(gatewayDests / runs).toBeGreaterThanOrEqual(0.2);
    expect(errors).toBeGreaterThan(runs); // and the corruptions were really refused
  });
}
