// Health checks at scale: 10,000 TCP destinations (100 loopback addresses 127.77.0.1…100 × 100
// listening ports each, served by a child process) checked every 2 s by one Checker. Reports the
// checker's CPU, the event loop's worst lateness, checks per second and failures, next to a
// same-run yardstick: the raw cost of 10,000 bare connects (node:net connect + destroy, the same
// concurrency) against the same listeners. Exits non-zero when a goal is missed.
//
//   bun bench/health.ts [seconds]      (default 20 s measured, after one warm-up round)

import * as net from "node:net";
import { parseCheck, type CheckSpec } from "../src/health/check-config.ts";
import { Checker, DEFAULT_CONCURRENCY, type TargetInput } from "../src/health/checker.ts";
import { configureLog } from "../src/util/log.ts";

const ADDRESSES = 100;
const PORTS = 100;
const INTERVAL_MS = 2000;

if (process.argv[2] === "--servers") {
  // The child: 100 × 100 listeners that accept and let the peer close.
  const out: { address: string; port: number }[] = [];
  for (let a = 1; a <= ADDRESSES; a++) {
    const address = `127.77.0.${a}`;
    for (let p = 0; p < PORTS; p++) {
      const s = Bun.listen({ hostname: address, port: 0, socket: { data() {}, error() {} } });
      out.push({ address, port: s.port });
    }
  }
  process.stdout.write(JSON.stringify(out) + "\n");
  await new Promise(() => {}); // until killed
}

const measureSeconds = Number(process.argv[2] ?? 20);
configureLog({ level: "error" });
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

const child = Bun.spawn([process.execPath, import.meta.path, "--servers"], { stdout: "pipe", stderr: "inherit" });
let text = "";
const reader = child.stdout.getReader();
while (!text.includes("\n")) text += new TextDecoder().decode((await reader.read()).value);
const dests: { address: string; port: number }[] = JSON.parse(text);

/** The yardstick: each destination connected once, as fast as the concurrency allows. */
async function bareConnects(): Promise<{ ms: number; cpu: number; failed: number }> {
  const c0 = cpuMs();
  const t0 = performance.now();
  let next = 0;
  let failed = 0;
  const one = (d: { address: string; port: number }) =>
    new Promise<void>((resolve) => {
      const s = net.connect({ host: d.address, port: d.port });
      s.once("connect", () => (s.destroy(), resolve()));
      s.once("error", () => (failed++, s.destroy(), resolve()));
    });
  await Promise.all(Array.from({ length: DEFAULT_CONCURRENCY }, async () => {
    while (next < dests.length) await one(dests[next++]!);
  }));
  return { ms: performance.now() - t0, cpu: cpuMs() - c0, failed };
}

/** The worst lateness of a 10 ms timer while `during` runs for `ms`. */
async function lateness(ms: number, during: (ms: number) => Promise<void>): Promise<number> {
  let maxLate = 0;
  const start = performance.now();
  let due = start + 10;
  const lag = setInterval(() => {
    const now = performance.now();
    maxLate = Math.max(maxLate, now - due);
    if (process.env.BENCH_DEBUG && now - due > 50) console.error(`late ${(now - due).toFixed(0)} ms at ${((now - start) / 1000).toFixed(2)} s`);
    due = now + 10;
  }, 10);
  await during(ms);
  clearInterval(lag);
  return maxLate;
}

