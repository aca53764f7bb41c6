// Core benchmark: full compute and incremental apply of the desired table against the in-memory
// IPVS table, for 1k and 10k services × 10 backends. Each size runs in its own process so that
// its peak memory is its own. Run: npm run bench
import { IpvsDaemon } from "../src/daemon/ipvs-daemon.ts";
import { MemoryIpvsTable } from "../src/ipvs/memory-table.ts";
import { DEFAULT_DESIRED_OPTIONS } from "../src/model/desired.ts";
import { configureLog } from "../src/util/log.ts";
import type { RawValue } from "../src/config/source.ts";

const BACKENDS = 10;

function config(services: number): Map<string, RawValue> {
  const m = new Map<string, RawValue>();
  const v = (o: unknown): RawValue => ({ text: JSON.stringify(o), format: "json", origin: "bench" });
  for (let s = 0; s < services; s++) {
    const vip = `10.${(s >> 8) & 255}.${s & 255}.1`;
    m.set(`services/s${s}/frontend`, v({ ipv4: vip, tcp: 80 }));
    for (let b = 0; b < BACKENDS; b++) {
      m.set(`services/s${s}/backends/b${b}`, v({ ipv4: `172.${16 + ((s >> 8) & 15)}.${s & 255}.${b + 1}`, tcp: 8080, weight: 10 }));
    }
  }
  m.set("routes/r1", v({ Prefix4: "172.16.0.0/12", IpvsMethod: "masq" }));
  m.set("routes/r2", v({ Prefix4: "172.31.0.0/16", Gateway4: "192.0.2.1", IpvsMethod: "droute" }));
  return m;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function runOne(services: number) {
  configureLog({ level: "error" });
  const entries = config(services);
  const ipvs = new MemoryIpvsTable();
  const daemon = new IpvsDaemon(ipvs, [], { desired: DEFAULT_DESIRED_OPTIONS, filterEtcdRoutes: false, flush: false, noop: false, resyncMs: 0 });
  const t0 = performance.now();
  daemon.snapshot("etcd", entries);
  const first = daemon.apply();
  const fullMs = performance.now() - t0;
  // Incremental: one backend's weight changes; event in → operations out.
  const times: number[] = [];
  let writes = 0;
  for (let i = 0; i < 200; i++) {
    const s = (i * 7919) % services;
    const key = `services/s${s}/backends/b${i % BACKENDS}`;
    const t = performance.now();
    daemon.update("etcd", [{ key, value: { text: JSON.stringify({ ipv4: `172.${16 + ((s >> 8) & 15)}.${s & 255}.${(i % BACKENDS) + 1}`, tcp: 8080, weight: 11 + i }), format: "json", origin: "bench" } }]);
    const r = daemon.apply();
    times.push(performance.now() - t);
    writes += r.ops;
  }
  const rss = process.resourceUsage().maxRSS / 1024;
  console.log(JSON.stringify({ services, backends: services * BACKENDS, fullMs, fullWrites: first.ops, incMedianMs: median(times), incP99Ms: [...times].sort((a, b) => a - b)[Math.floor(times.length * 0.99)], incWritesPerChange: writes / times.length, peakRssMiB: rss }));
  process.exit(0);
}

if (process.argv[2] === "--one") {
  runOne(Number(process.argv[3]));
} else {
  const rows = [];
  for (const n of [1000, 10000]) {
    const p = Bun.spawnSync([process.execPath, import.meta.path, "--one", String(n)], { stderr: "inherit" });
    rows.push(JSON.parse(p.stdout.toString().trim().split("\n").pop()!));
  }
  console.log("| services × backends | full compute + apply | writes | incremental apply (median) | p99 | writes per change | peak RSS |");
  console.log("|---|---|---|---|---|---|---|");
  for (const r of rows) {
    console.log(`| ${r.services} × ${BACKENDS} | ${r.fullMs.toFixed(0)} ms | ${r.fullWrites} | ${r.incMedianMs.toFixed(3)} ms | ${r.incP99Ms.toFixed(3)} ms | ${r.incWritesPerChange} | ${r.peakRssMiB.toFixed(0)} MiB |`);
  }
}
