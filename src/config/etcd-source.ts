// The etcd (v3 API) config source: a full read of everything under the prefix, then a watch of
// the prefix from the next revision (docs/config.md §3).
//
// The watch loop is our own, on the raw gRPC Watch stream of the `etcd3` library's connection
// pool, not the library's Watcher: measured against etcd 3.4, the Watcher turns a compaction
// into a bare "Watcher canceled" error (losing compact_revision), and it moves its resume
// revision to the header revision of the *create* response, which can skip events that were
// still being replayed when the stream broke. Here:
//   - the resume revision is the highest mod_revision delivered (or the header revision of a
//     progress notification, which etcd only sends to watchers that are caught up);
//   - a cancel with compact_revision set means "your revision was compacted": a full re-read,
//     delivered as a snapshot; resync() (SIGHUP) asks for the same re-read;
//   - a frozen server (SIGSTOP, black-holed network) is noticed by gRPC keepalive pings, and a
//     watch that is not created within a timeout is abandoned, so the loop moves on to another
//     endpoint;
//   - streams carry the "hasleader" metadata, so a member cut off from the quorum cancels them
//     instead of silently serving nothing.
// An error never produces a snapshot: only a successful range read does. Without watching
// (-once), the source reads once and again only at resync().

import { EtcdInvalidAuthTokenError, castGrpcError, type Etcd3 } from "etcd3";
import type { ConfigSource, KeyEvent, RawValue, SourceSink } from "./source.ts";
import { DEFAULT_PREFIX, trimPrefix } from "./keys.ts";
import { invalidateAuthToken, makeEtcdClient, openWatchStream, rangePage, type EtcdClientOptions } from "../etcd/client.ts";
import { HostHealth, SkipHost } from "../etcd/faults.ts";
import { prefixEnd } from "../etcd/range.ts";
import { Backoff, Sleeper } from "../util/backoff.ts";
import { describeError as describe } from "../util/errors.ts";
import { debug, error as logError, info, warn } from "../util/log.ts";

export interface EtcdSourceOptions extends EtcdClientOptions {
  /** Key prefix of the config tree, default "/clusterf" (a trailing "/" is ignored). */
  prefix?: string;
  /** Reconnect backoff: first delay and cap, in ms (default 250 → 5000, doubling). */
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** Deadline of each range request of a full read, ms (default 5000). */
  requestTimeoutMs?: number;
  /**
   * Keys per range request of a full read (default 2000): the read goes through the prefix in
   * pages, so that no single response holds the whole tree. This is the first page's size and
   * the smallest; while more than 2 such pages remain, a page takes half of what remains
   * (see readPages()).
   */
  pageSize?: number;
  /**
   * About how many bytes a page of a full read may take (default 16 MiB): after the first page,
   * a page asks for no more keys than this many bytes hold at the size of the keys read so far.
   */
  pageBytes?: number;
  /** A watch that etcd has not confirmed within this many ms is abandoned (default 5000). */
  watchCreateTimeoutMs?: number;
  /**
   * gRPC keepalive ping interval and timeout, ms (default 6000 and 3000): how a frozen server
   * is noticed. etcd's default --grpc-keepalive-min-time is 5 s; pinging more often than that
   * makes it close the connection.
   */
  keepaliveMs?: number;
  keepaliveTimeoutMs?: number;
  /**
   * Follow changes (default); false: the full read only, again at resync() (-once, which exits
   * after its first apply: a watch stream would be opened for nothing, beside that apply).
   */
  watch?: boolean;
}

const ZERO_BYTE = Buffer.from([0]);

/** A page of a full read takes this fraction (1/N) of the keys that remain, at least pageSize… */
const PAGE_FRACTION = 2;
/**
 * …and at most this many keys: a page is decoded and taken in at once (20,000 keys of the bench's
 * config: a block of about 40 ms, bench/stall.ts; with etcd3's own decoding, 13,000 took 160+ ms).
 */
const MAX_PAGE = 20000;

/** How many times in a row a full read starts over at once when its revision gets compacted. */
const MAX_READ_RESTARTS = 3;

/** etcd's "mvcc: required revision has been compacted" (gRPC OUT_OF_RANGE) for a range request. */
function isCompactedError(e: unknown): boolean {
  return e instanceof Error && /required revision has been compacted/.test(e.message);
}

/** How a watch stream ended without an error: a full re-read is due ("compacted", "resync"), or stop(). */
type WatchOutcome = "compacted" | "resync" | "stopped";

