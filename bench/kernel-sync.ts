// Kernel sync throughput: our netlink driver vs `ipvsadm -R`, each programming the same full
// table (N services x D dests) into an empty, fresh network namespace. Runs inside the user-mode
// kernel: `bash bench/kernel.sh` (one boot). Without arguments it runs every round and prints a
// table; `program N D MODE` and `gen N D` are its helpers (run inside a namespace).
import { openKernelIpvs } from "../src/ipvs/netlink/kernel-table.ts";
import type { Dest, FwdMethod, Op, Service } from "../src/ipvs/types.ts";
import { writeFileSync } from "node:fs";

const BUN = process.execPath;
const SELF = import.meta.path;

function table(n: number, d: number): { svc: Service; dests: Dest[] }[] {
  const out: { svc: Service; dests: Dest[] }[] = [];
  const methods: FwdMethod[] = ["masq", "droute", "tunnel"];
  for (let i = 0; i < n; i++) {
    const v6 = i % 4 === 3;
    const svc: Service = {
      family: v6 ? "inet6" : "inet",
      protocol: i % 2 ? "udp" : "tcp",
      address: v6 ? `2001:db8:10::${i.toString(16)}` : `203.0.113.${i % 250}`,
      port: 1000 + i,
      scheduler: "wlc",
      flags: i % 5 === 0 ? 1 : 0,
      timeout: i % 5 === 0 ? 300 : 0,
      netmask: v6 ? 128 : 32,
    };
    const dests: Dest[] = [];
    for (let j = 0; j < d; j++) {
      dests.push({
        address: v6 ? `2001:db8:20::${i.toString(16)}:${j + 1}` : `198.51.100.${j + 1}`,
        port: 8000 + (i % 1000),
        method: methods[(i + j) % 3]!,
        weight: 1 + j,
        upperThreshold: 0,
        lowerThreshold: 0,
      });
    }
    out.push({ svc, dests });
  }
  return out;
}

const hp = (a: string, p: number) => (a.includes(":") ? `[${a}]:${p}` : `${a}:${p}`);
const METHOD_FLAG: Record<string, string> = { masq: "-m", droute: "-g", tunnel: "-i" };

/** The table in `ipvsadm -S` format. */
function ipvsadmSave(n: number, d: number): string {
  const lines: string[] = [];
  for (const { svc, dests } of table(n, d)) {
    const p = svc.protocol === "tcp" ? "-t" : "-u";
    const s = hp(svc.address, svc.port);
    lines.push(`-A ${p} ${s} -s ${svc.scheduler}${svc.flags & 1 ? ` -p ${svc.timeout}` : ""}`);
    for (const dst of dests) lines.push(`-a ${p} ${s} -r ${hp(dst.address, dst.port)} ${METHOD_FLAG[dst.method]} -w ${dst.weight}`);
  }
  return lines.join("\n") + "\n";
}

/** Programs the table with the driver; prints {ms, listMs, services, dests} as JSON. */
function program(n: number, d: number, mode: string): void {
  const rows = table(n, d);
  const batch = mode.startsWith("batch") ? Number(mode.slice(5)) || 64 : 0;
  const t = openKernelIpvs({ batchSize: batch || 1 });
  let ops: Op[] = [];
  if (batch) {
    for (const { svc, dests } of rows) {
      ops.push({ type: "add-service", service: svc });
      for (const dst of dests) ops.push({ type: "add-dest", service: svc, dest: dst });
    }
  }
  const t0 = performance.now();
  if (batch) {
    const errs = t.applyBatch(ops).filter((e) => e !== null);
    if (errs.length) throw errs[0];
  } else {
    for (const { svc, dests } of rows) {
      t.addService(svc);
      for (const dst of dests) t.addDest(svc, dst);
    }
  }
  const ms = performance.now() - t0;
  const t1 = performance.now();
  const list = t.list();
  const listMs = performance.now() - t1;
  t.close();
  ops = [];
  console.log(JSON.stringify({ ms, listMs, services: list.length, dests: list.reduce((a, s) => a + s.dests.length, 0) }));
}

