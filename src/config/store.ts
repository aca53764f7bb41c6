// The config store: each source's last good values, and the merged view (docs/config.md §3).
// A key's effective value is the local (-config-path) one when it has one, else etcd's; routes
// from etcd are dropped with -filter-etcd-routes. A bad value is reported and the key keeps its
// last good value (or none). The store reports which services and routes changed, so that the
// desired table is recomputed only where it must be.
// health/ROUTE/SERVICE/BACKEND (etcd only: an intermediate host's published backend health,
// src/health/publish.ts) is kept apart from the config: a change is a change of that service.

import type { KeyEvent, RawValue, SnapshotPart, SourceName } from "./source.ts";
import { parseHealthRecord } from "../health/publish.ts";
import { HEALTH, LAYOUT_HINT, ROUTES, SERVICES, backendKey, frontendKey, healthKey, nameProblem, parseKeyPath, routeKey, topLevelName, type KeyPath } from "./keys.ts";
import { parseBackend, parseFrontend, parseRoute, type Backend, type Frontend, type Route } from "./values.ts";
import { CompactMap } from "../util/compact-map.ts";

/** A parsed value; its kind is its key path's. */
type Value = Frontend | Backend | Route;

/** Keys a whole snapshot's search for deletions passes between two chances to pause (snapshotEvents). */
const SCAN_PAUSE = 1024;

export interface MergedService {
  frontend?: Frontend;
  backends: Map<string, Backend>;
}

/** What changed in the merged view. */
export type Change = { kind: "service"; service: string } | { kind: "route"; route: string; before?: Route; after?: Route };

export interface ConfigProblem {
  source: SourceName;
  key: string;
  origin?: string;
  message: string;
}

export interface StoreOptions {
  filterEtcdRoutes?: boolean;
  /** A bad value or an unknown key path: counted and logged by the caller. */
  onError?: (p: ConfigProblem) => void;
  /** Unknown JSON keys and other harmless oddities. */
  onWarning?: (p: ConfigProblem) => void;
  /** Keys outside the layout's top-level names (services/, routes/, and health/ from etcd): skipped, reported once per name. */
  onSkipped?: (p: ConfigProblem) => void;
}

function parseValue(path: Exclude<KeyPath, { kind: "health" }>, raw: RawValue): { value: Value; warnings: string[] } {
  switch (path.kind) {
    case "frontend":
      return parseFrontend(raw.text, raw.format);
    case "backend":
      return parseBackend(raw.text, raw.format);
    case "route":
      return parseRoute(raw.text, raw.format);
  }
}

/**
 * Equality of parsed values: their fields are primitives, or plain objects (a Cidr, a health
 * check) compared by their contents; an undefined field is an absent one.
 */
function sameValue(a: Value | undefined, b: Value | undefined): boolean {
  if (a === b) return true;
  if (a === undefined || b === undefined) return false;
  const x = a as Record<string, unknown>;
  const y = b as Record<string, unknown>;
  for (const k in x) if (!sameField(x[k], y[k])) return false;
  for (const k in y) if (!(k in x) && y[k] !== undefined) return false;
  return true;
}

function sameField(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  return Bun.deepEquals(a, b);
}

export class ConfigStore {
  /**
   * Each source's values: its services (name → frontend and backends) and its routes (name →
   * route). The merged view shares a source's service object while no other source has that
   * service (the common case): one copy of the config, not one per source plus one merged.
   */
  private readonly sources: Record<SourceName, { services: Map<string, MergedService>; routes: Map<string, Route> }> = {
    local: { services: new Map(), routes: new Map() },
    etcd: { services: new Map(), routes: new Map() },
  };
  readonly services = new Map<string, MergedService>();
  readonly routes = new Map<string, Route>();

  /** Published backend health from etcd: its key (health/ROUTE/SERVICE/BACKEND) → weight. */
  private readonly health = new Map<string, number>();

  private readonly skipped = new Set<string>();
  /** Per source, key → the text whose warnings were reported last (only keys with warnings). */
  private readonly warned: Record<SourceName, Map<string, string>> = { local: new Map(), etcd: new Map() };

  private lastChange?: Change & { kind: "service" };
  /** Per source, during a snapshot in parts: the keys it had before, not given again by a part so far. */
  private readonly unseen: Record<SourceName, Set<string> | undefined> = { local: undefined, etcd: undefined };

  constructor(private readonly opts: StoreOptions = {}) {}

