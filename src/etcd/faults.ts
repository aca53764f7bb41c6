// etcd3 fault policies (the pool runs every call through a host policy and a global one):
// pass-through for callers that retry on their own, and endpoint choice by recent failures for
// the config source's watch and reads.

import { GRPCDeadlineExceededError, castGrpcError, isRecoverableError, type IOptions } from "etcd3";

/**
 * etcd3 fault handling that passes every call straight through: for callers that retry on their
 * own (the lease keepers), so that etcd3's circuit breaker never refuses a call after an outage.
 * execute() is async: the pool reports a failed stream by running a throwing function through it
 * and catching the returned promise; a synchronous throw would escape as an uncaught error.
 */
export function passThroughFaultHandling(): Partial<IOptions> {
  const passThrough = {
    execute: async <T>(fn: (ctx: { signal: AbortSignal; attempt: number }) => Promise<T> | T) => fn({ signal: new AbortController().signal, attempt: 0 }),
  };
  return { faultHandling: { host: () => passThrough as never, global: passThrough as never } };
}

/** Thrown by a host policy so the pool moves on to another endpoint. */
export class SkipHost extends Error {}

/**
 * Endpoint choice: the pool picks hosts at random; a host that failed recently is skipped
 * while another one has not failed recently (so a dead member is not retried in a loop while
 * the others work, and a single endpoint is always tried, unlike the library's default circuit
 * breaker that would refuse it for 5 s).
 */
export class HostHealth {
  private failedAt = new Map<string, number>();
  constructor(
    private hosts: string[],
    private skipMs: number,
  ) {}
  failed(host: string): void {
    this.failedAt.set(host, Date.now());
  }
  ok(host: string): void {
    this.failedAt.delete(host);
  }
  private recent(host: string): boolean {
    const t = this.failedAt.get(host);
    return t !== undefined && Date.now() - t < this.skipMs;
  }
  policy(host: string) {
    const self = this;
    const key = host.replace(/^https?:\/\//, "");
    // The pool only calls execute() (cockatiel's IPolicy shape otherwise).
    return {
      async execute<T>(fn: (ctx: { signal: AbortSignal; attempt: number }) => Promise<T> | T): Promise<T> {
        if (self.recent(key) && self.hosts.some((h) => !self.recent(h))) throw new SkipHost(`skipping ${key}`);
        try {
          const r = await fn({ signal: new AbortController().signal, attempt: 0 });
          return r;
        } catch (e) {
          if (e instanceof Error) {
            const c = castGrpcError(e);
            // Unreachable, or frozen (a request that ran into its deadline): try others first.
            if (isRecoverableError(c) || c instanceof GRPCDeadlineExceededError) self.failed(key);
          }
          throw e;
        }
      },
    };
  }
}
