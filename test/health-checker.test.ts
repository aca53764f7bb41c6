// The health checker against real servers on loopback: TCP listeners (Bun.listen), HTTP
// (Bun.serve), HTTPS (node:https with a self-signed certificate made here by openssl), a server
// that accepts and never answers, and a listener whose accept queue is full (connects never
// complete). Timing bounds are the documented ones plus ALLOWANCE for a busy, shared machine.

import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { dlopen, FFIType, ptr } from "bun:ffi";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as https from "node:https";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { parseCheck, targetKey, type CheckSpec } from "../src/health/check-config.ts";
import { Checker, type TargetInput, type TransitionEvent } from "../src/health/checker.ts";
import { probe } from "../src/health/probe.ts";
import { configureLog } from "../src/util/log.ts";
import { redirectStderr } from "../src/util/stdio.ts";
import { until } from "./support/until.ts";

/** Event-loop and scheduling lateness allowed on top of a documented bound (2 CPUs, shared). */
const ALLOWANCE = 150;

const spec = (o: Record<string, unknown>): CheckSpec => parseCheck(o).value as CheckSpec;
const users = [{ service: "web", backend: "b1" }];

const checkers: Checker[] = [];
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of checkers.splice(0)) await c.stop();
  for (const f of cleanups.splice(0).reverse()) await f();
});

/** A checker whose events are recorded with their times; assertions happen in the test body. */
function recorded(opts: ConstructorParameters<typeof Checker>[0] = {}) {
  const checker = new Checker(opts);
  checkers.push(checker);
  const transitions: TransitionEvent[] = [];
  const results: { at: number; ok: boolean; reason: string; ms: number; key: string }[] = [];
  const changes: { at: number; key: string }[] = [];
  checker.listen({
    transition: (ev) => transitions.push(ev),
    result: (t, r) => results.push({ at: performance.now(), ok: r.ok, reason: r.reason, ms: r.ms, key: t.key }),
    change: (keys) => keys.forEach((key) => changes.push({ at: performance.now(), key })),
  });
  return { checker, transitions, results, changes };
}

/** A TCP listener that counts connections; stop() and start() again on the same port. */
function tcpServer(hostname = "127.0.0.1") {
  let opens = 0;
  const listen = (port: number) => Bun.listen({ hostname, port, socket: { open: () => void opens++, data() {} } });
  let srv: ReturnType<typeof listen> | undefined = listen(0);
  const port = srv.port;
  const s = {
    port,
    get opens() {
      return opens;
    },
    stop: () => {
      srv?.stop(true);
      srv = undefined;
    },
    start: () => void (srv = listen(port)),
  };
  cleanups.push(s.stop);
  return s;
}

/** An HTTP server answering `status` (changeable), recording the Host header it gets. */
function httpServer() {
  const state = { status: 200, hosts: [] as string[], requests: 0 };
  const srv = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      state.requests++;
      state.hosts.push(req.headers.get("host") ?? "");
      return new Response("x", { status: state.status });
    },
  });
  cleanups.push(() => srv.stop(true));
  return Object.assign(state, { port: srv.port });
}

/** Accepts connections and never answers; records when each opens and closes. */
function hungServer() {
  const conns: { open: number; close?: number }[] = [];
  let live = 0;
  let maxLive = 0;
  const srv = Bun.listen<{ i: number }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = { i: conns.push({ open: performance.now() }) - 1 };
        maxLive = Math.max(maxLive, ++live);
      },
      data() {},
      close(s) {
        conns[s.data.i]!.close = performance.now();
        live--;
      },
    },
  });
  cleanups.push(() => srv.stop(true));
  return {
    port: srv.port,
    conns,
    get live() {
      return live;
    },
    get maxLive() {
      return maxLive;
    },
  };
}

const openFds = () => fs.readdirSync("/proc/self/fd").length;

