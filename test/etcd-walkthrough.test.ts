// The original README's walkthrough, against a real etcd and the real clusterf-ipvs process
// (in-memory IPVS table), checking the printed table after each step; then an etcd restart
// mid-run and a compaction past the daemon's revision.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startEtcd, type Etcd, etcdctl as etcdctlAt } from "./support/etcd.ts";
import { Daemon } from "./support/proc.ts";

let etcd: Etcd;
let daemon: Daemon | undefined;
const localDir = mkdtempSync("/tmp/clusterf-walk-");

const etcdctl = (...args: string[]) => etcdctlAt(etcd.clientUrl, args);

beforeAll(async () => {
  etcd = await startEtcd();
});

afterAll(async () => {
  await daemon?.stop("SIGKILL");
  await etcd?.destroy();
  rmSync(localDir, { recursive: true, force: true });
});

const t = (...lines: string[]) => (table: string[]) => table.join("\n") === lines.join("\n");

test("walkthrough: frontend, backends, a port change, a recursive removal", async () => {
  mkdirSync(join(localDir, "routes"), { recursive: true });
  daemon = new Daemon([`-etcd-machines=${etcd.clientUrl}`, `-config-path=${localDir}`, "-ipvs-mock"]);
  await daemon.waitFor(t(), 15_000, "empty initial table");

  etcdctl("put", "/clusterf/services/test/frontend", '{"ipv4": "192.0.2.107", "tcp": 1337}');
  await daemon.waitFor(t("TCP 192.0.2.107:1337 wlc"), 10_000, "frontend");

  etcdctl("put", "/clusterf/services/test/backends/test1", '{"ipv4": "198.51.100.1", "tcp": 1337}');
  etcdctl("put", "/clusterf/services/test/backends/test2", '{"ipv4": "198.51.100.2", "tcp": 1337, "weight": 5}');
  await daemon.waitFor(
    t("TCP 192.0.2.107:1337 wlc", "-> 198.51.100.1:1337 Masq 10 0 0", "-> 198.51.100.2:1337 Masq 5 0 0"),
    10_000,
    "two backends",
  );

  etcdctl("put", "/clusterf/services/test/frontend", '{"ipv4": "192.0.2.107", "tcp": 8080}');
  await daemon.waitFor(
    t("TCP 192.0.2.107:8080 wlc", "-> 198.51.100.1:1337 Masq 10 0 0", "-> 198.51.100.2:1337 Masq 5 0 0"),
    10_000,
    "port changed",
  );

  // A local file value wins over etcd's for the same key.
  mkdirSync(join(localDir, "services/test/backends"), { recursive: true });
  writeFileSync(join(localDir, "services/test/backends/test2.json"), '{"ipv4": "198.51.100.2", "tcp": 1337, "weight": 50}');
  await daemon.waitFor((tb) => tb.includes("-> 198.51.100.2:1337 Masq 50 0 0"), 10_000, "local override");
  rmSync(join(localDir, "services"), { recursive: true });
  await daemon.waitFor((tb) => tb.includes("-> 198.51.100.2:1337 Masq 5 0 0"), 10_000, "override removed");

  // A bad value through the watch: logged with source and key, the last good value stays.
  etcdctl("put", "/clusterf/services/test/backends/test1", '{"ipv4": "198.51.100.1", "tcp": 1337, "weight": 1.5}');
  await Bun.sleep(500);
  expect(daemon.last).toContain("-> 198.51.100.1:1337 Masq 10 0 0");
  expect(daemon.stderr).toMatch(/ERROR config: weight: .*source=etcd key=services\/test\/backends\/test1/);

  etcdctl("del", "--prefix", "/clusterf/services/test");
  await daemon.waitFor(t(), 10_000, "service removed");
});

test("etcd restart mid-run: the daemon keeps its table and catches up", async () => {
  etcdctl("put", "/clusterf/services/r/frontend", '{"ipv4": "192.0.2.1", "tcp": 80}');
  etcdctl("put", "/clusterf/services/r/backends/a", '{"ipv4": "198.51.100.1", "tcp": 80}');
  await daemon!.waitFor(t("TCP 192.0.2.1:80 wlc", "-> 198.51.100.1:80 Masq 10 0 0"), 10_000, "before restart");
  const applied = daemon!.tables.length;
  await etcd.stop();
  await Bun.sleep(2000);
  // Source down: no apply has emptied the table.
  for (const tb of daemon!.tables.slice(applied)) expect(tb).toEqual(["TCP 192.0.2.1:80 wlc", "-> 198.51.100.1:80 Masq 10 0 0"]);
  expect(daemon!.stderr).toContain("source down");
  await etcd.restart();
  etcdctl("put", "/clusterf/services/r/backends/b", '{"ipv4": "198.51.100.2", "tcp": 80}');
  await daemon!.waitFor(
    t("TCP 192.0.2.1:80 wlc", "-> 198.51.100.1:80 Masq 10 0 0", "-> 198.51.100.2:80 Masq 10 0 0"),
    20_000,
    "caught up after restart",
  );
});

test("compaction past the daemon's revision: it re-reads everything", async () => {
  // Freeze the daemon, break its connection by restarting etcd, change and compact meanwhile.
  daemon!.proc.kill("SIGSTOP");
  await etcd.stop();
  await etcd.restart();
  etcdctl("del", "/clusterf/services/r/backends/a");
  etcdctl("put", "/clusterf/services/r/backends/c", '{"ipv4": "198.51.100.3", "tcp": 80, "weight": 3}');
  const rev = JSON.parse(etcdctl("get", "/clusterf", "--prefix", "-w", "json")).header.revision as number;
  etcdctl("put", "/clusterf/unrelated-key-in-layout-noise", "x");
  etcdctl("compact", String(rev + 1));
  daemon!.proc.kill("SIGCONT");
  await daemon!.waitFor(
    t("TCP 192.0.2.1:80 wlc", "-> 198.51.100.2:80 Masq 10 0 0", "-> 198.51.100.3:80 Masq 3 0 0"),
    30_000,
    "state after compaction",
  );
  expect(daemon!.stderr).toContain("etcd revision compacted, re-reading everything");
  expect(await daemon!.stop("SIGTERM")).toBe(0);
  daemon = undefined;
});
