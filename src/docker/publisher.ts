// The etcd side of clusterf-docker: the keys this host publishes, all bound to ONE lease kept
// alive by this daemon (docs/config.md §6), so that a dead host's backends expire by themselves.
//
// - The lease id is saved in <state-dir>/docker-lease.json with the etcd cluster id. A restarted
//   daemon that finds its lease still alive (same cluster) keeps it alive and takes its keys
//   over: nothing is deleted and re-written, so readers see no gap.
// - The keys of this host are the keys attached to that lease. A full resync (at start, after
//   an etcd outage, after any failed write) reads them back from etcd and diffs them against
//   what the containers stand for now: stale ones deleted, missing or different ones written.
//   Between resyncs, changes are diffed against what this publisher last wrote.
// - Nothing is diffed before the Docker side has delivered its first full state (setDesired):
//   an empty "desired" must never wipe a taken-over lease's keys.
// - stop({ revoke: true }) revokes the lease (etcd deletes its keys at once).

import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import type { Etcd3, IDuplexStream } from "etcd3";
import * as log from "../util/log.ts";
import { prefixEnd } from "../config/etcd-source.ts";
import { SERVICES, absoluteKey } from "../config/keys.ts";

export const STATE_FILE = "docker-lease.json";

interface LeaseState {
  version: 1;
  clusterId: string;
  endpoints: string[];
  prefix: string;
  leaseId: string;
  ttl: number;
}

export interface PublisherOptions {
  /** Key prefix (e.g. "/clusterf"); this daemon writes under <prefix>/services/. */
  prefix: string;
  /** Lease TTL in seconds (≥ 1). */
  ttlSeconds: number;
  /** Path of the lease state file; undefined = no take-over across restarts. */
  stateFile?: string;
  /** The -etcd-machines endpoints, recorded in the state file. */
  endpoints: string[];
  /** Most txn operations per request (etcd's --max-txn-ops defaults to 128). */
  maxTxnOps?: number;
}

export interface PublisherStats {
  /** Keys put / deleted since start. */
  puts: number;
  deletes: number;
  /** Write requests (txns) sent. */
  txns: number;
  /** Full resyncs done. */
  resyncs: number;
  /** Leases granted (a take-over does not count). */
  grants: number;
  /** Keep-alive failures (a broken stream, no answer in time). */
  keepaliveFailures: number;
  /** Leases taken over from a previous run. */
  adopted: number;
}

const enc = (s: string) => Buffer.from(s);

function describe(e: unknown): string {
  if (e instanceof Error) return e.message.replace(/\s+/g, " ").slice(0, 300);
  return String(e);
}

export class Publisher {
  readonly stats: PublisherStats = { puts: 0, deletes: 0, txns: 0, resyncs: 0, grants: 0, adopted: 0, keepaliveFailures: 0 };
  private readonly base: string; // "<prefix>/services/"
  private desired: Map<string, string> | undefined;
  /** What is in etcd under our lease, as far as we know (valid when !needFull). */
  private published = new Map<string, string>();
  private leaseId: string | undefined;
  private clusterId: string | undefined;
  private needFull = true;
  /** Check whether the lease is still alive before the next write (after a failure). */
  private checkLease = false;
  private stopped = false;
  private wake: (() => void) | undefined;
  private kicked = false;
  private backoffMs = 250;
  private loop: Promise<void> | undefined;
  // keep-alive
  private kaTimer: ReturnType<typeof setInterval> | undefined;
  private kaStream: IDuplexStream<{ ID: string }, { ID: string; TTL: string }> | undefined;
  private kaOpening = false;
  private kaLastOk = 0;
  private kaFailing = false;
  private syncedListeners: (() => void)[] = [];
  /** True once etcd holds exactly the desired keys (cleared by any change or failure). */
  inSync = false;

  constructor(
    private readonly client: Etcd3,
    private readonly opts: PublisherOptions,
  ) {
    this.base = absoluteKey(opts.prefix, `${SERVICES}/`);
  }

  get lease(): string | undefined {
    return this.leaseId;
  }

  /** Starts the lease (taken over or granted) and the write loop. */
  start(): void {
    this.loop ??= this.run();
  }