function run(cmd: string[], stdin?: string): { out: string; ms: number } {
  const t0 = performance.now();
  const r = Bun.spawnSync(cmd, { stdin: stdin ? Bun.file(stdin) : "ignore", stderr: "pipe" });
  const ms = performance.now() - t0;
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: exit ${r.exitCode}: ${r.stderr.toString()}`);
  return { out: r.stdout.toString(), ms };
}

let nsCount = 0;
function freshNs(): string {
  const name = `bench${++nsCount}`;
  run(["ip", "netns", "add", name]);
  // lo up, as in any live namespace: without a local table the kernel takes every IPv4 dest
  // address for a broadcast one and refuses it (EINVAL)
  run(["ip", "-n", name, "link", "set", "lo", "up"]);
  return name;
}

function count(ns: string): [number, number] {
  const out = run(["ip", "netns", "exec", ns, "ipvsadm", "-Ln"]).out;
  return [(out.match(/^(TCP|UDP|SCTP) /gm) ?? []).length, (out.match(/^ +-> \S+ +\w/gm) ?? []).length - 1];
}

function main(): void {
  const D = 10;
  const sizes = (process.env.BENCH_SIZES ?? "200,1000").split(",").map(Number);
  const modes = ["single", "batch16", "batch64", "batch256"];
  // warm up: scheduler modules, page cache of bun and ipvsadm
  {
    const ns = freshNs();
    run(["ip", "netns", "exec", ns, BUN, SELF, "program", "10", "2", "single"]);
    writeFileSync("/tmp/ipvs-bench-warm.txt", ipvsadmSave(10, 2));
    run(["ip", "netns", "exec", freshNs(), "ipvsadm", "-R"], "/tmp/ipvs-bench-warm.txt");
  }
  const repeat = Math.max(1, Number(process.env.BENCH_REPEAT ?? 3));
  const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const rows: string[][] = [];
  for (const n of sizes) {
    const file = `/tmp/ipvs-bench-${n}.txt`;
    writeFileSync(file, ipvsadmSave(n, D));
    const ipTimes: number[] = [];
    for (let k = 0; k < repeat; k++) {
      const ns0 = freshNs();
      ipTimes.push(run(["ip", "netns", "exec", ns0, "ipvsadm", "-R"], file).ms);
      const [s0, d0] = count(ns0);
      if (s0 !== n || d0 !== n * D) throw new Error(`ipvsadm -R: ${s0} services, ${d0} dests`);
    }
    const ip = median(ipTimes);
    for (const mode of modes) {
      const ms: number[] = [];
      const wall: number[] = [];
      const list: number[] = [];
      for (let k = 0; k < repeat; k++) {
        const ns = freshNs();
        const r = run(["ip", "netns", "exec", ns, BUN, SELF, "program", String(n), String(D), mode]);
        const res = JSON.parse(r.out.trim().split("\n").pop()!) as { ms: number; listMs: number; services: number; dests: number };
        if (res.services !== n || res.dests !== n * D) throw new Error(`driver ${mode}: ${res.services} services, ${res.dests} dests`);
        const [s, d] = count(ns);
        if (s !== n || d !== n * D) throw new Error(`driver ${mode}: ipvsadm sees ${s} services, ${d} dests`);
        ms.push(res.ms);
        wall.push(r.ms);
        list.push(res.listMs);
      }
      rows.push([
        `${n} x ${D}`,
        mode === "single" ? "1 msg/send" : `${mode.slice(5)} msgs/send`,
        median(ms).toFixed(1),
        median(wall).toFixed(1),
        ip.toFixed(1),
        (median(ms) / ip).toFixed(2),
        (median(wall) / ip).toFixed(2),
        median(list).toFixed(1),
      ]);
    }
  }
  const head = ["table", "driver mode", "driver ms", "driver+bun ms", "ipvsadm -R ms", "ratio", "ratio w/ start", "list() ms"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (r: string[]) => "| " + r.map((c, i) => c.padStart(widths[i]!)).join(" | ") + " |";
  console.log(fmt(head));
  console.log("|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|");
  for (const r of rows) console.log(fmt(r));
  console.log(
    "\ndriver ms: programming in the process, from the first request to the last ack; driver+bun ms: the whole" +
      "\n`ip netns exec NS bun …` process (start-up, list() read-back included); ipvsadm -R ms: the whole process." +
      "\nratio = driver ms / ipvsadm -R ms. Each run programs an empty, fresh network namespace;" +
      `\nmedians of ${repeat} runs (BENCH_REPEAT).`,
  );
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === "program") program(Number(args[0]), Number(args[1]), args[2] ?? "single");
else if (cmd === "gen") process.stdout.write(ipvsadmSave(Number(args[0]), Number(args[1])));
else main();
