import { describe, expect, test } from "bun:test";
import { ConfigStore } from "../src/config/store.ts";
import { DEFAULT_DESIRED_OPTIONS, DesiredTable, compileAll, type DesiredOptions, type WeightOf } from "../src/model/desired.ts";
import { parseCheck, targetKey, type CheckSpec } from "../src/health/check-config.ts";
import { RouteIndex } from "../src/model/routes.ts";
import { parseRoute } from "../src/config/values.ts";
import { formatTable } from "../src/ipvs/print.ts";
import { entries, put, del } from "./support/config.ts";

function table(config: Record<string, unknown>, opts: Partial<DesiredOptions> = {}, warnings: string[] = []) {
  const s = new ConfigStore();
  s.snapshot("etcd", entries(config));
  const t = compileAll(s.services, s.routes, { ...DEFAULT_DESIRED_OPTIONS, ...opts }, (m, f) => warnings.push(`${m} ${JSON.stringify(f)}`));
  return formatTable([...t.values()].map((e) => ({ ...e.service, dests: e.dests.values() })), { version: "1.2.1", connTableSize: 4096 })
    .split("\n")
    .slice(3)
    .filter(Boolean)
    .map((l) => l.replace(/\s+/g, " ").trim());
}

const web = {
  "services/web/frontend": { ipv4: "192.0.2.1", tcp: 80 },
  "services/web/backends/a": { ipv4: "10.1.0.1", tcp: 8080 },
  "services/web/backends/b": { ipv4: "10.2.0.1", tcp: 8080, weight: 5 },
};

