// The store's merged view against a model made from scratch after every event: random puts,
// deletes, bad values and snapshots from both sources on a few keys, with and without
// -filter-etcd-routes. The store shares a source's service object while only that source has
// the service and keeps a merged copy while both do; whatever it keeps must read as the model.
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { ConfigStore } from "../src/config/store.ts";
import type { KeyEvent, RawValue, SourceName } from "../src/config/source.ts";
import { raw } from "./support/config.ts";
import { seeds } from "./support/seed.ts";

const KEYS = [
  "services/a/frontend",
  "services/a/backends/x",
  "services/a/backends/y",
  "services/b/frontend",
  "services/b/backends/x",
  "routes/r",
];

const valueArb = (key: string) =>
  key.startsWith("routes/")
    ? fc.constantFrom({ IpvsMethod: "masq" }, { IpvsMethod: "droute" }, "not json")
    : key.endsWith("/frontend")
      ? fc.record({ ipv4: fc.constantFrom("192.0.2.1", "192.0.2.2"), tcp: fc.constantFrom(80, 81) })
      : fc.oneof(fc.record({ ipv4: fc.constantFrom("198.51.100.1", "198.51.100.2"), tcp: fc.constant(8080), weight: fc.integer({ min: 0, max: 3 }) }), fc.constant("{bad"));

type Step = { source: SourceName; kind: "put" | "delete"; key: string; value?: unknown } | { source: SourceName; kind: "snapshot"; values: [string, unknown][] };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  fc.record({ source: fc.constantFrom<SourceName>("local", "etcd"), key: fc.constantFrom(...KEYS) }).chain(({ source, key }) =>
    fc.oneof(
      valueArb(key).map((value): Step => ({ source, kind: "put", key, value })),
      fc.constant<Step>({ source, kind: "delete", key }),
    ),
  ),
  fc.record({
    source: fc.constantFrom<SourceName>("local", "etcd"),
    values: fc.subarray(KEYS).chain((keys) => fc.tuple(...keys.map((k) => valueArb(k).map((v): [string, unknown] => [k, v])))),
  }).map((s): Step => ({ kind: "snapshot", ...s })),
);

/** What the merged view must read as: per key, the last good local value, else etcd's. */
function model(good: Record<SourceName, Map<string, unknown>>, filterEtcdRoutes: boolean) {
  const services: Record<string, { frontend?: unknown; backends: Record<string, unknown> }> = {};
  const routes: Record<string, unknown> = {};
  for (const key of KEYS) {
    const v = good.local.get(key) ?? (key.startsWith("routes/") && filterEtcdRoutes ? undefined : good.etcd.get(key));
    if (v === undefined) continue;
    const [top, name, kind, backend] = key.split("/");
    if (top === "routes") {
      routes[name!] = v;
      continue;
    }
    const svc = (services[name!] ??= { backends: {} });
    if (kind === "frontend") svc.frontend = v;
    else svc.backends[backend!] = v;
  }
  return { services, routes };
}

function view(s: ConfigStore) {
  return {
    services: Object.fromEntries([...s.services].map(([n, svc]) => [n, { ...(svc.frontend ? { frontend: svc.frontend } : {}), backends: Object.fromEntries(svc.backends) }])),
    routes: Object.fromEntries(s.routes),
  };
}

describe("merged view", () => {
  for (const filterEtcdRoutes of [false, true]) {
    for (const { seed, label } of seeds(1337)) {
      test(`equals a model of both sources after every event${filterEtcdRoutes ? ", -filter-etcd-routes" : ""}; ${label}`, () => {
        fc.assert(
          fc.property(fc.array(stepArb, { minLength: 1, maxLength: 40 }), (steps) => {
            const store = new ConfigStore({ filterEtcdRoutes });
            // The model keeps each key's last good parsed value, read back from a store of that source alone.
            const good: Record<SourceName, Map<string, unknown>> = { local: new Map(), etcd: new Map() };
            const alone: Record<SourceName, ConfigStore> = { local: new ConfigStore(), etcd: new ConfigStore() };
            const event = (source: SourceName, e: KeyEvent) => {
              store.apply(source, e);
              alone[source].apply(source, e);
            };
            for (const step of steps) {
              if (step.kind === "snapshot") {
                const entries = new Map<string, RawValue>(step.values.map(([k, v]) => [k, raw(v, k)]));
                store.snapshot(step.source, entries);
                alone[step.source].snapshot(step.source, entries);
              } else event(step.source, { key: step.key, value: step.kind === "put" ? raw(step.value, step.key) : null });
              for (const src of ["local", "etcd"] as const) {
                good[src].clear();
                const v = view(alone[src]);
                for (const [n, svc] of Object.entries(v.services)) {
                  if (svc.frontend) good[src].set(`services/${n}/frontend`, svc.frontend);
                  for (const [b, val] of Object.entries(svc.backends)) good[src].set(`services/${n}/backends/${b}`, val);
                }
                for (const [r, val] of Object.entries(v.routes)) good[src].set(`routes/${r}`, val);
              }
              expect(view(store)).toEqual(model(good, filterEtcdRoutes));
            }
          }),
          { seed, numRuns: 300 },
        );
      });
    }
  }
});
