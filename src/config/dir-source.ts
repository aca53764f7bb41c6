// The -config-path source: a directory tree whose file paths are keys (CONTRACT §2, §3).
//
//   services/web/frontend.json            -> key services/web/frontend, format json
//   services/web/backends/b1.yaml         -> key services/web/backends/b1, format yaml
//   routes/r1                             -> key routes/r1, format json (no extension)
//
// How it stays correct: chokidar events are only hints. Each event marks a file (its key group)
// or a directory (its subtree) dirty; after a short debounce the dirty parts are re-read from disk
// and diffed against the last state handed to the sink, so the sink only sees real changes and the
// accumulated state always converges to what a fresh read of the tree would give, whatever order
// or shape the events had (atomic saves, renames, `rm -r`, bursts). A slow periodic full rescan
// (`rescanMs`) is a safety net for events the kernel drops (inotify queue overflow, watch limits).
//
// Decisions an operator would expect (not spelled out by the contract):
// - A missing root directory is not fatal: the daemon keeps running with an empty local config
//   (plus a warning) and picks the directory up when it appears (chokidar watches the parent; a
//   poll covers a missing parent too). Removing the whole directory later empties the local config,
//   exactly as a fresh read would.
// - A file that cannot be read (permissions, over `maxBytes`) keeps its previous value (if any): a
//   transient problem must not withdraw a service. A file that vanished is a deletion.
// - Ignored names, at any depth: hidden (`.` first; hidden directories are not descended), editor
//   leftovers (`~` last, `#…#`, `.swp`/`.swo`/`.swx`…, `.tmp`, vim's `4913` probe), and package
//   manager leftovers (`.dpkg-old`, `.dpkg-new`, `.dpkg-dist`, `.rpmnew`, `.rpmsave`, `.rpmorig`),
//   which appear in /etc/clusterf on package upgrades. Extensions are matched case-sensitively.
// - Two files with the same key (`frontend.json`, `frontend.yaml`): the name that sorts first
//   (plain code-unit order) wins; a warning names both.
// - Symlinks are followed (files and directories; directory loops are cut). Other non-regular
//   files (fifos, sockets, devices) are ignored and never opened.

import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { watch, type FSWatcher } from "chokidar";
import type { ConfigSource, KeyEvent, RawValue, SourceSink, ValueFormat } from "./source.ts";
import { debug, info, warn } from "../util/log.ts";

export interface DirSourceOptions {
  /** The -config-path directory. */
  root: string;
  /** Quiet time after the last filesystem event before re-reading (ms). Default 50. */
  debounceMs?: number;
  /** Upper bound on how long a continuous stream of events can delay an update (ms). Default max(1000, 10 × debounceMs). */
  maxDelayMs?: number;
  /** Files larger than this are not read (previous value kept, warning logged). Default 1 MiB. */
  maxBytes?: number;
  /** Full re-read of the tree every this many ms, as a safety net for lost events; 0 = off. Default 60000. */
  rescanMs?: number;
  /** While the root is missing, check for it this often (ms). Default 1000. */
  rootPollMs?: number;
}

const SOURCE = "local" as const;
const DEFAULT_MAX_BYTES = 1024 * 1024;
const MAX_DEPTH = 32;

const EXTENSIONS: ReadonlyArray<[string, ValueFormat]> = [
  [".json", "json"],
  [".yaml", "yaml"],
  [".yml", "yaml"],
];

const LEFTOVER_SUFFIXES = [
  "~",
  ".swp", ".swo", ".swn", ".swx",
  ".tmp",
  ".dpkg-old", ".dpkg-new", ".dpkg-dist", ".dpkg-tmp",
  ".rpmnew", ".rpmsave", ".rpmorig",
];

/** True for a single path component (file or directory name) that the source ignores. */
export function isIgnoredName(name: string): boolean {
  if (name === "" || name.startsWith(".")) return true;
  if (name === "4913") return true; // vim's "can I write here" probe file
  if (name.length >= 2 && name.startsWith("#") && name.endsWith("#")) return true; // emacs autosave
  for (const s of LEFTOVER_SUFFIXES) if (name.endsWith(s)) return true;
  return false;
}