describe("desired table", () => {
  test("the original's README: frontend and backends, default masq and wlc", () => {
    expect(table(web)).toEqual([
      "TCP 192.0.2.1:80 wlc",
      "-> 10.1.0.1:8080 Masq 10 0 0",
      "-> 10.2.0.1:8080 Masq 5 0 0",
    ]);
  });

  test("one service per (family, protocol); a backend joins the services it has a port and address for", () => {
    expect(
      table({
        "services/d/frontend": { ipv4: "192.0.2.53", ipv6: "2001:db8::53", tcp: 53, udp: 53 },
        "services/d/backends/v4tcp": { ipv4: "10.0.0.1", tcp: 5353 },
        "services/d/backends/v6udp": { ipv6: "2001:db8:1::1", udp: 53, weight: 3 },
      }),
    ).toEqual([
      "TCP 192.0.2.53:53 wlc",
      "-> 10.0.0.1:5353 Masq 10 0 0",
      "TCP [2001:db8::53]:53 wlc",
      "UDP 192.0.2.53:53 wlc",
      "UDP [2001:db8::53]:53 wlc",
      "-> [2001:db8:1::1]:53 Masq 3 0 0",
    ]);
  });

  test("-ipvs-elide leaves out services with no destinations", () => {
    expect(
      table(
        { "services/d/frontend": { ipv4: "192.0.2.53", tcp: 53, udp: 53 }, "services/d/backends/a": { ipv4: "10.0.0.1", udp: 53 } },
        { elide: true },
      ),
    ).toEqual(["UDP 192.0.2.53:53 wlc", "-> 10.0.0.1:53 Masq 10 0 0"]);
  });

  test("scheduler and persistence per frontend, and the default flags", () => {
    expect(
      table(
        {
          "services/a/frontend": { ipv4: "192.0.2.1", tcp: 80, scheduler: "rr", persistent: 600 },
          "services/b/frontend": { ipv4: "192.0.2.2", tcp: 80 },
          "services/b/backends/x": { ipv4: "10.0.0.1", tcp: 80 },
        },
        { scheduler: "sh", defaultMethod: "tunnel" },
      ),
    ).toEqual(["TCP 192.0.2.1:80 rr persistent 600", "TCP 192.0.2.2:80 sh", "-> 10.0.0.1:80 Tunnel 10 0 0"]);
  });

  test("longest prefix wins; methods and filter", () => {
    expect(
      table({
        ...web,
        "services/web/backends/c": { ipv4: "10.1.5.1", tcp: 8080 },
        "services/web/backends/d": { ipv4: "172.16.0.1", tcp: 8080 },
        "routes/all": { IpvsMethod: "tunnel" },
        "routes/ten": { Prefix4: "10.0.0.0/8", IpvsMethod: "droute" },
        "routes/ten-one": { Prefix4: "10.1.0.0/16", IpvsMethod: "masq" },
        "routes/ten-one-five": { Prefix4: "10.1.5.0/24", IpvsMethod: "filter" },
      }),
    ).toEqual([
      "TCP 192.0.2.1:80 wlc",
      "-> 10.1.0.1:8080 Masq 10 0 0",
      "-> 10.2.0.1:8080 Route 5 0 0",
      "-> 172.16.0.1:8080 Tunnel 10 0 0",
    ]);
  });

  test("a tie in prefix length goes to the route whose name sorts first", () => {
    const base = { ...web, "routes/b-route": { Prefix4: "10.0.0.0/8", IpvsMethod: "tunnel" } };
    expect(table({ ...base, "routes/a-route": { Prefix: "10.0.0.0/8", IpvsMethod: "droute" } })[1]).toBe("-> 10.1.0.1:8080 Route 10 0 0");
    expect(table({ ...base, "routes/c-route": { Prefix: "10.0.0.0/8", IpvsMethod: "droute" } })[1]).toBe("-> 10.1.0.1:8080 Tunnel 10 0 0");
    // A default route and 0.0.0.0/0 have the same length: the name decides too.
    const idx = new RouteIndex([
      ["z", parseRoute('{"IpvsMethod":"masq"}').value],
      ["y", parseRoute('{"Prefix4":"0.0.0.0/0","IpvsMethod":"droute"}').value],
    ]);
    expect(idx.lookup("inet", "203.0.113.9")!.name).toBe("y");
    expect(idx.lookup("inet6", "2001:db8::1")!.name).toBe("z");
  });

  test("an IPv4 prefix never matches IPv6 addresses and vice versa; default routes match both", () => {
    const idx = new RouteIndex([
      ["v4", parseRoute('{"Prefix4":"0.0.0.0/0","IpvsMethod":"droute"}').value],
      ["v6", parseRoute('{"Prefix6":"2001:db8::/32","IpvsMethod":"tunnel"}').value],
    ]);
    expect(idx.lookup("inet6", "2001:db9::1")).toBeUndefined();
    expect(idx.lookup("inet6", "2001:db8:ffff::1")!.name).toBe("v6");
    expect(idx.lookup("inet", "10.0.0.1")!.name).toBe("v4");
  });

  test("a gateway replaces the destination with gateway:frontend-port and merges weights", () => {
    expect(
      table({
        "services/web/frontend": { ipv4: "192.0.2.1", ipv6: "2001:db8::1", tcp: 80 },
        "services/web/backends/a": { ipv4: "10.1.0.1", ipv6: "2001:db8:a::1", tcp: 8080 },
        "services/web/backends/b": { ipv4: "10.1.0.2", ipv6: "2001:db8:a::2", tcp: 8081, weight: 5 },
        "services/web/backends/c": { ipv4: "10.1.0.3", tcp: 8080, weight: 0 },
        "services/web/backends/d": { ipv4: "10.9.0.1", tcp: 8080, weight: 7 },
        "routes/site-a": { Prefix4: "10.1.0.0/16", Gateway4: "192.0.2.100", Prefix6: "2001:db8:a::/48", Gateway6: "2001:db8::100", IpvsMethod: "droute" },
      }),
    ).toEqual([
      "TCP 192.0.2.1:80 wlc",
      "-> 10.9.0.1:8080 Masq 7 0 0",
      "-> 192.0.2.100:80 Route 15 0 0",
      "TCP [2001:db8::1]:80 wlc",
      "-> [2001:db8::100]:80 Route 15 0 0",
    ]);
  });

  test("merged destinations with different methods: the first backend by name wins, and it is logged", () => {
    const warnings: string[] = [];
    const t = table(
      {
        "services/web/frontend": { ipv4: "192.0.2.1", tcp: 80 },
        "services/web/backends/b": { ipv4: "10.2.0.1", tcp: 80 },
        "services/web/backends/a": { ipv4: "10.1.0.1", tcp: 80 },
        "routes/one": { Prefix4: "10.1.0.0/16", Gateway4: "192.0.2.9", IpvsMethod: "tunnel" },
        "routes/two": { Prefix4: "10.2.0.0/16", Gateway4: "192.0.2.9", IpvsMethod: "droute" },
      },
      {},
      warnings,
    );
    expect(t).toEqual(["TCP 192.0.2.1:80 wlc", "-> 192.0.2.9:80 Tunnel 20 0 0"]);
    expect(warnings.join("\n")).toContain("different methods");
  });

  test("droute keeps the backend's port and warns when it differs from the frontend's", () => {
    const warnings: string[] = [];
    const t = table({ ...web, "routes/dr": { IpvsMethod: "droute" } }, {}, warnings);
    expect(t[1]).toBe("-> 10.1.0.1:8080 Route 10 0 0");
    expect(warnings.some((w) => w.includes("droute cannot change the port"))).toBe(true);
  });

  test("IPv4-compatible and IPv4-mapped IPv6 addresses are kept as written: two services, not one", () => {
    expect(
      table({
        "services/compat/frontend": { ipv6: "::10.0.0.1", tcp: 80 },
        "services/compat/backends/b": { ipv6: "::1.2.3.4", tcp: 80 },
        "services/mapped/frontend": { ipv6: "::ffff:10.0.0.1", tcp: 80 },
        "services/mapped/backends/b": { ipv6: "::1.2.3.5", tcp: 80, weight: 3 },
      }),
    ).toEqual(["TCP [::10.0.0.1]:80 wlc", "-> [::1.2.3.4]:80 Masq 10 0 0", "TCP [::ffff:10.0.0.1]:80 wlc", "-> [::1.2.3.5]:80 Masq 3 0 0"]);
  });

  test("an IPv4-mapped backend is a bad value (the kernel refuses it as a destination); the compatible one stays", () => {
    const errors: string[] = [];
    const s = new ConfigStore({ onError: (e) => errors.push(`${e.key}: ${e.message}`) });
    s.snapshot("etcd", entries({
      "services/v6/frontend": { ipv6: "::10.0.0.1", tcp: 80 },
      "services/v6/backends/compat": { ipv6: "::1.2.3.4", tcp: 80 },
      "services/v6/backends/mapped": { ipv6: "::ffff:1.2.3.4", tcp: 80, weight: 3 },
    }));
    expect([...s.services.get("v6")!.backends.keys()]).toEqual(["compat"]);
    expect(errors).toEqual(["services/v6/backends/mapped: ipv6: IPv4-mapped address ::ffff:1.2.3.4 cannot be an IPVS destination (the kernel refuses it): use ipv4"]);
  });

  test("routes match IPv6 addresses written with an IPv4 tail by their bytes", () => {
    expect(
      table({
        "services/v6/frontend": { ipv6: "2001:db8::1", tcp: 80 },
        "services/v6/backends/compat": { ipv6: "::1.2.3.4", tcp: 80 },
        "services/v6/backends/other": { ipv6: "::1:0:102:305", tcp: 80 },
        "routes/mapped": { Prefix6: "::ffff:0.0.0.0/96", IpvsMethod: "droute" },
        "routes/compat": { Prefix6: "::/96", IpvsMethod: "tunnel" },
      }),
    ).toEqual(["TCP [2001:db8::1]:80 wlc", "-> [::1.2.3.4]:80 Tunnel 10 0 0", "-> [::1:0:102:305]:80 Masq 10 0 0"]);
  });

  test("two config services on one VIP:port: the first by name wins", () => {
    const warnings: string[] = [];
    const t = table(
      {
        "services/b/frontend": { ipv4: "192.0.2.1", tcp: 80 },
        "services/b/backends/x": { ipv4: "10.0.0.2", tcp: 80 },
        "services/a/frontend": { ipv4: "192.0.2.1", tcp: 80 },
        "services/a/backends/x": { ipv4: "10.0.0.1", tcp: 80 },
      },
      {},
      warnings,
    );
    expect(t).toEqual(["TCP 192.0.2.1:80 wlc", "-> 10.0.0.1:80 Masq 10 0 0"]);
    expect(warnings.join()).toContain("first by name wins");
  });
});