describe("down and up", () => {
  test("a stopped TCP server is down after exactly `fall` refused checks, within fall × interval + timeout; restarted, up after `rise`", async () => {
    const srv = tcpServer();
    const { checker, transitions, results } = recorded();
    const s = spec({ interval: "200ms", timeout: "100ms", fall: 3, rise: 2 });
    checker.setTargets([{ address: "127.0.0.1", destPort: srv.port, spec: s, users }]);
    await until(() => results.filter((r) => r.ok).length >= 2, 2000, "two passed checks", 2);
    expect(transitions).toEqual([]);

    const stoppedAt = performance.now();
    srv.stop();
    const down = await until(() => transitions[0], 3 * 200 + 100 + 2000, "down", 2);
    const toDown = down.at - stoppedAt;
    const failed = results.filter((r) => r.at >= stoppedAt);
    expect(down.transition).toBe("down");
    expect(down.reason).toBe("refused");
    expect(failed.map((r) => r.reason)).toEqual(["refused", "refused", "refused"]);
    // the bound: fall × interval + timeout; and not before the third check could have come
    expect(toDown).toBeLessThanOrEqual(3 * 200 + 100 + ALLOWANCE);
    expect(toDown).toBeGreaterThanOrEqual(2 * 200 * 0.95);
    expect(checker.health(down.target.key)?.up).toBe(false);
    expect(checker.weight(down.target.key, 10)).toBe(0);

    const startedAt = performance.now();
    srv.start();
    const up = await until(() => transitions[1], 2 * 200 + 100 + 2000, "up", 2);
    const passed = results.filter((r) => r.at >= startedAt);
    expect(up.transition).toBe("up");
    expect(up.reason).toBe("connected");
    expect(passed.map((r) => r.reason)).toEqual(["connected", "connected"]);
    expect(up.at - startedAt).toBeLessThanOrEqual(2 * 200 + 100 + ALLOWANCE);
    expect(checker.weight(up.target.key, 10)).toBe(10);
    expect(transitions.length).toBe(2);
  });

  test("HTTP 503 counts as failing (reason: status 503), 200 brings it back; the status list decides", async () => {
    const srv = httpServer();
    const { checker, transitions, results } = recorded();
    checker.setTargets([{ address: "127.0.0.1", destPort: srv.port, spec: spec({ type: "http", path: "/healthz", interval: "150ms", timeout: "100ms", fall: 2, rise: 1 }), users }]);
    await until(() => results.some((r) => r.ok), 2000, "a passed check", 2);
    expect(results[0]).toMatchObject({ ok: true, reason: "status 200" });
    srv.status = 503;
    const down = await until(() => transitions[0], 3000, "down", 2);
    expect(down).toMatchObject({ transition: "down", reason: "status 503" });
    srv.status = 200;
    const up = await until(() => transitions[1], 3000, "up", 2);
    expect(up).toMatchObject({ transition: "up", reason: "status 200" });

    // 404 passes only where it is listed; a redirect (3xx) is not followed and passes by default
    const target = (status?: unknown): TargetInput => ({ address: "127.0.0.1", destPort: srv.port, spec: spec(status === undefined ? { type: "http" } : { type: "http", status }), users });
    srv.status = 404;
    expect(await probe({ address: "127.0.0.1", port: srv.port, spec: target([200, 404]).spec })).toMatchObject({ ok: true, reason: "status 404" });
    expect(await probe({ address: "127.0.0.1", port: srv.port, spec: target([200]).spec })).toMatchObject({ ok: false, reason: "status 404" });
    expect(await probe({ address: "127.0.0.1", port: srv.port, spec: target(undefined).spec })).toMatchObject({ ok: false, reason: "status 404" });
    srv.status = 302;
    expect(await probe({ address: "127.0.0.1", port: srv.port, spec: target(undefined).spec })).toMatchObject({ ok: true, reason: "status 302" });
  });

  test("the path and the Host header are sent as configured", async () => {
    const seen: string[] = [];
    const srv = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: (req) => (seen.push(`${req.headers.get("host")} ${new URL(req.url).pathname}`), new Response("ok")) });
    cleanups.push(() => srv.stop(true));
    const r1 = await probe({ address: "127.0.0.1", port: srv.port, spec: spec({ type: "http", path: "/ready", host: "www.example.com" }) });
    const r2 = await probe({ address: "127.0.0.1", port: srv.port, spec: spec({ type: "http" }) });
    expect([r1.ok, r2.ok]).toEqual([true, true]);
    expect(seen).toEqual(["www.example.com /ready", `127.0.0.1:${srv.port} /`]);
  });

  test("a TCP check over IPv6 (::1)", async () => {
    const srv = tcpServer("::1");
    expect(await probe({ address: "::1", port: srv.port, spec: spec({}) })).toMatchObject({ ok: true, reason: "connected" });
    srv.stop();
    expect(await probe({ address: "::1", port: srv.port, spec: spec({}) })).toMatchObject({ ok: false, reason: "refused" });
  });
});

