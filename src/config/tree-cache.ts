// What the first read of a -config-path tree found, kept in -state-dir, so that the next start
// looks at each unchanged file with one stat instead of opening and reading it, and lists no
// unchanged directory (a 1000-service tree: 11,000 files; in a slow guest each system call costs
// 20-50 µs, and reading the tree was most of a restart).
//
// When a cached value is used: the file (after symlinks) has the same device, inode, size,
// modification time and change time as when it was read, and both times were more than
// RACY_MS before that read began. The second rule is git's "racily clean" one: a file written
// again within its file system's timestamp granularity of the read (a jiffy here; a second or two
// on some file systems) could keep all five, so such a file is read again next time, whatever its
// stat says. The change time covers tools that put the old mtime back (cp -p, rsync -t, tar): it
// cannot be set from user space. Left open, as by git: a clock set back, or a network file
// system whose server clock runs behind, by more than RACY_MS. A directory's listing is reused on
// the same terms (its mtime moves with every name added, removed or renamed in it).
//
// The file: a header line, then one line per directory listed, in the order of the read:
// JSON.stringify(relDir) TAB JSON [identity or null, listing or null, [files...]]. A JSON string
// holds no raw tab or newline, so the start-up finds each directory's line by its name without
// parsing the others. It is written aside and renamed over, as the read goes (a 110,000-file
// tree's texts are never all held), and only after a read that reached its end; a directory
// listed and read from the old cache in full is written as its old line.

import * as fs from "node:fs";
import { dirname } from "node:path";
import { warn } from "../util/log.ts";

/** A file or directory changed this recently before the read is read again next time (ms). */
export const RACY_MS = 2000;

const FORMAT = "clusterf config-path cache 1";
const NL = 0x0a;
const TAB = 0x09;
/** How much of an old cache is read at a time (grown for a longer line). */
const WINDOW = 1 << 18;
/** Lines are written out once this many characters wait. */
const WRITE_CHUNK = 1 << 16;

/** A listed entry, as the reader uses one (fs.Dirent or a cached one). */
export interface DirEntry {
  readonly name: string;
  isFile(): boolean;
  isDirectory(): boolean;
  isSymbolicLink(): boolean;
}

type Kind = "f" | "d" | "l" | "o";
type DirIdentity = [dev: number, ino: number, mtimeMs: number, ctimeMs: number];
export type FileRecord = [name: string, dev: number, ino: number, size: number, mtimeMs: number, ctimeMs: number, fp: number, text: string];
type DirLine = [id: DirIdentity | null, listing: [string, Kind][] | null, files: FileRecord[]];

class CachedEntry implements DirEntry {
  constructor(
    readonly name: string,
    private readonly kind: Kind,
  ) {}
  isFile(): boolean {
    return this.kind === "f";
  }
  isDirectory(): boolean {
    return this.kind === "d";
  }
  isSymbolicLink(): boolean {
    return this.kind === "l";
  }
}

const kindOf = (e: DirEntry): Kind => (e.isFile() ? "f" : e.isDirectory() ? "d" : e.isSymbolicLink() ? "l" : "o");

/** What identifies the tree a cache was made of: another root or size limit, and it is not used. */
interface Header {
  format: string;
  root: string;
  maxBytes: number;
}

/**
 * A cache file as found at start-up: where each directory's line is, read a window at a time as
 * the scan asks for its directories (in the order they were written, when the tree is as it was).
 * Not read whole: a 110,000-file tree's cache is 18 MB, and holding it raised a restart's peak
 * memory by a sixth.
 */
class CacheFile {
  /** Each directory's line by its index into offsets: where it starts, and where its record starts (after the tab). */
  private readonly index = new Map<string, number>();
  private readonly offsets: number[] = [];
  /** The bytes of the file from winStart on (winLen of them). */
  private win = Buffer.allocUnsafe(WINDOW);
  private winStart = 0;
  private winLen = 0;

  private constructor(
    private readonly fd: number,
    private readonly size: number,
  ) {}

