// An independent model of the IPVS table that a config describes, written from the rules in
// docs/config.md ("The config tree" and the decisions where the spec is silent), not from src/:
// the property tests compare the product against it. Plain data in, plain sorted data out; it
// favours being obviously right over being fast.
import ipaddr from "ipaddr.js";

export interface ModelFrontend {
  ipv4?: string;
  ipv6?: string;
  tcp?: number;
  udp?: number;
  scheduler?: string;
  persistent?: number;
}

export interface ModelBackend {
  ipv4?: string;
  ipv6?: string;
  tcp?: number;
  udp?: number;
  /** Absent = 10. */
  weight?: number;
}

export interface ModelRoute {
  /** "ADDRESS/LENGTH"; host bits may be set. */
  prefix4?: string;
  prefix6?: string;
  gateway4?: string;
  gateway6?: string;
  /** Absent = the default method. */
  method?: "masq" | "droute" | "tunnel" | "filter";
}

export interface ModelService {
  frontend?: ModelFrontend;
  backends: Record<string, ModelBackend>;
}

export interface ModelConfig {
  services: Record<string, ModelService>;
  routes: Record<string, ModelRoute>;
}

export interface ModelOptions {
  defaultMethod: "masq" | "droute" | "tunnel";
  scheduler: string;
  elide: boolean;
}

export interface ModelDest {
  address: string;
  port: number;
  method: "masq" | "droute" | "tunnel";
  weight: number;
}

/** One IPVS service as ipvsadm would list it; `key` is the model's own identity string. */
export interface ModelEntry {
  key: string;
  family: "inet" | "inet6";
  protocol: "tcp" | "udp";
  address: string;
  port: number;
  scheduler: string;
  /** Seconds of persistence; 0 = none. */
  persistent: number;
  /** Sorted by address, then port. */
  dests: ModelDest[];
}

export const MAX_WEIGHT = 2147483647;

export const entryKey = (family: string, protocol: string, address: string, port: number) => `${family}|${protocol}|${address}|${port}`;

/** Canonical address text (what ipvsadm prints): compact lowercase IPv6, dotted IPv4. */
export const canonical = (address: string) => ipaddr.parse(address).toString();

function toBits(address: string): bigint {
  let n = 0n;
  for (const b of ipaddr.parse(address).toByteArray()) n = (n << 8n) | BigInt(b);
  return n;
}

/** Does "ADDRESS/LENGTH" contain `address` (same family)? */
function contains(prefix: string, address: string, width: number): boolean {
  const [net, len] = prefix.split("/") as [string, string];
  const drop = BigInt(width - Number(len));
  return toBits(net) >> drop === toBits(address) >> drop;
}

/**
 * The route for a backend address: of the routes that match, the longest prefix; a tie goes to
 * the name that sorts first. A route with no prefix at all matches every address at length 0.
 */
export function routeFor(routes: Record<string, ModelRoute>, v6: boolean, address: string): { name: string; route: ModelRoute } | undefined {
  let best: { name: string; route: ModelRoute; length: number } | undefined;
  for (const [name, route] of Object.entries(routes)) {
    const prefix = v6 ? route.prefix6 : route.prefix4;
    let length: number;
    if (prefix) {
      if (!contains(prefix, address, v6 ? 128 : 32)) continue;
      length = Number(prefix.split("/")[1]);
    } else if (!route.prefix4 && !route.prefix6) {
      length = 0;
    } else {
      continue;
    }
    if (!best || length > best.length || (length === best.length && name < best.name)) best = { name, route, length };
  }
  return best && { name: best.name, route: best.route };
}

const byAddressPort = (a: ModelDest, b: ModelDest) => (a.address < b.address ? -1 : a.address > b.address ? 1 : a.port - b.port);

/** The IPVS services one config service describes (before conflicts between config services). */
function describe(svc: ModelService, routes: Record<string, ModelRoute>, opts: ModelOptions): ModelEntry[] {
  const fe = svc.frontend;
  if (!fe) return [];
  const out: ModelEntry[] = [];
  const names = Object.keys(svc.backends).sort();
  for (const v6 of [false, true]) {
    const vip = v6 ? fe.ipv6 : fe.ipv4;
    if (!vip) continue;
    for (const protocol of ["tcp", "udp"] as const) {
      const port = fe[protocol];
      if (!port) continue;
      // Destination "address:port" → the dest and the name of the first backend (by name) on it.
      const dests = new Map<string, ModelDest>();
      for (const name of names) {
        const b = svc.backends[name]!;
        const address = v6 ? b.ipv6 : b.ipv4;
        const bport = b[protocol];
        if (!address || !bport) continue;
        const route = routeFor(routes, v6, address)?.route;
        if (route?.method === "filter") continue;
        const method = route?.method ?? opts.defaultMethod;
        const gateway = v6 ? route?.gateway6 : route?.gateway4;
        const dest: ModelDest = gateway ? { address: gateway, port, method, weight: b.weight ?? 10 } : { address, port: bport, method, weight: b.weight ?? 10 };
        const id = `${dest.address}#${dest.port}`;
        const seen = dests.get(id);
        // Merged: weights summed (clamped); the first backend by name keeps its method.
        if (seen) seen.weight = Math.min(MAX_WEIGHT, seen.weight + dest.weight);
        else dests.set(id, dest);
      }
      if (opts.elide && dests.size === 0) continue;
      out.push({
        key: entryKey(v6 ? "inet6" : "inet", protocol, vip, port),
        family: v6 ? "inet6" : "inet",
        protocol,
        address: vip,
        port,
        scheduler: fe.scheduler ?? opts.scheduler,
        persistent: fe.persistent ?? 0,
        dests: [...dests.values()].sort(byAddressPort),
      });
    }
  }
  return out;
}

/** The whole desired table, sorted by key. Two config services on one IPVS service: the first by name describes it. */
export function modelTable(cfg: ModelConfig, opts: ModelOptions): ModelEntry[] {
  const table = new Map<string, ModelEntry>();
  for (const name of Object.keys(cfg.services).sort()) {
    for (const e of describe(cfg.services[name]!, cfg.routes, opts)) if (!table.has(e.key)) table.set(e.key, e);
  }
  return [...table.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

const METHOD_NAME = { masq: "Masq", droute: "Route", tunnel: "Tunnel" } as const;
const hostPort = (a: string, p: number) => (a.includes(":") ? `[${a}]:${p}` : `${a}:${p}`);

/**
 * The table as `ipvsadm -Ln` shows it with no traffic, one string per service ("TCP VIP:PORT
 * sched [persistent N]" and "-> ADDR:PORT Method Weight 0 0" lines, spaces folded), in the
 * layout of test/support/kernel.ts's blocks() before its sorting.
 */
export function ipvsadmLines(table: ModelEntry[]): string[] {
  const lines: string[] = [];
  for (const e of table) {
    lines.push(`${e.protocol.toUpperCase()} ${hostPort(e.address, e.port)} ${e.scheduler}${e.persistent ? ` persistent ${e.persistent}` : ""}`);
    for (const d of e.dests) lines.push(`-> ${hostPort(d.address, d.port)} ${METHOD_NAME[d.method]} ${d.weight} 0 0`);
  }
  return lines;
}