/** The key-name part and the parser of a file name: `b1.yaml` → {stem: "b1", format: "yaml"}. */
export function parseFileName(name: string): { stem: string; format: ValueFormat } {
  for (const [ext, format] of EXTENSIONS) {
    if (name.length > ext.length && name.endsWith(ext)) return { stem: name.slice(0, -ext.length), format };
  }
  return { stem: name, format: "json" };
}

/** "/"-joined relative path; "" is the root. */
function joinRel(dir: string, name: string): string {
  return dir === "" ? name : `${dir}/${name}`;
}

function isUnder(rel: string, dir: string): boolean {
  return dir === "" || rel === dir || rel.startsWith(dir + "/");
}

function errCode(e: unknown): string {
  return (e as NodeJS.ErrnoException)?.code ?? String(e);
}

const GONE = new Set(["ENOENT", "ENOTDIR", "EISDIR", "ELOOP"]);

/** What a scan found: values, plus keys / key prefixes whose previous value must be kept (unreadable). */
interface ScanResult {
  values: Map<string, RawValue>;
  keepKeys: Set<string>;
  keepPrefixes: string[]; // relative dirs that could not be listed
}

function newScan(): ScanResult {
  return { values: new Map(), keepKeys: new Set(), keepPrefixes: [] };
}

/** The reading half, without any watching: also used for one-shot reads. */
class TreeReader {
  /** Conflicting file names per key, as last warned about (to warn once per distinct conflict). */
  private conflicts = new Map<string, string>();

  constructor(
    readonly root: string,
    private readonly maxBytes: number,
  ) {}

  abs(rel: string): string {
    return rel === "" ? this.root : path.join(this.root, rel);
  }

  /** Re-read the subtree at `relDir` ("" = everything). */
  async scanTree(relDir: string): Promise<ScanResult> {
    const res = newScan();
    // A dirty directory below the root is only trusted if the path to it is still a plain walk
    // (no ignored component); events are filtered that way already, this is belt and braces.
    if (relDir !== "" && relDir.split("/").some(isIgnoredName)) return res;
    await this.scanDir(relDir, null, res, new Set(), 0);
    return res;
  }

  /** Re-read the one key a file name maps to, in its directory (all same-key files compete). */
  async scanKey(relFile: string): Promise<{ key: string; res: ScanResult } | null> {
    const parts = relFile.split("/");
    if (parts.some(isIgnoredName)) return null;
    const name = parts.pop()!;
    const relDir = parts.join("/");
    const { stem } = parseFileName(name);
    const res = newScan();
    await this.scanDir(relDir, stem, res, new Set(), MAX_DEPTH);
    return { key: joinRel(relDir, stem), res };
  }

  /**
   * List one directory. With `onlyStem`, only the files of that key are considered and nothing is
   * descended; otherwise subdirectories are scanned recursively.
   */
  private async scanDir(relDir: string, onlyStem: string | null, res: ScanResult, seen: Set<string>, depth: number): Promise<void> {
    const absDir = this.abs(relDir);
    let entries: fs.Dirent[];
    try {
      if (onlyStem === null) {
        const st = await fsp.stat(absDir);
        if (!st.isDirectory()) return;
        const id = `${st.dev}:${st.ino}`;
        if (seen.has(id)) {
          warn("config-path: directory symlink loop, not descending", { source: SOURCE, path: absDir });
          return;
        }
        seen = new Set(seen).add(id);
      }
      entries = await fsp.readdir(absDir, { withFileTypes: true });
    } catch (e) {
      if (GONE.has(errCode(e))) return;
      warn("config-path: cannot list directory, keeping its previous keys", { source: SOURCE, path: absDir, error: errCode(e) });
      res.keepPrefixes.push(relDir);
      return;
    }

    // Candidate files per key stem, and subdirectories.
    const groups = new Map<string, string[]>();
    const subdirs: string[] = [];
    for (const ent of entries) {
      const name = ent.name;
      if (isIgnoredName(name)) continue;
      let kind: "file" | "dir" | "other";
      if (ent.isFile()) kind = "file";
      else if (ent.isDirectory()) kind = "dir";
      else if (ent.isSymbolicLink()) {
        try {
          const st = await fsp.stat(path.join(absDir, name));
          kind = st.isFile() ? "file" : st.isDirectory() ? "dir" : "other";
        } catch (e) {
          debug("config-path: dangling symlink ignored", { source: SOURCE, path: path.join(absDir, name), error: errCode(e) });
          continue;
        }
      } else kind = "other";

      if (kind === "dir") {
        if (onlyStem === null) subdirs.push(name);
      } else if (kind === "file") {
        const { stem } = parseFileName(name);
        if (onlyStem !== null && stem !== onlyStem) continue;
        let g = groups.get(stem);
        if (!g) groups.set(stem, (g = []));
        g.push(name);
      }
    }

    for (const [stem, names] of groups) {
      names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      const key = joinRel(relDir, stem);
      this.noteConflict(key, relDir, names);
      await this.readFile(key, joinRel(relDir, names[0]!), parseFileName(names[0]!).format, res);
    }
    if (onlyStem !== null) {
      if (!groups.has(onlyStem)) this.noteConflict(joinRel(relDir, onlyStem), relDir, []);
      return;
    }
    if (depth >= MAX_DEPTH) {
      if (subdirs.length) warn("config-path: tree too deep, not descending", { source: SOURCE, path: absDir });
      return;
    }
    for (const d of subdirs) await this.scanDir(joinRel(relDir, d), null, res, seen, depth + 1);
  }

