// The directory watcher's cost next to the project's own fs.watch layer that it replaced (the
// directory source of commit f820a4a^, one non-recursive fs.watch per directory, materialised from
// git into a temporary directory for the run; it is never part of src/). Both start on the same
// generated tree, each in a fresh process, several rounds (medians), and report: the time to a
// watching source (first read done and every watch ready), peak RSS (VmHWM) and RSS after ready,
// idle CPU over 10 s, inotify watches held, the longest event-loop block during start (lateness of
// a 5 ms timer), and a save's time to its update (proof that the watcher works). Beside them, in
// the same run: a plain readFileSync walk of the tree (time and peak RSS) and a bare Bun process
// that only imports the source module (RSS). Exits non-zero when a goal is missed.
//
//   bun bench/dir-watch-compare.ts [services...]      (default: 1000 10000; 10 backends each)
//   ROUNDS=3 IDLE_MS=10000 bun bench/dir-watch-compare.ts
//   VARIANT=path/to/other-dir-source.ts … adds a third column set (an experiment on the source)

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { inotifyWatches } from "../test/support/proc.ts";
import { BACKENDS, lagMeter, machineLine, makeTree, procStatusMiB } from "./support.ts";

const REPO = path.resolve(import.meta.dir, "..");
const OLD_COMMIT = "f820a4a^";

/**
 * The old source, written to `dir` with its imports pointed at this repository's modules (they
 * still fit: values.ts still exports MAX_VALUE_BYTES, log.ts debug/info/warn; source.ts is types).
 */
function materialiseOld(dir: string): string {
  const r = Bun.spawnSync(["git", "-C", REPO, "show", `${OLD_COMMIT}:src/config/dir-source.ts`], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`git show ${OLD_COMMIT}: ${r.stderr.toString()}`);
  let text = r.stdout.toString();
  const imports: Record<string, string> = {
    "./source.ts": path.join(REPO, "src/config/source.ts"),
    "../util/log.ts": path.join(REPO, "src/util/log.ts"),
    "./values.ts": path.join(REPO, "src/config/values.ts"),
  };
  for (const [from, to] of Object.entries(imports)) {
    const q = `from "${from}"`;
    if (!text.includes(q)) throw new Error(`the old source no longer imports ${from}`);
    text = text.replace(q, `from ${JSON.stringify(to)}`);
  }
  if (/from "\.\.?\//.test(text)) throw new Error("the old source has a relative import left");
  const file = path.join(dir, "old-dir-source.ts");
  fs.writeFileSync(file, text);
  return file;
}

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/** One measurement in this (fresh) process. */
async function child(kind: string, root: string, idleMs: number): Promise<Record<string, number>> {
  if (kind === "walk") {
    const t0 = performance.now();
    let n = 0;
    const walk = (d: string) => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (fs.readFileSync(p, "utf8").length >= 0) n++;
      }
    };
    walk(root);
    return { ms: performance.now() - t0, keys: n, hwm: procStatusMiB("VmHWM"), rss: procStatusMiB("VmRSS") };
  }
  const { DirSource } = await import(kind);
  const { configureLog } = await import(path.join(REPO, "src/util/log.ts"));
  configureLog({ level: "error" });
  if (root === "-") return { hwm: procStatusMiB("VmHWM"), rss: procStatusMiB("VmRSS") }; // bare: the module loaded, nothing started
  let keys = 0;
  let updated = 0;
  const sink = {
    snapshot: (_s: string, m: Map<string, unknown>) => void (keys = m.size),
    update: () => void (updated = performance.now()),
    status: () => {},
  };
  const lag = lagMeter();
  const t0 = performance.now();
  const src = new DirSource({ root, rescanMs: 0, rootPollMs: 3_600_000 });
  await src.start(sink);
  const ms = performance.now() - t0;
  const maxLag = lag.stop();
  const out: Record<string, number> = { ms, keys, lagMs: maxLag, rssReady: procStatusMiB("VmRSS"), hwmReady: procStatusMiB("VmHWM"), watches: inotifyWatches() };
  const c0 = cpuMs();
  await Bun.sleep(idleMs);
  out.idleCpuPct = ((cpuMs() - c0) / idleMs) * 100;
  const lat: number[] = [];
  for (let i = 0; i < 5; i++) {
    updated = 0;
    const t = performance.now();
    fs.writeFileSync(path.join(root, "services/s7/backends/b3.json"), JSON.stringify({ ipv4: "198.51.100.4", tcp: 8080, weight: 100 + i }));
    while (!updated && performance.now() - t < 5000) await Bun.sleep(1);
    lat.push(updated ? updated - t : Infinity);
    await Bun.sleep(100);
  }
  out.saveMs = lat.sort((a, b) => a - b)[2]!;
  out.hwm = procStatusMiB("VmHWM");
  out.rssAfter = procStatusMiB("VmRSS");
  await src.stop();
  return out;
}

if (process.argv[2] === "--child") {
  process.stdout.write(JSON.stringify(await child(process.argv[3]!, process.argv[4]!, Number(process.argv[5]))));
  process.exit(0);
}

function run(kind: string, root: string, idleMs: number): Record<string, number> {
  const r = Bun.spawnSync([process.execPath, import.meta.path, "--child", kind, root, String(idleMs)], { stdout: "pipe", stderr: "inherit" });
  if (r.exitCode !== 0) throw new Error(`${kind} on ${root}: exit ${r.exitCode}`);
  return JSON.parse(r.stdout.toString());
}

