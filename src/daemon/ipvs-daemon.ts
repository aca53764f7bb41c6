// clusterf-ipvs's loop: sources push key events in, the store merges them, the desired table is
// recomputed where they touch it, and the reconciler writes the difference. Bursts of events are
// coalesced into one apply. The first apply waits until every source has delivered its first
// snapshot, so a restart never programs a partial config (the kernel table is left as it is
// until then).

import { ConfigStore, type Change, type ConfigProblem } from "../config/store.ts";
import type { ConfigSource, KeyEvent, RawValue, SnapshotPart, SourceName, SourceSink } from "../config/source.ts";
import { DesiredTable, type DesiredOptions } from "../model/desired.ts";
import { formatTable } from "../ipvs/print.ts";
import type { Checker } from "../health/checker.ts";
import { healthNote } from "../health/notes.ts";
import { healthRecords } from "../health/publish.ts";
import type { IpvsTable } from "../ipvs/types.ts";
import { Reconciler, type SyncResult } from "./reconciler.ts";
import * as log from "../util/log.ts";
import { StepCollector } from "../util/collect.ts";
import { chunks, runSliced, runSync, type Steps } from "../util/slices.ts";
import { Backoff } from "../util/backoff.ts";

/** Source events taken into the store, and config services compiled, between two chances to pause. */
const EVENT_SLICE = 256;
const COMPILE_SLICE = 64;

export interface IpvsDaemonOptions {
  desired: DesiredOptions;
  filterEtcdRoutes: boolean;
  /** Print the table after each apply (ipvsadm -Ln layout) to this writer. */
  print?: (text: string) => void;
  flush: boolean;
  noop: boolean;
  stateDir?: string;
  /** Periodic re-read of the kernel table; 0 = off. */
  resyncMs: number;
  /** Retry delay after failed writes. */
  retryMs?: number;
  /** See ReconcilerOptions.drainMs: removed destinations with active connections drain first. */
  drainMs?: number;
  /** How often draining destinations are checked for connections left (default 1 s). */
  drainCheckMs?: number;
  /** Health checks of the config's checked destinations (none: configured weights, nothing checked). */
  health?: Checker;
  /**
   * A garbage collection after taking in, and after compiling, a large config, so that the peak
   * memory stays near what is kept instead of growing with the garbage of the parse, and the
   * collections of util/collect.ts while it works: "full" (-once: it serves nothing meanwhile)
   * waits for a full one; "background" (a live daemon, whose event loop never blocks long) makes
   * them until its first apply is done (start-up), waiting for a full one there only with two
   * CPUs or more (StepCollector.full), and none after that: with a large batch of new values
   * alive, an eden collection in the one-CPU user-mode kernel held the event loop for 1.5 s
   * (JSC's own collections go on as always). Undefined: none.
   */
  collectAfterLargeSteps?: "full" | "background";
  /** The collector of collectAfterLargeSteps: for tests, which record its collections. */
  collector?: StepCollector;
}

/** A snapshot (or a part of one) of this many keys is followed by collections once taken in (StepCollector.dropped), in a large apply. */
const SNAPSHOT_COLLECT_KEYS = 1024;

/**
 * Key events in one apply from which it collects garbage as it goes (collectAfterLargeSteps).
 * Below it the garbage is a few MiB, and an eden collection alone took ~150 ms in the one-CPU
 * user-mode kernel (a fifth of a 1000-service start there went to four of them).
 */
const LARGE_EVENTS = 20_000;

/**
 * The periodic resync gives way to a config change that comes while it reads the kernel (at
 * 10k × 10 the read takes about a second of sliced work, and an apply queued behind it waited
 * that long), this many times in a row at most: then it runs through, so that drift is still
 * corrected under a steady stream of changes.
 */
const RESYNC_GIVE_WAYS = 3;

export type SyncKind = "full" | "incremental" | "resync";

export interface DaemonCounters {
  configErrors: Record<SourceName, number>;
  applies: number;
  lastApplyMs: number;
  lastSyncAt: number;
}

/**
 * What /metrics and /healthz read of the daemon, as of the call: a narrow view, so that they never
 * reach into its parts (the reconciler, the desired table).
 */
