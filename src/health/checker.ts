// The health-check scheduler: one target per address:port:check (however many frontends and
// backends share it), each probed every interval, with at most `concurrency` probes in flight
// (so at most that many check sockets open at once). Results go through the pure state machine
// (state.ts); transitions are logged (one line per service and backend) and reported to
// listeners, which also hear of every slow-start ramp step so that weights can be re-applied.
//
// Timing: a target's first check comes at a random point of its first interval (thousands of
// targets added at once must not probe in lockstep); after that, checks start one period apart,
// the period drawn from [0.95, 1] × interval. Never longer than the interval: a dead backend is
// down within fall × interval + timeout of its death (plus any wait for a free probe slot).

import * as log from "../util/log.ts";
import { checkPort, hostPort, targetKey, type CheckSpec } from "./check-config.ts";
import { probe, STOPPED, type ProbeResult } from "./probe.ts";
import { effectiveWeight, initialState, ramping, step, type HealthState, type Transition } from "./state.ts";

export interface CheckUser {
  service: string;
  backend: string;
}

/** What the daemon asks to be checked: a destination address and port with its backend's check. */
export interface TargetInput {
  address: string;
  /** The destination's port; the check's own `port` wins over it. */
  destPort: number;
  spec: CheckSpec;
  users: CheckUser[];
}

export interface TargetView {
  key: string;
  address: string;
  port: number;
  spec: CheckSpec;
  users: readonly CheckUser[];
  state: HealthState;
}

export interface TransitionEvent {
  target: TargetView;
  transition: Transition;
  reason: string;
  /** performance.now() of the transition. */
  at: number;
}

export interface CheckerListener {
  /** Every finished probe (not the ones cut short by removal or stop). */
  result?(target: TargetView, result: ProbeResult): void;
  transition?(ev: TransitionEvent): void;
  /** The effective weight of these targets may have changed (a transition or a ramp step). */
  change?(keys: string[]): void;
}

export interface CheckerOptions {
  /** Probes in flight at most (= check sockets open at most). */
  concurrency?: number;
  random?: () => number;
  /** Ramp steps are reported this often while a target ramps up (and once when it ends). */
  rampTickMs?: number;
}

export const DEFAULT_CONCURRENCY = 256;
const JITTER = 0.05;

interface Target extends TargetView {
  users: CheckUser[];
  timer?: ReturnType<typeof setTimeout>;
  rampTimer?: ReturnType<typeof setTimeout>;
  /** When the current round was due (the next is due one period later, not one period after it ends). */
  dueAt: number;
  abort: AbortController;
  removed: boolean;
  running?: Promise<void>;
}

export class Checker {
  private readonly targets = new Map<string, Target>();
  private readonly listeners = new Set<CheckerListener>();
  private readonly concurrency: number;
  private readonly random: () => number;
  private readonly rampTickMs: number;
  private inFlight = 0;
  private readonly waiting: (() => void)[] = [];
  private stopped = false;
  readonly stats = { probes: 0, transitions: 0, maxInFlight: 0 };

  constructor(opts: CheckerOptions = {}) {
    this.concurrency = Math.max(1, opts.concurrency ?? DEFAULT_CONCURRENCY);
    this.random = opts.random ?? Math.random;
    this.rampTickMs = opts.rampTickMs ?? 1000;
  }

