// The reconciler: keeps a cache of the actual IPVS table, turns desired-vs-actual differences into
// writes, and maps kernel answers to outcomes (EEXIST on add → edit, ENOENT/ESRCH on delete →
// already gone). It only removes services that it created or that the config describes; which
// ones it created is remembered under -state-dir so that it survives a restart.

import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { applyOp, describeOp, diffTables } from "../ipvs/diff.ts";
import {
  IpvsError,
  SVC_F_HASHED,
  destKeyString,
  serviceKeyString,
  type Dest,
  type IpvsTable,
  type ObservedDest,
  type ObservedService,
  type Op,
  type Table,
  type TableEntry,
  writeOne,
} from "../ipvs/types.ts";
import * as log from "../util/log.ts";
import { chunks, runSync, type Steps } from "../util/slices.ts";

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
}

/** A destination kept at weight 0 after it left the config, until its connections end. */
export interface DrainingDest {
  dest: Dest;
  until: number;
  /** Its drain has ended: the next sync deletes it, whatever its connections. */
  released?: boolean;
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

const OWNED_FILE = "ipvs-owned.json";
/** Services diffed, and writes sent, between two chances to pause (see syncSteps). */
const DIFF_SLICE = 64;
const WRITE_SLICE = 256;

export class Reconciler {
  /** What we believe the kernel holds (every service, ours or not). */
  readonly actual: Table = new Map();
  readonly owned = new Set<string>();
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
  /** Destinations kept at weight 0 after they left the config (service key → dest key → …). */
  readonly draining = new Map<string, Map<string, DrainingDest>>();
  private ownedDirty = false;

  constructor(
    readonly ipvs: IpvsTable,
    private readonly opts: ReconcilerOptions = {},
  ) {
    this.loadOwned();
  }

  /** Replaces the cache with a fresh read of the kernel table. */
  readActual(): void {
    runSync(this.readActualSteps());
  }

  /** readActual() in slices: one service's destinations at a time, the cache replaced at the end. */
  *readActualSteps(): Steps<void> {
    const fresh: Table = new Map();
    for (const s of yield* listSteps(this.ipvs)) {
      const entry = normalise(s);
      fresh.set(serviceKeyString(entry.service), entry);
      yield;
    }
    this.actual.clear();
    for (const [k, e] of fresh) this.actual.set(k, e);
  }

  flush(): void {
    if (this.opts.noop) {
      log.info("IPVS: would flush the table (noop)");
      return;
    }
    this.ipvs.flush();
    this.actual.clear();
    this.owned.clear();
    this.ownedDirty = true;
    this.saveOwned();
  }

  /** Brings the given keys (all when omitted) of the actual table to the desired state. */
  sync(desired: Table, keys?: Iterable<string>): SyncResult {
    return runSync(this.syncSteps(desired, keys));
  }

  /**
   * sync() in slices (the daemon runs it with runSliced): the diff a few services at a time, the
   * writes WRITE_SLICE at a time. The caller must not change `desired` or start another sync
   * until it is done.
   */
  *syncSteps(desired: Table, keys?: Iterable<string>): Steps<SyncResult> {
    const scope = keys ? new Set(keys) : undefined;
    const owned = (k: string) => this.owned.has(k) || desired.has(k);
    this.forgetDraining(desired, scope);
    let target = this.withDraining(desired);
    let ops = yield* this.diff(target, owned, scope);
    if (yield* this.startDraining(ops, target)) {
      target = this.withDraining(desired);
      ops = yield* this.diff(target, owned, scope);
    }
    const result: SyncResult = { ops: 0, errors: 0, failed: new Set(), newFailures: 0 };
    if (this.opts.noop) {
      for (const op of ops) log.info(`IPVS: ${describeOp(op)} (noop)`);
      result.ops = ops.length;
    } else {
      // Ownership is saved before the services are created: a daemon killed in the middle of a
      // sync must not leave services that its successor takes for foreign ones.
      for (const slice of chunks(ops, WRITE_SLICE)) {
        for (const op of slice) if (op.type === "add-service") this.markOwned(op, serviceKeyString(op.service));
        yield;
      }
      this.saveOwned();
      // The fast path sends every write at once (many to a netlink message); a write that fails
      // there is tried again alone, in order, through the answer mapping (EEXIST on add → edit,
      // ENOENT on delete → done…). A batch that got no answer at all is not tried again: the
      // retry re-reads the kernel. Per write: undefined = not sent yet (a single write goes
      // straight to the mapping), null = done, an error = what the batch got for it.
      // Sent WRITE_SLICE at a time, so that the event loop gets a turn between slices; the rest
      // of a failed service is not sent: it waits for the retry.
      const seen = new Set<Error>();
      const debug = log.debugEnabled();
      for (const chunk of chunks(ops, WRITE_SLICE)) {
        const slice = chunk.filter((op) => !result.failed.has(serviceKeyString(op.service)));
        const batched: (Error | null | undefined)[] = ops.length > 1 ? this.ipvs.writeBatch(slice) : [undefined];
        slice.forEach((op, i) => {
          const key = serviceKeyString(op.service);
          if (result.failed.has(key)) return; // the rest of a failed service waits for the retry
          const first = batched[i];
          try {
            if (first instanceof Error && !isRefusal(first)) throw first;
            if (first !== null) this.write(op);
            applyOp(this.actual, op);
            this.counters.writes[op.type]++;
            result.ops++;
            this.markOwned(op, key);
            if (debug) log.debug(`IPVS: ${describeOp(op)}`);
          } catch (e) {
            // A batch without an answer fails every service in it: one error line, not one each.
            this.failed(op, key, e as Error, result, seen.has(e as Error));
            seen.add(e as Error);
          }
        });
        yield;
      }
    }
    for (const key of [...this.failing.keys()]) {
      if (result.failed.has(key) || (scope && !scope.has(key))) continue;
      this.failing.delete(key);
      if (desired.has(key)) log.info("IPVS: service programmed after earlier failures", { service: key });
    }
    this.forgetDraining(desired, scope); // released drains whose destination is now deleted
    this.saveOwned();
    return result;
  }

