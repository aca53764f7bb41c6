// The .deb and .rpm, built here by scripts/package.sh (fast compression, into a temp dir):
// their contents, conffiles and dependencies, the units through systemd-analyze verify, lintian
// on the .deb, a real dpkg install/upgrade/remove/purge into an empty root, an rpm install into
// an empty root, the rpm scriptlets against a stand-in systemctl, and the installed binaries:
// -help, the example tree, the default flags (file-only mode), and etcd with the source tree
// out of sight.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { startEtcd, type Etcd } from "./support/etcd.ts";
import { until, withStderr } from "./support/until.ts";

const ROOT = resolve(import.meta.dir, "..");
const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version.replace("-", "~");
const IS_ROOT = process.getuid?.() === 0;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}
function run(cmd: string[], opts: { env?: Record<string, string>; cwd?: string; stdin?: string } = {}): Run {
  const r = Bun.spawnSync(cmd, {
    cwd: opts.cwd ?? ROOT,
    env: { ...process.env, ...opts.env },
    stdin: opts.stdin === undefined ? "ignore" : Buffer.from(opts.stdin),
    stdout: "pipe",
    stderr: "pipe",
  });
  return { code: r.exitCode ?? -1, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}
function ok(cmd: string[], opts: Parameters<typeof run>[1] = {}): Run {
  const r = run(cmd, opts);
  if (r.code !== 0) throw new Error(`${cmd.join(" ")} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r;
}

let work = "";
let deb = "";
let rpm = "";
let debX = ""; // dpkg-deb -x of the .deb
let rpmX = ""; // rpm2archive of the .rpm, unpacked
let debRoot = ""; // dpkg --root install
let rpmRoot = ""; // rpm --root install
let commands: string[] = [];

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "clusterf-pkg-"));
  const started = Date.now();
  const r = run(["bash", "scripts/package.sh"], { env: { CLUSTERF_PKG_COMPRESSION: "fast", CLUSTERF_PKG_DIST: join(work, "dist") } });
  if (r.code !== 0) throw new Error(`scripts/package.sh exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  const lines = r.stdout.trim().split("\n");
  [deb, rpm] = lines.slice(-2) as [string, string];
  console.error(`packaging: scripts/package.sh took ${((Date.now() - started) / 1000).toFixed(1)}s`);
  debX = join(work, "deb-x");
  ok(["dpkg-deb", "-x", deb, debX]);
  rpmX = join(work, "rpm-x");
  mkdirSync(rpmX);
  ok(["cp", rpm, join(work, "x.rpm")]);
  ok(["rpm2archive", join(work, "x.rpm")]); // writes x.rpm.tgz
  ok(["tar", "-xzf", join(work, "x.rpm.tgz"), "-C", rpmX]);
  commands = existsSync(join(ROOT, "src/cli/clusterf-docker.ts")) ? ["clusterf-ipvs", "clusterf-docker"] : ["clusterf-ipvs"];
}, 600_000);

afterAll(() => {
  if (work && !process.env.KEEP_PKG) rmSync(work, { recursive: true, force: true });
});

describe("package files", () => {
  test("names carry the package.json version", () => {
    expect(deb).toBe(join(work, "dist", `clusterf_${VERSION}_amd64.deb`));
    expect(rpm).toBe(join(work, "dist", `clusterf-${VERSION}-1.x86_64.rpm`));
  });

  test(".deb: every file in place, conffiles, dependencies, maintainer scripts", () => {
    const list = ok(["dpkg-deb", "-c", deb]).stdout;
    const paths = new Map<string, string>(); // path -> tar line
    for (const line of list.trim().split("\n")) {
      const m = /^(\S+)\s+root\/root\s+\d+\s+\S+\s+\S+\s+\.(\/\S*?)\/?(?: -> (\S+))?$/.exec(line);
      expect(m, line).not.toBeNull();
      paths.set(m![2]!, line);
    }
    const want = [
      "/usr/lib/clusterf/clusterf",
      "/etc/clusterf/.README",
      "/etc/clusterf/services",
      "/etc/clusterf/routes",
      "/usr/share/doc/clusterf/copyright",
      "/usr/share/doc/clusterf/changelog.gz",
      "/usr/share/doc/clusterf/README.md.gz",
      "/usr/share/doc/clusterf/examples/services/web/frontend.json",
      "/usr/share/lintian/overrides/clusterf",
      ...commands.flatMap((c) => [`/usr/bin/${c}`, `/lib/systemd/system/${c}.service`, `/etc/default/${c}`, `/usr/share/man/man8/${c}.8.gz`]),
    ];
    for (const p of want) expect(paths.has(p), p).toBe(true);
    expect(paths.get("/usr/lib/clusterf/clusterf")).toMatch(/^-rwxr-xr-x /);
    for (const c of commands) expect(paths.get(`/usr/bin/${c}`)).toMatch(/^lrwxrwxrwx .* -> \.\.\/lib\/clusterf\/clusterf$/);
    // The flags files may hold ETCD_PASSWORD: root only.
    for (const c of commands) expect(paths.get(`/etc/default/${c}`)).toMatch(/^-rw------- /);
    // Nothing live under services/ or routes/: the examples are documentation only.
    expect([...paths.keys()].filter((p) => /^\/etc\/clusterf\/(services|routes)\/./.test(p))).toEqual([]);

    const ctl = join(work, "deb-ctl");
    ok(["dpkg-deb", "-e", deb, ctl]);
    expect(readFileSync(join(ctl, "conffiles"), "utf8").trim().split("\n").sort()).toEqual(
      [...commands.map((c) => `/etc/default/${c}`), "/etc/clusterf/.README"].sort(),
    );
    const depends = ok(["dpkg-deb", "-f", deb, "Depends"]).stdout.trim();
    expect(depends).toMatch(/^libc6 \(>= 2\.\d+\), libnl-3-200, libnl-genl-3-200$/);
    for (const s of ["postinst", "prerm", "postrm"]) {
      const text = readFileSync(join(ctl, s), "utf8").replace(/^\s*#.*$/gm, "");
      expect(lstatSync(join(ctl, s)).mode & 0o777).toBe(0o755);
      expect(run(["sh", "-n", join(ctl, s)]).code).toBe(0);
      // Never flush, never start a stopped daemon.
      expect(text).not.toMatch(/ipvsadm|flush|\bstart\b/);
    }
  });

  test(".rpm: every file in place, config files, requirements, no strip", () => {
    const files = ok(["rpm", "-qlp", rpm]).stdout.trim().split("\n");
    const want = [
      "/usr/lib/clusterf/clusterf",
      "/etc/clusterf/.README",
      "/etc/clusterf/services",
      "/etc/clusterf/routes",
      "/usr/share/licenses/clusterf/copyright",
      "/usr/share/doc/clusterf/README.md",
      "/usr/share/doc/clusterf/examples/services/web/frontend.json",
      ...commands.flatMap((c) => [`/usr/bin/${c}`, `/usr/lib/systemd/system/${c}.service`, `/etc/sysconfig/${c}`, `/usr/share/man/man8/${c}.8.gz`]),
    ];
    for (const p of want) expect(files, p).toContain(p);
    expect(files.filter((p) => /^\/etc\/clusterf\/(services|routes)\/./.test(p))).toEqual([]);
    expect(files.filter((p) => p.startsWith("/usr/lib/.build-id") || p.includes("debug"))).toEqual([]);
    const config = ok(["rpm", "-qcp", rpm]).stdout.trim().split("\n").sort();
    expect(config).toEqual([...commands.map((c) => `/etc/sysconfig/${c}`), "/etc/clusterf/.README"].sort());
    // The flags files are %config(noreplace): an operator's edits survive an upgrade.
    const flags = ok(["rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\\n]", rpm]).stdout;
    for (const c of commands) expect(flags).toMatch(new RegExp(`^/etc/sysconfig/${c} cn$`, "m"));
    const modes = ok(["rpm", "-qlvp", rpm]).stdout;
    for (const c of commands) expect(modes).toMatch(new RegExp(`^-rw------- .* /etc/sysconfig/${c}$`, "m"));
    const requires = ok(["rpm", "-qp", "--requires", rpm]).stdout;
    expect(requires).toContain("libnl-3.so.200()(64bit)");
    expect(requires).toContain("libnl-genl-3.so.200()(64bit)");
    expect(requires).toMatch(/^libc\.so\.6\(GLIBC_2\.\d+\)\(64bit\)$/m);
    // The binary in the package is byte for byte the one the .deb carries (never stripped).
    const size = (p: string) => lstatSync(p).size;
    const sizes = ok(["rpm", "-qp", "--qf", "[%{FILENAMES} %{FILESIZES}\\n]", rpm]).stdout;
    expect(sizes).toContain(`/usr/lib/clusterf/clusterf ${size(join(debX, "usr/lib/clusterf/clusterf"))}\n`);
  });

  test("units: hardening, restart, flags file per packaging (/etc/default, /etc/sysconfig)", () => {
    for (const c of commands) {
      const debUnit = readFileSync(join(debX, "lib/systemd/system", `${c}.service`), "utf8");
      const rpmUnit = readFileSync(join(rpmX, "usr/lib/systemd/system", `${c}.service`), "utf8");
      const envVar = `${c.replace("-", "_").toUpperCase()}_OPTS`;
      expect(debUnit).toContain(`\nEnvironmentFile=-/etc/default/${c}\n`);
      expect(rpmUnit).toContain(`\nEnvironmentFile=-/etc/sysconfig/${c}\n`);
      expect(rpmUnit.replace(/\/etc\/sysconfig\//g, "/etc/default/")).toBe(debUnit);
      for (const line of [
        `ExecStart=/usr/bin/${c} $${envVar}`,
        "ExecReload=/bin/kill -HUP $MAINPID", // systemctl reload: both daemons re-read at SIGHUP
        "Restart=always",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=clusterf",
        "After=network-online.target",
        "Wants=network-online.target",
        "WantedBy=multi-user.target",
      ]) {
        expect(debUnit.split("\n").some((l) => l === line || (line.startsWith("After=") && l.startsWith(line))), `${c}: ${line}`).toBe(true);
      }
    }
    const ipvs = readFileSync(join(debX, "lib/systemd/system/clusterf-ipvs.service"), "utf8");
    expect(ipvs).toMatch(/^CapabilityBoundingSet=CAP_NET_ADMIN$/m);
    expect(ipvs).toMatch(/^AmbientCapabilities=CAP_NET_ADMIN$/m);
    expect(ipvs).toMatch(/^ExecStartPre=-\+\/sbin\/modprobe ip_vs$/m);
    if (commands.includes("clusterf-docker")) {
      expect(readFileSync(join(debX, "lib/systemd/system/clusterf-docker.service"), "utf8")).toMatch(/^CapabilityBoundingSet=$/m);
    }
  });
});

describe("package checks", () => {
  // systemd-analyze verify wants the unit's binaries and the units it depends on
  // (sysinit.target…) under the same root: the package's root plus this host's units.
  function verifyUnits(root: string): Run {
    mkdirSync(join(root, "usr/lib/systemd/system"), { recursive: true });
    ok(["cp", "-rn", "/lib/systemd/system/.", join(root, "usr/lib/systemd/system/")]);
    // ExecReload's /bin/kill is the system's (procps or util-linux), not the package's
    mkdirSync(join(root, "bin"), { recursive: true });
    ok(["cp", "-L", "/bin/kill", join(root, "bin/kill")]);
    return run(["systemd-analyze", "verify", `--root=${root}`, ...commands.map((c) => `${c}.service`)], {
      env: { MANPATH: join(root, "usr/share/man"), SYSTEMD_LOG_COLOR: "0" },
    });
  }

  test("systemd-analyze verify accepts the .deb's units", () => {
    const root = join(work, "verify-deb");
    ok(["cp", "-a", `${debX}/.`, root]);
    const r = verifyUnits(root);
    expect(r.stderr.trim()).toBe("");
    expect(r.code).toBe(0);
  });

  test("systemd-analyze verify accepts the .rpm's units", () => {
    const root = join(work, "verify-rpm");
    ok(["cp", "-a", `${rpmX}/.`, root]);
    const r = verifyUnits(root);
    expect(r.stderr.trim()).toBe("");
    expect(r.code).toBe(0);
  });

  test("systemd-analyze verify catches a broken unit (the check itself works)", () => {
    const root = join(work, "verify-bad");
    ok(["cp", "-a", `${debX}/.`, root]);
    rmSync(join(root, "usr/lib/clusterf/clusterf"));
    const r = verifyUnits(root);
    expect(r.stderr).toContain("/usr/bin/clusterf-ipvs is not executable");
    expect(r.code).not.toBe(0);
  });

  test(
    "lintian: no errors on the .deb",
    () => {
      const r = run(["lintian", ...(IS_ROOT ? ["--allow-root"] : []), "--tag-display-limit", "0", deb]);
      const errors = r.stdout.split("\n").filter((l) => l.startsWith("E:"));
      expect(errors).toEqual([]);
      // Overrides that no longer match anything would hide nothing and should go.
      expect(r.stdout).not.toContain("unused-override");
      expect(r.stderr).not.toMatch(/error|fail/i);
    },
    180_000,
  );
});

describe("installed", () => {
  // The installed daemons run from the root they were installed into.
  const bin = (root: string, c: string) => join(root, "usr/bin", c);

  function checkRuns(root: string, defaultsDir: string): void {
    for (const c of commands) {
      const help = run([bin(root, c), "-help"]);
      expect(help.code, help.stderr).toBe(0);
      expect(help.stdout + help.stderr).toContain(`Usage: ${c} [flags]`);
    }
    // The example tree, printed as ipvsadm -Ln would.
    const ex = run([bin(root, "clusterf-ipvs"), "-once", "-ipvs-mock", "-print", "-etcd-machines=", `-config-path=${join(root, "usr/share/doc/clusterf/examples")}`]);
    expect(ex.code, ex.stderr).toBe(0);
    const table = ex.stdout.trim().split("\n");
    expect(table.slice(0, 3)).toEqual([
      "IP Virtual Server version 1.2.1 (size=4096)",
      "Prot LocalAddress:Port Scheduler Flags",
      "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
    ]);
    expect(table.length).toBeGreaterThan(3);
    // The same table as the daemon run from source prints for the same tree.
    const fromSource = ok([join(ROOT, "bin/clusterf-ipvs"), "-once", "-ipvs-mock", "-print", "-etcd-machines=", `-config-path=${join(ROOT, "config.example")}`]);
    expect(ex.stdout).toBe(fromSource.stdout);
    expect(ex.stderr).not.toMatch(/^(WARN|ERROR)/m);

    // The default flags, as the unit passes them (file-only mode from /etc/clusterf, here under
    // the root): no etcd, no warning (the .README is ignored), an empty table, status 0.
    const opts = ok(["sh", "-c", '. "$1" && printf %s "$CLUSTERF_IPVS_OPTS"', "sh", join(root, defaultsDir, "clusterf-ipvs")]).stdout;
    expect(opts).toContain("-etcd-machines=");
    const def = run([bin(root, "clusterf-ipvs"), ...opts.split(/\s+/).filter(Boolean), "-once", "-ipvs-mock", "-print", `-config-path=${join(root, "etc/clusterf")}`]);
    expect(def.code, def.stderr).toBe(0);
    expect(def.stderr).not.toMatch(/etcd/i);
    expect(def.stderr).not.toMatch(/^(WARN|ERROR)/m);
    expect(def.stdout.trim().split("\n")).toHaveLength(3);
    if (commands.includes("clusterf-docker")) {
      // The shipped clusterf-docker flags parse (a bad flag would exit 2 before -help).
      const dopts = ok(["sh", "-c", '. "$1" && printf %s "$CLUSTERF_DOCKER_OPTS"', "sh", join(root, defaultsDir, "clusterf-docker")]).stdout;
      const d = run([bin(root, "clusterf-docker"), ...dopts.split(/\s+/).filter(Boolean), "-help"]);
      expect(d.code, d.stderr).toBe(0);
    }
  }

  // dpkg on the root, its log kept there too (not in this host's /var/log/dpkg.log).
  const dpkgRoot = (args: string[]) =>
    ok(["dpkg", `--root=${debRoot}`, `--log=${join(debRoot, "var/log/dpkg.log")}`, "--force-script-chrootless", ...args]);

  test("the .deb installs into an empty root with dpkg, enables clusterf-ipvs only, and runs", () => {
    debRoot = join(work, "deb-root");
    mkdirSync(join(debRoot, "var/lib/dpkg/info"), { recursive: true });
    mkdirSync(join(debRoot, "var/lib/dpkg/updates"));
    writeFileSync(join(debRoot, "var/lib/dpkg/status"), "");
    mkdirSync(join(debRoot, "var/log"));
    dpkgRoot(["--force-depends", "-i", deb]);
    expect(ok(["dpkg-query", `--root=${debRoot}`, "-W", "-f", "${Status} ${Version}", "clusterf"]).stdout).toBe(`install ok installed ${VERSION}`);
    const wants = join(debRoot, "etc/systemd/system/multi-user.target.wants");
    expect(readlinkSync(join(wants, "clusterf-ipvs.service"))).toBe("/lib/systemd/system/clusterf-ipvs.service");
    expect(existsSync(join(wants, "clusterf-docker.service"))).toBe(false);
    // Enabled, not started: nothing ran, so no state yet.
    expect(existsSync(join(debRoot, "var/lib/clusterf"))).toBe(false);
    checkRuns(debRoot, "etc/default");
  });

  test("the .deb upgrades in place, keeps edited flags, and removal and purge never touch an operator's config", () => {
    if (!debRoot) throw new Error("needs the install test");
    const flags = join(debRoot, "etc/default/clusterf-ipvs");
    writeFileSync(flags, readFileSync(flags, "utf8") + "# edited by the operator\n");
    mkdirSync(join(debRoot, "etc/clusterf/services/mine"));
    writeFileSync(join(debRoot, "etc/clusterf/services/mine/frontend"), '{"ipv4": "192.0.2.1", "tcp": 80}\n');
    mkdirSync(join(debRoot, "var/lib/clusterf"));
    writeFileSync(join(debRoot, "var/lib/clusterf/ipvs-owned.json"), "{}\n");
    // The same version again runs postinst as an upgrade ("configure <old version>").
    dpkgRoot(["--force-depends", "--force-confold", "-i", deb]);
    expect(readFileSync(flags, "utf8")).toContain("# edited by the operator");
    dpkgRoot(["-r", "clusterf"]);
    expect(existsSync(join(debRoot, "usr/lib/clusterf/clusterf"))).toBe(false);
    expect(existsSync(flags)).toBe(true); // conffiles stay until purge
    expect(existsSync(join(debRoot, "var/lib/clusterf/ipvs-owned.json"))).toBe(true);
    dpkgRoot(["-P", "clusterf"]);
    expect(existsSync(flags)).toBe(false);
    expect(existsSync(join(debRoot, "etc/clusterf/.README"))).toBe(false);
    expect(readFileSync(join(debRoot, "etc/clusterf/services/mine/frontend"), "utf8")).toContain("192.0.2.1");
    expect(existsSync(join(debRoot, "var/lib/clusterf"))).toBe(false);
    const leftovers = ok(["find", join(debRoot, "etc/systemd"), join(debRoot, "var/lib/systemd"), "-name", "clusterf*"]).stdout.trim();
    expect(leftovers).toBe("");
  });

  test("the .rpm installs into an empty root with rpm and runs", () => {
    rpmRoot = join(work, "rpm-root");
    mkdirSync(rpmRoot);
    // --noscripts: the scriptlets run chrooted into the root, which has no /bin/sh; they are
    // exercised on their own below.
    const r = run(["rpm", `--root=${rpmRoot}`, "--dbpath=/var/lib/rpm", "-i", "--nodeps", "--noscripts", rpm]);
    expect(r.code, r.stderr).toBe(0);
    expect(ok(["rpm", `--root=${rpmRoot}`, "--dbpath=/var/lib/rpm", "-q", "clusterf"]).stdout.trim()).toBe(`clusterf-${VERSION}-1.x86_64`);
    const verify = run(["rpm", `--root=${rpmRoot}`, "--dbpath=/var/lib/rpm", "-V", "--nodeps", "clusterf"]);
    expect(verify.stdout.trim()).toBe("");
    checkRuns(rpmRoot, "etc/sysconfig");
  });

  test("rpm scriptlets: enable on install and never start; stop and disable on erase; restart only on upgrade", () => {
    const scripts: Record<string, string> = {};
    for (const tag of ["POSTIN", "PREUN", "POSTUN"]) scripts[tag] = ok(["rpm", "-qp", "--qf", `%{${tag}}`, rpm]).stdout;
    const stub = join(work, "stub-bin");
    mkdirSync(stub);
    const logFile = join(work, "systemctl.log");
    writeFileSync(join(stub, "systemctl"), `#!/bin/sh\necho "$*" >> "${logFile}"\n`);
    chmodSync(join(stub, "systemctl"), 0o755);
    const calls = (tag: string, arg: string): string[] => {
      rmSync(logFile, { force: true });
      ok(["sh", "-e", "-c", scripts[tag]!, "sh", arg], { env: { PATH: `${stub}:/usr/bin:/bin` } });
      return existsSync(logFile) ? readFileSync(logFile, "utf8").trim().split("\n") : [];
    };
    const running = existsSync("/run/systemd/system"); // on a systemd host, reloads and stops happen too
    const units = commands.map((c) => `${c}.service`).join(" ");
    const install = calls("POSTIN", "1");
    expect(install).toContain("--no-reload enable clusterf-ipvs.service");
    expect(install.filter((l) => /\b(start|restart)\b/.test(l) || l.includes("clusterf-docker"))).toEqual([]);
    expect(calls("POSTIN", "2").filter((l) => l.includes("enable"))).toEqual([]); // an upgrade keeps the operator's choice
    const erase = calls("PREUN", "0");
    expect(erase).toContain(`--no-reload disable ${units}`);
    if (running) expect(erase).toContain(`stop ${units}`);
    expect(calls("PREUN", "1")).toEqual([]); // upgrade: nothing stopped
    expect(calls("POSTUN", "0").filter((l) => /start/.test(l))).toEqual([]);
    if (running) expect(calls("POSTUN", "1")).toContain(`try-restart ${units}`);
    for (const text of Object.values(scripts)) expect(text.replace(/^\s*#.*$/gm, "")).not.toMatch(/ipvsadm|flush/);
  });

  test("the installed clusterf-ipvs reaches the kernel through libnl (-ipvs-noop: reads, never writes)", () => {
    if (!debRoot && !rpmRoot) throw new Error("needs the install tests");
    const root = rpmRoot || debRoot;
    const state = join(work, "noop-state");
    const r = runHidden(root, ["-once", "-ipvs-noop", "-etcd-machines=", `-config-path=${join(root, "usr/share/doc/clusterf/examples")}`, `-state-dir=${state}`]);
    // With IPVS (and root) it reads the table and logs the writes it would make; without, the
    // driver itself says so. Either way libnl was loaded and generic netlink answered.
    if (r.code !== 0) expect(r.stderr).toContain("IPVS is not available in this kernel");
    expect(r.stderr).not.toMatch(/Cannot find module|dlopen|no kernel IPVS driver/i);
  });

  test("the installed clusterf-ipvs follows -config-path live", async () => {
    if (!debRoot && !rpmRoot) throw new Error("needs the install tests");
    const root = rpmRoot || debRoot;
    const tree = join(work, "live-tree");
    mkdirSync(join(tree, "services/web/backends"), { recursive: true });
    writeFileSync(join(tree, "services/web/frontend.json"), '{"ipv4":"192.0.2.7","tcp":80}');
    const cmd = [bin(root, "clusterf-ipvs"), "-ipvs-mock", "-print", "-etcd-machines=", `-config-path=${tree}`, `-state-dir=${join(work, "live-state")}`];
    const hidden = IS_ROOT && run(["unshare", "-m", "true"]).code === 0;
    const p = Bun.spawn(hidden ? ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none "$1" && shift && exec "$@"', "sh", ROOT, ...cmd] : cmd, {
      cwd: "/",
      stdout: "pipe",
      stderr: "pipe",
    });
    const d = { stdout: "", stderr: "" };
    const collect = async (s: ReadableStream<Uint8Array>, k: "stdout" | "stderr") => {
      for await (const c of s) d[k] += new TextDecoder().decode(c);
    };
    void collect(p.stdout, "stdout");
    void collect(p.stderr, "stderr");
    try {
      await until(() => d.stderr.includes("applied kind=full"), 20_000, withStderr("the first apply", d));
      writeFileSync(join(tree, "services/web/backends/b1.json"), '{"ipv4":"198.51.100.7","tcp":8080}');
      await until(() => d.stdout.includes("198.51.100.7:8080"), 20_000, withStderr("the new backend printed", d));
      expect(d.stderr).not.toMatch(/^ERROR/m);
    } finally {
      p.kill();
      await p.exited;
    }
  }, 60_000);

  // The compiled binary must not reach back into the build tree: etcd3 reads its gRPC schema
  // from files next to its code, which packaging/build.ts inlines. Run the installed binary
  // against a real etcd with this source tree hidden (a private mount namespace).
  let etcd: Etcd | undefined;
  let etcdTls: Etcd | undefined;
  afterAll(async () => {
    await etcd?.destroy();
    await etcdTls?.destroy();
  });
  /** Runs the installed clusterf-ipvs with ARGS, this source tree hidden when we may (root). */
  function runHidden(root: string, args: string[]): Run {
    const cmd = [bin(root, "clusterf-ipvs"), ...args];
    const hidden = IS_ROOT && run(["unshare", "-m", "true"]).code === 0;
    if (!hidden) console.error("packaging: unshare not available: the etcd check runs with the source tree visible");
    return hidden
      ? run(["unshare", "-m", "sh", "-c", 'mount -t tmpfs none "$1" && shift && exec "$@"', "sh", ROOT, ...cmd], { cwd: "/" })
      : run(cmd, { cwd: "/" });
  }
  test("the installed clusterf-ipvs reads etcd with the source tree out of sight", async () => {
    if (!debRoot && !rpmRoot) throw new Error("needs the install tests");
    const root = rpmRoot || debRoot;
    const binary = readFileSync(join(root, "usr/lib/clusterf/clusterf"));
    expect(binary.includes("../proto/rpc.proto")).toBe(false);
    etcd = await startEtcd();
    const put = (k: string, v: unknown) =>
      ok(["etcdctl", `--endpoints=${etcd!.clientUrl}`, "put", `/clusterf/${k}`, JSON.stringify(v)], { env: { ETCDCTL_API: "3" } });
    put("services/pkg/frontend", { ipv4: "10.9.0.1", tcp: 443 });
    put("services/pkg/backends/b1", { ipv4: "10.9.1.1", tcp: 8443, weight: 7 });
    const r = runHidden(root, ["-once", "-once-timeout=20s", "-ipvs-mock", "-print", "-config-path=", `-etcd-machines=${etcd.clientUrl}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("TCP  10.9.0.1:443 wlc");
    expect(r.stdout).toContain("  -> 10.9.1.1:8443                Masq    7      0          0");
  }, 60_000);

  test("the installed clusterf-ipvs reads etcd over TLS at an IP address", async () => {
    if (!debRoot && !rpmRoot) throw new Error("needs the install tests");
    const root = rpmRoot || debRoot;
    etcdTls = await startEtcd({ tls: true });
    const c = etcdTls.certs!;
    ok(["etcdctl", `--endpoints=${etcdTls.clientUrl}`, `--cacert=${c.ca}`, `--cert=${c.clientCert}`, `--key=${c.clientKey}`, "put", "/clusterf/services/tls/frontend", JSON.stringify({ ipv4: "10.9.0.2", tcp: 443 })], {
      env: { ETCDCTL_API: "3" },
    });
    const r = runHidden(root, [
      "-once", "-once-timeout=20s", "-ipvs-mock", "-print", "-config-path=",
      `-etcd-machines=${etcdTls.clientUrl}`, `-etcd-cacert=${c.ca}`, `-etcd-cert=${c.clientCert}`, `-etcd-key=${c.clientKey}`,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("TCP  10.9.0.2:443 wlc");
  }, 60_000);
});
