// The daemon in the kernel (run inside the user-mode kernel by bench/kernel.sh): clusterf-ipvs
// (the packaged binary that bench/kernel.sh builds, else the source) -once programs 1000
// services × 10 backends from a config tree into a fresh network namespace; then a restart with
// the unchanged config (writes and apply time, next to one `ipvsadm -Ln`); then one changed
// backend; three rounds, medians. Times are the daemon's own "IPVS: applied" figures (Bun's
// start-up and the config read are not in them) plus the whole process, next to `ipvsadm -R` of
// the same rules into another fresh namespace (the yardstick of the same boot). Goals (exit 1
// when missed): the full sync's whole process within 1.5× ipvsadm -R; an unchanged restart
// clearly cheaper than a full sync (at most 0.8× its whole process); the start on an empty tree
// (the packaged binary that bench/kernel.sh builds and names in CLUSTERF_PACKAGED; the source
// without it) within half the start of the code when the scale issue was filed (CLUSTERF_THEN,
// checked out by bench/kernel.sh), timed in the same boot; within 300 ms without that yardstick.
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { RACY_MS } from "../src/config/tree-cache.ts";

const ROOT = join(import.meta.dir, "..");
const N = Number(process.env.BENCH_DAEMON_SERVICES ?? 1000);
const D = 10;
const sh = (cmd: string) => {
  const t0 = performance.now();
  const p = Bun.spawnSync(["bash", "-c", cmd], { stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`${cmd}: ${p.stderr}`);
  return { ms: performance.now() - t0, out: p.stdout.toString(), err: p.stderr.toString() };
};

const dir = mkdtempSync("/run/clusterf-bench-"); // the guest's tmpfs
const vip = (s: number) => `203.0.${113 + (s >> 8)}.${s & 255}`;
const rip = (s: number) => `198.51.${100 + (s >> 8)}.${s & 255}`;
const backend = (s: number, b: number, w: number) => JSON.stringify({ ipv4: rip(s), tcp: 8000 + b, weight: w });
const rules: string[] = [];
for (let s = 0; s < N; s++) {
  mkdirSync(join(dir, `services/s${s}/backends`), { recursive: true });
  writeFileSync(join(dir, `services/s${s}/frontend`), JSON.stringify({ ipv4: vip(s), tcp: 80 }));
  rules.push(`-A -t ${vip(s)}:80 -s wlc`);
  for (let b = 0; b < D; b++) {
    writeFileSync(join(dir, `services/s${s}/backends/b${b}`), backend(s, b, 10));
    rules.push(`-a -t ${vip(s)}:80 -r ${rip(s)}:${8000 + b} -m -w 10`);
  }
}
writeFileSync(`${dir}.rules`, rules.join("\n") + "\n");
// A tree written long enough before the first start, as an operator's is: files changed within
// RACY_MS of a read are read again at the next start whatever their stat (src/config/tree-cache.ts).
await Bun.sleep(RACY_MS);
// The packaged binary (CLUSTERF_PACKAGED, built by bench/kernel.sh) is what operators run; the
// source (bin/clusterf-ipvs) when it is not given.
const packaged = process.env.CLUSTERF_PACKAGED;
const daemon = packaged ? `${packaged} ipvs` : `${ROOT}/bin/clusterf-ipvs`;
const run = (ns: string, label: string) => {
  const r = sh(`ip netns exec ${ns} ${daemon} -once -etcd-machines= -config-path=${dir} -state-dir=${dir}.state-${ns}`);
  const m = /IPVS: applied kind=full writes=(\d+) errors=(\d+) ms=([\d.]+)/.exec(r.err);
  if (!m) throw new Error(`${label}: no apply line:\n${r.err}`);
  // Files the start did not read: unchanged since the -config-path cache in -state-dir was made.
  const unchanged = Number(/config-path: read .*unchanged=(\d+)/.exec(r.err)?.[1] ?? 0);
  return { label, writes: Number(m[1]), applyMs: Number(m[3]), processMs: r.ms, unchanged };
};
type Row = ReturnType<typeof run>;
// Rounds, each in fresh network namespaces (deleted destinations linger in a namespace's trash
// list and slow later adds there); the medians are reported: one run moves by ±15% here.
const ROUNDS = Number(process.env.BENCH_DAEMON_ROUNDS ?? 3);
const rounds: { rows: Row[]; listMs: number; restoreMs: number }[] = [];
for (let i = 0; i < ROUNDS; i++) {
  const ns = `cf-bench-${process.pid}-${i}`;
  sh(`ip netns add ${ns} && ip -n ${ns} link set lo up`);
  const rows = [run(ns, `full sync, ${N} × ${D}, empty table`), run(ns, "restart, unchanged config")];
  writeFileSync(join(dir, "services/s7/backends/b3"), backend(7, 3, 0));
  rows.push(run(ns, "restart, one backend drained"));
  writeFileSync(join(dir, "services/s7/backends/b3"), backend(7, 3, 10));
  const listMs = sh(`ip netns exec ${ns} ipvsadm -Ln > /dev/null`).ms;
  sh(`ip netns del ${ns}`);
  // The yardstick: the same rules restored by ipvsadm into a fresh namespace.
  const ns2 = `${ns}-r`;
  sh(`ip netns add ${ns2} && ip -n ${ns2} link set lo up`);
  const restoreMs = sh(`ip netns exec ${ns2} ipvsadm -R < ${dir}.rules`).ms;
  sh(`ip netns del ${ns2}`);
  rounds.push({ rows, listMs, restoreMs });
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

// Start-up: -once on an empty tree, file-only, the in-memory table; next to Bun running nothing.
const emptyDir = `${dir}.empty`;
mkdirSync(emptyDir);
// CLUSTERF_THEN: the code when the scale issue was filed (bench/kernel.sh checks it out).
const then = process.env.CLUSTERF_THEN;
const starts: { label: string; cmd: string }[] = [
  { label: "`bun -e 0` (the runtime alone)", cmd: `${process.execPath} -e 0` },
  ...(then ? [{ label: `the source when the issue was filed (${process.env.CLUSTERF_THEN_COMMIT})`, cmd: `${then}/bin/clusterf-ipvs -once -ipvs-mock -etcd-machines= -config-path=${emptyDir}` }] : []),
  { label: "bin/clusterf-ipvs (the source)", cmd: `${ROOT}/bin/clusterf-ipvs -once -ipvs-mock -etcd-machines= -config-path=${emptyDir}` },
  ...(packaged ? [{ label: "the packaged binary", cmd: `${packaged} ipvs -once -ipvs-mock -etcd-machines= -config-path=${emptyDir}` }] : []),
];
// Interleaved, so that the guest's drift falls on all alike; 9 of each.
const START_RUNS = 9;
const startSamples: number[][] = starts.map(() => []);
for (let i = 0; i < START_RUNS; i++) starts.forEach((x, j) => startSamples[j]!.push(sh(x.cmd).ms));
const startMs = startSamples.map(median);
/**
 * The goal: half the time the code took when it was filed, in this boot (this guest's
 * speed moves by a quarter from one boot to the next: `bun -e 0` 148-223 ms); without that
 * yardstick, half the 0.6 s measured then. (The original Go clusterf: 0.05 s.)
 */
const START_GOAL_MS = then ? 0.5 * startMs[starts.findIndex((x) => x.cmd.startsWith(then))]! : 300;
const startGoalText = then ? `half the source's when the issue was filed, ${START_GOAL_MS.toFixed(0)} ms` : `${START_GOAL_MS} ms`;
const rows: Row[] = rounds[0]!.rows.map((r, j) => ({
  label: r.label,
  writes: Math.max(...rounds.map((x) => x.rows[j]!.writes)),
  applyMs: median(rounds.map((x) => x.rows[j]!.applyMs)),
  unchanged: median(rounds.map((x) => x.rows[j]!.unchanged)),
  processMs: median(rounds.map((x) => x.rows[j]!.processMs)),
}));
const list = { ms: median(rounds.map((x) => x.listMs)) };
const restore = { ms: median(rounds.map((x) => x.restoreMs)) };
// Each round's own ratio of the unchanged restart to the full sync, to show the spread.
const restartRatios = rounds.map((x) => (x.rows[1]!.processMs / x.rows[0]!.processMs).toFixed(2));

const ratio = (ms: number) => (ms / restore.ms).toFixed(2);
console.log(`${packaged ? "the packaged binary" : "bin/clusterf-ipvs (the source)"}; medians of ${ROUNDS} rounds; the unchanged restart / full sync of each round: ${restartRatios.join(", ")}`);
console.log("| clusterf-ipvs -once | files not read (cache) | writes | apply | whole process | ratio to ipvsadm -R |");
console.log("|---|---|---|---|---|---|");
for (const r of rows) console.log(`| ${r.label} | ${r.unchanged} | ${r.writes} | ${r.applyMs.toFixed(0)} ms | ${r.processMs.toFixed(0)} ms | ${ratio(r.processMs)} |`);
console.log(`| yardstick: \`ipvsadm -R\` of the same rules, fresh namespace | | ${rules.length} | | ${restore.ms.toFixed(0)} ms | 1.00 |`);
console.log(`| one \`ipvsadm -Ln\` of the same table | | 0 | | ${list.ms.toFixed(0)} ms | ${ratio(list.ms)} |`);
console.log("");
console.log(`| start-up on an empty tree, -once, file-only, in-memory table (median of ${START_RUNS}) | whole process |`);
console.log("|---|---|");
starts.forEach((x, i) => console.log(`| ${x.label} | ${startMs[i]!.toFixed(0)} ms |`));
console.log(`the packaged binary's goal: ${startGoalText}`);
const misses: string[] = [];
const startShipped = startMs[startMs.length - 1]!;
if (startShipped > START_GOAL_MS) misses.push(`start-up on an empty tree (${starts[starts.length - 1]!.label}) ${startShipped.toFixed(0)} ms > ${startGoalText}`);
if (rows[0]!.processMs > 1.5 * restore.ms) misses.push(`full sync ${rows[0]!.processMs.toFixed(0)} ms > 1.5 × ipvsadm -R ${restore.ms.toFixed(0)} ms`);
if (rows[1]!.processMs > 0.8 * rows[0]!.processMs) misses.push(`unchanged restart ${rows[1]!.processMs.toFixed(0)} ms > 0.8 × full sync ${rows[0]!.processMs.toFixed(0)} ms`);
if (rounds.some((x) => x.rows[1]!.writes !== 0 || x.rows[2]!.writes !== 1)) misses.push(`writes: restart ${rounds.map((x) => x.rows[1]!.writes)} (0 expected), one drained ${rounds.map((x) => x.rows[2]!.writes)} (1 expected)`);
if (misses.length) {
  console.log(`goals missed:\n  ${misses.join("\n  ")}`);
  process.exit(1);
}
