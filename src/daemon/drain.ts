// Draining (docs/config.md §4): a TCP or SCTP destination that leaves the config while it still
// has active connections stays at weight 0 until they end, drainMs at most, and is deleted then:
// the kernel drops the packets of connections whose destination is deleted. UDP destinations and
// whole services go at once. Kept apart from the reconciler, as kube-proxy keeps its graceful
// termination in graceful_termination.go: the reconciler asks this module which destinations
// drain before it diffs, then diffs the desired table with them included, once.

import { destKeyString, type Dest, type IpvsTable, type ObservedDest, type Table } from "../ipvs/types.ts";
import * as log from "../util/log.ts";
import type { Steps } from "../util/slices.ts";
import { CompactMap } from "../util/compact-map.ts";

/** A destination kept at weight 0 after it left the config, until its connections end. */
export interface DrainingDest {
  dest: Dest;
  until: number;
  /** Its drain has ended: the next sync deletes it, whatever its connections. */
  released?: boolean;
}

export class Drains {
  /** Service key → destination key → its drain. */
  readonly draining = new Map<string, Map<string, DrainingDest>>();

  /** drainMs 0: nothing drains, every destination that leaves is deleted at once. */
  constructor(
    private readonly ipvs: IpvsTable,
    private readonly drainMs: number,
  ) {}

  /**
   * Drops the drains (within the scope: every one when undefined) that the config describes
   * again, whose service left the config, or whose destination is no longer in the kernel
   * (deleted after its drain, or by hand).
   */
  forget(desired: Table, actual: Table, scope: Set<string> | undefined): void {
    for (const [key, dests] of this.draining) {
      if (scope && !scope.has(key)) continue;
      const want = desired.get(key);
      if (!want) {
        this.draining.delete(key);
        continue;
      }
      const have = actual.get(key);
      for (const dk of dests.keys()) if (want.dests.has(dk) || !have?.dests.has(dk)) dests.delete(dk);
      if (dests.size === 0) this.draining.delete(key);
    }
  }

  /** The desired table plus the draining destinations (not yet released) at weight 0. */
  include(desired: Table): Table {
    if (this.draining.size === 0) return desired;
    const t: Table = new Map(desired);
    for (const [key, dests] of this.draining) {
      const e = desired.get(key);
      if (!e) continue;
      const merged = new CompactMap(e.dests);
      for (const [dk, d] of dests) if (!d.released) merged.set(dk, d.dest);
      t.set(key, { ...e, dests: merged });
    }
    return t;
  }

  /**
   * Starts the drains of the destinations a sync of the scope would delete that still carry
   * active connections: those in the kernel (`actual`) and not in the config, of TCP/SCTP
   * services that stay, not draining already. Asks the kernel for the connection counts of
   * those services only, one small dump each.
   */
  *start(desired: Table, actual: Table, scope: Set<string> | undefined): Steps<void> {
    if (this.drainMs <= 0) return;
    for (const [key, leaving] of this.leaving(desired, actual, scope)) {
      yield; // one small dump per service
      let observed: ObservedDest[];
      try {
        observed = this.ipvs.listDests(desired.get(key)!.service, false);
      } catch {
        continue; // unknown: delete as asked (the service may be gone already)
      }
      const active = new Map(observed.map((d) => [destKeyString(d), d]));
      for (const [dk, d] of leaving) {
        const connections = active.get(dk)?.activeConnections;
        if (connections) this.drain(key, dk, d, connections);
      }
    }
  }

  /** Service key → the destinations (key → actual) that a sync would delete and that may drain. */
  private leaving(desired: Table, actual: Table, scope: Set<string> | undefined): Map<string, [string, Dest][]> {
    const out = new Map<string, [string, Dest][]>();
    for (const key of scope ?? desired.keys()) {
      const want = desired.get(key);
      const have = actual.get(key);
      if (!want || !have || want.service.protocol === "udp") continue;
      const drains = this.draining.get(key);
      // A destination draining stays (at weight 0); one whose drain is over is deleted.
      const leaving = [...have.dests].filter(([dk]) => !want.dests.has(dk) && !drains?.has(dk));
      if (leaving.length) out.set(key, leaving);
    }
    return out;
  }

  private drain(key: string, dk: string, d: Dest, active: number): void {
    const { address, port, method, upperThreshold, lowerThreshold } = d;
    let dests = this.draining.get(key);
    if (!dests) this.draining.set(key, (dests = new Map()));
    dests.set(dk, { dest: { address, port, method, weight: 0, upperThreshold, lowerThreshold }, until: Date.now() + this.drainMs });
    log.info("IPVS: a destination that left the config still has active connections; weight 0 until they end", {
      service: key,
      dest: dk,
      active,
      at_most_s: Math.round(this.drainMs / 1000),
    });
  }

  /**
   * Ends the drains whose connections are gone, or whose time is up; returns the service keys
   * to sync (their destinations are then deleted).
   */
  release(actual: Table, now = Date.now()): string[] {
    const keys: string[] = [];
    for (const [key, dests] of this.draining) {
      if ([...dests.values()].every((d) => d.released)) continue;
      const svc = actual.get(key)?.service;
      let observed = new Map<string, ObservedDest>();
      try {
        if (svc) observed = new Map(this.ipvs.listDests(svc, false).map((d) => [destKeyString(d), d]));
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
}
