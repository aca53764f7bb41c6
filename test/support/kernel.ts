// Shared pieces of the kernel tests (run inside the user-mode kernel): shell calls, network
// namespaces (each has its own IPVS table), config trees on the guest's tmpfs, and the IPVS table
// as ipvsadm shows it. Every test file gets its own scratch dir and cleans its namespaces up.
import { afterAll } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { tableLines } from "./proc.ts";

export function sh(cmd: string): { code: number; out: string; err: string } {
  const p = Bun.spawnSync(["bash", "-c", cmd], { stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode ?? -1, out: p.stdout.toString(), err: p.stderr.toString() };
}

export function must(cmd: string): string {
  const r = sh(cmd);
  if (r.code !== 0) throw new Error(`${cmd}: exit ${r.code}: ${r.err}`);
  return r.out;
}

export function writeTree(root: string, files: Record<string, unknown>): string {
  for (const [path, value] of Object.entries(files)) {
    const file = join(root, path);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, typeof value === "string" ? value : JSON.stringify(value));
  }
  return root;
}

/** Polls `pred` every 100 ms; throws with `what()` after `timeoutMs`. */
export async function until(pred: () => boolean, timeoutMs: number, what: () => string): Promise<void> {
  const t0 = Date.now();
  while (!pred()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out: ${what()}`);
    await Bun.sleep(100);
  }
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
