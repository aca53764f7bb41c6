// stdout and stderr through Bun's native file sinks, not Node's stream objects: the first use of
// process.stderr builds the stream machinery, about 70 ms of a start in the one-CPU user-mode
// kernel of the tests (a quarter of an empty tree's whole -once run there). A sink buffers what
// a pipe cannot take yet and writes it when the pipe drains (the event loop goes on, as with
// process.stderr); flushOutput() waits until everything is out, before the process exits.

import type { FileSink } from "bun";

let err: FileSink | undefined;
let out: FileSink | undefined;
/** Tests: where stderr's text goes instead (redirectStderr). */
let redirected: ((text: string) => void) | null = null;

function write(sink: () => FileSink, text: string): void {
  try {
    const s = sink();
    s.write(text);
    const flushed = s.flush();
    if (typeof flushed !== "number") flushed.catch(() => {}); // written when the pipe drains
  } catch {
    // stderr closed, or its reader gone: nothing to tell anyone, and no reason to stop
  }
}

export function writeStderr(text: string): void {
  if (redirected) return redirected(text);
  write(() => (err ??= Bun.stderr.writer()), text);
}

export function writeStdout(text: string): void {
  write(() => (out ??= Bun.stdout.writer()), text);
}

/** Resolves once what was written to stdout and stderr is out, or after `timeoutMs` (a reader that does not read). */
export async function flushOutput(timeoutMs: number): Promise<void> {
  const ended = [err, out].map((s) => Promise.resolve(s?.end()).catch(() => {}));
  err = out = undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)));
  await Promise.race([Promise.all(ended), timeout]);
  clearTimeout(timer);
}

/** Tests: stderr's text goes to `to` until the returned function is called. */
export function redirectStderr(to: (text: string) => void): () => void {
  redirected = to;
  return () => {
    if (redirected === to) redirected = null;
  };
}
