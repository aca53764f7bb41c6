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

import { readFileSync, rmSync } from "node:fs";
import type { Etcd3 } from "etcd3";
import * as log from "../util/log.ts";
import { SERVICES, absoluteKey } from "../config/keys.ts";
import { LeaseKeeper, deadline, type LeaseEvents } from "../etcd/lease-keeper.ts";
import { prefixEnd } from "../etcd/range.ts";
import { Backoff, Sleeper } from "../util/backoff.ts";
import { describeError as describe } from "../util/errors.ts";
import { writeJsonAtomic } from "../util/state-file.ts";

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

export class Publisher {
  readonly stats: PublisherStats = { puts: 0, deletes: 0, txns: 0, resyncs: 0, grants: 0, adopted: 0, keepaliveFailures: 0 };
  private readonly base: string; // "<prefix>/services/"
  private desired: Map<string, string> | undefined;
  /** What is in etcd under our lease, as far as we know (valid when !needFull). */
  private published = new Map<string, string>();
  /** The lease and its keep-alives (undefined: none yet, or lost). */
  private keeper: LeaseKeeper | undefined;
  private clusterId: string | undefined;
  private needFull = true;
  /** Check whether the lease is still alive before the next write (after a failure). */
  private checkLease = false;
  private stopped = false;
  /** The write loop's idle wait and retry backoff, both cut short by kick(). */
  private readonly idle = new Sleeper();
  private kicked = false;
  private readonly backoff = new Backoff();
  private loop: Promise<void> | undefined;
  private syncedListeners: (() => void)[] = [];
  /** True once etcd holds exactly the desired keys (cleared by any change or failure). */
  inSync = false;

  constructor(
    private readonly client: Etcd3,
    private readonly opts: PublisherOptions,
  ) {
    this.base = absoluteKey(opts.prefix, `${SERVICES}/`);
  }

