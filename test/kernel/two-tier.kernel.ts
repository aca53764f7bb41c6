// The two-tier deployment of docs/config.md §5 in the real kernel (run inside the user-mode kernel by
// test/kernel/run.sh): network namespaces play the hosts, each with its own IPVS table and its own
// clusterf-ipvs, all reading one real etcd.
//
//   cli 203.0.113.2 ── rtr ══ LAN 192.0.2.16/28 (bridge in rtr) ══╤═ front .20   VIP on lo, droute
//                      .30   routes the VIP to front              ├─ mid1 .21 ── b11, b12 (198.51.100.0/25)
//                                                                 ├─ mid2 .22 ── b21      (198.51.100.128/25)
//                                                                 └─ etcd .25
//
// front: default route `filter`, so it only sends to backends that an advertised route covers;
// each midN: -filter-etcd-routes, local `masq` for its own prefix and a default `filter`, and it
// advertises routes/midN = {its prefix, Gateway4 = its LAN address, droute} under a 2 s lease.
// The VIP sits on a non-ARPing dummy device on the mids (as on DR real servers); their replies
// go straight back through the router, not through the frontend host.
// Everything expected (tables, traffic counts) is computed from the backends' weights below.
// Health: the backends behind mid1 fail their checks → mid1 publishes health/mid1/web/* under its
// lease → the frontend's weight for mid1 drops to 0 and new connections go to mid2.
import { beforeAll, describe, expect, test } from "bun:test";
import { openSync, closeSync } from "node:fs";
import { join } from "node:path";
import { BUN, Daemon, tableLines } from "../support/proc.ts";
import { kernelScratch, must, sh, writeTree } from "../support/kernel.ts";
import { until } from "../support/until.ts";
import { etcdctl as etcdctlAt } from "../support/etcd.ts";

const FIX = join(import.meta.dir, "fixtures");
const { tmp, children, netns } = kernelScratch("two-tier");

const VIP = "192.0.2.1";
const PORT = 80; // the frontend port: the frontend tier's destinations are gateway:PORT
const BACKEND_PORT = 8080; // masq on the intermediate tier translates the port
const CHECK_PORT = 9100; // the health check's own port on each backend
const LAN = { bits: 28, router: "192.0.2.30", front: "192.0.2.20", etcd: "192.0.2.25" };
const CLIENT = { router: "203.0.113.1", client: "203.0.113.2", bits: 24 };
const ETCD_URL = `http://${LAN.etcd}:2379`;
const TTL_MS = 2000;

const MIDS = {
  mid1: { lan: "192.0.2.21", prefix: "198.51.100.0/25" },
  mid2: { lan: "192.0.2.22", prefix: "198.51.100.128/25" },
} as const;
type Mid = keyof typeof MIDS;

// Each backend sits on a /30 link to its intermediate host (`gw` is the intermediate's end).
const BACKENDS = [
  { name: "b11", mid: "mid1" as Mid, ipv4: "198.51.100.2", gw: "198.51.100.1", weight: 3 },
  { name: "b12", mid: "mid1" as Mid, ipv4: "198.51.100.6", gw: "198.51.100.5", weight: 1 },
  { name: "b21", mid: "mid2" as Mid, ipv4: "198.51.100.130", gw: "198.51.100.129", weight: 2 },
];
/** The weights in etcd now. */
const weights: Record<string, number> = Object.fromEntries(BACKENDS.map((b) => [b.name, b.weight]));

const ns = (role: string) => `t2-${role}`;
const inNs = (role: string, cmd: string) => `ip netns exec ${ns(role)} ${cmd}`;

const etcdctl = (...args: string[]) => etcdctlAt(ETCD_URL, args, ["ip", "netns", "exec", ns("etcd")]);
const routeValue = (mid: Mid) => etcdctl("get", "--print-value-only", `/clusterf/routes/${mid}`).trim();
const putBackend = (b: (typeof BACKENDS)[number], weight: number) => {
  etcdctl("put", `/clusterf/services/web/backends/${b.name}`, JSON.stringify({ ipv4: b.ipv4, tcp: BACKEND_PORT, weight }));
  weights[b.name] = weight;
};

// ---- expected tables, from the weights ----

const SERVICE_LINE = `TCP ${VIP}:${PORT} wrr`;
const midSum = (mid: Mid) => BACKENDS.filter((b) => b.mid === mid).reduce((s, b) => s + weights[b.name]!, 0);

