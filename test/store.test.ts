import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { ConfigStore, type ConfigProblem } from "../src/config/store.ts";
import { parseKeyPath } from "../src/config/keys.ts";
import type { SourceName } from "../src/config/source.ts";
import { del, entries, put } from "./support/config.ts";

function store(opts: { filterEtcdRoutes?: boolean } = {}) {
  const errors: ConfigProblem[] = [];
  const warnings: ConfigProblem[] = [];
  const s = new ConfigStore({ ...opts, onError: (p) => errors.push(p), onWarning: (p) => warnings.push(p) });
  return { s, errors, warnings };
}

describe("key paths", () => {
  test.each([
    ["services/web/frontend", { kind: "frontend", service: "web" }],
    ["services/web/backends/b1", { kind: "backend", service: "web", backend: "b1" }],
    ["routes/r1", { kind: "route", route: "r1" }],
    ["services/web", undefined],
    ["services/web/backends", undefined],
    ["services/web/backends/b1/extra", undefined],
    ["services/web/other", undefined],
    ["routes", undefined],
    ["routes/a/b", undefined],
    ["junk/x", undefined],
    ["services//frontend", undefined],
    ["", undefined],
    ["services/../frontend", undefined],
    ["services/./frontend", undefined],
    ["routes/..", undefined],
    ["services/web/backends/..", undefined],
    ["routes/a\u0000b", undefined],
    ["routes/a\nb", undefined],
    ["routes/" + "x".repeat(256), undefined],
    ["routes/" + "x".repeat(255), { kind: "route", route: "x".repeat(255) }],
    ["routes/a..b", { kind: "route", route: "a..b" }],
    ["health/mid1/web/b1", { kind: "health", route: "mid1", service: "web", backend: "b1" }],
    ["health/mid1/web", undefined],
    ["health/mid1/web/b1/x", undefined],
    ["health/mid1/../b1", undefined],
    ["routes/ünïcødé name", { kind: "route", route: "ünïcødé name" }],
  ])("%s", (key, want) => {
    expect(parseKeyPath(key)).toEqual(want as never);
  });
});

describe("bounds", () => {
  test("a value over 1 MiB is refused with its size, the last good value stays", () => {
    const { s, errors } = store();
    s.apply("etcd", put("routes/r", '{"IpvsMethod": "masq"}'));
    s.apply("etcd", put("routes/r", `{"IpvsMethod": "droute", "x": "${"a".repeat(1024 * 1024)}"}`));
    expect(errors.map((e) => e.message)).toEqual([expect.stringMatching(/^value is \d+ bytes, larger than the limit of 1048576; the last good value stays in force$/)]);
    expect(s.routes.get("r")?.method).toBe("masq");
  });
});

