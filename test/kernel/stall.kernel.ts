// The daemon never stalls (docs/config.md §4), in the real kernel: a live clusterf-ipvs that
// advertises a route under a 2 s lease and serves /healthz gets 5000 services × 10 backends at
// once: from etcd (a few large transactions), or as a tree moved into its -config-path (chokidar
// then watches 10,000 new directories while the source reads 55,000 files). While it reads and
// programs them, /healthz must answer within 0.5 s every time, and the advertised route key must
// never be deleted (a lease whose keep-alives stall for 2 s expires). Then the kernel holds every
// service. Then, in the etcd case, /metrics is scraped twice (300,000 series of kernel counters)
// under the same watch; in the tree's case the watch goes on for 15 s after the sync instead,
// while chokidar finishes watching the new directories and the source looks at them again. Each
// case has its own namespace (a fresh IPVS table).
//
//   root namespace: etcd on 203.0.113.254 (a dummy device)
//     ══ veth 203.0.113.1/30 ══ stall-etcd: clusterf-ipvs on .2
import { afterAll, beforeAll, expect, test } from "bun:test";
import { closeSync, mkdirSync, openSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Etcd3 } from "etcd3";
import { BUN, ROOT } from "../support/proc.ts";
import { kernelScratch, must, sh } from "../support/kernel.ts";
import { until } from "../support/until.ts";

const { tmp, children, netns } = kernelScratch("stall");
const ETCD_ADDR = "203.0.113.254";
const ETCD_URL = `http://${ETCD_ADDR}:2379`;
const PREFIX = "/clusterf/cases";
const SERVICES = 5000;
const BACKENDS = 10;

// 250 VIPs × 20 ports; each service's backends on their own port.
const frontend = (s: number) => ({ ipv4: `192.0.2.${1 + (s % 250)}`, tcp: 1 + Math.floor(s / 250) });
const backend = (s: number, b: number) => ({ ipv4: `198.51.100.${1 + b}`, tcp: 1000 + s, weight: 1 + (b % 5) });

async function startEtcd() {
  const log = openSync(join(tmp, "etcd.log"), "a");
  const p = Bun.spawn(
    [
      "setpriv", "--pdeathsig", "KILL", "--", "/usr/bin/etcd",
      "--name", "e0", "--data-dir", join(tmp, "etcd.data"),
      "--listen-client-urls", ETCD_URL, "--advertise-client-urls", ETCD_URL,
      "--listen-peer-urls", `http://${ETCD_ADDR}:2380`, "--initial-advertise-peer-urls", `http://${ETCD_ADDR}:2380`,
      "--initial-cluster", `e0=http://${ETCD_ADDR}:2380`, "--initial-cluster-state", "new",
      "--heartbeat-interval", "50", "--election-timeout", "500",
    ],
    { stdin: "ignore", stdout: log, stderr: log },
  );
  closeSync(log);
  children.push(p);
  await until(() => sh(`etcdctl --endpoints=${ETCD_URL} --command-timeout=1s endpoint health`).code === 0, 30_000, () => {
    return `etcd healthy: ${sh(`tail -20 ${join(tmp, "etcd.log")}`).out}`;
  }, 100);
}

beforeAll(async () => {
  must("modprobe ip_vs");
  sh("modprobe veth"); // built in on some kernels: a failure here is not one
  must(`ip link add stall-etcd0 type dummy && ip addr add ${ETCD_ADDR}/32 dev stall-etcd0 && ip link set stall-etcd0 up`);
  await startEtcd();
}, 120_000);
afterAll(() => void sh("ip link del stall-etcd0"));

