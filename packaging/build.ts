// Builds the packaged executable with `bun build --compile` (through Bun.build, for the plugins
// below): OUTDIR/clusterf, one binary for clusterf-ipvs and (when its entry point exists)
// clusterf-docker, and OUTDIR/commands with the daemon names it contains, one a line.
//
//   bun packaging/build.ts OUTDIR
//
// Environment: CLUSTERF_BUN_TARGET=bun-linux-x64-baseline (for example) cross-compiles for
// another Bun target (Bun downloads that runtime); the default is the running Bun's own.
//
// The binary is never stripped: a compiled Bun executable keeps the bundle in a section that
// strip removes.
//
// Plugins, each for something a compiled binary cannot do at run time:
// - etcd3 loads its gRPC schema from `${__dirname}/../proto/rpc.proto` when it is first
//   imported, and __dirname is frozen to the build machine's node_modules; installed elsewhere,
//   any etcd use would die with ENOENT. The schema parsed in advance (src/etcd/rpc-schema.json)
//   is inlined (@grpc/proto-loader's fromJSON, same options), so no file is read at run time.
// - An entry point that is not in the tree yet (src/cli/clusterf-docker.ts, the kernel driver
//   src/ipvs/netlink/kernel-table.ts) becomes a stub that fails with a clear message when used,
//   and the build says so; the daemon names that made it in are listed in OUTDIR/commands.
// - ssh2, which dockerode's docker-modem loads for ssh:// Docker hosts (never used here), is a
//   stub (noSsh2 below).
// - chokidar's and readdirp's file-system calls are paced (src/config/watcher-pacing.ts): in a
//   bundle no run-time plugin sees their modules, so the rewrite happens here; the build fails if
//   the paced module did not make it into the bundle.

import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import type { BunPlugin } from "bun";
import { watcherPacing } from "../src/config/watcher-pacing.ts";

const ROOT = resolve(import.meta.dir, "..");
const outDir = resolve(process.argv[2] ?? join(ROOT, "dist", "build"));

const DAEMONS = [
  { name: "clusterf-ipvs", entry: join(ROOT, "src/cli/clusterf-ipvs.ts") },
  { name: "clusterf-docker", entry: join(ROOT, "src/cli/clusterf-docker.ts") },
];
const KERNEL_DRIVER = join(ROOT, "src/ipvs/netlink/kernel-table.ts");

const notes: string[] = [];

/** True when the module's source exports a function `main` (what packaging/clusterf.ts calls). */
function exportsMain(file: string): boolean {
  const src = readFileSync(file, "utf8");
  return /export\s+(async\s+)?function\s+main\s*\(/.test(src) || /export\s*\{[^}]*\bmain\b[^}]*\}/.test(src);
}

const present = DAEMONS.filter((d) => existsSync(d.entry));
for (const d of DAEMONS) {
  if (!present.includes(d)) notes.push(`${d.name}: ${d.entry.slice(ROOT.length + 1)} is not in the tree; not built`);
}
for (const d of present) {
  if (!exportsMain(d.entry)) {
    console.error(`build: ${d.entry.slice(ROOT.length + 1)} must export main(argv: string[]): Promise<number> (as src/cli/clusterf-ipvs.ts does)`);
    process.exit(1);
  }
}
if (!existsSync(KERNEL_DRIVER)) {
  notes.push("the kernel IPVS driver (src/ipvs/netlink/kernel-table.ts) is not in the tree: this clusterf-ipvs only runs with -ipvs-mock");
}

const STUBS: Record<string, string> = {
  [KERNEL_DRIVER]:
    `export function openKernelIpvs(): never { throw new Error("this clusterf build has no kernel IPVS driver (built without src/ipvs/netlink/kernel-table.ts); only -ipvs-mock works"); }\n`,
  [DAEMONS[1]!.entry]:
    `export async function main(): Promise<number> { process.stderr.write("clusterf-docker is not part of this clusterf build\\n"); return 1; }\n`,
};

const missingModules: BunPlugin = {
  name: "clusterf-missing-modules",
  setup(build) {
    build.onResolve({ filter: /(kernel-table|clusterf-docker)\.ts$/ }, (args) => {
      const file = resolve(args.resolveDir ?? dirname(args.importer), args.path);
      if (existsSync(file) || !(file in STUBS)) return undefined;
      return { path: file, namespace: "clusterf-stub" };
    });
    build.onLoad({ filter: /.*/, namespace: "clusterf-stub" }, (args) => ({ loader: "ts", contents: STUBS[args.path]! }));
  },
};

const etcd3Protos: BunPlugin = {
  name: "clusterf-etcd3-protos",
  setup(build) {
    build.onLoad({ filter: /[\\/]etcd3[\\/]lib[\\/]connection-pool\.js$/ }, async (args) => {
      const src = readFileSync(args.path, "utf8");
      const call = /\(0, proto_loader_1\.loadSync\)\(`\$\{__dirname\}\/\.\.\/proto\/rpc\.proto`, (\{[^}]*\})\)/;
      const m = call.exec(src);
      if (!m) throw new Error(`${args.path}: the rpc.proto loadSync call was not found (etcd3 changed?); update packaging/build.ts`);
      // The schema parsed in advance (src/etcd/schema.ts keeps it, parsed with keepCase as etcd3
      // asks; test/etcd-schema.test.ts checks it against the installed rpc.proto).
      const options = new Function(`return (${m[1]});`)() as Record<string, unknown>;
      if (options.keepCase !== true) throw new Error(`${args.path}: rpc.proto is no longer loaded with keepCase (etcd3 changed?); update src/etcd/schema.ts`);
      const json = readFileSync(join(ROOT, "src/etcd/rpc-schema.json"), "utf8").trim();
      const replaced = src.replace(call, () => `(0, proto_loader_1.fromJSON)(${json}, ${m[1]})`);
      return { loader: "js", contents: replaced };
    });
  },
};

