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
