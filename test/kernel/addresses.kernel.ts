// IPv6 address forms in the real kernel (run inside the user-mode kernel by scripts/test.sh):
// each address is programmed as the 16 bytes written (an IPv4-compatible ::a.b.c.d is not the
// IPv4-mapped ::ffff:a.b.c.d), and -print writes every address as ipvsadm -Ln does.
import { beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { ROOT, tableLines } from "../support/proc.ts";
import { blocks, kernelScratch, kernelTable, must, writeTree } from "../support/kernel.ts";

const CLI = join(ROOT, "bin/clusterf-ipvs");
const { tmp, netns } = kernelScratch("addresses");

function once(ns: string, dir: string, state: string) {
  const p = Bun.spawnSync(["ip", "netns", "exec", ns, CLI, "-etcd-machines=", "-print", "-once", `-config-path=${dir}`, `-state-dir=${state}`], { stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

beforeAll(() => {
  must("modprobe ip_vs");
});

// The kernel takes IPv4-mapped addresses (::ffff:a.b.c.d) as a service address but refuses them
// as a destination (EINVAL: not a unicast address), so the mapped forms stand in the VIPs here.
const tree = {
  "services/compat/frontend": { ipv6: "::10.0.0.1", tcp: 80 },
  "services/compat/backends/compat": { ipv6: "::1.2.3.4", tcp: 80 },
  "services/compat/backends/tail-zero": { ipv6: "::0.1.0.0", tcp: 80, weight: 5 },
  "services/compat/backends/siit": { ipv6: "::ffff:0:1.2.3.4", tcp: 80, weight: 3 },
  "services/mapped/frontend": { ipv6: "0:0:0:0:0:FFFF:0A00:0001", tcp: 80, udp: 53 },
  "services/mapped/backends/loop": { ipv6: "::1", udp: 53 },
  "services/mapped/backends/tie": { ipv6: "2001:db8:0:0:1:0:0:1", udp: 53 },
  "services/mapped/backends/longer": { ipv6: "2001:db8:0:1:0:0:0:1", udp: 53 },
  "services/mapped/backends/single": { ipv6: "2001:db8:0:1:1:1:1:1", udp: 53 },
  "services/mapped/backends/zeros": { ipv6: "2001:0DB8:0000:0000:0000:0000:0000:00A0", tcp: 80, udp: 53 },
  "services/nat64/frontend": { ipv6: "64:ff9b::198.51.100.7", tcp: 443 },
  "services/nat64/backends/b": { ipv6: "::1.2.3.4", tcp: 443 },
};

test("addresses as written: ipvsadm -Ln equals -print; ::a.b.c.d and ::ffff:a.b.c.d are two services", () => {
  const ns = netns("cf-addr");
  const dir = writeTree(join(tmp, "tree"), tree);
  const state = join(tmp, "state");
  const r = once(ns, dir, state);
  expect([r.code, r.err]).toEqual([0, expect.not.stringContaining("ERROR")]);
  const printed = blocks(tableLines(r.out));
  expect(kernelTable(ns)).toEqual(printed);
  expect(printed).toEqual([
    "TCP [64:ff9b::c633:6407]:443 wlc\n-> [::1.2.3.4]:443 Masq 10 0 0",
    "TCP [::10.0.0.1]:80 wlc\n-> [::0.1.0.0]:80 Masq 5 0 0\n-> [::1.2.3.4]:80 Masq 10 0 0\n-> [::ffff:0:102:304]:80 Masq 3 0 0",
    "TCP [::ffff:10.0.0.1]:80 wlc\n-> [2001:db8::a0]:80 Masq 10 0 0",
    "UDP [::ffff:10.0.0.1]:53 wlc\n-> [2001:db8:0:1:1:1:1:1]:53 Masq 10 0 0\n-> [2001:db8:0:1::1]:53 Masq 10 0 0\n-> [2001:db8::1:0:0:1]:53 Masq 10 0 0\n-> [2001:db8::a0]:53 Masq 10 0 0\n-> [::1]:53 Masq 10 0 0",
  ]);

  // The text read back from the kernel is the config's text: a restart writes nothing.
  const again = once(ns, dir, state);
  expect(again.code).toBe(0);
  expect(again.err).toMatch(/IPVS: applied kind=full writes=0 errors=0/);
});