export interface IpvsDaemonStatus {
  /** The first sync is done. */
  ready: boolean;
  sourceUp: Partial<Record<SourceName, boolean>>;
  configErrors: Record<SourceName, number>;
  /** When the table was last brought to the desired state (ms since the epoch; 0: not yet). */
  lastSyncAt: number;
  /** IPVS writes made, by kind. */
  writes: Readonly<Record<string, number>>;
  netlinkErrors: number;
  driftCorrections: number;
  /** IPVS services in the desired table. */
  services: number;
  /** The services (serviceKeyString) whose last write the kernel refused. */
  failing: string[];
  /** Destinations left at weight 0 until their connections end. */
  draining: number;
}

export class IpvsDaemon implements SourceSink {
  readonly store: ConfigStore;
  readonly desired: DesiredTable;
  readonly reconciler: Reconciler;
  readonly counters: DaemonCounters = { configErrors: { local: 0, etcd: 0 }, applies: 0, lastApplyMs: 0, lastSyncAt: 0 };
  readonly sourceUp: Partial<Record<SourceName, boolean>> = {};

  /** Collections while large steps make garbage (util/collect.ts), as collectAfterLargeSteps says. */
  private readonly collector: StepCollector;
  private readonly waiting = new Set<SourceName>();
  private started = false;
  /** Source events not yet taken into the store: the next apply takes them in, a slice at a time. */
  private pending: { source: SourceName; events: Iterable<KeyEvent> | Map<string, RawValue>; part?: SnapshotPart }[] = [];
  /** Parts of a snapshot that came after the first apply: held until its last part (nothing partial is applied). */
  private readonly parts: Record<SourceName, Map<string, RawValue>[]> = { local: [], etcd: [] };
  /** Keys of a first read in parts so far, for its log line. */
  private readonly partKeys: Record<SourceName, number> = { local: 0, etcd: 0 };
  /** Source events taken into the store since the last apply began (by it, or before the first apply as parts came). */
  private taken = 0;
  private takeInQueued = false;
  /** The sliced syncs (applies, resyncs, drain releases) run one after the other on this chain. */
  private work: Promise<unknown> = Promise.resolve();
  private dirtyServices = new Set<string>();
  /** Config services whose weights a health check changed (recomputed quietly at the next apply). */
  private healthDirty = new Set<string>();
  /** The desired table's checksVersion last given to the health checker. */
  private checksVersion = -1;
  private routeChanges: Extract<Change, { kind: "route" }>[] = [];
  private applyTimer?: ReturnType<typeof setTimeout>;
  /** An apply is in the queue of sliced work (its timer has fired; it has not started yet). */
  private applyQueued = false;
  /** How many more times the periodic resync may give way to an apply before it runs through. */
  private resyncGiveWays = RESYNC_GIVE_WAYS;
  private sourcesStarted = false;
  private stopping = false;
  private reloading: Promise<void> = Promise.resolve();
  private resyncTimer?: ReturnType<typeof setInterval>;
  private retryTimer?: ReturnType<typeof setTimeout>;
  private drainTimer?: ReturnType<typeof setTimeout>;
  /** Retries of failed writes back off: 1 s, 2 s, 4 s… up to 30 s while the failures go on. */
  private readonly retryBackoff: Backoff;
  private applyListeners: ((r: SyncResult) => void)[] = [];
  private syncListeners: ((kind: SyncKind, ms: number, r: SyncResult) => void)[] = [];

