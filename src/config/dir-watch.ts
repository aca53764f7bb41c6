// The directory source's watcher: chokidar 6 on the -config-path root, its events and its
// backend's raw notifications handed on as paths relative to the root (hints); every decision
// stays with the directory source. It runs on the daemon's thread: on a thread of its own,
// chokidar set up the watch on a new directory later than the source read it, and a kernel
// churn test missed a change made in between (README, benchmarks). Its file-system calls are
// paced instead (watcher-fs.ts), so that its start on a new subtree does not block the loop.

import type { FSWatcher } from "chokidar";
import * as path from "node:path";
import { watcherBusy } from "./watcher-fs.ts";
import { loadChokidar } from "./watcher-pacing.ts";

/** Path relative to the root ("" for the root), or null outside it (a symlinked file's target). */
export function relativeTo(root: string, p: string): string | null {
  // chokidar reports normalised absolute paths: the common case needs no path arithmetic
  if (p.startsWith(root + "/") && !/\/\.{0,2}(\/|$)|\/\//.test(p.slice(root.length))) return p.slice(root.length + 1);
  const rel = path.relative(root, path.resolve(root, p));
  if (rel === "") return "";
  if (rel === ".." || rel.startsWith("../") || path.isAbsolute(rel)) return null;
  return rel;
}

/** Hidden names are not watched, except Kubernetes ConfigMap internals (`..data`, `..<timestamp>`). */
export function isUnwatched(rel: string | null): boolean {
  if (!rel) return false;
  return rel.split("/").some((n) => n.startsWith(".") && !n.startsWith(".."));
}

/** What the watcher reports, as paths relative to the root (null: outside it, a symlinked file's target). */
export interface WatchHandlers {
  /** A path chokidar named. */
  path(rel: string | null): void;
  /** A notification of its backend: `name` changed in the watched directory, or the watched file itself. */
  raw(name: string, watched: string | null): void;
  error(message: string): void;
}

/** chokidar on the tree: start() resolves once every directory is watched. */
export class TreeWatcher {
  private watcher: FSWatcher | null = null;
  private endWait: (() => void) | null = null;
  private closed = false;

  constructor(
    private readonly root: string,
    private readonly depth: number,
    private readonly handlers: WatchHandlers,
  ) {}

  /** Resolves when chokidar is ready (or close() was called meanwhile). */
  async start(): Promise<void> {
    const root = this.root;
    const { watch } = await loadChokidar();
    if (this.closed) return;
    const w = watch(root, {
      ignoreInitial: true,
      followSymlinks: true,
      depth: this.depth,
      atomic: false, // every event is only a hint: no need to hold an unlink back
      ignored: (p: string) => isUnwatched(relativeTo(root, p)),
    });
    this.watcher = w;
    w.on("all", (_event: string, p: string) => this.handlers.path(relativeTo(root, p)));
    // The backend's own notifications too: chokidar coalesces what it reports per path (under
    // Bun, a symlinked file's target saved twice within 50 ms gave one event), a hint must not be lost.
    w.on("raw", (_event: string, name: unknown, details: unknown) => {
      const watched = (details as { watchedPath?: unknown } | undefined)?.watchedPath;
      if (typeof watched === "string") this.handlers.raw(typeof name === "string" ? name : "", relativeTo(root, watched));
    });
    w.on("error", (e: unknown) => this.handlers.error(String((e as Error)?.message ?? e)));
    return new Promise<void>((resolve) => {
      this.endWait = resolve;
      w.once("ready", () => resolve());
    });
  }

  /** chokidar is still at work (file-system calls in flight or waiting): a new directory may not be watched yet. */
  busy(): boolean {
    return this.watcher !== null && watcherBusy();
  }

  /** Closes chokidar (its inotify watches); a start() still waiting ends too. */
  async close(): Promise<void> {
    this.closed = true;
    this.endWait?.();
    const w = this.watcher;
    this.watcher = null;
    await w?.close();
  }
}
