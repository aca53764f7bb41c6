// Whole-process scale: `clusterf-ipvs -once -ipvs-mock` from a config tree and from etcd, and a
// live daemon on etcd (and one watching the tree, reported), as the packages install it (the
// binary packaging/build.ts makes, built by this bench first) and from the source
// (bin/clusterf-ipvs, as `npm start` runs it), next to a yardstick of the same run: a plain
// Python script that walks the same tree, reads every file and parses its JSON
// (bench/yardstick-read.py). Also the start-up of
// file-only mode on an empty tree, next to Bun starting an empty script. Wall time is spawn to
// exit (to the first apply's log line for the live daemon); peak RSS is the process's maxRSS, from wait4
// (VmHWM for the live daemon, read after its first apply settled). Exits 1 when a goal is missed.
//
//   bun bench/scale.ts [SERVICESxBACKENDS...] [--runs=N]     (default: 1000x10 10000x10 50000x4, 5 runs)
//
// Then, in one process per size, where the memory goes: the heap (after a full GC) that each
// layer adds for the same config (the store's parsed values, the desired table, the reconciler's
// cache of the kernel plus the in-memory table of -ipvs-mock), next to the raw text of the values
// as a source hands them over, and each step's time.
//
// With the -config-path cache (a real daemon keeps it in -state-dir; -ipvs-mock only where told,
// with -config-path-cache=FILE): the first start, which writes it, and a restart that finds the
// tree unchanged (written RACY_MS before the first start, as an operator's tree is).
//
// Goals (checked at 10000x10 on the packaged binary, what operators run; other sizes, such as the
// 50000x4 stretch, and the source's figures are reported only):
// files ≤ 1.0 × the yardstick, etcd ≤ 0.6 × the yardstick, peak RSS ≤ 150 MiB for -once from
// files (with the cache and without) and from etcd and for the live daemon on etcd; an empty
// tree ≤ 40 MiB.

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { startEtcd, type Etcd } from "../test/support/etcd.ts";
import { loadEtcd } from "./support.ts";
import { RACY_MS } from "../src/config/tree-cache.ts";

const ROOT = path.join(import.meta.dir, "..");
const SOURCE = [path.join(ROOT, "bin", "clusterf-ipvs")];
const YARDSTICK = path.join(import.meta.dir, "yardstick-read.py");
const MiB = 2 ** 20;
const GOAL = { filesRatio: 1.0, etcdRatio: 0.6, rssMiB: 150, emptyRssMiB: 40 };

// ---- the config (TEST-NET addresses only)

interface Size {
  services: number;
  backends: number;
}

/** Every key and value of the config: distinct VIP:port per service, distinct destinations. */
function* config({ services, backends }: Size): Generator<[string, string]> {
  yield ["routes/local", JSON.stringify({ Prefix4: "198.51.100.0/24", IpvsMethod: "masq" })];
  yield ["routes/far", JSON.stringify({ Prefix4: "203.0.113.0/24", Gateway4: "192.0.2.254", IpvsMethod: "droute" })];
  for (let s = 0; s < services; s++) {
    yield [`services/s${s}/frontend`, JSON.stringify({ ipv4: `192.0.2.${1 + (s % 250)}`, tcp: 80 + Math.floor(s / 250) })];
    for (let b = 0; b < backends; b++) {
      const i = s * backends + b;
      yield [`services/s${s}/backends/b${b}`, JSON.stringify({ ipv4: `198.51.100.${1 + (i % 254)}`, tcp: 1024 + Math.floor(i / 254), weight: 10 })];
    }
  }
}

/** IPVS writes of a full sync into an empty table: one per service and one per destination. */
const expectedWrites = (z: Size) => z.services * (1 + z.backends);

function writeTree(root: string, z: Size): void {
  fs.rmSync(root, { recursive: true, force: true });
  const made = new Set<string>();
  for (const [key, value] of config(z)) {
    const file = path.join(root, key + ".json");
    const dir = path.dirname(file);
    if (!made.has(dir)) fs.mkdirSync(dir, { recursive: true }), made.add(dir);
    fs.writeFileSync(file, value);
  }
}

