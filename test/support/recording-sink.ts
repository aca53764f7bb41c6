// A config source's sink for the source tests: it applies what it gets the way the merge layer
// would, and records every call. A source catches and only logs what its sink throws, so the sink
// never asserts: what a faithful delivery cannot produce goes into `violations`, and each test
// checks that list in its own body.

import type { KeyEvent, RawValue, SnapshotPart, SourceName, SourceSink } from "../../src/config/source.ts";

export interface RecordingSinkOptions {
  /**
   * The test writes each value at most once per key (values carry a counter, and its clients do
   * not retry by themselves): a value the key already had once is an event delivered twice.
   */
  valuesOnceEach?: boolean;
}

export class RecordingSink implements SourceSink {
  /** The keys and values as applied so far. */
  map = new Map<string, RawValue>();
  snapshots: Map<string, RawValue>[] = [];
  updates: KeyEvent[][] = [];
  statuses: { up: boolean; detail?: string }[] = [];
  violations: string[] = [];
  private seen = new Map<string, Set<string>>();

  constructor(
    /** The source every call must name. */
    private readonly source: SourceName,
    private readonly opts: RecordingSinkOptions = {},
  ) {}

  /** Sizes of the parts each snapshot came in (one entry per snapshot; [n] = not in parts). */
  partSizes: number[][] = [];
  private parts: Map<string, RawValue>[] = [];

  snapshot(source: SourceName, entries: Map<string, RawValue>, part?: SnapshotPart): void {
    this.checkSource("snapshot", source);
    if (part === "last" && this.parts.length === 0) this.violations.push("a last part without parts before it");
    if (part === undefined) this.parts = [];
    this.parts.push(new Map(entries));
    if (part === "more") return;
    const whole = new Map<string, RawValue>();
    for (const part of this.parts) {
      for (const [k, v] of part) {
        if (whole.has(k)) this.violations.push(`key ${k} in two parts of one snapshot`);
        whole.set(k, v);
      }
    }
    this.partSizes.push(this.parts.map((p) => p.size));
    this.parts = [];
    this.snapshots.push(whole);
    this.map = new Map(whole);
    for (const [k, v] of whole) this.remember(k, v.text);
  }

  update(source: SourceName, events: KeyEvent[]): void {
    this.checkSource("update", source);
    if (this.snapshots.length === 0) this.violations.push(`update before the first snapshot: ${events.map((e) => e.key).join(", ")}`);
    if (events.length === 0) this.violations.push("an empty update batch");
    this.updates.push(events);
    const inBatch = new Set<string>();
    for (const ev of events) {
      if (inBatch.has(ev.key)) this.violations.push(`${ev.key} twice in one batch (the source keeps the last event per key)`);
      inBatch.add(ev.key);
      this.applyEvent(ev);
    }
  }

  status(source: SourceName, up: boolean, detail?: string): void {
    this.checkSource("status", source);
    this.statuses.push({ up, detail });
  }

  /** The last status reported (undefined before any). */
  get up(): boolean | undefined {
    return this.statuses.at(-1)?.up;
  }

  /** key → text, sorted by key, for comparisons. */
  texts(): Record<string, string> {
    return Object.fromEntries([...this.map].map(([k, v]) => [k, v.text]).sort(([a], [b]) => (a! < b! ? -1 : 1)));
  }

  /** Only real changes are sent: no value the key holds already, no deletion of an absent key. */
  private applyEvent(ev: KeyEvent): void {
    const cur = this.map.get(ev.key);
    if (!ev.value) {
      if (!cur) this.violations.push(`deletion of an absent key: ${ev.key}`);
      this.map.delete(ev.key);
      return;
    }
    if (cur && cur.text === ev.value.text && cur.format === ev.value.format && cur.origin === ev.value.origin) {
      this.violations.push(`unchanged value sent again: ${ev.key}`);
    } else if (this.opts.valuesOnceEach && this.seen.get(ev.key)?.has(ev.value.text)) {
      this.violations.push(`${ev.key} = ${ev.value.text} delivered again`);
    }
    this.remember(ev.key, ev.value.text);
    this.map.set(ev.key, ev.value);
  }

  private checkSource(call: string, source: SourceName): void {
    if (source !== this.source) this.violations.push(`${call} from source ${JSON.stringify(source)}, expected ${JSON.stringify(this.source)}`);
  }

  private remember(key: string, text: string): void {
    if (!this.opts.valuesOnceEach) return;
    let texts = this.seen.get(key);
    if (!texts) this.seen.set(key, (texts = new Set()));
    texts.add(text);
  }
}
