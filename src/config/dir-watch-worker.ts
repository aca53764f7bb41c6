// The directory watcher's thread (see dir-watch.ts): chokidar 6 on the -config-path root, its
// events and its backend's raw notifications forwarded to the main thread in batches, one per
// turn of this thread's event loop.

import { watch, type FSWatcher } from "chokidar";
import { isUnwatched, relativeTo, type FromWatcher, type Hint, type ToWatcher } from "./dir-watch.ts";
import { niceThisThread } from "../util/thread-priority.ts";

declare const self: Worker;

let watcher: FSWatcher | null = null;
let batch: Hint[] = [];
let flushing = false;

function post(m: FromWatcher): void {
  self.postMessage(m);
}

/** Hints in one message at most: the main thread takes each message in one go. */
const BATCH = 512;

function hint(h: Hint): void {
  batch.push(h);
  if (batch.length >= BATCH) {
    post({ type: "hints", hints: batch });
    batch = [];
  }
  if (flushing) return;
  flushing = true;
  setImmediate(() => {
    flushing = false;
    if (!batch.length) return;
    const hints = batch;
    batch = [];
    post({ type: "hints", hints });
  });
}

/** The watcher's own priority: below the daemon's main thread (see thread-priority.ts). */
const WATCHER_NICE = 10;

function start(root: string, depth: number): void {
  niceThisThread(WATCHER_NICE);
  const w = watch(root, {
    ignoreInitial: true,
    followSymlinks: true,
    depth,
    atomic: false, // every event is only a hint: no need to hold an unlink back
    ignored: (p: string) => isUnwatched(relativeTo(root, p)),
  });
  watcher = w;
  w.on("all", (_event: string, p: string) => hint(relativeTo(root, p)));
  // The backend's own notifications too: chokidar coalesces what it reports per path (under Bun,
  // a symlinked file's target saved twice within 50 ms gave one event), a hint must not be lost.
  w.on("raw", (_event: string, name: unknown, details: unknown) => {
    const watched = (details as { watchedPath?: unknown } | undefined)?.watchedPath;
    if (typeof watched === "string") hint([typeof name === "string" ? name : "", relativeTo(root, watched)]);
  });
  w.on("error", (e: unknown) => post({ type: "error", message: String((e as Error)?.message ?? e) }));
  w.once("ready", () => post({ type: "ready" }));
}

self.onmessage = async (ev: MessageEvent<ToWatcher>) => {
  const m = ev.data;
  if (m.type === "start") start(m.root, m.depth);
  else if (m.type === "close") {
    await watcher?.close();
    watcher = null;
    post({ type: "closed" });
  }
};
