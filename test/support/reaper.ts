import { closeSync, openSync } from "node:fs";
// Test-started servers (etcd, dockerd) are killed when the test process exits, whatever happened.
const live = new Set<number>();
let hooked = false;

/** Kills `proc` at process exit unless it has exited by then. */
export function killAtExit(proc: { pid: number; exited: Promise<unknown> }): void {
  if (!hooked) {
    hooked = true;
    process.on("exit", () => {
      for (const pid of live) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          /* already gone */
        }
      }
    });
  }
  live.add(proc.pid);
  proc.exited.then(() => live.delete(proc.pid));
}

/**
 * Starts a server for a test: `setpriv --pdeathsig KILL` so that it dies with the test process
 * even when that one is killed, its output appended to `logFile`, and killed at exit.
 */
export function spawnServer(args: string[], logFile: string): ReturnType<typeof Bun.spawn> {
  const fd = openSync(logFile, "a");
  let proc: ReturnType<typeof Bun.spawn>;
  try {
    proc = Bun.spawn(["setpriv", "--pdeathsig", "KILL", "--", ...args], { stdin: "ignore", stdout: fd, stderr: fd });
  } finally {
    closeSync(fd);
  }
  killAtExit({ pid: proc.pid, exited: proc.exited });
  return proc;
}