describe("merging sources", () => {
  test("local wins over etcd for the same key; services merge by name", () => {
    const { s } = store();
    s.snapshot("etcd", entries({
      "services/web/frontend": { ipv4: "192.0.2.1", tcp: 80 },
      "services/web/backends/a": { ipv4: "198.51.100.1", tcp: 8080 },
      "services/web/backends/b": { ipv4: "198.51.100.2", tcp: 8080, weight: 5 },
    }));
    s.snapshot("local", entries({
      "services/web/frontend": { ipv4: "192.0.2.2", tcp: 81 },
      "services/web/backends/b": { ipv4: "198.51.100.3", tcp: 8080 },
    }));
    const web = s.services.get("web")!;
    expect(web.frontend).toEqual({ ipv4: "192.0.2.2", tcp: 81, persistent: 0 });
    expect([...web.backends.keys()].sort()).toEqual(["a", "b"]);
    expect(web.backends.get("b")!.ipv4).toBe("198.51.100.3");
    // Removing the local value falls back to etcd's.
    s.apply("local", del("services/web/backends/b"));
    expect(web.backends.get("b")!.ipv4).toBe("198.51.100.2");
  });

  test("-filter-etcd-routes ignores every etcd route, keeps local ones", () => {
    const { s } = store({ filterEtcdRoutes: true });
    s.snapshot("etcd", entries({ "routes/e": { Prefix4: "10.0.0.0/8", IpvsMethod: "droute" }, "routes/both": { IpvsMethod: "tunnel" } }));
    s.snapshot("local", entries({ "routes/l": { Prefix4: "10.1.0.0/16", IpvsMethod: "masq" } }));
    expect([...s.routes.keys()]).toEqual(["l"]);
    expect(s.apply("etcd", put("routes/x", { IpvsMethod: "filter" }))).toBeUndefined();
    expect(s.routes.has("x")).toBe(false);
  });

  test("a bad value keeps the last good one and is reported with source and key", () => {
    const { s, errors } = store();
    s.apply("etcd", put("services/web/frontend", { ipv4: "192.0.2.1", tcp: 80 }));
    expect(s.apply("etcd", put("services/web/frontend", '{"ipv4": "192.0.2.999", "tcp": 80}'))).toBeUndefined();
    expect(s.services.get("web")!.frontend!.ipv4).toBe("192.0.2.1");
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ source: "etcd", key: "services/web/frontend" });
    expect(errors[0]!.message).toContain('invalid IPv4 address "192.0.2.999"; the last good value stays in force');
  });

  test("a route whose gateway has no prefix of its family is an error; the last good value stays", () => {
    const { s, errors } = store();
    s.apply("local", put("routes/r", { Prefix4: "198.51.100.0/24", Gateway4: "192.0.2.1", IpvsMethod: "droute" }));
    expect(s.apply("local", put("routes/r", { Prefix4: "198.51.100.0/24", Gateway6: "2001:db8::1", IpvsMethod: "droute" }))).toBeUndefined();
    expect(errors.map((e) => [e.source, e.key, e.message])).toEqual([
      ["local", "routes/r", "Gateway6: an IPv6 gateway needs an IPv6 prefix in a route that has a prefix; this route has only an IPv4 prefix; the last good value stays in force"],
    ]);
    expect(s.routes.get("r")?.gateway4).toBe("192.0.2.1");
  });

  test("a backend without address or port is warned about once per value change, with source and key", () => {
    const { s, warnings } = store();
    const seen = () => warnings.map((w) => `${w.source} ${w.key}: ${w.message}`);
    s.apply("etcd", put("services/web/backends/a", '{"ipv4": "192.0.2.1"}'));
    s.apply("etcd", put("services/web/backends/a", '{"ipv4": "192.0.2.1"}')); // the same value again
    s.snapshot("etcd", entries({ "services/web/backends/a": '{"ipv4": "192.0.2.1"}' }));
    expect(seen()).toEqual(["etcd services/web/backends/a: backend has no tcp or udp port: no IPVS destination"]);
    s.apply("etcd", put("services/web/backends/a", '{"ipv4": "192.0.2.1", "weight": 3}')); // changed, still no port
    s.apply("local", put("services/web/backends/a", '{"tcp": 80}'));
    s.apply("etcd", put("services/web/backends/a", '{"ipv4": "192.0.2.1", "tcp": 80}')); // fixed
    s.apply("etcd", put("services/web/backends/a", '{"ipv4": "192.0.2.1"}')); // broken again
    expect(seen()).toEqual([
      "etcd services/web/backends/a: backend has no tcp or udp port: no IPVS destination",
      "etcd services/web/backends/a: backend has no tcp or udp port: no IPVS destination",
      "local services/web/backends/a: backend has no ipv4 or ipv6 address: no IPVS destination",
      "etcd services/web/backends/a: backend has no tcp or udp port: no IPVS destination",
    ]);
  });

  test("a bad value for a new key adds nothing; other keys still apply", () => {
    const { s, errors } = store();
    const changes = s.snapshot("local", entries({
      "services/a/frontend": "{oops",
      "services/b/frontend": { ipv4: "192.0.2.2", tcp: 80 },
      "services/b/backends/x": { ipv4: "198.51.100.1", tcp: 80, weight: -1 },
      "services/b/backends/y": { ipv4: "198.51.100.2", tcp: 80 },
    }));
    expect(errors.map((e) => e.key).sort()).toEqual(["services/a/frontend", "services/b/backends/x"]);
    expect(s.services.has("a")).toBe(false);
    expect([...s.services.get("b")!.backends.keys()]).toEqual(["y"]);
    expect(changes).toEqual([{ kind: "service", service: "b" }, { kind: "service", service: "b" }]);
  });

  test("malformed paths under services/ and routes/ are warnings and change nothing", () => {
    const { s, warnings, errors } = store();
    expect(s.apply("etcd", put("services/web/weird", {}))).toBeUndefined();
    expect(s.apply("etcd", put("routes/a/b", {}))).toBeUndefined();
    expect(s.apply("etcd", put("services/..", {}))).toBeUndefined();
    expect(warnings.map((w) => w.key)).toEqual(["services/web/weird", "routes/a/b", "services/.."]);
    expect(errors).toHaveLength(0);
    expect(s.services.size).toBe(0);
  });

  test("a refused name says why: which character, or the length; not an unknown path", () => {
    const { s, warnings, errors } = store();
    const cases: [string, string][] = [
      ["services/a\nb/frontend", 'invalid name "a\\nb": control character U+000A'],
      ["services/web/backends/x\u001b[31m", 'invalid name "x\\u001b[31m": control character U+001B'],
      ["routes/r\u0085", 'invalid name "r\\u0085": control character U+0085'],
      ["routes/ r", 'invalid name " r": starts with white space (U+0020)'],
      ["services/../frontend", 'invalid name "..": "." and ".." are not names'],
      ["services//frontend", "invalid name \"\": empty"],
      ["routes/" + "x".repeat(256), `invalid name "${"x".repeat(40)}…": 256 characters, more than 255`],
    ];
    for (const [key] of cases) expect(s.apply("etcd", put(key, {}))).toBeUndefined();
    expect(warnings.map((w) => [w.key, w.message])).toEqual(cases);
    expect(errors).toHaveLength(0);
    expect(s.services.size + s.routes.size).toBe(0);
  });

  test("other top-level names are skipped, reported once per name and source", () => {
    const skipped: ConfigProblem[] = [];
    const warnings: ConfigProblem[] = [];
    const s = new ConfigStore({ onWarning: (p) => warnings.push(p), onSkipped: (p) => skipped.push(p) });
    for (const k of ["two-tier/frontend/routes/default", "two-tier/intermediate/routes/local", "a/b/c/d/e/f"]) {
      expect(s.apply("local", put(k, {}))).toBeUndefined();
    }
    s.apply("etcd", put("two-tier/x", {}));
    expect(skipped.map((p) => `${p.source} ${p.key}`)).toEqual(["local two-tier/frontend/routes/default", "local a/b/c/d/e/f", "etcd two-tier/x"]);
    expect(skipped[0]!.message).toContain('"two-tier/" are not part of the config layout');
    expect(warnings).toHaveLength(0);
    expect(s.services.size + s.routes.size).toBe(0);
  });

  test("a snapshot replaces what the source had", () => {
    const { s } = store();
    s.snapshot("etcd", entries({ "services/a/frontend": { ipv4: "192.0.2.1", tcp: 80 }, "routes/r": {} }));
    s.snapshot("etcd", entries({ "services/b/frontend": { ipv4: "192.0.2.2", tcp: 80 } }));
    expect([...s.services.keys()]).toEqual(["b"]);
    expect(s.routes.size).toBe(0);
  });

  test("a large snapshot offers a pause at least every 1024 keys it looks at for deletions, and deletes what it no longer has", () => {
    const { s } = store();
    const config: Record<string, unknown> = {};
    for (let i = 0; i < 300; i++) {
      config[`services/s${i}/frontend`] = { ipv4: "192.0.2.1", tcp: 1 + i };
      for (let b = 0; b < 9; b++) config[`services/s${i}/backends/b${b}`] = { ipv4: "198.51.100.1", tcp: 1 + b };
    }
    s.snapshot("etcd", entries(config)); // 3000 keys
    delete config["services/s7/backends/b3"];
    delete config["services/s250/frontend"];
    // Between two things given (an event or a pause), at most 1024 keys are looked at.
    const given = [...s.snapshotEvents("etcd", entries(config))];
    const firstPut = given.findIndex((e) => e?.value);
    const search = given.slice(0, firstPut);
    expect(search.filter((e) => e === undefined).length).toBe(Math.floor((3000 - 2) / 1024));
    expect(search.filter((e) => e !== undefined).map((e) => e!.key)).toEqual(["services/s7/backends/b3", "services/s250/frontend"]);
    expect(given.slice(firstPut).every((e) => e?.value)).toBe(true);
    expect(given.length - firstPut).toBe(2998);
    for (const e of given) if (e) s.apply("etcd", e);
    expect(s.services.get("s7")?.backends.has("b3")).toBe(false);
    expect(s.services.get("s250")?.frontend).toBeUndefined();
    expect(s.services.get("s250")?.backends.size).toBe(9);
  });

  test("unchanged values report no change", () => {
    const { s } = store();
    expect(s.apply("etcd", put("services/a/backends/x", { ipv4: "192.0.2.1", tcp: 80 }))).toEqual({ kind: "service", service: "a" });
    expect(s.apply("etcd", put("services/a/backends/x", '{"IPV4":"192.0.2.1","tcp":80,"weight":10}'))).toBeUndefined();
  });

  test("a check edit is a change; the same check written again is not", () => {
    const { s } = store();
    const be = (check: unknown) => put("services/a/backends/x", { ipv4: "192.0.2.1", tcp: 80, check });
    expect(s.apply("etcd", be({ type: "http", interval: "2s" }))).toEqual({ kind: "service", service: "a" });
    expect(s.apply("etcd", be({ Type: "http", interval: "2000ms" }))).toBeUndefined();
    for (const edit of [{ type: "http", interval: "3s" }, { type: "http", interval: "3s", path: "/h" }, { type: "http", interval: "3s", path: "/h", status: [200, 204] }, false, { type: "tcp" }]) {
      expect(s.apply("etcd", be(edit)), JSON.stringify(edit)).toEqual({ kind: "service", service: "a" });
    }
    expect(s.apply("etcd", put("services/a/frontend", { ipv4: "192.0.2.9", tcp: 80, check: { fall: 2 } }))).toEqual({ kind: "service", service: "a" });
    expect(s.apply("etcd", put("services/a/frontend", { ipv4: "192.0.2.9", tcp: 80, check: { fall: 3 } }))).toEqual({ kind: "service", service: "a" });
  });

  test("property: the merged view depends on the sources' contents, not on the order of events", () => {
    const keys = ["services/s/frontend", "services/s/backends/a", "services/s/backends/b", "routes/r"];
    const valueFor = (key: string, n: number) =>
      key.endsWith("frontend")
        ? { ipv4: `192.0.2.${n}`, tcp: 80 }
        : key.startsWith("routes")
          ? { Prefix4: `10.${n}.0.0/16`, IpvsMethod: "masq" }
          : { ipv4: `198.51.100.${n}`, tcp: 80, weight: n };
    const event = fc.record({
      source: fc.constantFrom<SourceName>("local", "etcd"),
      key: fc.constantFrom(...keys),
      n: fc.option(fc.integer({ min: 1, max: 9 }), { nil: undefined }),
    });
    fc.assert(
      fc.property(fc.array(event, { maxLength: 30 }), fc.boolean(), (events, filter) => {
        const { s: a } = store({ filterEtcdRoutes: filter });
        for (const e of events) a.apply(e.source, e.n === undefined ? del(e.key) : put(e.key, valueFor(e.key, e.n)));
        // The final contents of each source, applied in the other order (etcd first, then local).
        const final: Record<SourceName, Map<string, number>> = { local: new Map(), etcd: new Map() };
        for (const e of events) e.n === undefined ? final[e.source].delete(e.key) : final[e.source].set(e.key, e.n);
        const { s: b } = store({ filterEtcdRoutes: filter });
        for (const src of ["etcd", "local"] as SourceName[]) {
          for (const [k, n] of final[src]) b.apply(src, put(k, valueFor(k, n)));
        }
        // Backends in name order (a service's backends keep their insertion order, as a Map does).
        const view = (m: typeof a.services) => new Map([...m].map(([name, svc]) => [name, { frontend: svc.frontend, backends: [...svc.backends].sort(([x], [y]) => (x < y ? -1 : 1)) }]));
        expect(view(b.services)).toEqual(view(a.services));
        expect(b.routes).toEqual(a.routes);
        // Precedence: where local has a key, the merged value is local's.
        for (const [k, n] of final.local) {
          if (k === "services/s/frontend") expect(a.services.get("s")!.frontend!.ipv4).toBe(`192.0.2.${n}`);
        }
      }),
      { seed: 42, numRuns: 300 },
    );
  });
});