describe("incremental updates", () => {
  function setup() {
    const s = new ConfigStore();
    s.snapshot("etcd", entries({
      ...web,
      "services/other/frontend": { ipv4: "192.0.2.2", tcp: 80 },
      "services/other/backends/z": { ipv4: "172.16.0.1", tcp: 80 },
    }));
    const t = new DesiredTable(DEFAULT_DESIRED_OPTIONS);
    t.rebuild(s.services, s.routes);
    return { s, t };
  }

  test("a backend change touches only its service", () => {
    const { s, t } = setup();
    const c = s.apply("etcd", put("services/web/backends/a", { ipv4: "10.1.0.1", tcp: 8080, weight: 0 }))!;
    expect(c).toEqual({ kind: "service", service: "web" });
    const changed = t.updateServices(["web"], s.services);
    expect([...changed]).toEqual(["inet+tcp://192.0.2.1:80"]);
    expect(t.table.get("inet+tcp://192.0.2.1:80")!.dests.get("10.1.0.1:8080")!.weight).toBe(0);
  });

  test("a route change re-evaluates every backend it covers, and only those services", () => {
    const { s, t } = setup();
    const c = s.apply("etcd", put("routes/r", { Prefix4: "10.0.0.0/8", Gateway4: "192.0.2.50", IpvsMethod: "droute" }))!;
    expect(c.kind).toBe("route");
    const changed = t.updateRoutes([c as never], s.services, s.routes);
    expect([...changed]).toEqual(["inet+tcp://192.0.2.1:80"]);
    const dests = [...t.table.get("inet+tcp://192.0.2.1:80")!.dests.values()];
    expect(dests).toEqual([{ address: "192.0.2.50", port: 80, method: "droute", weight: 15, upperThreshold: 0, lowerThreshold: 0 }]);
    // Removing the route restores the backends.
    const gone = s.apply("etcd", del("routes/r"))!;
    t.updateRoutes([gone as never], s.services, s.routes);
    expect(t.table.get("inet+tcp://192.0.2.1:80")!.dests.size).toBe(2);
  });

  test("a route change's services are found a few at a time: the same as at once, with pauses", () => {
    const s = new ConfigStore();
    const config: Record<string, unknown> = {};
    for (let i = 0; i < 1000; i++) {
      config[`services/s${i}/frontend`] = { ipv4: `192.0.2.${1 + (i % 250)}`, tcp: 1 + Math.floor(i / 250) };
      config[`services/s${i}/backends/b`] = { ipv4: i % 2 ? "10.0.0.1" : "198.51.100.1", tcp: 80 };
    }
    s.snapshot("etcd", entries(config));
    const t = new DesiredTable(DEFAULT_DESIRED_OPTIONS);
    t.rebuild(s.services, s.routes);
    const c = s.apply("etcd", put("routes/r", { Prefix4: "10.0.0.0/8", Gateway4: "192.0.2.50", IpvsMethod: "droute" }))!;
    const steps = t.routesChangedSteps([c as never], s.services, s.routes);
    let pauses = 0;
    let r = steps.next();
    for (; !r.done; r = steps.next()) pauses++;
    expect(pauses).toBe(Math.floor(1000 / 256));
    expect(r.value).toEqual(Array.from({ length: 500 }, (_, k) => `s${2 * k + 1}`));
  });

  test("deleting a frontend removes its IPVS services", () => {
    const { s, t } = setup();
    s.apply("etcd", del("services/web/frontend"));
    const changed = t.updateServices(["web"], s.services);
    expect([...changed]).toEqual(["inet+tcp://192.0.2.1:80"]);
    expect(t.table.has("inet+tcp://192.0.2.1:80")).toBe(false);
    expect(t.table.size).toBe(1);
  });

  test("incremental results equal a full recompute", () => {
    const { s, t } = setup();
    const events = [
      put("routes/x", { Prefix4: "172.16.0.0/12", IpvsMethod: "tunnel" }),
      put("services/web/frontend", { ipv4: "192.0.2.1", tcp: 81, udp: 81 }),
      put("services/web/backends/q", { ipv4: "10.1.0.1", udp: 53 }),
      del("services/other/backends/z"),
      put("routes/x", { Prefix4: "10.0.0.0/8", IpvsMethod: "filter" }),
    ];
    for (const e of events) {
      const c = s.apply("etcd", e)!;
      if (c.kind === "route") t.updateRoutes([c], s.services, s.routes);
      else t.updateServices([c.service], s.services);
    }
    const full = compileAll(s.services, s.routes, DEFAULT_DESIRED_OPTIONS);
    expect(new Map([...t.table].map(([k, v]) => [k, { service: v.service, dests: v.dests }]))).toEqual(
      new Map([...full].map(([k, v]) => [k, { service: v.service, dests: v.dests }])),
    );
  });
});

