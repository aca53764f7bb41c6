// Pieces the benchmarks share: the generated config tree, /proc readings and an event-loop lag meter.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

export const BACKENDS = 10;

/** Service s's frontend: 250 VIPs × as many ports as needed. */
export const frontend = (s: number) => ({ ipv4: `192.0.2.${1 + (s % 250)}`, tcp: 1 + Math.floor(s / 250) });
/** Backend b of service s: its own port per service. */
export const backend = (s: number, b: number) => ({ ipv4: `198.51.100.${1 + b}`, tcp: 1000 + (s % 60000), weight: 1 + (b % 5) });

/** A valid tree under `root` (emptied first): services/sN/frontend.json and backends/bM.json. */
export function makeTree(root: string, services: number, backends = BACKENDS): void {
  fs.rmSync(root, { recursive: true, force: true });
  for (let s = 0; s < services; s++) {
    const d = path.join(root, "services", `s${s}`);
    fs.mkdirSync(path.join(d, "backends"), { recursive: true });
    fs.writeFileSync(path.join(d, "frontend.json"), JSON.stringify(frontend(s)));
    for (let b = 0; b < backends; b++) fs.writeFileSync(path.join(d, "backends", `b${b}.json`), JSON.stringify(backend(s, b)));
  }
}

/** A field of /proc/PID/status in MiB (VmRSS, VmHWM); NaN when absent. */
export function procStatusMiB(field: string, pid: number | "self" = "self"): number {
  const m = fs.readFileSync(`/proc/${pid}/status`, "utf8").match(new RegExp(`^${field}:\\s+(\\d+) kB`, "m"));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** A 5 ms timer's longest lateness from now until stop(): how long the event loop was held. */
export function lagMeter(): { stop(): number } {
  let maxLag = 0;
  let last = performance.now();
  const t = setInterval(() => {
    const now = performance.now();
    maxLag = Math.max(maxLag, now - last - 5);
    last = now;
  }, 5);
  return {
    stop() {
      clearInterval(t);
      return maxLag;
    },
  };
}

/** The machine a bench ran on, for its first line: CPUs and the load average at start. */
export function machineLine(): string {
  return `${os.cpus().length} CPUs, load average ${os.loadavg().map((l) => l.toFixed(2)).join(" ")} at start`;
}

/**
 * Bulk load of `kvs` (keys relative to `prefix`) through etcd's v3 JSON gateway at `url`: 128 puts
 * per txn (etcd's default limit), 8 in flight. With `clear`, every key is deleted first.
 */
export async function loadEtcd(url: string, prefix: string, kvs: Iterable<[string, string]>, clear = false): Promise<void> {
  const b64 = (s: string) => Buffer.from(s).toString("base64");
  if (clear) await fetch(`${url}/v3/kv/deleterange`, { method: "POST", body: JSON.stringify({ key: b64("\0"), range_end: b64("\0") }) });
  const batches: { key: string; value: string }[][] = [[]];
  for (const [key, value] of kvs) {
    if (batches.at(-1)!.length === 128) batches.push([]);
    batches.at(-1)!.push({ key: b64(`${prefix}/${key}`), value: b64(value) });
  }
  let next = 0;
  const worker = async () => {
    while (next < batches.length) {
      const batch = batches[next++]!;
      const r = await fetch(`${url}/v3/kv/txn`, { method: "POST", body: JSON.stringify({ success: batch.map((p) => ({ request_put: p })) }) });
      if (!r.ok) throw new Error(`etcd txn: HTTP ${r.status} ${await r.text()}`);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
}

