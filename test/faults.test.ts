// Fault suite (real etcd, real directories, the clusterf-ipvs process with the in-memory table):
// 1. etcd stopped for 30 s: the table does not change; local edits still apply; after etcd
//    returns, changes made there apply.
// 2. A 3-member etcd cluster: the member the daemon watches through is killed while keys
//    change, then the leader.
// 4. Bad values through the etcd watch and the directory watcher: the last good value stays,
//    the error is counted in the metrics, the daemon keeps running; /healthz follows etcd.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { enableAuth, freePorts, startEtcd, startEtcdCluster, type Etcd, type EtcdCluster, type EtcdMember, etcdctl as etcdctlAt } from "./support/etcd.ts";
import { Daemon } from "./support/proc.ts";
import { until, withStderr } from "./support/until.ts";

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => {});
});

const etcdctl = (endpoints: string, ...args: string[]) => etcdctlAt(endpoints, args);

async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " ") || l.startsWith(name + "{"));
  return line ? Number(line.split(" ").pop()) : NaN;
}

describe("etcd down for 30 s", () => {
  let etcd: Etcd;
  test("the table stays, local edits apply, etcd changes apply after it returns; health and metrics follow", async () => {
    etcd = await startEtcd();
    cleanups.push(() => etcd.destroy());
    const dir = mkdtempSync("/tmp/clusterf-fault-");
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const [port] = await freePorts(1);
    const url = `http://127.0.0.1:${port}`;
    const ep = etcd.clientUrl;
    etcdctl(ep, "put", "/clusterf/services/s/frontend", '{"ipv4": "192.0.2.1", "tcp": 80}');
    etcdctl(ep, "put", "/clusterf/services/s/backends/a", '{"ipv4": "198.51.100.1", "tcp": 80}');
    const d = new Daemon([`-etcd-machines=${ep}`, `-config-path=${dir}`, "-ipvs-mock", `-metrics-listen=127.0.0.1:${port}`]);
    cleanups.push(() => d.stop("SIGKILL"));
    const before = ["TCP 192.0.2.1:80 wlc", "-> 198.51.100.1:80 Masq 10 0 0"];
    await d.waitFor((t) => t.join() === before.join(), 15_000, "initial");
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    expect(await metric(url, "clusterf_etcd_connected")).toBe(1);

    // 4. A bad value through the etcd watch.
    etcdctl(ep, "put", "/clusterf/services/s/backends/a", '{"ipv4": "198.51.100.1", "tcp": 80, "weight": "heavy"}');
    // ...and through the directory watcher (a new key, and a bad edit of a good one).
    mkdirSync(join(dir, "services/s/backends"), { recursive: true });
    writeFileSync(join(dir, "services/s/backends/local.json"), '{"ipv4": "198.51.100.9", "tcp": 80, "weight": 2}');
    await d.waitFor((t) => t.includes("-> 198.51.100.9:80 Masq 2 0 0"), 10_000, "local backend");
    writeFileSync(join(dir, "services/s/backends/local.json"), '{"ipv4": "198.51.100.9", "tcp": 80, "weight": 2');
    writeFileSync(join(dir, "services/s/backends/junk"), Buffer.from([0xde, 0xad, 0xbe, 0xef]));
    await Bun.sleep(1000);
    expect(d.last).toEqual([...before, "-> 198.51.100.9:80 Masq 2 0 0"]);
    expect(await metric(url, 'clusterf_config_errors_total{source="etcd"}')).toBe(1);
    expect(await metric(url, 'clusterf_config_errors_total{source="local"}')).toBe(2);

    // 1. etcd down for 30 s.
    const seen = d.tables.length;
    await etcd.stop();
    await Bun.sleep(3000);
    expect((await fetch(`${url}/healthz`)).status).toBe(503);
    expect(await metric(url, "clusterf_etcd_connected")).toBe(0);
    writeFileSync(join(dir, "services/s/backends/local.json"), '{"ipv4": "198.51.100.9", "tcp": 80, "weight": 3}');
    await d.waitFor((t) => t.includes("-> 198.51.100.9:80 Masq 3 0 0"), 10_000, "local edit while etcd is down");
    await Bun.sleep(27_000);
    for (const t of d.tables.slice(seen)) expect(t.slice(0, 2)).toEqual(before);
    await etcd.restart();
    etcdctl(ep, "put", "/clusterf/services/s/backends/b", '{"ipv4": "198.51.100.2", "tcp": 80, "weight": 4}');
    await d.waitFor((t) => t.includes("-> 198.51.100.2:80 Masq 4 0 0"), 20_000, "etcd change after it returned");
    await Bun.sleep(300);
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    expect(d.proc.exitCode).toBeNull();
    expect(await d.stop("SIGTERM")).toBe(0);
  }, 90_000);
});

/** The cluster members that process `pid` has an established TCP connection to (per the kernel). */
function connectedMembers(cluster: EtcdCluster, pid: number): EtcdMember[] {
  const p = Bun.spawnSync(["ss", "-tnpH", "state", "established"]);
  if (p.exitCode !== 0) throw new Error(`ss: ${p.stderr.toString()}`);
  const peers = new Set<string>();
  for (const line of p.stdout.toString().split("\n")) {
    if (!line.includes(`pid=${pid},`)) continue;
    const peer = line.trim().split(/\s+/)[3];
    if (peer) peers.add(peer);
  }
  return cluster.members.filter((m) => peers.has(new URL(m.clientUrl).host));
}

/** The host:port of the last etcd watch the daemon created (its debug log line). */
function lastWatchHost(stderr: string): string | undefined {
  return [...stderr.matchAll(/etcd watch created host=(\S+)/g)].at(-1)?.[1];
}