describe("https", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "clusterf-health-tls-"));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test("a self-signed certificate passes without verify and fails with verify: true (reason names TLS)", async () => {
    execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", `${dir}/key.pem`, "-out", `${dir}/cert.pem`, "-days", "1", "-subj", "/CN=backend.example", "-addext", "subjectAltName=DNS:backend.example"], { stdio: "ignore" });
    const hosts: string[] = [];
    const srv = https.createServer({ key: fs.readFileSync(`${dir}/key.pem`), cert: fs.readFileSync(`${dir}/cert.pem`) }, (req, res) => {
      hosts.push(req.headers.host ?? "");
      res.writeHead(204).end();
    });
    await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
    cleanups.push(() => new Promise((resolve) => srv.close(resolve)));
    const port = (srv.address() as net.AddressInfo).port;
    const plain = await probe({ address: "127.0.0.1", port, spec: spec({ type: "https", host: "backend.example" }) });
    const verified = await probe({ address: "127.0.0.1", port, spec: spec({ type: "https", host: "backend.example", verify: true }) });
    expect(plain).toMatchObject({ ok: true, reason: "status 204" });
    expect(verified.ok).toBe(false);
    expect(verified.reason).toMatch(/^tls: /);
    expect(hosts).toEqual(["backend.example"]);
  });
});

describe("timeouts close their sockets", () => {
  test("a server that accepts and never answers: the HTTP check times out at its timeout and the server sees the close", async () => {
    const srv = hungServer();
    const r = await probe({ address: "127.0.0.1", port: srv.port, spec: spec({ type: "http", timeout: "300ms" }) });
    expect(r).toMatchObject({ ok: false, reason: "timeout" });
    expect(r.ms).toBeGreaterThanOrEqual(300 - 1);
    expect(r.ms).toBeLessThanOrEqual(300 + ALLOWANCE);
    const c = await until(() => srv.conns[0]?.close !== undefined && srv.conns[0], 2000, "the server to see the close", 2);
    expect(c.close! - c.open).toBeLessThanOrEqual(300 + ALLOWANCE);
    // a TCP check only connects: the same server passes it
    expect(await probe({ address: "127.0.0.1", port: srv.port, spec: spec({}) })).toMatchObject({ ok: true, reason: "connected" });
  });

  test("a connect that never completes (accept queue full) times out, and its socket is closed", async () => {
    const silent = await silentListener();
    cleanups.push(silent.close);
    const s = spec({ timeout: "200ms" });
    const fds = openFds();
    const out = [];
    for (let i = 0; i < 20; i++) out.push(await probe({ address: "127.0.0.1", port: silent.port, spec: s }));
    expect(out.map((r) => r.reason)).toEqual(Array(20).fill("timeout"));
    for (const r of out) expect(r.ms).toBeLessThanOrEqual(200 + ALLOWANCE);
    // 20 timed-out connects left no socket behind (a leak would be one fd each)
    await Bun.sleep(50);
    expect(openFds() - fds).toBeLessThanOrEqual(0);
    const http = await probe({ address: "127.0.0.1", port: silent.port, spec: spec({ type: "http", timeout: "200ms" }) });
    expect(http).toMatchObject({ ok: false, reason: "timeout" });
    await Bun.sleep(50);
    expect(openFds() - fds).toBeLessThanOrEqual(0);
  });

  test("at most `concurrency` checks (sockets) at once: 40 targets on a hung server, limit 5", async () => {
    // The hung server runs in a child process, so this process's open sockets are the checks'
    // alone (a server here would count both ends, and see closes a moment late).
    const child = Bun.spawn([process.execPath, "-e", HUNG_SERVER], { stdout: "pipe", stderr: "inherit" });
    cleanups.push(() => child.kill());
    const reader = child.stdout.getReader();
    const port = Number(new TextDecoder().decode((await reader.read()).value).trim());
    const isSocket = (f: string) => {
      try {
        return fs.readlinkSync(`/proc/self/fd/${f}`).startsWith("socket:");
      } catch {
        return false; // the directory listing's own descriptor, gone already
      }
    };
    const sockets = () => fs.readdirSync("/proc/self/fd").filter(isSocket).length;
    const base = sockets();
    let maxOpen = 0;
    const sampler = setInterval(() => (maxOpen = Math.max(maxOpen, sockets() - base)), 1);
    cleanups.push(() => clearInterval(sampler));
    const { checker, results } = recorded({ concurrency: 5 });
    const targets = Array.from({ length: 40 }, (_, i): TargetInput => ({
      address: "127.0.0.1",
      destPort: port,
      spec: spec({ type: "http", path: `/t${i}`, interval: "1s", timeout: "100ms" }),
      users: [{ service: "s", backend: `b${i}` }],
    }));
    checker.setTargets(targets);
    expect(checker.size).toBe(40);
    await until(() => results.length >= 40, 5000, "40 timed-out checks", 2);
    clearInterval(sampler);
    expect(maxOpen).toBe(5);
    expect(checker.stats.maxInFlight).toBe(5);
    expect(results.slice(0, 40).every((r) => r.reason === "timeout")).toBe(true);
  });
});

