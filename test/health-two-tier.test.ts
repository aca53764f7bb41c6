// Published backend health in two tiers, against a real etcd: an intermediate host's clusterf-ipvs
// (in-memory IPVS) checks its local backends (loopback TCP servers) and publishes
// health/mid1/web/BACKEND = {"weight": N} under its route's lease for each backend not at its
// configured weight; a frontend-tier clusterf-ipvs sums those for the gateway's destination. All
// backends behind mid1 down → weight 0; healthy again → the keys go and the weight comes back;
// SIGKILL of the intermediate → the keys expire with the lease, as does the route.
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

/** Key → value under a prefix. */
function getPrefix(prefix: string): Record<string, string> {
  const lines = etcdctl("get", "--prefix", prefix).split("\n").filter(Boolean);
  const out: Record<string, string> = {};
  for (let i = 0; i + 1 < lines.length; i += 2) out[lines[i]!] = lines[i + 1]!;
  return out;
}
const leaseOf = (key: string) => /"Lease" : (\d+)/.exec(etcdctl("get", "-w", "fields", key))?.[1] ?? "";

/** A loopback TCP server that accepts and says nothing (a tcp check passes while it listens). */
class Backend {
  private server?: ReturnType<typeof Bun.listen>;
  port = 0;
  constructor(readonly address: string) {}
  start(): void {
    this.server = Bun.listen({ hostname: this.address, port: this.port, socket: { data() {} } });
    this.port = this.server.port;
  }
  stop(): void {
    this.server?.stop(true);
    this.server = undefined;
  }
}
const a = new Backend("127.0.0.2");
const b = new Backend("127.0.0.3");

const FRONT = "TCP 192.0.2.1:80 wlc";
const gateway = (w: number) => `-> 192.0.2.21:80 Route ${w} 0 0`;

beforeAll(async () => {
  etcd = await startEtcd();
  a.start();
  b.start();
  mkdirSync(join(frontendDir, "routes"));
  writeFileSync(join(frontendDir, "routes/default"), '{"IpvsMethod": "filter"}');
  mkdirSync(join(intermediateDir, "routes"));
  writeFileSync(join(intermediateDir, "routes/local"), '{"Prefix4": "127.0.0.0/24", "IpvsMethod": "masq"}');
  writeFileSync(join(intermediateDir, "routes/default"), '{"IpvsMethod": "filter"}');
  // One service for both tiers; the check is the frontend's, for every backend.
  etcdctl(
    "put",
    "/clusterf/services/web/frontend",
    '{"ipv4": "192.0.2.1", "tcp": 80, "check": {"type": "tcp", "interval": "200ms", "timeout": "150ms", "rise": 1, "fall": 1}}',
  );
  etcdctl("put", "/clusterf/services/web/backends/a", JSON.stringify({ ipv4: a.address, tcp: a.port, weight: 3 }));
  etcdctl("put", "/clusterf/services/web/backends/b", JSON.stringify({ ipv4: b.address, tcp: b.port, weight: 1 }));
});

afterAll(async () => {
  for (const d of daemons) await d.stop("SIGKILL").catch(() => {});
  a.stop();
  b.stop();
  await etcd?.destroy();
  rmSync(frontendDir, { recursive: true, force: true });
  rmSync(intermediateDir, { recursive: true, force: true });
});

test("the intermediate publishes its backends' health under its lease; the frontend's weight for it follows, and falls back when the lease dies", async () => {
  const front = new Daemon([`-etcd-machines=${etcd.clientUrl}`, `-config-path=${frontendDir}`, "-ipvs-mock"]);
  daemons.push(front);
  const mid = new Daemon([
    `-etcd-machines=${etcd.clientUrl}`,
    `-config-path=${intermediateDir}`,
    "-ipvs-mock",
    "-filter-etcd-routes",
    "-etcd-ttl=2s",
    "-advertise-route-name=mid1",
    "-advertise-route-prefix4=127.0.0.0/24",
    "-advertise-route-gateway4=192.0.2.21",
    "-advertise-route-ipvs-method=droute",
  ]);
  daemons.push(mid);
  await front.waitFor((t) => t.join() === [FRONT, gateway(4)].join(), 20_000, "frontend: the configured sum 3 + 1");
  await Bun.sleep(1000); // several check rounds: healthy backends publish nothing
  expect(getPrefix("/clusterf/health/")).toEqual({});

  a.stop();
  await until(() => getPrefix("/clusterf/health/")["/clusterf/health/mid1/web/a"] !== undefined, 10_000, "a's record", 100);
  expect(getPrefix("/clusterf/health/")).toEqual({ "/clusterf/health/mid1/web/a": '{"weight":0}' });
  // Under the route's lease: they live and die together.
  expect(leaseOf("/clusterf/health/mid1/web/a")).toBe(leaseOf("/clusterf/routes/mid1"));
  await front.waitFor((t) => t.includes(gateway(1)), 10_000, "frontend: only b's share");
  // The intermediate's own table: its checker, as always.
  await mid.waitFor((t) => t.some((l) => l.startsWith(`-> ${a.address}:${a.port} Masq 0`)), 10_000, "intermediate: a at 0");

  b.stop();
  await front.waitFor((t) => t.join() === [FRONT, gateway(0)].join(), 10_000, "frontend: mid1 at 0, every backend behind it down");
  expect(Object.keys(getPrefix("/clusterf/health/")).sort()).toEqual(["/clusterf/health/mid1/web/a", "/clusterf/health/mid1/web/b"]);
  // The frontend checks nothing itself: the gateway is the other tier's to check.
  expect(front.stderr).not.toContain("health check:");

  a.start();
  b.start();
  await front.waitFor((t) => t.join() === [FRONT, gateway(4)].join(), 10_000, "frontend: back to 4");
  await until(() => Object.keys(getPrefix("/clusterf/health/")).length === 0, 10_000, "records deleted when healthy", 100);

  a.stop();
  b.stop();
  await front.waitFor((t) => t.includes(gateway(0)), 10_000, "frontend: 0 again");
  await mid.stop("SIGKILL");
  // The records expire with the lease, and the route with them: nothing points at mid1.
  await front.waitFor((t) => t.join() === FRONT, 10_000, "route and records expired");
  await until(() => Object.keys(getPrefix("/clusterf/health/")).length === 0, 5_000, "records expired", 100);
  expect(getPrefix("/clusterf/routes/")).toEqual({});
  expect(await front.stop("SIGTERM")).toBe(0);
});
