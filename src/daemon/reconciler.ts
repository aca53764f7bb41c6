// The reconciler: keeps a cache of the actual IPVS table, turns desired-vs-actual differences into
// writes, and maps kernel answers to outcomes (EEXIST on add → edit, ENOENT/ESRCH on delete →
// already gone). It only removes services that it created or that the config describes (their
// list: ownership.ts); destinations that leave with active connections drain first (drain.ts).

import { applyOp, describeOp, diffTables } from "../ipvs/diff.ts";
import { listSteps } from "../ipvs/list.ts";
import {
  IpvsError,
  SVC_F_HASHED,
  destKeyString,
  serviceKeyString,
  type IpvsTable,
  type ObservedService,
  type Op,
  type Table,
  type TableEntry,
  writeOne,
} from "../ipvs/types.ts";
import * as log from "../util/log.ts";
import type { StepCollector } from "../util/collect.ts";
import { chunks, runSync, type Steps } from "../util/slices.ts";
import { Drains, type DrainingDest } from "./drain.ts";
import { Ownership } from "./ownership.ts";
import { CompactMap } from "../util/compact-map.ts";

export interface ReconcilerOptions {
  /** Log the writes that would be made, make none. */
  noop?: boolean;
  /** Where the set of services this daemon created is kept; undefined = memory only. */
  stateDir?: string;
  /**
   * A TCP or SCTP destination that leaves the config while it has active connections stays at
   * weight 0 until they end, this long at most (the kernel drops the packets of connections whose
   * destination is deleted). 0 or undefined = delete at once.
   */
  drainMs?: number;
  /** Told of every write sent (a large sync's operations are garbage soon after). */
  collector?: StepCollector;
}

export interface SyncResult {
  ops: number;
  errors: number;
  /** Keys whose writes failed: retried by the next resync. */
  failed: Set<string>;
  /**
   * Failures that are not a repeat of the same kernel refusal for the same service (a first
   * failure, a changed error, a timeout or a socket error). 0 = the table is as the config wants,
   * but for services the kernel keeps refusing (see Reconciler.failing).
   */
  newFailures: number;
}

export interface ReconcilerCounters {
  writes: Record<Op["type"], number>;
  netlinkErrors: number;
  driftCorrections: number;
}

/** Services diffed, and writes sent, between two chances to pause (see syncSteps). */
const DIFF_SLICE = 64;
const WRITE_SLICE = 256;

export class Reconciler {
  /** What we believe the kernel holds (every service, ours or not). */
  readonly actual: Table = new Map();
  readonly counters: ReconcilerCounters = {
    writes: { "add-service": 0, "edit-service": 0, "delete-service": 0, "add-dest": 0, "edit-dest": 0, "delete-dest": 0 },
    netlinkErrors: 0,
    driftCorrections: 0,
  };
  /**
   * Services whose last write the kernel refused (key → error), for example an unknown scheduler:
   * reported in logs and metrics while the other services are programmed; retried by resyncs.
   */
  readonly failing = new Map<string, string>();
  private readonly ownership: Ownership;
  private readonly drains: Drains;

  constructor(
    readonly ipvs: IpvsTable,
    private readonly opts: ReconcilerOptions = {},
  ) {
    this.ownership = new Ownership(opts.stateDir, opts.noop);
    // A noop daemon deletes nothing, so nothing drains.
    this.drains = new Drains(ipvs, opts.noop ? 0 : (opts.drainMs ?? 0));
  }

  /** Destinations kept at weight 0 after they left the config (service key → dest key → …). */
  get draining(): ReadonlyMap<string, ReadonlyMap<string, DrainingDest>> {
    return this.drains.draining;
  }

  /**
   * Ends the drains whose connections are gone, or whose time is up; returns the service keys
   * to sync (their destinations are then deleted).
   */
  releaseDrained(now = Date.now()): string[] {
    return this.drains.release(this.actual, now);
  }

  /** Replaces the cache with a fresh read of the kernel table. */
  readActual(): void {
    runSync(this.readActualSteps());
  }

  /**
   * readActual() in slices: one service's destinations at a time, the cache replaced at the end.
   * `giveWay`, asked after each service, abandons the read when it says so (false; the cache is
   * then as it was).
   */
  *readActualSteps(giveWay: () => boolean = () => false): Steps<boolean> {
    // A sync compares config, not traffic: the counters are not decoded.
    const services = yield* listSteps(this.ipvs, giveWay, false);
    if (services === null) return false;
    const fresh: Table = new Map();
    for (const s of services) {
      const entry = normalise(s);
      fresh.set(serviceKeyString(entry.service), entry);
      yield;
    }
    this.actual.clear();
    for (const [k, e] of fresh) this.actual.set(k, e);
    return true;
  }

