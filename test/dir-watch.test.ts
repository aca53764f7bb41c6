// The -config-path watcher against the edits that watchers are known to miss: a second save
// shortly after the first, directories replaced under the same name, ConfigMap `..data` swaps,
// random bursts. The periodic re-read is off (rescanMs 0), so only the watcher can see a change;
// the debounce is 1 ms, so that a save the watcher drops is not covered by a later read.

import { afterAll, afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import fc from "fast-check";
import { DirSource } from "../src/config/dir-source.ts";
import { configureLog } from "../src/util/log.ts";
import { inotifyWatches } from "./support/proc.ts";
import { applyEdit, burstEditArb, converged, Harness, seeds, sleep, withSeed, write } from "./support/dir-tree.ts";
import { RecordingSink } from "./support/recording-sink.ts";
import { until } from "./support/until.ts";

configureLog({ level: "error" });

const h = new Harness();
afterEach(() => h.cleanup());
afterAll(() => h.remove());

/** Only the watcher: no periodic re-read, no root poll, and no debounce to hide a dropped event. */
const WATCH_ONLY = { rescanMs: 0, rootPollMs: 3_600_000, debounceMs: 1 };

const watchTest = (name: string, fn: () => Promise<void>, timeoutMs?: number) => h.test(name, fn, timeoutMs);

type Save = (root: string, rel: string, text: string) => void;
const SAVES: Record<string, Save> = {
  plain: (root, rel, text) => write(root, rel, text),
  // vim's default: the original renamed aside as a backup, the file written anew, the backup removed
  vim: (root, rel, text) => {
    const p = path.join(root, rel);
    fs.renameSync(p, p + "~");
    fs.writeFileSync(p, text);
    fs.rmSync(p + "~");
  },
  // most other editors and config tools: a temporary file renamed over the original
  "rename-over": (root, rel, text) => {
    const p = path.join(root, rel);
    fs.writeFileSync(p + ".tmp", text);
    fs.renameSync(p + ".tmp", p);
  },
};

describe("DirSource watcher", () => {
  watchTest("watch: false (-once) reads once and starts no watcher", async () => {
    const root = h.newRoot();
    write(root, "routes/r1", "{}");
    const before = inotifyWatches();
    const { src, rec } = await h.start(root, { watch: false, rescanMs: 50, rootPollMs: 50 });
    expect(rec.texts()).toEqual({ "routes/r1": "{}" });
    expect(inotifyWatches()).toBe(before);
    write(root, "routes/r2", "{}");
    await sleep(200);
    expect(rec.updates).toEqual([]);
    expect(rec.snapshots.length).toBe(1);
    // a resync still reads the tree, handed over as a snapshot (no fingerprints are kept without
    // watching): deletions too
    await src.resync();
    expect(rec.texts()).toEqual({ "routes/r1": "{}", "routes/r2": "{}" });
    fs.rmSync(path.join(root, "routes/r1"));
    await src.resync();
    expect(rec.texts()).toEqual({ "routes/r2": "{}" });
    expect(rec.snapshots.length).toBe(3);
    expect(rec.updates).toEqual([]);
    // a watching source on the same tree holds inotify watches (the count above can see them)
    await h.start(root, {});
    expect(inotifyWatches()).toBeGreaterThan(before);
  });

  watchTest("stop() while the watcher is starting ends start() too", async () => {
    const root = h.newRoot();
    for (let i = 0; i < 200; i++) write(root, `services/s${i}/backends/b1`, "{}");
    const src = new DirSource({ root });
    const started = src.start(new RecordingSink("local"));
    await src.stop();
    const end = await Promise.race([started.then(() => "started"), sleep(3000).then(() => "hung")]);
    expect(end).toBe("started");
  });

  for (const [style, save] of Object.entries(SAVES)) {
    for (const gap of [5, 20, 40]) {
      for (const linked of [false, true]) {
        watchTest(`two ${style} saves ${gap} ms apart${linked ? " of a symlinked file's target" : ""}: the second is seen`, async () => {
          const root = h.newRoot();
          // the target lives outside the tree, or is the file itself
          const store = linked ? h.scratch("store") : root;
          const rel = linked ? "frontend.json" : "services/web/frontend.json";
          write(store, rel, '{"tcp":1}');
          if (linked) write(root, "services/web/.keep", "");
          if (linked) fs.symlinkSync(path.join(store, rel), path.join(root, "services/web/frontend.json"));
          const { rec } = await h.start(root, WATCH_ONLY);
          for (let round = 2; round <= 6; round += 2) {
            save(store, rel, `{"tcp":${round}}`);
            await until(() => rec.map.get("services/web/frontend")?.text === `{"tcp":${round}}`, 1000);
            save(store, rel, `{"tcp":${round + 1}}`);
            await sleep(gap);
            save(store, rel, `{"tcp":${round + 1}} `);
            await until(() => rec.map.get("services/web/frontend")?.text === `{"tcp":${round + 1}} `, 1000);
          }
        });
      }
    }
  }

  watchTest("a directory replaced by rm -r and mkdir, then written: seen", async () => {
    const root = h.newRoot();
    write(root, "services/web/frontend", '{"tcp":80}');
    write(root, "services/web/backends/b1", "{}");
    const { rec } = await h.start(root, WATCH_ONLY);
    for (let i = 0; i < 3; i++) {
      fs.rmSync(path.join(root, "services/web"), { recursive: true });
      fs.mkdirSync(path.join(root, "services/web/backends"), { recursive: true });
      await until(() => rec.map.size === 0, 1000);
      await sleep(50); // the watcher has had its time to see the new directory
      write(root, "services/web/frontend", `{"tcp":${81 + i}}`);
      write(root, "services/web/backends/b2", "{}");
      await converged(root, rec, 1000);
      expect(rec.texts()).toEqual({ "services/web/backends/b2": "{}", "services/web/frontend": `{"tcp":${81 + i}}` });
    }
  });

  watchTest("a directory replaced by a mv swap, then written: seen", async () => {
    const root = h.newRoot();
    write(root, "services/web/frontend", '{"tcp":80}');
    write(root, "services/web/backends/b1", "{}");
    const { rec } = await h.start(root, WATCH_ONLY);
    const web = path.join(root, "services/web");
    for (let i = 0; i < 3; i++) {
      write(root, "services/web.new/frontend", `{"tcp":${81 + i}}`);
      fs.mkdirSync(path.join(root, "services/web.new/backends"));
      fs.renameSync(web, web + ".old");
      fs.renameSync(web + ".new", web);
      fs.rmSync(web + ".old", { recursive: true });
      await converged(root, rec, 1000);
      expect(rec.texts()).toEqual({ "services/web/frontend": `{"tcp":${81 + i}}` });
      await sleep(50);
      write(root, "services/web/backends/b2", `{"weight":${i}}`);
      write(root, "services/web/frontend", `{"tcp":${91 + i}}`);
      await converged(root, rec, 1000);
      expect(rec.texts()).toEqual({ "services/web/backends/b2": `{"weight":${i}}`, "services/web/frontend": `{"tcp":${91 + i}}` });
    }
  });

  for (const gap of [5, 20, 40]) {
    watchTest(`Kubernetes ConfigMap: ..data swapped twice ${gap} ms apart: the second is seen`, async () => {
      const root = h.newRoot();
      write(root, "..v0/frontend", '{"tcp":80}');
      write(root, "..v0/backend", "{}");
      fs.symlinkSync("..v0", path.join(root, "..data"));
      fs.symlinkSync("..data/frontend", path.join(root, "frontend"));
      fs.symlinkSync("..data/backend", path.join(root, "backend"));
      const { rec } = await h.start(root, WATCH_ONLY);
      // as the kubelet does it: a new timestamped directory, ..data re-pointed atomically, the old one removed
      const swap = (i: number) => {
        write(root, `..v${i}/frontend`, `{"tcp":${80 + i}}`);
        write(root, `..v${i}/backend`, `{"weight":${i}}`);
        fs.symlinkSync(`..v${i}`, path.join(root, "..data_tmp"));
        fs.renameSync(path.join(root, "..data_tmp"), path.join(root, "..data"));
        fs.rmSync(path.join(root, `..v${i - 1}`), { recursive: true });
      };
      const applied = (i: number) => until(() => rec.map.get("frontend")?.text === `{"tcp":${80 + i}}` && rec.map.get("backend")?.text === `{"weight":${i}}`, 1000);
      for (let i = 1; i <= 5; i += 2) {
        swap(i);
        await applied(i);
        await sleep(gap);
        swap(i + 1);
        await applied(i + 1);
      }
      await converged(root, rec, 1000);
    });
  }

  // A deploy tool's `..data`-like swap between two staging directories, each rebuilt under its
  // old name (rm -r + mkdir), and then an operator's in-place edit of the live file (vim writes a
  // symlinked file in place, through the link): the edit lands in a directory replaced under the
  // same name, the one chokidar 4 stopped watching.
  for (const gap of [5, 40]) {
    watchTest(`..data swapped between two rebuilt directories, the live file then edited in place ${gap} ms later: the edit is seen`, async () => {
      const root = h.newRoot();
      write(root, "..a/frontend", '{"tcp":80}');
      fs.symlinkSync("..a", path.join(root, "..data"));
      fs.symlinkSync("..data/frontend", path.join(root, "frontend"));
      const { rec } = await h.start(root, WATCH_ONLY);
      for (let i = 1; i <= 4; i++) {
        const buf = i % 2 ? "..b" : "..a";
        fs.rmSync(path.join(root, buf), { recursive: true, force: true });
        write(root, `${buf}/frontend`, `{"tcp":${80 + i}}`);
        fs.symlinkSync(buf, path.join(root, "..data_tmp"));
        fs.renameSync(path.join(root, "..data_tmp"), path.join(root, "..data"));
        await until(() => rec.map.get("frontend")?.text === `{"tcp":${80 + i}}`, 1000);
        await sleep(gap);
        fs.writeFileSync(path.join(root, "frontend"), `{"tcp":${180 + i}}`);
        await until(() => rec.map.get("frontend")?.text === `{"tcp":${180 + i}}`, 1000);
      }
      await converged(root, rec, 1000);
    });
  }

  // At least 200 bursts of 10-20 random edits on one running source; after each, the source
  // equals a fresh read. The fixed seeds stay as regression cases; every run adds a new one.
  for (const seed of seeds("DIR_WATCH_SEED", [1, 20261201])) {
    watchTest(
      `random bursts (seed ${seed}): after each, the source equals a fresh read`,
      () =>
        withSeed("DIR_WATCH_SEED", seed, async () => {
          const bursts = fc.sample(fc.array(burstEditArb, { minLength: 10, maxLength: 20 }), { seed, numRuns: Number(process.env.DIR_WATCH_BURSTS ?? 200) });
          const root = h.newRoot();
          write(root, "services/a/frontend", "{}");
          write(root, "services/a/backends/b1.json", '{"tcp":1}');
          const { rec } = await h.start(root, WATCH_ONLY);
          for (let i = 0; i < bursts.length; i++) {
            for (const e of bursts[i]!) await applyEdit(root, e);
            try {
              // Without the periodic re-read a missed event never converges, however long the wait:
              // the bound only has to outlast a loaded machine.
              await converged(root, rec, 5000);
            } catch (e) {
              throw new Error(`burst ${i} (${JSON.stringify(bursts[i])}): ${(e as Error).message}`);
            }
          }
        }),
      120_000,
    );
  }
});