/** A namespace joined to the root one by a veth (the daemon's end is LB), with a live daemon in it. */
function startDaemon(ns: string, net: number, etcdPrefix: string, configPath: string) {
  const [HOST, LB] = [`203.0.113.${net + 1}`, `203.0.113.${net + 2}`];
  netns(ns);
  must(
    [
      `ip link add ${ns} type veth peer name eth0 netns ${ns}`,
      `ip addr add ${HOST}/30 dev ${ns}`,
      `ip link set ${ns} up`,
      `ip -n ${ns} addr add ${LB}/30 dev eth0`,
      `ip -n ${ns} link set eth0 up`,
      `ip -n ${ns} route add default via ${HOST}`,
    ].join(" && "),
  );
  const p = Bun.spawn(
    [
      "ip", "netns", "exec", ns, BUN, join(ROOT, "src/cli/clusterf-ipvs.ts"),
      `-etcd-machines=${ETCD_URL}`, `-etcd-prefix=${etcdPrefix}`, `-config-path=${configPath}`, `-state-dir=${join(tmp, ns)}`,
      "-filter-etcd-routes", // its own advertised route must not rewrite its table
      "-advertise-route-name=stall", "-advertise-route-prefix4=198.51.100.0/24", `-advertise-route-gateway4=${LB}`,
      "-advertise-route-ipvs-method=droute", "-etcd-ttl=2s", `-metrics-listen=${LB}:9310`,
    ],
    { stdout: "ignore", stderr: "pipe" },
  );
  children.push(p);
  const d = { proc: p, stderr: "", lb: LB };
  void (async () => {
    const dec = new TextDecoder();
    for await (const chunk of p.stderr as ReadableStream<Uint8Array>) d.stderr += dec.decode(chunk);
  })();
  return d;
}

/**
 * The case: `feed` hands the daemon 5000 × 10 services at once; meanwhile /healthz is asked every
 * 50 ms (from this process, which does nothing else) and the route key is watched.
 */
async function programsWithoutStalling(ns: string, net: number, configPath: string, feed: () => void | Promise<void>, after: { scrapes: number; settleMs: number }) {
  const prefix = `${PREFIX}/${ns}`;
  const routeKey = `${prefix}/routes/stall`;
  const d = startDaemon(ns, net, prefix, configPath);
  const healthz = `http://${d.lb}:9310/healthz`;
  const etcd = new Etcd3({ hosts: [ETCD_URL] });
  try {
    await until(() => d.stderr.includes("route: advertised"), 60_000, () => `the route advertised; stderr:\n${d.stderr}`, 100);
    // One /healthz before the feed: the first fetch of a process sets up its HTTP client (33-103 ms
    // in this guest when idle), which is this process's start, not a stall of the daemon (the
    // first answer of one run, asked as another process started to put the config, took 506 ms).
    expect((await fetch(healthz, { signal: AbortSignal.timeout(10_000) })).status).toBe(200);
    const deletes: number[] = []; // a lease expiry is a delete
    const watcher = await etcd.watch().key(routeKey).create();
    watcher.on("delete", () => deletes.push(Date.now()));

    const answers: { ms: number; status: number; at: number }[] = [];
    const begin = Date.now();
    let done = false;
    const poller = (async () => {
      while (!done) {
        const t0 = performance.now();
        let status = 0;
        try {
          status = (await fetch(healthz, { signal: AbortSignal.timeout(10_000) })).status;
        } catch {
          /* no answer within 10 s: status 0, and its time */
        }
        const ms = performance.now() - t0;
        answers.push({ ms, status, at: Date.now() - begin - Math.round(ms) });
        await Bun.sleep(Math.max(0, 50 - ms));
      }
    })();
    const from = d.stderr.length;
    // The kernel writes since the feed, from the daemon's "applied" lines (one apply or several).
    const writes = () => [...d.stderr.slice(from).matchAll(/IPVS: applied .*?writes=(\d+)/g)].reduce((n, m) => n + Number(m[1]), 0);
    let syncMs = 0;
    const scrapes: number[] = [];
    const scrapeAt: number[] = [];
    try {
      await feed();
      await until(() => writes() >= SERVICES * (BACKENDS + 1), 120_000, () => `the sync (${writes()} writes); stderr:\n${d.stderr.slice(-2000)}`, 100);
      syncMs = Date.now() - begin;
      // Then /metrics of the whole table (300,000 series), twice: /healthz goes on meanwhile. The
      // 40 MB are fetched and counted by other processes: this one only asks /healthz.
      const scraped = join(tmp, "metrics.txt");
      for (let i = 0; i < after.scrapes; i++) {
        const s0 = performance.now();
        scrapeAt.push(Date.now() - begin);
        const curl = Bun.spawn(["curl", "-sf", "-m", "60", "-o", scraped, `http://${d.lb}:9310/metrics`], { stdout: "ignore", stderr: "inherit" });
        expect(await curl.exited, `curl /metrics; the daemon's stderr:\n${d.stderr.slice(-3000)}`).toBe(0);
        scrapes.push(performance.now() - s0);
        const series = sh(`grep -c '^clusterf_ipvs_dest_connections_total{' ${scraped}`).out.trim();
        expect(Number(series)).toBe(SERVICES * BACKENDS);
        await Bun.sleep(1200); // past the scrape's 1 s cache of the kernel's table
      }
      await Bun.sleep(after.settleMs);
    } finally {
      done = true;
      await poller;
    }
    await Bun.sleep(500);
    watcher.cancel();

    const slowest = Math.max(...answers.map((a) => a.ms));
    console.log(`${ns}: sync ${syncMs} ms; /metrics ${scrapes.map((ms) => ms.toFixed(0)).join(", ")} ms (from ${scrapeAt.join(", ")} ms); ${answers.length} /healthz answers, slowest ${slowest.toFixed(0)} ms; route deletes: ${deletes.length}`);
    // When each slow answer was asked (ms since the feed began): during the sync or a scrape.
    for (const a of answers.filter((a) => a.ms > 250)) console.log(`  /healthz asked at ${a.at} ms: ${a.ms.toFixed(0)} ms`);
    expect(answers.length).toBeGreaterThan(syncMs / 1000); // it was asked throughout
    expect(answers.filter((a) => a.ms > 500)).toEqual([]);
    expect(answers.filter((a) => a.status !== 200)).toEqual([]);
    expect(deletes).toEqual([]);
    expect((await etcd.get(routeKey).string()) ?? "").toContain(d.lb);
    const count = (what: string) => Number(sh(`ip netns exec ${ns} ipvsadm -Ln | grep -c '^ *${what}  *[0-9]'`).out.trim());
    expect(count("TCP")).toBe(SERVICES);
    expect(count("->")).toBe(SERVICES * BACKENDS);
  } finally {
    etcd.close();
    d.proc.kill("SIGKILL");
    await d.proc.exited;
  }
}

