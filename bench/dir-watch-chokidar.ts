// Where the directory watcher's memory and start-up block go: chokidar 6 alone (the directory
// source's options, no reading, no handlers but counters) on the same generated tree as
// bench/dir-watch-compare.ts, next to a plain fs.watch per directory (the yardstick, what the old
// own layer held) and to chokidar told to ignore regular files (directories and symlinks only).
// Each run in a fresh process, several rounds, medians: ready time, longest event-loop block,
// RSS and peak RSS, the JS heap after a full GC and the heap objects per watched directory and
// per file. Exits non-zero when a goal is missed.
//
//   bun bench/dir-watch-chokidar.ts [services...]      (default: 1000 10000; 10 backends each)

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { BACKENDS, lagMeter, machineLine, makeTree, procStatusMiB } from "./support.ts";



async function child(kind: string, root: string): Promise<Record<string, number>> {
  const { heapStats } = await import("bun:jsc");
  const { watch } = await import("chokidar");
  Bun.gc(true);
  const objects0 = heapStats().objectCount;
  const lag = lagMeter();
  const t0 = performance.now();
  let close: () => Promise<void> | void;
  if (kind === "fs.watch") {
    // the yardstick: one fs.watch per directory, listed in 20 ms slices as the old layer did
    const ws: fs.FSWatcher[] = [];
    const dirs = [root];
    let slice = performance.now();
    while (dirs.length) {
      const d = dirs.pop()!;
      ws.push(fs.watch(d, () => {}));
      for (const e of fs.readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) dirs.push(path.join(d, e.name));
      if (performance.now() - slice > 20) {
        await new Promise((r) => setImmediate(r));
        slice = performance.now();
      }
    }
    close = () => ws.forEach((w) => w.close());
  } else {
    // the directory source's options (src/config/dir-source.ts), its hidden-name filter
    const hidden = (p: string) => path.relative(root, p).split("/").some((n) => n.startsWith(".") && !n.startsWith(".."));
    const w = watch(root, {
      ignoreInitial: true,
      followSymlinks: true,
      depth: 32,
      atomic: false,
      ignored: kind === "chokidar, files ignored" ? (p: string, st?: fs.Stats) => (st?.isFile() ?? false) || hidden(p) : hidden,
    });
    let events = 0;
    w.on("all", () => void events++);
    w.on("raw", () => void events++);
    await new Promise<void>((r) => w.once("ready", () => r()));
    close = () => w.close();
  }
  const ms = performance.now() - t0;
  const maxLag = lag.stop();
  const rss = procStatusMiB("VmRSS");
  Bun.gc(true);
  const hs = heapStats();
  const out = { ms, lagMs: maxLag, rss, hwm: procStatusMiB("VmHWM"), heapMiB: hs.heapSize / 2 ** 20, objects: hs.objectCount - objects0 };
  await close();
  return out;
}

if (process.argv[2] === "--child") {
  process.stdout.write(JSON.stringify(await child(process.argv[3]!, process.argv[4]!)));
  process.exit(0);
}

function run(kind: string, root: string): Record<string, number> {
  const r = Bun.spawnSync([process.execPath, import.meta.path, "--child", kind, root], { stdout: "pipe", stderr: "inherit" });
  if (r.exitCode !== 0) throw new Error(`${kind} on ${root}: exit ${r.exitCode}`);
  return JSON.parse(r.stdout.toString());
}

const median = (rs: Array<Record<string, number>>, k: string) => {
  const v = rs.map((r) => r[k]!).sort((a, b) => a - b);
  return v.length % 2 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
};

const sizes = process.argv.slice(2).map(Number);
const rounds = Number(process.env.ROUNDS ?? 3);
const kinds = ["fs.watch", "chokidar", "chokidar, files ignored"];
const base = fs.mkdtempSync(path.join(os.tmpdir(), "clusterf-bench-chokidar-"));
const f = (n: number) => n.toFixed(0);
const misses: string[] = [];
console.log(`${machineLine()}; ${rounds} rounds, medians, each run a fresh process`);
console.log("");
console.log("| tree | watching | ready | longest event-loop block | RSS / peak | JS heap after GC | heap objects per directory | per file |");
console.log("|---|---|---|---|---|---|---|---|");
try {
  for (const n of sizes.length ? sizes : [1000, 10000]) {
    const root = path.join(base, `t${n}`);
    makeTree(root, n);
    const dirs = 2 + 2 * n;
    const files = n * (BACKENDS + 1);
    const res = new Map<string, Array<Record<string, number>>>(kinds.map((k) => [k, []]));
    for (let r = 0; r < rounds; r++) for (const k of r % 2 ? [...kinds].reverse() : kinds) res.get(k)!.push(run(k, root));
    const m = (k: string, f: string) => median(res.get(k)!, f);
    for (const k of kinds) {
      const perDir = m(k, "objects") / dirs;
      // the objects chokidar adds for the files: the difference with files ignored
      const perFile = k === "chokidar" ? (m("chokidar", "objects") - m("chokidar, files ignored", "objects")) / files : NaN;
      console.log(
        `| ${n} × ${BACKENDS} | ${k === "fs.watch" ? "yardstick: one fs.watch per directory" : k} | ${f(m(k, "ms"))} ms | ${f(m(k, "lagMs"))} ms | ${f(m(k, "rss"))} / ${f(m(k, "hwm"))} MiB | ${m(k, "heapMiB").toFixed(1)} MiB | ${perDir.toFixed(1)} | ${Number.isNaN(perFile) ? "" : perFile.toFixed(1)} |`,
      );
    }
    // goals: chokidar holds no more than 2× the heap of one fs.watch per directory and blocks the
    // event loop no longer than 100 ms at a time while it starts
    if (m("chokidar", "heapMiB") > 2 * m("fs.watch", "heapMiB")) misses.push(`${n}: chokidar heap ${m("chokidar", "heapMiB").toFixed(1)} MiB > 2 × fs.watch per directory ${m("fs.watch", "heapMiB").toFixed(1)} MiB`);
    if (m("chokidar", "lagMs") > 100) misses.push(`${n}: chokidar blocked the event loop ${f(m("chokidar", "lagMs"))} ms`);
  }
} finally {
  fs.rmSync(base, { recursive: true, force: true });
}
console.log(`load average ${os.loadavg().map((l) => l.toFixed(2)).join(" ")} at the end`);
if (misses.length) {
  console.log(`goals missed:\n  ${misses.join("\n  ")}`);
  process.exit(1);
}