  private noteConflict(key: string, relDir: string, names: string[]): void {
    if (names.length < 2) {
      this.conflicts.delete(key);
      return;
    }
    const sig = names.join("\0");
    if (this.conflicts.get(key) === sig) return;
    this.conflicts.set(key, sig);
    warn("config-path: several files for one key, the first name wins", {
      source: SOURCE,
      key,
      used: this.abs(joinRel(relDir, names[0]!)),
      ignored: names.slice(1).map((n) => this.abs(joinRel(relDir, n))).join(","),
    });
  }

  private async readFile(key: string, rel: string, format: ValueFormat, res: ScanResult): Promise<void> {
    const file = this.abs(rel);
    let fh: fsp.FileHandle | undefined;
    try {
      // O_NONBLOCK: a file swapped for a fifo between listing and opening must not hang us.
      fh = await fsp.open(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      const st = await fh.stat();
      if (!st.isFile()) return; // not a regular file (any more): no value
      if (st.size > this.maxBytes) {
        warn("config-path: file too large, not read (previous value kept)", { source: SOURCE, key, path: file, size: st.size, limit: this.maxBytes });
        res.keepKeys.add(key);
        return;
      }
      const buf = await fh.readFile();
      if (buf.length > this.maxBytes) {
        warn("config-path: file too large, not read (previous value kept)", { source: SOURCE, key, path: file, size: buf.length, limit: this.maxBytes });
        res.keepKeys.add(key);
        return;
      }
      let text = buf.toString("utf8");
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1); // byte order mark from some editors
      res.values.set(key, { text, format, origin: file });
    } catch (e) {
      const code = errCode(e);
      if (GONE.has(code)) {
        debug("config-path: file vanished while reading", { source: SOURCE, key, path: file });
        return;
      }
      warn("config-path: cannot read file (previous value kept)", { source: SOURCE, key, path: file, error: code });
      res.keepKeys.add(key);
    } finally {
      await fh?.close().catch(() => {});
    }
  }
}

/**
 * Read a -config-path tree once (no watching): key → value. A missing root gives an empty map;
 * unreadable and oversized files are left out (with a warning).
 */
export async function readConfigDir(root: string, opts: { maxBytes?: number } = {}): Promise<Map<string, RawValue>> {
  const reader = new TreeReader(path.resolve(root), opts.maxBytes ?? DEFAULT_MAX_BYTES);
  return (await reader.scanTree("")).values;
}

function sameValue(a: RawValue | undefined, b: RawValue | undefined): boolean {
  if (!a || !b) return a === b;
  return a.text === b.text && a.format === b.format && a.origin === b.origin;
}

export class DirSource implements ConfigSource {
  readonly name = SOURCE;
  readonly root: string;
  private readonly debounceMs: number;
  private readonly maxDelayMs: number;
  private readonly rescanMs: number;
  private readonly rootPollMs: number;
  private readonly reader: TreeReader;

