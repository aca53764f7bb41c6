// Active health checks against the real kernel: clusterf-ipvs in one namespace, its backends real
// servers in others, traffic from a client namespace through the VIP (TEST-NET addresses, all
// inside the guest). A backend that fails its checks goes to weight 0 in the kernel within
// fall × interval + timeout, new connections avoid it while a held connection to it goes on, and it
// comes back ramped over its slow start; a 503 from an HTTP check counts as failing.
import { beforeAll, describe, expect, test } from "bun:test";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { BUN, Daemon } from "../support/proc.ts";
import { answersFrom, curlFrom, kernelScratch, kernelTable, linkToLb, must } from "../support/kernel.ts";
import { until } from "../support/until.ts";

const FIX = join(import.meta.dir, "fixtures");
const { tmp, children, netns } = kernelScratch("health");

beforeAll(() => {
  must("modprobe ip_vs");
  expect(existsSync("/proc/net/ip_vs")).toBe(true);
});

const LB = "cf-hlb";
const INTERVAL = 500;
const TIMEOUT = 250;
const FALL = 2;
const RISE = 2;
const SLOW_START = 3000;
/** What the claim leaves for the pipeline: the daemon's apply and one ipvsadm poll in the user-mode kernel. */
const PIPELINE = 600;

// cli (203.0.113.2) → lb (VIP 192.0.2.1 on lo) → b1 (198.51.100.2), b2 (198.51.100.6), masq.
const link = (ns: string, peerAddr: string, lbAddr: string, prefix: number) => linkToLb(LB, ns, peerAddr, lbAddr, prefix);
const curl = (n: number) => curlFrom("cf-hcli", "http://192.0.2.1/", n);
const count = answersFrom;

/** The weight of a destination in the kernel's table (ipvsadm -Ln), undefined when it is not there. */
function kernelWeight(vipPort: number, dest: string): number | undefined {
  const block = kernelTable(LB).find((b) => b.startsWith(`TCP 192.0.2.1:${vipPort} `));
  const line = block?.split("\n").find((l) => l.startsWith(`-> ${dest} `));
  return line === undefined ? undefined : Number(line.split(" ")[3]);
}

/** Polls ipvsadm until `pred` holds for the weight; returns the time it took and every weight seen. */
async function weightUntil(vipPort: number, dest: string, pred: (w: number | undefined) => boolean, timeoutMs: number) {
  const t0 = performance.now();
  const seen: (number | undefined)[] = [];
  for (;;) {
    const w = kernelWeight(vipPort, dest);
    if (seen.at(-1) !== w || seen.length === 0) seen.push(w);
    if (pred(w)) return { ms: performance.now() - t0, seen };
    if (performance.now() - t0 > timeoutMs) throw new Error(`${dest} on :${vipPort}: weights seen ${JSON.stringify(seen)}\n${kernelTable(LB).join("\n")}`);
    await Bun.sleep(50);
  }
}

function startBackend(name: string) {
  const p = Bun.spawn(["ip", "netns", "exec", `cf-h${name}`, BUN, join(FIX, "health-backend.ts"), name, "80", "9000", join(tmp, `${name}.status`)], {
    stdout: "pipe",
    stderr: "inherit",
  });
  children.push(p);
  return p;
}
async function ready(p: ReturnType<typeof startBackend>) {
  const reader = (p.stdout as ReadableStream<Uint8Array>).getReader();
  expect(new TextDecoder().decode((await reader.read()).value)).toContain("ready");
  reader.releaseLock();
}