  constructor(
    ipvs: IpvsTable,
    private readonly sources: ConfigSource[],
    private readonly opts: IpvsDaemonOptions,
  ) {
    this.store = new ConfigStore({
      filterEtcdRoutes: opts.filterEtcdRoutes,
      onError: (p) => this.configError(p),
      onWarning: (p) => log.warn(`config: ${p.message}`, { source: p.source, key: p.key, origin: p.origin }),
      onSkipped: (p) => log.info(`config: ${p.message}`, { source: p.source, key: p.key }),
    });
    const health = opts.health;
    const store = this.store;
    const desired: DesiredOptions = {
      ...opts.desired,
      // What intermediate hosts published for the backends behind their routes (two tiers).
      published: (route, service, backend) => store.publishedWeight(route, service, backend),
    };
    if (health) desired.weight = (key, w) => health.weight(key, w);
    this.desired = new DesiredTable(desired, (m, f) => log.warn(`config: ${m}`, f));
    health?.listen({
      change: (keys) => {
        for (const name of this.desired.servicesChecking(keys)) this.healthDirty.add(name);
        this.scheduleApply();
      },
    });
    const retryMs = opts.retryMs ?? 1000;
    this.retryBackoff = new Backoff(retryMs, Math.max(retryMs, 30_000));
    this.collector = opts.collector ?? new StepCollector();
    this.collector.enabled = opts.collectAfterLargeSteps !== undefined;
    this.reconciler = new Reconciler(ipvs, { noop: opts.noop, stateDir: opts.stateDir, drainMs: opts.drainMs, collector: this.collector });
    for (const s of sources) this.waiting.add(s.name);
  }

  /** Reads the kernel (or flushes it), starts the sources; resolves once the sources are started. */
  async start(): Promise<void> {
    const info = this.reconciler.ipvs.info();
    log.info("IPVS: ready", { version: info.version, connTableSize: info.connTableSize });
    if (this.opts.flush) this.reconciler.flush();
    else await runSliced(this.reconciler.readActualSteps()); // /healthz answers meanwhile
    for (const s of this.sources) await s.start(this);
    this.sourcesStarted = true;
    if (this.sources.length === 0) this.scheduleApply();
    if (this.opts.resyncMs > 0) this.resyncTimer = setInterval(() => this.periodicResync(), this.opts.resyncMs);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await this.opts.health?.stop();
    clearTimeout(this.applyTimer);
    clearInterval(this.resyncTimer);
    clearTimeout(this.retryTimer);
    clearTimeout(this.drainTimer);
    await Promise.all(this.sources.map((s) => s.stop()));
    await this.work; // a sync in progress stops at its next pause
    this.reconciler.ipvs.close();
  }

  /** Resolves after the next apply (the first full apply, when called before it). */
  nextApply(): Promise<SyncResult> {
    return new Promise((resolve) => this.applyListeners.push(resolve));
  }

  /** Called after every sync (metrics). */
  onSync(listener: (kind: SyncKind, ms: number, r: SyncResult) => void): void {
    this.syncListeners.push(listener);
  }

  /** The backend health to publish for the frontend tier (src/health/publish.ts): "SERVICE/BACKEND" → weight. */
  healthRecords(): Map<string, number> {
    const health = this.opts.health;
    if (!health || !this.started) return new Map();
    return healthRecords(this.desired.checkTargets(), (s, b) => this.store.services.get(s)?.backends.get(b)?.weight, (k, w) => health.weight(k, w));
  }

  get health(): Checker | undefined {
    return this.opts.health;
  }

  get ready(): boolean {
    return this.started;
  }

  statusView(): IpvsDaemonStatus {
    const r = this.reconciler;
    let draining = 0;
    for (const dests of r.draining.values()) for (const d of dests.values()) if (!d.released) draining++;
    return {
      ready: this.started && this.counters.lastSyncAt > 0,
      sourceUp: { ...this.sourceUp },
      configErrors: { ...this.counters.configErrors },
      lastSyncAt: this.counters.lastSyncAt,
      writes: { ...r.counters.writes },
      netlinkErrors: r.counters.netlinkErrors,
      driftCorrections: r.counters.driftCorrections,
      services: this.desired.table.size,
      failing: [...r.failing.keys()],
      draining,
    };
  }

  /** The config service that owns an IPVS service ("" when not in the config). */
  ownerOf(serviceKey: string): string {
    return this.desired.table.get(serviceKey)?.owner ?? "";
  }

  /** The config backends merged into each destination of an IPVS service. */
  backendsOf(serviceKey: string): Map<string, string[]> | undefined {
    return this.desired.backendsByDest(serviceKey);
  }

  /** A handle on the IPVS table for a reader beside the syncs (its own socket where it matters). */
  tableReader(): IpvsTable {
    const ipvs = this.reconciler.ipvs;
    return ipvs.reader?.() ?? ipvs;
  }

  // SourceSink

