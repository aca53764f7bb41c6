// Advertised routes against a real etcd: an intermediate host's clusterf-ipvs writes routes/NAME
// under a lease; a frontend-tier clusterf-ipvs (in-memory IPVS) turns it into a droute
// destination at the gateway with summed weights; SIGKILL lets the route expire after the TTL,
// SIGTERM withdraws it at once, and it comes back after an etcd outage.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startEtcd, type Etcd, etcdctl as etcdctlAt } from "./support/etcd.ts";
import { Daemon } from "./support/proc.ts";
import { until } from "./support/until.ts";

let etcd: Etcd;
const daemons: Daemon[] = [];
const frontendDir = mkdtempSync("/tmp/clusterf-front-");
const intermediateDir = mkdtempSync("/tmp/clusterf-mid-");

const etcdctl = (...args: string[]) => etcdctlAt(etcd.clientUrl, args);

const routeValue = () => etcdctl("get", "--print-value-only", "/clusterf/routes/mid1").trim();

/** An intermediate host's daemon advertising routes/NAME (IPv4 by default; `route` adds or replaces flags). */
function intermediate(name = "mid1", route: string[] = ["-advertise-route-prefix4=198.51.100.0/24", "-advertise-route-gateway4=192.0.2.21"]): Daemon {
  const d = new Daemon([
    `-etcd-machines=${etcd.clientUrl}`,
    `-config-path=${intermediateDir}`,
    "-ipvs-mock",
    "-filter-etcd-routes",
    "-etcd-ttl=2s",
    `-advertise-route-name=${name}`,
    ...route,
    "-advertise-route-ipvs-method=droute",
  ]);
  daemons.push(d);
  return d;
}

beforeAll(async () => {
  etcd = await startEtcd();
  // The frontend tier drops backends that no advertised route covers.
  mkdirSync(join(frontendDir, "routes"));
  writeFileSync(join(frontendDir, "routes/default"), '{"IpvsMethod": "filter"}');
  // The intermediate tier masqs to its local backends only.
  mkdirSync(join(intermediateDir, "routes"));
  writeFileSync(join(intermediateDir, "routes/local"), '{"Prefix4": "198.51.100.0/24", "IpvsMethod": "masq"}');
  writeFileSync(join(intermediateDir, "routes/default"), '{"IpvsMethod": "filter"}');
  etcdctl("put", "/clusterf/services/web/frontend", '{"ipv4": "192.0.2.1", "tcp": 80}');
  etcdctl("put", "/clusterf/services/web/backends/a", '{"ipv4": "198.51.100.1", "tcp": 8080, "weight": 10}');
  etcdctl("put", "/clusterf/services/web/backends/b", '{"ipv4": "198.51.100.2", "tcp": 8080, "weight": 5}');
  etcdctl("put", "/clusterf/services/web/backends/c", '{"ipv4": "203.0.113.9", "tcp": 8080}');
});

afterAll(async () => {
  for (const d of daemons) await d.stop("SIGKILL").catch(() => {});
  await etcd?.destroy();
  rmSync(frontendDir, { recursive: true, force: true });
  rmSync(intermediateDir, { recursive: true, force: true });
});

test("the advertised route drives the frontend tier; SIGKILL expires it after the TTL", async () => {
  const front = new Daemon([`-etcd-machines=${etcd.clientUrl}`, `-config-path=${frontendDir}`, "-ipvs-mock"]);
  daemons.push(front);
  await front.waitFor((t) => t.join() === "TCP 192.0.2.1:80 wlc", 15_000, "frontend without routes");

  const mid = intermediate();
  await mid.waitFor((t) => t.join() === "TCP 192.0.2.1:80 wlc,-> 198.51.100.1:8080 Masq 10 0 0,-> 198.51.100.2:8080 Masq 5 0 0", 15_000, "intermediate: local masq");
  await until(() => routeValue() !== "", 10_000, "route advertised", 100);
  expect(JSON.parse(routeValue())).toEqual({ Prefix4: "198.51.100.0/24", Gateway4: "192.0.2.21", IpvsMethod: "droute" });
  await front.waitFor((t) => t.join() === "TCP 192.0.2.1:80 wlc,-> 192.0.2.21:80 Route 15 0 0", 10_000, "frontend: droute to the gateway");

  // Draining a backend changes the frontend's merged weight.
  etcdctl("put", "/clusterf/services/web/backends/a", '{"ipv4": "198.51.100.1", "tcp": 8080, "weight": 0}');
  await front.waitFor((t) => t.join() === "TCP 192.0.2.1:80 wlc,-> 192.0.2.21:80 Route 5 0 0", 10_000, "merged weight after drain");

  await mid.stop("SIGKILL");
  const t0 = Date.now();
  await front.waitFor((t) => t.join() === "TCP 192.0.2.1:80 wlc", 10_000, "route expired");
  const elapsed = Date.now() - t0;
  expect(elapsed).toBeGreaterThan(1000); // not before the 2 s TTL (minus scheduling slack)
  expect(routeValue()).toBe("");
  await front.stop("SIGTERM");
});

