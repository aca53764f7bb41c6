import { describe, expect, test } from "bun:test";
import { ConfigStore } from "../src/config/store.ts";
import { DEFAULT_DESIRED_OPTIONS, DesiredTable, compileAll, type DesiredOptions } from "../src/model/desired.ts";
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
