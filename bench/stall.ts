// The daemon never stalls (docs/config.md §4): the longest event-loop block of clusterf-ipvs
// (-ipvs-mock, in-memory table) while it takes in a 10k × 10 config, measured by the lateness of
// a 5 ms timer in the daemon's own process and the main thread's CPU time within that gap (on a
// loaded machine a late timer may also be a process waiting for a CPU: the goal is on the block). Next to each figure, from the same run: the timer's
// lateness while the daemon is idle, and the wall time of the whole sync (what a sync done in one
// go would block). Each case runs in a fresh process. Exits non-zero when a block exceeds the goal.
//
//   bun bench/stall.ts [services]      (default 10000; 10 backends each)
//   BENCH_STALL_GOAL_MS=100            (the goal)
//   BENCH_STALL_CASES=sink,files,etcd  (the cases to run; sink: the keys handed straight to the
//                                       daemon, its own work without a source's)

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { BACKENDS, backend, frontend, makeTree } from "./support.ts";

const GOAL_MS = Number(process.env.BENCH_STALL_GOAL_MS ?? 100);
const TICK_MS = 5;

/**
 * The timer's lateness: the longest gap beyond its period (wall clock), and the main thread's CPU
 * time within the longest gap (a gap the thread spent running is a block of the event loop; on a
 * loaded machine a gap can also be time the process waited for a CPU); how many ticks the main
 * thread ran for longer than the goal.
 */
function lagMonitor() {
  const cpu = () => {
    const u = process.threadCpuUsage();
    return (u.user + u.system) / 1000;
  };
  let max = 0;
  let cpuMax = 0;
  let over = 0;
  let last = performance.now();
  let lastCpu = cpu();
  const t = setInterval(() => {
    const now = performance.now();
    const c = cpu();
    const late = now - last - TICK_MS;
    const ran = Math.min(c - lastCpu, now - last);
    if (late > max) max = late;
    if (ran > cpuMax) cpuMax = ran;
    if (ran > GOAL_MS) over++;
    last = now;
    lastCpu = c;
  }, TICK_MS);
  return {
    reset() {
      max = cpuMax = over = 0;
      last = performance.now();
      lastCpu = cpu();
    },
    read: () => ({ max, cpuMax, over }),
    stop: () => clearInterval(t),
  };
}

/** One case in this process (the child side); prints one JSON line. */
async function child(kind: string, arg: string, services: number): Promise<void> {
  const { IpvsDaemon } = await import("../src/daemon/ipvs-daemon.ts");
  const { MemoryIpvsTable } = await import("../src/ipvs/memory-table.ts");
  const { configureLog } = await import("../src/util/log.ts");
  configureLog({ level: process.env.BENCH_LOG ?? "warn" });
  const sources = [];
  let confDir = "";
  if (kind === "files") {
    const { DirSource } = await import("../src/config/dir-source.ts");
    confDir = path.join(arg, "conf");
    fs.mkdirSync(confDir, { recursive: true });
    sources.push(new DirSource({ root: confDir }));
  } else if (kind !== "sink") {
    const { EtcdSource } = await import("../src/config/etcd-source.ts");
    sources.push(new EtcdSource({ endpoints: [arg], prefix: "/clusterf" }));
  }
  const daemon = new IpvsDaemon(new MemoryIpvsTable(), sources, {
    desired: { defaultMethod: "masq", scheduler: "wlc", elide: false },
    filterEtcdRoutes: false,
    flush: false,
    noop: false,
    resyncMs: 0,
    // As clusterf-ipvs runs it (src/cli/clusterf-ipvs.ts): the collections of a live daemon.
    collectAfterLargeSteps: "background",
  });
  const dests = () => {
    let n = 0;
    for (const e of daemon.reconciler.actual.values()) n += e.dests.size;
    return n;
  };
  const done = () => daemon.reconciler.actual.size === services && dests() === services * BACKENDS;
  const applied = () =>
    new Promise<void>((resolve, reject) => {
      const deadline = performance.now() + 300_000;
      const check = () =>
        done() ? resolve() : performance.now() > deadline ? reject(new Error(`${kind}: not applied within 300 s`)) : void setTimeout(check, 20);
      check();
    });
  const lag = lagMonitor();
  const out: Record<string, number> = {};
  const t0 = performance.now();
  let t1 = t0; // when the change came
  if (kind === "etcd-start") await daemon.start(); // the first read is the sync
  else {
    await daemon.start();
    await daemon.nextApply(); // the empty first apply
    lag.reset();
    await Bun.sleep(1000);
    out.idleMs = lag.read().max;
    // "sink": the keys handed to the daemon in one update(), as a source hands them: the daemon's own work
    const events =
      kind === "sink"
        ? Array.from({ length: services }, (_, s) => [
            { key: `services/s${s}/frontend`, value: { text: JSON.stringify(frontend(s)), format: "json" as const, origin: "bench" } },
            ...Array.from({ length: BACKENDS }, (_, b) => ({ key: `services/s${s}/backends/b${b}`, value: { text: JSON.stringify(backend(s, b)), format: "json" as const, origin: "bench" } })),
          ]).flat()
        : [];
    lag.reset();
    t1 = performance.now();
    if (kind === "sink") daemon.update("etcd", events);
    else if (kind === "files") fs.renameSync(path.join(arg, "stage", "services"), path.join(confDir, "services"));
    else process.stdout.write("ready\n"); // the parent puts the keys now
  }

  await applied();
  out.syncMs = performance.now() - t1;
  Object.assign(out, { maxMs: lag.read().max, cpuMs: lag.read().cpuMax, over: lag.read().over });
  if (kind === "etcd-start") {
    // a reload (SIGHUP) of the same 110k keys: re-read, compared, nothing to write
    lag.reset();
    await Bun.sleep(1000);
    out.idleMs = lag.read().max;
    lag.reset();
    const r0 = performance.now();
    await daemon.reload();
    out.reloadMs = performance.now() - r0;
    Object.assign(out, { reloadMaxMs: lag.read().max, reloadCpuMs: lag.read().cpuMax, reloadOver: lag.read().over });
  }
  lag.stop();
  await daemon.stop();
  process.stdout.write(JSON.stringify(out) + "\n");
  process.exit(0);
}

