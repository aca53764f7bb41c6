// The health state of one check target, as plain data and pure functions: rise/fall counters,
// up/down, and the slow-start ramp. Times are milliseconds on one monotonic clock (the caller's).
//
// Decisions:
// - A new target starts up, with its full weight: a daemon restart or a config reload must not
//   take every backend out for rise × interval. A dead one goes down after `fall` failed checks.
// - During slow start the weight is ceil(configured × elapsed / slowStart), at least 1: ceil so
//   that a recovered backend never sits at weight 0 (that would be "down"), and the ramp reaches
//   the configured weight at the latest when the slow start is over. A configured 0 stays 0.

export interface HealthState {
  up: boolean;
  /** Consecutive passed checks while down (towards `rise`). */
  passes: number;
  /** Consecutive failed checks while up (towards `fall`). */
  failures: number;
  /** When the last down → up transition happened (the start of the ramp); undefined = never recovered. */
  recoveredAt?: number;
  /** When the state last changed between up and down (or was created). */
  since: number;
  /** The last check's reason ("refused", "timeout", "status 503", "ok"…). */
  reason: string;
  /** Checks run so far. */
  checks: number;
}

export interface CheckOutcome {
  ok: boolean;
  reason: string;
}

export type Transition = "up" | "down";

export interface Thresholds {
  rise: number;
  fall: number;
}

export function initialState(now: number): HealthState {
  return { up: true, passes: 0, failures: 0, since: now, reason: "not checked yet", checks: 0 };
}

/** The state after one check's outcome, and the transition it caused, if any. */
export function step(s: HealthState, outcome: CheckOutcome, now: number, t: Thresholds): { state: HealthState; transition?: Transition } {
  const base = { ...s, reason: outcome.reason, checks: s.checks + 1 };
  if (s.up) {
    if (outcome.ok) return { state: { ...base, failures: 0 } };
    const failures = s.failures + 1;
    if (failures < t.fall) return { state: { ...base, failures } };
    return { state: { ...base, up: false, failures: 0, passes: 0, since: now }, transition: "down" };
  }
  if (!outcome.ok) return { state: { ...base, passes: 0 } };
  const passes = s.passes + 1;
  if (passes < t.rise) return { state: { ...base, passes } };
  return { state: { ...base, up: true, passes: 0, failures: 0, since: now, recoveredAt: now }, transition: "up" };
}

/** The share of the configured weight in force: 0 when down, the ramp during slow start, else 1. */
export function weightFactor(s: HealthState, now: number, slowStartMs: number): number {
  if (!s.up) return 0;
  if (slowStartMs <= 0 || s.recoveredAt === undefined) return 1;
  const elapsed = now - s.recoveredAt;
  if (elapsed >= slowStartMs) return 1;
  return Math.max(0, elapsed) / slowStartMs;
}

/** The weight to program: configured × factor, rounded up during the ramp (see the decisions above). */
export function effectiveWeight(configured: number, s: HealthState | undefined, now: number, slowStartMs: number): number {
  if (!s || configured === 0) return configured;
  if (!s.up) return 0;
  const f = weightFactor(s, now, slowStartMs);
  if (f === 1) return configured;
  return Math.min(configured, Math.max(1, Math.ceil(configured * f)));
}

/** Is the target still ramping at `now`? (The caller re-applies weights until it is not.) */
export function ramping(s: HealthState, now: number, slowStartMs: number): boolean {
  return s.up && slowStartMs > 0 && s.recoveredAt !== undefined && now - s.recoveredAt < slowStartMs;
}
