// The desired IPVS table (docs/config.md §2, §4): services per (frontend, family, protocol),
// destinations from backends through the route table, summed weights for backends that end on
// the same destination. compileService is a pure function of one config service; DesiredTable
// keeps the compiled result per config service so that one changed key recomputes one service.
// Health checks: a backend's check (its own, else its frontend's) applies to the destinations it
// programs itself (no gateway; filtered backends have none); their weights come through the
// `weight` lookup (the health checker's, in the daemon), and merged destinations sum those.
// A backend sent to a route's gateway is weighted by what the gateway host published for it
// (the `published` lookup: health/ROUTE/SERVICE/BACKEND in etcd, src/health/publish.ts), never
// more than its configured weight; without a record, by its configured weight.

import type { MergedService } from "../config/store.ts";
import { MAX_WEIGHT, type Backend, type Frontend, type Route } from "../config/values.ts";
import { resolveCheck, targetKey, type CheckSpec } from "../health/check-config.ts";
import {
  SVC_F_PERSISTENT,
  destKeyString,
  serviceKeyString,
  type Dest,
  type Family,
  type FwdMethod,
  type Protocol,
  type Service,
  type Table,
  type TableEntry,
} from "../ipvs/types.ts";
import { RouteIndex, routeCovers } from "./routes.ts";
import { runSync, type Steps } from "../util/slices.ts";
import { CompactMap } from "../util/compact-map.ts";

export interface DesiredEntry extends TableEntry {
  /** The config service that describes it. */
  owner: string;
  /** The health-checked backends in its destinations (absent: none). */
  checks?: CheckedDest[];
}

/** A backend destination checked by this host: its check against its own address and port. */
export interface CheckedDest {
  /** targetKey: one checker per address:port:check, however many backends share it. */
  key: string;
  address: string;
  /** The destination's port (the check's own port, if any, wins over it when probing). */
  destPort: number;
  spec: CheckSpec;
  backend: string;
  /** destKeyString of the destination whose weight it is part of. */
  dest: string;
}

/** The weight in force for a checked destination of `configured` weight (the health checker's). */
export type WeightOf = (targetKey: string, configured: number) => number;

/** A compiled entry, with the names of the backends in each destination when asked for (not kept in the table). */
export interface CompiledEntry extends DesiredEntry {
  /** Destination key → the config backends merged into it (for logs and metrics labels). */
  backendsByDest?: Map<string, string[]>;
}

export interface DesiredOptions {
  defaultMethod: "masq" | "droute" | "tunnel";
  scheduler: string;
  elide: boolean;
  /** Health-adjusted weights of checked destinations; absent = the configured weights (no checks run). */
  weight?: WeightOf;
  /** The weight the host behind route `route` published for a backend (undefined: none, the configured weight). */
  published?: (route: string, service: string, backend: string) => number | undefined;
}

export const DEFAULT_DESIRED_OPTIONS: DesiredOptions = { defaultMethod: "masq", scheduler: "wlc", elide: false };

export type Warn = (message: string, fields: Record<string, string | number>) => void;

const FAMILIES: [Family, "ipv4" | "ipv6"][] = [
  ["inet", "ipv4"],
  ["inet6", "ipv6"],
];
/** The protocols a frontend and its backends give ports for (not SCTP). */
const PROTOCOLS = ["tcp", "udp"] as const;

const byName = <T>(m: Map<string, T>): [string, T][] => [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));

/** Destination key → the first backend (by name) in it: scratch for one IPVS service at a time. */
const FIRST = new Map<string, string>();

/**
 * Compiles one config service into its IPVS services; `withNames` adds each destination's backend
 * names. Pure, apart from the warn callback.
 */
export function compileService(
  name: string,
  svc: MergedService,
  routes: RouteIndex,
  opts: DesiredOptions,
  warn: Warn = () => {},
  withNames = false,
): CompiledEntry[] {
  const fe = svc.frontend;
  if (!fe) return [];
  const out: CompiledEntry[] = [];
  const backends = byName(svc.backends);
  for (const [family, addrKey] of FAMILIES) {
    const vip = fe[addrKey];
    if (!vip) continue;
    for (const protocol of PROTOCOLS) {
      const port = fe[protocol];
      if (!port) continue;
      const service = frontendService(fe, family, protocol, vip, port, opts);
      const entry = compileDests({ name, service, addrKey, protocol, frontendCheck: fe.check, routes, opts, warn }, backends, withNames);
      if (!(opts.elide && entry.dests.size === 0)) out.push(entry);
    }
  }
  return out;
}

