// Coalescing a burst of changes into one run.

/**
 * Runs `fn` once a burst of trigger() calls has been quiet for `quietMs`, but no later than
 * `maxDelayMs` after the burst's first call (an endless burst still gets through).
 */
export class Debounce {
  private timer: ReturnType<typeof setTimeout> | undefined;
  private firstAt = 0;

  constructor(
    private readonly fn: () => void,
    private readonly quietMs: number,
    private readonly maxDelayMs: number,
  ) {}

  /** A change: the run moves to `quietMs` from now (capped); `urgent` runs it on the next turn. */
  trigger(urgent = false): void {
    const now = Date.now();
    if (!this.timer) this.firstAt = now;
    clearTimeout(this.timer);
    const wait = urgent ? 0 : Math.max(0, Math.min(this.quietMs, this.firstAt + this.maxDelayMs - now));
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.fn();
    }, wait);
  }

  /** True while a run is scheduled. */
  get pending(): boolean {
    return this.timer !== undefined;
  }

  cancel(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
