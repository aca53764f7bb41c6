// Health for the frontend tier (two-tier deployments, docs/config.md §5, §9): an intermediate host
// that advertises routes/NAME publishes, under the same lease, health/NAME/SERVICE/BACKEND =
// {"weight": N} for each local backend whose health-adjusted weight differs from its configured
// one (0 down, the ramp during slow start); a healthy backend has no key. The frontend tier sums
// the published weight for that backend in the gateway's destination (desired.ts). The records
// are computed from the checker by a pure function; HealthPublisher only coalesces the writes.

import { ConfigValueError, MAX_WEIGHT, fold, foldMap, integer, parseObject, type Parsed } from "../config/values.ts";
import type { ValueFormat } from "../config/source.ts";
import { targetKey, type CheckSpec } from "./check-config.ts";
import { absoluteKey, healthKey } from "../config/keys.ts";

/** A published record: the weight in force on the intermediate host for one backend. */
export interface HealthRecord {
  weight: number;
}

const HEALTH_KEYS = foldMap(["weight"]);
const HEALTH_FIELDS = new Map<string, unknown>();

/** Parses {"weight": N} (the usual bad-value rules: a bad value keeps the last good one). */
export function parseHealthRecord(text: string, format: ValueFormat = "json"): Parsed<HealthRecord> {
  const warnings = fold(parseObject(text, format), HEALTH_KEYS, HEALTH_FIELDS);
  if (!HEALTH_FIELDS.has("weight")) throw new ConfigValueError("a health record needs a weight", "weight");
  return { value: { weight: integer(HEALTH_FIELDS.get("weight"), "weight", 0, MAX_WEIGHT, "weight") }, warnings };
}

/** A checked destination as the desired table lists them (DesiredTable.checkTargets). */
export interface CheckedTarget {
  address: string;
  destPort: number;
  spec: CheckSpec;
  users: { service: string; backend: string }[];
}

/**
 * The records to publish: "SERVICE/BACKEND" → the weight in force, for each checked backend whose
 * weight differs from its configured one (a backend with several checked destinations: the lowest).
 * Pure: the configured weights and the checker's weights come in as functions.
 */
export function healthRecords(
  targets: Iterable<CheckedTarget>,
  configured: (service: string, backend: string) => number | undefined,
  weightOf: (targetKey: string, configured: number) => number,
): Map<string, number> {
  const out = new Map<string, number>();
  for (const t of targets) {
    const key = targetKey(t.address, t.destPort, t.spec);
    for (const u of t.users) {
      const w = configured(u.service, u.backend);
      if (w === undefined) continue;
      const now = weightOf(key, w);
      if (now === w) continue;
      const id = `${u.service}/${u.backend}`;
      out.set(id, Math.min(now, out.get(id) ?? now));
    }
  }
  return out;
}

/** Where the records go: keys under the advertised route's lease (RouteAdvertiser.setKeys). */
export interface LeasedKeys {
  setKeys(keys: Map<string, string>): void;
}

/**
 * Publishes the records of one advertised route: `update()` after every health change or config
 * apply; the records are computed and handed over at most once per `minIntervalMs` (a slow-start
 * ramp steps every second; a transition after a quiet period goes out at once).
 */
export class HealthPublisher {
  private timer?: ReturnType<typeof setTimeout>;
  private last = -Infinity;
  private stopped = false;

  constructor(
    private readonly out: LeasedKeys,
    /** "SERVICE/BACKEND" → weight (healthRecords). */
    private readonly records: () => Map<string, number>,
    /** The etcd prefix without a trailing slash. */
    private readonly prefix: string,
    private readonly route: string,
    private readonly minIntervalMs = 1000,
  ) {}

  update(): void {
    if (this.timer || this.stopped) return;
    const wait = Math.max(0, this.last + this.minIntervalMs - performance.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.stopped) return;
      this.last = performance.now();
      const keys = new Map<string, string>();
      for (const [id, weight] of this.records()) {
        const slash = id.indexOf("/");
        keys.set(absoluteKey(this.prefix, healthKey(this.route, id.slice(0, slash), id.slice(slash + 1))), JSON.stringify({ weight }));
      }
      this.out.setKeys(keys);
    }, wait);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}