describe("3-member etcd cluster", () => {
  let cluster: EtcdCluster;
  test("the member the daemon watches through is killed, then the leader, while keys change; the daemon follows every change through the others", async () => {
    cluster = await startEtcdCluster(3);
    cleanups.push(() => cluster.destroy());
    const all = cluster.clientUrls.join(",");
    etcdctl(all, "put", "/clusterf/services/c/frontend", '{"ipv4": "192.0.2.5", "tcp": 443}');
    const d = new Daemon([`-etcd-machines=${all}`, "-config-path=", "-ipvs-mock"], { CLUSTERF_LOG_LEVEL: "debug" });
    cleanups.push(() => d.stop("SIGKILL"));
    await d.waitFor((t) => t.join() === "TCP 192.0.2.5:443 wlc", 15_000, "initial");
    /** Puts backends b<from>…b<to>, retrying while a member is down or a leader is being elected. */
    const writer = async (from: number, to: number) => {
      for (let i = from; i <= to; i++) {
        for (let attempt = 0; ; attempt++) {
          try {
            etcdctl(all, "put", `/clusterf/services/c/backends/b${i}`, JSON.stringify({ ipv4: `198.51.100.${i}`, tcp: 443 }));
            break;
          } catch (e) {
            if (attempt > 20) throw e;
            await Bun.sleep(250);
          }
        }
        await Bun.sleep(100);
      }
    };
    // The printed table: destinations sorted by address.
    const backends = (n: number) => ["TCP 192.0.2.5:443 wlc", ...Array.from({ length: n }, (_, i) => `-> 198.51.100.${i + 1}:443 Masq 10 0 0`)];
    const tableOf = (n: number) => (t: string[]) => t.join("\n") === backends(n).join("\n");
    const atLeast = (n: number) => (t: string[]) => backends(n).every((l) => t.includes(l));

    // 1. The member the daemon's watch stream goes to, by its own log line, confirmed by the
    // kernel's socket table.
    const host = lastWatchHost(d.stderr);
    const mine = cluster.members.find((m) => new URL(m.clientUrl).host === host);
    expect(mine).toBeDefined();
    expect(connectedMembers(cluster, d.proc.pid)).toContain(mine!);
    const writing = writer(1, 20);
    await d.waitFor(atLeast(3), 15_000, "three backends before the kill");
    await mine!.kill();
    await writing;
    await d.waitFor(tableOf(20), 30_000, "all 20 backends after the daemon's member died");
    const moved = lastWatchHost(d.stderr);
    expect(moved).toBeDefined();
    expect(moved).not.toBe(host);
    expect(connectedMembers(cluster, d.proc.pid)).not.toContain(mine!);
    expect(connectedMembers(cluster, d.proc.pid).map((m) => new URL(m.clientUrl).host)).toContain(moved!);

    // 2. The killed member back, then the leader killed (whichever member the daemon uses now).
    await cluster.restartMember(mine!);
    const writing2 = writer(21, 30);
    await d.waitFor(atLeast(22), 15_000, "22 backends before the leader is killed");
    await cluster.killLeader();
    await writing2;
    await d.waitFor(tableOf(30), 30_000, "all 30 backends after the leader died");
    expect(await d.stop("SIGTERM")).toBe(0);
  }, 120_000);
});

describe("security", () => {
  test("etcd over TLS with client certificates and a password: it works, and neither the password nor the key is ever logged", async () => {
    const etcd = await startEtcd({ tls: true });
    cleanups.push(() => etcd.destroy());
    const certs = etcd.certs!;
    const tlsArgs = [`--cacert=${certs.ca}`, `--cert=${certs.clientCert}`, `--key=${certs.clientKey}`];
    const ctl = (...args: string[]) => etcdctl(etcd.clientUrl, ...tlsArgs, ...args);
    ctl("put", "/clusterf/services/web/frontend", '{"ipv4": "192.0.2.1", "tcp": 80}');
    ctl("put", "/clusterf/services/web/backends/a", '{"ipv4": "198.51.100.1", "tcp": 80}');
    enableAuth(ctl, "Root-Pw-0x51", { name: "lb", password: "Lb-Secret-0x52" });

    const flags = [`-etcd-machines=${etcd.clientUrl}`, `-etcd-cacert=${certs.ca}`, `-etcd-cert=${certs.clientCert}`, `-etcd-key=${certs.clientKey}`, "-etcd-username=lb", "-ipvs-mock", "-ipvs-debug"];
    const good = new Daemon(flags, { ETCD_PASSWORD: "Lb-Secret-0x52" });
    cleanups.push(() => good.stop("SIGKILL"));
    await good.waitFor((t) => t.join() === "TCP 192.0.2.1:80 wlc,-> 198.51.100.1:80 Masq 10 0 0", 15_000, "table read over TLS with a password");
    const bad = new Daemon([...flags, "-etcd-password=Wrong-Pw-0x53", "-log-format=json"]);
    cleanups.push(() => bad.stop("SIGKILL"));
    await until(() => /authentication failed/.test(bad.stderr), 10_000, withStderr("an authentication error reported", bad, Infinity), 100);
    expect(bad.proc.exitCode).toBeNull(); // reported, not fatal
    expect(await good.stop("SIGTERM")).toBe(0);
    expect(await bad.stop("SIGTERM")).toBe(0);
    const key = (await Bun.file(certs.clientKey).text()).split("\n")[1]!;
    for (const text of [good.stderr, bad.stderr]) {
      expect(text).not.toContain("Lb-Secret-0x52");
      expect(text).not.toContain("Wrong-Pw-0x53");
      expect(text).not.toContain(key);
    }
  }, 40_000);
});