/** A child process's TCP server that accepts and never answers; prints its port. */
const HUNG_SERVER = `const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } }); console.log(s.port);`;

describe("the set of targets", () => {
  test("a removed target stops being probed, and its probe in flight is cut off at once", async () => {
    const srv = tcpServer();
    const { checker } = recorded();
    const s = spec({ interval: "100ms", timeout: "50ms" });
    checker.setTargets([{ address: "127.0.0.1", destPort: srv.port, spec: s, users }]);
    await until(() => srv.opens >= 3, 2000, "three connections", 2);
    const { removed } = checker.setTargets([]);
    expect(removed).toEqual([targetKey("127.0.0.1", srv.port, s)]);
    const after = srv.opens;
    await Bun.sleep(500);
    expect(srv.opens).toBe(after);
    expect(checker.size).toBe(0);

    const hung = hungServer();
    const h = spec({ type: "http", interval: "5s", timeout: "4s" });
    checker.setTargets([{ address: "127.0.0.1", destPort: hung.port, spec: h, users }]);
    const conn = await until(() => hung.conns[0], 6000, "the hung server's connection", 2);
    const removedAt = performance.now();
    checker.setTargets([]);
    const closed = await until(() => hung.conns[0]!.close, 2000, "the close", 2);
    expect(closed - removedAt).toBeLessThanOrEqual(ALLOWANCE);
    expect(conn.open).toBeLessThan(removedAt);
  });

  test("stop() ends every check at once and nothing runs after it", async () => {
    const srv = hungServer();
    // random 0: every first check at once, so all ten hang together
    const checker = new Checker({ random: () => 0 });
    checker.setTargets(
      Array.from({ length: 10 }, (_, i): TargetInput => ({ address: "127.0.0.1", destPort: srv.port, spec: spec({ type: "http", path: `/${i}`, interval: "2s", timeout: "1500ms" }), users })),
    );
    await until(() => srv.live === 10, 3000, "ten hung connections", 2);
    const stoppedAt = performance.now();
    await checker.stop();
    await until(() => srv.live === 0, 2000, "every connection closed", 2);
    const lastClose = Math.max(...srv.conns.map((c) => c.close ?? Infinity));
    expect(lastClose - stoppedAt).toBeLessThanOrEqual(ALLOWANCE);
    const n = srv.conns.length;
    await Bun.sleep(500);
    expect(srv.conns.length).toBe(n);
  });

  test("one checker per address:port:check, however many services and backends share it; one log line per backend per transition", async () => {
    const srv = tcpServer();
    const lines: string[] = [];
    const restore = redirectStderr((text) => lines.push(text));
    cleanups.push(restore);
    configureLog({ level: "info", json: false });
    const { checker, transitions, results } = recorded();
    const s = spec({ interval: "200ms", timeout: "100ms", fall: 1, rise: 1 });
    const same = spec({ TIMEOUT: "100ms", Interval: "200ms", rise: 1, fall: 1 });
    checker.setTargets([
      { address: "127.0.0.1", destPort: srv.port, spec: s, users: [{ service: "web", backend: "b1" }] },
      { address: "127.0.0.1", destPort: srv.port, spec: same, users: [{ service: "api", backend: "b7" }] },
    ]);
    expect(checker.size).toBe(1);
    await until(() => srv.opens >= 2, 2000, "two connections", 2);
    // one probe per interval for both users, not two
    const t0 = performance.now();
    const n0 = srv.opens;
    await Bun.sleep(1000);
    const rounds = srv.opens - n0;
    const elapsed = performance.now() - t0;
    expect(rounds).toBeGreaterThanOrEqual(Math.floor(elapsed / 200) - 1);
    expect(rounds).toBeLessThanOrEqual(Math.ceil(elapsed / (200 * 0.95)) + 1);
    // stop between two checks (not during a connect, which the server's close would reset)
    const done = results.length;
    await until(() => results.length > done, 1000, "a check to end", 2);
    srv.stop();
    await until(() => transitions[0], 2000, "down", 2);
    restore();
    const down = lines.filter((l) => l.includes("health check: backend down"));
    expect(down).toEqual([
      `WARN health check: backend down after 1 failed check(s) service=api backend=b7 target=127.0.0.1:${srv.port} check=tcp reason=refused\n`,
      `WARN health check: backend down after 1 failed check(s) service=web backend=b1 target=127.0.0.1:${srv.port} check=tcp reason=refused\n`,
    ]);
  });

  test("editing a down backend's check keeps it down (the new target takes over the state)", async () => {
    const srv = tcpServer();
    srv.stop();
    const { checker, transitions } = recorded();
    const a = spec({ interval: "100ms", timeout: "50ms", fall: 1, rise: 3 });
    checker.setTargets([{ address: "127.0.0.1", destPort: srv.port, spec: a, users }]);
    await until(() => transitions[0], 2000, "down", 2);
    const b = spec({ interval: "150ms", timeout: "50ms", fall: 1, rise: 3 });
    const { added, removed } = checker.setTargets([{ address: "127.0.0.1", destPort: srv.port, spec: b, users }]);
    expect(removed).toEqual([targetKey("127.0.0.1", srv.port, a)]);
    expect(added).toEqual([targetKey("127.0.0.1", srv.port, b)]);
    expect(checker.health(added[0]!)?.up).toBe(false);
    expect(checker.weight(added[0]!, 10)).toBe(0);
  });
});

