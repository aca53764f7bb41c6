// SIGHUP, the daemons' traditional reload: clusterf-ipvs re-reads every source and resyncs the
// table at once, clusterf-docker runs a full two-way resync, and both keep running (the default
// action of SIGHUP would kill them, leaving an advertised route to expire with its lease).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startDocker, type DockerEngine } from "./support/docker.ts";
import { startEtcd, type Etcd, etcdctl as etcdctlAt } from "./support/etcd.ts";
import { BUN, Daemon, ROOT } from "./support/proc.ts";
import { until, withStderr } from "./support/until.ts";
import { STATE_FILE } from "../src/docker/publisher.ts";

const tmp = mkdtempSync("/tmp/clusterf-sighup-");
const daemons: { proc: ReturnType<typeof Bun.spawn> }[] = [];
let etcd: Etcd | undefined;

afterAll(async () => {
  for (const d of daemons) d.proc.kill("SIGKILL");
  await etcd?.destroy();
  rmSync(tmp, { recursive: true, force: true });
});

const etcdctl = (...args: string[]) => etcdctlAt(etcd!.clientUrl, args);

/** A key's lease id (hex, as etcdctl writes it) and value, or undefined when it is absent. */
function etcdKey(key: string): { lease: string; value: string } | undefined {
  const out = etcdctl("get", "-w", "json", key);
  const kvs = JSON.parse(out).kvs as { value: string }[] | undefined;
  if (!kvs?.length) return undefined;
  // The lease is an int64, past what a JSON number holds exactly: read from the text.
  const lease = /"lease":(\d+)/.exec(out)?.[1] ?? "0";
  return { lease: BigInt(lease).toString(16), value: Buffer.from(kvs[0]!.value, "base64").toString() };
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
    await until(() => reloads(d) === 1, 5_000, withStderr("one reload line", d), 50);
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
    await until(() => reloads(d) === 2, 5_000, withStderr("two reload lines", d), 50);
    expect(await d.stop("SIGTERM")).toBe(0);
  });

  describe("with etcd and an advertised route", () => {
    beforeAll(async () => {
      etcd ??= await startEtcd();
    });
    const routeKey = () => etcdKey("/clusterf/routes/mid1");

    test("etcd is read again; the route stays under the same lease", async () => {
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
      await until(() => routeKey() !== undefined, 10_000, withStderr("the advertised route", d), 50);
      const before = routeKey()!;
      expect(JSON.parse(before.value)).toEqual({ Prefix4: "198.51.100.0/24", Gateway4: "192.0.2.21", IpvsMethod: "droute" });

      const printed = d.tables.length;
      d.proc.kill("SIGHUP");
      // The kernel resync that ends the reload prints the table.
      await until(() => reloads(d) === 1 && d.tables.length > printed, 5_000, withStderr("the reload", d), 50);
      // etcd was read again in full, as at a start.
      const snapshots = () => d.stderr.match(/^INFO etcd snapshot prefix=\/clusterf /gm)?.length;
      await until(() => snapshots() === 2, 3_000, withStderr("a second full read of etcd", d), 50);
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

describe("clusterf-docker on SIGHUP", () => {
  let docker: DockerEngine | undefined;
  beforeAll(async () => {
    etcd ??= await startEtcd();
    docker = await startDocker();
  }, 120_000);
  afterAll(async () => {
    await docker?.destroy();
  });

  test("a full two-way resync: a key under this host's lease that it does not stand for is removed at once", async () => {
    const stateDir = join(tmp, "docker-state");
    const d = {
      proc: Bun.spawn(
        [BUN, join(ROOT, "src/cli/clusterf-docker.ts"), `-docker-endpoint=${docker!.endpoint}`, `-etcd-machines=${etcd!.clientUrl}`, "-etcd-prefix=/hup", `-state-dir=${stateDir}`],
        { stdin: "ignore", stdout: "ignore", stderr: "pipe" },
      ),
      stderr: "",
    };
    daemons.push(d);
    (async () => {
      const dec = new TextDecoder();
      for await (const chunk of d.proc.stderr as ReadableStream<Uint8Array>) d.stderr += dec.decode(chunk);
    })();
    await until(() => /docker: full state read/.test(d.stderr), 20_000, withStderr("Docker's state", d), 50);
    const stateFile = join(stateDir, STATE_FILE);
    let lease = "";
    await until(() => {
        try {
          lease = BigInt(JSON.parse(readFileSync(stateFile, "utf8")).leaseId).toString(16);
          return true;
        } catch {
          return false;
        }
      }, 10_000, withStderr("the lease in the state file", d), 50);
    // Behind the daemon's back: a backend key under its lease that no container stands for.
    const ghost = "/hup/services/web/backends/0123456789ab";
    etcdctl("put", `--lease=${lease}`, ghost, '{"ipv4": "198.51.100.9", "tcp": 80}');
    await Bun.sleep(1000);
    expect(etcdKey(ghost)?.lease).toBe(lease); // unseen so far: the daemon does not watch its own keys

    d.proc.kill("SIGHUP");
    await until(() => etcdKey(ghost) === undefined, 5_000, withStderr("the stale key removed at SIGHUP", d), 50);
    expect(d.proc.exitCode).toBeNull();
    d.proc.kill("SIGTERM");
    expect(await d.proc.exited).toBe(0);
  }, 60_000);
});