// ---- measured processes

interface Run {
  ms: number;
  rssMiB: number;
  out: string;
  err: string;
}

/**
 * Runs a command through a small Python parent that forks it and reads its rusage (wait4): the
 * peak RSS of a child forked from this big Bun process would count this process's pages too
 * (Linux carries the pre-exec high-water mark across exec), one forked from Python only its own
 * few MiB. The parent appends "PEAK <KiB> <seconds>" to stderr.
 */
const TIMED = [
  "import os, sys, time",
  "t = time.monotonic()",
  "pid = os.fork()",
  "if pid == 0: os.execvp(sys.argv[1], sys.argv[1:])",
  "_, status, ru = os.wait4(pid, 0)",
  "sys.stderr.write('\\nPEAK %d %.6f\\n' % (ru.ru_maxrss, time.monotonic() - t))",
  "sys.exit(os.waitstatus_to_exitcode(status))",
].join("\n");

async function measure(cmd: string[]): Promise<Run> {
  const p = Bun.spawn([py, "-c", TIMED, ...cmd], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  if (p.exitCode !== 0) throw new Error(`${cmd.join(" ")}: exit ${p.exitCode}\n${err.slice(-2000)}`);
  const m = /\nPEAK (\d+) ([\d.]+)\n$/.exec(err)!;
  return { ms: Number(m[2]) * 1000, rssMiB: Number(m[1]) / 1024, out, err };
}

/** A full apply's write count from the daemon's log, checked against the config's. */
function checkWrites(r: Run, z: Size, what: string): void {
  const m = /IPVS: applied kind=full writes=(\d+)/.exec(r.err);
  if (!m || Number(m[1]) !== expectedWrites(z)) {
    throw new Error(`${what}: expected ${expectedWrites(z)} writes, log says ${m?.[1] ?? "nothing"}\n${r.err.slice(-2000)}`);
  }
}

const once = (cli: string[], stateDir: string, source: string[]) => [...cli, "-once", "-ipvs-mock", `-state-dir=${stateDir}`, ...source];

/** A daemon that keeps running: time to its first full apply, then VmRSS and VmHWM once settled. */
async function live(cmd: string[], z: Size): Promise<{ ms: number; rssMiB: number; peakMiB: number }> {
  const t0 = performance.now();
  const p = Bun.spawn(cmd, { stdout: "ignore", stderr: "pipe", stdin: "ignore" });
  let err = "";
  let ms = 0;
  const reader = p.stderr.getReader();
  const dec = new TextDecoder();
  try {
    while (!/IPVS: applied kind=full/.test(err)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`live daemon exited before its first apply:\n${err.slice(-2000)}`);
      err += dec.decode(value);
    }
    ms = performance.now() - t0;
    checkWrites({ ms, rssMiB: 0, out: "", err }, z, "live daemon");
    await Bun.sleep(3000); // what it holds after the first apply, not during
    const status = fs.readFileSync(`/proc/${p.pid}/status`, "utf8");
    const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)![1]) / 1024;
    return { ms, rssMiB: kb("VmRSS"), peakMiB: kb("VmHWM") };
  } finally {
    p.kill("SIGTERM");
    void (async () => {
      for (;;) if ((await reader.read()).done) break;
    })();
    await p.exited;
  }
}

