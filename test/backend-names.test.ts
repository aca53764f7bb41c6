// The backend names of each destination (metrics labels) are compiled again on demand rather than
// kept per destination: they must follow merges, route gateways, route and backend changes, and
// two config services on one VIP (the winner's names).
import { describe, expect, test } from "bun:test";
import { IpvsDaemon } from "../src/daemon/ipvs-daemon.ts";
import { MemoryIpvsTable } from "../src/ipvs/memory-table.ts";
import { ipvsMetrics } from "../src/metrics/ipvs-metrics.ts";
import { ConfigStore } from "../src/config/store.ts";
import { DEFAULT_DESIRED_OPTIONS, compileAll } from "../src/model/desired.ts";
import { configureLog } from "../src/util/log.ts";
import { del, entries, put } from "./support/config.ts";

configureLog({ level: "off" });

function daemon() {
  const d = new IpvsDaemon(new MemoryIpvsTable(), [], { desired: DEFAULT_DESIRED_OPTIONS, filterEtcdRoutes: false, flush: false, noop: false, resyncMs: 0 });
  d.snapshot("etcd", entries({
    "services/web/frontend": { ipv4: "192.0.2.1", tcp: 80 },
    "services/web/backends/a": { ipv4: "198.51.100.1", tcp: 8080 },
    "services/web/backends/b": { ipv4: "198.51.100.2", tcp: 8080 },
    "services/web/backends/c": { ipv4: "203.0.113.5", tcp: 8080 },
    "services/web/backends/d": { ipv4: "203.0.113.6", tcp: 8080 },
    "services/other/frontend": { ipv4: "192.0.2.1", tcp: 80 },
    "services/other/backends/x": { ipv4: "198.51.100.9", tcp: 8080 },
    "routes/far": { Prefix4: "203.0.113.0/24", Gateway4: "192.0.2.254", IpvsMethod: "droute" },
  }));
  d.apply();
  return d;
}

const names = (d: IpvsDaemon, key = "inet+tcp://192.0.2.1:80") => Object.fromEntries(d.desired.backendsByDest(key) ?? []);

describe("backend names per destination", () => {
  test("merged onto a gateway, one each elsewhere; the first config service by name describes a shared VIP", () => {
    const d = daemon();
    expect(names(d)).toEqual({ "198.51.100.9:8080": ["x"] }); // "other" sorts before "web"
    d.update("etcd", [del("services/other/frontend")]);
    d.apply();
    expect(names(d)).toEqual({ "198.51.100.1:8080": ["a"], "198.51.100.2:8080": ["b"], "192.0.2.254:80": ["c", "d"] });
    expect(d.desired.backendsByDest("inet+tcp://192.0.2.99:80")).toBeUndefined();
  });

  test("follow backend and route changes", () => {
    const d = daemon();
    d.update("etcd", [del("services/other/frontend"), put("services/web/backends/b", { ipv4: "203.0.113.7", tcp: 8080 }), del("routes/far")]);
    d.apply();
    expect(names(d)).toEqual({ "198.51.100.1:8080": ["a"], "203.0.113.7:8080": ["b"], "203.0.113.5:8080": ["c"], "203.0.113.6:8080": ["d"] });
    d.update("etcd", [put("routes/far", { Prefix4: "203.0.113.0/24", Gateway4: "192.0.2.254", IpvsMethod: "droute" })]);
    d.apply();
    expect(names(d)).toEqual({ "198.51.100.1:8080": ["a"], "192.0.2.254:80": ["b", "c", "d"] });
  });

  test("are the backend label of the destination metrics", async () => {
    const d = daemon();
    d.update("etcd", [del("services/other/frontend")]);
    d.apply();
    let text = "";
    for await (const chunk of ipvsMetrics(d).chunks()) text += chunk;
    const labels = text.split("\n").filter((l) => l.startsWith("clusterf_ipvs_dest_connections_total{")).map((l) => /backend="([^"]*)",dest="([^"]*)"/.exec(l)!.slice(1).join(" "));
    expect(labels.sort()).toEqual(["a 198.51.100.1:8080", "b 198.51.100.2:8080", "c,d 192.0.2.254:80"]);
  });

  test("a method conflict on a merged destination names the first backend by name as the one kept", () => {
    const store = new ConfigStore();
    store.snapshot("etcd", entries({
      "services/web/frontend": { ipv4: "192.0.2.1", tcp: 80 },
      "services/web/backends/c": { ipv4: "203.0.113.5", tcp: 8080 },
      "services/web/backends/a": { ipv4: "192.0.2.254", tcp: 80 },
      "services/web/backends/b": { ipv4: "203.0.113.6", tcp: 8080 },
      "routes/far": { Prefix4: "203.0.113.0/24", Gateway4: "192.0.2.254", IpvsMethod: "droute" },
    }));
    const warnings: string[] = [];
    const t = compileAll(store.services, store.routes, DEFAULT_DESIRED_OPTIONS, (m, f) => warnings.push(`${m} ${f.kept} ${f.ignored}`));
    expect(warnings).toEqual([
      "backends merged onto one destination have different methods; the first by name wins a:masq b:droute",
      "backends merged onto one destination have different methods; the first by name wins a:masq c:droute",
    ]);
    expect([...t.get("inet+tcp://192.0.2.1:80")!.dests.values()].map((d) => `${d.address}:${d.port} ${d.method} ${d.weight}`)).toEqual(["192.0.2.254:80 masq 30"]);
  });
});
