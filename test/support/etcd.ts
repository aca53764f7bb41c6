import { spawnServer } from "./reaper.ts";
import { until } from "./until.ts";
// Test harness: real etcd processes (the Debian etcd-server binary) on loopback, in temp dirs.
//
//   const e = await startEtcd();            // one member, e.clientUrl = "http://127.0.0.1:<port>"
//   await e.kill(); await e.restart();      // SIGKILL, then start again on the same ports and data
//   const c = await startEtcdCluster(3);    // three members; c.leader(), c.members[i].kill()…
//
// Every process is started through `setpriv --pdeathsig KILL`, so it dies with the test process
// even when that one is killed; live processes are also killed at "exit". etcd's own output goes
// to `<dataDir>/../etcd-<name>.log`, never to the console. Temp dirs are removed by stop().

import { mkdtempSync, rmSync, existsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer } from "node:net";

const ETCD_BIN = process.env.ETCD_BIN ?? "/usr/bin/etcd";


/** Free TCP ports on 127.0.0.1, found by binding port 0 (all held at once, so they differ). */
export async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<import("node:net").Server>((resolve, reject) => {
          const s = createServer();
          s.once("error", reject);
          s.listen(0, "127.0.0.1", () => resolve(s));
        }),
    ),
  );
  const ports = servers.map((s) => (s.address() as import("node:net").AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  return ports;
}

export interface EtcdMember {
  name: string;
  clientUrl: string;
  peerUrl: string;
  dataDir: string;
  logFile: string;
  /** The pid of the running process, or null when it is not running. */
  readonly pid: number | null;
  readonly running: boolean;
  /** SIGTERM and wait for the exit (data kept, so restart() can bring it back). */
  stop(): Promise<void>;
  /** SIGKILL and wait for the exit (data kept). */
  kill(): Promise<void>;
  /** SIGSTOP: the process hangs, its sockets stay open (a "frozen" server). */
  pause(): void;
  /** SIGCONT after pause(). */
  resume(): void;
  /** Start again on the same ports and data dir; waits until it answers (healthy). */
  restart(): Promise<void>;
}

export interface Etcd extends EtcdMember {
  /** The certificates, when started with tls. */
  certs?: TestCerts;
  /** Stop the process for good and remove the temp dir. */
  destroy(): Promise<void>;
}

/** PEM files for a TLS etcd: a CA, a server certificate for 127.0.0.1, a client certificate. */
export interface TestCerts {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/** The subjectAltName of the test server certificate, unless a test asks for another one. */
export const DEFAULT_SERVER_SAN = "IP:127.0.0.1,DNS:localhost";

/**
 * Makes a throwaway CA and certificates with openssl, in `dir`. `serverSan` is the server
 * certificate's subjectAltName (its CN is 127.0.0.1 in every case, which must not count for an
 * IP address).
 */
export function makeTestCerts(dir: string, serverSan = DEFAULT_SERVER_SAN): TestCerts {
  const f = (n: string) => join(dir, n);
  const run = (args: string[]) => {
    const r = Bun.spawnSync(["openssl", ...args], { stdout: "ignore", stderr: "pipe" });
    if (r.exitCode !== 0) throw new Error(`openssl ${args[0]} failed: ${r.stderr.toString()}`);
  };
  run(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=clusterf-test-ca", "-keyout", f("ca.key"), "-out", f("ca.pem")]);
  for (const who of ["server", "client"]) {
    const ext = f(`${who}.ext`);
    writeFileSync(ext, `subjectAltName=${who === "server" ? serverSan : DEFAULT_SERVER_SAN}\nextendedKeyUsage=serverAuth,clientAuth\n`);
    run(["req", "-newkey", "rsa:2048", "-nodes", "-subj", `/CN=${who === "server" ? "127.0.0.1" : "clusterf"}`, "-keyout", f(`${who}.key`), "-out", f(`${who}.csr`)]);
    run(["x509", "-req", "-in", f(`${who}.csr`), "-CA", f("ca.pem"), "-CAkey", f("ca.key"), "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", f(`${who}.pem`)]);
  }
  return {
    ca: f("ca.pem"),
    serverCert: f("server.pem"),
    serverKey: f("server.key"),
    clientCert: f("client.pem"),
    clientKey: f("client.key"),
  };
}

interface MemberSpec {
  name: string;
  clientPort: number;
  peerPort: number;
  dataDir: string;
  logFile: string;
  initialCluster: string;
  clusterToken: string;
  /** Serve clients over TLS with these files, and require client certificates. */
  tls?: TestCerts;
}

class Member implements EtcdMember {
  name: string;
  clientUrl: string;
  peerUrl: string;
  dataDir: string;
  logFile: string;
  private proc: ReturnType<typeof Bun.spawn> | null = null;

  constructor(private spec: MemberSpec) {
    this.name = spec.name;
    this.clientUrl = `${spec.tls ? "https" : "http"}://127.0.0.1:${spec.clientPort}`;
    this.peerUrl = `http://127.0.0.1:${spec.peerPort}`;
    this.dataDir = spec.dataDir;
    this.logFile = spec.logFile;
  }

  get pid(): number | null {
    return this.proc && this.proc.exitCode === null && this.proc.signalCode === null ? this.proc.pid : null;
  }
  get running(): boolean {
    return this.pid !== null;
  }

  spawn(): void {
    if (this.running) throw new Error(`etcd ${this.name} is already running`);
    const args = [
      ETCD_BIN,
      "--name",
      this.name,
      "--data-dir",
      this.dataDir,
      "--listen-client-urls",
      this.clientUrl,
      "--advertise-client-urls",
      this.clientUrl,
      "--listen-peer-urls",
      this.peerUrl,
      "--initial-advertise-peer-urls",
      this.peerUrl,
      "--initial-cluster",
      this.spec.initialCluster,
      "--initial-cluster-state",
      "new",
      "--initial-cluster-token",
      this.spec.clusterToken,
      // Fast elections on loopback keep the leader-failover tests short.
      "--heartbeat-interval",
      "50",
      "--election-timeout",
      "500",
      ...(this.spec.tls
        ? [
            "--cert-file",
            this.spec.tls.serverCert,
            "--key-file",
            this.spec.tls.serverKey,
            "--trusted-ca-file",
            this.spec.tls.ca,
            "--client-cert-auth",
          ]
        : []),
      "--logger",
      "zap",
      "--log-outputs",
      "stderr",
    ];
    this.proc = spawnServer(args, this.logFile);
  }

  private async signal(sig: "SIGTERM" | "SIGKILL"): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    p.kill(sig);
    // A paused process does not act on SIGTERM until continued.
    try {
      process.kill(p.pid, "SIGCONT");
    } catch {
      /* gone */
    }
    await p.exited;
  }

  async stop(): Promise<void> {
    const p = this.proc;
    if (!p) return;
    const timer = setTimeout(() => p.kill("SIGKILL"), 5000);
    await this.signal("SIGTERM");
    clearTimeout(timer);
  }

  kill(): Promise<void> {
    return this.signal("SIGKILL");
  }

  pause(): void {
    if (this.proc && this.running) process.kill(this.proc.pid, "SIGSTOP");
  }

  resume(): void {
    if (this.proc && this.running) process.kill(this.proc.pid, "SIGCONT");
  }

  async restart(): Promise<void> {
    await this.stop();
    this.spawn();
    await this.waitAnswering();
  }

  /**
   * Bun's fetch TLS options for this member's client URL (CA and client certificate). The chain
   * is checked, not the name: these probes only ask whether the member is up, also when a test
   * gives it a certificate for another address on purpose.
   */
  fetchTls(): object {
    const t = this.spec.tls;
    if (!t) return {};
    return { tls: { ca: Bun.file(t.ca), cert: Bun.file(t.clientCert), key: Bun.file(t.clientKey), checkServerIdentity: () => undefined } };
  }

  /** Waits until the member answers on its client URL (a /version GET). */
  waitAnswering(timeoutMs = 15000): Promise<void> {
    return this.poll("/version", 500, (r) => r.ok, "to answer", timeoutMs);
  }

  /** Waits until /health says true: the member is up and sees a leader. */
  waitHealthy(timeoutMs = 15000): Promise<void> {
    return this.poll("/health", 1000, (r, body) => r.ok && /"health":\s*"true"/.test(body), "healthy", timeoutMs);
  }

  /** GETs `path` until `ok`; throws at once when the member has exited. */
  private async poll(path: string, requestMs: number, ok: (r: Response, body: string) => boolean, what: string, timeoutMs: number): Promise<void> {
    let last = "";
    const answered = async () => {
      if (!this.running) throw new Error(`etcd ${this.name} exited while starting, see ${this.logFile}`);
      try {
        const r = await fetch(`${this.clientUrl}${path}`, { signal: AbortSignal.timeout(requestMs), ...this.fetchTls() });
        const body = await r.text();
        last = `HTTP ${r.status} ${body}`;
        return ok(r, body);
      } catch (e) {
        last = String(e);
        return false;
      }
    };
    await until(answered, timeoutMs, () => `etcd ${this.name} ${what} (${last}), see ${this.logFile}`, 50);
  }
}

function tempDir(parent = tmpdir()): string {
  return mkdtempSync(join(parent, "clusterf-etcd-"));
}

/**
 * One etcd member on free loopback ports, in a fresh temp dir; resolves once it is healthy.
 * `tls: true` serves clients over https with certificates made in the temp dir (`e.certs`),
 * client certificates required; `serverSan` replaces the server certificate's subjectAltName.
 */
export async function startEtcd(opts: { tls?: boolean; serverSan?: string } = {}): Promise<Etcd> {
  const dir = tempDir();
  const certs = opts.tls ? makeTestCerts(dir, opts.serverSan) : undefined;
  const [clientPort, peerPort] = await freePorts(2);
  const name = "etcd0";
  const m = new Member({
    name,
    clientPort: clientPort!,
    peerPort: peerPort!,
    dataDir: join(dir, `${name}.data`),
    logFile: join(dir, `etcd-${name}.log`),
    initialCluster: `${name}=http://127.0.0.1:${peerPort}`,
    clusterToken: `clusterf-test-${peerPort}`,
    tls: certs,
  });
  m.spawn();
  try {
    await m.waitHealthy();
  } catch (e) {
    await m.kill();
    throw e;
  }
  return Object.assign(m, {
    certs,
    async destroy() {
      await m.kill();
      if (!process.env.KEEP_ETCD_LOGS) rmSync(dir, { recursive: true, force: true });
    },
  }) as Etcd;
}

export interface EtcdCluster {
  members: EtcdMember[];
  /** All client URLs, for a client's endpoint list. */
  clientUrls: string[];
  dir: string;
  /** The member that is leader now (asked over the v3 JSON gateway), waiting up to timeoutMs for one. */
  leader(timeoutMs?: number): Promise<EtcdMember>;
  /** Kill (SIGKILL) the current leader and return it. */
  killLeader(): Promise<EtcdMember>;
  /** Restart a stopped member (by index or object) and wait until it has rejoined. */
  restartMember(m: number | EtcdMember): Promise<void>;
  /** Kill every member and remove the temp dir. */
  destroy(): Promise<void>;
}

async function memberStatus(m: EtcdMember): Promise<{ memberId: string; leader: string } | null> {
  if (!m.running) return null;
  try {
    const r = await fetch(`${m.clientUrl}/v3/maintenance/status`, {
      method: "POST",
      body: "{}",
      signal: AbortSignal.timeout(1000),
    });
    if (!r.ok) return null;
    const s = (await r.json()) as { header?: { member_id?: string }; leader?: string };
    if (!s.header?.member_id || !s.leader || s.leader === "0") return null;
    return { memberId: s.header.member_id, leader: s.leader };
  } catch {
    return null;
  }
}

/**
 * An n-member cluster (default 3) on loopback; resolves once every member is healthy. `parentDir`:
 * where its temp dir goes (the fleet bench keeps the members' data in memory).
 */
export async function startEtcdCluster(n = 3, opts: { parentDir?: string } = {}): Promise<EtcdCluster> {
  const dir = tempDir(opts.parentDir);
  const ports = await freePorts(2 * n);
  const token = `clusterf-test-${ports[0]}`;
  const names = Array.from({ length: n }, (_, i) => `etcd${i}`);
  const initialCluster = names.map((nm, i) => `${nm}=http://127.0.0.1:${ports[2 * i + 1]}`).join(",");
  const members = names.map(
    (name, i) =>
      new Member({
        name,
        clientPort: ports[2 * i]!,
        peerPort: ports[2 * i + 1]!,
        dataDir: join(dir, `${name}.data`),
        logFile: join(dir, `etcd-${name}.log`),
        initialCluster,
        clusterToken: token,
      }),
  );
  const destroy = async () => {
    await Promise.all(members.map((m) => m.kill()));
    if (!process.env.KEEP_ETCD_LOGS && existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (const m of members) m.spawn();
    await Promise.all(members.map((m) => m.waitHealthy(20000)));
  } catch (e) {
    await destroy();
    throw e;
  }

  const leader = async (timeoutMs = 10000): Promise<EtcdMember> => {
    const elected = async () => {
      const st = await Promise.all(members.map(memberStatus));
      return members.find((_, i) => st[i] && st[i]!.memberId === st[i]!.leader);
    };
    return await until(elected, timeoutMs, "an etcd leader", 50);
  };

  return {
    members,
    clientUrls: members.map((m) => m.clientUrl),
    dir,
    leader,
    async killLeader() {
      const l = await leader();
      await l.kill();
      return l;
    },
    async restartMember(m) {
      const mem = (typeof m === "number" ? members[m] : m) as Member;
      await mem.restart();
    },
    destroy,
  };
}

/** Turns etcd's authentication on: a root user, and a user that may only read under /clusterf/. */
export function enableAuth(ctl: (...args: string[]) => unknown, rootPassword: string, reader: { name: string; password: string }): void {
  ctl("user", "add", `root:${rootPassword}`);
  ctl("role", "add", "root");
  ctl("user", "grant-role", "root", "root");
  ctl("user", "add", `${reader.name}:${reader.password}`);
  ctl("role", "add", reader.name);
  ctl("role", "grant-permission", reader.name, "--prefix=true", "read", "/clusterf/");
  ctl("user", "grant-role", reader.name, reader.name);
  ctl("auth", "enable");
}

/**
 * etcdctl (v3 API) against `endpoints`: its stdout, or an error with its stderr. `via` runs it
 * through another command first (`ip netns exec NS` in the kernel tests).
 */
export function etcdctl(endpoints: string, args: string[], via: string[] = []): string {
  const p = Bun.spawnSync([...via, "etcdctl", `--endpoints=${endpoints}`, "--command-timeout=3s", ...args], {
    env: { ...process.env, ETCDCTL_API: "3" },
    stdout: "pipe",
    stderr: "pipe",
  });
  if (p.exitCode !== 0) throw new Error(`etcdctl ${args.join(" ")}: ${p.stderr.toString()}`);
  return p.stdout.toString();
}
