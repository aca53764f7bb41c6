// Long work in slices (docs/config.md §4: the event loop is never blocked for more than 100 ms).
// The work is written once, as a generator that yields wherever it may pause; runSync runs it to
// the end at once (tests, -once, the benchmark's core), runSliced gives the event loop a turn each
// time a slice has run SLICE_MS, so that timers, sockets and HTTP requests go on meanwhile.

export type Steps<T> = Generator<void, T, void>;

/** Work done between two turns of the event loop: well under the 100 ms goal on a slow machine. */
export const SLICE_MS = 15;

/** At most this many Pacer.overdue() calls in a row go without a clock read (Pacer says why). */
const MAX_SKIP = 16;

/** Runs the steps to the end without pausing. */
export function runSync<T>(steps: Steps<T>): T {
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/**
 * Runs the steps, giving the event loop a turn whenever a slice has run sliceMs. When `stop`
 * says so at a turn, the steps are abandoned there (their finally blocks run): undefined.
 */
export function runSliced<T>(steps: Steps<T>, stop?: () => boolean, sliceMs = SLICE_MS): Promise<T | undefined> {
  return new Pacer(sliceMs).run(steps, stop);
}

/** One turn of the event loop: pending timers and I/O run before it resolves. */
export function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** The items in arrays of at most n (the last one shorter). */
export function* chunks<T>(items: Iterable<T>, n: number): Generator<T[], void, void> {
  let chunk: T[] = [];
  for (const item of items) {
    chunk.push(item);
    if (chunk.length >= n) {
      yield chunk;
      chunk = [];
    }
  }
  if (chunk.length) yield chunk;
}

/**
 * The same pacing for async work that cannot be one generator (it awaits I/O in between): call
 * `due()` often; it gives the event loop a turn once a slice has run SLICE_MS. One pacer can be
 * shared by several pieces of work in a row, so that the slice runs on across them.
 */
export class Pacer {
  private start = performance.now();
  /** overdue() calls in this slice, and how many of the next ones return false without a clock read. */
  private calls = 0;
  private skip = 0;
  private lastSkip = 0;

  constructor(private readonly sliceMs = SLICE_MS) {}

  /**
   * The slice has run out. The clock is not read at every call: where reading it is a system call
   * (no vDSO, as in a user-mode kernel: 20-35 µs a read), one read per file was a tenth of reading
   * a large tree. While the steps so far in this slice are short (under a hundredth of the slice
   * each: a file read is 50-100 µs in that kernel), the next read comes after up to MAX_SKIP calls:
   * a quarter of the steps that still fit, at most twice (plus one) as many as the last time, so
   * the slice runs over by at most MAX_SKIP short steps. Slower steps read the clock at every call.
   */
  overdue(): boolean {
    this.calls++;
    if (this.skip > 0) {
      this.skip--;
      return false;
    }
    const elapsed = performance.now() - this.start;
    if (elapsed >= this.sliceMs) return true;
    const perStep = elapsed / this.calls;
    const fit = perStep > 0 ? (this.sliceMs - elapsed) / perStep : MAX_SKIP * 4;
    this.skip = this.lastSkip = perStep < this.sliceMs / 100 ? Math.min(Math.floor(fit / 4), 2 * this.lastSkip + 1, MAX_SKIP) : 0;
    return false;
  }

  /** A turn of the event loop if the slice has run out. */
  async due(): Promise<void> {
    if (this.overdue()) await this.pause();
  }

  /**
   * Runs generator steps, pausing as due() does (overdue() is asked after each step, nothing is
   * awaited unless the slice has run out). When `stop` says so at a pause, the steps are abandoned
   * there (their finally blocks run): undefined.
   */
  run<T>(steps: Steps<T>): Promise<T>;
  run<T>(steps: Steps<T>, stop?: () => boolean): Promise<T | undefined>;
  async run<T>(steps: Steps<T>, stop?: () => boolean): Promise<T | undefined> {
    for (;;) {
      const r = steps.next();
      if (r.done) return r.value;
      if (!this.overdue()) continue;
      await this.pause();
      if (stop?.()) {
        steps.return(undefined as T);
        return undefined;
      }
    }
  }

  private async pause(): Promise<void> {
    await turn();
    this.start = performance.now();
    this.calls = this.skip = this.lastSkip = 0;
  }
}

/**
 * The strings in code-unit order (as Array.prototype.sort without a comparator), a merge sort that
 * yields every few thousand steps: sorting 55,000 keys at once took 19 ms on a fast machine.
 */
export function* sortSteps(items: readonly string[]): Steps<string[]> {
  let a = [...items];
  const RUN = 1024;
  for (let i = 0; i < a.length; i += RUN) {
    const run = a.slice(i, i + RUN).sort();
    for (let j = 0; j < run.length; j++) a[i + j] = run[j]!;
    yield;
  }
  let b: string[] = new Array(a.length);
  for (let width = RUN; width < a.length; width *= 2) {
    let steps = 0;
    for (let lo = 0; lo < a.length; lo += 2 * width) {
      const mid = Math.min(lo + width, a.length);
      const hi = Math.min(lo + 2 * width, a.length);
      let i = lo;
      let j = mid;
      for (let k = lo; k < hi; k++) {
        b[k] = i < mid && (j >= hi || a[i]! <= a[j]!) ? a[i++]! : a[j++]!;
        if (++steps === 4096) {
          steps = 0;
          yield;
        }
      }
    }
    [a, b] = [b, a];
  }
  return a;
}
