import { spawnServer } from "./reaper.ts";
import { until } from "./until.ts";
// Test harness: a private Docker engine (Debian's dockerd, package docker.io) in a temp dir.
//
//   const why = dockerUnavailable();          // undefined, or why dockerd cannot run here
//   const d = await startDocker();            // d.endpoint = "unix://<tmp>/docker.sock"
//   await d.run(["run", "-d", "-l", "x=y", d.image]);   // the docker CLI against it
//   await d.kill(); await d.start();          // SIGKILL the daemon, start it again (same data)
//   await d.destroy();                        // containers, daemon, mounts, bridge, temp dir
//
// The daemon gets its own --data-root, --exec-root, socket and pidfile under the temp dir, its
// own bridge (a fresh cfbr* device on 198.51.100.0/24, TEST-NET-2), user-defined networks from
// 203.0.113.0/24 (TEST-NET-3), and no iptables rules. It runs under `setpriv --pdeathsig KILL`
// so it dies with the test process. The test image `clusterf-test:busybox` is imported from a
// root filesystem made of Debian's static busybox (no registry is needed). Storage: overlay2,
// or vfs when overlay2 cannot run a container here (CLUSTERF_DOCKER_STORAGE forces one).

import { existsSync, mkdirSync, rmdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, copyFileSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const DOCKERD = process.env.DOCKERD_BIN ?? "/usr/sbin/dockerd";
/** The Debian CLI (another `docker` earlier in PATH may not match the daemon). */
export const DOCKER_CLI = process.env.DOCKER_CLI ?? (existsSync("/usr/bin/docker") ? "/usr/bin/docker" : "docker");
export const BUSYBOX = process.env.BUSYBOX_BIN ?? "/bin/busybox";
export const IMAGE = "clusterf-test:busybox";
const TMP_PREFIX = "clusterf-docker-";
const BRIDGE_CIDR = "198.51.100.1/24";
const POOL = "base=203.0.113.0/24,size=28";

/** Why a private dockerd cannot run here (missing binary, not root), or undefined. */
export function dockerUnavailable(): string | undefined {
  if (!existsSync(DOCKERD)) return `${DOCKERD} not found (Debian package docker.io)`;
  if (!existsSync(DOCKER_CLI) && DOCKER_CLI !== "docker") return `${DOCKER_CLI} not found (Debian package docker.io)`;
  if (!existsSync(BUSYBOX)) return `${BUSYBOX} not found (Debian package busybox-static)`;
  if (process.getuid?.() !== 0) return "dockerd needs root";
  return undefined;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface DockerEngine {
  dir: string;
  socket: string;
  endpoint: string;
  image: string;
  storageDriver: string;
  logFile: string;
  readonly pid: number | null;
  /** The docker CLI against this daemon; `run` throws on a non-zero exit, `tryRun` does not. */
  run(args: string[], opts?: { stdin?: Uint8Array }): Promise<string>;
  tryRun(args: string[], opts?: { stdin?: Uint8Array }): Promise<RunResult>;
  /** SIGTERM and wait (the daemon stops its containers, as on a host shutdown). */
  stop(): Promise<void>;
  /** SIGKILL: no events, containers left to the next start. */
  kill(): Promise<void>;
  /** Start again on the same data; waits until the API answers. */
  start(): Promise<void>;
  destroy(): Promise<void>;
}


function sh(args: string[]): RunResult {
  const p = Bun.spawnSync(args, { stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

/** Pids of processes whose command line mentions `needle` (the shims and containerd of one test daemon). */
function pidsMentioning(needle: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${d}/cmdline`, "utf8").includes(needle)) out.push(Number(d));
    } catch {
      /* gone */
    }
  }
  return out;
}

/** Mount points at or under dir, deepest first. */
function mountsUnder(dir: string): string[] {
  const out: string[] = [];
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const mp = line.split(" ")[4];
    if (mp && (mp === dir || mp.startsWith(dir + "/"))) out.push(mp.replace(/\\040/g, " "));
  }
  return out.sort((a, b) => b.length - a.length);
}

/** The cgroup parent of a test daemon's containers (one per temp dir). */
function cgroupParent(dir: string): string {
  return `clusterf-test-${dir.slice(-6).replace(/[^a-zA-Z0-9]/g, "x")}`;
}

/** Every cgroup directory (all v1 controllers, and v2) named `parent`, with its sub-cgroups, deepest first. */
function cgroupDirs(parent: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    let entries: import("node:fs").Dirent[];
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) if (e.isDirectory()) walk(join(d, e.name));
    out.push(d);
  };
  const roots = ["/sys/fs/cgroup"];
  try {
    for (const e of readdirSync("/sys/fs/cgroup", { withFileTypes: true })) if (e.isDirectory()) roots.push(join("/sys/fs/cgroup", e.name));
  } catch {
    /* no cgroupfs */
  }
  for (const r of roots) if (existsSync(join(r, parent))) walk(join(r, parent));
  return out;
}

function killPids(pids: Iterable<number>): void {
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      /* gone */
    }
  }
}

/** Kills what a test daemon left (shims, the containers' processes), unmounts, removes. */
function cleanupDir(dir: string, bridge?: string): void {
  killPids(pidsMentioning(dir));
  const groups = cgroupDirs(cgroupParent(dir));
  const procs = new Set<number>();
  for (const g of groups) {
    try {
      for (const l of readFileSync(join(g, "cgroup.procs"), "utf8").split("\n")) if (/^\d+$/.test(l)) procs.add(Number(l));
    } catch {
      /* gone */
    }
  }
  killPids(procs);
  if (groups.length) Bun.sleepSync(100);
  for (const g of groups) {
    try {
      rmdirSync(g);
    } catch {
      /* still busy: left behind */
    }
  }
  for (const mp of mountsUnder(dir)) sh(["umount", "-l", mp]);
  rmSync(dir, { recursive: true, force: true });
  if (bridge) sh(["ip", "link", "del", bridge]);
}

/** Temp dirs of earlier test runs whose daemon is gone (a killed test process): cleaned up. */
function cleanupStale(): void {
  for (const name of readdirSync(tmpdir())) {
    if (!name.startsWith(TMP_PREFIX)) continue;
    const dir = join(tmpdir(), name);
    let alive = false;
    try {
      const pid = Number(readFileSync(join(dir, "dockerd.pid"), "utf8").trim());
      alive = pid > 0 && existsSync(`/proc/${pid}`) && readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(dir);
    } catch {
      /* no pidfile */
    }
    if (alive) continue;
    let bridge: string | undefined;
    try {
      bridge = readFileSync(join(dir, "bridge"), "utf8").trim() || undefined;
    } catch {
      /* none */
    }
    cleanupDir(dir, bridge);
  }
}

function makeRootfs(dir: string): void {
  mkdirSync(join(dir, "bin"), { recursive: true });
  for (const d of ["tmp", "etc", "proc", "sys", "dev", "www"]) mkdirSync(join(dir, d), { recursive: true });
  copyFileSync(BUSYBOX, join(dir, "bin", "busybox"));
  chmodSync(join(dir, "bin", "busybox"), 0o755);
  for (const cmd of ["sh", "sleep", "httpd", "test", "touch", "rm", "cat", "ls", "true", "false", "echo"]) symlinkSync("busybox", join(dir, "bin", cmd));
}

class Engine implements DockerEngine {
  socket: string;
  endpoint: string;
  image = IMAGE;
  logFile: string;
  private proc: ReturnType<typeof Bun.spawn> | null = null;

  constructor(
    readonly dir: string,
    readonly bridge: string,
    public storageDriver: string,
  ) {
    this.socket = join(dir, "docker.sock");
    this.endpoint = `unix://${this.socket}`;
    this.logFile = join(dir, "dockerd.log");
  }

  get pid(): number | null {
    return this.proc && this.proc.exitCode === null && this.proc.signalCode === null ? this.proc.pid : null;
  }

  async tryRun(args: string[], opts: { stdin?: Uint8Array } = {}): Promise<RunResult> {
    const p = Bun.spawn([DOCKER_CLI, "-H", this.endpoint, ...args], {
      stdin: opts.stdin ?? "ignore",
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, DOCKER_CONFIG: join(this.dir, "cli") },
    });
    const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    return { code, stdout, stderr };
  }

  async run(args: string[], opts: { stdin?: Uint8Array } = {}): Promise<string> {
    const r = await this.tryRun(args, opts);
    if (r.code !== 0) throw new Error(`docker ${args.join(" ")}: exit ${r.code}: ${r.stderr.trim()}`);
    return r.stdout.trim();
  }

  async start(): Promise<void> {
    if (this.pid) throw new Error("dockerd is already running");
    const args = [
      DOCKERD,
      "--host",
      this.endpoint,
      "--data-root",
      join(this.dir, "data"),
      "--exec-root",
      join(this.dir, "exec"),
      "--pidfile",
      join(this.dir, "dockerd.pid"),
      "--storage-driver",
      this.storageDriver,
      "--bridge",
      this.bridge,
      "--default-address-pool",
      POOL,
      "--iptables=false",
      "--ip6tables=false",
      "--ip-masq=false",
      "--ip-forward=false",
      "--shutdown-timeout=2",
      "--log-level=warn",
      "--cgroup-parent",
      cgroupParent(this.dir),
      "--config-file",
      join(this.dir, "daemon.json"),
    ];
    this.proc = spawnServer(args, this.logFile);
    const answers = async () => {
      if (!this.pid) throw new Error(`dockerd exited while starting: ${readFileSync(this.logFile, "utf8").split("\n").slice(-8).join("\n")}`);
      const r = await this.tryRun(["version", "--format", "{{.Server.Version}}"]).catch(() => undefined);
      return r?.code === 0;
    };
    await until(answers, 30_000, `dockerd to answer, see ${this.logFile}`, 100);
  }

  private async signal(sig: "SIGTERM" | "SIGKILL", timeoutMs: number): Promise<void> {
    const p = this.proc;
    if (!p || !this.pid) return;
    p.kill(sig);
    const timer = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
    await p.exited;
    clearTimeout(timer);
  }

  stop(): Promise<void> {
    return this.signal("SIGTERM", 20_000);
  }

  async kill(): Promise<void> {
    await this.signal("SIGKILL", 5000);
    // dockerd's containerd dies with it (pdeathsig); the shims and containers stay, as on a
    // crash. A new dockerd that found the old containerd's pid still alive (not yet reaped)
    // would wait for it instead of starting its own: wait until it is gone.
    const pidFile = join(this.dir, "exec", "containerd", "containerd.pid");
    try {
      const pid = Number(readFileSync(pidFile, "utf8").trim());
      await until(() => !(pid > 0 && existsSync(`/proc/${pid}`)), 5000, "the old containerd gone", 20).catch(() => {
        /* still there: the new dockerd reports it */
      });
    } catch {
      /* no pidfile */
    }
    rmSync(pidFile, { force: true });
  }

  async destroy(): Promise<void> {
    if (this.pid) {
      const ids = (await this.tryRun(["ps", "-aq"])).stdout.split(/\s+/).filter(Boolean);
      if (ids.length) await this.tryRun(["rm", "-f", ...ids]);
      await this.tryRun(["network", "prune", "-f"]);
      await this.stop();
    }
    if (process.env.KEEP_DOCKER_DIR) return;
    cleanupDir(this.dir, this.bridge);
  }
}

/** A private dockerd with the test image imported; throws (with the reason) when it cannot run one. */
export async function startDocker(): Promise<DockerEngine> {
  const why = dockerUnavailable();
  if (why) throw new Error(`cannot run dockerd: ${why}`);
  cleanupStale();
  const drivers = process.env.CLUSTERF_DOCKER_STORAGE ? [process.env.CLUSTERF_DOCKER_STORAGE] : ["overlay2", "vfs"];
  let lastError: unknown;
  for (const driver of drivers) {
    const dir = mkdtempSync(join(tmpdir(), TMP_PREFIX));
    const bridge = `cfbr${dir.slice(-6).replace(/[^a-zA-Z0-9]/g, "x")}`.slice(0, 15);
    Bun.write(join(dir, "bridge"), bridge);
    await Bun.write(join(dir, "daemon.json"), "{}\n");
    for (const cmd of [
      ["ip", "link", "add", bridge, "type", "bridge"],
      ["ip", "addr", "add", BRIDGE_CIDR, "dev", bridge],
      ["ip", "link", "set", bridge, "up"],
    ]) {
      const r = sh(cmd);
      if (r.code !== 0) {
        cleanupDir(dir, bridge);
        throw new Error(`${cmd.join(" ")}: ${r.stderr.trim()}`);
      }
    }
    const e = new Engine(dir, bridge, driver);
    try {
      await e.start();
      const rootfs = join(dir, "rootfs");
      makeRootfs(rootfs);
      const tar = Bun.spawnSync(["tar", "-C", rootfs, "-c", "."], { stdout: "pipe" });
      if (tar.exitCode !== 0) throw new Error("tar of the busybox rootfs failed");
      await e.run(["import", "-c", 'CMD ["/bin/sleep","3600"]', "-", IMAGE], { stdin: tar.stdout });
      // A smoke test: can this daemon run a container here at all?
      const out = await e.run(["run", "--rm", "--network", "none", IMAGE, "/bin/echo", "ok"]);
      if (out !== "ok") throw new Error(`smoke container printed ${JSON.stringify(out)}`);
      return e;
    } catch (err) {
      lastError = err;
      const log = existsSync(e.logFile) ? readFileSync(e.logFile, "utf8").split("\n").slice(-5).join("\n") : "";
      await e.destroy().catch(() => {});
      lastError = new Error(`dockerd with storage driver ${driver}: ${(err as Error).message}${log ? `\n${log}` : ""}`);
    }
  }
  throw lastError;
}

/** An image with labels, EXPOSE and other Dockerfile instructions, from the test image. */
export async function labelledImage(d: DockerEngine, tag: string, changes: string[]): Promise<void> {
  const rootfs = join(d.dir, "rootfs");
  const tar = Bun.spawnSync(["tar", "-C", rootfs, "-c", "."], { stdout: "pipe" });
  await d.run(["import", ...changes.flatMap((c) => ["-c", c]), "-c", 'CMD ["/bin/sleep","3600"]', "-", tag], { stdin: tar.stdout });
}
