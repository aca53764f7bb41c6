// Shared pieces of the kernel tests (run inside the user-mode kernel): shell calls, network
// namespaces (each has its own IPVS table), config trees on the guest's tmpfs, and the IPVS table
// as ipvsadm shows it. Every test file gets its own scratch dir and cleans its namespaces up.
import { afterAll } from "bun:test";
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { tableLines } from "./proc.ts";
import { until } from "./until.ts";

export function sh(cmd: string): { code: number; out: string; err: string } {
  const p = Bun.spawnSync(["bash", "-c", cmd], { stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode ?? -1, out: p.stdout.toString(), err: p.stderr.toString() };
}

export function must(cmd: string): string {
  const r = sh(cmd);
  if (r.code !== 0) throw new Error(`${cmd}: exit ${r.code}: ${r.err}`);
  return r.out;
}

/**
 * Writes config files (objects as JSON). `atomic`: each file is written aside under a hidden name
 * (which the daemon ignores) and renamed over, so that a watcher never reads a half-written file.
 */
export function writeTree(root: string, files: Record<string, unknown>, atomic = false): string {
  for (const [path, value] of Object.entries(files)) {
    const file = join(root, path);
    mkdirSync(dirname(file), { recursive: true });
    const text = typeof value === "string" ? value : JSON.stringify(value);
    if (!atomic) {
      writeFileSync(file, text);
      continue;
    }
    const aside = join(dirname(file), `.${basename(file)}.tmp`);
    writeFileSync(aside, text);
    renameSync(aside, file);
  }
  return root;
}

/** The table as blocks (a service line and its destination lines), sorted: ipvsadm lists in hash order. */
export function blocks(lines: string[]): string[] {
  const out: string[] = [];
  for (const l of lines) {
    if (l.startsWith("->")) out[out.length - 1] += "\n" + l;
    else out.push(l);
  }
  return out.map((b) => { const [s, ...d] = b.split("\n"); return [s, ...d.sort()].join("\n"); }).sort();
}

export const kernelTable = (ns: string) => blocks(tableLines(must(`ip netns exec ${ns} ipvsadm -Ln`)));

/**
 * One kernel test file's scratch space: `tmp` on the guest's tmpfs (inotify does not report
 * changes on hostfs), namespaces and child processes killed and removed after the file's tests.
 */
export function kernelScratch(tag: string) {
  const tmp = mkdtempSync(`/run/clusterf-${tag}-`);
  const namespaces: string[] = [];
  const children: { kill(sig?: number | string): void }[] = [];
  afterAll(() => {
    for (const c of children) c.kill("SIGKILL");
    for (const n of namespaces) sh(`ip netns pids ${n} | xargs -r kill -9; ip netns del ${n}`);
    rmSync(tmp, { recursive: true, force: true });
  });
  return {
    tmp,
    children,
    /** A new network namespace with lo up, removed after the file's tests. */
    netns(name: string): string {
      must(`ip netns add ${name} && ip -n ${name} link set lo up`);
      namespaces.push(name);
      return name;
    },
  };
}

/**
 * One sample of the /metrics that a daemon serves on 127.0.0.1:`port` inside namespace `ns`
 * (undefined while it does not answer yet, or has no such sample).
 */
export function scrape(ns: string, port: number, sample: string): number | undefined {
  const line = sh(`ip netns exec ${ns} curl -s http://127.0.0.1:${port}/metrics`)
    .out.split("\n")
    .find((l) => l.startsWith(sample + " "));
  return line === undefined ? undefined : Number(line.split(" ").pop());
}

/**
 * Makes hand edits (`cmd`) in the kernel just after one of the daemon's resyncs (periodic or a
 * retry), waits for the next one, and returns the kernel's table as that single resync left it,
 * with the drift corrections it counted. A resync could see the edits half made, or a second one
 * could run before the table is read: then the attempt does not count, and once the table is
 * back to `corrected` the edits are made again (six attempts at most: with periodic resyncs every
 * 3 s and the retries of a refused service between them, an attempt failed about one time in
 * four in the user-mode kernel, and two in a row were seen).
 */
export async function afterOneResync(ns: string, port: number, cmd: string, corrected: string[], timeoutMs: number): Promise<{ table: string[]; drift: number }> {
  const resyncs = () => scrape(ns, port, 'clusterf_ipvs_sync_duration_seconds_count{kind="resync"}') ?? 0;
  const drift = () => scrape(ns, port, "clusterf_ipvs_drift_corrections_total") ?? 0;
  for (let attempt = 1; ; attempt++) {
    const r0 = resyncs();
    await until(() => resyncs() > r0, timeoutMs, () => `a resync (count ${r0})`, 100);
    const r1 = resyncs();
    const d1 = drift();
    must(cmd);
    await Bun.sleep(300); // a resync that began while the edits landed has ended by now
    if (resyncs() === r1) {
      await until(() => resyncs() > r1, timeoutMs, () => `the resync after the edits (count ${r1})`, 100);
      const table = kernelTable(ns);
      const d2 = drift();
      if (resyncs() === r1 + 1) return { table, drift: d2 - d1 };
    }
    if (attempt === 6) throw new Error("six times another resync came too close to the edits: cannot tell one resync from two");
    console.log(`attempt ${attempt}: another resync came too close to the hand edits; again`);
    await until(() => kernelTable(ns).join("\n") === corrected.join("\n"), timeoutMs, () => `the table corrected before another attempt:\n${kernelTable(ns).join("\n")}`, 100);
  }
}

/**
 * A veth pair from the load balancer's namespace `lb` into `ns` (its end is `eth0`): `peerAddr` in
 * `ns`, `lbAddr` on the lb side, and `ns`'s default route through the lb.
 */
export function linkToLb(lb: string, ns: string, peerAddr: string, lbAddr: string, prefix: number): void {
  must(
    [
      `ip link add v-${ns} netns ${lb} type veth peer name eth0 netns ${ns}`,
      `ip -n ${lb} addr add ${lbAddr}/${prefix} dev v-${ns}`,
      `ip -n ${lb} link set v-${ns} up`,
      `ip -n ${ns} addr add ${peerAddr}/${prefix} dev eth0`,
      `ip -n ${ns} link set eth0 up`,
      `ip -n ${ns} route add default via ${lbAddr}`,
    ].join(" && "),
  );
}

/** `n` HTTP requests from namespace `client` to `url`, one answer (or FAIL) a line. */
export const curlFrom = (client: string, url: string, n: number): string[] =>
  must(`for i in $(seq ${n}); do ip netns exec ${client} curl --noproxy '*' -s -m 2 ${url} || echo FAIL; done`).trim().split("\n");

/** How many answers came from the backend `who` (the test servers answer "hello from NAME"). */
export const answersFrom = (lines: string[], who: string): number => lines.filter((l) => l === `hello from ${who}`).length;