/** The interpreter itself, not a version manager's shim in front of it (its start-up is not Python's). */
function python(): string {
  const r = Bun.spawnSync(["python3", "-c", "import sys; print(sys.executable)"]);
  if (r.exitCode !== 0) throw new Error("python3 is needed for the yardstick");
  return r.stdout.toString().trim();
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const maxOf = (xs: number[]) => Math.max(...xs);

// ---- where the memory goes (a child process per size, so that each starts from the same heap)

async function layers(z: Size): Promise<Record<string, number>> {
  const { heapStats } = await import("bun:jsc");
  const { ConfigStore } = await import("../src/config/store.ts");
  const { DesiredTable, DEFAULT_DESIRED_OPTIONS } = await import("../src/model/desired.ts");
  const { Reconciler } = await import("../src/daemon/reconciler.ts");
  const { MemoryIpvsTable } = await import("../src/ipvs/memory-table.ts");
  const heap = () => {
    Bun.gc(true);
    return heapStats().heapSize / MiB;
  };
  const out: Record<string, number> = {};
  const h0 = heap();
  let raw: Map<string, { text: string; format: "json"; origin: string }> | undefined = new Map();
  for (const [key, text] of config(z)) raw.set(key, { text, format: "json", origin: `/clusterf/${key}` });
  const h1 = heap();
  out.rawMiB = h1 - h0;
  const store = new ConfigStore();
  let t = performance.now();
  store.snapshot("etcd", raw);
  out.storeMs = performance.now() - t;
  raw = undefined;
  const h2 = heap();
  out.storeMiB = h2 - h0;
  const desired = new DesiredTable(DEFAULT_DESIRED_OPTIONS);
  t = performance.now();
  desired.rebuild(store.services, store.routes);
  out.desiredMs = performance.now() - t;
  const h3 = heap();
  out.desiredMiB = h3 - h2;
  const reconciler = new Reconciler(new MemoryIpvsTable());
  t = performance.now();
  const r = reconciler.sync(desired.table);
  out.syncMs = performance.now() - t;
  if (r.ops !== expectedWrites(z)) throw new Error(`layers: ${r.ops} writes, expected ${expectedWrites(z)}`);
  out.actualMiB = heap() - h3;
  return out;
}

// ---- main

if (process.argv[2] === "--layers") {
  const [services, backends] = process.argv.slice(3).map(Number);
  process.stdout.write(JSON.stringify(await layers({ services: services!, backends: backends! })));
  process.exit(0);
}

const args = process.argv.slice(2);
const runs = Number(args.find((a) => a.startsWith("--runs="))?.slice(7) ?? 5);
const sizes: Size[] = (args.filter((a) => !a.startsWith("--")).length ? args.filter((a) => !a.startsWith("--")) : ["1000x10", "10000x10", "50000x4"]).map((a) => {
  const [s, b] = a.split("x").map(Number);
  if (!s || !b) throw new Error(`bad size ${a}: expected SERVICESxBACKENDS`);
  return { services: s, backends: b };
});

const py = python();
const base = fs.mkdtempSync(path.join(os.tmpdir(), "clusterf-bench-scale-"));
// The trees in memory (tmpfs) by default: on disk, the writeback of a freshly written tree ran
// through the first measurements, and this machine's proactive reclaim (DAMON) evicted a tree's
// page cache now and then (one read then took 34-74 s instead of 2). Yardstick and daemon read
// the same tree either way. BENCH_TREE_DIR=DIR to put them elsewhere.
const treeBase = fs.mkdtempSync(path.join(process.env.BENCH_TREE_DIR || (fs.existsSync("/dev/shm") ? "/dev/shm" : os.tmpdir()), "clusterf-bench-trees-"));
const stateDir = path.join(base, "state");
const misses: string[] = [];
const rows: string[] = [];
const sourceRows: string[] = [];
const watchRows: string[] = [];
const layerRows: string[] = [];
const cacheRows: string[] = [];
const f0 = (n: number) => n.toFixed(0);
const ratio = (ms: number, yard: number) => (ms / yard).toFixed(2);
const timeAndRatio = (ms: number, yard: number) => `${f0(ms)} ms (${ratio(ms, yard)})`;
let etcd: Etcd | undefined;
try {
  // The packaged binary, as the .deb and .rpm install it (`clusterf ipvs` is clusterf-ipvs).
  const build = Bun.spawnSync([process.execPath, path.join(ROOT, "packaging", "build.ts"), path.join(base, "build")], { stdout: "ignore", stderr: "pipe" });
  if (build.exitCode !== 0) throw new Error(`packaging/build.ts: exit ${build.exitCode}\n${build.stderr.toString().slice(-2000)}`);
  const PACKAGED = [path.join(base, "build", "clusterf"), "ipvs"];

  etcd = await startEtcd();
  const etcdFlags = [`-etcd-machines=${etcd.clientUrl}`, "-etcd-prefix=/clusterf", "-config-path="];

  // Start-up on an empty tree, file-only, next to Bun running an empty script.
  const empty = path.join(base, "empty");
  fs.mkdirSync(empty);
  const bunEmpty: Run[] = [];
  const emptyRuns: Run[] = [];
  const emptySource: Run[] = [];
  for (let i = 0; i < runs; i++) {
    bunEmpty.push(await measure([process.execPath, "-e", "0"]));
    emptyRuns.push(await measure(once(PACKAGED, stateDir, ["-etcd-machines=", `-config-path=${empty}`])));
    emptySource.push(await measure(once(SOURCE, stateDir, ["-etcd-machines=", `-config-path=${empty}`])));
  }
  const emptyRss = maxOf(emptyRuns.map((r) => r.rssMiB));
  if (emptyRss > GOAL.emptyRssMiB) misses.push(`empty tree: peak RSS ${f0(emptyRss)} MiB > ${GOAL.emptyRssMiB} MiB`);
  rows.push(
    `| empty tree, file-only | bun -e 0: ${f0(median(bunEmpty.map((r) => r.ms)))} ms, ${f0(maxOf(bunEmpty.map((r) => r.rssMiB)))} MiB | ${f0(median(emptyRuns.map((r) => r.ms)))} ms | | ${f0(emptyRss)} MiB | | | | |`,
  );
  sourceRows.push(`| empty tree, file-only | ${f0(median(emptySource.map((r) => r.ms)))} ms | | ${f0(maxOf(emptySource.map((r) => r.rssMiB)))} MiB | | | |`);

  for (const z of sizes) {
    const label = `${z.services} × ${z.backends}`;
    const tree = path.join(treeBase, `tree-${z.services}x${z.backends}`);
    writeTree(tree, z);
    const treeWritten = Date.now();
    await loadEtcd(etcd.clientUrl, "/clusterf", config(z), true);
    const yard: Run[] = [];
    const files: Run[] = [];
    const fromEtcd: Run[] = [];
    const filesSource: Run[] = [];
    const etcdSource: Run[] = [];
    const onceChecked = async (cli: string[], source: string[], what: string) => {
      fs.rmSync(stateDir, { recursive: true, force: true });
      const r = await measure(once(cli, stateDir, source));
      checkWrites(r, z, what);
      return r;
    };
    const fromFiles = ["-etcd-machines=", `-config-path=${tree}`];
    for (let i = 0; i < runs; i++) {
      // interleaved, so that the machine's load falls on all alike
      const y = await measure([py, YARDSTICK, tree]);
      if (Number(y.out.trim()) !== z.services * (1 + z.backends) + 2) throw new Error(`yardstick read ${y.out.trim()} files`);
      yard.push(y);
      files.push(await onceChecked(PACKAGED, fromFiles, "files"));
      fromEtcd.push(await onceChecked(PACKAGED, etcdFlags, "etcd"));
      filesSource.push(await onceChecked(SOURCE, fromFiles, "files, source"));
      etcdSource.push(await onceChecked(SOURCE, etcdFlags, "etcd, source"));
    }
    // The -config-path cache: written by a first start, then used by restarts.
    await Bun.sleep(Math.max(0, treeWritten + RACY_MS + 100 - Date.now()));
    const cacheFile = path.join(base, "config-path.cache");
    const withCache = once(PACKAGED, stateDir, [...fromFiles, `-config-path-cache=${cacheFile}`]);
    const unread = (r: Run) => Number(/config-path: read .*unchanged=(\d+)/.exec(r.err)?.[1] ?? NaN);
    const keys = z.services * (1 + z.backends) + 2;
    fs.rmSync(stateDir, { recursive: true, force: true });
    const written = await measure(withCache);
    checkWrites(written, z, "files, writing the cache");
    if (unread(written) !== 0) throw new Error(`${label}: the first start with the cache left ${unread(written)} files unread`);
    const restarts: Run[] = [];
    for (let i = 0; i < runs; i++) {
      fs.rmSync(stateDir, { recursive: true, force: true });
      const r = await measure(withCache);
      checkWrites(r, z, "files, from the cache");
      if (unread(r) !== keys) throw new Error(`${label}: a restart with the cache read ${keys - unread(r)} of ${keys} files`);
      restarts.push(r);
    }
    fs.rmSync(cacheFile, { force: true });
    fs.rmSync(stateDir, { recursive: true, force: true });
    const lr = Bun.spawnSync([process.execPath, import.meta.path, "--layers", String(z.services), String(z.backends)], { stderr: "inherit" });
    if (lr.exitCode !== 0) throw new Error(`layers ${label}: exit ${lr.exitCode}`);
    const l = JSON.parse(lr.stdout.toString());
    layerRows.push(
      `| ${label} | ${l.rawMiB.toFixed(1)} MiB | ${l.storeMiB.toFixed(1)} MiB (${(l.storeMiB / l.rawMiB).toFixed(2)}), ${f0(l.storeMs)} ms | ${l.desiredMiB.toFixed(1)} MiB (${(l.desiredMiB / l.rawMiB).toFixed(2)}), ${f0(l.desiredMs)} ms | ${l.actualMiB.toFixed(1)} MiB (${(l.actualMiB / l.rawMiB).toFixed(2)}), ${f0(l.syncMs)} ms |`,
    );
    const daemon = await live([...PACKAGED, "-ipvs-mock", `-state-dir=${stateDir}`, ...etcdFlags], z);
    fs.rmSync(stateDir, { recursive: true, force: true });
    const daemonSource = await live([...SOURCE, "-ipvs-mock", `-state-dir=${stateDir}`, ...etcdFlags], z);
    fs.rmSync(stateDir, { recursive: true, force: true });
    // A live daemon on the tree: chokidar watches every directory before the first read.
    const watching = await live([...PACKAGED, "-ipvs-mock", `-state-dir=${stateDir}`, `-config-path-cache=off`, ...fromFiles], z);
    fs.rmSync(stateDir, { recursive: true, force: true });
    const y = median(yard.map((r) => r.ms));
    const fm = median(files.map((r) => r.ms));
    const em = median(fromEtcd.map((r) => r.ms));
    const fr = maxOf(files.map((r) => r.rssMiB));
    const er = maxOf(fromEtcd.map((r) => r.rssMiB));
    const cm = median(restarts.map((r) => r.ms));
    const cr = maxOf(restarts.map((r) => r.rssMiB));
    cacheRows.push(`| ${label} | ${timeAndRatio(fm, y)}, ${f0(fr)} MiB | ${timeAndRatio(written.ms, y)}, ${f0(written.rssMiB)} MiB | ${timeAndRatio(cm, y)}, ${f0(cr)} MiB |`);
    rows.push(
      `| ${label} | ${f0(y)} ms, ${f0(maxOf(yard.map((r) => r.rssMiB)))} MiB | ${timeAndRatio(fm, y)} | ${timeAndRatio(em, y)} | ${f0(fr)} MiB | ${f0(er)} MiB | ${timeAndRatio(daemon.ms, y)} | ${f0(daemon.rssMiB)} MiB | ${f0(daemon.peakMiB)} MiB |`,
    );
    watchRows.push(`| ${label} | ${timeAndRatio(watching.ms, y)} | ${f0(watching.rssMiB)} MiB | ${f0(watching.peakMiB)} MiB |`);
    sourceRows.push(
      `| ${label} | ${timeAndRatio(median(filesSource.map((r) => r.ms)), y)} | ${timeAndRatio(median(etcdSource.map((r) => r.ms)), y)} | ${f0(maxOf(filesSource.map((r) => r.rssMiB)))} MiB | ${f0(maxOf(etcdSource.map((r) => r.rssMiB)))} MiB | ${timeAndRatio(daemonSource.ms, y)} | ${f0(daemonSource.peakMiB)} MiB |`,
    );
    if (z.services === 10000 && z.backends === 10) {
      if (fm > GOAL.filesRatio * y) misses.push(`${label}: files ${f0(fm)} ms > ${GOAL.filesRatio} × yardstick ${f0(y)} ms`);
      if (em > GOAL.etcdRatio * y) misses.push(`${label}: etcd ${f0(em)} ms > ${GOAL.etcdRatio} × yardstick ${f0(y)} ms`);
      if (fr > GOAL.rssMiB) misses.push(`${label}: -once from files peak RSS ${f0(fr)} MiB > ${GOAL.rssMiB} MiB`);
      if (written.rssMiB > GOAL.rssMiB) misses.push(`${label}: -once from files writing the cache: peak RSS ${f0(written.rssMiB)} MiB > ${GOAL.rssMiB} MiB`);
      if (cr > GOAL.rssMiB) misses.push(`${label}: -once from files with the cache: peak RSS ${f0(cr)} MiB > ${GOAL.rssMiB} MiB`);
      if (er > GOAL.rssMiB) misses.push(`${label}: -once from etcd peak RSS ${f0(er)} MiB > ${GOAL.rssMiB} MiB`);
      if (daemon.peakMiB > GOAL.rssMiB) misses.push(`${label}: live daemon on etcd peak RSS ${f0(daemon.peakMiB)} MiB > ${GOAL.rssMiB} MiB`);
    }
    fs.rmSync(tree, { recursive: true, force: true });
  }
} finally {
  await etcd?.destroy();
  fs.rmSync(base, { recursive: true, force: true });
  fs.rmSync(treeBase, { recursive: true, force: true });
}

/** A markdown table under its title line, then a blank line. */
function table(title: string, head: string[], body: string[]): void {
  console.log(title);
  console.log(`| ${head.join(" | ")} |`);
  console.log(`|${head.map(() => "---|").join("")}`);
  for (const r of body) console.log(r);
  console.log("");
}
table(
  `trees in ${path.dirname(treeBase)}; the packaged clusterf-ipvs (packaging/build.ts, as the .deb and .rpm install it), -ipvs-mock, whole process; medians of ${runs} runs (time), maxima (RSS); (ratio) = time / yardstick of the same run`,
  ["services × backends", "yardstick: Python read + parse", "-once, files", "-once, etcd", "peak RSS, files", "peak RSS, etcd", "live on etcd: first apply", "live: RSS after", "live: peak RSS"],
  rows,
);
table(
  "the same from the source (bin/clusterf-ipvs: Bun transpiles each module at start), same runs, same yardstick",
  ["services × backends", "-once, files", "-once, etcd", "peak RSS, files", "peak RSS, etcd", "live on etcd: first apply", "live: peak RSS"],
  sourceRows,
);
table(
  "a live daemon watching the tree (packaged; it watches every directory before its first read), reported: time to its first apply (ratio to the yardstick), RSS after, peak RSS",
  ["services × backends", "first apply", "RSS after", "peak RSS"],
  watchRows,
);
table(
  "the -config-path cache (packaged): -once from files without it, the first start (writes it), a restart on the unchanged tree (reads no file); time (ratio to the yardstick), peak RSS",
  ["services × backends", "no cache", "first start, cache written", "restart from the cache"],
  cacheRows,
);
table(
  "where the memory goes: heap after a full GC, (ratio) = size / raw values of the same run; time of the step",
  ["services × backends", "raw values (key, text, origin)", "+ store (parsed, merged)", "+ desired table", "+ sync: reconciler cache, -ipvs-mock table"],
  layerRows,
);
if (misses.length) {
  console.log(`goals missed:\n  ${misses.join("\n  ")}`);
  process.exit(1);
}