describe("health-checked weights", () => {
  // The check every key below is made from (the frontend's), and the target keys it gives.
  const fcheck = { type: "tcp", interval: "1s", timeout: "500ms" };
  const spec = parseCheck(fcheck).value as CheckSpec;
  const key = (address: string, port: number, s: CheckSpec = spec) => targetKey(address, port, s);

  /** A weight lookup from a table (key → what it does to the configured weight); records the keys asked for. */
  function lookup(table: Record<string, (w: number) => number>) {
    const asked: string[] = [];
    const weight: WeightOf = (k, w) => {
      asked.push(k);
      return table[k] ? table[k](w) : w;
    };
    return { weight, asked };
  }

  const checked = {
    "services/web/frontend": { ipv4: "192.0.2.1", tcp: 80, check: fcheck },
    "services/web/backends/a": { ipv4: "198.51.100.1", tcp: 8080 },
    "services/web/backends/b": { ipv4: "198.51.100.2", tcp: 8080, weight: 5 },
    "services/web/backends/c": { ipv4: "198.51.100.3", tcp: 8080, weight: 20 },
  };

  test("a down backend gets weight 0, a ramping one its ramp value, the others their configured weights", () => {
    const { weight, asked } = lookup({ [key("198.51.100.1", 8080)]: () => 0, [key("198.51.100.3", 8080)]: (w) => Math.ceil(w * 0.25) });
    expect(table(checked, { weight })).toEqual([
      "TCP 192.0.2.1:80 wlc",
      "-> 198.51.100.1:8080 Masq 0 0 0",
      "-> 198.51.100.2:8080 Masq 5 0 0",
      "-> 198.51.100.3:8080 Masq 5 0 0",
    ]);
    expect(asked.sort()).toEqual([key("198.51.100.1", 8080), key("198.51.100.2", 8080), key("198.51.100.3", 8080)]);
    // without a lookup (-once: no checks run) the configured weights
    expect(table(checked)).toContain("-> 198.51.100.1:8080 Masq 10 0 0");
  });

  test("merged destinations sum the health-adjusted weights only", () => {
    // Three backends on one address:port (three names for one server), each with another check.
    const merged = {
      "services/web/frontend": { ipv4: "192.0.2.1", tcp: 80, check: fcheck },
      "services/web/backends/a": { ipv4: "198.51.100.1", tcp: 8080, weight: 3 },
      "services/web/backends/b": { ipv4: "198.51.100.1", tcp: 8080, weight: 4, check: { type: "http", interval: "1s", timeout: "500ms" } },
      "services/web/backends/c": { ipv4: "198.51.100.1", tcp: 8080, weight: 100, check: false },
    };
    const http = parseCheck({ type: "http", interval: "1s", timeout: "500ms" }).value as CheckSpec;
    const down = (k: string) => lookup({ [k]: () => 0 }).weight;
    expect(table(merged, { weight: lookup({}).weight })).toContain("-> 198.51.100.1:8080 Masq 107 0 0");
    expect(table(merged, { weight: down(key("198.51.100.1", 8080)) })).toContain("-> 198.51.100.1:8080 Masq 104 0 0");
    expect(table(merged, { weight: down(key("198.51.100.1", 8080, http)) })).toContain("-> 198.51.100.1:8080 Masq 103 0 0");
  });

  test("a destination replaced by a route's gateway and a filtered backend are never checked", () => {
    const { weight, asked } = lookup({});
    const t = table(
      {
        ...checked,
        "routes/remote": { Prefix4: "198.51.100.2/32", Gateway4: "192.0.2.254", IpvsMethod: "droute" },
        "routes/gone": { Prefix4: "198.51.100.3/32", IpvsMethod: "filter" },
      },
      { weight: (k, w) => (weight(k, w), 0) },
    );
    expect(t).toEqual(["TCP 192.0.2.1:80 wlc", "-> 192.0.2.254:80 Route 5 0 0", "-> 198.51.100.1:8080 Masq 0 0 0"]);
    expect(asked).toEqual([key("198.51.100.1", 8080)]);
  });

  test("a backend's own check replaces the frontend's, false turns it off; UDP only through a check's port", () => {
    const own = parseCheck({ port: 9000 }).value as CheckSpec;
    const { weight, asked } = lookup({});
    table(
      {
        "services/dns/frontend": { ipv4: "192.0.2.53", ipv6: "2001:db8::53", tcp: 53, udp: 53, check: fcheck },
        "services/dns/backends/a": { ipv4: "198.51.100.1", tcp: 53, udp: 53 },
        "services/dns/backends/b": { ipv4: "198.51.100.2", ipv6: "2001:db8:1::2", tcp: 53, udp: 53, check: { port: 9000 } },
        "services/dns/backends/c": { ipv4: "198.51.100.3", tcp: 53, udp: 53, check: false },
      },
      { weight },
    );
    expect(asked.sort()).toEqual(
      [
        key("198.51.100.1", 53), // tcp only: its udp destination has no check port
        key("198.51.100.2", 53, own), // tcp and udp: one target (port 9000), asked for each
        key("198.51.100.2", 53, own),
        key("2001:db8:1::2", 53, own),
        key("2001:db8:1::2", 53, own),
      ].sort(),
    );
    expect(key("198.51.100.2", 53, own).startsWith("198.51.100.2:9000 ")).toBe(true);
  });

  test("the table's check targets, who uses them, and their version", () => {
    const s = new ConfigStore();
    s.snapshot("etcd", entries({
      ...checked,
      "services/api/frontend": { ipv4: "192.0.2.2", tcp: 80 },
      "services/api/backends/a": { ipv4: "198.51.100.1", tcp: 8080, check: fcheck },
      "services/plain/frontend": { ipv4: "192.0.2.3", tcp: 80 },
      "services/plain/backends/x": { ipv4: "198.51.100.9", tcp: 80 },
    }));
    const t = new DesiredTable(DEFAULT_DESIRED_OPTIONS);
    t.rebuild(s.services, s.routes);
    const targets = () => [...t.checkTargets()].map((x) => `${targetKey(x.address, x.destPort, x.spec)} ${x.users.map((u) => `${u.service}/${u.backend}`).join()}`).sort();
    expect(targets()).toEqual([
      `${key("198.51.100.1", 8080)} api/a`,
      `${key("198.51.100.1", 8080)} web/a`,
      `${key("198.51.100.2", 8080)} web/b`,
      `${key("198.51.100.3", 8080)} web/c`,
    ]);
    expect([...t.servicesChecking([key("198.51.100.1", 8080)])].sort()).toEqual(["api", "web"]);
    expect([...t.servicesChecking([key("198.51.100.2", 8080), "nothing"])]).toEqual(["web"]);

    // A weight edit leaves the targets as they are; a check edit, a backend gone or a route's gateway change them.
    const v0 = t.checksVersion;
    const step = (e: ReturnType<typeof put>) => {
      const c = s.apply("etcd", e)!;
      if (c.kind === "route") t.updateRoutes([c], s.services, s.routes);
      else t.updateServices([c.service], s.services);
    };
    step(put("services/web/backends/b", { ipv4: "198.51.100.2", tcp: 8080, weight: 6 }));
    step(put("services/plain/backends/x", { ipv4: "198.51.100.9", tcp: 80, weight: 6 }));
    expect(t.checksVersion).toBe(v0);
    step(put("services/api/backends/a", { ipv4: "198.51.100.1", tcp: 8080, check: false }));
    expect(t.checksVersion).toBe(v0 + 1);
    expect([...t.servicesChecking([key("198.51.100.1", 8080)])]).toEqual(["web"]);
    step(put("routes/r", { Prefix4: "198.51.100.0/31", Gateway4: "192.0.2.254" })); // covers web/a
    expect(t.checksVersion).toBe(v0 + 2);
    expect(targets()).toEqual([`${key("198.51.100.2", 8080)} web/b`, `${key("198.51.100.3", 8080)} web/c`]);
    expect([...t.servicesChecking([key("198.51.100.1", 8080)])]).toEqual([]);
    step(del("services/web/frontend"));
    expect(targets()).toEqual([]);
    expect(t.checksVersion).toBe(v0 + 3);
  });

  test("a recompute for a health change is quiet: the config's warnings were given when it changed", () => {
    const warnings: string[] = [];
    const s = new ConfigStore();
    s.snapshot("etcd", entries({ ...checked, "routes/dr": { IpvsMethod: "droute" } }));
    let down = false;
    const t = new DesiredTable({ ...DEFAULT_DESIRED_OPTIONS, weight: (k, w) => (down && k === key("198.51.100.1", 8080) ? 0 : w) }, (m) => warnings.push(m));
    t.rebuild(s.services, s.routes);
    expect(warnings.length).toBe(3); // droute with another port, once per backend
    down = true;
    expect([...t.updateServices(t.servicesChecking([key("198.51.100.1", 8080)]), s.services, true)]).toEqual(["inet+tcp://192.0.2.1:80"]);
    expect(t.table.get("inet+tcp://192.0.2.1:80")!.dests.get("198.51.100.1:8080")!.weight).toBe(0);
    expect(warnings.length).toBe(3);
    t.updateServices(["web"], s.services);
    expect(warnings.length).toBe(6);
  });
});

