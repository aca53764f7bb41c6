// Kernel tests of the netlink IPVS driver. Run inside the user-mode kernel (test/kernel/run.sh);
// they need root and a kernel with ip_vs (loaded or loadable). Only TEST-NET addresses, no traffic.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { kernelScratch } from "../support/kernel.ts";
import {
  IPVS_MISSING,
  KernelIpvsTable,
  kernelIpvsAvailable,
  openKernelIpvs,
} from "../../src/ipvs/netlink/kernel-table.ts";
import {
  IpvsError,
  type Dest,
  type FwdMethod,
  type ObservedService,
  type Op,
  type Protocol,
  type Service,
  type ServiceKey,
} from "../../src/ipvs/types.ts";

function sh(...cmd: string[]): string {
  const r = Bun.spawnSync(cmd, { stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: exit ${r.exitCode}: ${r.stderr.toString()}`);
  return r.stdout.toString();
}

const loadedModules = () =>
  readFileSync("/proc/modules", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[0]!)
    .filter(Boolean);

/** Unloads ip_vs and its schedulers (whatever loaded them before this file). */
function unloadIpvs(): void {
  // services of earlier tests (in any namespace) hold their scheduler modules
  if (loadedModules().includes("ip_vs")) {
    Bun.spawnSync(["ipvsadm", "-C"]);
    const names = Bun.spawnSync(["ip", "netns", "list"]).stdout.toString().split("\n").map((l) => l.split(" ")[0]!).filter(Boolean);
    for (const ns of names) Bun.spawnSync(["ip", "netns", "exec", ns, "ipvsadm", "-C"]);
  }
  for (let i = 0; i < 5 && loadedModules().includes("ip_vs"); i++) {
    const deps = loadedModules().filter((m) => m.startsWith("ip_vs_"));
    for (const m of deps) Bun.spawnSync(["rmmod", m]);
    Bun.spawnSync(["rmmod", "ip_vs"]);
  }
}

// ---- comparison helpers -------------------------------------------------------------------

const FWD_NAME: Record<Dest["method"], string> = {
  masq: "Masq",
  localnode: "Local",
  tunnel: "Tunnel",
  droute: "Route",
  bypass: "(null)", // ipvsadm 1.31 has no name for IP_VS_CONN_F_BYPASS
};

const hostPort = (a: string, p: number) => (a.includes(":") ? `[${a}]:${p}` : `${a}:${p}`);

function maskText(s: Service): string {
  if (s.family === "inet6") return s.netmask === 128 ? "" : ` mask ${s.netmask}`;
  if (s.netmask === 32) return "";
  const m = s.netmask === 0 ? 0 : (0xffffffff << (32 - s.netmask)) >>> 0;
  return ` mask ${[24, 16, 8, 0].map((b) => (m >>> b) & 0xff).join(".")}`;
}

/** Our table as sorted ipvsadm -Ln lines (without the counters). */
function asIpvsadm(services: (Service & { dests: Dest[] })[]): string[] {
  const out: string[] = [];
  for (const s of services) {
    let line = `${s.protocol.toUpperCase()} ${hostPort(s.address, s.port)} ${s.scheduler}`;
    if (s.flags & 1) line += ` persistent ${s.timeout}${maskText(s)}`;
    const dests = s.dests.map((d) => `  -> ${hostPort(d.address, d.port)} ${FWD_NAME[d.method]} ${d.weight}`);
    out.push([line, ...dests.sort()].join("\n"));
  }
  return out.sort();
}

const inNs = (ns: string | undefined, ...cmd: string[]) => (ns ? ["ip", "netns", "exec", ns, ...cmd] : cmd);

/** ipvsadm -Ln (in namespace `ns`, else this one), as the same sorted lines. */
function ipvsadmLn(ns?: string): string[] {
  const text = sh(...inNs(ns, "ipvsadm", "-Ln"));
  const out: string[][] = [];
  for (const raw of text.split("\n")) {
    const svc = raw.match(/^(TCP|UDP|SCTP)\s+(\S+)\s+(\S+)(.*)$/);
    if (svc) {
      out.push([`${svc[1]} ${svc[2]} ${svc[3]}${svc[4]!.trimEnd().replace(/\s+/g, " ")}`]);
      continue;
    }
    const d = raw.match(/^\s+->\s+(\S+)\s+(\S+)\s+(\d+)\s+\d+\s+\d+/);
    if (d && out.length) out[out.length - 1]!.push(`  -> ${d[1]} ${d[2]} ${d[3]}`);
  }
  return out.map(([l, ...ds]) => [l, ...ds.sort()].join("\n")).sort();
}

/** The destinations' thresholds as ipvsadm -Ln --thresholds shows them: "PROTO VIP:PORT -> DEST UPPER LOWER", sorted. */
function ipvsadmThresholds(ns: string): string[] {
  const out: string[] = [];
  let svc = "";
  for (const raw of sh(...inNs(ns, "ipvsadm", "-Ln", "--thresholds")).split("\n")) {
    const s = raw.match(/^(TCP|UDP|SCTP)\s+(\S+)/);
    if (s) svc = `${s[1]} ${s[2]}`;
    const d = raw.match(/^\s+->\s+(\S+)\s+(\d+)\s+(\d+)\s+\d+\s+\d+/);
    if (d) out.push(`${svc} -> ${d[1]} ${d[2]} ${d[3]}`);
  }
  return out.sort();
}

function configOnly(list: ObservedService[]): (Service & { dests: Dest[] })[] {
  return list
    .map((s) => ({
      family: s.family,
      protocol: s.protocol,
      address: s.address,
      port: s.port,
      scheduler: s.scheduler,
      flags: s.flags,
      timeout: s.timeout,
      netmask: s.netmask,
      dests: s.dests
        .map((d) => ({
          address: d.address,
          port: d.port,
          method: d.method,
          weight: d.weight,
          upperThreshold: d.upperThreshold,
          lowerThreshold: d.lowerThreshold,
        }))
        .sort((a, b) => (a.address + a.port < b.address + b.port ? -1 : 1)),
    }))
    .sort((a, b) => (key(a) < key(b) ? -1 : 1));
}
const key = (s: ServiceKey) => `${s.family}|${s.protocol}|${s.address}|${s.port}`;

function expectError(fn: () => void, code: string, message?: string): IpvsError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(IpvsError);
    const err = e as IpvsError;
    expect(err.code).toBe(code as never);
    if (message) expect(err.message).toBe(message);
    return err;
  }
  throw new Error(`expected ${code}`);
}

// ---- the desired table of the functional tests --------------------------------------------

const METHODS: FwdMethod[] = ["masq", "localnode", "tunnel", "droute", "bypass"];
const PROTOCOLS: Protocol[] = ["tcp", "udp", "sctp"];

function fixture(): (Service & { dests: Dest[] })[] {
  const out: (Service & { dests: Dest[] })[] = [];
  PROTOCOLS.forEach((protocol, pi) => {
    out.push({
      family: "inet",
      protocol,
      address: "192.0.2.10",
      port: 80 + pi,
      scheduler: ["wlc", "rr", "wrr"][pi]!,
      flags: 0,
      timeout: 0,
      netmask: 32,
      dests: METHODS.map((method, mi) => ({
        address: `198.51.100.${10 + mi}`,
        port: 8080,
        method,
        weight: mi * 10,
        upperThreshold: mi === 2 ? 100 : 0,
        lowerThreshold: mi === 2 ? 10 : 0,
      })),
    });
    out.push({
      family: "inet6",
      protocol,
      address: "2001:db8::10",
      port: 443 + pi,
      scheduler: ["lc", "sh", "mh"][pi]!,
      flags: pi === 1 ? 1 : 0,
      timeout: pi === 1 ? 300 : 0,
      netmask: 128,
      dests: METHODS.map((method, mi) => ({
        address: `2001:db8:1::${(10 + mi).toString(16)}`,
        port: 8443,
        method,
        weight: 1 + mi,
        upperThreshold: 0,
        lowerThreshold: 0,
      })),
    });
  });
  // persistence with a netmask; a mixed-family dest (IPv4 tunnel behind an IPv6 service)
  out.push({
    family: "inet",
    protocol: "tcp",
    address: "203.0.113.1",
    port: 443,
    scheduler: "rr",
    flags: 1,
    timeout: 600,
    netmask: 24,
    dests: [{ address: "198.51.100.200", port: 443, method: "droute", weight: 5, upperThreshold: 0, lowerThreshold: 0 }],
  });
  out.push({
    family: "inet6",
    protocol: "udp",
    address: "2001:db8:ffff::1",
    port: 53,
    scheduler: "wlc",
    flags: 1,
    timeout: 60,
    netmask: 64,
    dests: [{ address: "192.0.2.53", port: 53, method: "tunnel", weight: 1, upperThreshold: 0, lowerThreshold: 0 }],
  });
  return out;
}

// ---- tests --------------------------------------------------------------------------------

const scratch = kernelScratch("driver");

describe("kernel IPVS driver", () => {
  let t: KernelIpvsTable;
  let modprobePath = "";

  beforeAll(() => {
    modprobePath = readFileSync("/proc/sys/kernel/modprobe", "utf8").trim();
  });
  afterAll(() => {
    writeFileSync("/proc/sys/kernel/modprobe", modprobePath + "\n");
    try {
      t?.flush();
      t?.close();
    } catch {}
  });

  test("without ip_vs and no module autoload: a clear error", () => {
    unloadIpvs();
    expect(loadedModules()).not.toContain("ip_vs");
    writeFileSync("/proc/sys/kernel/modprobe", "/bin/false\n");
    try {
      expect(() => openKernelIpvs()).toThrow(IPVS_MISSING);
      const r = kernelIpvsAvailable();
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.reason).toContain("IPVS is not available in this kernel: load ip_vs");
      expect(loadedModules()).not.toContain("ip_vs");
    } finally {
      writeFileSync("/proc/sys/kernel/modprobe", modprobePath + "\n");
    }
  });

  test("without ip_vs but with module autoload: resolving the family loads ip_vs", () => {
    expect(loadedModules()).not.toContain("ip_vs");
    // the genl controller asks for module alias net-pf-16-proto-16-family-IPVS (ip_vs has it)
    t = openKernelIpvs();
    expect(loadedModules()).toContain("ip_vs");
    expect(t.family).toBeGreaterThan(0);
  });

  test("GET_INFO", () => {
    const info = t.info();
    expect(info.version).toMatch(/^\d+\.\d+\.\d+$/);
    expect(info.connTableSize).toBeGreaterThan(0);
    const head = sh("ipvsadm", "-Ln").split("\n")[0];
    expect(head).toBe(`IP Virtual Server version ${info.version} (size=${info.connTableSize})`);
  });

  test("add v4/v6 tcp/udp/sctp services with every method; list() matches what was added and ipvsadm -Ln", () => {
    t.flush();
    const want = fixture();
    for (const s of want) {
      const { dests, ...svc } = s;
      t.addService(svc);
      for (const d of dests) t.addDest(svc, d);
    }
    const got = t.list();
    expect(configOnly(got)).toEqual(configOnly(want as ObservedService[]));
    expect(ipvsadmLn()).toEqual(asIpvsadm(want));
    // observed fields are there (no traffic: all zero)
    for (const s of got) {
      expect(s.stats).toEqual({ connections: 0, packetsIn: 0, packetsOut: 0, bytesIn: 0, bytesOut: 0 });
      for (const d of s.dests) {
        expect(d.activeConnections).toBe(0);
        expect(d.inactiveConnections).toBe(0);
        expect(d.persistentConnections).toBe(0);
        expect(d.stats?.connections).toBe(0);
      }
    }
    // The syncs' reads leave the counters out; the rest is the same.
    const bare = t.listServices(false).map((s) => ({ ...s, dests: t.listDests(s, false) }));
    expect(configOnly(bare)).toEqual(configOnly(got));
    expect(bare.every((s) => s.stats === undefined && s.dests.every((d) => d.stats === undefined && d.activeConnections === 0))).toBe(true);
  });

  test("edit service (scheduler, persistence) and dest (weight, method, thresholds) in place", () => {
    const want = fixture();
    const s4 = want[0]!; // inet tcp
    const s6 = want[3]!; // inet6 udp, persistent
    const e4 = { ...s4, scheduler: "sed", flags: 1, timeout: 120 };
    const e6 = { ...s6, scheduler: "rr", flags: 0, timeout: 0 };
    const { dests: _a, ...e4svc } = e4;
    const { dests: _b, ...e6svc } = e6;
    t.editService(e4svc);
    t.editService(e6svc);
    const d0 = { ...s4.dests[0]!, weight: 77, method: "droute" as FwdMethod, upperThreshold: 1000, lowerThreshold: 500 };
    t.editDest(s4, d0);
    const d6 = { ...s6.dests[4]!, method: "masq" as FwdMethod, weight: 0 };
    t.editDest(s6, d6);
    e4.dests = [d0, ...s4.dests.slice(1)];
    e6.dests = [...s6.dests.slice(0, 4), d6];
    want[0] = e4;
    want[3] = e6;
    expect(configOnly(t.list())).toEqual(configOnly(want as ObservedService[]));
    expect(ipvsadmLn()).toEqual(asIpvsadm(want));
  });

  test("delete dest and service", () => {
    const before = configOnly(t.list());
    const s = before[0]!;
    t.deleteDest(s, s.dests[1]!);
    const gone = before[before.length - 1]!;
    t.deleteService(gone);
    const want = before.slice(0, -1);
    want[0] = { ...s, dests: s.dests.filter((_, i) => i !== 1) };
    expect(configOnly(t.list())).toEqual(want);
    expect(ipvsadmLn()).toEqual(asIpvsadm(want));
  });

  test("errors: EEXIST, ESRCH, ENOENT, EINVAL, others; messages name command and object", () => {
    const svc: Service = {
      family: "inet", protocol: "tcp", address: "192.0.2.99", port: 80,
      scheduler: "wlc", flags: 0, timeout: 0, netmask: 32,
    };
    const dest: Dest = { address: "198.51.100.1", port: 8080, method: "masq", weight: 1, upperThreshold: 0, lowerThreshold: 0 };
    // the service does not exist yet
    expectError(() => t.addDest(svc, dest), "ESRCH", "NEW_DEST inet+tcp://192.0.2.99:80 198.51.100.1:8080: No such process");
    expectError(() => t.deleteService(svc), "ESRCH", "DEL_SERVICE inet+tcp://192.0.2.99:80: No such process");
    expectError(() => t.editService(svc), "ESRCH");
    t.addService(svc);
    expectError(() => t.addService(svc), "EEXIST", "NEW_SERVICE inet+tcp://192.0.2.99:80: File exists");
    t.addDest(svc, dest);
    expectError(() => t.addDest(svc, dest), "EEXIST", "NEW_DEST inet+tcp://192.0.2.99:80 198.51.100.1:8080: File exists");
    const other = { ...dest, address: "198.51.100.2" };
    expectError(() => t.editDest(svc, other), "ENOENT", "SET_DEST inet+tcp://192.0.2.99:80 198.51.100.2:8080: No such file or directory");
    expectError(() => t.deleteDest(svc, other), "ENOENT");
    // unknown scheduler
    expectError(() => t.addService({ ...svc, port: 81, scheduler: "nosuch" }), "ENOENT");
    // IPv6 netmask out of range
    expectError(
      () => t.addService({ family: "inet6", protocol: "tcp", address: "2001:db8::99", port: 80, scheduler: "wlc", flags: 0, timeout: 0, netmask: 129 }),
      "EINVAL",
    );
    // lower threshold above the upper one: ERANGE, mapped to EOTHER
    const err = expectError(() => t.addDest(svc, { ...dest, address: "198.51.100.3", upperThreshold: 1, lowerThreshold: 2 }), "EOTHER");
    expect(err.errno).toBe(34);
    t.deleteService(svc);
  });

  test("a request without an answer times out; the socket is reopened and works again", () => {
    // Its first request never leaves; the next ones do.
    class DropsFirst extends KernelIpvsTable {
      dropped = false;
      protected override send(...args: [never, never]): void {
        if (this.dropped) return super.send(...args);
        this.dropped = true;
      }
    }
    const tt = new DropsFirst({ timeoutMs: 300 });
    const t0 = performance.now();
    expectError(() => tt.info(), "ETIMEDOUT");
    expect(performance.now() - t0).toBeGreaterThanOrEqual(250);
    expect(tt.info().version).toMatch(/^\d+\.\d+\.\d+$/);
    tt.close();
  });

  test("debug: every request and answer", () => {
    const lines: string[] = [];
    const tt = openKernelIpvs({ debug: (l) => lines.push(l) });
    tt.info();
    tt.list();
    tt.close();
    expect(lines.some((l) => l.startsWith("> GET_INFO seq="))).toBe(true);
    expect(lines.some((l) => l.startsWith("> GET_SERVICE seq="))).toBe(true);
    expect(lines.some((l) => l.startsWith("< type=2 "))).toBe(true); // the ack
    expect(lines.some((l) => l.startsWith("< type=3 "))).toBe(true); // NLMSG_DONE
  });

  test("applyBatch: many messages per send(), per-op errors", () => {
    t.flush();
    const svc: Service = {
      family: "inet", protocol: "udp", address: "192.0.2.200", port: 53,
      scheduler: "rr", flags: 0, timeout: 0, netmask: 32,
    };
    const ops: Op[] = [{ type: "add-service", service: svc }];
    for (let i = 1; i <= 150; i++) {
      ops.push({
        type: "add-dest",
        service: svc,
        dest: { address: `198.51.100.${i}`, port: 53, method: "masq", weight: i, upperThreshold: 0, lowerThreshold: 0 },
      });
    }
    ops.push({ type: "add-dest", service: svc, dest: (ops[5] as { dest: Dest }).dest }); // duplicate
    ops.push({ type: "edit-service", service: { ...svc, scheduler: "wrr" } });
    const res = t.applyBatch(ops);
    expect(res.filter((r) => r !== null).length).toBe(1);
    expect(res[151]?.code).toBe("EEXIST");
    expect(res[151]?.message).toBe("NEW_DEST inet+udp://192.0.2.200:53 198.51.100.5:53: File exists");
    const list = t.list();
    expect(list.length).toBe(1);
    expect(list[0]!.scheduler).toBe("wrr");
    expect(list[0]!.dests.length).toBe(150);
  });

  test("batch writes of every kind, 1, 7 and 64 to a send(), each in a fresh namespace: ipvsadm -Ln shows exactly the table written", () => {
    // The fixture table, then edits and deletes in the same batch, with two writes that fail
    // (EEXIST, ENOENT) and must not stop the ones after them.
    const base = fixture();
    const ops: Op[] = [];
    for (const { dests, ...svc } of base) {
      ops.push({ type: "add-service", service: svc });
      for (const d of dests) ops.push({ type: "add-dest", service: svc, dest: d });
    }
    const [s0, s1, s2] = base as [(typeof base)[0], (typeof base)[0], (typeof base)[0]];
    const last = base[base.length - 1]!;
    const extra: Dest = { address: "198.51.100.99", port: 8080, method: "masq", weight: 3, upperThreshold: 0, lowerThreshold: 0 };
    const failing = [ops.length + 4, ops.length + 5];
    ops.push(
      { type: "edit-service", service: { ...s0, scheduler: "sed", flags: 1, timeout: 120 } },
      { type: "edit-dest", service: s0, dest: { ...s0.dests[0]!, weight: 77, method: "droute", upperThreshold: 1000, lowerThreshold: 500 } },
      { type: "delete-dest", service: s1, dest: s1.dests[2]! },
      { type: "delete-service", service: last },
      { type: "add-dest", service: s2, dest: s2.dests[1]! }, // already there
      { type: "delete-dest", service: s2, dest: { address: "198.51.100.250", port: 1 } }, // never there
      { type: "add-dest", service: s2, dest: extra },
    );
    // The same changes to plain data, by hand.
    const want = fixture().slice(0, -1);
    want[0] = { ...want[0]!, scheduler: "sed", flags: 1, timeout: 120, dests: [{ ...s0.dests[0]!, weight: 77, method: "droute", upperThreshold: 1000, lowerThreshold: 500 }, ...s0.dests.slice(1)] };
    want[1] = { ...want[1]!, dests: s1.dests.filter((_, i) => i !== 2) };
    want[2] = { ...want[2]!, dests: [...s2.dests, extra] };
    const thresholds = want.flatMap((s) => s.dests.map((d) => `${s.protocol.toUpperCase()} ${hostPort(s.address, s.port)} -> ${hostPort(d.address, d.port)} ${d.upperThreshold} ${d.lowerThreshold}`)).sort();
    expect(thresholds).toContain("TCP 192.0.2.10:80 -> 198.51.100.10:8080 1000 500");

    const file = join(scratch.tmp, "batch.json");
    writeFileSync(file, JSON.stringify(ops));
    for (const size of [1, 7, 64]) {
      const ns = scratch.netns(`cf-batch${size}`);
      const out = JSON.parse(sh("ip", "netns", "exec", ns, process.execPath, join(import.meta.dir, "fixtures/batch-write.ts"), file, String(size)));
      expect(out.results).toEqual(ops.map((_, i) => (i === failing[0] ? "EEXIST" : i === failing[1] ? "ENOENT" : null)));
      // Really that many messages to a send().
      expect(out.batches).toEqual(Array.from({ length: Math.ceil(ops.length / size) }, (_, i) => Math.min(size, ops.length - i * size)));
      expect(ipvsadmLn(ns)).toEqual(asIpvsadm(want));
      expect(ipvsadmThresholds(ns)).toEqual(thresholds);
    }
  });

  test("1000 services x 10 dests: the multipart dumps return everything", () => {
    t.flush();
    const want: (Service & { dests: Dest[] })[] = [];
    const ops: Op[] = [];
    for (let i = 0; i < 1000; i++) {
      const v6 = i % 2 === 1;
      const svc: Service = {
        family: v6 ? "inet6" : "inet",
        protocol: (["tcp", "udp", "sctp"] as Protocol[])[i % 3]!,
        address: v6 ? `2001:db8:2::${i.toString(16)}` : `203.0.113.${i % 250}`,
        port: 1000 + i,
        scheduler: "wlc",
        flags: 0,
        timeout: 0,
        netmask: v6 ? 128 : 32,
      };
      const dests: Dest[] = [];
      for (let j = 0; j < 10; j++) {
        dests.push({
          address: v6 ? `2001:db8:3::${i.toString(16)}:${j}` : `198.51.100.${j + 1}`,
          port: 2000 + i,
          method: METHODS[j % 4]!,
          weight: j,
          upperThreshold: 0,
          lowerThreshold: 0,
        });
      }
      want.push({ ...svc, dests });
      ops.push({ type: "add-service", service: svc });
      for (const d of dests) ops.push({ type: "add-dest", service: svc, dest: d });
    }
    expect(t.applyBatch(ops).filter((r) => r !== null)).toEqual([]);
    const t0 = performance.now();
    const got = t.list();
    const ms = performance.now() - t0;
    console.log(`list() of 1000 services x 10 dests: ${ms.toFixed(0)} ms`);
    expect(got.length).toBe(1000);
    expect(got.reduce((n, s) => n + s.dests.length, 0)).toBe(10000);
    expect(configOnly(got)).toEqual(configOnly(want as ObservedService[]));
    expect(ipvsadmLn()).toEqual(asIpvsadm(want));

    // The services' dump a datagram at a time: the same services, with pauses in between.
    const steps = t.listServicesSteps();
    let pauses = 0;
    let r = steps.next();
    for (; !r.done; r = steps.next()) pauses++;
    console.log(`listServicesSteps() of 1000 services: ${pauses} pauses`);
    expect(pauses).toBeGreaterThan(2);
    expect(r.value.map(key)).toEqual(t.listServices().map(key));
    // A reader has its own socket: its dump, paused half-way, does not disturb this handle's
    // requests, then ends with everything.
    const reader = t.reader();
    const half = reader.listServicesSteps();
    half.next();
    half.next();
    expect(t.listServices().length).toBe(1000);
    t.editDest(want[0]!, { ...want[0]!.dests[0]!, weight: 77 });
    for (r = half.next(); !r.done; r = half.next());
    expect(r.value.length).toBe(1000);
    // Abandoned half-way, the reader's next request still gets its own answer (socket reopened).
    const abandoned = reader.listServicesSteps();
    abandoned.next();
    abandoned.next();
    abandoned.return([]);
    expect(reader.listDests(want[0]!).find((d) => d.port === want[0]!.dests[0]!.port && d.address === want[0]!.dests[0]!.address)?.weight).toBe(77);
    expect(reader.listServices().length).toBe(1000);
    reader.close();
  });

  test("flush", () => {
    t.flush();
    expect(t.list()).toEqual([]);
    expect(ipvsadmLn()).toEqual([]);
  });
});