  // ---- removed destinations with active connections (drain instead of delete)

  /**
   * Drops draining entries that the config describes again, whose service left the config, or
   * whose destination is no longer in the kernel (deleted after its drain, or by hand).
   */
  private forgetDraining(desired: Table, scope: Set<string> | undefined): void {
    for (const [key, dests] of this.draining) {
      if (scope && !scope.has(key)) continue;
      const want = desired.get(key);
      if (!want) {
        this.draining.delete(key);
        continue;
      }
      const actual = this.actual.get(key);
      for (const dk of dests.keys()) if (want.dests.has(dk) || !actual?.dests.has(dk)) dests.delete(dk);
      if (dests.size === 0) this.draining.delete(key);
    }
  }

  /** The desired table plus the draining destinations (not yet released) at weight 0. */
  private withDraining(desired: Table): Table {
    if (this.draining.size === 0) return desired;
    const t: Table = new Map(desired);
    for (const [key, dests] of this.draining) {
      const e = desired.get(key);
      if (!e) continue;
      const merged = new Map(e.dests);
      for (const [dk, d] of dests) if (!d.released) merged.set(dk, d.dest);
      t.set(key, { ...e, dests: merged });
    }
    return t;
  }

  /** diffTables over the scope (every key of both tables when undefined), a few services at a time. */
  private *diff(target: Table, owned: (key: string) => boolean, scope: Set<string> | undefined): Steps<Op[]> {
    const ops: Op[] = [];
    for (const keys of chunks(scope ?? new Set([...target.keys(), ...this.actual.keys()]), DIFF_SLICE)) {
      for (const op of diffTables(target, this.actual, owned, keys)) ops.push(op);
      yield;
    }
    return ops;
  }

  /**
   * Turns the deletes of TCP/SCTP destinations that still carry active connections into drains
   * (weight 0, deleted later by releaseDrained()). Asks the kernel for the connection counts of
   * those services only. True when anything started draining.
   */
  private *startDraining(ops: Op[], target: Table): Steps<boolean> {
    const drainMs = this.opts.drainMs ?? 0;
    if (drainMs <= 0 || this.opts.noop) return false;
    const byService = new Map<string, Extract<Op, { type: "delete-dest" }>[]>();
    for (const op of ops) {
      if (op.type !== "delete-dest" || op.service.protocol === "udp") continue;
      const key = serviceKeyString(op.service);
      if (!target.has(key)) continue;
      const list = byService.get(key);
      if (list) list.push(op);
      else byService.set(key, [op]);
    }
    let started = false;
    for (const [key, dels] of byService) {
      yield; // one small dump per service
      let observed: ObservedDest[];
      try {
        observed = this.ipvs.listDests(dels[0]!.service);
      } catch {
        continue; // unknown: delete as asked (the service may be gone already)
      }
      const active = new Map(observed.map((d) => [destKeyString(d), d]));
      for (const op of dels) {
        const dk = destKeyString(op.dest);
        if (this.draining.get(key)?.get(dk)?.released) continue; // its drain is over: delete
        const o = active.get(dk);
        if (!o || !o.activeConnections) continue;
        const { address, port, method, upperThreshold, lowerThreshold } = this.actual.get(key)?.dests.get(dk) ?? o;
        let dests = this.draining.get(key);
        if (!dests) this.draining.set(key, (dests = new Map()));
        dests.set(dk, { dest: { address, port, method, weight: 0, upperThreshold, lowerThreshold }, until: Date.now() + drainMs });
        started = true;
        log.info("IPVS: a destination that left the config still has active connections; weight 0 until they end", {
          service: key,
          dest: dk,
          active: o.activeConnections,
          at_most_s: Math.round(drainMs / 1000),
        });
      }
    }
    return started;
  }