/** The IPVS service a frontend describes for one family and protocol. */
function frontendService(fe: Frontend, family: Family, protocol: Protocol, address: string, port: number, opts: DesiredOptions): Service {
  return {
    family,
    protocol,
    address,
    port,
    scheduler: fe.scheduler ?? opts.scheduler,
    flags: fe.persistent > 0 ? SVC_F_PERSISTENT : 0,
    timeout: fe.persistent,
    netmask: family === "inet" ? 32 : 128,
  };
}

/** One IPVS service being compiled, and what compiling its destinations needs. */
interface ServiceContext {
  /** The config service. */
  name: string;
  service: Service;
  addrKey: "ipv4" | "ipv6";
  protocol: (typeof PROTOCOLS)[number];
  /** The frontend's check: its backends' checks when they have none of their own. */
  frontendCheck: Frontend["check"];
  routes: RouteIndex;
  opts: DesiredOptions;
  warn: Warn;
}

/** The service's entry: the destinations its backends give it, merged where they end on the same one. */
function compileDests(ctx: ServiceContext, backends: [string, Backend][], withNames: boolean): CompiledEntry {
  const entry: CompiledEntry = { service: ctx.service, dests: new CompactMap(), owner: ctx.name };
  if (withNames) entry.backendsByDest = new Map();
  FIRST.clear();
  for (const [backendName, b] of backends) {
    const placed = backendDest(ctx, backendName, b);
    if (!placed) continue;
    const key = destKeyString(placed.dest);
    if (placed.check) (entry.checks ??= []).push({ ...placed.check, backend: backendName, dest: key });
    mergeDest(ctx, entry, key, placed.dest, backendName);
  }
  return entry;
}

/**
 * Where one backend's share of the service goes: the backend itself, or its route's gateway,
 * at the weight in force (its health check's, or what the gateway host published), with its
 * check when this host checks it. Undefined: no address or port for the service, or filtered.
 */
function backendDest(ctx: ServiceContext, backendName: string, b: Backend): { dest: Dest; check?: Omit<CheckedDest, "backend" | "dest"> } | undefined {
  const { family, port } = ctx.service;
  const address = b[ctx.addrKey];
  const bport = b[ctx.protocol];
  if (!address || !bport) return undefined;
  const match = ctx.routes.lookup(family, address);
  const routeMethod = match?.route.method;
  if (routeMethod === "filter") return undefined;
  const method: FwdMethod = routeMethod ?? ctx.opts.defaultMethod;
  const gateway = family === "inet" ? match?.route.gateway4 : match?.route.gateway6;
  if (gateway) {
    // A gateway's destination is another tier's to check: only our own destinations are.
    const weight = gatewayWeight(ctx.opts, match!.name, ctx.name, backendName, b.weight);
    return { dest: { address: gateway, port, method, weight, upperThreshold: 0, lowerThreshold: 0 } };
  }
  const spec = resolveCheck(ctx.frontendCheck, b.check);
  // UDP has no connect to test: a UDP destination is checked only through a check's own port.
  const checked = spec && (ctx.protocol !== "udp" || spec.port !== undefined) ? spec : undefined;
  const tkey = checked && targetKey(address, bport, checked);
  const weight = tkey && ctx.opts.weight ? ctx.opts.weight(tkey, b.weight) : b.weight;
  if ((method === "droute" || method === "tunnel") && bport !== port) {
    ctx.warn(`${method} cannot change the port: traffic arrives on the frontend port`, {
      service: ctx.name,
      backend: backendName,
      port: bport,
      frontendPort: port,
    });
  }
  const dest: Dest = { address, port: bport, method, weight, upperThreshold: 0, lowerThreshold: 0 };
  return tkey ? { dest, check: { key: tkey, address, destPort: bport, spec: checked! } } : { dest };
}