describe("slow start", () => {
  test("after recovery the weight ramps from 1 to the configured weight over slowStart, reported every ramp tick", async () => {
    const srv = tcpServer();
    srv.stop();
    const { checker, transitions, changes } = recorded({ rampTickMs: 100 });
    const s = spec({ interval: "100ms", timeout: "50ms", fall: 1, rise: 1, slowStart: "1s" });
    checker.setTargets([{ address: "127.0.0.1", destPort: srv.port, spec: s, users }]);
    const key = targetKey("127.0.0.1", srv.port, s);
    await until(() => transitions[0], 2000, "down", 2);
    expect(checker.weight(key, 100)).toBe(0);
    srv.start();
    const up = await until(() => transitions[1], 2000, "up", 2);
    expect(up.transition).toBe("up");
    // the weight at fixed points of the ramp: ceil(100 × elapsed / 1000), at least 1
    const at = (ms: number) => checker.weight(key, 100, up.at + ms);
    expect([0, 1, 10, 11, 250, 500, 999, 1000, 5000].map(at)).toEqual([1, 1, 1, 2, 25, 50, 100, 100, 100]);
    expect(checker.weight(key, 0, up.at + 500)).toBe(0);
    // change reports: one at the transition, then every 100 ms until the ramp is over at +1000 ms
    await until(() => changes.some((c) => c.at >= up.at + 1000), 1000 + 2000, "the ramp's end", 2);
    await Bun.sleep(300);
    const ramp = changes.filter((c) => c.at >= up.at).map((c) => c.at - up.at);
    expect(ramp.length).toBe(11);
    ramp.slice(1).forEach((t, i) => {
      expect(t).toBeGreaterThanOrEqual(100 * (i + 1) - 1);
      expect(t).toBeLessThanOrEqual(100 * (i + 1) + ALLOWANCE);
    });
  });
});

