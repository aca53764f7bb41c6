// The -config-path source: a directory tree whose file paths are keys (docs/config.md §2, §3).
//
//   services/web/frontend.json            -> key services/web/frontend, format json
//   services/web/backends/b1.yaml         -> key services/web/backends/b1, format yaml
//   routes/r1                             -> key routes/r1, format json (no extension)
//
// How it stays correct: filesystem notifications are only hints. A notification marks a path
// dirty; after a short debounce each dirty path is re-read from disk (the key its name maps to,
// its directory's listing diffed against the keys known there, and the subtree below it if it is,
// or was, a directory) and diffed against the last state handed to the sink. So the sink only sees real changes, and the accumulated state always converges to
// what a fresh read of the tree gives, whatever order or shape the notifications had (atomic
// saves, renames, `rm -r`, bursts). A slow periodic full re-read (`rescanMs`) is a safety net for
// notifications the kernel drops (inotify queue overflow, watch limits).
//
// Watching: chokidar 6 (dir-watch.ts; one inotify watch per directory, symlinked files watched
// through their target's directory, a replaced directory polled for a while in case its watch went
// stale). chokidar reports a new directory before it watches it, so every re-read path is read
// once more when the watcher has been quiet for a while and has no file-system call under way
// (again while that finds changes). Its events are used only as hints,
// never applied as such: under Bun, chokidar 4 and 5 dropped a second change of a file within
// 50 ms and went blind on a directory replaced under the same name, and even chokidar 6's events
// taken literally missed directory swaps (a parent's unlinkDir can come after a child's change).
// Hidden names are not watched, except Kubernetes ConfigMap internals (`..data`, `..<timestamp>`),
// whose events re-read the directory holding them. With `watch: false` (-once) nothing is watched.
//
// Decisions an operator would expect (not spelled out by the contract):
// - A missing root directory is not fatal: the daemon keeps running with an empty local config
//   (plus a warning) and picks the directory up when it appears (polled every `rootPollMs`).
//   Removing the whole directory later empties the local config, exactly as a fresh read would.
// - A file that cannot be read (permissions, over `maxBytes`) keeps its previous value (if any): a
//   transient problem must not withdraw a service. A file that vanished is a deletion.
// - Ignored names, at any depth: hidden (`.` first; hidden directories are not descended), editor
//   leftovers (`~` last, `#…#`, `.swp`/`.swo`/`.swn`/`.swx`, `.tmp`, vim's `4913` probe), and
//   package manager leftovers (`.dpkg-old`, `.dpkg-new`, `.dpkg-dist`, `.dpkg-tmp`, `.rpmnew`,
//   `.rpmsave`, `.rpmorig`), which appear in /etc/clusterf on package upgrades. Extensions are
//   matched case-sensitively.
// - Two files with the same key (`frontend.json`, `frontend.yaml`): the name that sorts first
//   (plain code-unit order) wins; a warning names both.
// - Symlinks are followed (files and directories; directory loops are cut). Other non-regular
//   files (fifos, sockets, devices), dangling symlinks and names that are not UTF-8 are skipped
//   with one warning each; editor leftovers with one info line (not hidden names).

import * as fs from "node:fs";
import * as path from "node:path";
import { TreeWatcher, isUnwatched } from "./dir-watch.ts";
import type { ConfigSource, KeyEvent, RawValue, SourceSink, ValueFormat } from "./source.ts";
import { debug, debugEnabled, info, warn } from "../util/log.ts";
import { MAX_VALUE_BYTES } from "./values.ts";
import { Pacer, sortSteps } from "../util/slices.ts";
import { Debounce } from "../util/debounce.ts";
import { RACY_MS, TreeCacheScan, type DirEntry } from "./tree-cache.ts";

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
  /** How often to check that the root directory exists (appeared, vanished, replaced) (ms). Default 1000. */
  rootPollMs?: number;
  /** Follow changes (default); false reads once at start() and only again at resync() (-once). */
  watch?: boolean;
  /**
   * Where the first read keeps what it found (tree-cache.ts), so that the next start reads only
   * the files changed since; undefined = no cache.
   */
  cacheFile?: string;
  /** The cache's RACY_MS (tree-cache.ts): for tests, which cannot wait two seconds per case. */
  racyMs?: number;
}

const SOURCE = "local" as const;
/** Quiet time of the watcher before a second look at new directories (ms; at least 2 × the debounce). */
const SECOND_LOOK_QUIET_MS = 100;
/** How often a second look waiting for a busy watcher checks again. */
const WATCHER_BUSY_RECHECK_MS = 20;
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

function dirOf(rel: string): string {
  const i = rel.lastIndexOf("/");
  return i < 0 ? "" : rel.slice(0, i);
}

/** `rel` is `dir` or below it. */
function isUnder(rel: string, dir: string): boolean {
  return dir === "" || rel === dir || rel.startsWith(dir + "/");
}

/** `rel` is strictly below `dir`. */
function isBelow(rel: string, dir: string): boolean {
  return dir === "" ? rel !== "" : rel.startsWith(dir + "/");
}

function push<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const list = m.get(k);
  if (list) list.push(v);
  else m.set(k, [v]);
}

function errCode(e: unknown): string {
  return (e as NodeJS.ErrnoException)?.code ?? String(e);
}

/** Which directory this is; the birth time tells a re-created directory from the old one when the inode number is reused. */
function dirIdentity(st: fs.Stats): string {
  return `${st.dev}:${st.ino}:${st.birthtimeMs ?? 0}`;
}

const GONE = new Set(["ENOENT", "ENOTDIR", "EISDIR", "ELOOP"]);

