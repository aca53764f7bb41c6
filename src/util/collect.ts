// Collections during large steps. JSC lets its heap grow to about twice what the last full
// collection kept before it collects again: during a full sync of 10k × 10 (110,000 values
// parsed, as many destinations compiled and written) that was 30–40 MiB of garbage on top of a
// live heap of about 45 MiB, and the process's peak memory with it. Two kinds of collection that
// keep a live daemon's event loop going:
// - a young-generation (eden) collection every so often while a step makes garbage: 2–4 ms on
//   the bench's machine (a full collection there takes 25–50 ms, and 0.2–0.6 s in the user-mode
//   kernel of the tests);
// - when a large batch was just dropped (a snapshot's part taken in: its raw text and the
//   parse's garbage), an eden collection at once and, with a CPU to spare, a full one in the
//   background, which also frees what eden collections promoted while it was still in use (the
//   page buffers of etcd's responses, values waiting to be taken in).

import { edenGC } from "bun:jsc";
import { lazy } from "./lazy.ts";

/** Units of work (values compiled, writes sent) between two eden collections. */
export const EDEN_EVERY = 16_384;

export class StepCollector {
  private since = 0;
  /** Off: every call does nothing (a live daemon after its first apply: see IpvsDaemonOptions.collectAfterLargeSteps). */
  enabled = true;
  /** The CPU count, asked once, at the first collection that depends on it. */
  private readonly cpus: () => number;

  constructor(
    private readonly every = EDEN_EVERY,
    private readonly eden: () => void = edenGC,
    /** Bun.gc(false): a full collection that runs beside the event loop. */
    private readonly background: () => void = () => Bun.gc(false),
    /** The CPUs this process may use (asked when first needed: most daemons never collect). */
    cpusOf: () => number = () => (require("node:os") as typeof import("node:os")).availableParallelism(),
    /** Bun.gc(true): a full collection that the event loop waits for. */
    private readonly blocking: () => void = () => Bun.gc(true),
  ) {
    this.cpus = lazy(cpusOf);
  }

  /** Counts `n` units of work; an eden collection once `every` have passed since the last one. */
  add(n: number): void {
    if (!this.enabled) return;
    this.since += n;
    if (this.since < this.every) return;
    this.since = 0;
    this.eden();
  }

  /**
   * A large batch of garbage was just dropped: an eden collection now, and a full one in the
   * background when there is a CPU for it (with one CPU a collection "beside" the event loop
   * takes the loop's CPU: 0.2–0.6 s at a time in the one-CPU user-mode kernel).
   */
  dropped(): void {
    if (!this.enabled) return;
    this.since = 0;
    this.eden();
    if (this.cpus() > 1) this.background();
  }

  /**
   * A large step is done where a short pause is acceptable: a full collection that the event loop
   * waits for (25–50 ms at 10k × 10 with two CPUs marking), or, `always` aside, with one CPU the
   * collections of a dropped batch (a full one took 0.2–0.6 s in the one-CPU user-mode kernel).
   */
  full(always = false): void {
    if (!this.enabled) return;
    if (!always && this.cpus() <= 1) return this.dropped();
    this.since = 0;
    this.blocking();
  }
}
