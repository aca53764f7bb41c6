// The -config-path source on large trees: the first read, the watcher's start-up, memory, idle
// CPU, and the time from a saved file to its update, next to a plain readFileSync walk of the
// same tree in the same run (the yardstick). Each measurement runs in a fresh process, so RSS is
// its own. Exits non-zero when a goal is missed.
//
//   bun bench/dir-watch.ts [services...]      (default: 1000 10000; 10 backends each)

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const BACKENDS = 10;

function makeTree(root: string, services: number): void {
  fs.rmSync(root, { recursive: true, force: true });
  for (let s = 0; s < services; s++) {
    const d = path.join(root, "services", `s${s}`);
    fs.mkdirSync(path.join(d, "backends"), { recursive: true });
    fs.writeFileSync(path.join(d, "frontend.json"), JSON.stringify({ ipv4: `192.0.2.${s % 250}`, tcp: 1 + (s % 65000) }));
    for (let b = 0; b < BACKENDS; b++) {
      fs.writeFileSync(path.join(d, "backends", `b${b}.json`), JSON.stringify({ ipv4: `198.51.100.${b + 1}`, tcp: 8080, weight: 10 }));
    }
  }
}

const rssMiB = () => process.memoryUsage().rss / 2 ** 20;
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/** One measurement in this process (the child side). */
async function child(kind: string, root: string): Promise<Record<string, number>> {
  if (kind === "walk") {
    // the yardstick: list and read every file, nothing else
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
    return { ms: performance.now() - t0, keys: n, rss: rssMiB() };
  }
  const { DirSource } = await import("../src/config/dir-source.ts");
  const { configureLog } = await import("../src/util/log.ts");
  configureLog({ level: "error" });
  let keys = 0;
  let updated = 0;
  const sink = {
    snapshot: (_s: string, m: Map<string, unknown>) => void (keys = m.size),
    update: () => void (updated = performance.now()),
    status: () => {},
  };
  // the event loop's longest stall while the source works
  let maxLag = 0;
  let last = performance.now();
  const lag = setInterval(() => {
    const now = performance.now();
    maxLag = Math.max(maxLag, now - last - 5);
    last = now;
  }, 5);
  const t0 = performance.now();
  const src = new DirSource({ root, watch: kind === "watch", rescanMs: 0 });
  await src.start(sink);
  const ready = performance.now() - t0;
  const rss = rssMiB();
  const out: Record<string, number> = { ms: ready, keys, rss, lagMs: maxLag };
  if (kind === "watch") {
    clearInterval(lag);
    const c0 = cpuMs();
    await Bun.sleep(5000);
    out.idleCpuPct = ((cpuMs() - c0) / 5000) * 100;
    // a saved file's update: median of 9
    const lat: number[] = [];
    for (let i = 0; i < 9; i++) {
      updated = 0;
      const t = performance.now();
      fs.writeFileSync(path.join(root, "services/s7/backends/b3.json"), JSON.stringify({ ipv4: "198.51.100.4", tcp: 8080, weight: i }));
      while (!updated) await Bun.sleep(1);
      lat.push(updated - t);
      await Bun.sleep(100);
    }
    out.saveMs = lat.sort((a, b) => a - b)[4]!;
    out.rssAfter = rssMiB();
  }
  clearInterval(lag);
  await src.stop();
  return out;
}

function run(kind: string, root: string): Record<string, number> {
  const r = Bun.spawnSync([process.execPath, import.meta.path, "--child", kind, root], { stdout: "pipe", stderr: "inherit" });
  if (r.exitCode !== 0) throw new Error(`${kind} on ${root}: exit ${r.exitCode}`);
  return JSON.parse(r.stdout.toString());
}

if (process.argv[2] === "--child") {
  process.stdout.write(JSON.stringify(await child(process.argv[3]!, process.argv[4]!)));
  process.exit(0);
}

const sizes = process.argv.slice(2).map(Number);
const base = fs.mkdtempSync(path.join(os.tmpdir(), "clusterf-bench-dir-"));
const f = (n: number) => n.toFixed(0);
const misses: string[] = [];
console.log("| services × backends | readFileSync walk | first read (watch: false) | start with watcher (read + watches ready) | RSS: walk / read / watching | idle CPU | save → update (median) | longest event-loop stall |");
console.log("|---|---|---|---|---|---|---|---|");
try {
  for (const n of sizes.length ? sizes : [1000, 10000]) {
    const root = path.join(base, `t${n}`);
    makeTree(root, n);
    const walk = run("walk", root);
    const once = run("once", root);
    const watch = run("watch", root);
    const files = n * (BACKENDS + 1);
    if (once.keys !== files || watch.keys !== files) misses.push(`${n}: read ${once.keys}/${watch.keys} keys of ${files}`);
    // goals: the first read within 2× the plain walk; never a stall over 100 ms; idle under 1% CPU;
    // a save applied within the debounce plus 100 ms
    if (once.ms > 2 * walk.ms) misses.push(`${n}: first read ${f(once.ms)} ms > 2 × walk ${f(walk.ms)} ms`);
    for (const [k, r] of [["once", once], ["watch", watch]] as const) if (r.lagMs > 100) misses.push(`${n}: ${k}: event loop stalled ${f(r.lagMs)} ms`);
    if (watch.idleCpuPct > 1) misses.push(`${n}: idle CPU ${watch.idleCpuPct.toFixed(2)}%`);
    if (watch.saveMs > 150) misses.push(`${n}: save → update ${f(watch.saveMs)} ms`);
    console.log(
      `| ${n} × ${BACKENDS} | ${f(walk.ms)} ms | ${f(once.ms)} ms | ${f(watch.ms)} ms | ${f(walk.rss)} / ${f(once.rss)} / ${f(watch.rssAfter)} MiB | ${watch.idleCpuPct.toFixed(2)}% | ${f(watch.saveMs)} ms | ${f(Math.max(once.lagMs, watch.lagMs))} ms |`,
    );
  }
} finally {
  fs.rmSync(base, { recursive: true, force: true });
}
if (misses.length) {
  console.log(`goals missed:\n  ${misses.join("\n  ")}`);
  process.exit(1);
}