/**
 * Something in the tree that is skipped, reported once: again only when it changes, or goes away
 * and comes back (a periodic re-read of an unchanged tree stays quiet).
 */
interface Note {
  /** What kind of problem, and for which file: a new signature is reported again. */
  sig: string;
  level: "info" | "warn";
  msg: string;
  fields: Record<string, string | number>;
}

/** Notes about directories (loops, depth) are made by the parent's full listing only. */
const DIR_NOTE = "dir:";

/** A file that may hold a key's value (one of several with the same stem competes). */
interface Candidate {
  name: string;
  link: boolean;
}

/**
 * A listing's key stems against the keys known in that directory: a name that is not a known key,
 * and a known key without a file, are added to `onlyStems` (both must be looked at).
 */
function diffListing(entries: readonly DirEntry[], known: Set<string>, onlyStems: Set<string>): void {
  const present = new Set<string>();
  for (const ent of entries) if (!isIgnoredName(ent.name)) present.add(parseFileName(ent.name).stem);
  for (const stem of present) if (!known.has(stem)) onlyStems.add(stem);
  for (const stem of known) if (!present.has(stem)) onlyStems.add(stem);
}

/** What a scan found. */
interface ScanResult {
  /**
   * Whether keys get fingerprints: not when nothing will compare them (a source that does not
   * watch hands over every read whole, and without a cache keeps none): 110,000 keys' hashes and
   * map entries were a tenth of a -once run.
   */
  fingerprints: boolean;
  /** The fingerprint of every key read (changed or not), with `fingerprints`. */
  fps: Map<string, number>;
  /** Keys read. */
  keys: number;
  /** The values of the keys read that the source did not know as they are (see TreeReader.isKnown). */
  values: Map<string, RawValue>;
  /** Keys whose previous value must be kept (unreadable, too large). */
  keepKeys: Set<string>;
  /** Directories that could not be listed: every previous key below is kept. */
  keepPrefixes: string[];
  /** Directories listed (relative), with their identity. */
  dirs: Map<string, string>;
  /** Symlinked files (dangling ones too), by relative path. */
  links: Set<string>;
  /** Relative file paths looked at (the scope for forgetting stale links), by scanKeys only. */
  files: Set<string>;
  /** Entries skipped, by relative path. */
  notes: Map<string, Note>;
  /** Given `values` each time it holds PART_KEYS keys (then emptied): a snapshot in parts. */
  part?: (values: Map<string, RawValue>) => void;
  /** The first read's cache (a full scan only). */
  cache?: TreeCacheScan;
}

/** Keys per part of a snapshot read in full (SourceSink.snapshot's `part`). */
const PART_KEYS = 4096;

function newScan(fingerprints = true): ScanResult {
  return { fingerprints, fps: new Map(), keys: 0, values: new Map(), keepKeys: new Set(), keepPrefixes: [], dirs: new Map(), links: new Set(), files: new Set(), notes: new Map() };
}

/**
 * The reading half, without any watching: also used for one-shot reads. It reads with
 * synchronous calls (under Bun an awaited fs.promises call costs ~0.2 ms, 40× a synchronous
 * read of a small file) and yields to the event loop every SLICE_MS.
 */
class TreeReader {
  /** Conflicting file names per key, as last warned about (to warn once per distinct conflict). */
  private conflicts = new Map<string, string>();
  /** Unreadable files as last warned about (re-reads of an unchanged problem stay quiet). */
  private problems = new Map<string, string>();
  /** Skipped entries as last reported, by relative path. */
  private reported = new Map<string, string>();
  /** The slice runs on across scans: a flush of thousands of paths is many scans in a row. */
  readonly pacer = new Pacer();
  /** One read buffer for every file (reads are synchronous, one at a time). */
  private buf: Buffer | undefined;

  private problem(file: string, sig: string, msg: string, fields: Record<string, string | number>): void {
    if (this.problems.get(file) === sig) return;
    this.problems.set(file, sig);
    warn(msg, { source: SOURCE, ...fields, path: file });
  }

  constructor(
    readonly root: string,
    private readonly maxBytes: number,
    /** Whether the source already has this value for the key (then the reader makes no text of it). */
    private readonly isKnown?: (key: string, fp: number) => boolean,
  ) {}

  /** `rel` is normalised (names from listings, hints from path.relative): joined without path.join's parse, a tenth of a second per 13,000 calls in a slow guest. */
  abs(rel: string): string {
    return rel === "" ? this.root : this.root === "/" ? `/${rel}` : `${this.root}/${rel}`;
  }

  /**
   * The identities of the directories from the root down to `relDir`, as a fresh read would have
   * met them on its way; null when a fresh read never lists `relDir` (hidden, deeper than
   * MAX_DEPTH, inside a directory loop, or not a directory).
   */
  private ancestry(relDir: string): Set<string> | null {
    const parts = relDir === "" ? [] : relDir.split("/");
    if (parts.length > MAX_DEPTH || parts.some(isIgnoredName)) return null;
    const seen = new Set<string>();
    let rel = "";
    for (let i = 0; ; i++) {
      let st: fs.Stats;
      try {
        st = fs.statSync(this.abs(rel));
      } catch {
        return null;
      }
      const id = dirIdentity(st);
      if (!st.isDirectory() || seen.has(id)) return null;
      seen.add(id);
      if (i === parts.length) return seen;
      rel = joinRel(rel, parts[i]!);
    }
  }

