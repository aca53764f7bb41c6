import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RACY_MS } from "../src/config/tree-cache.ts";
import { Daemon, inotifyWatches, ROOT, runCli, tableLines } from "./support/proc.ts";
import { IPVS_FLAGS } from "../src/cli/clusterf-ipvs.ts";
import { DOCKER_FLAGS } from "../src/cli/clusterf-docker.ts";
import { parseFlags } from "../src/cli/flags.ts";
import { parseDuration } from "../src/util/duration.ts";
import { parseListen, serveMetrics } from "../src/metrics/server.ts";
import { Registry } from "prom-client";
import { until } from "./support/until.ts";

/** runCli for an invocation that might not end: killed (and reported as such) after `ms`. */
async function runCliWithin(program: "clusterf-ipvs" | "clusterf-docker", args: string[], ms: number) {
  const p = Bun.spawn([process.execPath, join(ROOT, "src/cli", `${program}.ts`), ...args], { stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => p.kill("SIGKILL"), ms);
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  clearTimeout(timer);
  return { code: p.signalCode ? `killed after ${ms} ms (${p.signalCode})` : code, stdout, stderr };
}

describe("flags", () => {
  test("Go-style spellings", () => {
    const { values } = parseFlags(
      ["-config-path=/x", "-etcd-prefix", "/p", "--ipvs-sched-name=rr", "-print", "-ipvs-elide=false", "-ipvs-resync", "1m30s", "-etcd-machines="],
      IPVS_FLAGS,
      {},
    );
    expect(values).toMatchObject({
      "config-path": "/x",
      "etcd-prefix": "/p",
      "ipvs-sched-name": "rr",
      print: true,
      "ipvs-elide": false,
      "ipvs-resync": 90_000,
      "etcd-machines": "",
    });
  });
  test("ETCD_PASSWORD supplies the password", () => {
    expect(parseFlags([], IPVS_FLAGS, { ETCD_PASSWORD: "s3cret" }).values["etcd-password"]).toBe("s3cret");
  });
  test.each([
    [["-nope"], /flag provided but not defined: -nope/],
    [["-ipvs-fwd-method=nat"], /invalid value "nat" for flag -ipvs-fwd-method: expected masq, droute or tunnel/],
    [["-ipvs-resync=soon"], /invalid value "soon" for flag -ipvs-resync/],
    [["-print=maybe"], /invalid value "maybe" for flag -print/],
    [["stray"], /unexpected argument "stray"/],
  ])("%p is refused", (argv, re) => {
    expect(() => parseFlags(argv as string[], IPVS_FLAGS, {})).toThrow(re);
  });
  // Go's flag package, token by token (flag.FlagSet.parseOne).
  test.each([
    [["-etcd-prefix"], "flag needs an argument: -etcd-prefix"],
    [["-print", "-ipvs-resync"], "flag needs an argument: -ipvs-resync"],
    [["--config-path"], "flag needs an argument: -config-path"],
    [["-once", "false"], 'unexpected argument "false"'],
    [["stray", "-nope"], 'unexpected argument "stray"'],
    [["-", "-print"], 'unexpected argument "-"'],
    [["-print", "--", "-nope"], 'unexpected argument "-nope"'],
    [["---print"], "bad flag syntax: ---print"],
    [["-=x"], "bad flag syntax: -=x"],
  ])("%p is refused with %p", (argv, message) => {
    expect(() => parseFlags(argv as string[], IPVS_FLAGS, {})).toThrow(message);
  });
  test("a flag that takes a value takes the next argument, whatever it looks like", () => {
    const { values } = parseFlags(["-config-path", "-print", "-etcd-username", "--", "-etcd-password", "=x"], IPVS_FLAGS, {});
    expect(values).toMatchObject({ "config-path": "-print", print: false, "etcd-username": "--", "etcd-password": "=x" });
  });
  test("-- ends the flags; nothing after it is a flag", () => {
    expect(parseFlags(["-print", "--"], IPVS_FLAGS, {}).values.print).toBe(true);
  });
  test("the last of a repeated flag wins", () => {
    expect(parseFlags(["-etcd-prefix=/a", "-etcd-prefix", "/b"], IPVS_FLAGS, {}).values["etcd-prefix"]).toBe("/b");
  });
  test("-name= gives an empty value; -name=a=b keeps everything after the first =", () => {
    expect(parseFlags(["-config-path=", "-etcd-username=a=b"], IPVS_FLAGS, {}).values).toMatchObject({ "config-path": "", "etcd-username": "a=b" });
  });
  test.each([
    ["1", true], ["t", true], ["T", true], ["true", true], ["TRUE", true], ["True", true],
    ["0", false], ["f", false], ["F", false], ["false", false], ["FALSE", false], ["False", false],
  ])("-print=%p is %p (strconv.ParseBool)", (text, value) => {
    expect(parseFlags([`-print=${text}`], IPVS_FLAGS, {}).values.print).toBe(value);
  });
  test.each(["", "yes", "no", "on", "tRUE", "2", " true", "true "])("-print=%p is refused", (text) => {
    expect(() => parseFlags([`-print=${text}`], IPVS_FLAGS, {})).toThrow(`invalid value ${JSON.stringify(text)} for flag -print`);
  });
  test("-help and -h, wherever they come among the flags", () => {
    expect(parseFlags(["-print", "-h"], IPVS_FLAGS, {}).help).toBe(true);
    expect(parseFlags(["--help"], IPVS_FLAGS, {}).help).toBe(true);
    expect(parseFlags(["-print"], IPVS_FLAGS, {}).help).toBe(false);
  });
  describe.each([
    ["clusterf-ipvs", IPVS_FLAGS],
    ["clusterf-docker", DOCKER_FLAGS],
  ])("%s -etcd-ttl: whole seconds, at least 1s", (_, specs) => {
    test.each([
      ["1s", 1000],
      ["10s", 10_000],
      ["2m", 120_000],
      ["1500ms", undefined],
      ["1.5s", undefined],
      ["500ms", undefined],
      ["0", undefined],
      ["0s", undefined],
    ])("%p → %p ms", (text, ms) => {
      const parse = () => parseFlags([`-etcd-ttl=${text}`], specs, {}).values["etcd-ttl"];
      if (ms === undefined) expect(parse).toThrow(`invalid value "${text}" for flag -etcd-ttl: must be at least 1s, in whole seconds`);
      else expect(parse()).toBe(ms);
    });
  });
  describe.each([
    ["clusterf-ipvs", IPVS_FLAGS],
    ["clusterf-docker", DOCKER_FLAGS],
  ])("%s: etcd and metrics flags", (_, specs) => {
    const parse = (...argv: string[]) => parseFlags(argv, specs, {}).values;
    test.each(["/clusterf", "/", "/a/b/"])("-etcd-prefix=%p is taken", (prefix) => {
      expect(parse(`-etcd-prefix=${prefix}`)["etcd-prefix"]).toBe(prefix);
    });
    test.each(["clusterf", "", "/a b"])("-etcd-prefix=%p is refused", (prefix) => {
      expect(() => parse(`-etcd-prefix=${prefix}`)).toThrow(`invalid value ${JSON.stringify(prefix)} for flag -etcd-prefix: expected a key prefix starting with /, without spaces`);
    });
    test.each(["http://127.0.0.1:2379", "https://etcd.example:2379,http://[2001:db8::1]:2379", "http://192.0.2.1:2379/, https://192.0.2.2"])(
      "-etcd-machines=%p is taken",
      (machines) => {
        expect(parse(`-etcd-machines=${machines}`)["etcd-machines"]).toBe(machines);
      },
    );
    test.each([
      ["127.0.0.1:2379", "127.0.0.1:2379"],
      ["localhost:2379", "localhost:2379"],
      ["http://192.0.2.1:2379,192.0.2.2:2379", "192.0.2.2:2379"],
      ["unix:///run/etcd.sock", "unix:///run/etcd.sock"],
      ["http://", "http://"],
      ["http://192.0.2.1:99999", "http://192.0.2.1:99999"],
    ])("-etcd-machines=%p is refused, naming %p", (machines, entry) => {
      expect(() => parse(`-etcd-machines=${machines}`)).toThrow(
        `invalid value ${JSON.stringify(machines)} for flag -etcd-machines: ${JSON.stringify(entry)} is not an http:// or https:// URL`,
      );
    });
    test.each([
      ["127.0.0.1:0", "port 0 is out of range 1-65535"],
      [":65536", "port 65536 is out of range 1-65535"],
      ["99999", "port 99999 is out of range 1-65535"],
      ["127.0.0.1:http", 'port "http" is not a number'],
      ["127.0.0.1:", 'port "" is not a number'],
      ["::1:80", "expected ADDR:PORT"],
    ])("-metrics-listen=%p: %p", (listen, why) => {
      expect(() => parse(`-metrics-listen=${listen}`)).toThrow(`invalid value ${JSON.stringify(listen)} for flag -metrics-listen: ${why}`);
    });
    test("-metrics-listen=[::1]:65535 is taken", () => {
      expect(parse("-metrics-listen=[::1]:65535")["metrics-listen"]).toBe("[::1]:65535");
    });
  });
  test("-config-path: a missing directory is taken (it may appear later), a file is not", () => {
    const dir = mkdtempSync("/tmp/clusterf-cli-");
    try {
      writeFileSync(join(dir, "file"), "");
      expect(parseFlags([`-config-path=${dir}/missing`], IPVS_FLAGS, {}).values["config-path"]).toBe(`${dir}/missing`);
      expect(parseFlags([`-config-path=${dir}`], IPVS_FLAGS, {}).values["config-path"]).toBe(dir);
      expect(() => parseFlags([`-config-path=${dir}/file`], IPVS_FLAGS, {})).toThrow(`invalid value "${dir}/file" for flag -config-path: not a directory`);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
  test("durations", () => {
    expect(parseDuration("10s")).toBe(10_000);
    expect(parseDuration("500ms")).toBe(500);
    expect(parseDuration("2m")).toBe(120_000);
    expect(parseDuration("1h2m3s")).toBe(3_723_000);
    expect(parseDuration("5")).toBe(5_000);
    expect(parseDuration("5x")).toBeUndefined();
  });
});

describe("clusterf-ipvs binary", () => {
  test("a bad flag: one line on stderr, exit 2", () => {
    const r = runCli("clusterf-ipvs", ["-no-such-flag=1"]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split("\n")).toEqual(["clusterf-ipvs: flag provided but not defined: -no-such-flag"]);
  });

  test.each([
    [["-ipvs-mock", "-once", "-config-path=/nonexistent", "-etcd-machines"], "flag needs an argument: -etcd-machines"],
    [["-ipvs-mock", "-once", "-etcd-machines=", "-config-path=/etc/hostname"], 'invalid value "/etc/hostname" for flag -config-path: not a directory'],
    [["-ipvs-mock", "-once", "-etcd-machines=", "-config-path=", "-etcd-prefix=clusterf"], 'invalid value "clusterf" for flag -etcd-prefix: expected a key prefix starting with /, without spaces'],
    [["-ipvs-mock", "-once", "-etcd-machines=127.0.0.1:2379", "-config-path="], 'invalid value "127.0.0.1:2379" for flag -etcd-machines: "127.0.0.1:2379" is not an http:// or https:// URL'],
    [["-ipvs-mock", "-once", "-etcd-machines=", "-config-path=", "-metrics-listen=:70000"], 'invalid value ":70000" for flag -metrics-listen: port 70000 is out of range 1-65535'],
    [["-ipvs-mock", "-etcd-machines=", "-config-path=/nonexistent", "-once", "false"], 'unexpected argument "false": no arguments are taken, only flags (a boolean flag takes its value as -once=false)'],
  ])("%p: one line on stderr, exit 2", async (argv, message) => {
    expect(await runCliWithin("clusterf-ipvs", argv as string[], 10_000)).toEqual({ code: 2, stdout: "", stderr: `clusterf-ipvs: ${message}\n` });
  });

  test("-once -print into a pipe read late: every line arrives before the exit", async () => {
    const dir = mkdtempSync("/tmp/clusterf-print-");
    afterAll(() => rmSync(dir, { recursive: true, force: true }));
    const N = 300;
    for (let s = 0; s < N; s++) {
      mkdirSync(join(dir, `services/s${s}/backends`), { recursive: true });
      writeFileSync(join(dir, `services/s${s}/frontend`), JSON.stringify({ ipv4: "192.0.2.1", tcp: 1 + s }));
      for (let b = 0; b < 10; b++) writeFileSync(join(dir, `services/s${s}/backends/b${b}`), JSON.stringify({ ipv4: `198.51.100.${b + 1}`, tcp: 80 }));
    }
    // A shell pipe to a reader that starts a second late: the table (about 200 kB) fills the pipe
    // long before (this process's own pipes are read eagerly by Bun, they never fill).
    const cmd = [process.execPath, join(ROOT, "src/cli/clusterf-ipvs.ts"), "-ipvs-mock", "-once", "-print", "-etcd-machines=", `-config-path=${dir}`, `-state-dir=${join(dir, "state")}`];
    const p = Bun.spawn(["bash", "-c", 'set -o pipefail; "$@" 2>/dev/null | (sleep 1; wc -l)', "bash", ...cmd], { stdout: "pipe", stderr: "inherit" });
    const out = await new Response(p.stdout).text();
    expect(await p.exited).toBe(0);
    // 3 header lines, then a line per service and per destination
    expect(Number(out.trim())).toBe(3 + N * 11);
  });

  test("-config-path-cache: a file given is used with -ipvs-mock too (none by default there); the next start reads no settled file", async () => {
    const dir = mkdtempSync(join(tmpdir(), "clusterf-cli-cache-"));
    try {
      const tree = join(dir, "tree");
      for (const [rel, v] of Object.entries({ "services/s/frontend": { ipv4: "192.0.2.1", tcp: 80 }, "services/s/backends/b": { ipv4: "198.51.100.1", tcp: 80 } })) {
        mkdirSync(join(tree, rel, ".."), { recursive: true });
        writeFileSync(join(tree, rel), JSON.stringify(v));
      }
      await Bun.sleep(RACY_MS + 100); // files changed within RACY_MS of a read are read again next time
      const cache = join(dir, "cache");
      const run = (...extra: string[]) => runCli("clusterf-ipvs", [`-config-path=${tree}`, "-etcd-machines=", "-ipvs-mock", "-once", `-state-dir=${join(dir, "state")}`, ...extra]);
      const unchanged = (r: { stderr: string }) => /config-path: read .*unchanged=(\d+)/.exec(r.stderr)?.[1];
      expect(unchanged(run())).toBeUndefined(); // -ipvs-mock: no cache in -state-dir
      expect(existsSync(join(dir, "state"))).toBe(false);
      expect(unchanged(run(`-config-path-cache=${cache}`))).toBe("0");
      expect(unchanged(run(`-config-path-cache=${cache}`))).toBe("2");
      expect(unchanged(run("-config-path-cache=off"))).toBeUndefined();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("-help lists every flag with its default", () => {
    const r = runCli("clusterf-ipvs", ["-help"]);
    expect(r.code).toBe(0);
    for (const f of IPVS_FLAGS) expect(r.stdout).toContain(`-${f.name}`);
    expect(r.stdout).toContain('(default "http://127.0.0.1:2379")');
    expect(r.stdout).toContain("(default 60s)");
  });

  test("-once -print on config.example in file-only mode", () => {
    const r = runCli("clusterf-ipvs", [`-config-path=${join(ROOT, "config.example")}`, "-etcd-machines=", "-ipvs-mock", "-print", "-once"]);
    expect(r.code).toBe(0);
    expect(tableLines(r.stdout)).toEqual([
      "TCP 192.0.2.10:80 wlc",
      "-> 198.51.100.11:8080 Masq 10 0 0",
      "-> 198.51.100.12:8080 Masq 20 0 0",
      "-> 198.51.100.13:8080 Masq 0 0 0",
      "TCP 192.0.2.53:53 wlc persistent 300",
      "-> 192.0.2.254:53 Route 15 0 0",
      "TCP [2001:db8::10]:80 wlc",
      "-> [2001:db8:100::11]:8080 Masq 10 0 0",
      "-> [2001:db8:100::12]:8080 Masq 20 0 0",
      "-> [2001:db8:100::13]:8080 Masq 0 0 0",
      "TCP [2001:db8::53]:53 wlc persistent 300",
      "-> [2001:db8::254]:53 Route 15 0 0",
      "UDP 192.0.2.53:53 wlc persistent 300",
      "-> 192.0.2.254:53 Route 15 0 0",
      "UDP [2001:db8::53]:53 wlc persistent 300",
      "-> [2001:db8::254]:53 Route 15 0 0",
    ]);
  });

  test("-once watches nothing; the live daemon watches the tree", async () => {
    // Both wait for an etcd that never answers, so both stay up after reading the tree.
    const args = [`-config-path=${join(ROOT, "config.example")}`, "-etcd-machines=http://127.0.0.1:1", "-ipvs-mock", "-state-dir=/tmp/clusterf-cli-once"];
    const spawn = (extra: string[]) => Bun.spawn([process.execPath, join(ROOT, "src/cli/clusterf-ipvs.ts"), ...args, ...extra], { stdout: "ignore", stderr: "ignore" });
    const live = spawn([]);
    const once = spawn(["-once", "-once-timeout=20s"]);
    try {
      await until(() => inotifyWatches(live.pid) > 0, 15_000, "the live daemon's inotify watches", 100);
      await Bun.sleep(500);
      expect(once.exitCode).toBeNull(); // still waiting for etcd, its tree read long done
      expect({ live: inotifyWatches(live.pid) > 0, once: inotifyWatches(once.pid) }).toEqual({ live: true, once: 0 });
    } finally {
      live.kill("SIGKILL");
      once.kill("SIGKILL");
    }
  });

  test("-once with a bad value elsewhere in the tree still applies the rest", () => {
    const dir = mkdtempSync("/tmp/clusterf-cli-");
    mkdirSync(join(dir, "services/a/backends"), { recursive: true });
    writeFileSync(join(dir, "services/a/frontend"), '{"ipv4": "192.0.2.1", "tcp": 80}');
    writeFileSync(join(dir, "services/a/backends/good"), '{"ipv4": "198.51.100.1", "tcp": 80}');
    writeFileSync(join(dir, "services/a/backends/bad"), '{"ipv4": "198.51.100.1", "tcp": 80, "weight": -1}');
    writeFileSync(join(dir, "services/a/backends/garbage"), Buffer.from([0, 1, 2, 255, 254]));
    const r = runCli("clusterf-ipvs", [`-config-path=${dir}`, "-etcd-machines=", "-ipvs-mock", "-print", "-once"]);
    rmSync(dir, { recursive: true });
    expect(r.code).toBe(0);
    expect(tableLines(r.stdout)).toEqual(["TCP 192.0.2.1:80 wlc", "-> 198.51.100.1:80 Masq 10 0 0"]);
    expect(r.stderr).toMatch(/ERROR config: weight: weight must be an integer 0…2147483647, got number -1 .*key=services\/a\/backends\/bad/);
    expect(r.stderr).toMatch(/ERROR config: invalid JSON.*key=services\/a\/backends\/garbage/);
  });
});

describe("clusterf-ipvs daemon on a watched directory", () => {
  const dir = mkdtempSync("/tmp/clusterf-live-");
  let d: Daemon | undefined;
  afterAll(async () => {
    await d?.stop("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });

  test("live edits apply without a restart, and SIGTERM exits cleanly", async () => {
    mkdirSync(join(dir, "services/web/backends"), { recursive: true });
    writeFileSync(join(dir, "services/web/frontend.json"), '{"ipv4": "192.0.2.1", "tcp": 80}');
    d = new Daemon([`-config-path=${dir}`, "-etcd-machines=", "-ipvs-mock"]);
    await d.waitFor((t) => t.join() === "TCP 192.0.2.1:80 wlc", 10_000, "initial table");

    writeFileSync(join(dir, "services/web/backends/a.yaml"), "ipv4: 198.51.100.1\ntcp: 8080\n");
    await d.waitFor((t) => t.includes("-> 198.51.100.1:8080 Masq 10 0 0"), 10_000, "backend added");

    // An editor's atomic save: write a temp file, move it over the key.
    writeFileSync(join(dir, "services/web/backends/.a.yaml.swp"), "junk");
    writeFileSync(join(dir, "services/web/backends/a.yaml.tmp~"), "ipv4: 198.51.100.1\ntcp: 8080\nweight: 0\n");
    renameSync(join(dir, "services/web/backends/a.yaml.tmp~"), join(dir, "services/web/backends/a.yaml"));
    await d.waitFor((t) => t.includes("-> 198.51.100.1:8080 Masq 0 0 0"), 10_000, "weight 0 after mv");

    mkdirSync(join(dir, "routes"));
    writeFileSync(join(dir, "routes/gw"), '{"Prefix4": "198.51.100.0/24", "Gateway4": "192.0.2.200", "IpvsMethod": "droute"}');
    writeFileSync(join(dir, "services/web/backends/b.json"), '{"ipv4": "198.51.100.2", "tcp": 8080, "weight": 7}');
    await d.waitFor((t) => t.join() === "TCP 192.0.2.1:80 wlc,-> 192.0.2.200:80 Route 7 0 0", 10_000, "gateway route");

    // A bad edit keeps the last good value.
    writeFileSync(join(dir, "services/web/backends/b.json"), '{"ipv4": "198.51.100.2", "tcp": "8080"}');
    await Bun.sleep(500);
    expect(d.last).toEqual(["TCP 192.0.2.1:80 wlc", "-> 192.0.2.200:80 Route 7 0 0"]);
    expect(d.stderr).toContain("key=services/web/backends/b");

    rmSync(join(dir, "services/web"), { recursive: true });
    await d.waitFor((t) => t.length === 0, 10_000, "service removed");
    expect(await d.stop("SIGTERM")).toBe(0);
  });
});

describe("-metrics-listen", () => {
  test.each([
    ["127.0.0.1:9112", "127.0.0.1", 9112],
    [":9112", "127.0.0.1", 9112],
    ["9112", "127.0.0.1", 9112],
    ["0.0.0.0:9112", "0.0.0.0", 9112],
    ["[::1]:9112", "::1", 9112],
    ["[::]:80", "::", 80],
  ])("%p binds %p port %p (loopback unless an address is named)", (listen, hostname, port) => {
    expect(parseListen(listen)).toEqual({ hostname, port });
  });
  test.each(["", "host", "1.2.3.4:", "1.2.3.4:70000", "::1:80", "a:b:80"])("%p is refused", (listen) => {
    expect(() => parseListen(listen)).toThrow("expected ADDR:PORT");
  });
  test("a port alone serves on loopback only", async () => {
    const srv = serveMetrics("0", new Registry(), () => ({ ok: true, detail: "ok" }));
    try {
      const url = new URL(srv.url);
      expect(url.hostname).toBe("127.0.0.1");
      expect((await fetch(`${srv.url}/healthz`)).status).toBe(200);
      expect((await fetch(`${srv.url}/nope`)).status).toBe(404);
    } finally {
      srv.stop();
    }
  });
});