/** A one-service table with the connection counters dropped and destinations sorted. */
function shape(lines: string[]): string[] {
  const [svc, ...dests] = lines;
  return [svc ?? "", ...dests.map((d) => d.split(" ").slice(0, 4).join(" ")).sort()];
}
const expectedFront = (alive: Mid[]) => shape([SERVICE_LINE, ...alive.map((m) => `-> ${MIDS[m].lan}:${PORT} Route ${midSum(m)} 0 0`)]);
const expectedMid = (mid: Mid) =>
  shape([SERVICE_LINE, ...BACKENDS.filter((b) => b.mid === mid).map((b) => `-> ${b.ipv4}:${BACKEND_PORT} Masq ${weights[b.name]} 0 0`)]);
const kernelShape = (role: string) => shape(tableLines(must(inNs(role, "ipvsadm -Ln"))));
const same = (a: string[], b: string[]) => a.join("\n") === b.join("\n");

/**
 * What n new connections should do under wrr on both tiers: the frontend splits them by the
 * intermediates' summed weights, each intermediate by its backends' weights (n is chosen so that
 * both tiers see whole wrr rounds, which makes the counts exact).
 */
function expectedCounts(n: number, alive: Mid[]): Record<string, number> {
  const total = alive.reduce((s, m) => s + midSum(m), 0);
  const out: Record<string, number> = {};
  for (const b of BACKENDS) {
    const atMid = alive.includes(b.mid) ? (n * midSum(b.mid)) / total : 0;
    out[b.name] = atMid && (atMid * weights[b.name]!) / midSum(b.mid);
  }
  for (const v of Object.values(out)) expect(Number.isInteger(v)).toBe(true); // a test-design check
  return out;
}