  /** Re-read the subtree at `relDir` ("" = everything), exactly as a fresh read of the tree would see it. */
  async scanTree(relDir: string, part?: ScanResult["part"], cache?: TreeCacheScan, fingerprints = true): Promise<ScanResult> {
    const res = newScan(fingerprints || cache !== undefined);
    res.part = part;
    res.cache = cache;
    const depth = relDir === "" ? 0 : relDir.split("/").length;
    const seen = relDir === "" ? new Set<string>() : this.ancestry(dirOf(relDir));
    if (seen !== null && depth <= MAX_DEPTH && !(relDir !== "" && isIgnoredName(relDir.slice(relDir.lastIndexOf("/") + 1)))) {
      await this.scanDir(relDir, null, res, seen, depth);
    }
    this.report(res, (rel) => isBelow(rel, relDir));
    return res;
  }

  /**
   * Re-read the keys that some file names of one directory map to (every file of such a key in
   * that directory competes for it), and diff the directory's listing against the keys known in
   * it: a name that is not a known key is read too, a known key without a file is looked at (it
   * is gone). `res.stems` are the keys' names looked at; nothing is descended.
   */
  async scanKeys(relDir: string, stems: Set<string>, known: Set<string>): Promise<ScanResult & { stems: Set<string> }> {
    const res = { ...newScan(), stems: new Set(stems) };
    if (this.ancestry(relDir) === null) {
      for (const k of known) res.stems.add(k);
    } else {
      await this.scanDir(relDir, res.stems, res, new Set(), MAX_DEPTH, known);
    }
    this.report(res, (rel, sig) => dirOf(rel) === relDir && !sig.startsWith(DIR_NOTE) && res.stems.has(parseFileName(rel.slice(rel.lastIndexOf("/") + 1)).stem));
    return res;
  }

  /** Logs the notes not reported yet; forgets those in the scan's scope that it did not find again. */
  private report(res: ScanResult, inScope: (rel: string, sig: string) => boolean): void {
    for (const [rel, sig] of this.reported) if (!res.notes.has(rel) && inScope(rel, sig)) this.reported.delete(rel);
    for (const [rel, n] of res.notes) {
      if (this.reported.get(rel) === n.sig) continue;
      this.reported.set(rel, n.sig);
      (n.level === "info" ? info : warn)(n.msg, { source: SOURCE, ...n.fields, path: this.abs(rel) });
    }
  }

  /**
   * List one directory. With `onlyStems`, only the files of those keys are considered and nothing
   * is descended (`known`: the keys known in the directory; the names differing from them are
   * added to `onlyStems`); otherwise subdirectories are scanned recursively.
   */
  private async scanDir(relDir: string, onlyStems: Set<string> | null, res: ScanResult, seen: Set<string>, depth: number, known?: Set<string>): Promise<void> {
    await this.pacer.due();
    const listed = this.listDir(relDir, onlyStems === null ? seen : null, res);
    if (!listed) return;
    if (onlyStems !== null && known) diffListing(listed.entries, known, onlyStems);
    const { groups, subdirs } = this.sortEntries(relDir, listed.entries, onlyStems, res);
    for (const [stem, cands] of groups) {
      this.readKey(relDir, stem, cands, res);
      await this.pacer.due();
    }
    if (onlyStems !== null) {
      for (const stem of onlyStems) if (!groups.has(stem)) this.noteConflict(joinRel(relDir, stem), relDir, []);
      return;
    }
    if (depth >= MAX_DEPTH) {
      for (const d of subdirs) res.notes.set(joinRel(relDir, d), { sig: `${DIR_NOTE}deep`, level: "warn", msg: `config-path: deeper than ${MAX_DEPTH} levels, not descending`, fields: {} });
      return;
    }
    for (const d of subdirs) await this.scanDir(joinRel(relDir, d), null, res, listed.seen, depth + 1);
  }

  /**
   * One directory's entries. With `seen` (a full scan), the directory itself is checked first
   * (a directory, not one met on the way down: a symlink loop) and noted in `res.dirs`; `seen` is
   * returned with it. null: nothing to list (gone, a loop, or unlistable: its keys are kept).
   */
  private listDir(relDir: string, seen: Set<string> | null, res: ScanResult): { entries: readonly DirEntry[]; seen: Set<string> } | null {
    const absDir = this.abs(relDir);
    try {
      if (seen !== null) {
        const st = fs.statSync(absDir);
        if (!st.isDirectory()) return null;
        const id = dirIdentity(st);
        if (seen.has(id)) {
          res.notes.set(relDir, { sig: `${DIR_NOTE}loop`, level: "warn", msg: "config-path: directory symlink loop, not descending", fields: {} });
          return null;
        }
        seen = new Set(seen).add(id);
        res.dirs.set(relDir, id);
        if (res.cache) {
          const entries = res.cache.enterDir(relDir, st) ?? fs.readdirSync(absDir, { withFileTypes: true });
          res.cache.listed(entries);
          return { entries, seen };
        }
      }
      return { entries: fs.readdirSync(absDir, { withFileTypes: true }), seen: seen ?? new Set() };
    } catch (e) {
      if (GONE.has(errCode(e))) return null;
      warn("config-path: cannot list directory, keeping its previous keys", { source: SOURCE, path: absDir, error: errCode(e) });
      res.keepPrefixes.push(relDir);
      return null;
    }
  }