/** A watch stream being read (watchFrom), for its response handlers. */
interface ActiveWatch {
  host: string;
  /** The revision it started from. */
  from: number;
  /** etcd confirmed it; `done`: it has ended. */
  created: boolean;
  done: boolean;
  /** Abandons a watch that is not confirmed in time. */
  createTimer: ReturnType<typeof setTimeout>;
  /** Ends it: rejected with `err`, or resolved with `outcome`. */
  finish(err: Error | null, outcome?: WatchOutcome): void;
}

/**
 * Config from etcd. start() resolves as soon as the first attempt is over: after the initial
 * snapshot, or (etcd unreachable) after reporting status down; it never waits for etcd to come
 * up: the daemon runs on its local config meanwhile and the source keeps retrying in the
 * background. `ready` resolves at the first snapshot (rejects only if stopped before that).
 */
export class EtcdSource implements ConfigSource {
  readonly name = "etcd" as const;
  readonly ready: Promise<void>;
  readonly prefix: string;

  private client: Etcd3;
  private hostHealth: HostHealth;
  private base: Buffer; // "<prefix>/"
  private baseText: string;
  private rangeEnd: Buffer;
  private sink: SourceSink | null = null;
  private stopped = false;
  private running: Promise<void> | null = null;
  /** Highest revision whose changes have all been delivered; null = a full read is needed. */
  private rev: number | null = null;
  /** The next full read may go to the sink in parts: only the first, unless one in parts failed (see readPages). */
  private partsAllowed = true;
  private up: boolean | null = null;
  private downReason: string | undefined;
  private watchHost: string | null = null;
  private readonly backoff: Backoff;
  /** The retry backoff's sleep (resync() and stop() cut it short). */
  private readonly retrySleep = new Sleeper();
  private cancelWatch: ((outcome: WatchOutcome) => void) | null = null;
  /** resync() asked for a full re-read; its callers wait for the snapshot of the next one. */
  private resyncWanted = false;
  private resyncWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private resolveReady!: () => void;
  private rejectReady!: (e: Error) => void;
  private readySettled = false;
  private firstAttempt: (() => void) | null = null;

  private readonly requestTimeout: number;
  private readonly createTimeout: number;
  private readonly pageSize: number;
  private readonly pageBytes: number;