describe("published health records (health/ROUTE/SERVICE/BACKEND, from etcd)", () => {
  test("parsed with the usual rules: a bad value is an error and the last good one stays; unknown keys warn", () => {
    const { s, errors, warnings } = store();
    expect(s.apply("etcd", put("health/mid1/web/a", { weight: 0 }))).toEqual({ kind: "service", service: "web" });
    expect(s.publishedWeight("mid1", "web", "a")).toBe(0);
    for (const bad of ['{"weight": -1}', '{"weight": "x"}', "{}", "not json"]) expect(s.apply("etcd", put("health/mid1/web/a", bad))).toBeUndefined();
    expect(errors).toHaveLength(4);
    expect(errors[0]!.message).toMatch(/weight must be an integer.*last good value stays in force/);
    expect(s.publishedWeight("mid1", "web", "a")).toBe(0);
    s.apply("etcd", put("health/mid1/web/a", { Weight: 2, extra: 1 }));
    expect(s.publishedWeight("mid1", "web", "a")).toBe(2);
    expect(warnings.map((w) => w.message)).toEqual(['unknown key "extra" ignored']);
    expect(s.apply("etcd", del("health/mid1/web/a"))).toEqual({ kind: "service", service: "web" });
    expect(s.publishedWeight("mid1", "web", "a")).toBeUndefined();
    expect(s.apply("etcd", del("health/mid1/web/a"))).toBeUndefined();
  });

  test("a snapshot without a record removes it; a local tree's health/ is not read (skipped like other names)", () => {
    const skipped: ConfigProblem[] = [];
    const s = new ConfigStore({ onSkipped: (p) => skipped.push(p) });
    s.snapshot("etcd", entries({ "health/mid1/web/a": { weight: 0 }, "health/mid1/web/b": { weight: 1 } }));
    expect(s.publishedWeight("mid1", "web", "b")).toBe(1);
    expect(s.snapshot("etcd", entries({ "health/mid1/web/a": { weight: 0 } }))).toEqual([{ kind: "service", service: "web" }]);
    expect(s.publishedWeight("mid1", "web", "b")).toBeUndefined();
    expect(s.publishedWeight("mid1", "web", "a")).toBe(0);
    expect(s.apply("local", put("health/mid1/web/c", { weight: 0 }))).toBeUndefined();
    expect(s.publishedWeight("mid1", "web", "c")).toBeUndefined();
    expect(skipped.map((p) => p.message)).toEqual([expect.stringContaining('"health/"')]);
  });
});