describe("active health checks in the kernel", () => {
  test("a failing backend goes to weight 0 (503, refused), new connections avoid it, a held one goes on; it comes back ramped", async () => {
    for (const n of [LB, "cf-hcli", "cf-hb1", "cf-hb2"]) netns(n);
    must(`ip netns exec ${LB} sysctl -qw net.ipv4.ip_forward=1 && ip -n ${LB} addr add 192.0.2.1/32 dev lo`);
    link("cf-hcli", "203.0.113.2", "203.0.113.1", 30);
    link("cf-hb1", "198.51.100.2", "198.51.100.1", 30);
    link("cf-hb2", "198.51.100.6", "198.51.100.5", 30);
    let b1 = startBackend("b1");
    const b2 = startBackend("b2");
    await ready(b1);
    await ready(b2);

    // Both services check GET /health on port 80: one target per backend (address, port and check
    // are the same), used by two services.
    const check = { type: "http", path: "/health", interval: `${INTERVAL}ms`, timeout: `${TIMEOUT}ms`, fall: FALL, rise: RISE, slowStart: `${SLOW_START}ms` };
    const dir = join(tmp, "tree");
    const backend = (ip: string, port: number, weight: number) => ({ ipv4: ip, tcp: port, weight });
    const files: Record<string, unknown> = {
      "services/http/frontend": { ipv4: "192.0.2.1", tcp: 80, scheduler: "rr", check },
      "services/http/backends/b1": backend("198.51.100.2", 80, 4),
      "services/http/backends/b2": backend("198.51.100.6", 80, 4),
      "services/echo/frontend": { ipv4: "192.0.2.1", tcp: 9000, scheduler: "rr", check: { ...check, port: 80 } },
      "services/echo/backends/b1": backend("198.51.100.2", 9000, 1),
      "services/echo/backends/b2": backend("198.51.100.6", 9000, 1),
    };
    for (const [path, value] of Object.entries(files)) {
      must(`mkdir -p ${join(dir, path, "..")}`);
      writeFileSync(join(dir, path), JSON.stringify(value));
    }
    const d = new Daemon([`-config-path=${dir}`, "-etcd-machines=", `-state-dir=${join(tmp, "state")}`, "-metrics-listen=127.0.0.1:9114"], {}, ["ip", "netns", "exec", LB]);
    children.push(d.proc);
    await d.waitFor((t) => t.length === 6, 20_000, "the first table");
    // A few rounds of checks: all pass, nothing changes.
    await Bun.sleep(3 * INTERVAL);
    expect(kernelTable(LB)).toEqual([
      "TCP 192.0.2.1:80 rr\n-> 198.51.100.2:80 Masq 4 0 0\n-> 198.51.100.6:80 Masq 4 0 0",
      "TCP 192.0.2.1:9000 rr\n-> 198.51.100.2:9000 Masq 1 0 0\n-> 198.51.100.6:9000 Masq 1 0 0",
    ]);
    const spread = curl(8);
    expect([count(spread, "b1"), count(spread, "b2")]).toEqual([4, 4]);

    // Two long-lived connections through the echo VIP: rr puts one on each backend.
    const go = join(tmp, "go");
    const holds = [0, 1].map(() => {
      const p = Bun.spawn(["ip", "netns", "exec", "cf-hcli", BUN, join(FIX, "hold.ts"), "192.0.2.1", "9000", go], { stdout: "pipe", stderr: "pipe" });
      children.push(p);
      return p;
    });
    await until(() => kernelTable(LB)[1]!.includes("-> 198.51.100.6:9000 Masq 1 1 0") && kernelTable(LB)[1]!.includes("-> 198.51.100.2:9000 Masq 1 1 0"), 5000, () => kernelTable(LB).join("\n"), 100);

    // b2's /health answers 503: both its destinations go to weight 0 within fall × interval + timeout.
    writeFileSync(join(tmp, "b2.status"), "503");
    const down = await weightUntil(80, "198.51.100.6:80", (w) => w === 0, 10_000);
    console.log(`503 → weight 0 in ${Math.round(down.ms)} ms`);
    expect(down.ms).toBeLessThanOrEqual(FALL * INTERVAL + TIMEOUT + PIPELINE);
    expect(kernelWeight(80, "198.51.100.2:80")).toBe(4);
    // quiescent, not deleted: its connection is still there
    expect(kernelTable(LB)[1]).toBe("TCP 192.0.2.1:9000 rr\n-> 198.51.100.2:9000 Masq 1 1 0\n-> 198.51.100.6:9000 Masq 0 1 0");
    const avoided = curl(6);
    expect(count(avoided, "b1")).toBe(6);
    // The held connections: both answer their second message, the one on b2 too.
    writeFileSync(go, "");
    const outputs = await Promise.all(holds.map(async (p) => ({ code: await p.exited, out: await new Response(p.stdout).text() })));
    expect(outputs.map((o) => o.code)).toEqual([0, 0]);
    expect(outputs.flatMap((o) => o.out.trim().split("\n")).sort()).toEqual(["b1:1", "b1:2", "b2:1", "b2:2"]);
    // One log line per service and backend, with the reason.
    await until(() => (d.stderr.match(/backend down/g) ?? []).length === 2, 3000, () => d.stderr, 100);
    expect(d.stderr).toContain('service=echo backend=b2 target=198.51.100.6:80 check=http reason="status 503"');
    expect(d.stderr).toContain('service=http backend=b2 target=198.51.100.6:80 check=http reason="status 503"');
    // -print: the note after the columns.
    await d.waitFor((t) => t.some((l) => /^-> 198\.51\.100\.6:80 Masq 0 \d+ \d+ # health: b2 down \(status 503\)$/.test(l)), 3000, "the note");

    // b2 healthy again: after rise checks its weight comes back over the slow start (1, middle values, 4).
    writeFileSync(join(tmp, "b2.status"), "200");
    const back = await weightUntil(80, "198.51.100.6:80", (w) => w === 4, (RISE + 1) * INTERVAL + SLOW_START + 3000);
    const ramp = back.seen.filter((w) => w !== 0);
    expect(ramp[0]).toBe(1);
    expect(ramp.some((w) => w! > 1 && w! < 4)).toBe(true);
    expect(ramp).toEqual([...ramp].sort());
    expect(kernelWeight(9000, "198.51.100.6:9000")).toBe(1);

    // b1 stops altogether: refused, weight 0 within fall × interval + timeout; traffic all to b2.
    b1.kill("SIGKILL");
    await b1.exited;
    const refused = await weightUntil(80, "198.51.100.2:80", (w) => w === 0, 10_000);
    console.log(`refused → weight 0 in ${Math.round(refused.ms)} ms; ramp seen ${JSON.stringify(back.seen)}`);
    expect(refused.ms).toBeLessThanOrEqual(FALL * INTERVAL + TIMEOUT + PIPELINE);
    expect(kernelWeight(9000, "198.51.100.2:9000")).toBe(0);
    expect(count(curl(4), "b2")).toBe(4);
    await until(() => d.stderr.includes("service=http backend=b1 target=198.51.100.2:80 check=http reason=refused"), 3000, () => d.stderr, 100);

    // b1 starts again: its weight comes back.
    b1 = startBackend("b1");
    await ready(b1);
    await weightUntil(80, "198.51.100.2:80", (w) => w === 4, (RISE + 1) * INTERVAL + SLOW_START + 3000);
    const again = curl(8);
    expect([count(again, "b1"), count(again, "b2")]).toEqual([4, 4]);
    const metrics = must(`ip netns exec ${LB} curl -s http://127.0.0.1:9114/metrics`);
    expect(metrics).toContain('clusterf_health_transitions_total{service="http",backend="b1",to="down"} 1');
    expect(metrics).toContain('clusterf_health_transitions_total{service="echo",backend="b2",to="up"} 1');
    expect(metrics).toContain('clusterf_backend_up{service="http",backend="b1"} 1');
    expect(metrics).toContain("\nclusterf_health_targets 2\n");
    expect(await d.stop("SIGTERM")).toBe(0);
  });
});