  /**
   * Ends the drains whose connections are gone, or whose time is up; returns the service keys
   * to sync (their destinations are then deleted).
   */
  releaseDrained(now = Date.now()): string[] {
    const keys: string[] = [];
    for (const [key, dests] of this.draining) {
      if ([...dests.values()].every((d) => d.released)) continue;
      const svc = this.actual.get(key)?.service;
      let observed = new Map<string, ObservedDest>();
      try {
        if (svc) observed = new Map(this.ipvs.listDests(svc).map((d) => [destKeyString(d), d]));
      } catch {
        /* the service is gone: nothing left to drain */
      }
      let released = false;
      for (const [dk, d] of dests) {
        if (d.released) continue;
        const active = observed.get(dk)?.activeConnections ?? 0;
        if (active > 0 && now < d.until) continue;
        d.released = true;
        released = true;
        log.info(active > 0 ? "IPVS: drain time is up; deleting the destination" : "IPVS: drained destination has no connections left; deleting it", {
          service: key,
          dest: dk,
          active,
        });
      }
      if (released) keys.push(key);
    }
    return keys;
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
    return runSync(this.resyncSteps(desired));
  }

  /** resync() in slices. */
  *resyncSteps(desired: Table): Steps<SyncResult> {
    const snapshot: Table = new Map();
    for (const [k, e] of this.actual) {
      snapshot.set(k, { service: e.service, dests: new Map(e.dests) });
      yield;
    }
    yield* this.readActualSteps();
    // Only what this daemon manages counts: a foreign service added by hand is not drift, nor a
    // service whose write failed (its cache was dropped on purpose, to be re-read now).
    const drift = yield* countDrift(snapshot, this.actual, (k) => (this.owned.has(k) || desired.has(k)) && !this.failing.has(k));
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

  private markOwned(op: Op, key: string): void {
    if (op.type === "delete-service") {
      if (this.owned.delete(key)) this.ownedDirty = true;
    } else if (!this.owned.has(key)) {
      this.owned.add(key);
      this.ownedDirty = true;
    }
  }

  private loadOwned(): void {
    if (!this.opts.stateDir) return;
    const file = join(this.opts.stateDir, OWNED_FILE);
    if (!existsSync(file)) return;
    try {
      const data = JSON.parse(readFileSync(file, "utf8")) as { services?: unknown };
      if (Array.isArray(data.services)) for (const k of data.services) if (typeof k === "string") this.owned.add(k);
    } catch (e) {
      log.warn("state: cannot read the list of services this daemon created; starting without it", {
        file,
        error: (e as Error).message,
      });
    }
  }

  private saveOwned(): void {
    if (!this.ownedDirty || !this.opts.stateDir || this.opts.noop) return;
    const file = join(this.opts.stateDir, OWNED_FILE);
    try {
      mkdirSync(this.opts.stateDir, { recursive: true });
      writeFileSync(file + ".tmp", JSON.stringify({ services: [...this.owned].sort() }) + "\n");
      renameSync(file + ".tmp", file);
      this.ownedDirty = false;
    } catch (e) {
      log.warn("state: cannot save the list of services this daemon created", { file, error: (e as Error).message });
      this.ownedDirty = false; // warn once per change, not on every sync
    }
  }
}

/**
 * IpvsTable.list() in slices where the table reads each service's destinations with a request of
 * its own (the kernel): one service at a time, for runSliced (the table's readers: resyncs, and
 * a /metrics scrape could too).
 */
export function* listSteps(ipvs: IpvsTable): Steps<ObservedService[]> {
  if (!ipvs.listServices) return ipvs.list();
  const out: ObservedService[] = [];
  for (const s of ipvs.listServices()) {
    yield;
    try {
      s.dests.push(...ipvs.listDests(s));
    } catch (e) {
      // Deleted (by hand) since the list: gone, like a service the list did not show.
      if (e instanceof IpvsError && (e.code === "ESRCH" || e.code === "ENOENT")) continue;
      throw e;
    }
    out.push(s);
  }
  return out;
}

/** The kernel answered this write with an error (rather than not answering at all). */
function isRefusal(e: Error): boolean {
  return e instanceof IpvsError && e.code !== "ETIMEDOUT";
}

/** Kernel read-back → the plain comparable form (no stats, no HASHED flag). */
export function normalise(s: ObservedService): TableEntry {
  const { family, protocol, address, port, scheduler, timeout, netmask } = s;
  const flags = s.flags & ~SVC_F_HASHED;
  const dests = new Map(
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