  flush(): void {
    if (this.opts.noop) {
      log.info("IPVS: would flush the table (noop)");
      return;
    }
    this.ipvs.flush();
    this.actual.clear();
    this.ownership.clear();
    this.ownership.save();
  }

  /** Brings the given keys (all when omitted) of the actual table to the desired state. */
  sync(desired: Table, keys?: Iterable<string>): SyncResult {
    return runSync(this.syncSteps(desired, keys));
  }

  /**
   * sync() in slices (the daemon runs it with runSliced): the diff a few services at a time, each
   * slice's writes sent before the next slice is diffed (a full sync's 110,000 writes are never all
   * held at once), WRITE_SLICE at a time. The drains start first (the destinations that would be
   * deleted are known before the diff), so that one diff of the desired table with the draining
   * destinations in it is enough. The caller must not change `desired` or start another sync until
   * it is done.
   */
  *syncSteps(desired: Table, keys?: Iterable<string>): Steps<SyncResult> {
    const scope = keys ? new Set(keys) : undefined;
    this.drains.forget(desired, this.actual, scope);
    yield* this.drains.start(desired, this.actual, scope);
    const target = this.drains.include(desired);
    const owned = (k: string) => this.ownership.has(k) || desired.has(k);
    const services = scope ?? new Set([...target.keys(), ...this.actual.keys()]);
    if (!this.opts.noop) yield* this.claim(target, services);
    const result: SyncResult = { ops: 0, errors: 0, failed: new Set(), newFailures: 0 };
    const seen = new Set<Error>();
    for (const slice of chunks(services, DIFF_SLICE)) {
      const ops = diffTables(target, this.actual, owned, slice);
      if (this.opts.noop) {
        for (const op of ops) log.info(`IPVS: ${describeOp(op)} (noop)`);
        result.ops += ops.length;
      } else {
        for (const chunk of chunks(ops, WRITE_SLICE)) {
          this.writeChunk(chunk, result, seen);
          this.opts.collector?.add(chunk.length);
          yield;
        }
      }
      yield;
    }
    this.settle(desired, scope, result);
    return result;
  }

  /**
   * Sends writes. The fast path sends them all at once (many to a netlink message); a write that
   * fails there is tried again alone, in order, through the answer mapping (EEXIST on add → edit,
   * ENOENT on delete → done…). A batch that got no answer at all is not tried again: the retry
   * re-reads the kernel. The rest of a failed service is not sent: it waits for the retry.
   */
  private writeChunk(chunk: Op[], result: SyncResult, seen: Set<Error>): void {
    const slice = chunk.filter((op) => !result.failed.has(serviceKeyString(op.service)));
    // Per write: undefined = not sent yet (a single write goes straight to the mapping),
    // null = done, an error = what the batch got for it.
    const batched: (Error | null | undefined)[] = slice.length > 1 ? this.ipvs.writeBatch(slice) : [undefined];
    slice.forEach((op, i) => this.settleWrite(op, batched[i], result, seen));
  }

  /**
   * Ownership is saved before the services are created (those of the scope that the kernel does
   * not have: the diff adds them): a daemon killed in the middle of a sync must not leave services
   * that its successor takes for foreign ones.
   */
  private *claim(target: Table, services: Iterable<string>): Steps<void> {
    for (const slice of chunks(services, WRITE_SLICE)) {
      for (const key of slice) if (target.has(key) && !this.actual.has(key)) this.ownership.claim(key);
      yield;
    }
    this.ownership.save();
  }

  /** One write's outcome: sent alone when the batch did not take it, then cached and counted, or failed. */
  private settleWrite(op: Op, batched: Error | null | undefined, result: SyncResult, seen: Set<Error>): void {
    const key = serviceKeyString(op.service);
    if (result.failed.has(key)) return; // the rest of a failed service waits for the retry
    try {
      if (batched instanceof Error && !isRefusal(batched)) throw batched;
      if (batched !== null) this.write(op);
      applyOp(this.actual, op);
      this.counters.writes[op.type]++;
      result.ops++;
      this.ownership.record(op, key);
      if (log.debugEnabled()) log.debug(`IPVS: ${describeOp(op)}`);
    } catch (e) {
      // A batch without an answer fails every service in it: one error line, not one each.
      this.failed(op, key, e as Error, result, seen.has(e as Error));
      seen.add(e as Error);
    }
  }

