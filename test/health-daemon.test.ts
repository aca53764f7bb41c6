// Health checks wired into clusterf-ipvs: the daemon with the in-memory IPVS table (-ipvs-mock),
// its backends real TCP and HTTP servers on loopback. A backend that fails `fall` checks goes to
// weight 0 with a note in -print, its transitions are logged and counted in /metrics, and it comes
// back (ramped, with slowStart) after `rise` passed checks; a destination behind a gateway is
// never checked; -once runs no checks.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { tmpdir } from "node:os";
import { Daemon, runCli, tableLines } from "./support/proc.ts";
import { freePorts } from "./support/etcd.ts";

const tmp = mkdtempSync(join(tmpdir(), "clusterf-health-daemon-"));
const cleanups: (() => unknown)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => {});
  rmSync(tmp, { recursive: true, force: true });
});

function writeTree(root: string, files: Record<string, unknown>): string {
  for (const [path, value] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), JSON.stringify(value));
  }
  return root;
}

/** A TCP server on loopback that accepts and says nothing; stop() closes it (connects are refused). */
function tcpServer(port = 0) {
  const l = Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } });
  return { port: l.port, stop: () => l.stop(true) };
}

/** An HTTP server on loopback answering `status` on /health; the status can be changed. */
function httpServer() {
  const s = { status: 200, paths: [] as string[] };
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch: (req) => {
      s.paths.push(new URL(req.url).pathname);
      return new Response("x", { status: new URL(req.url).pathname === "/health" ? s.status : 404 });
    },
  });
  cleanups.push(() => server.stop(true));
  return Object.assign(s, { port: server.port as number });
}

async function scrape(port: number): Promise<string> {
  return await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
}
const sample = (text: string, name: string, labels: string) =>
  text.split("\n").find((l) => l.startsWith(`${name}{${labels}}`))?.split(" ").pop();

const INTERVAL = 400;
const TIMEOUT = 200;
const FALL = 2;
const RISE = 2;

