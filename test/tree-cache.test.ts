// The -config-path cache (src/config/tree-cache.ts): a restart with it hands over exactly what a
// fresh read of the tree gives, whatever changed since, and reads only what changed.

import { afterAll, afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import fc from "fast-check";
import { readConfigDir } from "../src/config/dir-source.ts";
import type { RawValue } from "../src/config/source.ts";
import { RACY_MS, TreeCacheScan, type DirEntry } from "../src/config/tree-cache.ts";
import { configureLog } from "../src/util/log.ts";
import { applyEdit, burstEditArb, captureLogs, converged, Harness, plain, seeds, sleep, withSeed, write } from "./support/dir-tree.ts";

configureLog({ level: "error" });

const h = new Harness();
afterEach(() => h.cleanup());
afterAll(() => h.remove());

// Files here are trusted once 50 ms old (the product waits RACY_MS, 2 s): longer than this
// machine's timestamp granularity (a jiffy), so an edit after a read always moves a timestamp.
const RACY = 50;
const settle = () => sleep(RACY + 20);

/** One start of a -once source with the cache: what it hands over, and how many files it did not read. */
async function startOnce(root: string, cacheFile: string, extra: { maxBytes?: number } = {}): Promise<{ map: Map<string, RawValue>; unchanged: number; logs: string[] }> {
  let map = new Map<string, RawValue>();
  const logs = await captureLogs(async () => {
    const { src, rec } = await h.start(root, { watch: false, cacheFile, racyMs: RACY, ...extra });
    map = rec.map;
    await src.stop();
  }, "info");
  const line = logs.find((l) => l.includes("config-path: read")) ?? "";
  const m = /unchanged=(\d+)/.exec(line);
  return { map, unchanged: m ? Number(m[1]) : -1, logs };
}

/** A tree with what the reader handles: json, yaml, no extension, a conflict, symlinks, ignored names. */
function sampleTree(root: string): void {
  write(root, "services/web/frontend.json", '{"ipv4":"192.0.2.1","tcp":80}');
  write(root, "services/web/backends/b1.yaml", "ipv4: 198.51.100.1\ntcp: 80\n");
  write(root, "services/web/backends/b2", '{"ipv4":"198.51.100.2","tcp":80}');
  write(root, "services/web/backends/b3", '{"ipv4":"198.51.100.3","tcp":80}');
  write(root, "services/dup/frontend.json", '{"ipv4":"192.0.2.2"}');
  write(root, "services/dup/frontend.yaml", "ipv4: 192.0.2.9\n");
  write(root, "routes/r1", '{"Prefix4":"198.51.100.0/24"}');
  write(root, "services/web/backends/b9.tmp", "x");
  write(root, ".git/config", "x");
  write(root, "shared/b4", '{"ipv4":"198.51.100.4","tcp":80}');
  fs.symlinkSync(path.join(root, "shared/b4"), path.join(root, "services/web/backends/b4"));
  fs.symlinkSync(path.join(root, "services/web"), path.join(root, "services/web2"));
}

/** A new sample tree, old enough to be trusted, and where its cache is to go. */
async function settledTree(): Promise<{ root: string; cacheFile: string }> {
  const root = h.newRoot();
  sampleTree(root);
  await settle();
  return { root, cacheFile: h.scratch("state") + "/config-path.cache" };
}

describe("the -config-path cache", () => {
  test("a restart with an unchanged tree reads no file: every value comes from the cache", async () => {
    const { root, cacheFile } = await settledTree();
    const first = await startOnce(root, cacheFile);
    const fresh = await readConfigDir(root);
    expect(plain(first.map)).toEqual(plain(fresh));
    expect(first.unchanged).toBe(0);
    // To tell a value from the cache from one read from its file, the cache's copy of b3 is altered.
    const text = fs.readFileSync(cacheFile, "utf8");
    expect(text.split("198.51.100.3").length).toBe(3); // b3 through services/web and services/web2
    fs.writeFileSync(cacheFile, text.replaceAll("198.51.100.3", "198.51.100.7"));
    const second = await startOnce(root, cacheFile);
    expect(second.unchanged).toBe(fresh.size);
    const want = plain(fresh).map(([k, t, f, o]) => [k, t.replace("198.51.100.3", "198.51.100.7"), f, o]);
    expect(plain(second.map)).toEqual(want);
    expect(want).not.toEqual(plain(fresh));
  });

  test("what changed since is read: same size in place, mtime put back, new, deleted, renamed, a directory replaced, a symlink re-pointed", async () => {
    const { root, cacheFile } = await settledTree();
    await startOnce(root, cacheFile);
    const p = (rel: string) => path.join(root, rel);
    // the same size, in place (same inode)
    fs.writeFileSync(p("services/web/backends/b2"), '{"ipv4":"198.51.100.5","tcp":80}');
    // the same size with the old mtime put back (cp -p, rsync -t): only the change time tells
    const ref = h.scratch("ref");
    const sh = (...cmd: string[]) => expect(Bun.spawnSync(cmd).exitCode).toBe(0);
    sh("cp", "-p", p("routes/r1"), ref);
    const st = fs.statSync(p("routes/r1"));
    fs.writeFileSync(p("routes/r1"), '{"Prefix4":"198.51.100.0/25"}');
    sh("touch", "-m", "-r", ref, p("routes/r1")); // to the nanosecond
    expect(fs.statSync(p("routes/r1")).mtimeMs).toBe(st.mtimeMs);
    expect(fs.statSync(p("routes/r1")).size).toBe(st.size);
    // new, deleted, renamed
    write(root, "services/web/backends/b5", '{"ipv4":"198.51.100.6","tcp":80}');
    fs.rmSync(p("services/dup/frontend.json"));
    fs.renameSync(p("services/web/backends/b1.yaml"), p("services/web/backends/b6.yaml"));
    // the target of a symlinked file edited; a directory replaced under the same name
    fs.writeFileSync(p("shared/b4"), '{"ipv4":"198.51.100.4","tcp":81}');
    fs.rmSync(p("services/dup"), { recursive: true });
    write(root, "services/dup/frontend", '{"ipv4":"192.0.2.3"}');
    // a directory symlink re-pointed
    fs.rmSync(p("services/web2"));
    write(root, "services/other/frontend", '{"ipv4":"192.0.2.4"}');
    fs.symlinkSync(p("services/other"), p("services/web2"));
    await settle(); // the edits old enough to be trusted: only their stat tells them
    const second = await startOnce(root, cacheFile);
    expect(plain(second.map)).toEqual(plain(await readConfigDir(root)));
    // Unchanged, and so not read: services/web's frontend and b3 (each seen twice: through web2 too before).
    expect(second.unchanged).toBe(2);
    // The cache that start wrote holds what it read: the next start reads nothing.
    const third = await startOnce(root, cacheFile);
    expect(plain(third.map)).toEqual(plain(second.map));
    expect(third.unchanged).toBe(second.map.size);
  });

  for (const seed of seeds("CLUSTERF_TEST_SEED", [1, 2])) {
    test(`property (seed ${seed}): after random edits, a restart with the cache hands over what a fresh read gives`, () =>
      withSeed("CLUSTERF_TEST_SEED", seed, async () => {
        let hits = 0;
        await fc.assert(
          fc.asyncProperty(fc.array(fc.array(burstEditArb, { maxLength: 8 }), { minLength: 2, maxLength: 3 }), fc.boolean(), async (rounds, settled) => {
            // Starts with edits in between: each start's cache is the one the start before wrote.
            const { root, cacheFile } = await settledTree();
            await startOnce(root, cacheFile);
            for (const ops of rounds) {
              for (const o of ops) await applyEdit(root, o);
              if (settled) await settle(); // else the start comes within RACY of the edits
              const next = await startOnce(root, cacheFile);
              expect(plain(next.map)).toEqual(plain(await readConfigDir(root)));
              hits += next.unchanged;
            }
          }),
          { seed, numRuns: 20 },
        );
        expect(hits).toBeGreaterThan(0); // the cache was used, not only written
      }),
    30_000);
  }

  test("a live source (watching) starts from the cache, then follows changes as without one", async () => {
    const { root, cacheFile } = await settledTree();
    await startOnce(root, cacheFile);
    let rec: Awaited<ReturnType<typeof h.start>>["rec"] | undefined;
    const logs = await captureLogs(async () => {
      rec = (await h.start(root, { cacheFile, racyMs: RACY })).rec;
    }, "info");
    const fresh = await readConfigDir(root);
    expect(logs.some((l) => l.includes(`unchanged=${fresh.size}`))).toBe(true);
    expect(plain(rec!.map)).toEqual(plain(fresh));
    write(root, "services/web/backends/b2", '{"ipv4":"198.51.100.8","tcp":80}');
    write(root, "services/new/frontend", '{"ipv4":"192.0.2.5"}');
    await converged(root, rec!);
    expect(rec!.map.get("services/new/frontend")?.text).toBe('{"ipv4":"192.0.2.5"}');
  });

  test("a cache of another root or size limit is not used; a damaged one is said and replaced", async () => {
    const { root, cacheFile } = await settledTree();
    await startOnce(root, cacheFile);
    const fresh = plain(await readConfigDir(root));
    expect((await startOnce(root, cacheFile, { maxBytes: 4096 })).unchanged).toBe(0);
    // the last start wrote a cache for maxBytes 4096: of no use at the default limit
    expect((await startOnce(root, cacheFile)).unchanged).toBe(0);
    expect((await startOnce(root, cacheFile)).unchanged).toBe(fresh.length);
    // The same files under another root path (a symlink to it): the cache names the root, so not used.
    const aliased = h.scratch("alias");
    fs.symlinkSync(root, aliased);
    const alias = await startOnce(aliased, cacheFile);
    expect(alias.unchanged).toBe(0);
    expect(plain(alias.map)).toEqual(plain(await readConfigDir(aliased)));
    const moved = h.newRoot();
    sampleTree(moved);
    await settle();
    const other = await startOnce(moved, cacheFile);
    expect(other.unchanged).toBe(0);
    expect(plain(other.map)).toEqual(plain(await readConfigDir(moved)));
    fs.writeFileSync(cacheFile, fs.readFileSync(cacheFile, "utf8").slice(0, 40));
    const damaged = await startOnce(moved, cacheFile);
    expect(damaged.logs.some((l) => l.includes("config-path cache: not readable"))).toBe(true);
    expect(plain(damaged.map)).toEqual(plain(await readConfigDir(moved)));
    expect((await startOnce(moved, cacheFile)).unchanged).toBe(fresh.length);
  });

  test("where the new cache cannot be written, the old one is still used and stays", async () => {
    const { root, cacheFile } = await settledTree();
    const first = await startOnce(root, cacheFile);
    const before = fs.readFileSync(cacheFile, "utf8");
    fs.mkdirSync(`${cacheFile}.tmp${process.pid}`); // where it writes the new one aside
    const second = await startOnce(root, cacheFile);
    expect(second.logs.filter((l) => l.includes("config-path cache: cannot write it; the old one, if any, stays")).length).toBe(1);
    expect(second.unchanged).toBe(first.map.size);
    expect(plain(second.map)).toEqual(plain(first.map));
    expect(fs.readFileSync(cacheFile, "utf8")).toBe(before);
  });

  test("a cache that cannot be written is said once; the read goes on", async () => {
    const root = h.newRoot();
    sampleTree(root);
    const notADir = h.scratch("file");
    fs.writeFileSync(notADir, "");
    const r = await startOnce(root, path.join(notADir, "config-path.cache"));
    expect(plain(r.map)).toEqual(plain(await readConfigDir(root)));
    expect(r.logs.filter((l) => l.includes("config-path cache: cannot write it")).length).toBe(1);
  });
});

describe("the cache's rules (TreeCacheScan)", () => {
  const stat = (ino: number, mtimeMs: number, ctimeMs = mtimeMs, size = 10, dev = 1) => ({ dev, ino, size, mtimeMs, ctimeMs }) as fs.Stats;
  const entry = (name: string, kind: "f" | "d"): DirEntry => ({ name, isFile: () => kind === "f", isDirectory: () => kind === "d", isSymbolicLink: () => false });
  const names = (es: DirEntry[] | null) => es?.map((e) => `${e.name}:${e.isFile() ? "f" : e.isDirectory() ? "d" : "?"}`) ?? null;

  test("a file or directory changed at or after the read's start minus RACY_MS is read again next time, whatever its stat", () => {
    expect(RACY_MS).toBe(2000);
    const file = h.scratch("state") + "/c";
    const root = "/config";
    const dirSt = stat(1, 900);
    const files = { a: stat(2, 999), b: stat(3, 1000), c: stat(4, 500, 1000), d: stat(5, 998.5) };
    const first = new TreeCacheScan(file, root, 100, 1000);
    expect(first.enterDir("", dirSt)).toBeNull(); // nothing cached yet
    first.listed([entry("a", "f"), entry("b", "f"), entry("c", "f"), entry("d", "f"), entry("sub", "d")]);
    for (const [n, st] of Object.entries(files)) first.fileRead(n, st, st.ino, `text ${n}`);
    first.enterDir("sub", stat(6, 1000)); // too recent: its listing is not kept
    first.listed([entry("x", "f")]);
    first.finish();

    const next = new TreeCacheScan(file, root, 100, 10_000);
    expect(names(next.enterDir("", dirSt))).toEqual(["a:f", "b:f", "c:f", "d:f", "sub:d"]);
    const asNow = (name: string, st: fs.Stats) => {
      const known = next.known(name);
      return known ? next.unchanged(known, st) : undefined;
    };
    expect(asNow("a", files.a)).toEqual({ fp: 2, text: "text a" });
    expect(asNow("d", files.d)).toEqual({ fp: 5, text: "text d" });
    expect(asNow("b", files.b)).toBeUndefined(); // mtime not before 1000: not kept
    expect(asNow("c", files.c)).toBeUndefined(); // ctime not before 1000: not kept
    expect(asNow("x", files.a)).toBeUndefined(); // never read
    // any of the five differs: read again
    expect(asNow("a", stat(2, 999, 999, 10, 2))).toBeNull();
    expect(asNow("a", stat(7, 999))).toBeNull();
    expect(asNow("a", stat(2, 999, 999, 11))).toBeNull();
    expect(asNow("a", stat(2, 999.25))).toBeNull();
    expect(asNow("a", stat(2, 999, 999.5))).toBeNull();
    expect(next.enterDir("sub", stat(6, 1000))).toBeNull();
    // the directory itself changed: its listing is not used
    expect(next.enterDir("", stat(1, 901))).toBeNull();
    next.discard();
    // A clock set back below the cached times (this read's trustBefore 998.75): a (999) is not
    // trusted any more, d (998.5) still is.
    const back = new TreeCacheScan(file, root, 100, 998.75);
    expect(back.enterDir("", dirSt)).not.toBeNull(); // the directory's 900 is still settled
    expect(back.unchanged(back.known("a")!, files.a)).toBeNull();
    expect(back.unchanged(back.known("d")!, files.d)).toEqual({ fp: 5, text: "text d" });
    back.discard();
  });

  test("a read that did not finish leaves the old cache as it was, and nothing beside it", () => {
    const dir = h.scratch("state");
    const file = `${dir}/c`;
    const first = new TreeCacheScan(file, "/config", 100, 1000);
    first.enterDir("", stat(1, 900));
    first.listed([entry("a", "f")]);
    first.fileRead("a", stat(2, 900), 7, "text a");
    first.finish();
    const before = fs.readFileSync(file, "utf8");
    const second = new TreeCacheScan(file, "/config", 100, 1000);
    second.enterDir("", stat(1, 950));
    second.listed([entry("b", "f")]);
    second.discard();
    expect(fs.readFileSync(file, "utf8")).toBe(before);
    expect(fs.readdirSync(dir)).toEqual(["c"]);
  });
});
