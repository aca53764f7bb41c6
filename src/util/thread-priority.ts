// Lowering the calling thread's scheduling priority (Linux: nice is per thread). The directory
// watcher's thread runs at nice 10, so that chokidar taking in a tree of thousands of new
// directories (seconds of CPU on a slow machine) never starves the daemon's main thread, its etcd
// lease keep-alives or the etcd server beside it on a one-CPU host.

import { dlopen, FFIType } from "bun:ffi";

const PRIO_PROCESS = 0;

/** Sets this thread's nice value; false (nothing changed) where libc or the call is not there. */
export function niceThisThread(nice: number): boolean {
  try {
    const libc = dlopen("libc.so.6", {
      gettid: { args: [], returns: FFIType.i32 },
      setpriority: { args: [FFIType.i32, FFIType.u32, FFIType.i32], returns: FFIType.i32 },
    });
    try {
      return libc.symbols.setpriority(PRIO_PROCESS, libc.symbols.gettid(), nice) === 0;
    } finally {
      libc.close();
    }
  } catch {
    return false;
  }
}