describe("health checks in clusterf-ipvs", () => {
  test("fall → weight 0 with a note and one log line; 503 counts as failing; rise → back, ramped with slowStart; gateways never checked", async () => {
    const a = tcpServer();
    cleanups.push(() => a.stop());
    const b = httpServer();
    const [metricsPort] = await freePorts(1);
    const check = { interval: `${INTERVAL}ms`, timeout: `${TIMEOUT}ms`, fall: FALL, rise: RISE };
    const dir = writeTree(join(tmp, "tree"), {
      "services/web/frontend": { ipv4: "192.0.2.1", tcp: 80, check },
      "services/web/backends/a": { ipv4: "127.0.0.1", tcp: a.port },
      "services/web/backends/b": { ipv4: "127.0.0.1", tcp: b.port, weight: 5, check: { ...check, type: "http", path: "/health", slowStart: "2s" } },
      "services/web/backends/off": { ipv4: "127.0.0.1", tcp: 9, weight: 3, check: false },
      // Behind a gateway: the other tier's to check. Its address has nothing listening; if it
      // were checked it would go down.
      "services/web/backends/remote": { ipv4: "127.0.0.3", tcp: 9, weight: 7 },
      "routes/remote": { Prefix4: "127.0.0.3/32", Gateway4: "192.0.2.254", IpvsMethod: "droute" },
    });
    const d = new Daemon([`-config-path=${dir}`, "-etcd-machines=", "-ipvs-mock", `-metrics-listen=127.0.0.1:${metricsPort}`]);
    cleanups.push(() => d.stop("SIGKILL"));
    const line = (port: number, weight: number, note = "") => `-> 127.0.0.1:${port} Masq ${weight} 0 0${note ? ` ${note}` : ""}`;
    const all = (wa: number, wb: number, na = "", nb = "") => [
      "TCP 192.0.2.1:80 wlc",
      line(9, 3),
      ...[line(a.port, wa, na), line(b.port, wb, nb)].sort(),
      "-> 192.0.2.254:80 Route 7 0 0",
    ];
    const healthy = all(10, 5);
    // Destination order follows the ports; compare as sets of lines.
    const same = (t: string[], want: string[]) => [...t].sort().join("\n") === [...want].sort().join("\n");
    await d.waitFor((t) => same(t, healthy), 15_000, "the first table");
    // Long enough for several checks of every target: nothing changes while they pass.
    await Bun.sleep(3 * INTERVAL);
    expect(d.tables.every((t) => same(t, healthy))).toBe(true);
    expect(b.paths.length).toBeGreaterThanOrEqual(2);
    expect(new Set(b.paths)).toEqual(new Set(["/health"]));

    // a stops: refused → weight 0 within fall × interval + timeout (plus the apply and print).
    a.stop();
    const stoppedAt = performance.now();
    await d.waitFor((t) => same(t, all(0, 5, "# health: a down (refused)")), 10_000, "a down");
    expect(performance.now() - stoppedAt).toBeLessThanOrEqual(FALL * INTERVAL + TIMEOUT + 250);
    expect(d.stderr.match(/health check: backend down.*/g)).toEqual([
      `health check: backend down after ${FALL} failed check(s) service=web backend=a target=127.0.0.1:${a.port} check=tcp reason=refused`,
    ]);
    let m = await scrape(metricsPort);
    // Only the checked backends have a series: not "off" (check: false), not "remote" (behind a gateway).
    expect(m.split("\n").filter((l) => l.startsWith("clusterf_backend_up{"))).toEqual([
      'clusterf_backend_up{service="web",backend="a"} 0',
      'clusterf_backend_up{service="web",backend="b"} 1',
    ]);
    expect(m).toContain("\nclusterf_health_targets 2\n");
    expect(sample(m, "clusterf_health_transitions_total", 'service="web",backend="a",to="down"')).toBe("1");
    expect(Number(sample(m, "clusterf_health_check_duration_seconds_count", 'type="tcp",result="fail"'))).toBeGreaterThanOrEqual(FALL);
    expect(Number(sample(m, "clusterf_health_check_duration_seconds_count", 'type="http",result="pass"'))).toBeGreaterThanOrEqual(2);

    // b answers 503: failing too.
    b.status = 503;
    await d.waitFor((t) => same(t, all(0, 0, "# health: a down (refused)", "# health: b down (status 503)")), 10_000, "b down");

    // a comes back on its port: weight 10 after rise passed checks.
    const a2 = tcpServer(a.port);
    cleanups.push(() => a2.stop());
    await d.waitFor((t) => same(t, all(10, 0, "", "# health: b down (status 503)")), 10_000, "a up");
    expect(d.stderr).toMatch(new RegExp(`health check: backend up after ${RISE} passed check\\(s\\) service=web backend=a target=127.0.0.1:${a.port} check=tcp reason=connected\n`));

    // b answers 200 again: ramped over its 2 s slow start: 1 at once, middle values, then 5.
    const tablesBefore = d.tables.length;
    b.status = 200;
    const bLine = (t: string[]) => t.find((l) => l.startsWith(`-> 127.0.0.1:${b.port} `))!;
    await d.waitFor((t) => bLine(t) === line(b.port, 1, "# health: b slow start"), 10_000, "b up at weight 1");
    const recovered = performance.now();
    await d.waitFor((t) => same(t, all(10, 5)), 10_000, "b up after its slow start");
    const ramp = performance.now() - recovered;
    expect(ramp).toBeGreaterThanOrEqual(2000 - 100);
    expect(ramp).toBeLessThanOrEqual(2000 + 500);
    const bLines = d.tables.slice(tablesBefore).map(bLine);
    bLines.splice(0, bLines.indexOf(line(b.port, 1, "# health: b slow start"))); // from the recovery on
    const distinct = bLines.filter((l, i) => l !== bLines[i - 1]);
    // The ramp reports every second: 1, then ceil(5 × 1/2) = 3, then 5 (a recompute for any other
    // reason in between shows the ramp's value at that moment: never lower, never 5 early).
    expect(distinct[0]).toBe(line(b.port, 1, "# health: b slow start"));
    expect(distinct).toContain(line(b.port, 3, "# health: b slow start"));
    expect(distinct.at(-1)).toBe(line(b.port, 5));
    const weights = distinct.map((l) => Number(l.split(" ")[3]));
    expect(weights).toEqual([...weights].sort((x, y) => x - y));
    expect(distinct.slice(0, -1).every((l) => l.endsWith("# health: b slow start"))).toBe(true);
    m = await scrape(metricsPort);
    expect(sample(m, "clusterf_backend_up", 'service="web",backend="a"')).toBe("1");
    expect(sample(m, "clusterf_health_transitions_total", 'service="web",backend="a",to="up"')).toBe("1");
    expect(sample(m, "clusterf_health_transitions_total", 'service="web",backend="b",to="down"')).toBe("1");
    // Every printed table kept the gateway's destination and the unchecked backend as configured.
    expect(d.tables.every((t) => t.includes("-> 192.0.2.254:80 Route 7 0 0") && t.includes(line(9, 3)))).toBe(true);
    expect(await d.stop("SIGTERM")).toBe(0);
  });

  test("-once runs no checks: the configured weights, and it says so", () => {
    const dir = writeTree(join(tmp, "once"), {
      "services/web/frontend": { ipv4: "192.0.2.1", tcp: 80, check: true },
      "services/web/backends/a": { ipv4: "127.0.0.1", tcp: 9 },
    });
    const r = runCli("clusterf-ipvs", [`-config-path=${dir}`, "-etcd-machines=", "-ipvs-mock", "-print", "-once"]);
    expect(r.code).toBe(0);
    expect(tableLines(r.stdout)).toEqual(["TCP 192.0.2.1:80 wlc", "-> 127.0.0.1:9 Masq 10 0 0"]);
    expect(r.stderr).toContain("once: health checks do not run with -once; the configured weights were programmed");
    expect(r.stderr).not.toContain("health check: backend");
  });
});
