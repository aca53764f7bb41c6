// clusterf-ipvs against the real kernel (run inside the user-mode kernel by scripts/test.sh).
// Every test works in network namespaces of its own (each has its own IPVS table), with TEST-NET
// addresses, and sends traffic only between namespaces inside the guest.
import { beforeAll, describe, expect, test } from "bun:test";
import { existsSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { BUN, Daemon, ROOT, tableLines } from "../support/proc.ts";
import { afterOneResync, answersFrom, blocks, curlFrom, kernelScratch, kernelTable, linkToLb, must, writeTree } from "../support/kernel.ts";
import { until } from "../support/until.ts";
import { RACY_MS } from "../../src/config/tree-cache.ts";

const CLI = join(ROOT, "src/cli/clusterf-ipvs.ts");
const FIX = join(import.meta.dir, "fixtures");
const { tmp, children, netns } = kernelScratch("kernel");

function once(ns: string, args: string[]) {
  const p = Bun.spawnSync(["ip", "netns", "exec", ns, BUN, CLI, "-etcd-machines=", "-print", "-once", ...args], { stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

beforeAll(() => {
  must("modprobe ip_vs");
  expect(existsSync("/proc/net/ip_vs")).toBe(true);
});

const tree = {
  "services/web/frontend.json": { ipv4: "192.0.2.10", ipv6: "2001:db8::10", tcp: 80, udp: 80, scheduler: "rr" },
  "services/web/backends/w1.json": { ipv4: "198.51.100.11", ipv6: "2001:db8:100::11", tcp: 8080, udp: 8080 },
  "services/web/backends/w2.json": { ipv4: "198.51.100.12", ipv6: "2001:db8:100::12", tcp: 8080, weight: 0 },
  "services/dns/frontend.yaml": "ipv4: 192.0.2.53\nipv6: 2001:db8::53\ntcp: 53\nudp: 53\npersistent: 120\n",
  "services/dns/backends/d1": { ipv4: "203.0.113.1", ipv6: "2001:db8:200::1", tcp: 53, udp: 53 },
  "services/dns/backends/d2": { ipv4: "203.0.113.2", ipv6: "2001:db8:200::2", tcp: 53, udp: 53, weight: 5 },
  "services/tun/frontend": { ipv4: "192.0.2.60", tcp: 443 },
  "services/tun/backends/t1": { ipv4: "198.51.100.200", tcp: 443, weight: 2 },
  "services/tun/backends/t2": { ipv4: "198.51.100.130", tcp: 443, weight: 3 },
  "routes/local": { Prefix4: "198.51.100.0/25", Prefix6: "2001:db8:100::/48", IpvsMethod: "masq" },
  "routes/tunnels": { Prefix4: "198.51.100.192/26", IpvsMethod: "tunnel" },
  "routes/direct": { Prefix4: "198.51.100.128/26", IpvsMethod: "droute" },
  "routes/remote": { Prefix4: "203.0.113.0/24", Gateway4: "192.0.2.254", Prefix6: "2001:db8:200::/48", Gateway6: "2001:db8::254", IpvsMethod: "droute" },
};

describe("programming the kernel", () => {
  const ns = "cf-prog";
  const dir = join(tmp, "prog");
  const state = join(tmp, "prog-state");

  test("the daemon programs a tree; ipvsadm -Ln shows exactly the printed table", () => {
    netns(ns);
    writeTree(dir, tree);
    const r = once(ns, [`-config-path=${dir}`, `-state-dir=${state}`]);
    expect(r.code).toBe(0);
    const printed = blocks(tableLines(r.out));
    expect(kernelTable(ns)).toEqual(printed);
    expect(printed).toContain("TCP 192.0.2.53:53 wlc persistent 120\n-> 192.0.2.254:53 Route 15 0 0");
    expect(printed).toContain("UDP [2001:db8::53]:53 wlc persistent 120\n-> [2001:db8::254]:53 Route 15 0 0");
    expect(printed).toContain("TCP 192.0.2.60:443 wlc\n-> 198.51.100.130:443 Route 3 0 0\n-> 198.51.100.200:443 Tunnel 2 0 0");
    expect(printed).toContain("TCP [2001:db8::10]:80 rr\n-> [2001:db8:100::11]:8080 Masq 10 0 0\n-> [2001:db8:100::12]:8080 Masq 0 0 0");
    expect(printed).toContain("UDP 192.0.2.10:80 rr\n-> 198.51.100.11:8080 Masq 10 0 0");
    expect(printed).toHaveLength(9);
  });

  test("soft restart: the same config makes zero writes; a changed one only the needed writes", () => {
    const before = kernelTable(ns);
    const r = once(ns, [`-config-path=${dir}`, `-state-dir=${state}`]);
    expect(r.code).toBe(0);
    expect(r.err).toMatch(/IPVS: applied kind=full writes=0 errors=0/);
    expect(kernelTable(ns)).toEqual(before);

    writeTree(dir, { "services/web/backends/w2.json": { ipv4: "198.51.100.12", ipv6: "2001:db8:100::12", tcp: 8080, weight: 7 } });
    const r2 = once(ns, [`-config-path=${dir}`, `-state-dir=${state}`]);
    expect(r2.err).toMatch(/IPVS: applied kind=full writes=2 errors=0/); // one edit-dest per family
    expect(kernelTable(ns)).toContain("TCP 192.0.2.10:80 rr\n-> 198.51.100.11:8080 Masq 10 0 0\n-> 198.51.100.12:8080 Masq 7 0 0");

    writeTree(dir, { "services/tun/frontend": { ipv4: "192.0.2.60", tcp: 443, scheduler: "sh" } });
    const r3 = once(ns, [`-config-path=${dir}`, `-state-dir=${state}`]);
    expect(r3.err).toMatch(/IPVS: applied kind=full writes=1 errors=0/); // set-service in place
  });

  test("the -config-path cache: a restart of a settled tree reads no file, an edit is read, and -config-path-cache=off keeps none", async () => {
    const cacheNs = "cf-cache";
    netns(cacheNs);
    const cdir = join(tmp, "cache-tree");
    const cstate = join(tmp, "cache-state");
    writeTree(cdir, tree);
    await Bun.sleep(RACY_MS + 100); // files changed within RACY_MS of a read are read again next time
    const unchanged = (err: string) => Number(/config-path: read .*unchanged=(\d+)/.exec(err)?.[1]);
    const first = once(cacheNs, [`-config-path=${cdir}`, `-state-dir=${cstate}`]);
    expect(first.code).toBe(0);
    expect(unchanged(first.err)).toBe(0);
    const table = kernelTable(cacheNs);
    const again = once(cacheNs, [`-config-path=${cdir}`, `-state-dir=${cstate}`]);
    expect(unchanged(again.err)).toBe(Object.keys(tree).length);
    expect(again.err).toMatch(/IPVS: applied kind=full writes=0 errors=0/);
    expect(blocks(tableLines(again.out))).toEqual(table);
    writeTree(cdir, { "services/web/backends/w2.json": { ipv4: "198.51.100.12", ipv6: "2001:db8:100::12", tcp: 8080, weight: 7 } });
    const edited = once(cacheNs, [`-config-path=${cdir}`, `-state-dir=${cstate}`]);
    expect(unchanged(edited.err)).toBe(Object.keys(tree).length - 1);
    expect(edited.err).toMatch(/IPVS: applied kind=full writes=2 errors=0/);
    expect(kernelTable(cacheNs)).toContain("TCP 192.0.2.10:80 rr\n-> 198.51.100.11:8080 Masq 10 0 0\n-> 198.51.100.12:8080 Masq 7 0 0");
    const off = join(tmp, "cache-off-state");
    const r = once(cacheNs, [`-config-path=${cdir}`, `-state-dir=${off}`, "-config-path-cache=off"]);
    expect(r.code).toBe(0);
    expect(existsSync(join(cstate, "config-path.cache"))).toBe(true);
    expect(existsSync(join(off, "config-path.cache"))).toBe(false);
  });

  test("-ipvs-noop reads the kernel and logs the writes it would make, making none", () => {
    const before = kernelTable(ns);
    rmSync(join(dir, "services/tun"), { recursive: true });
    const r = once(ns, [`-config-path=${dir}`, `-state-dir=${state}`, "-ipvs-noop"]);
    expect(r.err).toContain("IPVS: Delete service inet+tcp://192.0.2.60:443 (noop)");
    expect(kernelTable(ns)).toEqual(before);
  });
});

describe("ownership and drift", () => {
  test("a hand-made service is left alone; hand edits of ours are corrected within one resync", async () => {
    const ns = netns("cf-drift");
    const dir = writeTree(join(tmp, "drift"), {
      "services/web/frontend": { ipv4: "192.0.2.10", tcp: 80 },
      "services/web/backends/a": { ipv4: "198.51.100.1", tcp: 80 },
      "services/web/backends/b": { ipv4: "198.51.100.2", tcp: 80, weight: 5 },
    });
    must(`ip netns exec ${ns} ipvsadm -A -t 192.0.2.99:80 -s rr && ip netns exec ${ns} ipvsadm -a -t 192.0.2.99:80 -r 198.51.100.99:80 -m -w 1`);
    const foreign = "TCP 192.0.2.99:80 rr\n-> 198.51.100.99:80 Masq 1 0 0";
    const d = new Daemon([`-config-path=${dir}`, "-etcd-machines=", `-state-dir=${join(tmp, "drift-state")}`, "-ipvs-resync=2s", "-metrics-listen=127.0.0.1:9113"], {}, ["ip", "netns", "exec", ns]);
    children.push(d.proc);
    await d.waitFor((t) => t.length === 5, 20_000, "initial table with the foreign service");
    const ours = "TCP 192.0.2.10:80 wlc\n-> 198.51.100.1:80 Masq 10 0 0\n-> 198.51.100.2:80 Masq 5 0 0";
    expect(kernelTable(ns)).toEqual([ours, foreign].sort());

    // Three hand edits between two resyncs: the next resync corrects them all.
    const edits = [
      "ipvsadm -d -t 192.0.2.10:80 -r 198.51.100.1:80",
      "ipvsadm -e -t 192.0.2.10:80 -r 198.51.100.2:80 -m -w 99",
      "ipvsadm -a -t 192.0.2.10:80 -r 198.51.100.77:80 -m -w 1",
    ];
    const once = await afterOneResync(ns, 9113, `ip netns exec ${ns} bash -c '${edits.join(" && ")}'`, [ours, foreign].sort(), 5000);
    expect(once).toEqual({ table: [ours, foreign].sort(), drift: 3 });
    // The log line is read from the daemon's stderr a moment after the kernel shows the fix.
    await until(() => d.stderr.includes("differs from what this daemon last wrote"), 3000, () => d.stderr, 100);

    // Removing our service from the config deletes it; the foreign one stays.
    rmSync(join(dir, "services/web"), { recursive: true });
    const t1 = Date.now();
    while (kernelTable(ns).join() !== foreign) {
      if (Date.now() - t1 > 5000) throw new Error(`not removed: ${kernelTable(ns).join("\n")}`);
      await Bun.sleep(200);
    }
    expect(await d.stop("SIGTERM")).toBe(0);
  });
});

describe("end to end with traffic", () => {
  // cli (203.0.113.2) → lb (VIP 192.0.2.1 on lo) → b1 (198.51.100.2), b2 (198.51.100.6), masq.
  const link = (ns: string, peerAddr: string, lbAddr: string, prefix: number) => linkToLb("cf-lb", ns, peerAddr, lbAddr, prefix);
  const curl = (n: number) => curlFrom("cf-cli", "http://192.0.2.1/", n);
  const count = answersFrom;

  test("balanced by weight, drained by weight 0, and a long-lived connection survives drain, restart and removal", async () => {
    for (const n of ["cf-lb", "cf-cli", "cf-b1", "cf-b2"]) netns(n);
    must("ip netns exec cf-lb sysctl -qw net.ipv4.ip_forward=1 && ip -n cf-lb addr add 192.0.2.1/32 dev lo");
    link("cf-cli", "203.0.113.2", "203.0.113.1", 30);
    link("cf-b1", "198.51.100.2", "198.51.100.1", 30);
    link("cf-b2", "198.51.100.6", "198.51.100.5", 30);
    for (const b of ["b1", "b2"]) {
      const p = Bun.spawn(["ip", "netns", "exec", `cf-${b}`, BUN, join(FIX, "backend.ts"), b, "80", "9000"], { stdout: "pipe", stderr: "inherit" });
      children.push(p);
      const reader = (p.stdout as ReadableStream<Uint8Array>).getReader();
      expect(new TextDecoder().decode((await reader.read()).value)).toContain("ready");
      reader.releaseLock();
    }
    const dir = join(tmp, "e2e");
    const backend = (ip: string, weight: number) => ({ ipv4: ip, tcp: 80, weight });
    const echoBackend = (ip: string, weight: number) => ({ ipv4: ip, tcp: 9000, weight });
    writeTree(dir, {
      "services/http/frontend": { ipv4: "192.0.2.1", tcp: 80, scheduler: "wrr" },
      "services/http/backends/b1": backend("198.51.100.2", 3),
      "services/http/backends/b2": backend("198.51.100.6", 1),
      "services/echo/frontend": { ipv4: "192.0.2.1", tcp: 9000, scheduler: "rr" },
      "services/echo/backends/b1": echoBackend("198.51.100.2", 1),
      "services/echo/backends/b2": echoBackend("198.51.100.6", 1),
    });
    const args = [`-config-path=${dir}`, "-etcd-machines=", `-state-dir=${join(tmp, "e2e-state")}`];
    let d = new Daemon([...args, "-metrics-listen=127.0.0.1:9112"], {}, ["ip", "netns", "exec", "cf-lb"]);
    children.push(d.proc);
    await d.waitFor((t) => t.length === 6, 20_000, "e2e table");

    const spread = curl(16);
    expect(spread.filter((l) => l === "FAIL")).toEqual([]);
    expect(count(spread, "b1")).toBe(12);
    expect(count(spread, "b2")).toBe(4);

    // The kernel's counters in the metrics, labelled with the config's names (the kernel folds
    // its counters in every 2 s).
    const destMetric = (name: string, backend: string) => {
      const text = must("ip netns exec cf-lb curl -s http://127.0.0.1:9112/metrics");
      const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes('service="http"') && l.includes(`backend="${backend}"`));
      return line ? Number(line.split(" ").pop()) : NaN;
    };
    const serviceConnections = () =>
      must("ip netns exec cf-lb curl -s http://127.0.0.1:9112/metrics")
        .split("\n")
        .find((l) => l.startsWith('clusterf_ipvs_service_connections_total{service="http",vip="inet+tcp://192.0.2.1:80"}'))
        ?.split(" ")
        .pop();
    // The service's and the destinations' counters are folded in separately: wait for all three.
    const t0 = Date.now();
    while (destMetric("clusterf_ipvs_dest_connections_total", "b1") !== 12 || destMetric("clusterf_ipvs_dest_connections_total", "b2") !== 4 || serviceConnections() !== "16") {
      if (Date.now() - t0 > 8000) throw new Error(`connections not counted: ${must("ip netns exec cf-lb curl -s http://127.0.0.1:9112/metrics")}`);
      await Bun.sleep(250);
    }
    expect(destMetric("clusterf_ipvs_dest_packets_in_total", "b1")).toBeGreaterThanOrEqual(12 * 3);
    expect(destMetric("clusterf_ipvs_dest_bytes_out_total", "b2")).toBeGreaterThan(0);

    // Two long-lived connections through the echo VIP: rr puts one on each backend.
    const go = join(tmp, "go");
    const holds = [0, 1].map(() => {
      const p = Bun.spawn(["ip", "netns", "exec", "cf-cli", BUN, join(FIX, "hold.ts"), "192.0.2.1", "9000", go], { stdout: "pipe", stderr: "pipe" });
      children.push(p);
      return p;
    });
    await Bun.sleep(1500);

    // Drain b2 everywhere: no new connections to it.
    writeTree(dir, { "services/http/backends/b2": backend("198.51.100.6", 0), "services/echo/backends/b2": echoBackend("198.51.100.6", 0) });
    await d.waitFor((t) => t.includes("-> 198.51.100.6:80 Masq 0 0 0") && t.includes("-> 198.51.100.6:9000 Masq 0 0 0"), 10_000, "b2 drained");
    const drained = curl(8);
    expect(count(drained, "b1")).toBe(8);

    // Restart the daemon: no flush, the connections stay.
    expect(await d.stop("SIGTERM")).toBe(0);
    d = new Daemon([...args, "-metrics-listen=127.0.0.1:9112"], {}, ["ip", "netns", "exec", "cf-lb"]);
    children.push(d.proc);
    await d.waitFor((t) => t.length === 6, 20_000, "table after restart");
    await until(() => /IPVS: applied kind=full writes=0/.test(d.stderr), 3000, () => d.stderr, 100);

    // b2 leaves the echo service's config altogether while a connection is on it: the kernel
    // would drop that connection's packets once the destination is deleted, so it stays at
    // weight 0 until the connection ends (-ipvs-drain-removed), then goes.
    rmSync(join(dir, "services/echo/backends/b2"));
    await until(() => d.stderr.includes("still has active connections; weight 0 until they end"), 10_000, () => d.stderr, 100);
    await Bun.sleep(1500); // a few drain checks: the connection is still there
    expect(kernelTable("cf-lb")).toContain("TCP 192.0.2.1:9000 rr\n-> 198.51.100.2:9000 Masq 1 1 0\n-> 198.51.100.6:9000 Masq 0 1 0");
    expect(must("ip netns exec cf-lb curl -s http://127.0.0.1:9112/metrics")).toContain("\nclusterf_ipvs_draining_destinations 1\n");

    writeFileSync(go, "");
    const outputs = await Promise.all(holds.map(async (p) => ({ code: await p.exited, out: await new Response(p.stdout).text() })));
    const lines = outputs.flatMap((o) => o.out.trim().split("\n")).sort();
    expect(outputs.map((o) => o.code)).toEqual([0, 0]);
    expect(lines).toEqual(["b1:1", "b1:2", "b2:1", "b2:2"]);
    // Its connection closed: the drained destination is deleted.
    await d.waitFor((t) => t.length === 5 && !t.some((l) => l.startsWith("-> 198.51.100.6:9000")), 10_000, "b2 deleted after its connection ended");
    expect(kernelTable("cf-lb").join("\n")).not.toContain("198.51.100.6:9000");
    expect(await d.stop("SIGTERM")).toBe(0);
  });
});