  /** The cache at `file` if it was made of this tree; null when there is none (or it is of no use). */
  static open(file: string, header: Header): CacheFile | null {
    let fd: number;
    try {
      fd = fs.openSync(file, "r");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") warn("config-path cache: cannot read it, reading the whole tree", { path: file, error: String(e) });
      return null;
    }
    const cache = new CacheFile(fd, fs.fstatSync(fd).size);
    try {
      const first = cache.lineAt(0);
      const h = JSON.parse(first ? first.bytes.toString("utf8") : "") as Partial<Header>;
      if (h.format !== header.format || h.root !== header.root || h.maxBytes !== header.maxBytes) {
        cache.close();
        return null;
      }
      for (let at = first!.next; at < cache.size; ) {
        const line = cache.lineAt(at);
        if (!line) throw new Error(`no newline after byte ${at}`);
        const tab = line.bytes.indexOf(TAB);
        if (tab <= 0) throw new Error(`no directory name at byte ${at}`);
        cache.index.set(JSON.parse(line.bytes.toString("utf8", 0, tab)) as string, cache.offsets.length);
        cache.offsets.push(at, at + tab + 1);
        at = line.next;
      }
      return cache;
    } catch (e) {
      warn("config-path cache: not readable, reading the whole tree", { path: file, error: String(e) });
      cache.close();
      return null;
    }
  }

  /** The line that starts at byte `at` (without its newline; valid until the next read) and where the next one starts; null: no newline before the end. */
  private lineAt(at: number): { bytes: Buffer; next: number } | null {
    for (;;) {
      if (at < this.winStart || at >= this.winStart + this.winLen) this.fill(at);
      const from = at - this.winStart;
      const nl = this.win.indexOf(NL, from);
      if (nl >= 0 && nl < this.winLen) return { bytes: this.win.subarray(from, nl), next: this.winStart + nl + 1 };
      if (this.winStart + this.winLen >= this.size) return null;
      if (from === 0) this.win = Buffer.allocUnsafe(this.win.length * 2); // a line longer than the window
      this.fill(at);
    }
  }

  private fill(at: number): void {
    this.winStart = at;
    this.winLen = fs.readSync(this.fd, this.win, 0, this.win.length, at);
  }

  dir(relDir: string): DirLine | null {
    const i = this.index.get(relDir);
    if (i === undefined) return null;
    try {
      const line = this.lineAt(this.offsets[i]!)!;
      return JSON.parse(line.bytes.toString("utf8", this.offsets[i + 1]! - this.offsets[i]!)) as DirLine;
    } catch {
      return null;
    }
  }

  /** A directory's line as written, without its newline: a copy of its bytes (not decoded). */
  line(relDir: string): Uint8Array {
    return Buffer.from(this.lineAt(this.offsets[this.index.get(relDir)!]!)!.bytes);
  }

  close(): void {
    try {
      fs.closeSync(this.fd);
    } catch {}
  }
}

/**
 * One full read of the tree with a cache: answers from the old cache what has not changed and
 * writes the new one as the read goes. The reader calls enterDir for each directory it lists (in
 * the order of the read), listed with the listing it used, then for each file of that directory
 * known (and unchanged with its stat, when known) or fileRead.
 */
export class TreeCacheScan {
  private old: CacheFile | null;
  private oldDir: DirLine | null = null;
  /** The old directory's files by name: made only when they are not asked for in their order. */
  private oldFiles: Map<string, FileRecord> | null = null;
  /** The old directory's file expected next (the reader asks in the order it recorded them). */
  private nextFile = 0;
  /**
   * The directory being recorded: its relative path, identity (if trusted), listing and files;
   * whether its listing came from the old cache and how many of its files did.
   */
  private cur: { relDir: string; id: DirIdentity | null; listing: [string, Kind][] | null; files: FileRecord[]; reused: boolean; hits: number } | null = null;
  private fd: number | null = null;
  private readonly aside: string;
  /** Lines waiting to be written: made anew (text), or the old cache's as they were (bytes). */
  private pending: (string | Uint8Array)[] = [];
  private pendingChars = 0;
  /** Files answered from the old cache (for the log). */
  hits = 0;

  /**
   * @param file the cache file in -state-dir
   * @param trustBefore times at or after this (ms since the epoch) are too recent to trust: the
   *   read's start minus RACY_MS
   */
  constructor(
    private readonly file: string,
    root: string,
    maxBytes: number,
    private readonly trustBefore: number,
  ) {
    const header: Header = { format: FORMAT, root, maxBytes };
    this.old = CacheFile.open(file, header);
    this.aside = `${file}.tmp${process.pid}`;
    try {
      fs.mkdirSync(dirname(file), { recursive: true });
      this.fd = fs.openSync(this.aside, "w", 0o600);
      this.write(JSON.stringify(header) + "\n");
    } catch (e) {
      this.writeFailed(e);
    }
  }

  /** Both times of a stat older than the read by RACY_MS. */
  private settled(st: fs.Stats): boolean {
    return st.mtimeMs < this.trustBefore && st.ctimeMs < this.trustBefore;
  }