  /** Applies one key event from a source; returns the change in the merged view, if any. */
  apply(source: SourceName, event: KeyEvent): Change | undefined {
    let path = parseKeyPath(event.key);
    // Health records come from the other tier through etcd; a local tree has none.
    if (path?.kind === "health" && source === "local") path = undefined;
    if (!path) {
      const top = topLevelName(event.key);
      if (top !== SERVICES && top !== ROUTES && (top !== HEALTH || source === "local")) {
        // Not config at all (docs or examples kept beside the tree, another tool's keys): one
        // line per top-level name, not a warning per key.
        if (event.value && !this.skipped.has(`${source}:${top}`)) {
          this.skipped.add(`${source}:${top}`);
          this.opts.onSkipped?.({ source, key: event.key, origin: event.value.origin, message: `keys under ${JSON.stringify(top + "/")} are not part of the config layout (services/, routes/); skipped` });
        }
        return undefined;
      }
      if (event.value) {
        const badName = event.key.split("/").map(nameProblem).find((p) => p !== undefined);
        const message = badName ?? `unknown key path ignored (expected ${LAYOUT_HINT})`;
        this.opts.onWarning?.({ source, key: event.key, origin: event.value.origin, message });
      }
      return undefined;
    }
    if (path.kind === "health") return this.applyHealth(event, path);
    let value: Value | undefined;
    if (event.value === null) {
      this.warned[source].delete(event.key);
      if (this.sourceValue(source, path) === undefined) return undefined;
    } else {
      let parsed: { value: Value; warnings: string[] };
      try {
        parsed = parseValue(path, event.value);
      } catch (e) {
        this.warned[source].delete(event.key);
        const kept = this.sourceValue(source, path) !== undefined ? "; the last good value stays in force" : "";
        this.opts.onError?.({ source, key: event.key, origin: event.value.origin, message: `${(e as Error).message}${kept}` });
        return undefined;
      }
      this.reportWarnings(source, event.key, event.value, parsed.warnings);
      value = parsed.value;
    }
    const before = this.effective(path);
    this.setSourceValue(source, path, value);
    const after = this.effective(path);
    if (path.kind === "route") {
      if (sameValue(before, after)) return undefined;
      if (after) this.routes.set(path.route, after as Route);
      else this.routes.delete(path.route);
      return { kind: "route", route: path.route, before: before as Route | undefined, after: after as Route | undefined };
    }
    this.place(path, after);
    if (sameValue(before, after)) return undefined;
    // A service's keys come one after another in a full read: one (read-only) change object for the run.
    if (this.lastChange?.service !== path.service) this.lastChange = { kind: "service", service: path.service };
    return this.lastChange;
  }

  /** The weight an intermediate host published for a backend behind its route (undefined: none). */
  publishedWeight(route: string, service: string, backend: string): number | undefined {
    return this.health.size === 0 ? undefined : this.health.get(healthKey(route, service, backend));
  }

  private applyHealth(event: KeyEvent, path: KeyPath & { kind: "health" }): Change | undefined {
    const id = event.key;
    const before = this.health.get(id);
    if (event.value === null) {
      this.warned.etcd.delete(event.key);
      if (before === undefined) return undefined;
      this.health.delete(id);
    } else {
      let weight: number;
      try {
        const parsed = parseHealthRecord(event.value.text, event.value.format);
        this.reportWarnings("etcd", event.key, event.value, parsed.warnings);
        weight = parsed.value.weight;
      } catch (e) {
        this.warned.etcd.delete(event.key);
        const kept = before !== undefined ? "; the last good value stays in force" : "";
        this.opts.onError?.({ source: "etcd", key: event.key, origin: event.value.origin, message: `${(e as Error).message}${kept}` });
        return undefined;
      }
      if (weight === before) return undefined;
      this.health.set(id, weight);
    }
    if (this.lastChange?.service !== path.service) this.lastChange = { kind: "service", service: path.service };
    return this.lastChange;
  }

  /**
   * A value's warnings are reported once per value: not again when the same text comes back (an
   * etcd put of the same value, a full re-read), but again once it has changed.
   */
  private reportWarnings(source: SourceName, key: string, raw: RawValue, warnings: string[]): void {
    const warned = this.warned[source];
    if (warnings.length === 0) {
      if (warned.size > 0) warned.delete(key);
    } else if (warned.get(key) !== raw.text) {
      warned.set(key, raw.text);
      for (const w of warnings) this.opts.onWarning?.({ source, key, origin: raw.origin, message: w });
    }
  }

  /** Replaces everything a source had with a complete snapshot; returns the merged changes. */
  snapshot(source: SourceName, entries: Map<string, RawValue>): Change[] {
    const changes: Change[] = [];
    for (const e of this.snapshotEvents(source, entries)) {
      if (!e) continue;
      const c = this.apply(source, e);
      if (c) changes.push(c);
    }
    return changes;
  }