  snapshot(source: SourceName, entries: Map<string, RawValue>, part?: SnapshotPart): void {
    if (part === "more") {
      if (this.started) {
        this.parts[source].push(entries);
        return;
      }
      // Before the first apply a part is taken in at once: parsed, its raw text can go.
      this.partKeys[source] += entries.size;
      this.pending.push({ source, events: entries, part });
      if (!this.takeInQueued) {
        this.takeInQueued = true;
        void this.sliced(() => {
          this.takeInQueued = false;
          return this.takeIn();
        });
      }
      return;
    }
    // The held parts go first (a whole snapshot after a snapshot left unfinished replaces its parts).
    for (const p of this.parts[source].splice(0)) this.pending.push({ source, events: p, part: "more" });
    this.pending.push({ source, events: entries, part });
    const keys = this.partKeys[source] + entries.size;
    this.partKeys[source] = 0;
    if (this.waiting.delete(source)) log.info("config: first read done", { source, keys });
    this.scheduleApply();
  }

  update(source: SourceName, events: KeyEvent[]): void {
    this.pending.push({ source, events });
    this.scheduleApply();
  }

  status(source: SourceName, up: boolean, detail?: string): void {
    if (this.sourceUp[source] === up) return;
    this.sourceUp[source] = up;
    if (up) log.info("config: source connected", { source });
    else log.warn("config: source down; the last known config stays in force", { source, detail });
  }

  // Applying

  /** Takes the pending source events into the store, a slice at a time (a snapshot as its events); counts them in `taken`. */
  private *takeIn(): Steps<void> {
    let taken = 0;
    for (let p; (p = this.pending.shift()); ) {
      const events = p.events instanceof Map ? this.store.snapshotEvents(p.source, p.events, p.part) : p.events;
      // A chance to pause after EVENT_SLICE events, and wherever the snapshot offers one (undefined).
      let inSlice = 0;
      for (const e of events) {
        if (e) {
          const c = this.store.apply(p.source, e);
          if (c?.kind === "service") this.dirtyServices.add(c.service);
          else if (c) this.routeChanges.push(c);
          taken++;
          if (++inSlice < EVENT_SLICE) continue;
        }
        inSlice = 0;
        yield;
      }
      // The raw text is parsed: a stale reference to the snapshot (the collector scans the stack
      // conservatively) must not keep every value's text alive; a large one's text and the
      // parse's garbage are collected at once.
      if (p.events instanceof Map) {
        const size = p.events.size;
        p.events.clear();
        if (size >= SNAPSHOT_COLLECT_KEYS && this.taken + taken >= LARGE_EVENTS) this.collector.dropped();
      }
    }
    this.taken += taken;
  }

  /** A full collection after a large step, where the collector is on (collectAfterLargeSteps). */
  private collectIfLarge(events: number): void {
    if (events >= LARGE_EVENTS) this.collector.full(this.opts.collectAfterLargeSteps === "full");
  }

  /** Recomputes the named config services a few at a time; adds the IPVS keys they change to `keys`. */
  private *compile(names: Iterable<string>, keys: Set<string>, quiet = false): Steps<void> {
    for (const slice of chunks(names, COMPILE_SLICE)) {
      for (const k of this.desired.updateServices(slice, this.store.services, quiet)) keys.add(k);
      // About one unit per config key compiled (counted only while the collector is on: a live
      // daemon's every change after start-up passes here).
      if (this.collector.enabled) for (const name of slice) this.collector.add(1 + (this.store.services.get(name)?.backends.size ?? 0));
      yield;
    }
  }

  /**
   * Runs sliced work after the work already queued (syncs never overlap), giving the event loop
   * a turn between slices; a stop abandons it at its next pause.
   */
  private sliced<T>(steps: () => Steps<T>): Promise<T | undefined> {
    const run = this.work.then(() => (this.stopping ? undefined : runSliced(steps(), () => this.stopping)));
    this.work = run.catch((e) => log.error(`IPVS: sync failed: ${(e as Error).message}`));
    return run;
  }

  private configError(p: ConfigProblem): void {
    this.counters.configErrors[p.source]++;
    log.error(`config: ${p.message}`, { source: p.source, key: p.key, origin: p.origin });
  }