  /**
   * The reader lists `relDir` (its stat: taken before the listing). The cached listing when the
   * directory is as it was then; null: list it.
   */
  enterDir(relDir: string, st: fs.Stats): DirEntry[] | null {
    this.endDir();
    const id: DirIdentity = [st.dev, st.ino, st.mtimeMs, st.ctimeMs];
    this.cur = { relDir, id: this.settled(st) ? id : null, listing: null, files: [], reused: false, hits: 0 };
    this.oldDir = this.old?.dir(relDir) ?? null;
    this.oldFiles = null;
    this.nextFile = 0;
    const was = this.oldDir?.[0];
    const listing = this.oldDir?.[1];
    if (!was || !listing || !this.cur.id || was.some((v, i) => v !== id[i])) return null;
    this.cur.reused = true;
    return listing.map(([name, kind]) => new CachedEntry(name, kind));
  }

  /** The listing the reader used for the directory entered last. */
  listed(entries: readonly DirEntry[]): void {
    if (this.cur?.id) this.cur.listing = entries.map((e) => [e.name, kindOf(e)]);
  }

  /** What the old cache has of a file of the directory entered last (asked in the order it recorded them, mostly). */
  known(name: string): FileRecord | undefined {
    if (!this.oldDir) return undefined;
    const files = this.oldDir[2];
    const f = files[this.nextFile];
    if (f?.[0] === name) {
      this.nextFile++;
      return f;
    }
    return (this.oldFiles ??= new Map(files.map((x) => [x[0], x]))).get(name);
  }

  /**
   * A file the old cache knows, by its stat now: its fingerprint and text as read before when
   * unchanged (then kept in the new cache as it was); null: read it.
   */
  unchanged(f: FileRecord, st: fs.Stats): { fp: number; text: string } | null {
    if (!this.settled(st) || f[1] !== st.dev || f[2] !== st.ino || f[3] !== st.size || f[4] !== st.mtimeMs || f[5] !== st.ctimeMs) return null;
    this.hits++;
    if (this.cur) {
      this.cur.hits++;
      this.cur.files.push(f); // the same stat, fingerprint and text: the record as it was
    }
    return { fp: f[6], text: f[7] };
  }

  /** A file of the directory entered last as read (its stat: taken before the read), for the next start. */
  fileRead(name: string, st: fs.Stats, fp: number, text: string): void {
    if (this.cur && this.settled(st)) this.cur.files.push([name, st.dev, st.ino, st.size, st.mtimeMs, st.ctimeMs, fp, text]);
  }

  private endDir(): void {
    const c = this.cur;
    this.cur = null;
    if (!c || this.fd === null || (!c.listing && c.files.length === 0)) return;
    // Listed and read from the old cache, every file: the line as it was (no JSON made again).
    if (c.reused && c.hits === c.files.length && c.files.length === this.oldDir?.[2].length) {
      this.write(this.old!.line(c.relDir));
      return this.write("\n");
    }
    this.write(`${JSON.stringify(c.relDir)}\t${JSON.stringify([c.listing ? c.id : null, c.listing, c.files])}\n`);
  }

  private write(line: string | Uint8Array): void {
    this.pending.push(line);
    this.pendingChars += line.length;
    if (this.pendingChars >= WRITE_CHUNK) this.flush();
  }

  private flush(): void {
    if (this.fd === null || this.pending.length === 0) return;
    try {
      fs.writeSync(this.fd, Buffer.concat(this.pending.map((p) => (typeof p === "string" ? Buffer.from(p) : p))));
    } catch (e) {
      this.writeFailed(e);
    }
    this.pending = [];
    this.pendingChars = 0;
  }

  /** The new cache cannot be written (a read-only -state-dir): the old one is still used, and stays. */
  private writeFailed(e: unknown): void {
    warn("config-path cache: cannot write it; the old one, if any, stays", { path: this.file, error: String(e) });
    this.stopWriting();
  }

  private stopWriting(): void {
    if (this.fd !== null) {
      try {
        fs.closeSync(this.fd);
      } catch {}
      this.fd = null;
    }
    try {
      fs.rmSync(this.aside, { force: true });
    } catch {}
    this.pending = [];
  }

  /** The read reached its end: the new cache replaces the old one. */
  finish(): void {
    this.endDir();
    this.flush();
    if (this.fd === null) return;
    try {
      fs.closeSync(this.fd);
      this.fd = null;
      fs.renameSync(this.aside, this.file);
    } catch (e) {
      this.writeFailed(e);
    }
    this.old?.close();
    this.old = this.oldDir = this.oldFiles = null;
  }

  /** The read did not finish (stopped, failed): the old cache stays as it was. */
  discard(): void {
    this.stopWriting();
    this.old?.close();
    this.old = this.oldDir = this.oldFiles = null;
  }
}