  /**
   * A snapshot as the key events that apply it (deletions first), produced as they are applied:
   * for a caller that applies a large one a slice at a time (docs/config.md §4). `undefined`: no
   * event, a chance to pause (the search for deletions in a large unchanged snapshot finds none:
   * 110,000 keys held the event loop 40-90 ms on the bench's machine). A snapshot in
   * parts (SourceSink.snapshot's `part`): each part's keys are puts; the last part deletes the
   * keys the source had before the first part and that no part has given again.
   */
  *snapshotEvents(source: SourceName, entries: Map<string, RawValue>, part?: SnapshotPart): Generator<KeyEvent | undefined, void, void> {
    if (part === undefined) {
      this.unseen[source] = undefined; // a whole snapshot: parts left unfinished are replaced too
      let kept = 0;
      for (const key of this.keys(source)) {
        if (!entries.has(key)) yield { key, value: null };
        else if (++kept % SCAN_PAUSE === 0) yield undefined;
      }
      for (const [key, value] of entries) yield { key, value };
      return;
    }
    // A source's first read has nothing to delete: no key is remembered then.
    const unseen = (this.unseen[source] ??= new Set(this.keys(source)));
    for (const [key, value] of entries) {
      if (unseen.size > 0) unseen.delete(key);
      yield { key, value };
    }
    if (part === "more") return;
    this.unseen[source] = undefined;
    for (const key of unseen) yield { key, value: null };
  }

  /**
   * Every key a source has a value for (made from the names: the full keys are not kept), one at a
   * time: a snapshot's deletions are applied while they are looked for (a Map's iteration skips
   * what is deleted meanwhile; a service's backends are a CompactMap, whose iteration is a snapshot).
   */
  private *keys(source: SourceName): Generator<string, void, void> {
    const { services, routes } = this.sources[source];
    for (const [name, svc] of services) {
      if (svc.frontend) yield frontendKey(name);
      for (const backend of svc.backends.keys()) yield backendKey(name, backend);
    }
    for (const name of routes.keys()) yield routeKey(name);
    if (source === "etcd") yield* this.health.keys();
  }

  private sourceValue(source: SourceName, path: KeyPath): Value | undefined {
    const { services, routes } = this.sources[source];
    if (path.kind === "route") return routes.get(path.route);
    const svc = services.get(path.service);
    return path.kind === "frontend" ? svc?.frontend : svc?.backends.get(path.backend);
  }

  /** Sets (undefined: deletes) a source's value; a source's service without values is dropped. */
  private setSourceValue(source: SourceName, path: KeyPath, value: Value | undefined): void {
    const { services, routes } = this.sources[source];
    if (path.kind === "route") {
      if (value) routes.set(path.route, value as Route);
      else routes.delete(path.route);
      return;
    }
    let svc = services.get(path.service);
    if (!svc) {
      if (!value) return;
      services.set(path.service, (svc = { backends: new CompactMap() }));
    }
    if (path.kind === "frontend") svc.frontend = value as Frontend | undefined;
    else if (value) svc.backends.set(path.backend, value as Backend);
    else svc.backends.delete(path.backend);
    if (!svc.frontend && svc.backends.size === 0) services.delete(path.service);
  }

  /** The value in force for a key: the local one when there is one, else etcd's. */
  private effective(path: KeyPath): Value | undefined {
    const local = this.sourceValue("local", path);
    if (local) return local;
    if (path.kind === "route" && this.opts.filterEtcdRoutes) return undefined;
    return this.sourceValue("etcd", path);
  }

  /**
   * Keeps the merged view of a service after one of its keys changed (`after`: that key's value in
   * force): the source's own object while only one source has the service, else a merged object.
   */
  private place(path: Extract<KeyPath, { kind: "frontend" | "backend" }>, after: Value | undefined): void {
    const local = this.sources.local.services.get(path.service);
    const etcd = this.sources.etcd.services.get(path.service);
    const merged = this.services.get(path.service);
    if (!local || !etcd) {
      const only = local ?? etcd;
      if (!only) this.services.delete(path.service);
      else if (merged !== only) this.services.set(path.service, only);
      return;
    }
    if (merged && merged !== local && merged !== etcd) {
      if (path.kind === "frontend") merged.frontend = after as Frontend | undefined;
      else if (after) merged.backends.set(path.backend, after as Backend);
      else merged.backends.delete(path.backend);
      return;
    }
    // Both sources have it now: a merged object of its own.
    const m: MergedService = { frontend: local.frontend ?? etcd.frontend, backends: new CompactMap(etcd.backends) };
    for (const [name, b] of local.backends) m.backends.set(name, b);
    this.services.set(path.service, m);
  }
}
