// Retry loops: doubling delays, and a sleep that a new reason to act (a kick, a resync, a stop)
// cuts short.

/** Retry delays that double from `initialMs` up to `maxMs`; reset() after a success. */
export class Backoff {
  private delay: number;

  constructor(
    private readonly initialMs = 250,
    private readonly maxMs = 5000,
  ) {
    this.delay = initialMs;
  }

  /** The delay the next retry waits. */
  get ms(): number {
    return this.delay;
  }

  /** The delay to wait now; the one after it is twice as long (up to the cap). */
  next(): number {
    const ms = this.delay;
    this.delay = Math.min(this.delay * 2, this.maxMs);
    return ms;
  }

  reset(): void {
    this.delay = this.initialMs;
  }
}

/** A sleep that wake() ends early: one sleeper at a time. */
export class Sleeper {
  private waker: (() => void) | undefined;

  /** Resolves after `ms` (never, when omitted) or at the next wake(), whichever comes first. */
  sleep(ms?: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        if (this.waker === done) this.waker = undefined;
        resolve();
      };
      const timer = ms === undefined ? undefined : setTimeout(done, ms);
      this.waker = done;
    });
  }

  /** Ends the current sleep, if any. */
  wake(): void {
    this.waker?.();
  }
}
