// SIGHUP, the daemon's traditional reload: clusterf-ipvs re-reads every source and resyncs the
// table at once, and keeps running (the default action of SIGHUP would kill it, leaving an
// advertised route to expire with its lease).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { linkSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startEtcd, type Etcd } from "./support/etcd.ts";
import { Daemon } from "./support/proc.ts";

const tmp = mkdtempSync("/tmp/clusterf-sighup-");
const daemons: Daemon[] = [];
let etcd: Etcd | undefined;

afterAll(async () => {
  for (const d of daemons) await d.stop("SIGKILL").catch(() => {});
  await etcd?.destroy();
  rmSync(tmp, { recursive: true, force: true });
});

async function until(pred: () => boolean, timeoutMs: number, what: string, d: Daemon): Promise<void> {
  const t0 = Date.now();
  while (!pred()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out: ${what}; stderr:\n${d.stderr.slice(-3000)}`);
    await Bun.sleep(50);
  }
}

const reloads = (d: Daemon) => d.stderr.split("\n").filter((l) => l.startsWith("INFO reload: SIGHUP")).length;

describe("clusterf-ipvs on SIGHUP", () => {
  test("re-reads the tree, even a change the watcher could not see, and keeps running", async () => {
    const dir = join(tmp, "tree");
    mkdirSync(join(dir, "services/web/backends"), { recursive: true });
    writeFileSync(join(dir, "services/web/frontend"), '{"ipv4": "192.0.2.1", "tcp": 80}');
    writeFileSync(join(dir, "services/web/backends/a"), '{"ipv4": "198.51.100.1", "tcp": 8080, "weight": 10}');
    // A second name for the backend's file outside the tree: a write through it changes the
    // file's content, but inotify tells only the directory of the name written through, so
    // the tree's watcher never hears of it.
    const outside = join(tmp, "outside-a");
    linkSync(join(dir, "services/web/backends/a"), outside);

    const d = new Daemon([`-config-path=${dir}`, "-etcd-machines=", "-ipvs-mock", "-ipvs-resync=1h"]);
    daemons.push(d);
    await d.waitFor((t) => t.join() === "TCP 192.0.2.1:80 wlc,-> 198.51.100.1:8080 Masq 10 0 0", 10_000, "initial table");

    writeFileSync(outside, '{"ipv4": "198.51.100.1", "tcp": 8080, "weight": 20}');
    await Bun.sleep(1000);
    expect(d.last).toEqual(["TCP 192.0.2.1:80 wlc", "-> 198.51.100.1:8080 Masq 10 0 0"]); // unseen so far

    const printed = d.tables.length;
    d.proc.kill("SIGHUP");
    await d.waitFor((t) => t.includes("-> 198.51.100.1:8080 Masq 20 0 0"), 5_000, "the re-read at SIGHUP");
    await until(() => reloads(d) === 1, 5_000, "one reload line", d);
    expect(d.stderr).toMatch(/^INFO config-path: re-read in full .*keys=2/m);
    expect(d.proc.exitCode).toBeNull();
    // The tables printed since: the re-read's apply and the kernel resync, both equal to the tree.
    await Bun.sleep(300);
    expect(d.tables.slice(printed)).toEqual([
      ["TCP 192.0.2.1:80 wlc", "-> 198.51.100.1:8080 Masq 20 0 0"],
      ["TCP 192.0.2.1:80 wlc", "-> 198.51.100.1:8080 Masq 20 0 0"],
    ]);

    // Again: a reload does not use itself up.
    writeFileSync(outside, '{"ipv4": "198.51.100.1", "tcp": 8080, "weight": 30}');
    d.proc.kill("SIGHUP");
    await d.waitFor((t) => t.includes("-> 198.51.100.1:8080 Masq 30 0 0"), 5_000, "the second re-read");
    await until(() => reloads(d) === 2, 5_000, "two reload lines", d);
    expect(await d.stop("SIGTERM")).toBe(0);
  });

  describe("with etcd and an advertised route", () => {
    beforeAll(async () => {
      etcd = await startEtcd();
    });

    function etcdctl(...args: string[]): string {
      const p = Bun.spawnSync(["etcdctl", `--endpoints=${etcd!.clientUrl}`, ...args], { env: { ...process.env, ETCDCTL_API: "3" } });
      if (p.exitCode !== 0) throw new Error(`etcdctl ${args.join(" ")}: ${p.stderr.toString()}`);
      return p.stdout.toString();
    }
    /** The route key's lease id and value, or undefined when it is absent. */
    function routeKey(): { lease: string; value: string } | undefined {
      const kvs = JSON.parse(etcdctl("get", "-w", "json", "/clusterf/routes/mid1")).kvs as { lease?: number | string; value: string }[] | undefined;
      if (!kvs?.length) return undefined;
      return { lease: String(kvs[0]!.lease), value: Buffer.from(kvs[0]!.value, "base64").toString() };
    }

    test("the route stays under the same lease", async () => {
      etcdctl("put", "/clusterf/services/web/frontend", '{"ipv4": "192.0.2.1", "tcp": 80}');
      etcdctl("put", "/clusterf/services/web/backends/a", '{"ipv4": "198.51.100.1", "tcp": 8080, "weight": 7}');
      const d = new Daemon([
        `-etcd-machines=${etcd!.clientUrl}`,
        "-config-path=",
        "-ipvs-mock",
        "-ipvs-resync=1h",
        "-filter-etcd-routes",
        "-etcd-ttl=2s",
        "-advertise-route-name=mid1",
        "-advertise-route-prefix4=198.51.100.0/24",
        "-advertise-route-gateway4=192.0.2.21",
        "-advertise-route-ipvs-method=droute",
      ]);
      daemons.push(d);
      await d.waitFor((t) => t.join() === "TCP 192.0.2.1:80 wlc,-> 198.51.100.1:8080 Masq 7 0 0", 10_000, "initial table");
      await until(() => routeKey() !== undefined, 10_000, "the advertised route", d);
      const before = routeKey()!;
      expect(JSON.parse(before.value)).toEqual({ Prefix4: "198.51.100.0/24", Gateway4: "192.0.2.21", IpvsMethod: "droute" });

      const printed = d.tables.length;
      d.proc.kill("SIGHUP");
      // The kernel resync that ends the reload prints the table.
      await until(() => reloads(d) === 1 && d.tables.length > printed, 5_000, "the reload", d);
      // Past the 2 s TTL: the lease is still kept alive, and the key was not rewritten.
      await Bun.sleep(3000);
      expect(d.proc.exitCode).toBeNull();
      expect(routeKey()).toEqual(before);
      expect(d.last).toEqual(["TCP 192.0.2.1:80 wlc", "-> 198.51.100.1:8080 Masq 7 0 0"]);
      expect(await d.stop("SIGTERM")).toBe(0);
      expect(routeKey()).toBeUndefined();
    }, 30_000);
  });
});