  private sink: SourceSink | null = null;
  private watcher: FSWatcher | null = null;
  /** What the sink has been told: key → value. */
  private known = new Map<string, RawValue>();
  private dirtyDirs = new Set<string>();
  private dirtyFiles = new Set<string>();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private firstDirtyAt = 0;
  private rescanTimer: ReturnType<typeof setInterval> | null = null;
  private pollTimer: ReturnType<typeof setInterval> | null = null;
  private rootPresent = false;
  /** Serialises the initial read, flushes and watcher restarts. */
  private chain: Promise<void> = Promise.resolve();
  private stopped = false;

  constructor(opts: DirSourceOptions) {
    this.root = path.resolve(opts.root);
    this.debounceMs = Math.max(0, opts.debounceMs ?? 50);
    this.maxDelayMs = Math.max(this.debounceMs, opts.maxDelayMs ?? Math.max(1000, 10 * this.debounceMs));
    this.rescanMs = opts.rescanMs ?? 60_000;
    this.rootPollMs = opts.rootPollMs ?? 1000;
    this.reader = new TreeReader(this.root, opts.maxBytes ?? DEFAULT_MAX_BYTES);
  }

  async start(sink: SourceSink): Promise<void> {
    if (this.sink) throw new Error("DirSource already started");
    this.sink = sink;
    this.stopped = false;
    // Watch first, then read: a change during the initial read is then seen by a later flush.
    // Everything runs on the serial chain, so no flush can overtake the snapshot.
    const initial = this.serial(async () => {
      this.rootPresent = await this.rootIsDir();
      await this.startWatcher();
      if (this.stopped) return;
      const res = await this.reader.scanTree("");
      if (this.stopped) return;
      this.known = new Map(res.values);
      if (!this.rootPresent) {
        warn("config-path: directory does not exist, starting with an empty local config and waiting for it", { source: SOURCE, path: this.root });
      }
      info("config-path: read", { source: SOURCE, path: this.root, keys: this.known.size });
      sink.snapshot(SOURCE, new Map(this.known));
      sink.status(SOURCE, true, this.rootPresent ? undefined : `${this.root} does not exist`);
    });
    await initial;
    this.pollTimer = setInterval(() => void this.pollRoot(), this.rootPollMs);
    if (this.rescanMs > 0) {
      this.rescanTimer = setInterval(() => {
        this.dirtyDirs.add("");
        this.schedule();
      }, this.rescanMs);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.rescanTimer) clearInterval(this.rescanTimer);
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.timer = this.rescanTimer = this.pollTimer = null;
    const w = this.watcher;
    this.watcher = null;
    await w?.close().catch(() => {});
    await this.chain.catch(() => {});
    this.sink = null;
  }