test("5000 × 10 services put into etcd at once, then /metrics scraped: /healthz answers within 0.5 s throughout, the advertised route is never deleted", async () => {
  const prefix = `${PREFIX}/stall-etcd`;
  // Put by another process as fast as etcd takes them: transactions of 128 keys (etcd's default
  // --max-txn-ops), 8 in flight.
  const script = join(tmp, "put.ts");
  writeFileSync(
    script,
    `import { Etcd3 } from "${join(ROOT, "node_modules", "etcd3")}";
const frontend = ${frontend.toString()};
const backend = ${backend.toString()};
const kv = [];
for (let s = 0; s < ${SERVICES}; s++) {
  kv.push(["${prefix}/services/s" + s + "/frontend", JSON.stringify(frontend(s))]);
  for (let b = 0; b < ${BACKENDS}; b++) kv.push(["${prefix}/services/s" + s + "/backends/b" + b, JSON.stringify(backend(s, b))]);
}
const client = new Etcd3({ hosts: ["${ETCD_URL}"] });
let next = 0;
const worker = async () => {
  while (next < kv.length) {
    const txn = kv.slice(next, (next += 128));
    await client.stm({ retries: 0 }).transact((tx) => Promise.all(txn.map(([k, v]) => tx.put(k).value(v))));
  }
};
await Promise.all(Array.from({ length: 8 }, worker));
client.close();
`,
  );
  await programsWithoutStalling("stall-etcd", 0, "", async () => {
    const p = Bun.spawn([BUN, script], { cwd: ROOT, stdout: "inherit", stderr: "inherit" });
    children.push(p);
    expect(await p.exited).toBe(0);
  }, { scrapes: 2, settleMs: 0 });
}, 300_000);

test("5000 × 10 services as a tree moved into -config-path: /healthz answers within 0.5 s throughout, also while the source looks again, the advertised route is never deleted", async () => {
  // One inotify watch per directory: 10,000 and more (the guest's default allows 8192).
  must("sysctl -qw fs.inotify.max_user_watches=65536");
  const conf = join(tmp, "stall-files-conf");
  const stage = join(tmp, "stall-files-stage");
  mkdirSync(conf);
  for (let s = 0; s < SERVICES; s++) {
    const dir = join(stage, "services", `s${s}`);
    mkdirSync(join(dir, "backends"), { recursive: true });
    writeFileSync(join(dir, "frontend.json"), JSON.stringify(frontend(s)));
    for (let b = 0; b < BACKENDS; b++) writeFileSync(join(dir, "backends", `b${b}.json`), JSON.stringify(backend(s, b)));
  }
  await programsWithoutStalling("stall-files", 4, conf, () => renameSync(join(stage, "services"), join(conf, "services")), { scrapes: 0, settleMs: 15_000 });
}, 300_000);