  private scheduleApply(): void {
    if (this.applyTimer || this.waiting.size > 0) return;
    // A macrotask, so that a burst of source callbacks in the same tick becomes one apply.
    this.applyTimer = setTimeout(() => {
      this.applyTimer = undefined;
      this.applyQueued = true;
      void this.sliced(() => this.applySteps());
    }, 0);
  }

  /** The periodic resync, which gives way to applies (RESYNC_GIVE_WAYS says how). */
  private periodicResync(): void {
    const giveWay = () => this.resyncGiveWays > 0 && (this.applyQueued || this.applyTimer !== undefined);
    void this.sliced(() => this.resyncSteps(giveWay));
  }

  /**
   * The reload (SIGHUP): every source reads everything again, as at a fresh start, that is
   * applied at once, then the kernel table is re-read and its drift corrected. Reloads that
   * overlap run one after the other.
   */
  reload(): Promise<void> {
    const run = this.reloading.then(() => this.reloadNow());
    this.reloading = run.catch(() => {}); // a failed reload does not block the next one
    return run;
  }

  private async reloadNow(): Promise<void> {
    if (this.stopping) return;
    // Before the sources have started, their first read is still to come: it is the fresh read.
    if (!this.sourcesStarted) return log.info("reload: still starting, nothing to re-read");
    const results = await Promise.allSettled(this.sources.map((s) => s.resync()));
    results.forEach((r, i) => {
      // The last known config of that source stays in force, as when it is down.
      if (r.status === "rejected") log.warn("reload: cannot re-read a source", { source: this.sources[i]!.name, error: (r.reason as Error).message });
    });
    // Until the first apply, the snapshots only wait for the other sources; the first apply reads the kernel anyway.
    if (!this.started || this.stopping) return;
    const due = this.applyTimer !== undefined;
    clearTimeout(this.applyTimer);
    this.applyTimer = undefined;
    await this.sliced(() => this.reloadSteps(due));
  }

  private *reloadSteps(applyDue: boolean): Steps<void> {
    if (applyDue) yield* this.applySteps();
    yield* this.resyncSteps(); // logs its writes, if any
  }

  /**
   * Applies what changed since the last apply (everything, the first time) without pausing: for
   * callers that drive the daemon themselves (tests, the core benchmark), never while a sliced
   * sync runs.
   */
  apply(): SyncResult {
    return runSync(this.applySteps());
  }

  private *applySteps(): Steps<SyncResult> {
    this.applyQueued = false;
    const t0 = performance.now();
    yield* this.takeIn();
    const taken = this.taken;
    this.taken = 0;
    const kind: SyncKind = this.started ? "incremental" : "full";
    const collecting = this.collector.enabled;
    if (taken < LARGE_EVENTS) this.collector.enabled = false;
    const result = yield* this.compileAndSync(kind, taken);
    this.collector.enabled = collecting;
    this.finish(kind, result, performance.now() - t0);
    return result;
  }

  /** The part of an apply after taking in: the changed services compiled, then the kernel synced. */
  private *compileAndSync(kind: SyncKind, taken: number): Steps<SyncResult> {
    this.collectIfLarge(taken);
    const dirty = this.dirtyServices;
    const routeChanges = this.routeChanges;
    this.dirtyServices = new Set();
    this.routeChanges = [];
    const keys = new Set<string>();
    if (!this.started) {
      this.started = true;
      // The route index, then every service a slice at a time (the same as one rebuild: nothing was compiled yet).
      this.desired.rebuild(new Map(), this.store.routes);
      yield* this.compile(this.store.services.keys(), keys);
    } else {
      if (routeChanges.length) {
        // A route change may touch every service: found, then recompiled, a few at a time.
        yield* this.compile(yield* this.desired.routesChangedSteps(routeChanges, this.store.services, this.store.routes), keys);
      }
      yield* this.compile(dirty, keys);
    }
    if (this.opts.health) yield* this.healthSteps(this.opts.health, keys);
    this.collectIfLarge(taken);
    return yield* this.reconciler.syncSteps(this.desired.table, kind === "full" ? undefined : keys);
  }