/** Adds a backend's destination to the entry, or its weight to the destination it shares with earlier backends. */
function mergeDest(ctx: ServiceContext, entry: CompiledEntry, key: string, dest: Dest, backendName: string): void {
  const merged = entry.dests.get(key);
  if (!merged) {
    entry.dests.set(key, dest);
    FIRST.set(key, backendName);
    entry.backendsByDest?.set(key, [backendName]);
    return;
  }
  entry.backendsByDest?.get(key)!.push(backendName);
  const sum = merged.weight + dest.weight;
  if (sum > MAX_WEIGHT) {
    ctx.warn("summed weight exceeds the IPVS maximum; clamped", { service: ctx.name, dest: key, weight: sum });
  }
  merged.weight = Math.min(sum, MAX_WEIGHT);
  if (merged.method !== dest.method) {
    ctx.warn("backends merged onto one destination have different methods; the first by name wins", {
      service: ctx.name,
      dest: key,
      kept: `${FIRST.get(key)}:${merged.method}`,
      ignored: `${backendName}:${dest.method}`,
    });
  }
}

/** A gateway destination's share for one backend: the published weight when there is one, at most the configured one. */
function gatewayWeight(opts: DesiredOptions, route: string, service: string, backend: string, configured: number): number {
  const published = opts.published?.(route, service, backend);
  return published === undefined ? configured : Math.min(published, configured);
}

/** Compiles a whole config at once: what the incremental DesiredTable must always equal (the tests compare them). */
export function compileAll(
  services: Map<string, MergedService>,
  routes: Map<string, Route>,
  opts: DesiredOptions,
  warn?: Warn,
): Table {
  const t = new DesiredTable(opts, warn);
  t.rebuild(services, routes);
  return t.table;
}

/**
 * The desired table, kept up to date incrementally. Two config services that describe the same
 * IPVS service (same family, protocol, VIP and port) conflict: the one whose name sorts first
 * wins, and the conflict is logged.
 */
export class DesiredTable {
  /** IPVS service key → entry (the winner among config services). */
  readonly table = new Map<string, DesiredEntry>();
  private readonly compiled = new Map<string, DesiredEntry[]>();
  /** IPVS service key → the config services that describe it, sorted (the first one wins). */
  private readonly claims = new Map<string, string[]>();
  private routes = new RouteIndex([]);
  /** The config services last given (the store's live map), for backendsByDest(). */
  private services = new Map<string, MergedService>();
  /** Config service → its checked destinations ("key backend" lines, to see a change), only services with some. */
  private checkSigs = new Map<string, string>();
  /** Health-check target key → the config services whose weights depend on it. */
  private checkUsers = new Map<string, Set<string>>();
  /** Bumped whenever the set of checked destinations (or who uses them) changes. */
  checksVersion = 0;

  constructor(
    private readonly opts: DesiredOptions,
    private readonly warn: Warn = () => {},
  ) {}

  /** Recomputes everything; returns the IPVS keys whose desired state may have changed. */
  rebuild(services: Map<string, MergedService>, routes: Map<string, Route>): Set<string> {
    this.routes = new RouteIndex(routes);
    this.services = services;
    const changed = new Set<string>(this.table.keys());
    for (const name of [...this.compiled.keys()]) if (!services.has(name)) this.recompute(name, undefined, changed);
    for (const [name, svc] of services) this.recompute(name, svc, changed);
    return changed;
  }

  /**
   * Recomputes the named config services; returns the changed IPVS keys. `quiet`: no config
   * warnings (a recompute for a health change: the config did not change, its warnings were given).
   */
  updateServices(names: Iterable<string>, services: Map<string, MergedService>, quiet = false): Set<string> {
    this.services = services;
    const changed = new Set<string>();
    for (const name of names) this.recompute(name, services.get(name), changed, quiet);
    return changed;
  }

  /** The config services whose weights depend on these health-check targets. */
  servicesChecking(keys: Iterable<string>): Set<string> {
    const names = new Set<string>();
    for (const k of keys) for (const n of this.checkUsers.get(k) ?? []) names.add(n);
    return names;
  }

  /** Every checked destination, with the config service and backend it belongs to (the health checker's input). */
  *checkTargets(): IterableIterator<{ address: string; destPort: number; spec: CheckSpec; users: { service: string; backend: string }[] }> {
    for (const name of this.checkSigs.keys()) {
      for (const e of this.compiled.get(name) ?? []) {
        for (const c of e.checks ?? []) yield { address: c.address, destPort: c.destPort, spec: c.spec, users: [{ service: name, backend: c.backend }] };
      }
    }
  }

  /**
   * Applies route changes: every backend that the old or the new version of a changed route
   * covers is re-evaluated, at once.
   */
  updateRoutes(
    changes: { before?: Route; after?: Route }[],
    services: Map<string, MergedService>,
    routes: Map<string, Route>,
  ): Set<string> {
    return this.updateServices(runSync(this.routesChangedSteps(changes, services, routes)), services);
  }