  /**
   * The candidate files per key stem and the subdirectories of one listing (with `onlyStems`,
   * only the files of those keys and no subdirectory); what is skipped gets a note.
   */
  private sortEntries(relDir: string, entries: readonly DirEntry[], onlyStems: Set<string> | null, res: ScanResult): { groups: Map<string, Candidate[]>; subdirs: string[] } {
    const groups = new Map<string, Candidate[]>();
    const subdirs: string[] = [];
    for (const ent of entries) {
      const name = ent.name;
      if (onlyStems !== null && !onlyStems.has(parseFileName(name).stem)) continue;
      const kind = this.entryKind(relDir, ent, res);
      if (kind === "skip") continue;
      if (kind === "dir") {
        if (onlyStems === null) subdirs.push(name);
        continue;
      }
      const { stem } = parseFileName(name);
      if (onlyStems !== null) res.files.add(joinRel(relDir, name));
      if (kind === "dangling") {
        // Remembered (re-read at every flush): it may come to life.
        res.links.add(joinRel(relDir, name));
        continue;
      }
      let g = groups.get(stem);
      if (!g) groups.set(stem, (g = []));
      g.push({ name, link: ent.isSymbolicLink() });
    }
    return { groups, subdirs };
  }

  /** What a listed entry is to the tree: a file, a directory, a dangling link, or skipped (with a note where it deserves one). */
  private entryKind(relDir: string, ent: DirEntry, res: ScanResult): "file" | "dir" | "dangling" | "skip" {
    const name = ent.name;
    const note = (n: Note) => res.notes.set(joinRel(relDir, name), n);
    if (name.startsWith(".")) return "skip"; // hidden: a convention, not worth a word
    if (isIgnoredName(name)) {
      // said once, so that a backend named like one (`4913`, `x.tmp`) does not vanish silently
      note({ sig: "leftover", level: "info", msg: "config-path: ignored as an editor or package-manager leftover", fields: {} });
      return "skip";
    }
    const abs = this.abs(relDir) + "/" + name;
    if (name.includes("\uFFFD") && !existsNoFollow(abs)) {
      // not valid UTF-8: the decoded name is not the file's name, and no key can hold it
      note({ sig: "name", level: "warn", msg: "config-path: file name is not valid UTF-8, skipped", fields: {} });
      return "skip";
    }
    if (ent.isFile()) return "file";
    if (ent.isDirectory()) return "dir";
    let st: fs.Stats;
    try {
      st = fs.statSync(abs);
    } catch (e) {
      if (!ent.isSymbolicLink()) return "skip"; // gone since the listing
      const code = errCode(e);
      note({ sig: `dangling:${code}`, level: "warn", msg: code === "ELOOP" ? "config-path: symlink loop, skipped" : "config-path: dangling symlink, skipped", fields: { error: code } });
      return "dangling";
    }
    if (st.isFile()) return "file";
    if (st.isDirectory()) return "dir";
    const what = st.isFIFO() ? "fifo" : st.isSocket() ? "socket" : st.isCharacterDevice() || st.isBlockDevice() ? "device" : "special file";
    note({ sig: `other:${what}:${st.ino}`, level: "warn", msg: `config-path: not a regular file or directory (${what}), skipped`, fields: {} });
    return "skip";
  }