  /**
   * Gives the health checker the checked destinations when they changed, then recomputes (quietly)
   * the services whose weights a check changed, including those of a new target that took over a
   * down or ramping state from the check it replaced.
   */
  private *healthSteps(health: Checker, keys: Set<string>): Steps<void> {
    if (this.desired.checksVersion !== this.checksVersion) {
      this.checksVersion = this.desired.checksVersion;
      const { added } = health.setTargets(this.desired.checkTargets());
      for (const name of this.desired.servicesChecking(added.filter((k) => health.reduced(k)))) this.healthDirty.add(name);
    }
    const names = this.healthDirty;
    this.healthDirty = new Set();
    yield* this.compile(names, keys, true);
  }

  private scheduleDrainCheck(): void {
    if (this.reconciler.draining.size === 0 || this.drainTimer) return;
    this.drainTimer = setTimeout(() => {
      this.drainTimer = undefined;
      void this.sliced(() => this.releaseDrained());
    }, this.opts.drainCheckMs ?? 1000);
  }

  /** Deletes the draining destinations whose connections have ended (or whose time is up). */
  private *releaseDrained(): Steps<void> {
    const t0 = performance.now();
    const keys = this.reconciler.releaseDrained();
    if (keys.length === 0) return this.scheduleDrainCheck();
    const result = yield* this.reconciler.syncSteps(this.desired.table, keys);
    this.finish("incremental", result, performance.now() - t0);
  }

  /** Re-reads the kernel and corrects drift (periodic, and the retry after failed writes). */
  resync(): SyncResult | undefined {
    return runSync(this.resyncSteps());
  }

  /** `giveWay`: see Reconciler.resyncSteps; a resync that gives way runs again after the apply. */
  private *resyncSteps(giveWay?: () => boolean): Steps<SyncResult | undefined> {
    if (!this.started) return undefined;
    const t0 = performance.now();
    let result: SyncResult;
    try {
      const r = yield* this.reconciler.resyncSteps(this.desired.table, giveWay);
      if (r === undefined) {
        this.resyncGiveWays--;
        log.debug("IPVS: the periodic resync gives way to a config change; it runs again after it");
        // After the apply: a timer set now fires after the apply's (queued already, or its timer set before).
        setTimeout(() => this.periodicResync(), 0);
        return undefined;
      }
      result = r;
    } catch (e) {
      log.error("IPVS: cannot read the kernel table", { error: (e as Error).message });
      result = { ops: 0, errors: 1, failed: new Set(["*"]), newFailures: 1 };
    }
    this.resyncGiveWays = RESYNC_GIVE_WAYS;
    this.finish("resync", result, performance.now() - t0);
    return result;
  }

  private finish(kind: SyncKind, result: SyncResult, ms: number): void {
    this.counters.applies++;
    // A live daemon collects on its own (JSC's) once started: see collectAfterLargeSteps.
    if (this.opts.collectAfterLargeSteps !== "full") this.collector.enabled = false;
    this.counters.lastApplyMs = ms;
    // In sync: every write went through, or the only failures repeat a known kernel refusal of a
    // service (reported apart, see Reconciler.failing): the rest of the table is right.
    if (result.newFailures === 0) this.counters.lastSyncAt = Date.now();
    if (result.ops > 0 || result.newFailures > 0 || kind === "full") {
      log.info("IPVS: applied", { kind, writes: result.ops, errors: result.errors, ms: Math.round(ms * 100) / 100 });
    }
    if (result.errors > 0 && !this.retryTimer) {
      const delay = this.retryBackoff.next();
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        void this.sliced(() => this.resyncSteps());
      }, delay);
    } else if (result.errors === 0) {
      this.retryBackoff.reset();
    }
    this.scheduleDrainCheck();
    for (const l of this.syncListeners) l(kind, ms, result);
    if (this.opts.print) this.opts.print(this.formatActual());
    const listeners = this.applyListeners;
    this.applyListeners = [];
    for (const l of listeners) l(result);
  }

  /** The table as this daemon believes the kernel holds it, in ipvsadm -Ln layout. */
  formatActual(): string {
    const services = [...this.reconciler.actual.values()].map((e) => ({ ...e.service, dests: e.dests.values() }));
    return formatTable(services, this.reconciler.ipvs.info(), this.opts.health && healthNote(this.desired, this.opts.health));
  }
}