/**
 * A listening socket whose accept queue is full, made through libc (Bun's listeners always
 * accept): listen(fd, 0) takes one connection into its queue, then SYNs are dropped, so a
 * connect never completes (as with a backend whose host went silent).
 */
async function silentListener(): Promise<{ port: number; close: () => void }> {
  const libc = dlopen("libc.so.6", {
    socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    bind: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    listen: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    getsockname: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
    close: { args: [FFIType.i32], returns: FFIType.i32 },
  });
  const fd = libc.symbols.socket(2 /* AF_INET */, 1 /* SOCK_STREAM */, 0);
  const sa = new Uint8Array(16);
  sa.set([2, 0, 0, 0, 127, 0, 0, 1]); // AF_INET, port 0, 127.0.0.1
  const len = new Uint32Array([16]);
  if (fd < 0 || libc.symbols.bind(fd, ptr(sa), 16) !== 0 || libc.symbols.listen(fd, 0) !== 0 || libc.symbols.getsockname(fd, ptr(sa), ptr(len)) !== 0) {
    throw new Error("silent listener: socket, bind, listen or getsockname failed");
  }
  const port = (sa[2]! << 8) | sa[3]!;
  // fill the queue: this one connects, the next ones cannot
  const filler = net.connect({ host: "127.0.0.1", port });
  await new Promise((resolve, reject) => filler.once("connect", resolve).once("error", reject));
  return {
    port,
    close: () => {
      filler.destroy();
      libc.symbols.close(fd);
      libc.close();
    },
  };
}

describe("metrics", () => {
  test("per-backend up/down, transitions and check durations on a Prometheus registry", async () => {
    const { Registry } = await import("prom-client");
    const { healthMetrics } = await import("../src/health/metrics.ts");
    const srv = tcpServer();
    const { checker, transitions, results } = recorded();
    const registry = new Registry();
    healthMetrics(registry, checker);
    const s = spec({ interval: "100ms", timeout: "50ms", fall: 1, rise: 1 });
    checker.setTargets([
      { address: "127.0.0.1", destPort: srv.port, spec: s, users: [{ service: "web", backend: "b1" }] },
      { address: "::1", destPort: 9, spec: spec({ interval: "100ms", timeout: "50ms", fall: 1, rise: 1 }), users: [{ service: "web", backend: "b2" }] },
    ]);
    await until(() => results.some((r) => r.ok), 2000, "a passed check", 2);
    await until(() => transitions.some((t) => t.target.users[0]!.backend === "b2"), 2000, "b2 down (nothing listens on ::1 port 9)", 2);
    const text = await registry.metrics();
    expect(text).toContain('clusterf_backend_up{service="web",backend="b1"} 1');
    expect(text).toContain('clusterf_backend_up{service="web",backend="b2"} 0');
    expect(text).toContain('clusterf_health_transitions_total{service="web",backend="b2",to="down"} 1');
    expect(text).toContain("clusterf_health_targets 2");
    const passCount = Number(/clusterf_health_check_duration_seconds_count\{type="tcp",result="pass"\} (\d+)/.exec(text)?.[1]);
    expect(passCount).toBeGreaterThanOrEqual(1);
  });
});
