// The directory source's watcher runs chokidar on a thread of its own (dir-watch-worker.ts).
// chokidar's start, and its pick-up of a tree moved in at once (an lstat, a readdir and an inotify
// watch for each of thousands of new directories), are hundreds of milliseconds of JavaScript
// (seconds on a slow machine) that blocked the daemon's event loop: /healthz went unanswered and
// an advertised route's lease keep-alives waited (docs/config.md §4). The thread only forwards
// what chokidar reports, as paths relative to the root; every decision stays with the directory
// source on the main thread.

import * as path from "node:path";

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

/**
 * What the thread reports: a path chokidar named (relative; null outside the root), or a
 * notification of its backend: `name` changed in the watched directory (or the watched file
 * itself changed), as [name, watched directory or file].
 */
export type Hint = string | null | [name: string, watched: string | null];

export type FromWatcher =
  | { type: "ready" }
  | { type: "hints"; hints: Hint[] }
  | { type: "error"; message: string }
  | { type: "closed" };

export type ToWatcher = { type: "start"; root: string; depth: number } | { type: "close" };

export interface WatchHandlers {
  hints(hints: Hint[]): void;
  error(message: string): void;
}

/**
 * The worker's module: next to this one in the source tree; in a `bun build --compile` binary, an
 * entry point of the build (packaging/build.ts adds it), named by its path below the entry
 * points' common folder, the repository.
 */
function workerModule(): string {
  if (import.meta.url.includes("/$bunfs/")) return "./src/config/dir-watch-worker.ts";
  return new URL("./dir-watch-worker.ts", import.meta.url).href;
}

/** chokidar on its own thread: started by start(), which resolves once every directory is watched. */
export class WatcherThread {
  private readonly worker: Worker;
  private endWait: (() => void) | null = null;
  private closed: Promise<void> | null = null;

  constructor(
    private readonly root: string,
    private readonly depth: number,
    private readonly handlers: WatchHandlers,
  ) {
    this.worker = new Worker(workerModule());
  }

  /** Resolves when chokidar is ready (or close() was called meanwhile); rejects if the thread fails. */
  start(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.endWait = resolve;
      this.worker.onerror = (e) => reject(new Error(`directory watcher thread: ${e.message}`));
      this.worker.onmessage = (ev: MessageEvent<FromWatcher>) => {
        const m = ev.data;
        if (m.type === "ready") resolve();
        else if (m.type === "hints") this.handlers.hints(m.hints);
        else if (m.type === "error") this.handlers.error(m.message);
      };
      this.post({ type: "start", root: this.root, depth: this.depth });
    });
  }

  /** Closes chokidar (its inotify watches) and ends the thread. */
  close(): Promise<void> {
    this.endWait?.();
    this.closed ??= new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.worker.terminate();
        resolve();
      };
      // A thread that does not answer (it failed to start) is ended anyway.
      const timer = setTimeout(done, 2000);
      this.worker.onmessage = (ev: MessageEvent<FromWatcher>) => {
        if (ev.data.type === "closed") done();
      };
      this.post({ type: "close" });
    });
    return this.closed;
  }

  private post(m: ToWatcher): void {
    this.worker.postMessage(m);
  }
}
