// Route advertisement for two-tier deployments (docs/config.md §5): clusterf-ipvs on an intermediate
// host writes routes/NAME into etcd, bound to a lease it keeps alive, so that a dead host's
// route disappears after the TTL. The key is written again whenever the lease is re-established
// (after an etcd outage, a new lease if the old one expired) and removed at a clean exit.

import type { Etcd3, Lease } from "etcd3";
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
  private lease?: Lease;
  private stopped = false;
  private retryTimer?: ReturnType<typeof setTimeout>;
  private backoffMs = 250;
  private failing = false;
  /** True while the key is believed to be in etcd under a live lease. */
  advertised = false;

  constructor(
    private readonly client: Etcd3,
    readonly key: string,
    private readonly value: string,
    private readonly ttlSeconds: number,
  ) {}

  start(): void {
    this.grant();
  }

  private grant(): void {
    if (this.stopped) return;
    const lease = this.client.lease(this.ttlSeconds);
    this.lease = lease;
    lease.on("lost", (err) => {
      if (this.stopped || lease !== this.lease) return;
      this.advertised = false;
      log.warn("route: lease lost; advertising again under a new lease", { key: this.key, error: err.message });
      this.retry();
    });
    lease.on("keepaliveFailed", (err) => {
      if (this.stopped || this.failing) return;
      this.failing = true;
      log.warn("route: lease keep-alive failing", { key: this.key, error: err.message });
    });
    lease.on("keepaliveEstablished", () => {
      // After an outage, write the key again: etcd may have lost it, or someone deleted it.
      if (this.failing) {
        this.failing = false;
        this.put(lease);
      }
    });
    this.put(lease);
  }

  private put(lease: Lease): void {
    lease
      .put(this.key)
      .value(this.value)
      .then(() => {
        if (lease !== this.lease || this.stopped) return;
        if (!this.advertised) log.info("route: advertised", { key: this.key, value: this.value, ttl: this.ttlSeconds });
        this.advertised = true;
        this.backoffMs = 250;
      })
      .catch((err: Error) => {
        if (lease !== this.lease || this.stopped) return;
        log.warn("route: cannot write the advertised route; retrying", { key: this.key, error: err.message });
        lease.release();
        this.retry();
      });
  }

  private retry(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.grant(), this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, 5000);
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