  constructor(private opts: EtcdSourceOptions) {
    const p = trimPrefix(opts.prefix ?? DEFAULT_PREFIX);
    this.prefix = p;
    this.baseText = p + "/";
    this.base = Buffer.from(this.baseText);
    this.rangeEnd = prefixEnd(this.base);
    const backoffMax = opts.backoffMaxMs ?? 5000;
    this.backoff = new Backoff(opts.backoffInitialMs ?? 250, backoffMax);
    this.requestTimeout = opts.requestTimeoutMs ?? 5000;
    this.createTimeout = opts.watchCreateTimeoutMs ?? 5000;
    this.pageSize = Math.max(1, Math.floor(opts.pageSize ?? 2000));
    this.pageBytes = Math.max(1, opts.pageBytes ?? 16 * 2 ** 20);
    const hosts = opts.endpoints.map((e) => e.trim().replace(/^https?:\/\//, "")).filter((e) => e !== "");
    this.hostHealth = new HostHealth(hosts, Math.max(2000, backoffMax));
    this.client = makeEtcdClient(opts, {
      grpcOptions: {
        "grpc.keepalive_time_ms": opts.keepaliveMs ?? 6000,
        "grpc.keepalive_timeout_ms": opts.keepaliveTimeoutMs ?? 3000,
        "grpc.max_receive_message_length": -1,
      },
      faultHandling: {
        host: (h: string) => this.hostHealth.policy(h) as never,
      },
    });
    this.ready = new Promise<void>((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.ready.catch(() => {}); // a stop before the first snapshot is not an unhandled error
  }

  /** The etcd3 client this source uses (shared connection pool), e.g. for tests. */
  get etcd(): Etcd3 {
    return this.client;
  }

  /** The endpoint (host:port) whose watch stream is live now, null while disconnected. */
  get endpoint(): string | null {
    return this.watchHost;
  }

  /** Highest revision delivered so far (null before the first snapshot or while re-reading after a compaction). */
  get revision(): number | null {
    return this.rev;
  }

  start(sink: SourceSink): Promise<void> {
    if (this.sink) throw new Error("EtcdSource already started");
    this.sink = sink;
    const first = new Promise<void>((resolve) => (this.firstAttempt = resolve));
    this.running = this.run().catch((e) => logError("etcd source loop crashed", { err: describe(e) }));
    return first;
  }

  /**
   * A full re-read of the prefix, delivered as one snapshot() (as after a compaction); the watch
   * then goes on from the revision of that read. Resolves once the snapshot is delivered; rejects
   * when this attempt fails (etcd down: the last known config stays, and the re-read happens when
   * etcd answers) or the source stops first. Does nothing before start() or after stop().
   */
  resync(): Promise<void> {
    if (!this.sink || this.stopped) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.resyncWaiters.push({ resolve, reject });
      this.resyncWanted = true;
      info("etcd re-read requested", { prefix: this.prefix });
      this.cancelWatch?.("resync");
      this.retrySleep.wake(); // cut a retry backoff short
    });
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.cancelWatch?.("stopped");
    this.retrySleep.wake();
    this.settleResync(new Error("etcd source stopped before the re-read"));
    if (!this.readySettled) {
      this.readySettled = true;
      this.rejectReady(new Error("etcd source stopped before its first snapshot"));
    }
    this.firstAttempt?.();
    await this.running;
    this.client.close();
    info("etcd source stopped", { prefix: this.prefix });
  }

  /** Answers the resync() callers: resolved, or rejected with `err`. */
  private settleResync(err: Error | null, waiters = this.resyncWaiters.splice(0)): void {
    for (const w of waiters) err ? w.reject(err) : w.resolve();
  }

  private endFirstAttempt(): void {
    const f = this.firstAttempt;
    this.firstAttempt = null;
    f?.();
  }

  private setStatus(up: boolean, detail?: string): void {
    if (!up && this.up === false && detail !== this.downReason) {
      // Still down, for another reason (e.g. reachable again, but access denied): log it.
      this.downReason = detail;
      warn("etcd source still down", { prefix: this.prefix, reason: detail });
      return;
    }
    if (this.up === up) return;
    this.up = up;
    this.downReason = up ? undefined : detail;
    if (up) info("etcd connected", { prefix: this.prefix, revision: this.rev ?? undefined });
    else warn("etcd source down, keeping the last known config", { prefix: this.prefix, reason: detail });
    try {
      this.sink?.status("etcd", up, detail);
    } catch (e) {
      logError("etcd status handler failed", { err: describe(e) });
    }
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      try {
        if (this.rev === null || this.resyncWanted) await this.readAll();
        if (this.stopped) break;
        if (this.resyncWanted) continue; // asked again during that read
        if (this.opts.watch === false) {
          // Read, and nothing to follow: connected until stop(); resync() wakes the loop for a re-read.
          this.setStatus(true);
          await this.retrySleep.sleep();
          continue;
        }
        const outcome = await this.watchFrom(this.rev! + 1);
        // Re-read at once, no backoff: the server answered fine. After a compaction the old
        // revision is useless; a resync keeps it until its read succeeds.
        if (outcome === "compacted") this.rev = null;
      } catch (e) {
        if (this.stopped) break;
        this.setStatus(false, describe(e));
        this.endFirstAttempt();
        debug("etcd retry", { in_ms: this.backoff.ms, err: describe(e) });
        await this.retrySleep.sleep(this.backoff.next());
      }
    }
  }

  /** Full read of the prefix → one snapshot; sets the revision to resume the watch from. */
  private async readAll(): Promise<void> {
    // The resync() callers so far get this read's snapshot; later ones, the next read's.
    const waiters = this.resyncWaiters.splice(0);
    this.resyncWanted = false;
    let read;
    try {
      read = await this.readPages();
    } catch (e) {
      if (waiters.length > 0) {
        this.resyncWanted = true; // still due once etcd answers
        this.settleResync(new Error(`etcd: cannot re-read ${this.baseText}: ${describe(e)}`), waiters);
      }
      throw e;
    }
    if (read === null || this.stopped) return this.settleResync(new Error("etcd source stopped before the re-read"), waiters);
    const { entries, rev, pages, parts, keys } = read;
    info("etcd snapshot", { prefix: this.prefix, keys, revision: rev, pages });
    this.rev = rev;
    this.partsAllowed = false; // later reads (compaction, SIGHUP) are handed over whole
    try {
      this.sink!.snapshot("etcd", entries, parts > 0 ? "last" : undefined);
    } catch (e) {
      logError("etcd snapshot handler failed", { err: describe(e) });
    }
    this.settleResync(null, waiters);
    if (!this.readySettled) {
      this.readySettled = true;
      this.resolveReady();
    }
    this.endFirstAttempt();
  }

  /**
   * Everything under the prefix at one revision, read in pages of `pageSize` keys: in key order
   * (etcd's default), each page starting just after the last key of the page before, every page
   * after the first at the revision of the first one's response, so that the pages together are
   * one consistent snapshot. Of each page only the key and the value's text are kept (the
   * response and its buffers are dropped before the next request); the event loop runs while
   * each page is awaited. If that revision is compacted before the last page, the read starts
   * over at the newest revision (a few times at once, then the error goes to the retry loop).
   * null: stopped meanwhile.
   *
   * Page sizes: etcd (3.4) walks its index over every key from a request's first key to the
   * range end, to count them, so N keys in pages of P cost about N²/2P steps (110,000 keys in
   * pages of 2000: 3 million, over a second). A page therefore takes half of the keys that remain
   * (each response's count says how many), never fewer than pageSize and never more than MAX_PAGE
   * (110,000 keys: 10 pages, about half a million steps; in eighths of at most 5000 keys, 30
   * pages took 620-740 ms of requests against 350 ms). The big pages come first, while the
   * snapshot is still small; the last ones, when it is whole, are small. Large values make for
   * fewer keys a page: no more than pageBytes hold at the size of the keys read so far.
   */
  private async readPages(): Promise<{ entries: Map<string, RawValue>; rev: number; pages: number; parts: number; keys: number } | null> {
    for (let restarts = 0; ; restarts++) {
      let entries = new Map<string, RawValue>();
      let parts = 0; // pages handed over as parts of the snapshot (SourceSink.snapshot's `part`)
      let handed = 0; // their keys
      let rev = 0; // the first page: at the newest revision
      let pages = 0;
      let from = this.base;
      let limit = this.pageSize;
      let bytes = 0; // of the responses so far, and their keys
      let read = 0;
      try {
        for (;;) {
          const page = await rangePage(this.client, { key: from, range_end: this.rangeEnd, limit, revision: rev }, { deadline: new Date(Date.now() + this.requestTimeout) });
          if (this.stopped) return null;
          if (rev === 0) rev = page.revision;
          pages++;
          const { buf, spans } = page;
          for (let i = 0; i < spans.length; i += 4) {
            const k = this.relKey(buf, spans[i]!, spans[i + 1]!);
            if (k !== null) entries.set(k, this.rawValue(k, buf.toString("utf8", spans[i + 2], spans[i + 3])));
          }
          const keys = spans.length / 4;
          if (!page.more || keys === 0) return { entries, rev, pages, parts, keys: handed + entries.size };
          if (this.partsAllowed) {
            // The first read goes to the sink page by page: its raw text is never all held at once.
            handed += entries.size;
            this.sink!.snapshot("etcd", entries, "more");
            entries = new Map();
            parts++;
          }
          // The next page starts at the smallest key after the last one (a copy: the key is a
          // slice of the whole response's buffer).
          from = Buffer.concat([buf.subarray(spans[spans.length - 4], spans[spans.length - 3]), ZERO_BYTE]);
          const remaining = page.count - keys;
          bytes += buf.length;
          read += keys;
          const byBytes = Math.max(1, Math.floor(this.pageBytes / (bytes / read)));
          limit = Math.min(byBytes, Math.max(this.pageSize, Math.min(MAX_PAGE, Math.ceil(remaining / PAGE_FRACTION))));
        }
      } catch (e) {
        // Parts handed over for a read that did not finish: the next read is handed over whole,
        // which replaces them (a read in parts again could not say which of them to delete).
        if (parts > 0) this.partsAllowed = false;
        if (rev === 0 || !isCompactedError(e) || restarts >= MAX_READ_RESTARTS) throw e;
        info("etcd revision compacted during the full read, starting over", {
          prefix: this.prefix,
          revision: rev,
          pages,
        });
      }
    }
  }

  /** The key in `buf` from `start` to `end`, relative to the prefix (null: not under it). */
  private relKey(buf: Buffer, start = 0, end = buf.length): string | null {
    const base = this.base;
    if (end - start <= base.length || buf.compare(base, 0, base.length, start, start + base.length) !== 0) return null;
    return buf.toString("utf8", start + base.length, end);
  }

  /**
   * The value of the key `rel` (relative to the prefix). Its origin, the full key, is the prefix
   * and `rel` joined, not a string of its own: it is only read for error messages.
   */
  private rawValue(rel: string, text: string): RawValue {
    return { text, format: "json", origin: this.baseText + rel };
  }

  /**
   * One watch stream from `startRev` until it breaks (rejects), the revision turns out to be
   * compacted ("compacted"), or stop() ("stopped").
   */
  private async watchFrom(startRev: number): Promise<WatchOutcome> {
    const { stream, host } = await openWatchStream(this.client);
    return new Promise<WatchOutcome>((resolve, reject) => {
      const watch: ActiveWatch = {
        host,
        from: startRev,
        created: false,
        done: false,
        createTimer: setTimeout(() => watch.finish(new Error(`watch not created within ${this.createTimeout} ms`)), this.createTimeout),
        finish: (err, outcome) => {
          if (watch.done) return;
          watch.done = true;
          clearTimeout(watch.createTimer);
          this.cancelWatch = null;
          this.watchHost = null;
          try {
            stream.cancel();
          } catch {
            /* already closed */
          }
          if (err) reject(this.watchError(err, host));
          else resolve(outcome!);
        },
      };
      this.cancelWatch = (outcome) => watch.finish(null, outcome);
      stream.on("data", (res: any) => {
        if (!watch.done) this.onWatchResponse(res, watch);
      });
      stream.on("error", (err: Error) => watch.finish(err));
      stream.on("end", () => watch.finish(new Error("watch stream ended")));
      if (this.resyncWanted) return watch.finish(null, "resync"); // asked for while the stream was being opened
      stream.write({
        create_request: {
          key: this.base,
          range_end: this.rangeEnd,
          start_revision: startRev,
          progress_notify: true,
        },
      });
    });
  }

  /** What a broken watch rejects with; a refused token is dropped, and the host counts as failed. */
  private watchError(err: Error, host: string): Error {
    const cast = castGrpcError(err);
    if (cast instanceof EtcdInvalidAuthTokenError) this.invalidateToken();
    if (!(cast instanceof SkipHost)) this.hostHealth.failed(host);
    return new Error(`${host}: ${describe(cast)}`);
  }

  /** One response on the watch stream: canceled, created, events, or a progress notification. */
  private onWatchResponse(res: any, watch: ActiveWatch): void {
    try {
      if (res.canceled) return this.onWatchCanceled(res, watch);
      if (res.created) this.onWatchCreated(watch);
      if (res.events.length > 0) this.deliver(res.events);
      else if (watch.created && !res.created) {
        // A progress notification: every change up to the header revision has been sent.
        const r = Number(res.header.revision);
        if (this.rev === null || r > this.rev) this.rev = r;
      }
    } catch (e) {
      logError("etcd watch response failed", { err: describe(e) });
    }
  }

  private onWatchCreated(watch: ActiveWatch): void {
    watch.created = true;
    clearTimeout(watch.createTimer);
    this.hostHealth.ok(watch.host);
    this.watchHost = watch.host;
    this.backoff.reset();
    this.setStatus(true);
    debug("etcd watch created", { host: watch.host, from: watch.from });
    this.endFirstAttempt();
  }

  /** etcd canceled the watch: its revision was compacted (a full re-read is due), or an error. */
  private onWatchCanceled(res: any, watch: ActiveWatch): void {
    const compact = Number(res.compact_revision);
    if (compact > 0) {
      info("etcd revision compacted, re-reading everything", { prefix: this.prefix, had: this.rev ?? undefined, compacted: compact });
      return watch.finish(null, "compacted");
    }
    // etcd 3.4 answers a watch with an expired or unknown token by "permission denied": get a new
    // token for the next attempt.
    if (/permission denied|auth token/i.test(res.cancel_reason ?? "")) this.invalidateToken();
    watch.finish(new Error(`watch canceled by etcd: ${res.cancel_reason || "no reason given"}`));
  }

  private invalidateToken(): void {
    if (this.opts.username) invalidateAuthToken(this.client);
  }

  /** One watch response → one update batch, the last event per key kept. */
  private deliver(events: any[]): void {
    const byKey = new Map<string, KeyEvent>();
    let maxRev = this.rev ?? 0;
    for (const ev of events) {
      const r = Number(ev.kv.mod_revision);
      if (r > maxRev) maxRev = r;
      const k = this.relKey(ev.kv.key);
      if (k === null) continue;
      byKey.delete(k); // keep the order of last occurrence
      byKey.set(k, { key: k, value: ev.type === "Delete" ? null : this.rawValue(k, ev.kv.value.toString("utf8")) });
    }
    this.rev = maxRev;
    if (byKey.size === 0) return;
    const batch = [...byKey.values()];
    debug("etcd update", { keys: batch.length, revision: maxRev });
    try {
      this.sink!.update("etcd", batch);
    } catch (e) {
      logError("etcd update handler failed", { err: describe(e) });
    }
  }
}