const misses: string[] = [];
try {
  await bareConnects(); // warm up (JIT, connection tables)
  const yard = await bareConnects();
  Bun.gc(true); // the yardstick's garbage is not the checker's: collect it before measuring
  // the machine's own noise: the same lateness probe with nothing else running in this process
  const idleLate = await lateness(5000, (ms) => Bun.sleep(ms));

  const spec = parseCheck({ type: "tcp", interval: `${INTERVAL_MS}ms`, timeout: "1s" }).value as CheckSpec;
  const checker = new Checker();
  let checks = 0;
  let failed = 0;
  const reasons = new Map<string, number>();
  checker.listen({
    result: (_t, r) => {
      checks++;
      if (!r.ok) {
        failed++;
        reasons.set(r.reason, (reasons.get(r.reason) ?? 0) + 1);
      }
    },
  });
  const targets: TargetInput[] = dests.map((d, i) => ({ address: d.address, destPort: d.port, spec, users: [{ service: `s${i % 100}`, backend: `b${i}` }] }));
  const t0 = performance.now();
  checker.setTargets(targets);
  const setMs = performance.now() - t0;
  await Bun.sleep(INTERVAL_MS + 500); // one full round first

  let c0 = 0;
  let n0 = 0;
  let f0 = 0;
  let elapsed = 0;
  let cpu = 0;
  const maxLate = await lateness(measureSeconds * 1000, async (ms) => {
    c0 = cpuMs();
    n0 = checks;
    f0 = failed;
    const m0 = performance.now();
    await Bun.sleep(ms);
    elapsed = (performance.now() - m0) / 1000;
    cpu = cpuMs() - c0;
  });
  const perSecond = (checks - n0) / elapsed;
  const cpuPerRound = (cpu / elapsed) * (INTERVAL_MS / 1000);
  const fails = failed - f0;
  await checker.stop();

  const f0f = (n: number) => n.toFixed(0);
  const want = dests.length / (INTERVAL_MS / 1000);
  // Goals: every destination checked every interval (the period is 0.95–1 × interval, so at
  // least the nominal rate); the event loop never late by 100 ms or more (docs/config.md §4);
  // a round of checks costs at most twice the CPU of the bare connects it makes; no false failure.
  if (perSecond < want * 0.98) misses.push(`checks per second ${f0f(perSecond)} < ${f0f(want * 0.98)}`);
  if (maxLate >= 100) misses.push(`event loop late by ${f0f(maxLate)} ms`);
  if (cpuPerRound > 2 * yard.cpu) misses.push(`CPU per round ${f0f(cpuPerRound)} ms > 2 × bare connects ${f0f(yard.cpu)} ms`);
  if (fails > 0 || yard.failed > 0) misses.push(`failed checks on live listeners: ${fails} (${[...reasons].map(([r, n]) => `${r}: ${n}`).join(", ")}), bare connects failed: ${yard.failed}`);

  console.log(`${dests.length} TCP destinations (${ADDRESSES} loopback addresses × ${PORTS} ports), interval ${INTERVAL_MS / 1000} s, concurrency ${DEFAULT_CONCURRENCY}, ${measureSeconds} s measured`);
  console.log("");
  console.log("| measure | health checker | yardstick (same run) | goal |");
  console.log("|---|---|---|---|");
  console.log(`| CPU per round of ${dests.length} checks | ${f0f(cpuPerRound)} ms (${((cpu / elapsed / 1000) * 100).toFixed(1)}% of one CPU) | ${f0f(yard.cpu)} ms for ${dests.length} bare connects (${f0f(yard.ms)} ms wall) | ≤ 2 × yardstick |`);
  console.log(`| checks per second | ${f0f(perSecond)} | ${f0f(dests.length / (yard.ms / 1000))} bare connects per second, flat out | ≥ ${f0f(want * 0.98)} (${dests.length} per ${INTERVAL_MS / 1000} s) |`);
  console.log(`| event loop: worst lateness of a 10 ms timer | ${f0f(maxLate)} ms | ${f0f(idleLate)} ms with no checks (${5} s) | < 100 ms |`);
  console.log(`| failed checks (all listeners up) | ${fails} | ${yard.failed} | 0 |`);
  console.log(`| setTargets(${dests.length}) | ${f0f(setMs)} ms | — | — |`);
} finally {
  child.kill();
}
if (misses.length) {
  console.log(`goals missed:\n  ${misses.join("\n  ")}`);
  process.exit(1);
}