  /**
   * After the writes: the services that went through are no longer failing, the released drains
   * whose destination is now deleted are forgotten, and ownership is saved.
   */
  private settle(desired: Table, scope: Set<string> | undefined, result: SyncResult): void {
    for (const key of [...this.failing.keys()]) {
      if (result.failed.has(key) || (scope && !scope.has(key))) continue;
      this.failing.delete(key);
      if (desired.has(key)) log.info("IPVS: service programmed after earlier failures", { service: key });
    }
    this.drains.forget(desired, this.actual, scope);
    this.ownership.save();
  }

  private failed(op: Op, key: string, e: Error, result: SyncResult, logged: boolean): void {
    result.errors++;
    result.failed.add(key);
    this.counters.netlinkErrors++;
    // A kernel refusal repeated by the retry is logged once, not at every retry.
    const refusal = isRefusal(e);
    const repeat = refusal && this.failing.get(key) === e.message;
    if (!repeat) result.newFailures++;
    (repeat || logged ? log.debug : log.error)(`IPVS: ${describeOp(op)} failed; the other services are programmed, this one is retried`, {
      error: e.message,
    });
    this.failing.set(key, refusal ? e.message : `${e.message} (not a kernel refusal)`);
    // The cache may be wrong for this service now: forget it, the retry re-reads the kernel.
    this.actual.delete(key);
  }

  /** Re-reads the kernel and corrects every difference (drift); returns what it did. */
  resync(desired: Table): SyncResult {
    return runSync(this.resyncSteps(desired))!;
  }

  /**
   * resync() in slices. `giveWay`, asked at each step until the kernel has been read (before
   * anything changes), abandons the resync when it says so: undefined.
   */
  *resyncSteps(desired: Table, giveWay?: () => boolean): Steps<SyncResult | undefined> {
    const snapshot: Table = new Map();
    for (const [k, e] of this.actual) {
      snapshot.set(k, { service: e.service, dests: new CompactMap(e.dests) });
      yield;
      if (giveWay?.()) return undefined;
    }
    if (!(yield* this.readActualSteps(giveWay))) return undefined;
    // Only what this daemon manages counts: a foreign service added by hand is not drift, nor a
    // service whose write failed (its cache was dropped on purpose, to be re-read now).
    const drift = yield* countDrift(snapshot, this.actual, (k) => (this.ownership.has(k) || desired.has(k)) && !this.failing.has(k));
    if (drift > 0) {
      this.counters.driftCorrections += drift;
      log.warn("IPVS: the kernel table differs from what this daemon last wrote; correcting", { differences: drift });
    }
    return yield* this.syncSteps(desired);
  }

  /** One write, with kernel answers mapped to outcomes. */
  private write(op: Op): void {
    const ipvs = this.ipvs;
    try {
      writeOne(ipvs, op);
    } catch (e) {
      if (!(e instanceof IpvsError)) throw e;
      if (e.code === "EEXIST" && op.type === "add-service") return ipvs.editService(op.service);
      if (e.code === "EEXIST" && op.type === "add-dest") return ipvs.editDest(op.service, op.dest);
      if ((e.code === "ENOENT" || e.code === "ESRCH") && (op.type === "delete-service" || op.type === "delete-dest")) return;
      if (e.code === "ESRCH" && op.type === "edit-service") return ipvs.addService(op.service);
      if (e.code === "ENOENT" && op.type === "edit-dest") return ipvs.addDest(op.service, op.dest);
      throw e;
    }
  }
}

/** The kernel answered this write with an error (rather than not answering at all). */
function isRefusal(e: Error): boolean {
  return e instanceof IpvsError && e.code !== "ETIMEDOUT";
}

/** Kernel read-back → the plain comparable form (no stats, no HASHED flag). */
export function normalise(s: ObservedService): TableEntry {
  const { family, protocol, address, port, scheduler, timeout, netmask } = s;
  const flags = s.flags & ~SVC_F_HASHED;
  const dests = new CompactMap(
    s.dests.map((d) => [
      destKeyString(d),
      { address: d.address, port: d.port, method: d.method, weight: d.weight, upperThreshold: d.upperThreshold, lowerThreshold: d.lowerThreshold },
    ]),
  );
  return { service: { family, protocol, address, port, scheduler, flags, timeout, netmask }, dests };
}

function* countDrift(expected: Table, actual: Table, managed: (key: string) => boolean): Steps<number> {
  let n = 0;
  for (const key of new Set([...expected.keys(), ...actual.keys()])) {
    yield;
    if (!managed(key)) continue;
    const a = expected.get(key);
    const b = actual.get(key);
    if (!a || !b) {
      n++;
      continue;
    }
    for (const dk of new Set([...a.dests.keys(), ...b.dests.keys()])) {
      const x = a.dests.get(dk);
      const y = b.dests.get(dk);
      if (!x || !y || x.weight !== y.weight || x.method !== y.method) n++;
    }
  }
  return n;
}
