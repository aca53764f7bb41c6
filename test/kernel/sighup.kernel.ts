// SIGHUP against the real kernel: hand edits of the daemon's services (ipvsadm in its namespace)
// are corrected at the reload, long before the periodic -ipvs-resync would come.
import { beforeAll, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { Daemon } from "../support/proc.ts";
import { kernelScratch, kernelTable, must, writeTree } from "../support/kernel.ts";
import { until } from "../support/until.ts";

const { tmp, children, netns } = kernelScratch("sighup");

beforeAll(() => {
  must("modprobe ip_vs");
  expect(existsSync("/proc/net/ip_vs")).toBe(true);
});

test("SIGHUP corrects drift at once and the daemon keeps running", async () => {
  const ns = netns("cf-hup");
  const dir = writeTree(join(tmp, "tree"), {
    "services/web/frontend": { ipv4: "192.0.2.10", tcp: 80 },
    "services/web/backends/a": { ipv4: "198.51.100.1", tcp: 80 },
    "services/web/backends/b": { ipv4: "198.51.100.2", tcp: 80, weight: 5 },
  });
  const d = new Daemon([`-config-path=${dir}`, "-etcd-machines=", `-state-dir=${join(tmp, "state")}`, "-ipvs-resync=1h"], {}, ["ip", "netns", "exec", ns]);
  children.push(d.proc);
  await d.waitFor((t) => t.length === 3, 20_000, "initial table");
  const ours = ["TCP 192.0.2.10:80 wlc\n-> 198.51.100.1:80 Masq 10 0 0\n-> 198.51.100.2:80 Masq 5 0 0"];
  expect(kernelTable(ns)).toEqual(ours);

  must(`ip netns exec ${ns} ipvsadm -d -t 192.0.2.10:80 -r 198.51.100.1:80`);
  must(`ip netns exec ${ns} ipvsadm -e -t 192.0.2.10:80 -r 198.51.100.2:80 -m -w 99`);
  must(`ip netns exec ${ns} ipvsadm -a -t 192.0.2.10:80 -r 198.51.100.77:80 -m -w 1`);
  const drifted = ["TCP 192.0.2.10:80 wlc\n-> 198.51.100.2:80 Masq 99 0 0\n-> 198.51.100.77:80 Masq 1 0 0"];
  await Bun.sleep(1000);
  expect(kernelTable(ns)).toEqual(drifted); // nothing corrects it without a resync

  d.proc.kill("SIGHUP");
  await until(() => kernelTable(ns).join() === ours.join(), 3000, () => `not corrected: ${kernelTable(ns).join("\n")}\n${d.stderr}`, 100);
  await until(() => /IPVS: applied kind=resync writes=3 errors=0/.test(d.stderr), 3000, () => d.stderr, 100);
  expect(d.stderr.match(/^INFO reload: SIGHUP/gm)).toHaveLength(1);
  expect(d.proc.exitCode).toBeNull();
  expect(await d.stop("SIGTERM")).toBe(0);
});