/** The lease id of routes/mid1 ("" when the key is absent), as text: ids are 64-bit. */
const routeLease = () => /"Lease" : (\d+)/.exec(etcdctl("get", "-w", "fields", "/clusterf/routes/mid1"))?.[1] ?? "";

test("SIGTERM withdraws the route at once; an etcd outage longer than the TTL re-advertises it", async () => {
  const mid = intermediate();
  await until(() => routeValue() !== "" && mid.stderr.includes("route: advertised"), 15_000, "route advertised", 100);
  const leaseBefore = routeLease();
  expect(leaseBefore).not.toBe("");
  const logBefore = mid.stderr.length;
  await etcd.stop();
  await Bun.sleep(5000); // longer than 2 × TTL: the lease is lost on the client side
  await etcd.restart();
  // etcd renews every lease when it restarts, so the old key outlives the outage by one TTL:
  // the route counts as written again only under another lease.
  await until(() => routeLease() !== leaseBefore && routeLease() !== "", 20_000, "route written again under a new lease", 100);
  // Still there after more than a TTL: kept alive.
  await Bun.sleep(3000);
  expect(routeValue()).not.toBe("");
  const logAfter = mid.stderr.slice(logBefore);
  expect(logAfter).toContain("route: lease lost");
  expect(logAfter.match(/route: advertised/g)?.length).toBe(1);
  expect(await mid.stop("SIGTERM")).toBe(0);
  expect(routeValue()).toBe("");
});

test("a dual-stack route: the IPv6 prefix goes to the IPv6 gateway", async () => {
  etcdctl("put", "/clusterf/services/web6/frontend", '{"ipv4": "192.0.2.2", "ipv6": "2001:db8::2", "tcp": 80}');
  etcdctl("put", "/clusterf/services/web6/backends/d", '{"ipv4": "198.51.100.3", "ipv6": "2001:db8:100::3", "tcp": 8080, "weight": 7}');
  const front = new Daemon([`-etcd-machines=${etcd.clientUrl}`, `-config-path=${frontendDir}`, "-ipvs-mock"]);
  daemons.push(front);
  const mid = intermediate("mid6", [
    "-advertise-route-prefix4=198.51.100.0/24",
    "-advertise-route-gateway4=192.0.2.23",
    "-advertise-route-prefix6=2001:db8:100::/48",
    "-advertise-route-gateway6=2001:db8::23",
  ]);
  const value = () => etcdctl("get", "--print-value-only", "/clusterf/routes/mid6").trim();
  await until(() => value() !== "", 15_000, "dual-stack route advertised", 100);
  expect(JSON.parse(value())).toEqual({
    Prefix4: "198.51.100.0/24",
    Gateway4: "192.0.2.23",
    Prefix6: "2001:db8:100::/48",
    Gateway6: "2001:db8::23",
    IpvsMethod: "droute",
  });
  const want = ["TCP 192.0.2.2:80 wlc", "-> 192.0.2.23:80 Route 7 0 0", "TCP [2001:db8::2]:80 wlc", "-> [2001:db8::23]:80 Route 7 0 0"];
  await front.waitFor((t) => want.every((l) => t.includes(l)), 15_000, "frontend: droute to both gateways");
  expect(await mid.stop("SIGTERM")).toBe(0);
  expect(value()).toBe("");
  await front.waitFor((t) => !t.some((l) => l.includes("2001:db8::23") || l.includes("192.0.2.23")), 10_000, "both destinations gone with the route");
  expect(await front.stop("SIGTERM")).toBe(0);
});
