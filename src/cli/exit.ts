// Exiting a command. process.exit() drops what stdout and stderr still hold: output to a pipe is
// written as the pipe drains, and `clusterf-ipvs -once -print | wc -l` once counted 2,247 of a
// 110,003-line table. What the commands write goes through src/util/stdio.ts, which waits for it
// (only -help and a bad flag, written before anything else, go to process.stdout and stderr and
// exit at once: flags.ts).

import { flushOutput } from "../util/stdio.ts";

/** How long the exit waits for a reader that does not read (a stalled pipe must not hang it). */
const FLUSH_WAIT_MS = 5000;

/** Exits with `code` once everything written to stdout and stderr is out (or FLUSH_WAIT_MS passed). */
export async function exitWhenWritten(code: number): Promise<never> {
  await flushOutput(FLUSH_WAIT_MS);
  process.exit(code);
}
