// Coalescing a burst of changes into one run.

/**
 * Runs `fn` once a burst of trigger() calls has been quiet for `quietMs`, but no later than
 * `maxDelayMs` after the burst's first call (an endless burst still gets through). One timer: a
 * trigger only notes its time (a burst can be tens of thousands of calls).
 */
export class Debounce {
  private timer: ReturnType<typeof setTimeout> | undefined;
  private firstAt = 0;
  private lastAt = 0;

  constructor(
    private readonly fn: () => void,
    private readonly quietMs: number,
    private readonly maxDelayMs: number,
  ) {}

  /** A change: the run waits for `quietMs` of quiet (capped); `urgent` runs it on the next turn. */
  trigger(urgent = false): void {
    const now = Date.now();
    if (!this.timer) this.firstAt = now;
    this.lastAt = now;
    if (urgent) {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.run(), 0);
    } else if (!this.timer) this.arm(now);
  }

  /** True while a run is scheduled. */
  get pending(): boolean {
    return this.timer !== undefined;
  }

  cancel(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private due(): number {
    return Math.min(this.lastAt + this.quietMs, this.firstAt + this.maxDelayMs);
  }

  private arm(now: number): void {
    this.timer = setTimeout(() => {
      const t = Date.now();
      if (t < this.due()) return this.arm(t); // not quiet yet
      this.run();
    }, Math.max(0, this.due() - now));
  }

  private run(): void {
    this.timer = undefined;
    this.fn();
  }
}
