// Route advertisement for two-tier deployments (docs/config.md §5): clusterf-ipvs on an intermediate
// host writes routes/NAME into etcd, bound to a lease it keeps alive, so that a dead host's
// route disappears after the TTL. The key is written again whenever the lease is re-established
// (after an etcd outage, a new lease if the old one expired) and removed at a clean exit.
// Other keys can live under the same lease (setKeys: the intermediate's published backend health,
// src/health/publish.ts): written after the route, again with it, and gone with the lease.

import type { Etcd3 } from "etcd3";
import { LeaseKeeper, type LeaseEvents } from "../etcd/lease-keeper.ts";
import { Backoff } from "../util/backoff.ts";
import { parseRoute } from "../config/values.ts";
import * as log from "../util/log.ts";

export interface AdvertisedRoute {
  Prefix4?: string;
  Gateway4?: string;
  Prefix6?: string;
  Gateway6?: string;
  IpvsMethod?: string;
}

/** The JSON value of the advertised route: only the keys that are set. Throws on a bad route. */
export function advertisedRouteValue(route: AdvertisedRoute): string {
  const value: AdvertisedRoute = {};
  for (const k of ["Prefix4", "Gateway4", "Prefix6", "Gateway6", "IpvsMethod"] as const) {
    if (route[k]) value[k] = route[k];
  }
  const text = JSON.stringify(value);
  parseRoute(text); // the same rules the readers apply: refuse to advertise what they would refuse
  return text;
}

export class RouteAdvertiser {
  private lease?: LeaseKeeper;
  private stopped = false;
  private retryTimer?: ReturnType<typeof setTimeout>;
  private readonly backoff = new Backoff();
  /** True while the key is believed to be in etcd under a live lease. */
  advertised = false;
  /** The other keys wanted under the lease (setKeys), and those believed written under the current one. */
  private wanted = new Map<string, string>();
  private written = new Map<string, string>();
  /** Keys that may still be in etcd from before (an older lease, a failed write): deleted unless wanted. */
  private stale = new Set<string>();
  private flushing = false;

  constructor(
    private readonly client: Etcd3,
    readonly key: string,
    private readonly value: string,
    private readonly ttlSeconds: number,
  ) {}

  start(): void {
    this.grant();
  }

  /** Grants a new lease and writes the route under it; on failure, again after the backoff. */
  private grant(): void {
    if (this.stopped) return;
    this.lease = undefined;
    let keeper: LeaseKeeper | undefined;
    const current = () => !this.stopped && keeper !== undefined && keeper === this.lease;
    const events: LeaseEvents = {
      lost: (err) => {
        if (!current()) return;
        this.advertised = false;
        log.warn("route: lease lost; advertising again under a new lease", { key: this.key, error: err.message });
        this.retry();
      },
      failed: (err, first) => {
        if (current() && first) log.warn("route: lease keep-alive failing", { key: this.key, error: (err as Error).message });
      },
      // After an outage, write the key again: etcd may have lost it, or someone deleted it.
      recovered: () => {
        if (current()) this.put();
      },
    };
    // etcd3's own Lease counted a lease not renewed for 2 TTLs as lost; so does this one.
    LeaseKeeper.grant(this.client, { ttlSeconds: this.ttlSeconds, giveUpAfterMs: 2 * 1000 * this.ttlSeconds }, events).then(
      (granted) => {
        keeper = granted.keeper;
        if (this.stopped) return keeper.release();
        this.lease = keeper;
        this.put();
      },
      (err: Error) => {
        if (this.stopped) return;
        log.warn("route: cannot write the advertised route; retrying", { key: this.key, error: err.message });
        this.retry();
      },
    );
  }

  private put(): void {
    const lease = this.lease;
    if (!lease) return;
    lease
      .put(this.key, this.value)
      .then(() => {
        if (lease !== this.lease || this.stopped) return;
        if (!this.advertised) log.info("route: advertised", { key: this.key, value: this.value, ttl: this.ttlSeconds });
        this.advertised = true;
        this.backoff.reset();
        // Written again under this lease: what an older one held may be gone, or still there.
        for (const k of this.written.keys()) this.stale.add(k);
        this.written = new Map();
        this.flush();
      })
      .catch((err: Error) => {
        if (lease !== this.lease || this.stopped) return;
        log.warn("route: cannot write the advertised route; retrying", { key: this.key, error: err.message });
        lease.release();
        this.retry();
      });
  }

  /** Makes the other keys under the lease equal to `keys` (key → value), as soon as the lease is up. */
  setKeys(keys: Map<string, string>): void {
    this.wanted = keys;
    this.flush();
  }

  /** Writes the differences between the wanted and the written keys, one batch at a time. */
  private flush(): void {
    const lease = this.lease;
    if (this.flushing || this.stopped || !this.advertised || !lease) return;
    const puts = [...this.wanted].filter(([k, v]) => this.written.get(k) !== v);
    const deletes = [...new Set([...this.written.keys(), ...this.stale])].filter((k) => !this.wanted.has(k));
    if (puts.length === 0 && deletes.length === 0) return;
    this.flushing = true;
    const ops = [
      ...puts.map(([k, v]) => lease.put(k, v).then(() => void (lease === this.lease && this.written.set(k, v)))),
      ...deletes.map((k) => this.client.delete().key(k).then(() => void (this.written.delete(k), this.stale.delete(k)))),
    ];
    Promise.allSettled(ops).then((results) => {
      this.flushing = false;
      const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
      if (failed) {
        log.warn("route: cannot write the keys under the route's lease; retrying", { key: this.key, error: (failed.reason as Error).message });
        setTimeout(() => this.flush(), 1000);
      } else this.flush(); // changed meanwhile
    });
  }

  private retry(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.grant(), this.backoff.next());
  }

  /**
   * Removes the route: revokes the lease and deletes the key if it still holds our value. The
   * delete covers a key left under an older lease of ours that etcd kept alive across an outage
   * (etcd renews every lease when it restarts) while this process had moved on to a new one.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    const lease = this.lease;
    const withdraw = async () => {
      await lease?.revoke();
      await this.client.if(this.key, "Value", "==", this.value).then(this.client.delete().key(this.key)).commit();
    };
    try {
      await Promise.race([withdraw(), Bun.sleep(3000).then(() => Promise.reject(new Error("timed out")))]);
      log.info("route: withdrawn", { key: this.key });
    } catch (e) {
      log.warn("route: cannot withdraw the route; it expires with its lease TTL", { key: this.key, error: (e as Error).message });
      lease?.release();
    }
  }
}