  /**
   * The full set of keys (absolute) → values this host stands for now. reread: diff against a
   * fresh read of etcd rather than against what was last written (after a Docker reconnect).
   */
  setDesired(keys: Map<string, string>, opts: { reread?: boolean } = {}): void {
    this.desired = keys;
    if (opts.reread) this.needFull = true;
    this.inSync = false;
    this.kick();
  }

  /** A full resync at the next pass: the keys under the lease read back from etcd and diffed. */
  resync(): void {
    this.needFull = true;
    this.inSync = false;
    this.kick();
  }

  /** Resolves the next time etcd is in sync with the desired keys (at once if it is). */
  synced(): Promise<void> {
    if (this.inSync) return Promise.resolve();
    return new Promise((r) => this.syncedListeners.push(r));
  }

  private kick(): void {
    this.kicked = true;
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private async sleep(ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        this.wake = undefined;
        resolve();
      }, ms);
      this.wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }

  private deadline(ms = 5000): { deadline: Date } {
    return { deadline: new Date(Date.now() + ms) };
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const work = this.kicked || !this.leaseId || this.checkLease || (this.desired !== undefined && this.needFull);
      if (!work) {
        await new Promise<void>((r) => (this.wake = r));
        continue;
      }
      this.kicked = false;
      try {
        if (this.checkLease && this.leaseId) await this.verifyLease();
        if (!this.leaseId) await this.acquireLease();
        if (this.stopped) break;
        if (!this.desired) continue; // the Docker side has not delivered its first state yet
        if (this.needFull) await this.readOwned();
        if (this.stopped) break;
        await this.apply(this.desired);
        this.backoffMs = 250;
        if (!this.kicked) {
          this.inSync = true;
          const ls = this.syncedListeners;
          this.syncedListeners = [];
          for (const l of ls) l();
        }
      } catch (e) {
        if (this.stopped) break;
        this.inSync = false;
        this.needFull = true;
        this.checkLease = true;
        log.warn("etcd: cannot publish the backends; retrying", { error: describe(e), retryMs: this.backoffMs });
        await this.sleep(this.backoffMs);
        this.backoffMs = Math.min(this.backoffMs * 2, 5000);
        this.kicked = true;
      }
    }
  }

  // ---- lease

  private readState(): LeaseState | undefined {
    if (!this.opts.stateFile) return undefined;
    try {
      const s = JSON.parse(readFileSync(this.opts.stateFile, "utf8")) as LeaseState;
      if (s.version !== 1 || typeof s.leaseId !== "string" || typeof s.clusterId !== "string") throw new Error("unknown layout");
      return s;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") log.warn("state: unreadable lease state ignored", { file: this.opts.stateFile, error: describe(e) });
      return undefined;
    }
  }

  private writeState(): void {
    const file = this.opts.stateFile;
    if (!file || !this.leaseId || !this.clusterId) return;
    const s: LeaseState = {
      version: 1,
      clusterId: this.clusterId,
      endpoints: this.opts.endpoints,
      prefix: this.opts.prefix,
      leaseId: this.leaseId,
      ttl: this.opts.ttlSeconds,
    };
    try {
      mkdirSync(dirname(file), { recursive: true });
      const tmp = `${file}.tmp${process.pid}`;
      writeFileSync(tmp, JSON.stringify(s) + "\n", { mode: 0o600 });
      renameSync(tmp, file);
    } catch (e) {
      log.warn("state: cannot save the lease id; a restart will not take the keys over", { file, error: describe(e) });
    }
  }

  private removeState(): void {
    if (this.opts.stateFile) rmSync(this.opts.stateFile, { force: true });
  }

  /** Takes over the saved lease when it is still alive in the same cluster, else grants one. */
  private async acquireLease(): Promise<void> {
    const saved = this.readState();
    if (saved) {
      const r = await this.client.leaseClient.leaseTimeToLive({ ID: saved.leaseId, keys: false }, this.deadline());
      const ttl = Number(r.TTL);
      if (r.header.cluster_id !== saved.clusterId) {
        log.info("etcd: saved lease belongs to another etcd cluster; granting a new one", { lease: saved.leaseId });
      } else if (ttl >= 0) {
        // TTL is the remaining whole seconds: 0 = alive for less than a second; -1 = gone.
        this.leaseId = saved.leaseId;
        this.clusterId = r.header.cluster_id;
        this.stats.adopted++;
        log.info("etcd: took over the lease of the previous run", { lease: this.leaseId, remainingTtl: ttl });
        this.needFull = true;
        this.startKeepalive();
        this.kaSend(); // at once: the remaining TTL may be short
        if (saved.ttl !== this.opts.ttlSeconds) log.info("etcd: the taken-over lease keeps its TTL until it is replaced", { ttl: saved.ttl });
        return;
      } else {
        log.info("etcd: the lease of the previous run has expired; granting a new one", { lease: saved.leaseId });
      }
    }
    const g = await this.client.leaseClient.leaseGrant({ TTL: this.opts.ttlSeconds }, this.deadline());
    if (g.error) throw new Error(`lease grant: ${g.error}`);
    this.leaseId = g.ID;
    this.clusterId = g.header.cluster_id;
    this.stats.grants++;
    this.published.clear();
    this.needFull = true;
    this.writeState();
    log.info("etcd: lease granted", { lease: this.leaseId, ttl: this.opts.ttlSeconds });
    this.startKeepalive();
  }

  /** After a failure: is our lease still alive? If not, drop it (the next pass grants another). */
  private async verifyLease(): Promise<void> {
    const id = this.leaseId!;
    const r = await this.client.leaseClient.leaseTimeToLive({ ID: id, keys: false }, this.deadline());
    this.checkLease = false;
    if (Number(r.TTL) >= 0) return; // -1: not found
    this.leaseLost(`lease ${id} has expired`);
  }

  private leaseLost(why: string): void {
    if (!this.leaseId) return;
    log.warn("etcd: lease lost; its keys are gone: publishing again under a new lease", { lease: this.leaseId, reason: why });
    this.stopKeepalive();
    this.leaseId = undefined;
    this.published.clear();
    this.needFull = true;
    this.inSync = false;
    this.removeState();
    this.kick();
  }

  private startKeepalive(): void {
    this.stopKeepalive();
    this.kaLastOk = Date.now();
    this.kaFailing = false;
    const interval = Math.max(200, (this.opts.ttlSeconds * 1000) / 3);
    this.kaTimer = setInterval(() => this.kaSend(), interval);
  }

  private stopKeepalive(): void {
    clearInterval(this.kaTimer);
    this.kaTimer = undefined;
    const s = this.kaStream;
    this.kaStream = undefined;
    try {
      s?.end();
    } catch {
      /* already broken */
    }
  }

  private kaSend(): void {
    if (this.stopped || !this.leaseId) return;
    // A stream that has not answered for a while is stuck (frozen server): drop it.
    const silentMs = Date.now() - this.kaLastOk;
    if (this.kaStream && silentMs > (this.opts.ttlSeconds * 1000 * 2) / 3 + 500) {
      this.kaFailed(new Error(`no keep-alive answer for ${silentMs} ms`));
    }
    if (this.kaStream) {
      try {
        this.kaStream.write({ ID: this.leaseId });
      } catch (e) {
        this.kaFailed(e);
      }
      return;
    }
    if (this.kaOpening) return;
    this.kaOpening = true;
    const id = this.leaseId;
    this.client.leaseClient
      .leaseKeepAlive()
      .then((stream) => {
        this.kaOpening = false;
        if (this.stopped || this.leaseId !== id) {
          stream.end();
          return;
        }
        this.kaStream = stream as never;
        stream.on("data", (res: { ID: string; TTL: string }) => {
          if (stream !== (this.kaStream as unknown)) return;
          if (Number(res.TTL) <= 0) {
            this.leaseLost("etcd says the lease has expired");
            return;
          }
          this.kaLastOk = Date.now();
          if (this.kaFailing) {
            this.kaFailing = false;
            log.info("etcd: lease keep-alive working again; resyncing", { lease: this.leaseId });
            // etcd may have been restored from a backup, or keys deleted by hand: re-read.
            this.needFull = true;
            this.inSync = false;
            this.kick();
          }
        });
        stream.on("error", (e: Error) => {
          if (stream === (this.kaStream as unknown)) this.kaFailed(e);
        });
        stream.on("end", () => {
          if (stream === (this.kaStream as unknown)) this.kaFailed(new Error("keep-alive stream ended"));
        });
        stream.write({ ID: id });
      })
      .catch((e) => {
        this.kaOpening = false;
        this.kaFailed(e);
      });
  }

  private kaFailed(e: unknown): void {
    const s = this.kaStream;
    this.kaStream = undefined;
    try {
      s?.end();
    } catch {
      /* broken */
    }
    if (this.stopped) return;
    this.stats.keepaliveFailures++;
    if (!this.kaFailing) {
      this.kaFailing = true;
      log.warn("etcd: lease keep-alive failing", { lease: this.leaseId, error: describe(e) });
    }
  }

  /** True while the lease's keep-alive is failing (the keys may be about to expire). */
  get keepaliveFailing(): boolean {
    return this.kaFailing;
  }

  // ---- keys

  /** Reads back the keys attached to our lease: the truth a full resync diffs against. */
  private async readOwned(): Promise<void> {
    const lease = this.leaseId!;
    const ttl = await this.client.leaseClient.leaseTimeToLive({ ID: lease, keys: true }, this.deadline());
    if (Number(ttl.TTL) < 0) {
      this.leaseLost("lease not found while resyncing");
      throw new Error("lease expired");
    }
    const attached = ttl.keys.map((k) => k.toString());
    const foreign = attached.filter((k) => !k.startsWith(this.base));
    const start = enc(this.base);
    const r = await this.client.kv.range({ key: start, range_end: prefixEnd(start) }, this.deadline(10_000));
    const owned = new Map<string, string>();
    for (const kv of r.kvs) {
      if (kv.lease === lease) owned.set(kv.key.toString(), kv.value.toString());
    }
    if (foreign.length) {
      // Keys of an earlier run under another -etcd-prefix, still attached to this lease.
      log.info("etcd: removing this lease's keys outside the prefix", { count: foreign.length });
      await this.txn(foreign.map((k) => ({ request_delete_range: { key: enc(k) } })));
      this.stats.deletes += foreign.length;
    }
    this.published = owned;
    this.needFull = false;
    this.stats.resyncs++;
    log.debug("etcd: resync read", { lease, keys: owned.size });
  }

  private async txn(ops: object[]): Promise<void> {
    const max = this.opts.maxTxnOps ?? 100;
    for (let i = 0; i < ops.length; i += max) {
      await this.client.kv.txn({ success: ops.slice(i, i + max) as never }, this.deadline(10_000));
      this.stats.txns++;
    }
  }

  private async apply(desired: Map<string, string>): Promise<void> {
    const lease = this.leaseId!;
    const puts: [string, string][] = [];
    const dels: string[] = [];
    for (const [k, v] of desired) if (this.published.get(k) !== v) puts.push([k, v]);
    for (const k of this.published.keys()) if (!desired.has(k)) dels.push(k);
    if (puts.length === 0 && dels.length === 0) return;
    const ops = [
      ...puts.map(([k, v]) => ({ request_put: { key: enc(k), value: enc(v), lease } })),
      ...dels.map((k) => ({ request_delete_range: { key: enc(k) } })),
    ];
    await this.txn(ops);
    for (const [k, v] of puts) {
      this.published.set(k, v);
      log.info("etcd: backend published", { key: k, value: v });
    }
    for (const k of dels) {
      this.published.delete(k);
      log.info("etcd: backend removed", { key: k });
    }
    this.stats.puts += puts.length;
    this.stats.deletes += dels.length;
  }

  /**
   * Stops publishing. revoke: the lease is revoked, so every key goes at once (a clean exit);
   * otherwise the keys stay until the TTL runs out (or a restart takes them over).
   */
  async stop(opts: { revoke: boolean }): Promise<void> {
    this.stopped = true;
    this.kick();
    this.stopKeepalive();
    // A write in flight to an unreachable etcd is not waited for: the revoke goes out anyway
    // (a put that lands after it fails, its lease being gone).
    await Promise.race([this.loop?.catch(() => {}), Bun.sleep(1000)]);
    const lease = this.leaseId;
    if (!opts.revoke || !lease) return;
    try {
      await this.client.leaseClient.leaseRevoke({ ID: lease }, this.deadline(3000));
      this.removeState();
      log.info("etcd: lease revoked; this host's backends are removed", { lease });
    } catch (e) {
      if (/lease not found/i.test(describe(e))) {
        this.removeState();
        return;
      }
      log.warn("etcd: cannot revoke the lease; the backends expire with its TTL", { lease, error: describe(e) });
    }
  }
}
