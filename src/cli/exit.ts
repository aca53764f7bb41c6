// Exiting a command. process.exit() drops what stdout and stderr still hold: under Bun, output to
// a pipe is written asynchronously, and `clusterf-ipvs -once -print | wc -l` counted 2,247 of a
// 110,003-line table (a write's callback came before the data was out; end()'s comes after).

/** How long the exit waits for a reader that does not read (a stalled pipe must not hang it). */
const FLUSH_WAIT_MS = 5000;

/** Exits with `code` once everything written to stdout and stderr is out (or FLUSH_WAIT_MS passed). */
export async function exitWhenWritten(code: number): Promise<never> {
  const ended = (s: NodeJS.WriteStream) => new Promise<void>((resolve) => (s.writableEnded ? resolve() : void s.end(() => resolve())));
  const timeout = new Promise<void>((resolve) => setTimeout(resolve, FLUSH_WAIT_MS).unref());
  await Promise.race([Promise.all([ended(process.stdout), ended(process.stderr)]), timeout]);
  process.exit(code);
}