  /** The lease id in use (undefined while there is none). */
  get lease(): string | undefined {
    return this.keeper?.id;
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
    this.idle.wake();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const work = this.kicked || !this.keeper || this.checkLease || (this.desired !== undefined && this.needFull);
      if (!work) {
        await this.idle.sleep();
        continue;
      }
      this.kicked = false;
      try {
        await this.pass();
      } catch (e) {
        if (this.stopped) break;
        this.inSync = false;
        this.needFull = true;
        this.checkLease = true;
        log.warn("etcd: cannot publish the backends; retrying", { error: describe(e), retryMs: this.backoff.ms });
        await this.idle.sleep(this.backoff.next());
        this.kicked = true;
      }
    }
  }

  /** One pass of the write loop: a live lease, then etcd made equal to the desired keys. */
  private async pass(): Promise<void> {
    if (this.checkLease && this.keeper) await this.verifyLease();
    if (!this.keeper) await this.acquireLease();
    if (this.stopped) return;
    if (!this.desired) return; // the Docker side has not delivered its first state yet
    if (this.needFull) await this.readOwned();
    if (this.stopped) return;
    await this.apply(this.desired);
    this.backoff.reset();
    if (!this.kicked) this.reportSynced();
  }

  private reportSynced(): void {
    this.inSync = true;
    const ls = this.syncedListeners;
    this.syncedListeners = [];
    for (const l of ls) l();
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
    if (!file || !this.keeper || !this.clusterId) return;
    const s: LeaseState = {
      version: 1,
      clusterId: this.clusterId,
      endpoints: this.opts.endpoints,
      prefix: this.opts.prefix,
      leaseId: this.keeper.id,
      ttl: this.opts.ttlSeconds,
    };
    try {
      writeJsonAtomic(file, s, 0o600);
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
    if (saved && (await this.takeOver(saved))) return;
    const { keeper, clusterId } = await LeaseKeeper.grant(this.client, { ttlSeconds: this.opts.ttlSeconds }, this.leaseEvents());
    this.keeper = keeper;
    this.clusterId = clusterId;
    this.stats.grants++;
    this.published.clear();
    this.needFull = true;
    this.writeState();
    log.info("etcd: lease granted", { lease: keeper.id, ttl: this.opts.ttlSeconds });
  }

  /** Keeps the previous run's lease when etcd (the same cluster) still has it; false: grant another. */
  private async takeOver(saved: LeaseState): Promise<boolean> {
    const r = await this.client.leaseClient.leaseTimeToLive({ ID: saved.leaseId, keys: false }, deadline(5000));
    const ttl = Number(r.TTL);
    if (r.header.cluster_id !== saved.clusterId) {
      log.info("etcd: saved lease belongs to another etcd cluster; granting a new one", { lease: saved.leaseId });
      return false;
    }
    // TTL is the remaining whole seconds: 0 = alive for less than a second; -1 = gone.
    if (ttl < 0) {
      log.info("etcd: the lease of the previous run has expired; granting a new one", { lease: saved.leaseId });
      return false;
    }
    this.keeper = LeaseKeeper.adopt(this.client, saved.leaseId, { ttlSeconds: this.opts.ttlSeconds }, this.leaseEvents());
    this.clusterId = r.header.cluster_id;
    this.stats.adopted++;
    log.info("etcd: took over the lease of the previous run", { lease: saved.leaseId, remainingTtl: ttl });
    this.needFull = true;
    if (saved.ttl !== this.opts.ttlSeconds) log.info("etcd: the taken-over lease keeps its TTL until it is replaced", { ttl: saved.ttl });
    return true;
  }

  /** What the keep-alives report: failures counted and logged, a recovery resyncs, a loss starts over. */
  private leaseEvents(): LeaseEvents {
    return {
      failed: (e, first) => {
        if (this.stopped) return;
        this.stats.keepaliveFailures++;
        if (first) log.warn("etcd: lease keep-alive failing", { lease: this.lease, error: describe(e) });
      },
      recovered: () => {
        log.info("etcd: lease keep-alive working again; resyncing", { lease: this.lease });
        // etcd may have been restored from a backup, or keys deleted by hand: re-read.
        this.needFull = true;
        this.inSync = false;
        this.kick();
      },
      lost: (reason) => this.leaseLost(reason.message),
    };
  }

  /** After a failure: is our lease still alive? If not, drop it (the next pass grants another). */
  private async verifyLease(): Promise<void> {
    const id = this.keeper!.id;
    const r = await this.client.leaseClient.leaseTimeToLive({ ID: id, keys: false }, deadline(5000));
    this.checkLease = false;
    if (Number(r.TTL) >= 0) return; // -1: not found
    this.leaseLost(`lease ${id} has expired`);
  }

  private leaseLost(why: string): void {
    const keeper = this.keeper;
    if (!keeper) return;
    log.warn("etcd: lease lost; its keys are gone: publishing again under a new lease", { lease: keeper.id, reason: why });
    keeper.release();
    this.keeper = undefined;
    this.published.clear();
    this.needFull = true;
    this.inSync = false;
    this.removeState();
    this.kick();
  }

  /** True while the lease's keep-alive is failing (the keys may be about to expire). */
  get keepaliveFailing(): boolean {
    return this.keeper?.failing ?? false;
  }

  // ---- keys

  /** Reads back the keys attached to our lease: the truth a full resync diffs against. */
  private async readOwned(): Promise<void> {
    const lease = this.keeper!.id;
    const ttl = await this.client.leaseClient.leaseTimeToLive({ ID: lease, keys: true }, deadline(5000));
    if (Number(ttl.TTL) < 0) {
      this.leaseLost("lease not found while resyncing");
      throw new Error("lease expired");
    }
    const attached = ttl.keys.map((k) => k.toString());
    const foreign = attached.filter((k) => !k.startsWith(this.base));
    const start = enc(this.base);
    const r = await this.client.kv.range({ key: start, range_end: prefixEnd(start) }, deadline(10_000));
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
      await this.client.kv.txn({ success: ops.slice(i, i + max) as never }, deadline(10_000));
      this.stats.txns++;
    }
  }

  private async apply(desired: Map<string, string>): Promise<void> {
    const lease = this.keeper!.id;
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
    this.keeper?.release();
    // A write in flight to an unreachable etcd is not waited for: the revoke goes out anyway
    // (a put that lands after it fails, its lease being gone).
    await Promise.race([this.loop?.catch(() => {}), Bun.sleep(1000)]);
    const keeper = this.keeper;
    if (!opts.revoke || !keeper) return;
    try {
      const revoked = await keeper.revoke(3000);
      this.removeState();
      if (revoked) log.info("etcd: lease revoked; this host's backends are removed", { lease: keeper.id });
    } catch (e) {
      log.warn("etcd: cannot revoke the lease; the backends expire with its TTL", { lease: keeper.id, error: describe(e) });
    }
  }
}