  listen(l: CheckerListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  get size(): number {
    return this.targets.size;
  }

  get queued(): number {
    return this.waiting.length;
  }

  get active(): number {
    return this.inFlight;
  }

  /**
   * Makes the checked set equal to `inputs` (the whole set, each config change): new targets
   * start, gone ones stop at once (an in-flight probe is cut off), kept ones keep their state and
   * schedule. A target whose check changed is a new target; it takes over the up/down state of the
   * one it replaces on the same address:port, so editing a dead backend's check does not bring
   * it back. Returns the keys added and removed.
   */
  setTargets(inputs: Iterable<TargetInput>): { added: string[]; removed: string[] } {
    if (this.stopped) throw new Error("health checker: setTargets after stop");
    const want = new Map<string, TargetInput & { port: number; users: CheckUser[] }>();
    for (const t of inputs) {
      const key = targetKey(t.address, t.destPort, t.spec);
      const had = want.get(key);
      if (had) {
        for (const u of t.users) if (!had.users.some((x) => x.service === u.service && x.backend === u.backend)) had.users.push(u);
      } else {
        want.set(key, { ...t, port: checkPort(t.spec, t.destPort), users: [...t.users] });
      }
    }
    const removed: string[] = [];
    const replaced = new Map<string, HealthState>();
    for (const [key, t] of this.targets) {
      if (want.has(key)) continue;
      removed.push(key);
      replaced.set(hostPort(t.address, t.port), t.state);
      this.drop(t);
    }
    const added: string[] = [];
    const now = performance.now();
    for (const [key, w] of want) {
      const have = this.targets.get(key);
      if (have) {
        have.users = sortUsers(w.users);
        continue;
      }
      const prev = replaced.get(hostPort(w.address, w.port));
      const state = prev ? { ...initialState(now), up: prev.up, recoveredAt: prev.recoveredAt, since: prev.since, reason: prev.reason } : initialState(now);
      const t: Target = { key, address: w.address, port: w.port, spec: w.spec, users: sortUsers(w.users), state, dueAt: now, abort: new AbortController(), removed: false };
      this.targets.set(key, t);
      added.push(key);
      // The first check somewhere in the first interval: spreads a large set evenly.
      this.schedule(t, now + this.random() * w.spec.intervalMs);
      if (ramping(t.state, now, t.spec.slowStartMs)) this.scheduleRamp(t, now);
    }
    return { added, removed };
  }

  /** The state of a target (by targetKey), undefined when it is not checked. */
  health(key: string): HealthState | undefined {
    return this.targets.get(key)?.state;
  }

  /** The weight to program for a destination whose configured weight is `configured`. */
  weight(key: string, configured: number, now = performance.now()): number {
    const t = this.targets.get(key);
    return t ? effectiveWeight(configured, t.state, now, t.spec.slowStartMs) : configured;
  }

  /** Is the target's weight below the configured one now (down, or ramping up)? */
  reduced(key: string, now = performance.now()): boolean {
    const t = this.targets.get(key);
    return !!t && (!t.state.up || ramping(t.state, now, t.spec.slowStartMs));
  }

  *list(): IterableIterator<TargetView> {
    yield* this.targets.values();
  }

  /** Stops every check: timers cleared, probes in flight aborted (their sockets closed), then resolves. */
  async stop(): Promise<void> {
    this.stopped = true;
    const running: Promise<void>[] = [];
    for (const t of this.targets.values()) {
      if (t.running) running.push(t.running);
      this.drop(t);
    }
    this.targets.clear();
    for (const wake of this.waiting.splice(0)) wake();
    await Promise.all(running);
  }

  private drop(t: Target): void {
    t.removed = true;
    clearTimeout(t.timer);
    clearTimeout(t.rampTimer);
    t.abort.abort();
    this.targets.delete(t.key);
  }

  private schedule(t: Target, at: number): void {
    t.dueAt = at;
    t.timer = setTimeout(() => {
      t.timer = undefined;
      t.running = this.round(t).finally(() => (t.running = undefined));
    }, Math.max(0, at - performance.now()));
  }

  private async round(t: Target): Promise<void> {
    await this.acquire();
    try {
      if (t.removed || this.stopped) return;
      this.stats.probes++;
      const result = await probe({ address: t.address, port: t.port, spec: t.spec }, t.abort.signal);
      if (t.removed || this.stopped || result.reason === STOPPED) return;
      this.record(t, result);
    } finally {
      this.release();
    }
    if (t.removed || this.stopped) return;
    const period = t.spec.intervalMs * (1 - JITTER * this.random());
    this.schedule(t, Math.max(performance.now(), t.dueAt + period));
  }

  private record(t: Target, result: ProbeResult): void {
    for (const l of this.listeners) l.result?.(t, result);
    const now = performance.now();
    const { state, transition } = step(t.state, result, now, t.spec);
    t.state = state;
    if (!transition) return;
    this.stats.transitions++;
    const where = hostPort(t.address, t.port);
    for (const u of t.users.length ? t.users : [{ service: "", backend: "" }]) {
      const fields = { service: u.service, backend: u.backend, target: where, check: t.spec.type, reason: result.reason };
      if (transition === "down") log.warn(`health check: backend down after ${t.spec.fall} failed check(s)`, fields);
      else log.info(`health check: backend up after ${t.spec.rise} passed check(s)`, t.spec.slowStartMs ? { ...fields, slowStartMs: t.spec.slowStartMs } : fields);
    }
    const ev: TransitionEvent = { target: t, transition, reason: result.reason, at: now };
    for (const l of this.listeners) l.transition?.(ev);
    this.changed([t.key]);
    clearTimeout(t.rampTimer);
    if (transition === "up" && ramping(t.state, now, t.spec.slowStartMs)) this.scheduleRamp(t, now);
  }

  /**
   * While a target ramps up, report a change at each rampTick after its recovery and once at the
   * ramp's end: on a grid from the recovery, so a timer that fires a little early or late adds or
   * loses no step.
   */
  private scheduleRamp(t: Target, now: number): void {
    const from = t.state.recoveredAt!;
    const span = t.spec.slowStartMs;
    const step = Math.floor((now - from) / this.rampTickMs) + 1;
    const offset = Math.min(span, step * this.rampTickMs);
    const fire = () => {
      if (t.removed) return;
      // Timers may fire a little early: the last report must come when the ramp is really over,
      // or a reader of weight() at that moment would keep a weight just short of the configured one.
      const early = from + offset - performance.now();
      if (early > 0) return void (t.rampTimer = setTimeout(fire, Math.ceil(early)));
      this.changed([t.key]);
      if (offset < span) this.scheduleRamp(t, from + offset);
    };
    t.rampTimer = setTimeout(fire, Math.max(0, from + offset - performance.now()));
  }

  private changed(keys: string[]): void {
    for (const l of this.listeners) l.change?.(keys);
  }

  private acquire(): Promise<void> {
    if (this.inFlight < this.concurrency && this.waiting.length === 0) {
      this.inFlight++;
      this.stats.maxInFlight = Math.max(this.stats.maxInFlight, this.inFlight);
      return Promise.resolve();
    }
    return new Promise((resolve) =>
      this.waiting.push(() => {
        this.inFlight++;
        this.stats.maxInFlight = Math.max(this.stats.maxInFlight, this.inFlight);
        resolve();
      }),
    );
  }

  private release(): void {
    this.inFlight--;
    const next = this.waiting.shift();
    if (next) next();
  }
}

const sortUsers = (users: CheckUser[]): CheckUser[] =>
  users.sort((a, b) => (a.service < b.service ? -1 : a.service > b.service ? 1 : a.backend < b.backend ? -1 : a.backend > b.backend ? 1 : 0));