async function runChild(kind: string, arg: string, services: number, onReady?: () => Promise<void>): Promise<Record<string, number>> {
  const p = Bun.spawn([process.execPath, import.meta.path, "--child", kind, arg, String(services)], { stdout: "pipe", stderr: "inherit" });
  let text = "";
  const decoder = new TextDecoder();
  for await (const chunk of p.stdout) {
    text += decoder.decode(chunk);
    if (onReady && text.includes("ready\n")) {
      text = text.replace("ready\n", "");
      await onReady();
      onReady = undefined;
    }
  }
  if ((await p.exited) !== 0) throw new Error(`${kind}: the child failed`);
  return JSON.parse(text.trim().split("\n").pop()!);
}

async function putAll(endpoint: string, services: number): Promise<void> {
  const { Etcd3 } = await import("etcd3");
  const client = new Etcd3({ hosts: [endpoint] });
  const kv: [string, string][] = [];
  for (let s = 0; s < services; s++) {
    kv.push([`/clusterf/services/s${s}/frontend`, JSON.stringify(frontend(s))]);
    for (let b = 0; b < BACKENDS; b++) kv.push([`/clusterf/services/s${s}/backends/b${b}`, JSON.stringify(backend(s, b))]);
  }
  // etcd's default --max-txn-ops is 128; a few transactions in flight at once
  const txns: [string, string][][] = [];
  for (let i = 0; i < kv.length; i += 128) txns.push(kv.slice(i, i + 128));
  let next = 0;
  const worker = async () => {
    while (next < txns.length) {
      const t = txns[next++]!;
      await client.stm({ retries: 0 }).transact(async (tx) => Promise.all(t.map(([k, v]) => tx.put(k).value(v))));
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  client.close();
}

async function main(): Promise<number> {
  const services = Number(process.argv[2] ?? 10000);
  const label = `${services / 1000}k × ${BACKENDS}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "clusterf-stall-"));
  const rows: string[][] = [];
  let failed = false;
  const row = (what: string, r: { maxMs: number; cpuMs: number; idleMs: number; syncMs: number; over: number }) => {
    const ok = r.cpuMs <= GOAL_MS;
    if (!ok) failed = true;
    rows.push([what, `${r.cpuMs.toFixed(1)} ms`, `${r.maxMs.toFixed(1)} ms`, String(r.over), `${r.idleMs.toFixed(1)} ms`, `${Math.round(r.syncMs)} ms`, ok ? "yes" : "NO"]);
    console.error(`bench: ${rows.at(-1)!.join(", ")}`);
  };
  try {
    const cases = (process.env.BENCH_STALL_CASES ?? "sink,files,etcd").split(",");
    if (cases.includes("sink")) row(`daemon alone: ${label} keys in one update()`, await runChild("sink", dir, services));
    if (cases.includes("files")) {
      makeTree(path.join(dir, "stage"), services);
      row(`files: ${label} tree moved into -config-path`, await runChild("files", dir, services));
    }
    if (!cases.includes("etcd")) return report();
    const { startEtcd } = await import("../test/support/etcd.ts");
    const etcd = await startEtcd();
    try {
      row(`etcd: ${label} keys put while it runs`, await runChild("etcd-live", etcd.clientUrl, services, () => putAll(etcd.clientUrl, services)));
      const r = await runChild("etcd-start", etcd.clientUrl, services);
      row(`etcd: ${label} keys, first read at start`, r);
      row(`etcd: reload (SIGHUP) of the same ${label}`, { maxMs: r.reloadMaxMs!, cpuMs: r.reloadCpuMs!, over: r.reloadOver!, idleMs: r.idleMs!, syncMs: r.reloadMs! });
    } finally {
      await etcd.destroy();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return report();

  function report(): number {
    const head = ["case", "longest block (main thread running)", "longest timer lateness", `blocks > ${GOAL_MS} ms`, "yardstick: idle lateness", "yardstick: whole sync", `≤ ${GOAL_MS} ms`];
    console.log(`| ${head.join(" | ")} |\n|${head.map(() => "---").join("|")}|`);
    for (const r of rows) console.log(`| ${r.join(" | ")} |`);
    if (failed) console.log(`goal missed: a block of the event loop exceeded ${GOAL_MS} ms`);
    return failed ? 1 : 0;
  }
}

if (process.argv[2] === "--child") await child(process.argv[3]!, process.argv[4]!, Number(process.argv[5]));
else process.exit(await main());