  /**
   * Takes the new route table and finds the config services a route change touches (a backend
   * the old or the new route covers), a few services at a time: the caller recompiles them (in
   * slices too, with updateServices).
   */
  *routesChangedSteps(
    changes: { before?: Route; after?: Route }[],
    services: Map<string, MergedService>,
    routes: Map<string, Route>,
  ): Steps<string[]> {
    this.routes = new RouteIndex(routes);
    this.services = services;
    const touched = changes.flatMap((c) => [c.before, c.after]).filter((r): r is Route => !!r);
    const affected: string[] = [];
    let n = 0;
    for (const [name, svc] of services) {
      if ((++n & 255) === 0) yield;
      if (!svc.frontend) continue;
      const hit = [...svc.backends.values()].some((b) =>
        touched.some((r) => (b.ipv4 && routeCovers(r, "inet", b.ipv4)) || (b.ipv6 && routeCovers(r, "inet6", b.ipv6))),
      );
      if (hit) affected.push(name);
    }
    return affected;
  }

  /**
   * Destination key → the config backends merged into it, for one IPVS service (metrics labels):
   * compiled again from its config service on demand rather than kept for every destination.
   */
  backendsByDest(key: string): Map<string, string[]> | undefined {
    const entry = this.table.get(key);
    const svc = entry && this.services.get(entry.owner);
    if (!svc) return undefined;
    return compileService(entry.owner, svc, this.routes, this.opts, () => {}, true).find((e) => serviceKeyString(e.service) === key)?.backendsByDest;
  }

  private recompute(name: string, svc: MergedService | undefined, changed: Set<string>, quiet = false): void {
    const before = this.compiled.get(name);
    const after: DesiredEntry[] = svc ? compileService(name, svc, this.routes, this.opts, quiet ? () => {} : this.warn) : [];
    if (after.length) this.compiled.set(name, after);
    else this.compiled.delete(name);
    this.indexChecks(name, after);
    // A config service has one to four IPVS services: arrays, not a map and a set per service.
    const afterKeys = after.map((e) => serviceKeyString(e.service));
    after.forEach((e, i) => this.claim(afterKeys[i]!, name, e, changed));
    for (const e of before ?? []) {
      const key = serviceKeyString(e.service);
      if (!afterKeys.includes(key)) this.claim(key, name, undefined, changed);
    }
  }

  /** Keeps checkUsers and checksVersion up to date with the checked destinations of one config service. */
  private indexChecks(name: string, entries: DesiredEntry[]): void {
    const had = this.checkSigs.get(name);
    if (had === undefined && !entries.some((e) => e.checks)) return; // the common case: no checks before or now
    const lines = entries.flatMap((e) => (e.checks ?? []).map((c) => `${c.key}\n${c.backend}`));
    const sig = lines.join("\n");
    if (sig === (had ?? "")) return;
    this.checksVersion++;
    if (had) for (const k of had.split("\n").filter((_, i) => i % 2 === 0)) this.unuse(k, name);
    if (lines.length === 0) return void this.checkSigs.delete(name);
    this.checkSigs.set(name, sig);
    for (const e of entries) for (const c of e.checks ?? []) {
      let users = this.checkUsers.get(c.key);
      if (!users) this.checkUsers.set(c.key, (users = new Set()));
      users.add(name);
    }
  }

  private unuse(key: string, name: string): void {
    const users = this.checkUsers.get(key);
    users?.delete(name);
    if (users?.size === 0) this.checkUsers.delete(key);
  }

  /** Records that config service `name` describes IPVS service `key` as `entry` (undefined: no longer). */
  private claim(key: string, name: string, entry: DesiredEntry | undefined, changed: Set<string>): void {
    const had = this.claims.get(key) ?? [];
    const claim = entry ? (had.includes(name) ? had : [...had, name].sort()) : had.filter((n) => n !== name);
    changed.add(key);
    if (claim.length === 0) {
      this.claims.delete(key);
      this.table.delete(key);
      return;
    }
    if (claim !== had) this.claims.set(key, claim);
    const winner = claim[0]!;
    if (claim.length > 1 && entry) {
      this.warn("two config services describe the same IPVS service; the first by name wins", {
        service: key,
        winner,
        others: claim.slice(1).join(","),
      });
    }
    this.table.set(key, winner === name ? entry! : this.compiled.get(winner)!.find((e) => serviceKeyString(e.service) === key)!);
  }
}