  /** Resolves once every change noticed so far has been read and handed to the sink (for tests and -once). */
  async settle(): Promise<void> {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
      this.firstDirtyAt = 0;
      this.serial(() => this.flush());
    }
    await this.chain;
  }

  // --- watching ---

  private async startWatcher(): Promise<void> {
    const root = this.root;
    const w = watch(root, {
      ignoreInitial: true,
      followSymlinks: true,
      // Unlinks are reported at once; the debounce and the re-read absorb editors' atomic saves.
      atomic: false,
      ignorePermissionErrors: true,
      ignored: (p: string) => {
        const rel = path.relative(root, p);
        if (rel === "" || rel.startsWith("..") || path.isAbsolute(rel)) return false;
        return rel.split(path.sep).some(isIgnoredName);
      },
    });
    w.on("all", (event, p) => this.onEvent(event, p));
    w.on("error", (e) => warn("config-path: watcher error", { source: SOURCE, path: root, error: String((e as Error)?.message ?? e) }));
    this.watcher = w;
    await new Promise<void>((resolve) => {
      // Never hang start() on a watcher that does not come up.
      const t = setTimeout(resolve, 5000);
      w.once("ready", () => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  private onEvent(event: string, p: string): void {
    if (this.stopped) return;
    const rel = path.relative(this.root, p);
    if (rel.startsWith("..") || path.isAbsolute(rel)) return;
    const r = rel.split(path.sep).join("/");
    debug("config-path: event", { source: SOURCE, event, path: p });
    if (r === "" || event === "addDir" || event === "unlinkDir") this.dirtyDirs.add(r);
    else this.dirtyFiles.add(r);
    this.schedule();
  }

  private schedule(): void {
    if (this.stopped) return;
    const now = Date.now();
    if (!this.firstDirtyAt) this.firstDirtyAt = now;
    const wait = Math.max(0, Math.min(this.debounceMs, this.firstDirtyAt + this.maxDelayMs - now));
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.firstDirtyAt = 0;
      this.serial(() => this.flush());
    }, wait);
  }

  private serial(fn: () => Promise<void>): Promise<void> {
    const next = this.chain.then(fn).catch((e) => {
      warn("config-path: re-read failed", { source: SOURCE, path: this.root, error: String((e as Error)?.stack ?? e) });
    });
    this.chain = next;
    return next;
  }

  private async rootIsDir(): Promise<boolean> {
    try {
      return (await fsp.stat(this.root)).isDirectory();
    } catch {
      return false;
    }
  }

  /** Root appeared or vanished: restart the watcher (chokidar loses track when the parent is gone too) and re-read everything. */
  private async pollRoot(): Promise<void> {
    if (this.stopped) return;
    const present = await this.rootIsDir();
    if (present === this.rootPresent || this.stopped) return;
    this.rootPresent = present;
    if (present) info("config-path: directory appeared", { source: SOURCE, path: this.root });
    else warn("config-path: directory vanished, local config is now empty", { source: SOURCE, path: this.root });
    this.sink?.status(SOURCE, true, present ? undefined : `${this.root} does not exist`);
    await this.serial(async () => {
      if (this.stopped) return;
      const old = this.watcher;
      this.watcher = null;
      await old?.close().catch(() => {});
      if (this.stopped) return;
      await this.startWatcher();
    });
    this.dirtyDirs.add("");
    this.schedule();
  }

  // --- re-reading ---

  private async flush(): Promise<void> {
    if (this.stopped || !this.sink) return;
    let dirs = [...this.dirtyDirs];
    let files = [...this.dirtyFiles];
    this.dirtyDirs.clear();
    this.dirtyFiles.clear();
    if (!dirs.length && !files.length) return;

    // Drop what an enclosing dirty directory covers.
    dirs.sort();
    const topDirs: string[] = [];
    for (const d of dirs) if (!topDirs.some((t) => isUnder(d, t))) topDirs.push(d);
    files = files.filter((f) => !topDirs.some((t) => isUnder(f, t) && f !== t));
    // (A dirty "file" equal to a dirty dir's path is a type change: both are looked at.)

    const changes = new Map<string, RawValue | null>();
    for (const d of topDirs) {
      const res = await this.reader.scanTree(d);
      for (const [k, v] of res.values) if (!sameValue(this.known.get(k), v)) changes.set(k, v);
      for (const k of this.known.keys()) {
        if (!isUnder(k, d) || k === d || res.values.has(k) || res.keepKeys.has(k)) continue;
        if (res.keepPrefixes.some((p) => isUnder(k, p))) continue;
        changes.set(k, null);
      }
    }
    const doneKeys = new Set<string>();
    for (const f of files) {
      const r = await this.reader.scanKey(f);
      if (!r || doneKeys.has(r.key)) continue;
      doneKeys.add(r.key);
      const { key, res } = r;
      if (res.keepKeys.has(key) || res.keepPrefixes.length) continue;
      const v = res.values.get(key);
      if (v) {
        if (!sameValue(this.known.get(key), v)) changes.set(key, v);
      } else if (this.known.has(key)) changes.set(key, null);
    }

    if (this.stopped || !changes.size) return;
    const events: KeyEvent[] = [...changes.keys()].sort().map((key) => ({ key, value: changes.get(key)! }));
    for (const ev of events) {
      if (ev.value) this.known.set(ev.key, ev.value);
      else this.known.delete(ev.key);
      debug("config-path: key " + (ev.value ? "set" : "deleted"), { source: SOURCE, key: ev.key, path: ev.value?.origin });
    }
    info("config-path: changes", { source: SOURCE, keys: events.length });
    this.sink.update(SOURCE, events);
  }
}
