// Long work in slices (docs/config.md §4: the event loop is never blocked for more than 100 ms).
// The work is written once, as a generator that yields wherever it may pause; runSync runs it to
// the end at once (tests, -once, the benchmark's core), runSliced gives the event loop a turn each
// time a slice has run SLICE_MS, so that timers, sockets and HTTP requests go on meanwhile.

export type Steps<T> = Generator<void, T, void>;

/** Work done between two turns of the event loop: well under the 100 ms goal on a slow machine. */
export const SLICE_MS = 15;

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
export async function runSliced<T>(steps: Steps<T>, stop?: () => boolean, sliceMs = SLICE_MS): Promise<T | undefined> {
  let start = performance.now();
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
    if (performance.now() - start >= sliceMs) {
      await turn();
      if (stop?.()) {
        steps.return(undefined as T);
        return undefined;
      }
      start = performance.now();
    }
  }
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
