// One etcd lease kept alive: the route advertiser's (src/daemon/route-advertiser.ts, with the
// health records under it) and clusterf-docker's publisher's (src/docker/publisher.ts).
//
// Keep-alives go out every TTL/3 (as the Go client does) on one keep-alive stream, opened again
// at the next tick when it breaks. A stream that has not answered for 2/3 of the TTL (plus slack)
// is stuck (a frozen server) and dropped. An answer with TTL 0 means etcd no longer has the lease:
// lost. With `giveUpAfterMs`, a lease not renewed for that long counts as lost on this side too
// (etcd renews every lease when it restarts, so after a long outage the old one may come back,
// while its owner has already moved on).

// Types only: clusterf-ipvs loads the etcd3 library only when it talks to etcd.
import type { Etcd3, IDuplexStream } from "etcd3";

export interface LeaseKeeperOptions {
  /** The lease's TTL in seconds (≥ 1): the keep-alive cadence is a third of it. */
  ttlSeconds: number;
  /** Count the lease as lost when no keep-alive has been answered for this long (ms); undefined: only when etcd says so. */
  giveUpAfterMs?: number;
}

export interface LeaseEvents {
  /** A keep-alive failed (a broken stream, no answer in time); `first`: the first since the last answer. */
  failed?(error: unknown, first: boolean): void;
  /** The first keep-alive answer after failures. */
  recovered?(): void;
  /** The lease is gone (etcd says so, or giveUpAfterMs passed): keep-alives have stopped. */
  lost?(reason: Error): void;
}

type KeepAliveStream = IDuplexStream<{ ID: string }, { ID: string; TTL: string }>;

/** A deadline option for one request. */
export const deadline = (ms: number): { deadline: Date } => ({ deadline: new Date(Date.now() + ms) });

/** Is this etcd's "requested lease not found" (expired, revoked, never granted)? */
export function isLeaseNotFound(e: unknown): boolean {
  return e instanceof Error && /lease not found/i.test(e.message);
}

export class LeaseKeeper {
  private timer: ReturnType<typeof setInterval> | undefined;
  private stream: KeepAliveStream | undefined;
  private opening = false;
  private lastOk = Date.now();
  private failingNow = false;
  private stopped = false;

  private constructor(
    private readonly client: Etcd3,
    /** The lease id (decimal text: ids are 64-bit). */
    readonly id: string,
    private readonly opts: LeaseKeeperOptions,
    private readonly events: LeaseEvents,
  ) {
    this.timer = setInterval(() => this.tick(), Math.max(200, (opts.ttlSeconds * 1000) / 3));
    this.tick(); // at once: a taken-over lease's remaining TTL may be short
  }

  /** Grants a new lease and keeps it alive. Rejects when etcd refuses or does not answer in time. */
  static async grant(client: Etcd3, opts: LeaseKeeperOptions, events: LeaseEvents): Promise<{ keeper: LeaseKeeper; clusterId: string }> {
    const g = await client.leaseClient.leaseGrant({ TTL: opts.ttlSeconds }, deadline(5000));
    if (g.error) throw new Error(`lease grant: ${g.error}`);
    return { keeper: new LeaseKeeper(client, g.ID, opts, events), clusterId: g.header.cluster_id };
  }

  /** Keeps an existing lease alive (one a previous run granted and etcd still has). */
  static adopt(client: Etcd3, id: string, opts: LeaseKeeperOptions, events: LeaseEvents): LeaseKeeper {
    return new LeaseKeeper(client, id, opts, events);
  }

  /** True while keep-alives are failing (the lease's keys may be about to expire). */
  get failing(): boolean {
    return this.failingNow;
  }

  /** Writes `key` under the lease; a refusal because the lease is gone counts as its loss. */
  async put(key: string, value: string): Promise<void> {
    try {
      await this.client.put(key).value(value).lease(this.id).exec();
    } catch (e) {
      if (isLeaseNotFound(e)) this.lose(e as Error);
      throw e;
    }
  }

  /** Stops the keep-alives: the lease expires with its TTL (or a later run takes it over). */
  release(): void {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    this.dropStream();
  }

  /** Releases the lease and revokes it: etcd deletes its keys at once. False: etcd had no such lease. */
  async revoke(timeoutMs = 5000): Promise<boolean> {
    this.release();
    try {
      await this.client.leaseClient.leaseRevoke({ ID: this.id }, deadline(timeoutMs));
      return true;
    } catch (e) {
      if (isLeaseNotFound(e)) return false;
      throw e;
    }
  }

  private lose(reason: Error): void {
    if (this.stopped) return;
    this.release();
    this.events.lost?.(reason);
  }

  private tick(): void {
    if (this.stopped) return;
    const silentMs = Date.now() - this.lastOk;
    if (this.opts.giveUpAfterMs !== undefined && silentMs > this.opts.giveUpAfterMs) {
      return this.lose(new Error(`no keep-alive answer for ${silentMs} ms: the lease has expired`));
    }
    // A stream that has not answered for a while is stuck (frozen server): drop it.
    if (this.stream && silentMs > (this.opts.ttlSeconds * 1000 * 2) / 3 + 500) {
      this.fail(new Error(`no keep-alive answer for ${silentMs} ms`));
    }
    if (this.stream) {
      try {
        this.stream.write({ ID: this.id });
      } catch (e) {
        this.fail(e);
      }
      return;
    }
    if (!this.opening) this.open();
  }

  /** Opens a keep-alive stream and sends the first keep-alive on it. */
  private open(): void {
    this.opening = true;
    this.client.leaseClient
      .leaseKeepAlive()
      .then((stream) => {
        this.opening = false;
        if (this.stopped) {
          stream.end();
          return;
        }
        this.stream = stream as never;
        stream.on("data", (res: { TTL: string }) => {
          if (stream === (this.stream as unknown)) this.answered(Number(res.TTL));
        });
        stream.on("error", (e: Error) => {
          if (stream === (this.stream as unknown)) this.fail(e);
        });
        stream.on("end", () => {
          if (stream === (this.stream as unknown)) this.fail(new Error("keep-alive stream ended"));
        });
        stream.write({ ID: this.id });
      })
      .catch((e) => {
        this.opening = false;
        this.fail(e);
      });
  }

  private answered(ttl: number): void {
    if (ttl <= 0) return this.lose(new Error("etcd says the lease has expired"));
    this.lastOk = Date.now();
    if (this.failingNow) {
      this.failingNow = false;
      this.events.recovered?.();
    }
  }

  private fail(e: unknown): void {
    this.dropStream();
    if (this.stopped) return;
    const first = !this.failingNow;
    this.failingNow = true;
    this.events.failed?.(e, first);
  }

  private dropStream(): void {
    const s = this.stream;
    this.stream = undefined;
    try {
      s?.end();
    } catch {
      /* already broken */
    }
  }
}
