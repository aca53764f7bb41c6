// The directory source's watcher: chokidar 6 on the -config-path root, its events and its
// backend's raw notifications handed on as paths relative to the root (hints); every decision
// stays with the directory source. It runs on the daemon's thread: on a thread of its own,
// chokidar set up the watch on a new directory later than the source read it, and a kernel
// churn test missed a change made in between (README, benchmarks). Its file-system calls are
// paced instead (watcher-fs.ts), so that its start on a new subtree does not block the loop.
// A watched directory that reports its own removal is polled for a while (see STALE_POLL_MS).

import type { FSWatcher } from "chokidar";
import * as fs from "node:fs";
import * as path from "node:path";
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

/**
 * A watched directory removed or renamed (its own name in its own notification) is polled this
 * often, for STALE_WATCH_MS, once it exists again, and a change is reported as a hint for it:
 * replaced under the same name, chokidar at times kept the removed directory's watch for the new
 * one (a kernel churn test saw a file written into a re-created service directory go without any
 * event, in 2 of 8 runs).
 */
const STALE_POLL_MS = 250;
const STALE_WATCH_MS = 60_000;
/** Files of one directory whose stat goes into its signature at most (a poll stays short). */
const SIGNATURE_MAX_STATS = 1000;

/**
 * A directory's entries as a string: names and kinds, and for files their inode, size and
 * modification time (nothing is read; names only past SIGNATURE_MAX_STATS files); null when it
 * cannot be listed (gone).
 */
export function entriesSignature(abs: string): string | null {
  try {
    const parts: string[] = [];
    let stats = 0;
    for (const e of fs.readdirSync(abs, { withFileTypes: true })) {
      if (!e.isFile() || ++stats > SIGNATURE_MAX_STATS) {
        parts.push(`${e.name}/${e.isDirectory() ? "d" : "o"}`);
        continue;
      }
      try {
        const st = fs.statSync(abs + "/" + e.name);
        parts.push(`${e.name}/${st.ino}:${st.size}:${st.mtimeMs}`);
      } catch {
        parts.push(`${e.name}/gone`);
      }
    }
    return parts.sort().join("\0");
  } catch {
    return null;
  }
}

/** chokidar on the tree: start() resolves once every directory is watched. */
export class TreeWatcher {
  private watcher: FSWatcher | null = null;
  /** watcher-fs.ts's watcherBusy, once start() has loaded it. */
  private watcherBusy: () => boolean = () => false;
  private endWait: (() => void) | null = null;
  private closed = false;
  /** Directories whose watch may be stale (absolute paths): until when, and their last signature. */
  private stale = new Map<string, { until: number; signature: string | null }>();
  private staleTimer: ReturnType<typeof setInterval> | null = null;

  constructor(
    private readonly root: string,
    private readonly depth: number,
    private readonly handlers: WatchHandlers,
  ) {}

  /** Resolves when chokidar is ready (or close() was called meanwhile). */
  async start(): Promise<void> {
    const root = this.root;
    // watcher-fs.ts (the pacing of chokidar's calls) only now: a source that watches nothing
    // (-once) loads neither it nor node:fs/promises.
    const [{ watch }, { watcherBusy }] = await Promise.all([loadChokidar(), import("./watcher-fs.ts")]);
    this.watcherBusy = watcherBusy;
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
      if (typeof watched !== "string") return;
      if (watched !== root && name === path.basename(watched)) this.pollStale(watched);
      this.handlers.raw(typeof name === "string" ? name : "", relativeTo(root, watched));
    });
    w.on("error", (e: unknown) => this.handlers.error(String((e as Error)?.message ?? e)));
    return new Promise<void>((resolve) => {
      this.endWait = resolve;
      w.once("ready", () => resolve());
    });
  }

  /** chokidar is still at work (file-system calls in flight or waiting): a new directory may not be watched yet. */
  busy(): boolean {
    return this.watcher !== null && this.watcherBusy();
  }

  /** Polls a directory whose own watch may be stale (see STALE_POLL_MS). */
  private pollStale(abs: string): void {
    if (this.closed) return;
    this.stale.set(abs, { until: Date.now() + STALE_WATCH_MS, signature: null });
    this.staleTimer ??= setInterval(() => this.pollStaleNow(), STALE_POLL_MS);
  }

  /** A polled directory whose entries changed since the last look is reported (a hint for it). */
  private pollStaleNow(): void {
    const now = Date.now();
    for (const [abs, s] of this.stale) {
      if (now > s.until) {
        this.stale.delete(abs);
        continue;
      }
      const signature = entriesSignature(abs);
      if (signature === s.signature) continue;
      // the first look too: what changed between the removal and now is not known
      if (signature !== null) this.handlers.path(relativeTo(this.root, abs));
      s.signature = signature;
    }
    if (!this.stale.size) this.stopStalePoll();
  }

  private stopStalePoll(): void {
    if (this.staleTimer) clearInterval(this.staleTimer);
    this.staleTimer = null;
    this.stale.clear();
  }

  /** Closes chokidar (its inotify watches); a start() still waiting ends too. */
  async close(): Promise<void> {
    this.closed = true;
    this.stopStalePoll();
    this.endWait?.();
    const w = this.watcher;
    this.watcher = null;
    await w?.close();
  }
}
