// The file-system calls chokidar and readdirp make, with a bound on how many are in flight.
// chokidar starts watching a new subtree with one promise chain per directory, all at once:
// 20,000 new directories put tens of thousands of lstat/readdir/realpath calls on Bun's thread
// pool, and Bun runs every completion that has arrived before it looks at its timers, so a tree
// moved into -config-path blocked the event loop for 0.5-0.8 s at a time, seconds in the
// user-mode kernel (bench/stall.ts). With at most IN_FLIGHT calls out, a turn of the event loop
// holds at most that many completions; a call also waits for a turn of the event loop once a
// slice has run SLICE_MS (util/slices.ts Pacer). chokidar's own code and order are unchanged: its
// modules import this file instead of node:fs/promises (watcher-pacing.ts).

import * as fsp from "node:fs/promises";
import { Pacer } from "../util/slices.ts";

/**
 * Calls in flight at most. At 10k × 10 moved in, on the host: 8 kept the longest block under 50
 * ms and took the tree in fastest (3.9 s); 64: 58 ms and 4.8 s; 256: 120 ms. Fewer busy pool
 * threads also leave more of a small machine to etcd and the rest.
 */
export const IN_FLIGHT = 8;

/**
 * Wraps async calls so that at most `limit` of them are in flight (the others wait their turn, in
 * order); each call also waits for a turn of the event loop once the pacer's slice has run out.
 */
export function callLimiter(limit: number, pacer = new Pacer()) {
  let inFlight = 0;
  let started = 0;
  const waiting: (() => void)[] = [];
  const release = () => {
    const next = waiting.shift();
    if (next) next(); // the slot passes on
    else inFlight--;
  };
  return {
    /** How many calls have started. */
    started: () => started,
    /** No call in flight or waiting. */
    idle: () => inFlight === 0 && waiting.length === 0,
    wrap<A extends unknown[], R>(call: (...args: A) => Promise<R>): (...args: A) => Promise<R> {
      return async (...args: A) => {
        if (inFlight < limit) inFlight++;
        else await new Promise<void>((resolve) => waiting.push(resolve));
        try {
          await pacer.due();
          started++;
          return await call(...args);
        } finally {
          release();
        }
      };
    },
  };
}

const limiter = callLimiter(IN_FLIGHT);

/** How many calls went through here (a test checks that chokidar's calls do). */
export const pacedCalls = limiter.started;

/**
 * Whether chokidar has file-system work under way: a new directory's watch is set up between two
 * of its calls, so while any is in flight or waiting, a directory may be listed but not watched.
 */
export const watcherBusy = (): boolean => !limiter.idle();

// Every function chokidar 6 and readdirp 4 import from node:fs/promises (one they start to import
// and this file lacks fails the build and the watcher's test). No `export *` of the rest: Bun's
// bundler turned it into a reference to an undefined `promises` in the packaged binary.
export const lstat = limiter.wrap(fsp.lstat) as typeof fsp.lstat;
export const stat = limiter.wrap(fsp.stat) as typeof fsp.stat;
export const readdir = limiter.wrap(fsp.readdir) as typeof fsp.readdir;
export const realpath = limiter.wrap(fsp.realpath) as typeof fsp.realpath;
export const readlink = limiter.wrap(fsp.readlink) as typeof fsp.readlink;
export const open = limiter.wrap(fsp.open) as typeof fsp.open;
