// The fault cases of clusterf-ipvs that need the real kernel (run inside the user-mode kernel by
// scripts/test.sh): drift counted in the metrics, a service the kernel refuses while the others
// are programmed, and a SIGKILL in the middle of a large sync followed by a restart.
import { beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { BUN, Daemon, ROOT, tableLines } from "../support/proc.ts";
import { afterOneResync, blocks, kernelScratch, kernelTable, must, scrape, writeTree } from "../support/kernel.ts";
import { until } from "../support/until.ts";

const CLI = join(ROOT, "src/cli/clusterf-ipvs.ts");
const { tmp, children, netns } = kernelScratch("faults");

beforeAll(() => {
  must("modprobe ip_vs");
});

describe("a refused service and drift, seen in the metrics", () => {
  test("the kernel refuses an unknown scheduler: that service is reported, the others are programmed; drift is corrected and counted", async () => {
    const ns = netns("cf-refuse");
    const dir = writeTree(join(tmp, "refuse"), {
      "services/good/frontend": { ipv4: "192.0.2.10", tcp: 80 },
      "services/good/backends/a": { ipv4: "198.51.100.1", tcp: 80 },
      "services/good/backends/b": { ipv4: "198.51.100.2", tcp: 80, weight: 5 },
      "services/other/frontend": { ipv4: "192.0.2.11", udp: 53, scheduler: "rr" },
      "services/other/backends/a": { ipv4: "198.51.100.3", udp: 53 },
      "services/bad/frontend": { ipv4: "192.0.2.12", tcp: 443, scheduler: "nosuch" },
      "services/bad/backends/a": { ipv4: "198.51.100.4", tcp: 443 },
    });
    // Resyncs every 3 s: the retries of the refused service (1, 2, 4, 8, 16 s after a resync) never
    // coincide with them, so the drift check below can tell one resync from the next.
    const d = new Daemon(
      [`-config-path=${dir}`, "-etcd-machines=", `-state-dir=${join(tmp, "refuse-state")}`, "-ipvs-resync=3s", "-metrics-listen=127.0.0.1:9112"],
      {},
      ["ip", "netns", "exec", ns],
    );
    children.push(d.proc);
    const curl = (path: string) => must(`ip netns exec ${ns} curl -s -w '\\n%{http_code}' http://127.0.0.1:9112${path}`);
    const metric = (sample: string) => scrape(ns, 9112, sample);
    const good = "TCP 192.0.2.10:80 wlc\n-> 198.51.100.1:80 Masq 10 0 0\n-> 198.51.100.2:80 Masq 5 0 0";
    const other = "UDP 192.0.2.11:53 rr\n-> 198.51.100.3:53 Masq 10 0 0";
    await until(() => kernelTable(ns).join() === [good, other].join(), 20_000, () => `good and other programmed:\n${kernelTable(ns).join("\n")}\n${d.stderr}`, 100);

    // Reported: a gauge naming the config service, one error line however many retries, and
    // /healthz stays 200 (a bad service is the config's problem, not the daemon's).
    await until(() => metric('clusterf_ipvs_service_failing{service="bad",vip="inet+tcp://192.0.2.12:443"}') === 1, 10_000, () => curl("/metrics"), 100);
    await Bun.sleep(3500); // retries and a periodic resync meet the same refusal
    const refusals = d.stderr.split("\n").filter((l) => l.startsWith("ERROR") && l.includes("192.0.2.12:443"));
    expect(refusals).toHaveLength(1);
    expect(refusals[0]).toContain("nosuch");
    expect(curl("/healthz")).toMatch(/refused by the kernel: bad \(inet\+tcp:\/\/192\.0\.2\.12:443\)\n\n200$/);
    expect(metric("clusterf_ipvs_netlink_errors_total")).toBeGreaterThanOrEqual(2);
    // The rest of the daemon's own metrics: writes by kind, sync durations, the last good sync.
    expect(metric('clusterf_ipvs_operations_total{op="add-service"}')).toBe(2);
    expect(metric('clusterf_ipvs_operations_total{op="add-dest"}')).toBe(3);
    expect(metric('clusterf_ipvs_sync_duration_seconds_count{kind="full"}')).toBe(1);
    expect(metric('clusterf_ipvs_sync_duration_seconds_count{kind="resync"}')).toBeGreaterThanOrEqual(2);
    expect(metric("clusterf_ipvs_last_sync_timestamp_seconds")! * 1000).toBeGreaterThan(Date.now() - 5000);
    expect(kernelTable(ns)).toEqual([good, other]);

    // Drift: a destination deleted, a weight changed, a destination added to ours, and a foreign
    // service added, all between two resyncs. The next resync corrects all three, counted; the
    // foreign service untouched and not counted.
    expect(metric("clusterf_ipvs_drift_corrections_total")).toBe(0);
    const foreign = "TCP 192.0.2.99:80 rr";
    const edits = [
      "ipvsadm -d -t 192.0.2.10:80 -r 198.51.100.1:80",
      "ipvsadm -e -t 192.0.2.10:80 -r 198.51.100.2:80 -m -w 99",
      "ipvsadm -a -u 192.0.2.11:53 -r 198.51.100.77:53 -m -w 1",
      "{ ipvsadm -D -t 192.0.2.99:80 2>/dev/null; ipvsadm -A -t 192.0.2.99:80 -s rr; }", // again on a second attempt
    ];
    const once = await afterOneResync(ns, 9112, `ip netns exec ${ns} bash -c '${edits.join(" && ")}'`, [good, foreign, other], 5000);
    expect(once).toEqual({ table: [good, foreign, other], drift: 3 });

    // The config fixed: programmed at once, no longer reported.
    writeTree(dir, { "services/bad/frontend": { ipv4: "192.0.2.12", tcp: 443, scheduler: "sh" } });
    const bad = "TCP 192.0.2.12:443 sh\n-> 198.51.100.4:443 Masq 10 0 0";
    await until(() => kernelTable(ns).includes(bad), 5000, () => kernelTable(ns).join("\n"), 100);
    expect(curl("/metrics")).not.toContain("clusterf_ipvs_service_failing{");
    await until(() => d.stderr.includes("IPVS: service programmed after earlier failures service=inet+tcp://192.0.2.12:443"), 3000, () => d.stderr, 100);
    expect(await d.stop("SIGTERM")).toBe(0);
    expect(kernelTable(ns)).toEqual([good, bad, foreign, other]);
  });
});

describe("retries back off", () => {
  test("a service the kernel keeps refusing is retried 1 s, 2 s, 4 s apart, not in a storm", async () => {
    const ns = netns("cf-backoff");
    const dir = writeTree(join(tmp, "backoff"), {
      "services/good/frontend": { ipv4: "192.0.2.10", tcp: 80 },
      "services/good/backends/a": { ipv4: "198.51.100.1", tcp: 80 },
      "services/bad/frontend": { ipv4: "192.0.2.12", tcp: 443, scheduler: "nosuch" },
      "services/bad/backends/a": { ipv4: "198.51.100.4", tcp: 443 },
    });
    // No periodic resync: every attempt after the first is a retry. Debug lines in JSON carry a
    // millisecond time stamp for each attempt (repeats of a refusal are logged at debug).
    const d = new Daemon(
      [`-config-path=${dir}`, "-etcd-machines=", `-state-dir=${join(tmp, "backoff-state")}`, "-ipvs-resync=0", "-log-format=json"],
      { CLUSTERF_LOG_LEVEL: "debug" },
      ["ip", "netns", "exec", ns],
    );
    children.push(d.proc);
    const attempts = () =>
      d.stderr
        .split("\n")
        .filter((l) => l.includes("New service inet+tcp://192.0.2.12:443 nosuch failed"))
        .map((l) => Date.parse(JSON.parse(l).time));
    await until(() => attempts().length >= 4, 20_000, () => `four attempts:\n${d.stderr.slice(-3000)}`, 100);
    await Bun.sleep(1000); // an attempt that a storm would add after the fourth
    const t = attempts();
    const gaps = t.slice(1).map((x, i) => x - t[i]!);
    console.log(`attempts ${t.length}, gaps ${gaps.join(", ")} ms`);
    // Each retry waits twice as long as the one before. The timer never fires early; an attempt's
    // log line stands a sync's length (a few ms) from the end of the sync that set the timer, hence
    // 50 ms below; a loaded guest may fire timers late, hence 500 ms above.
    expect(gaps.length).toBe(3);
    gaps.forEach((gap, i) => {
      expect(gap).toBeGreaterThanOrEqual(1000 * 2 ** i - 50);
      expect(gap).toBeLessThanOrEqual(1000 * 2 ** i + 500);
    });
    expect(kernelTable(ns)).toEqual(["TCP 192.0.2.10:80 wlc\n-> 198.51.100.1:80 Masq 10 0 0"]);
    expect(await d.stop("SIGTERM")).toBe(0);
  });
});

describe("SIGKILL during a large sync", () => {
  test("killed half-way through 1000 × 10 writes, restarted on a smaller config: converges, nothing left over", async () => {
    const ns = netns("cf-kill");
    const dir = join(tmp, "kill");
    const state = join(tmp, "kill-state");
    const N = 1000;
    for (let s = 0; s < N; s++) {
      mkdirSync(join(dir, `services/s${s}/backends`), { recursive: true });
      writeFileSync(join(dir, `services/s${s}/frontend`), JSON.stringify({ ipv4: `203.0.113.${s % 250}`, tcp: 1000 + Math.floor(s / 250) }));
      for (let b = 0; b < 10; b++) writeFileSync(join(dir, `services/s${s}/backends/b${b}`), JSON.stringify({ ipv4: `198.51.100.${b + 1}`, tcp: 8000 + s }));
    }
    const p = Bun.spawn(["ip", "netns", "exec", ns, BUN, CLI, "-etcd-machines=", `-config-path=${dir}`, `-state-dir=${state}`], { stdout: "ignore", stderr: "pipe" });
    children.push(p);
    // /proc/PID/net is the daemon's own namespace: its IPVS table, read without a process spawn.
    const rows = () => readFileSync(`/proc/${p.pid}/net/ip_vs`, "utf8").split("\n").filter((l) => /^(TCP|UDP|SCTP|  ->)/.test(l)).length;
    await until(() => rows() > 2000, 60_000, () => `sync under way (rows ${rows()})`, 100);
    p.kill("SIGKILL");
    await p.exited;
    const programmed = kernelTable(ns);
    const dests = programmed.join("\n").split("\n").filter((l) => l.startsWith("->")).length;
    expect(dests).toBeGreaterThan(0);
    expect(dests).toBeLessThan(N * 10); // really killed in the middle

    // Meanwhile the config shrinks to the first half with new weights: the services of the second
    // half that the killed daemon created are its own and must go; the first half is edited.
    for (let s = N / 2; s < N; s++) rmSync(join(dir, `services/s${s}`), { recursive: true });
    for (let s = 0; s < N / 2; s++) writeFileSync(join(dir, `services/s${s}/backends/b0`), JSON.stringify({ ipv4: "198.51.100.1", tcp: 8000 + s, weight: 3 }));
    const leftovers = programmed.filter((b) => Number(/:(\d+) wlc/.exec(b)?.[1]) >= 1002);
    expect(leftovers.length).toBeGreaterThan(0);

    const r = Bun.spawnSync(["ip", "netns", "exec", ns, BUN, CLI, "-etcd-machines=", `-config-path=${dir}`, `-state-dir=${state}`, "-once", "-print"], { stdout: "pipe", stderr: "pipe" });
    expect(r.exitCode).toBe(0);
    const printed = blocks(tableLines(r.stdout.toString()));
    expect(printed).toHaveLength(N / 2);
    expect(kernelTable(ns)).toEqual(printed);
    expect(printed.every((b) => b.split("\n").length === 11)).toBe(true);
    expect(printed.filter((b) => b.includes("Masq 3 0 0"))).toHaveLength(N / 2);
  }, 240_000);
});