/** New connections per destination so far, from the kernel's counters (`ipvsadm -Ln --stats`). */
function destConns(role: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const l of must(inNs(role, "ipvsadm -Ln --stats")).split("\n")) {
    const m = /^\s+->\s+(\S+)\s+(\d+)/.exec(l);
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

/**
 * n requests from the client, each a new connection; the answers counted per backend. Checks
 * too that the frontend host's IPVS sent each intermediate host the connections of its backends
 * (the kernel folds its per-CPU counters into these totals every 2 s, hence the wait).
 */
async function curlCounts(n: number): Promise<Record<string, number>> {
  const before = destConns("front");
  const lines = must(`for i in $(seq ${n}); do ${inNs("cli", `curl --noproxy '*' -s -m 2 http://${VIP}:${PORT}/`)} || echo FAIL; done`)
    .trim()
    .split("\n");
  expect(lines.filter((l) => !l.startsWith("hello from "))).toEqual([]);
  const out: Record<string, number> = Object.fromEntries(BACKENDS.map((b) => [b.name, 0]));
  for (const l of lines) out[l.slice("hello from ".length)]! += 1;
  const delta = (after: Record<string, number>, gw: string) => (after[gw] ?? 0) - (before[gw] ?? 0);
  const gws = Object.values(MIDS).map((m) => `${m.lan}:${PORT}`);
  let after = destConns("front");
  for (const t0 = Date.now(); gws.reduce((s, gw) => s + delta(after, gw), 0) < n && Date.now() - t0 < 5000; after = destConns("front")) {
    await Bun.sleep(250);
  }
  for (const [mid, m] of Object.entries(MIDS)) {
    const gw = `${m.lan}:${PORT}`;
    expect(delta(after, gw)).toBe(BACKENDS.filter((b) => b.mid === mid).reduce((s, b) => s + out[b.name]!, 0));
  }
  return out;
}

// ---- the network ----

/** A veth from the router's LAN bridge to `role` (its end is eth0, with `addr`). */
function lanPort(role: string, addr: string) {
  must(
    [
      `ip link add l-${role} netns ${ns("rtr")} type veth peer name eth0 netns ${ns(role)}`,
      `ip -n ${ns("rtr")} link set l-${role} master br0 up`,
      `ip -n ${ns(role)} addr add ${addr}/${LAN.bits} dev eth0`,
      `ip -n ${ns(role)} link set eth0 up`,
    ].join(" && "),
  );
}

function buildNetwork() {
  for (const r of ["rtr", "etcd", "cli", "front", ...Object.keys(MIDS), ...BACKENDS.map((b) => b.name)]) netns(ns(r));
  const rtr = ns("rtr");
  must(
    [
      `ip -n ${rtr} link add br0 type bridge forward_delay 0`,
      `ip -n ${rtr} addr add ${LAN.router}/${LAN.bits} dev br0`,
      `ip -n ${rtr} link set br0 up`,
      `ip netns exec ${rtr} sysctl -qw net.ipv4.ip_forward=1`,
      // The client's side.
      `ip link add v-cli netns ${rtr} type veth peer name eth0 netns ${ns("cli")}`,
      `ip -n ${rtr} addr add ${CLIENT.router}/${CLIENT.bits} dev v-cli`,
      `ip -n ${rtr} link set v-cli up`,
      `ip -n ${ns("cli")} addr add ${CLIENT.client}/${CLIENT.bits} dev eth0`,
      `ip -n ${ns("cli")} link set eth0 up`,
      `ip -n ${ns("cli")} route add default via ${CLIENT.router}`,
      // The VIP is announced (here: routed) to the frontend host only.
      `ip -n ${rtr} route add ${VIP}/32 via ${LAN.front}`,
    ].join(" && "),
  );
  lanPort("etcd", LAN.etcd);
  lanPort("front", LAN.front);
  must(`ip -n ${ns("front")} addr add ${VIP}/32 dev lo && ip -n ${ns("front")} route add default via ${LAN.router}`);
  for (const [mid, m] of Object.entries(MIDS)) {
    lanPort(mid, m.lan);
    must(
      [
        // The VIP on a dummy device that never answers ARP for it (DR real-server sysctls).
        inNs(mid, "sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 net.ipv4.ip_forward=1"),
        `ip -n ${ns(mid)} link add vip0 type dummy`,
        `ip -n ${ns(mid)} addr add ${VIP}/32 dev vip0`,
        `ip -n ${ns(mid)} link set vip0 up`,
        // Replies to clients (un-NATed from masq) go out through the router, not the frontend host.
        `ip -n ${ns(mid)} route add default via ${LAN.router}`,
      ].join(" && "),
    );
  }
  for (const b of BACKENDS) {
    must(
      [
        `ip link add v-${b.name} netns ${ns(b.mid)} type veth peer name eth0 netns ${ns(b.name)}`,
        `ip -n ${ns(b.mid)} addr add ${b.gw}/30 dev v-${b.name}`,
        `ip -n ${ns(b.mid)} link set v-${b.name} up`,
        `ip -n ${ns(b.name)} addr add ${b.ipv4}/30 dev eth0`,
        `ip -n ${ns(b.name)} link set eth0 up`,
        // masq: the backend's replies must return through its intermediate host.
        `ip -n ${ns(b.name)} route add default via ${b.gw}`,
      ].join(" && "),
    );
  }
}

async function startEtcdInNamespace() {
  const log = openSync(join(tmp, "etcd.log"), "a");
  const p = Bun.spawn(
    [
      "ip", "netns", "exec", ns("etcd"), "setpriv", "--pdeathsig", "KILL", "--", "/usr/bin/etcd",
      "--name", "e0", "--data-dir", join(tmp, "etcd.data"),
      "--listen-client-urls", ETCD_URL, "--advertise-client-urls", ETCD_URL,
      "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
      "--initial-cluster", "e0=http://127.0.0.1:2380", "--initial-cluster-state", "new",
      "--heartbeat-interval", "50", "--election-timeout", "500",
    ],
    { stdin: "ignore", stdout: log, stderr: log },
  );
  closeSync(log);
  children.push(p);
  const t0 = Date.now();
  while (sh(inNs("etcd", `etcdctl --endpoints=${ETCD_URL} --command-timeout=1s endpoint health`)).code !== 0) {
    if (p.exitCode !== null) throw new Error(`etcd exited: ${must(`tail -20 ${join(tmp, "etcd.log")}`)}`);
    if (Date.now() - t0 > 30_000) throw new Error(`etcd not healthy: ${must(`tail -20 ${join(tmp, "etcd.log")}`)}`);
    await Bun.sleep(200);
  }
}

async function startBackend(b: (typeof BACKENDS)[number]) {
  const p = Bun.spawn(["ip", "netns", "exec", ns(b.name), BUN, join(FIX, "backend.ts"), b.name, String(BACKEND_PORT), "9000"], {
    stdout: "pipe",
    stderr: "inherit",
  });
  children.push(p);
  const reader = (p.stdout as ReadableStream<Uint8Array>).getReader();
  expect(new TextDecoder().decode((await reader.read()).value)).toContain("ready");
  reader.releaseLock();
}

// ---- the daemons ----

const etcdArgs = (role: string) => [`-etcd-machines=${ETCD_URL}`, `-config-path=${join(tmp, role)}`, `-state-dir=${join(tmp, `${role}-state`)}`];

function daemon(role: string, extra: string[] = []): Daemon {
  const d = new Daemon([...etcdArgs(role), ...extra], {}, ["ip", "netns", "exec", ns(role)]);
  children.push(d.proc);
  return d;
}

function intermediate(mid: Mid): Daemon {
  return daemon(mid, [
    "-filter-etcd-routes",
    `-advertise-route-name=${mid}`,
    `-advertise-route-prefix4=${MIDS[mid].prefix}`,
    `-advertise-route-gateway4=${MIDS[mid].lan}`,
    "-advertise-route-ipvs-method=droute",
    `-etcd-ttl=${TTL_MS / 1000}s`,
  ]);
}

let front: Daemon;
const mids = {} as Record<Mid, Daemon>;

beforeAll(async () => {
  must("modprobe ip_vs");
  buildNetwork();
  await startEtcdInNamespace();
  await Promise.all(BACKENDS.map(startBackend));

  writeTree(join(tmp, "front"), { "routes/default.json": { IpvsMethod: "filter" } });
  for (const [mid, m] of Object.entries(MIDS)) {
    writeTree(join(tmp, mid), {
      "routes/local.json": { Prefix4: m.prefix, IpvsMethod: "masq" },
      "routes/default.json": { IpvsMethod: "filter" },
    });
  }
  etcdctl("put", "/clusterf/services/web/frontend", JSON.stringify({ ipv4: VIP, tcp: PORT, scheduler: "wrr" }));
  for (const b of BACKENDS) putBackend(b, b.weight);
});

describe("two tiers in the kernel: frontend droute → intermediate masq → backends", () => {
  // A tcp check on a port of its own (CHECK_PORT): a listener per backend that the tests stop and start.
  const listeners: Record<string, ReturnType<typeof Bun.spawn>> = {};
  const listen = async (b: (typeof BACKENDS)[number]) => {
    const code = `Bun.listen({ hostname: "0.0.0.0", port: ${CHECK_PORT}, socket: { data() {} } }); console.log("ready")`;
    const p = Bun.spawn(["ip", "netns", "exec", ns(b.name), BUN, "-e", code], { stdout: "pipe", stderr: "inherit" });
    children.push(p);
    const reader = (p.stdout as ReadableStream<Uint8Array>).getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toContain("ready");
    reader.releaseLock();
    listeners[b.name] = p;
  };
  const unlisten = async (b: (typeof BACKENDS)[number]) => {
    listeners[b.name]!.kill("SIGKILL");
    await listeners[b.name]!.exited;
  };
  const check = { type: "tcp", port: CHECK_PORT, interval: "500ms", timeout: "300ms", fall: 2, rise: 1 };
  const healthKeys = () => etcdctl("get", "--prefix", "--keys-only", "/clusterf/health/").split("\n").filter(Boolean).sort();
  /** Back to a frontend without a check; every check listener stopped. */
  const dropChecks = async () => {
    etcdctl("put", "/clusterf/services/web/frontend", JSON.stringify({ ipv4: VIP, tcp: PORT, scheduler: "wrr" }));
    await until(() => same(kernelShape("mid1"), expectedMid("mid1")), 15_000, () => kernelShape("mid1").join("\n"), 100);
    for (const p of Object.values(listeners)) p.kill("SIGKILL");
  };

  test("traffic reaches backends behind both intermediate hosts, spread by their summed weights", async () => {
    front = daemon("front");
    // Without advertised routes the frontend tier filters every backend out.
    await front.waitFor((t) => same(shape(t), expectedFront([])), 30_000, "frontend without routes");

    for (const mid of Object.keys(MIDS) as Mid[]) mids[mid] = intermediate(mid);
    for (const mid of Object.keys(MIDS) as Mid[]) {
      await mids[mid].waitFor((t) => same(shape(t), expectedMid(mid)), 30_000, `${mid}: masq to its own backends`);
      expect(kernelShape(mid)).toEqual(expectedMid(mid));
    }
    const all = Object.keys(MIDS) as Mid[];
    await front.waitFor((t) => same(shape(t), expectedFront(all)), 30_000, "frontend: droute to both intermediates");
    expect(kernelShape("front")).toEqual(expectedFront(all));
    for (const mid of all) {
      expect(JSON.parse(routeValue(mid))).toEqual({ Prefix4: MIDS[mid].prefix, Gateway4: MIDS[mid].lan, IpvsMethod: "droute" });
    }
    // Merged weights: mid1 carries 3 + 1, mid2 carries 2.
    expect(expectedFront(all)).toEqual([SERVICE_LINE, `-> ${MIDS.mid1.lan}:${PORT} Route 4`, `-> ${MIDS.mid2.lan}:${PORT} Route 2`]);

    const got = await curlCounts(24);
    console.log("spread over both intermediates:", JSON.stringify(got));
    expect(got).toEqual(expectedCounts(24, all));
  });

  test("draining a backend behind an intermediate lowers that intermediate's merged weight", async () => {
    const all = Object.keys(MIDS) as Mid[];
    const b12 = BACKENDS.find((b) => b.name === "b12")!;
    putBackend(b12, 0);
    await mids.mid1.waitFor((t) => same(shape(t), expectedMid("mid1")), 15_000, "mid1: b12 drained");
    await front.waitFor((t) => same(shape(t), expectedFront(all)), 15_000, "frontend: mid1's merged weight after the drain");
    expect(kernelShape("front")).toEqual([SERVICE_LINE, `-> ${MIDS.mid1.lan}:${PORT} Route 3`, `-> ${MIDS.mid2.lan}:${PORT} Route 2`]);
    expect(kernelShape("mid1")).toContain(`-> ${b12.ipv4}:${BACKEND_PORT} Masq 0`); // drained, not removed

    const got = await curlCounts(10);
    console.log("with b12 drained:", JSON.stringify(got));
    expect(got).toEqual(expectedCounts(10, all));

    // And back: the frontend's weight for mid1 follows.
    putBackend(b12, b12.weight);
    await front.waitFor((t) => same(shape(t), expectedFront(all)), 15_000, "frontend: mid1's weight restored");
    expect(kernelShape("front")).toEqual(expectedFront(all));
  });

  test("every backend behind an intermediate fails its check: it publishes their health and the frontend's weight for it drops to 0; back when they recover", async () => {
    const all = Object.keys(MIDS) as Mid[];
    await Promise.all(BACKENDS.map(listen));
    etcdctl("put", "/clusterf/services/web/frontend", JSON.stringify({ ipv4: VIP, tcp: PORT, scheduler: "wrr", check }));
    await Bun.sleep(2000); // checks pass: nothing published, nothing changes
    expect(etcdctl("get", "--prefix", "--keys-only", "/clusterf/health/").trim()).toBe("");
    expect(kernelShape("front")).toEqual(expectedFront(all));

    const behindMid1 = BACKENDS.filter((b) => b.mid === "mid1");
    for (const b of behindMid1) await unlisten(b);
    const t0 = Date.now();
    const down = [SERVICE_LINE, `-> ${MIDS.mid1.lan}:${PORT} Route 0`, `-> ${MIDS.mid2.lan}:${PORT} Route ${midSum("mid2")}`];
    await until(() => same(kernelShape("front"), down), 15_000, () => kernelShape("front").join("\n"), 100);
    console.log(`every backend behind mid1 down: the frontend's weight for mid1 was 0 ${Date.now() - t0} ms later`);
    // The records, one per backend, under mid1's route lease.
    const lease = (key: string) => /"Lease" : (\d+)/.exec(etcdctl("get", "-w", "fields", key))?.[1] ?? "";
    expect(healthKeys()).toEqual(behindMid1.map((b) => `/clusterf/health/mid1/web/${b.name}`));
    for (const b of behindMid1) expect(lease(`/clusterf/health/mid1/web/${b.name}`)).toBe(lease("/clusterf/routes/mid1"));
    // mid1's own table: its checker put its backends at 0.
    expect(kernelShape("mid1")).toEqual(shape([SERVICE_LINE, ...behindMid1.map((b) => `-> ${b.ipv4}:${BACKEND_PORT} Masq 0 0 0`)]));
    // New connections all go to mid2.
    const got = await curlCounts(6);
    console.log("with every backend behind mid1 down:", JSON.stringify(got));
    expect(got).toEqual({ b11: 0, b12: 0, b21: 6 });

    await Promise.all(behindMid1.map(listen));
    await until(() => same(kernelShape("front"), expectedFront(all)), 15_000, () => kernelShape("front").join("\n"), 100);
    await until(() => etcdctl("get", "--prefix", "--keys-only", "/clusterf/health/").trim() === "", 5000, () => "records left", 100);
    expect(await curlCounts(24)).toEqual(expectedCounts(24, all));

    await dropChecks();
  });

  test("SIGKILL of an intermediate's daemon: its route and its health records expire after the TTL and the frontend stops sending there", async () => {
    // mid2 dies holding a health record: b21's check fails, so the frontend has mid2 at weight 0.
    await Promise.all(BACKENDS.map(listen));
    etcdctl("put", "/clusterf/services/web/frontend", JSON.stringify({ ipv4: VIP, tcp: PORT, scheduler: "wrr", check }));
    const b21 = BACKENDS.find((b) => b.name === "b21")!;
    await unlisten(b21);
    const mid2Down = [SERVICE_LINE, `-> ${MIDS.mid1.lan}:${PORT} Route ${midSum("mid1")}`, `-> ${MIDS.mid2.lan}:${PORT} Route 0`];
    await until(() => same(kernelShape("front"), mid2Down), 15_000, () => kernelShape("front").join("\n"), 100);
    expect(healthKeys()).toEqual(["/clusterf/health/mid2/web/b21"]);

    const mid2Table = kernelShape("mid2");
    const t0 = Date.now();
    mids.mid2.proc.kill("SIGKILL");
    await mids.mid2.proc.exited;
    await front.waitFor((t) => same(shape(t), expectedFront(["mid1"])), 15_000, "frontend without mid2");
    const elapsed = Date.now() - t0;
    console.log(`mid2's route expired; the frontend dropped it ${elapsed} ms after the SIGKILL (TTL ${TTL_MS} ms)`);
    // The lease, not the kill, removed it, and at its TTL. The daemon renews the lease every TTL/3
    // (etcd3's keep-alive period), so at the kill it had between TTL - TTL/3 and TTL left (less up
    // to 100 ms, the longest the daemon's event loop may stall a keep-alive). etcd revokes expired
    // leases in a loop that runs every 500 ms; the frontend's watch, apply and print add under a
    // second even in the loaded guest.
    expect(elapsed).toBeGreaterThanOrEqual(TTL_MS - TTL_MS / 3 - 100);
    expect(elapsed).toBeLessThanOrEqual(TTL_MS + 500 + 1000);
    expect(routeValue("mid2")).toBe("");
    expect(healthKeys()).toEqual([]); // gone with the same lease: nothing is left pointing at mid2
    expect(routeValue("mid1")).not.toBe("");
    expect(kernelShape("front")).toEqual(expectedFront(["mid1"]));
    // The dead daemon's IPVS table stays in mid2's kernel, as it would on a real host.
    expect(kernelShape("mid2")).toEqual(mid2Table);

    const got = await curlCounts(8);
    console.log("after mid2's daemon died:", JSON.stringify(got));
    expect(got).toEqual(expectedCounts(8, ["mid1"]));
    await dropChecks();
  });

  test("a restarted intermediate advertises again and gets traffic back; SIGTERM withdraws at once", async () => {
    const all = Object.keys(MIDS) as Mid[];
    mids.mid2 = intermediate("mid2");
    await mids.mid2.waitFor((t) => same(shape(t), expectedMid("mid2")), 30_000, "mid2 after its restart");
    await front.waitFor((t) => same(shape(t), expectedFront(all)), 30_000, "frontend: mid2 back");
    // Soft restart: its table was still right but for b21, which its check had put at weight 0
    // before the kill and which now has no check: one write (the log line may trail the table).
    await until(() => /IPVS: applied kind=full writes=1 /.test(mids.mid2!.stderr), 3000, () => mids.mid2!.stderr, 100);
    expect(await curlCounts(24)).toEqual(expectedCounts(24, all));

    expect(await mids.mid2.stop("SIGTERM")).toBe(0);
    // Gone as the daemon exits (its lease revoked), not TTL_MS later.
    expect(routeValue("mid2")).toBe("");
    const t0 = Date.now();
    await front.waitFor((t) => same(shape(t), expectedFront(["mid1"])), 15_000, "frontend without mid2 after SIGTERM");
    console.log(`mid2's route withdrawn at its exit; the frontend dropped it ${Date.now() - t0} ms later`);
    expect(await curlCounts(8)).toEqual(expectedCounts(8, ["mid1"]));

    expect(await mids.mid1.stop("SIGTERM")).toBe(0);
    expect(await front.stop("SIGTERM")).toBe(0);
  });
});