// ssh2 (with its native add-ons) comes in through dockerode's docker-modem, which requires it at
// load time for ssh:// Docker hosts; -docker-endpoint takes unix:// and tcp:// only. A stub keeps
// 0.6 MB of code and two .node files out of every start of either daemon.
const noSsh2: BunPlugin = {
  name: "clusterf-no-ssh2",
  setup(build) {
    build.onResolve({ filter: /^ssh2$/ }, () => ({ path: "ssh2", namespace: "clusterf-no-ssh2" }));
    build.onLoad({ filter: /.*/, namespace: "clusterf-no-ssh2" }, () => ({
      loader: "js",
      contents: `module.exports = { Client: class { constructor() { throw new Error("ssh:// Docker endpoints are not supported (-docker-endpoint takes unix:// and tcp://)"); } } };\n`,
    }));
  },
};

/** "name version license" for every npm package with a module in the bundle (for the copyright file). */
function bundledPackages(metafile: unknown): string {
  const meta = (typeof metafile === "string" ? JSON.parse(metafile) : metafile) as { inputs?: Record<string, unknown> } | undefined;
  const dirs = new Set<string>();
  for (const input of Object.keys(meta?.inputs ?? {})) {
    const m = /^(.*node_modules[\\/](?:@[^\\/]+[\\/])?[^\\/]+)[\\/]/.exec(resolve(ROOT, input));
    if (m) dirs.add(m[1]!);
  }
  const lines = new Set<string>();
  for (const dir of dirs) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name?: string; version?: string; license?: unknown; licenses?: unknown };
      const one = (l: unknown) => (typeof l === "string" ? l : (l as { type?: string } | undefined)?.type);
      const license = one(pkg.license) ?? (Array.isArray(pkg.licenses) ? pkg.licenses.map(one).filter(Boolean).join(" OR ") : "") ?? "";
      lines.add(`${pkg.name} ${pkg.version} ${license || "unknown"}`);
    } catch {
      // not a package root (a nested folder without package.json): skip
    }
  }
  if (lines.size === 0) throw new Error("the build's metafile named no npm package; cannot write bundled-packages");
  return [...lines].sort().join("\n") + "\n";
}

mkdirSync(outDir, { recursive: true });
const outfile = join(outDir, "clusterf");
const target = process.env.CLUSTERF_BUN_TARGET || undefined;
const started = performance.now();
const result = await Bun.build({
  entrypoints: [join(ROOT, "packaging/clusterf.ts")],
  target: "bun",
  sourcemap: "linked",
  // Compiled to JSC bytecode at build time: an empty tree's -once start in the one-CPU user-mode
  // kernel 470-520 -> 320-355 ms (bun -e 0: 180-220 ms there), on the host 50-80 -> 10-20 ms.
  bytecode: true,
  // What is imported with import() when a flag needs it (etcd and gRPC, Docker, the metrics and
  // prom-client, the watcher and chokidar) in chunks of their own, loaded only then: one bundle
  // held them all, and every start loaded it whole (an empty tree's -once: in the user-mode
  // kernel 369 -> 322 ms, medians of 8; on the host 21 -> 16 ms, 45 -> 42 MiB). What is loaded
  // with require() (YAML, ipaddr.js) stays in the chunk of the module that requires it.
  splitting: true,
  format: "esm",
  compile: {
    outfile,
    ...(target ? { target: target as Bun.Build.CompileTarget } : {}),
    // A daemon must not pick up a .env or bunfig.toml from whatever directory it starts in.
    autoloadDotenv: false,
    autoloadBunfig: false,
  },
  plugins: [missingModules, etcd3Protos, watcherPacing, noSsh2],
  metafile: true,
});
if (!result.success) {
  for (const l of result.logs) console.error(l);
  process.exit(1);
}
const inputs = Object.keys((typeof result.metafile === "string" ? JSON.parse(result.metafile) : result.metafile)?.inputs ?? {});
if (!inputs.some((i) => /src[\\/]config[\\/]watcher-fs\.ts$/.test(i))) {
  console.error("build: chokidar's file-system calls are not paced in the bundle (src/config/watcher-fs.ts missing): chokidar's imports changed? see src/config/watcher-pacing.ts");
  process.exit(1);
}
writeFileSync(join(outDir, "commands"), present.map((d) => d.name).join("\n") + "\n");
writeFileSync(join(outDir, "bundled-packages"), bundledPackages(result.metafile));
for (const n of notes) console.error(`build: NOTE: ${n}`);
console.error(`build: ${outfile} (${present.map((d) => d.name).join(", ")}) in ${((performance.now() - started) / 1000).toFixed(1)}s`);
