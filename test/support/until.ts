// Polling for a condition in tests: the one helper every test file waits with.

/** A value `until` accepts as "reached". */
type Reached<T> = Exclude<T, false | undefined | null | 0 | "">;

/**
 * Calls `get` every `everyMs` until it returns a truthy value (or a promise of one), and resolves
 * to that value; throws after `timeoutMs`, naming `what` (a function: evaluated only then, e.g. to
 * add a daemon's stderr). Poll slowly (100 ms) when `get` runs a command.
 */
export async function until<T>(
  get: () => T | Promise<T>,
  timeoutMs = 3000,
  what: string | (() => string) = "the condition",
  everyMs = 10,
): Promise<Reached<T>> {
  const end = performance.now() + timeoutMs;
  for (;;) {
    const v = await get();
    if (v) return v as Reached<T>;
    if (performance.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === "function" ? what() : what}`);
    await Bun.sleep(everyMs);
  }
}

/** A `what` for until() that adds the tail of a daemon's stderr to the message. */
export const withStderr = (what: string, d: { stderr: string }, tail = 3000) => () => `${what}; stderr:\n${d.stderr.slice(-tail)}`;