describe("published health of a gateway's backends (two tiers)", () => {
  const twoTier = {
    "services/web/frontend": { ipv4: "192.0.2.1", tcp: 80 },
    "services/web/backends/a": { ipv4: "198.51.100.1", tcp: 8080, weight: 3 },
    "services/web/backends/b": { ipv4: "198.51.100.2", tcp: 8080, weight: 1 },
    "services/web/backends/c": { ipv4: "198.51.100.130", tcp: 8080, weight: 4 },
    "services/web/backends/x": { ipv4: "203.0.113.9", tcp: 8080, weight: 9 },
    "routes/mid1": { Prefix4: "198.51.100.0/25", Gateway4: "192.0.2.21", IpvsMethod: "droute" },
    "routes/mid2": { Prefix4: "198.51.100.128/25", Gateway4: "192.0.2.22", IpvsMethod: "droute" },
    "routes/default": { IpvsMethod: "filter" },
  };

  /** The table of a frontend-tier store holding `config` (health/ keys included), with the store's published lookup. */
  function frontTable(config: Record<string, unknown>) {
    const s = new ConfigStore();
    s.snapshot("etcd", entries(config));
    const t = new DesiredTable({ ...DEFAULT_DESIRED_OPTIONS, published: (r, svc, b) => s.publishedWeight(r, svc, b) });
    t.rebuild(s.services, s.routes);
    const lines = () =>
      formatTable([...t.table.values()].map((e) => ({ ...e.service, dests: e.dests.values() })), { version: "1.2.1", connTableSize: 4096 })
        .split("\n")
        .slice(3)
        .filter(Boolean)
        .map((l) => l.replace(/\s+/g, " ").trim());
    return { s, t, lines };
  }

  test("no record: the configured weights are summed", () => {
    expect(frontTable(twoTier).lines()).toEqual(["TCP 192.0.2.1:80 wlc", "-> 192.0.2.21:80 Route 4 0 0", "-> 192.0.2.22:80 Route 4 0 0"]);
  });

  test("a published weight replaces its backend's share; another route's record or name changes nothing", () => {
    const { lines } = frontTable({
      ...twoTier,
      "health/mid1/web/a": { weight: 0 },
      // mid2 publishes nothing for a: a is behind mid1, so this record is not a's.
      "health/mid2/web/a": { weight: 0 },
      // Filtered backend x, a service that does not exist: nothing.
      "health/mid1/web/x": { weight: 0 },
      "health/mid1/nosuch/a": { weight: 0 },
    });
    expect(lines()).toEqual(["TCP 192.0.2.1:80 wlc", "-> 192.0.2.21:80 Route 1 0 0", "-> 192.0.2.22:80 Route 4 0 0"]);
  });

  test("all of an intermediate's backends down: its weight is 0 (quiescent, not removed); a ramp value counts, never above the configured weight", () => {
    const { lines } = frontTable({ ...twoTier, "health/mid1/web/a": { weight: 0 }, "health/mid1/web/b": { weight: 0 }, "health/mid2/web/c": { weight: 9 } });
    expect(lines()).toEqual(["TCP 192.0.2.1:80 wlc", "-> 192.0.2.21:80 Route 0 0 0", "-> 192.0.2.22:80 Route 4 0 0"]);
    const ramp = frontTable({ ...twoTier, "health/mid1/web/a": { weight: 2 } });
    expect(ramp.lines()).toEqual(["TCP 192.0.2.1:80 wlc", "-> 192.0.2.21:80 Route 3 0 0", "-> 192.0.2.22:80 Route 4 0 0"]);
  });

  test("a record put or deleted is a change of its service: recomputed, back to the configured weight when it goes (expired with its lease)", () => {
    const { s, t, lines } = frontTable(twoTier);
    const c = s.apply("etcd", put("health/mid1/web/a", { weight: 0 }))!;
    expect(c).toEqual({ kind: "service", service: "web" });
    t.updateServices(["web"], s.services);
    expect(lines()).toContain("-> 192.0.2.21:80 Route 1 0 0");
    expect(s.apply("etcd", put("health/mid1/web/a", { weight: 0 }))).toBeUndefined(); // the same again
    expect(s.apply("etcd", del("health/mid1/web/a"))).toEqual({ kind: "service", service: "web" });
    t.updateServices(["web"], s.services);
    expect(lines()).toContain("-> 192.0.2.21:80 Route 4 0 0");
  });

  test("a host's own destinations ignore records: its checks decide (no gateway)", () => {
    const s = new ConfigStore();
    s.snapshot("etcd", entries({ ...twoTier, "routes/mid1": { Prefix4: "198.51.100.0/25", IpvsMethod: "masq" }, "health/mid1/web/a": { weight: 0 } }));
    const t = compileAll(s.services, s.routes, { ...DEFAULT_DESIRED_OPTIONS, published: (r, svc, b) => s.publishedWeight(r, svc, b) });
    expect(t.get("inet+tcp://192.0.2.1:80")!.dests.get("198.51.100.1:8080")!.weight).toBe(3);
  });
});