  /** The key of one stem: its first file by name is read, a conflict with the others noted. */
  private readKey(relDir: string, stem: string, cands: Candidate[], res: ScanResult): void {
    cands.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const key = joinRel(relDir, stem);
    this.noteConflict(key, relDir, cands.map((c) => c.name));
    const first = cands[0]!;
    this.readFile(key, relDir, first.name, parseFileName(first.name).format, first.link, res);
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

  private readFile(key: string, relDir: string, name: string, format: ValueFormat, link: boolean, res: ScanResult): void {
    const rel = joinRel(relDir, name);
    const file = this.abs(rel);
    if (link) res.links.add(rel);
    const cache = res.cache;
    let fd: number | undefined;
    try {
      // A file the cache knows: its stat tells whether it is unchanged.
      const known = cache?.known(name);
      const st = known ? fs.statSync(file) : undefined;
      const cached = st?.isFile() ? cache!.unchanged(known!, st) : null;
      if (cached) {
        this.problems.delete(file);
        this.found(key, cached.fp, cached.text, format, file, res);
        return;
      }
      // O_NONBLOCK: a file swapped for a fifo between listing and opening must not hang us.
      fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      // With a cache, the file's identity before its read (a change after it shows next time):
      // the stat above, else one of the open file (no second walk of its path).
      const id = cache ? (st ?? fs.fstatSync(fd)) : undefined;
      // Up to one byte more than allowed: more is too large. No stat first (one system call less
      // per file): only an empty read or a file too large is looked at more closely. A regular
      // file's read comes back short only at its end, so no second read to see it return 0 (one
      // system call less again: a quarter of a large tree's).
      const buf = (this.buf ??= Buffer.allocUnsafe(this.maxBytes + 1));
      const len = fs.readSync(fd, buf, 0, buf.length, null);
      if (len === 0 || len > this.maxBytes) {
        const st = fs.fstatSync(fd);
        if (!st.isFile()) return; // not a regular file (any more, e.g. a fifo): no value
        if (len > this.maxBytes) {
          this.problem(file, `size:${st.size}:${st.mtimeMs}`, "config-path: file too large, not read (previous value kept)", { key, size: st.size, limit: this.maxBytes });
          res.keepKeys.add(key);
          return;
        }
      }
      this.problems.delete(file);
      // A byte order mark from some editors is not part of the value.
      const start = len >= 3 && buf[0] === 0xef && buf[1] === 0xbb && buf[2] === 0xbf ? 3 : 0;
      const fp = res.fingerprints ? fingerprint(buf.subarray(start, len), rel, format) : 0;
      if (res.fingerprints && this.isKnown?.(key, fp)) {
        res.fps.set(key, fp); // unchanged: no text made (a periodic re-read of a big tree)
        res.keys++;
        return;
      }
      const text = buf.toString("utf8", start, len);
      if (id?.isFile()) cache!.fileRead(name, id, fp, text);
      this.found(key, fp, text, format, file, res);
    } catch (e) {
      const code = errCode(e);
      if (GONE.has(code)) {
        this.problems.delete(file);
        debug("config-path: file vanished while reading", { source: SOURCE, key, path: file });
        return;
      }
      this.problem(file, code, "config-path: cannot read file (previous value kept)", { key, error: code });
      res.keepKeys.add(key);
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
  }

  /** A key's value as read (new to the source). */
  private found(key: string, fp: number, text: string, format: ValueFormat, file: string, res: ScanResult): void {
    if (res.fingerprints) res.fps.set(key, fp);
    res.keys++;
    res.values.set(key, { text, format, origin: file });
    if (res.part && res.values.size >= PART_KEYS) {
      res.part(res.values);
      res.values = new Map();
    }
  }
}

/** The entry exists under this exact name (lstat: a symlink is not followed). */
function existsNoFollow(abs: string): boolean {
  try {
    fs.lstatSync(abs);
    return true;
  } catch {
    return false;
  }
}

/**
 * Read a -config-path tree once (no watching): key → value. A missing root gives an empty map;
 * unreadable and oversized files are left out (with a warning).
 */
export async function readConfigDir(root: string, opts: { maxBytes?: number } = {}): Promise<Map<string, RawValue>> {
  const reader = new TreeReader(path.resolve(root), opts.maxBytes ?? MAX_VALUE_BYTES);
  return (await reader.scanTree("", undefined, undefined, false)).values;
}

/** A key the scan could not read (or whose directory it could not list): its previous value stays. */
function isKept(key: string, res: ScanResult): boolean {
  return res.keepKeys.has(key) || res.keepPrefixes.some((d) => isUnder(key, d));
}

/**
 * What the source remembers of a value it handed over: 52 bits of a hash of its bytes, format and
 * file, not the text itself (a 110,000-file tree's texts and paths were a quarter of the daemon's
 * heap). Only a key's old and new value are ever compared: a change that keeps the hash equal
 * goes unseen with a chance of 2^-52. Made from the bytes, so that an unchanged file is never
 * decoded into text.
 */
function fingerprint(bytes: Uint8Array, rel: string, format: ValueFormat): number {
  // Two 32-bit hashes of the bytes (the file and format seed one), without allocating.
  const seed = Bun.hash.murmur32v3(rel, format === "json" ? 1 : 2);
  return Bun.hash.murmur32v3(bytes, seed) * 2 ** 20 + (Bun.hash.crc32(bytes) >>> 12);
}

/**
 * A changed key as read (null: deleted), with the fingerprint the source remembers once it is
 * handed over. (A WeakMap from each value the reader made to its fingerprint cost a tenth of a
 * large tree's read.)
 */
type ReadChange = { value: RawValue; fp: number } | null;

const changeOf = (res: ScanResult, key: string, value: RawValue): ReadChange => ({ value, fp: res.fps.get(key)! });

export class DirSource implements ConfigSource {
  readonly name = SOURCE;
  readonly root: string;
  private readonly debounceMs: number;
  private readonly maxDelayMs: number;
  private readonly rescanMs: number;
  private readonly rootPollMs: number;
  private readonly watch: boolean;
  private readonly reader: TreeReader;
  private readonly maxBytes: number;
  private readonly cacheFile: string | undefined;
  private readonly racyMs: number;

  private sink: SourceSink | null = null;
  /** What the sink has been told: key → fingerprint of its value. */
  private known = new Map<string, number>();
  /** Relative paths to re-read ("" = the whole tree). */
  private dirty = new Set<string>();
  /** A flush is due even with no dirty path (an event about a symlinked file's target). */
  private linksDirty = false;
  /** The flush after a burst of hints (one timer: a tree moved in brings tens of thousands at once). */
  private readonly debounce: Debounce;
  private lastHintAt = 0;
  private rescanTimer: ReturnType<typeof setInterval> | null = null;
  private pollTimer: ReturnType<typeof setInterval> | null = null;
  /** The root directory's identity, null while it does not exist, undefined before the first read. */
  private rootId: string | null | undefined = undefined;
  private watcher: TreeWatcher | null = null;
  /** The directories of the tree as last listed (relative paths). */
  private listedDirs = new Set<string>();
  /**
   * The paths re-read since the watcher last went quiet: read once more then. chokidar reports a
   * new directory before it watches it (its calls are paced: later than our read of it may be),
   * so what changes there in between has no event of its own.
   */
  private fresh = new Set<string>();
  /** The paths the pending second look marked dirty (not looked at again unless it found changes). */
  private lookingAgain = new Set<string>();
  private secondLookTimer: ReturnType<typeof setTimeout> | null = null;
  /** Symlinked files (relative paths): re-read at every flush. */
  private links = new Set<string>();
  /** Serialises the initial read and the flushes. */
  private chain: Promise<void> = Promise.resolve();
  private stopped = false;
  /** A snapshot went to the current sink: later reads hand over only what differs. */
  private handedOver = false;

  constructor(opts: DirSourceOptions) {
    this.root = path.resolve(opts.root);
    this.debounceMs = Math.max(0, opts.debounceMs ?? 50);
    this.maxDelayMs = Math.max(this.debounceMs, opts.maxDelayMs ?? Math.max(1000, 10 * this.debounceMs));
    this.rescanMs = opts.rescanMs ?? 60_000;
    this.rootPollMs = opts.rootPollMs ?? 1000;
    this.watch = opts.watch ?? true;
    this.maxBytes = opts.maxBytes ?? MAX_VALUE_BYTES;
    this.cacheFile = opts.cacheFile;
    this.racyMs = opts.racyMs ?? RACY_MS;
    this.reader = new TreeReader(this.root, this.maxBytes, (key, fp) => this.known.get(key) === fp);
    this.debounce = new Debounce(() => void this.serial(() => this.flush()), this.debounceMs, this.maxDelayMs);
  }

  async start(sink: SourceSink): Promise<void> {
    if (this.sink) throw new Error("DirSource already started");
    this.sink = sink;
    this.stopped = false;
    let failure: unknown = null;
    try {
      // Watching starts before the read, so that a change made during the read is seen by a later flush.
      if (this.watch) await this.startWatcher();
    } catch (e) {
      failure = e;
    }
    // On the serial chain, so that no flush can overtake the snapshot.
    if (!failure && !this.stopped) {
      await this.serial(async () => {
        try {
          await this.readAll(sink);
        } catch (e) {
          failure = e;
        }
      });
    }
    if (failure) {
      await this.stop();
      throw failure;
    }
    if (this.stopped || !this.watch) return; // stop() during start(), or -once
    this.pollTimer = setInterval(() => void this.pollRoot(), this.rootPollMs);
    if (this.rescanMs > 0) this.rescanTimer = setInterval(() => this.markDirty(""), this.rescanMs);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.debounce.cancel();
    if (this.secondLookTimer) clearTimeout(this.secondLookTimer);
    if (this.rescanTimer) clearInterval(this.rescanTimer);
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.rescanTimer = this.pollTimer = this.secondLookTimer = null;
    await this.chain.catch(() => {});
    const watcher = this.watcher;
    this.watcher = null;
    await watcher?.close(); // ends a start() still waiting for it too
    this.links.clear();
    this.listedDirs.clear();
    this.fresh.clear();
    this.lookingAgain.clear();
    this.dirty.clear();
    this.linksDirty = false;
    this.sink = null;
    this.handedOver = false;
  }

  /**
   * A full re-read of the tree, handed over as one snapshot (what an operator asks for with a
   * SIGHUP): whatever the watcher may have missed, the sink then holds exactly the tree.
   */
  async resync(): Promise<void> {
    const sink = this.sink;
    if (!sink || this.stopped) return;
    await this.serial(() => this.readAll(sink));
  }

  /**
   * Reads the whole tree. The first read is handed over as a snapshot; a later one (resync) as the
   * keys that differ from what the sink holds, since only fingerprints are kept (unreadable files
   * keep their previous value, as in an incremental re-read).
   */
  private async readAll(sink: SourceSink): Promise<void> {
    const first = this.rootId === undefined;
    const snapshot = !this.handedOver;
    if (snapshot) this.known = new Map(); // the reader makes the text of every value for a snapshot
    this.rootId = this.rootIdentity();
    // A snapshot goes to the sink in parts as it is read: the raw text of a large tree is never all held at once.
    let parts = 0;
    const toSink = (values: Map<string, RawValue>) => {
      parts++;
      sink.snapshot(SOURCE, values, "more");
    };
    // Only the first read uses the cache: a later full read (a resync) is asked for to read the tree itself.
    const cache = first && this.cacheFile ? new TreeCacheScan(this.cacheFile, this.root, this.maxBytes, Date.now() - this.racyMs) : undefined;
    let res: ScanResult;
    try {
      res = await this.reader.scanTree("", snapshot ? toSink : undefined, cache, this.watch);
    } catch (e) {
      cache?.discard();
      throw e;
    }
    if (this.stopped) {
      cache?.discard();
      return;
    }
    cache?.finish();
    // The first read's directories were watched before it listed them: nothing fresh there.
    this.syncDirs([...this.listedDirs], res);
    this.syncLinks("", res);
    if (first && this.rootId === null) {
      warn("config-path: directory does not exist, starting with an empty local config and waiting for it", { source: SOURCE, path: this.root });
    }
    if (snapshot) {
      const cached = cache ? { unchanged: cache.hits } : {}; // files not read: unchanged since the cache was made
      info(first ? "config-path: read" : "config-path: re-read in full", { source: SOURCE, path: this.root, keys: res.keys, ...cached });
      // Without watching (-once) nothing is read again but at a resync, which then hands over a
      // snapshot as well: no fingerprints are made (but for the cache) or kept.
      this.known = this.watch ? res.fps : new Map();
      this.handedOver = this.watch;
      sink.snapshot(SOURCE, res.values, parts > 0 ? "last" : undefined);
    } else {
      const changes = new Map<string, ReadChange>();
      for (const k of this.known.keys()) if (!res.fps.has(k) && !isKept(k, res)) changes.set(k, null);
      for (const [k, v] of res.values) changes.set(k, changeOf(res, k, v));
      await this.handOver(changes, this.reader.pacer);
      info("config-path: re-read in full", { source: SOURCE, path: this.root, keys: this.known.size, changed: changes.size });
    }
    sink.status(SOURCE, true, this.rootId === null ? `${this.root} does not exist` : undefined);
  }

  /** Resolves once every change noticed so far has been read and handed to the sink (for tests and -once). */
  async settle(): Promise<void> {
    if (this.debounce.pending) {
      this.debounce.cancel();
      void this.serial(() => this.flush());
    }
    await this.chain;
  }

  /** A flush is scheduled (hints came and their debounce runs). */
  get flushPending(): boolean {
    return this.debounce.pending;
  }

  // --- watching ---

  /** Starts chokidar and waits for its initial scan: every directory watched. */
  private async startWatcher(): Promise<void> {
    const watcher = new TreeWatcher(this.root, MAX_DEPTH, {
      path: (rel) => this.hint(rel),
      raw: (name, watched) => this.rawHint(name, watched),
      // inotify limits and the like: what goes unseen is read at the next periodic re-read
      error: (message) => warn("config-path: watcher error (changes may wait for the next periodic re-read)", { source: SOURCE, path: this.root, error: message }),
    });
    this.watcher = watcher;
    await watcher.start();
  }

  /** A backend notification: `name` changed in the watched directory, or the watched file changed. */
  private rawHint(name: string, watched: string | null): void {
    this.hint(watched !== null && name !== "" && this.listedDirs.has(watched) ? joinRel(watched, name) : watched);
  }

  /** A path to re-read (relative; null: outside the root, a symlinked file's target). */
  private hint(rel: string | null): void {
    if (rel === null) {
      // symlinked files are re-read at every flush
      this.linksDirty = true;
      this.schedule();
      return;
    }
    if (isUnwatched(rel)) return;
    // Below a ConfigMap internal (`..data/…`): the directory holding it, whose files link through it.
    const parts = rel === "" ? [] : rel.split("/");
    const internal = parts.findIndex((n) => n.startsWith(".."));
    this.markDirty(internal < 0 ? rel : parts.slice(0, internal).join("/"));
  }

  /** After a re-read of a subtree: note the directories listed (`before`: those listed in it until now). */
  private syncDirs(before: string[], res: ScanResult): void {
    for (const rel of before) {
      if (!res.dirs.has(rel) && !res.keepPrefixes.some((p) => isUnder(rel, p))) this.listedDirs.delete(rel);
    }
    for (const rel of res.dirs.keys()) this.listedDirs.add(rel);
  }

  /** After a re-read: note the symlinked files in scope (a subtree, or a set of file paths). */
  private syncLinks(scope: string | Set<string>, res: ScanResult): void {
    const inScope = (rel: string) => (typeof scope === "string" ? isUnder(rel, scope) : scope.has(rel));
    for (const rel of this.links) if (inScope(rel) && !res.links.has(rel)) this.links.delete(rel);
    for (const rel of res.links) this.links.add(rel);
  }

  private markDirty(rel: string): void {
    if (this.stopped) return;
    this.dirty.add(rel);
    this.schedule();
  }

  /** A flush once no hint came for debounceMs, or maxDelayMs after the first one. */
  private schedule(): void {
    if (this.stopped || !this.watch) return;
    this.lastHintAt = Date.now();
    this.debounce.trigger();
  }

  private serial(fn: () => Promise<void>): Promise<void> {
    const next = this.chain.then(fn).catch((e) => {
      warn("config-path: re-read failed", { source: SOURCE, path: this.root, error: String((e as Error)?.stack ?? e) });
    });
    this.chain = next;
    return next;
  }

  private rootIdentity(): string | null {
    try {
      const st = fs.statSync(this.root);
      return st.isDirectory() ? dirIdentity(st) : null;
    } catch {
      return null;
    }
  }

  /** The root appeared, vanished or was replaced: re-read everything (and say so). */
  private async pollRoot(): Promise<void> {
    if (this.stopped) return;
    const id = this.rootIdentity();
    if (id === this.rootId || this.stopped) return;
    const was = this.rootId;
    this.rootId = id;
    if (id === null) warn("config-path: directory vanished, the local config is now empty", { source: SOURCE, path: this.root });
    else if (was === null) info("config-path: directory appeared", { source: SOURCE, path: this.root });
    else info("config-path: directory replaced", { source: SOURCE, path: this.root });
    this.sink?.status(SOURCE, true, id === null ? `${this.root} does not exist` : undefined);
    this.markDirty("");
  }

  // --- re-reading ---

  /**
   * Re-reads the dirty paths and hands over what changed. Every step gives the event loop a turn
   * whenever a slice has run (a tree moved in is tens of thousands of dirty paths).
   */
  private async flush(): Promise<void> {
    if (this.stopped || !this.sink) return;
    if (!this.dirty.size && !this.linksDirty) return;
    const pacer = this.reader.pacer;
    const top = await this.topPaths(pacer);
    const lookedAgain = this.lookingAgain;
    this.lookingAgain = new Set();
    const changes = new Map<string, ReadChange>();
    if (!(await this.rescanSubtrees(top, changes, pacer))) return;
    if (!(await this.rescanKeys(top, changes, pacer))) return;
    if (changes.size) info("config-path: changes", { source: SOURCE, keys: changes.size });
    await this.handOver(changes, pacer);
    // A second look finds nothing new unless an event went missing: then once more. The periodic
    // re-read of everything ("") is a safety net of its own: looked at again only if it found changes.
    for (const p of top) if (changes.size || (!lookedAgain.has(p) && p !== "")) this.fresh.add(p);
    this.planSecondLook();
  }

  /** The dirty paths that no other dirty path is above (its subtree re-read covers them). */
  private async topPaths(pacer: Pacer): Promise<string[]> {
    this.linksDirty = false;
    // Symlinked files (and dangling symlinks) are looked at on every re-read: what they point to can
    // change through other paths (a dangling link's target created, a directory on the way
    // re-pointed) without any event on the link itself. Their number is small, and unchanged
    // values are not emitted.
    for (const l of this.links) this.dirty.add(l);
    const dirty = this.dirty;
    this.dirty = new Set(); // hints during the flush are for the next one
    const top = new Set<string>();
    let n = 0;
    for (const p of dirty) {
      let covered = p !== "" && dirty.has("");
      for (let d = dirOf(p); !covered && d !== ""; d = dirOf(d)) covered = dirty.has(d);
      if (!covered) top.add(p);
      if ((++n & 1023) === 0) await pacer.due();
    }
    // A known key on the way to a path is a file that became a directory: its key is looked at too.
    for (const p of [...top]) {
      for (let d = dirOf(p); d !== ""; d = dirOf(d)) if (this.known.has(d)) top.add(d);
      if ((++n & 1023) === 0) await pacer.due();
    }
    return [...top];
  }

  /**
   * Step 1: the subtree below each path, if it is (or was) a directory. Adds to `changes`; false
   * when stopped meanwhile.
   */
  private async rescanSubtrees(top: string[], changes: Map<string, ReadChange>, pacer: Pacer): Promise<boolean> {
    // The known keys and listed directories below each path, in one pass over each (not one per
    // path: a tree moved in brings thousands of new directories in one flush).
    const tops = new Set(top);
    const below = await this.groupBelow(this.known.keys(), tops, pacer, false);
    const dirsUnder = await this.groupBelow(this.listedDirs, tops, pacer, true);
    for (const p of top) {
      const wasDir = p === "" || this.listedDirs.has(p);
      const res = await this.reader.scanTree(p);
      if (this.stopped) return false;
      if (!wasDir && !res.dirs.size && !res.keepPrefixes.length) continue; // a plain file (or nothing): step 2
      this.syncDirs(dirsUnder.get(p) ?? [], res);
      this.syncLinks(p, res);
      let n = 0;
      for (const [k, v] of res.values) {
        changes.set(k, changeOf(res, k, v));
        if ((++n & 1023) === 0) await pacer.due();
      }
      for (const k of below.get(p) ?? []) {
        if (!res.fps.has(k) && !isKept(k, res)) changes.set(k, null);
        if ((++n & 1023) === 0) await pacer.due();
      }
    }
    return true;
  }

  /** Each path of `rels` under the paths of `tops` it is below (or is, with `self`). */
  private async groupBelow(rels: Iterable<string>, tops: Set<string>, pacer: Pacer, self: boolean): Promise<Map<string, string[]>> {
    const out = new Map<string, string[]>();
    const all = tops.has("");
    let n = 0;
    for (const rel of rels) {
      if (all) push(out, "", rel);
      for (let d = self ? rel : dirOf(rel); d !== ""; d = dirOf(d)) if (tops.has(d)) push(out, d, rel);
      if ((++n & 1023) === 0) await pacer.due();
    }
    return out;
  }

  /**
   * Step 2: the key each path's name maps to, as a file in its directory, and that directory's
   * listing diffed against the keys known in it: one listing per directory. False when stopped.
   */
  private async rescanKeys(top: string[], changes: Map<string, ReadChange>, pacer: Pacer): Promise<boolean> {
    const byDir = new Map<string, { stems: Set<string>; files: Set<string>; known: Set<string> }>();
    for (const p of top) {
      if (p === "" || p.split("/").some(isIgnoredName)) continue;
      const d = dirOf(p);
      let g = byDir.get(d);
      if (!g) byDir.set(d, (g = { stems: new Set(), files: new Set(), known: new Set() }));
      g.stems.add(parseFileName(d === "" ? p : p.slice(d.length + 1)).stem);
      g.files.add(p);
    }
    if (byDir.size) {
      let n = 0;
      for (const k of this.known.keys()) {
        const d = dirOf(k);
        byDir.get(d)?.known.add(d === "" ? k : k.slice(d.length + 1));
        if ((++n & 1023) === 0) await pacer.due();
      }
    }
    for (const [d, g] of byDir) {
      const res = await this.reader.scanKeys(d, g.stems, g.known);
      if (this.stopped) return false;
      for (const f of res.files) g.files.add(f);
      this.syncLinks(g.files, res);
      if (res.keepPrefixes.length) continue;
      for (const stem of res.stems) {
        const key = joinRel(d, stem);
        if (res.keepKeys.has(key)) continue;
        const v = res.values.get(key);
        if (v) changes.set(key, changeOf(res, key, v));
        else if (!res.fps.has(key) && this.known.has(key)) changes.set(key, null);
      }
    }
    return true;
  }

  /**
   * Once no hint has come for a while and chokidar has no file-system work under way (the watch of
   * a directory read in this burst may still be to come until then), the fresh paths are read
   * again (as for a hint).
   */
  private planSecondLook(): void {
    if (this.stopped || !this.fresh.size || this.secondLookTimer) return;
    const quiet = Math.max(SECOND_LOOK_QUIET_MS, 2 * this.debounceMs);
    const wait = (ms: number) => (this.secondLookTimer = setTimeout(check, Math.max(0, ms)));
    const check = () => {
      this.secondLookTimer = null;
      if (this.stopped) return;
      const left = this.lastHintAt + quiet - Date.now();
      if (left > 0) return void wait(left);
      if (this.watcher?.busy()) return void wait(WATCHER_BUSY_RECHECK_MS);
      for (const d of this.fresh) this.dirty.add(d);
      this.lookingAgain = this.fresh;
      this.fresh = new Set();
      this.schedule();
    };
    wait(this.lastHintAt + quiet - Date.now());
  }

  /** Hands changed keys (null: deleted) to the sink as one update, in key order, and remembers them. */
  private async handOver(changes: Map<string, ReadChange>, pacer: Pacer): Promise<void> {
    if (!changes.size || !this.sink) return;
    const keys = await pacer.run(sortSteps([...changes.keys()]));
    const events: KeyEvent[] = [];
    const logEach = debugEnabled();
    for (const key of keys) {
      const change = changes.get(key)!;
      const value = change?.value ?? null;
      events.push({ key, value });
      if (change) this.known.set(key, change.fp);
      else this.known.delete(key);
      if (logEach) debug("config-path: key " + (value ? "set" : "deleted"), { source: SOURCE, key, path: value?.origin });
      if ((events.length & 1023) === 0) await pacer.due();
    }
    this.sink?.update(SOURCE, events);
  }
}
