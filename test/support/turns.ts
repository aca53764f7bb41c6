// Counting the turns of the event loop while code under test runs: a callback that re-arms
// itself with setImmediate runs once per turn.

export function countTurns(): { readonly count: number; stop(): void } {
  let count = 0;
  let running = true;
  const tick = () => {
    count++;
    if (running) setImmediate(tick);
  };
  setImmediate(tick);
  return {
    get count() {
      return count;
    },
    stop() {
      running = false;
    },
  };
}
