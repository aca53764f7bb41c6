// chokidar's file-system calls are paced (src/config/watcher-fs.ts, watcher-pacing.ts): a bound
// on the calls in flight, turns of the event loop between slices, and chokidar really loaded with
// them. What it buys (a tree moved in no longer blocks the loop) is measured by bench/stall.ts and
// proved in the kernel by test/kernel/stall.kernel.ts.

import { afterAll, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { TreeWatcher } from "../src/config/dir-watch.ts";
import { callLimiter, pacedCalls } from "../src/config/watcher-fs.ts";
import { pacedSource } from "../src/config/watcher-pacing.ts";
import { Pacer } from "../src/util/slices.ts";
import { countTurns } from "./support/turns.ts";

const base = fs.mkdtempSync(path.join(os.tmpdir(), "clusterf-pacing-"));
afterAll(() => fs.rmSync(base, { recursive: true, force: true }));

/** A call that stays in flight until its release is called; returns its argument. */
function heldCalls() {
  const releases: (() => void)[] = [];
  let inFlight = 0;
  let most = 0;
  const call = (x: number) =>
    new Promise<number>((resolve) => {
      most = Math.max(most, ++inFlight);
      let done = false;
      releases.push(() => {
        if (done) return;
        done = true;
        inFlight--;
        resolve(x);
      });
    });
  return { call, releases, inFlight: () => inFlight, most: () => most };
}

const settle = async () => {
  for (let i = 0; i < 5; i++) await Promise.resolve();
};

test("at most `limit` calls in flight; the next starts when one ends, in the order asked; every result comes back", async () => {
  const held = heldCalls();
  const limiter = callLimiter(3, new Pacer(1_000_000));
  const wrapped = limiter.wrap(held.call);
  expect(limiter.idle()).toBe(true);
  const results = Array.from({ length: 10 }, (_, i) => wrapped(i));
  await settle();
  expect(limiter.idle()).toBe(false);
  expect(held.inFlight()).toBe(3);
  expect(limiter.started()).toBe(3);
  held.releases[1]!();
  await settle();
  expect(held.inFlight()).toBe(3);
  expect(limiter.started()).toBe(4);
  // the fourth call asked is the one that started
  held.releases[3]!();
  await settle();
  expect(limiter.started()).toBe(5);
  while (limiter.started() < 10 || held.inFlight() > 0) {
    for (const r of held.releases.splice(0)) r();
    await settle();
  }
  expect(await Promise.all(results)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  expect(held.most()).toBe(3);
  expect(limiter.idle()).toBe(true); // what the second look of the directory source waits for
});

test("a failed call frees its place", async () => {
  const limiter = callLimiter(1, new Pacer(1_000_000));
  const wrapped = limiter.wrap(async (fail: boolean) => {
    if (fail) throw new Error("boom");
    return "ok";
  });
  await expect(wrapped(true)).rejects.toThrow("boom");
  expect(await wrapped(false)).toBe("ok");
});

test("calls wait for a turn of the event loop once the slice has run out", async () => {
  const limiter = callLimiter(1000, new Pacer(0)); // every slice has run out at once
  const wrapped = limiter.wrap(async (x: number) => x);
  const turns = countTurns();
  await Promise.all(Array.from({ length: 50 }, (_, i) => wrapped(i)));
  turns.stop();
  expect(turns.count).toBeGreaterThanOrEqual(1);
  const unpaced = callLimiter(1000, new Pacer(1_000_000)).wrap(async (x: number) => x);
  const turns2 = countTurns();
  await Promise.all(Array.from({ length: 50 }, (_, i) => unpaced(i)));
  turns2.stop();
  expect(turns2.count).toBe(0);
});

test("the rewrite points chokidar's and readdirp's import of node:fs/promises at the paced module, nothing else", () => {
  const src = [
    `import { realpath as fsrealpath, lstat, readlink, stat } from 'node:fs/promises';`,
    `import { lstat, readdir, realpath, stat } from "fs/promises";`,
    `import { watch as fsWatch, realpathSync } from 'node:fs';`,
    `import * as sp from 'node:path';`,
  ].join("\n");
  expect(pacedSource(src, "/x/watcher-fs.ts").split("\n")).toEqual([
    `import { realpath as fsrealpath, lstat, readlink, stat } from "/x/watcher-fs.ts";`,
    `import { lstat, readdir, realpath, stat } from "/x/watcher-fs.ts";`,
    `import { watch as fsWatch, realpathSync } from 'node:fs';`,
    `import * as sp from 'node:path';`,
  ]);
});

test("the watcher's chokidar makes its file-system calls through the paced module", async () => {
  const root = path.join(base, "tree");
  for (let i = 0; i < 20; i++) {
    fs.mkdirSync(path.join(root, "services", `s${i}`, "backends"), { recursive: true });
    fs.writeFileSync(path.join(root, "services", `s${i}`, "frontend.json"), "{}");
  }
  const before = pacedCalls();
  const w = new TreeWatcher(root, 8, { path() {}, raw() {}, error() {} });
  await w.start();
  await w.close();
  // at least a readdir of each of the 41 directories
  expect(pacedCalls() - before).toBeGreaterThanOrEqual(41);
});