function median(rs: Array<Record<string, number>>, k: string): number {
  const v = rs.map((r) => r[k]!).sort((a, b) => a - b);
  const n = v.length;
  return n % 2 ? v[(n - 1) / 2]! : (v[n / 2 - 1]! + v[n / 2]!) / 2;
}

const sizes = process.argv.slice(2).map(Number);
const rounds = Number(process.env.ROUNDS ?? 3);
const idleMs = Number(process.env.IDLE_MS ?? 10_000);
const base = fs.mkdtempSync(path.join(os.tmpdir(), "clusterf-bench-dircmp-"));
const f = (n: number) => (Number.isFinite(n) ? n.toFixed(0) : String(n));
const misses: string[] = [];
const sources: Array<[string, string]> = [
  ["own fs.watch layer (f820a4a^)", materialiseOld(base)],
  ["chokidar 6 (today)", path.join(REPO, "src/config/dir-source.ts")],
];
if (process.env.VARIANT) sources.push([`variant ${path.basename(process.env.VARIANT)}`, path.resolve(process.env.VARIANT)]);
console.log(`${machineLine()}; ${rounds} rounds, each figure a median, each run a fresh process; idle CPU over ${idleMs / 1000} s`);
console.log("");
console.log("| tree | watcher | ready (first read + watches) | peak RSS (VmHWM) | RSS after ready | idle CPU | inotify watches | longest event-loop block in start | save → update |");
console.log("|---|---|---|---|---|---|---|---|---|");
try {
  for (const n of sizes.length ? sizes : [1000, 10000]) {
    const root = path.join(base, `t${n}`);
    makeTree(root, n);
    const files = n * (BACKENDS + 1);
    const dirs = 2 + 2 * n; // root, services/, s<i>/, s<i>/backends/
    const walk: Array<Record<string, number>> = [];
    const bare: Array<Record<string, number>> = [];
    const res = sources.map(() => [] as Array<Record<string, number>>);
    for (let r = 0; r < rounds; r++) {
      walk.push(run("walk", root, idleMs));
      bare.push(run(sources[1]![1], "-", idleMs));
      // alternate the order, so that neither always runs on the warmer cache
      const order = sources.map((_, i) => i);
      if (r % 2) order.reverse();
      for (const i of order) {
        const out = run(sources[i]![1], root, idleMs);
        if (out.keys !== files) misses.push(`${n}: ${sources[i]![0]} read ${out.keys} keys of ${files}`);
        res[i]!.push(out);
      }
    }
    const m = (i: number, k: string) => median(res[i]!, k);
    for (let i = 0; i < sources.length; i++) {
      console.log(
        `| ${n} × ${BACKENDS} | ${sources[i]![0]} | ${f(m(i, "ms"))} ms | ${f(m(i, "hwm"))} MiB | ${f(m(i, "rssReady"))} MiB | ${m(i, "idleCpuPct").toFixed(2)}% | ${f(m(i, "watches"))} | ${f(m(i, "lagMs"))} ms | ${f(m(i, "saveMs"))} ms |`,
      );
    }
    console.log(`| ${n} × ${BACKENDS} | yardstick: readFileSync walk / bare Bun with the module loaded | ${f(median(walk, "ms"))} ms | ${f(median(walk, "hwm"))} / ${f(median(bare, "hwm"))} MiB | ${f(median(bare, "rss"))} MiB (bare) | | ${dirs} directories | | |`);
    // Goals for today's watcher against the old one of the same run: every directory watched and
    // nothing more per file; ready within 2× the old watcher; peak RSS within 1.5× the old one's;
    // no event-loop block over 100 ms; idle under 1% CPU; a save applied within 150 ms.
    const o = 0;
    for (let i = 1; i < sources.length; i++) {
      const name = `${n}: ${sources[i]![0]}`;
      if (m(i, "watches") !== dirs) misses.push(`${name}: ${f(m(i, "watches"))} inotify watches for ${dirs} directories`);
      if (m(i, "ms") > 2 * m(o, "ms")) misses.push(`${name}: ready ${f(m(i, "ms"))} ms > 2 × own watcher ${f(m(o, "ms"))} ms`);
      if (m(i, "hwm") > 1.5 * m(o, "hwm")) misses.push(`${name}: peak RSS ${f(m(i, "hwm"))} MiB > 1.5 × own watcher ${f(m(o, "hwm"))} MiB`);
      if (m(i, "lagMs") > 100) misses.push(`${name}: event loop blocked ${f(m(i, "lagMs"))} ms during start`);
      if (m(i, "idleCpuPct") > 1) misses.push(`${name}: idle CPU ${m(i, "idleCpuPct").toFixed(2)}%`);
      if (m(i, "saveMs") > 150) misses.push(`${name}: save → update ${f(m(i, "saveMs"))} ms`);
    }
  }
} finally {
  fs.rmSync(base, { recursive: true, force: true });
}
console.log(`load average ${os.loadavg().map((l) => l.toFixed(2)).join(" ")} at the end`);
if (misses.length) {
  console.log(`goals missed:\n  ${misses.join("\n  ")}`);
  process.exit(1);
}
