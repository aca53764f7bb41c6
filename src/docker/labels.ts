// Container → backends (docs/config.md §6). Pure: the relevant part of a `docker inspect` result in,
// the backend values per service out, plus warnings that name the container and the label.
//
// Labels (Config.Labels already merges the image's labels with the container's own):
//   net.qmsk.clusterf.service=NAME [NAME…]        the services this container is a backend of
//   net.qmsk.clusterf.backend.tcp=PORT            port of every service (…udp likewise)
//   net.qmsk.clusterf.backend:NAME.tcp=PORT       port of service NAME; wins over the generic one
//   net.qmsk.clusterf.backend.weight=N            weight of every service (default 10)
//   net.qmsk.clusterf.backend:NAME.weight=N       weight of service NAME
// A port must be exposed by the container (Config.ExposedPorts: EXPOSE, --expose or -p).
// A bad label skips only what it describes: that port (or that service, when no port is left),
// never the container's other services.

import { absoluteKey, backendKey, nameProblem } from "../config/keys.ts";
import { DEFAULT_WEIGHT, MAX_WEIGHT, parseIPv4, parseIPv6, type Backend } from "../config/values.ts";

export const LABEL_SERVICE = "net.qmsk.clusterf.service";
export const LABEL_PREFIX = "net.qmsk.clusterf.backend";

/** The fields of Docker's container inspect that matter here (a structural subset of dockerode's type). */
export interface ContainerInspect {
  Id: string;
  Name?: string;
  Config?: {
    Labels?: Record<string, string> | null;
    ExposedPorts?: Record<string, unknown> | null;
  } | null;
  State?: {
    Status?: string;
    Running?: boolean;
    Paused?: boolean;
    Restarting?: boolean;
    Health?: { Status?: string } | null;
  } | null;
  NetworkSettings?: {
    Networks?: Record<string, { IPAddress?: string; GlobalIPv6Address?: string } | null> | null;
    Ports?: Record<string, { HostIp?: string; HostPort?: string }[] | null> | null;
  } | null;
}

export interface BackendOptions {
  /** -docker-network: the network whose address is published; "" = the container's only one. */
  network?: string;
  /** -backend-published: the host's addresses, with the published host ports. */
  published?: { ipv4?: string; ipv6?: string };
  /** The daemon saw a stopping kill (TERM/KILL/INT/QUIT) for this container: drain it. */
  draining?: boolean;
}

export interface ContainerBackends {
  /** service name → backend value; empty when the container is not (or no longer) a backend. */
  backends: Map<string, Backend>;
  warnings: string[];
  /** Why the weight is 0 when it is ("paused", "unhealthy", …); undefined at the label weight. */
  drained?: string;
}

/** A whole decimal number in min…max, or undefined. */
function decimal(text: string, min: number, max: number): number | undefined {
  const t = text.trim();
  if (!/^\d{1,10}$/.test(t)) return undefined;
  const n = Number(t);
  return n >= min && n <= max ? n : undefined;
}

function shortId(id: string): string {
  return id.slice(0, 12);
}

/** "container 0123456789ab (name)" for messages. */
export function describeContainer(c: Pick<ContainerInspect, "Id" | "Name">): string {
  const name = c.Name?.replace(/^\//, "");
  return `container ${shortId(c.Id)}${name ? ` (${name})` : ""}`;
}

/** The services a container names in its labels, in label order, duplicates dropped. */
export function serviceNames(labels: Record<string, string>): string[] {
  const text = labels[LABEL_SERVICE];
  if (text === undefined) return [];
  return [...new Set(text.split(/\s+/).filter((s) => s !== ""))];
}

/** Is the container labelled as a backend at all (valid or not)? */
export function isLabelled(c: ContainerInspect): boolean {
  return serviceNames(c.Config?.Labels ?? {}).length > 0;
}

type Proto = "tcp" | "udp";

/** What the steps below share: the container's labels, its name for messages, and the warnings so far. */
interface LabelContext {
  who: string;
  labels: Record<string, string>;
  exposed: Record<string, unknown>;
  warnings: string[];
}

/** The addresses a container's backends get (at least one). */
interface BackendAddress {
  ipv4?: string;
  ipv6?: string;
  /** -backend-published: the host's addresses, with the host ports the container's ports are published on. */
  published: boolean;
  bindings: Record<string, { HostIp?: string; HostPort?: string }[] | null>;
}

/** A service's ports, and the families that can carry them all. */
interface ServicePorts {
  ports: Partial<Record<Proto, number>>;
  v4: boolean;
  v6: boolean;
}

const genericLabel = (what: string) => `${LABEL_PREFIX}.${what}`;
const serviceLabel = (service: string, what: string) => `${LABEL_PREFIX}:${service}.${what}`;

/** The label that sets `what` for a service: its own, else the generic one, else none. */
function labelFor(labels: Record<string, string>, service: string, what: string): string | undefined {
  if (labels[serviceLabel(service, what)] !== undefined) return serviceLabel(service, what);
  return labels[genericLabel(what)] !== undefined ? genericLabel(what) : undefined;
}

/**
 * The backends a container stands for now. A container that is not running has none (its keys
 * are removed); a running one that is paused, unhealthy, still starting its health check, or
 * being stopped has weight 0 (drain).
 */
export function containerBackends(c: ContainerInspect, opts: BackendOptions = {}): ContainerBackends {
  const backends = new Map<string, Backend>();
  const labels = c.Config?.Labels ?? {};
  const ctx: LabelContext = { who: describeContainer(c), labels, exposed: c.Config?.ExposedPorts ?? {}, warnings: [] };
  const state = c.State ?? {};
  const services = !state.Running || state.Restarting ? [] : validServices(labels, ctx);
  const address = services.length === 0 ? undefined : backendAddress(c, opts, ctx);
  if (!address) return { backends, warnings: ctx.warnings };
  const drained = drainReason(state, opts.draining);
  for (const service of services) {
    const ports = servicePorts(service, address, ctx);
    if (!ports) continue;
    const weight = labelWeight(service, ctx);
    const b: Backend = { weight: drained ? 0 : weight };
    if (ports.v4) b.ipv4 = address.ipv4;
    if (ports.v6) b.ipv6 = address.ipv6;
    if (!b.ipv4 && !b.ipv6) continue; // warned by servicePorts
    if (ports.ports.tcp !== undefined) b.tcp = ports.ports.tcp;
    if (ports.ports.udp !== undefined) b.udp = ports.ports.udp;
    backends.set(service, b);
  }
  return { backends, warnings: ctx.warnings, drained: backends.size ? drained : undefined };
}

/** The services the labels name that clusterf-ipvs accepts as key names (the others are warned about). */
function validServices(labels: Record<string, string>, ctx: LabelContext): string[] {
  const services: string[] = [];
  for (const name of serviceNames(labels)) {
    // The readers' own rule for a key name (clusterf-ipvs would skip the key otherwise).
    if (nameProblem(name) === undefined) services.push(name);
    else ctx.warnings.push(`${ctx.who}: label ${LABEL_SERVICE}: service name ${JSON.stringify(name)} is not a valid key name; skipped`);
  }
  return services;
}

/** The address: the container's own on its network, or the host's in published mode; undefined (warned): none. */
function backendAddress(c: ContainerInspect, opts: BackendOptions, ctx: LabelContext): BackendAddress | undefined {
  const bindings = c.NetworkSettings?.Ports ?? {};
  if (opts.published) return { ipv4: opts.published.ipv4 || undefined, ipv6: opts.published.ipv6 || undefined, published: true, bindings };
  const networks = c.NetworkSettings?.Networks ?? {};
  const net = chooseNetwork(networks, opts.network, ctx);
  if (net === undefined) return undefined;
  const settings = networks[net] ?? {};
  const address: BackendAddress = { published: false, bindings };
  try {
    address.ipv4 = parseIPv4(settings.IPAddress ?? "", "IPAddress");
  } catch {
    ctx.warnings.push(`${ctx.who}: network ${net}: IPv4 address ${JSON.stringify(settings.IPAddress)} is not valid; ignored`);
  }
  try {
    address.ipv6 = parseIPv6(settings.GlobalIPv6Address ?? "", "GlobalIPv6Address");
  } catch {
    ctx.warnings.push(`${ctx.who}: network ${net}: IPv6 address ${JSON.stringify(settings.GlobalIPv6Address)} is not valid; ignored`);
  }
  if (!address.ipv4 && !address.ipv6) {
    ctx.warnings.push(`${ctx.who}: no IP address on network ${net}: not published`);
    return undefined;
  }
  return address;
}

/** The network whose address is published: -docker-network, or the first by name (warned when there are several). */
function chooseNetwork(networks: Record<string, unknown>, wanted: string | undefined, ctx: LabelContext): string | undefined {
  const netNames = Object.keys(networks).sort();
  if (wanted) {
    if (networks[wanted]) return wanted;
    ctx.warnings.push(`${ctx.who}: not on the network ${JSON.stringify(wanted)} (-docker-network); on ${netNames.length ? netNames.join(", ") : "no network"}: not published`);
    return undefined;
  }
  if (netNames.length === 0) {
    ctx.warnings.push(`${ctx.who}: on no network: not published`);
    return undefined;
  }
  const net = netNames[0]!;
  if (netNames.length > 1) {
    ctx.warnings.push(`${ctx.who}: on several networks (${netNames.join(", ")}); publishing its address on ${net}; choose with -docker-network`);
  }
  return net;
}

/** Weight 0 (drain) for a container that is up but should get no new connections: why, or undefined. */
function drainReason(state: NonNullable<ContainerInspect["State"]>, stopping: boolean | undefined): string | undefined {
  const health = state.Health?.Status;
  if (state.Paused) return "paused";
  if (stopping) return "stopping";
  if (health === "unhealthy") return "unhealthy";
  if (health === "starting") return "health check starting";
  return undefined;
}

/** A service's tcp and udp ports from the labels; undefined (warned where it should be) when it has none. */
function servicePorts(service: string, address: BackendAddress, ctx: LabelContext): ServicePorts | undefined {
  const out: ServicePorts = { ports: {}, v4: !!address.ipv4, v6: !!address.ipv6 };
  for (const proto of ["tcp", "udp"] as const) {
    const label = labelFor(ctx.labels, service, proto);
    if (!label) continue;
    const port = labelPort(service, label, proto, ctx);
    if (port === undefined) continue;
    if (address.published) publishedPort(service, label, port, proto, address, out, ctx);
    else out.ports[proto] = port;
  }
  if (out.ports.tcp !== undefined || out.ports.udp !== undefined) return out;
  if (!labelFor(ctx.labels, service, "tcp") && !labelFor(ctx.labels, service, "udp")) {
    ctx.warnings.push(`${ctx.who}: service ${service}: no port label (${genericLabel("tcp")}, ${serviceLabel(service, "tcp")} or the udp ones); skipped`);
  }
  return undefined;
}

/** The port a label gives, checked; undefined (with a warning) when it is bad. */
function labelPort(service: string, label: string, proto: Proto, ctx: LabelContext): number | undefined {
  const text = ctx.labels[label]!;
  const port = decimal(text, 1, 65535);
  if (port === undefined) {
    ctx.warnings.push(`${ctx.who}: label ${label}=${JSON.stringify(text)}: not a port number (1-65535); service ${service} has no ${proto} port`);
    return undefined;
  }
  const dockerPort = `${port}/${proto}`;
  if (!Object.hasOwn(ctx.exposed, dockerPort)) {
    ctx.warnings.push(`${ctx.who}: label ${label}=${text}: port ${dockerPort} is not exposed by the container; service ${service} has no ${proto} port`);
    return undefined;
  }
  return port;
}

/**
 * In published mode: the host port of a container port goes into `out`. One backend has one port
 * per protocol for both families: the IPv4 binding decides, and an IPv6 binding to another host
 * port leaves IPv6 out.
 */
function publishedPort(service: string, label: string, port: number, proto: Proto, address: BackendAddress, out: ServicePorts, ctx: LabelContext): void {
  const bindings = address.bindings[`${port}/${proto}`] ?? [];
  const find = (accept: string[]) => {
    for (const b of bindings) {
      const hp = decimal(b.HostPort ?? "", 1, 65535);
      if (hp !== undefined && accept.includes(b.HostIp ?? "")) return hp;
    }
    return undefined;
  };
  const { ipv4, ipv6 } = address;
  const v4 = ipv4 ? find(["", "0.0.0.0", ipv4]) : undefined;
  const v6 = ipv6 ? find(["", "::", ipv6]) : undefined;
  if (v4 === undefined && v6 === undefined) {
    const on = [ipv4, ipv6].filter(Boolean).join(" or ");
    ctx.warnings.push(`${ctx.who}: label ${label}=${port}: port ${port}/${proto} is not published on the host address ${on}; service ${service} has no ${proto} port`);
    return;
  }
  const chosen = v4 ?? v6!;
  if (ipv4 && v4 === undefined) out.v4 = false;
  if (ipv6 && v6 !== chosen) {
    if (v6 !== undefined) ctx.warnings.push(`${ctx.who}: port ${port}/${proto} is published on different host ports for IPv4 and IPv6; service ${service} is published on IPv4 only`);
    out.v6 = false;
  }
  out.ports[proto] = chosen;
}

/** The weight the labels give a service (the default, with a warning, when the label is bad). */
function labelWeight(service: string, ctx: LabelContext): number {
  const label = labelFor(ctx.labels, service, "weight");
  if (!label) return DEFAULT_WEIGHT;
  const w = decimal(ctx.labels[label]!, 0, MAX_WEIGHT);
  if (w !== undefined) return w;
  ctx.warnings.push(`${ctx.who}: label ${label}=${JSON.stringify(ctx.labels[label])}: not a weight (0-${MAX_WEIGHT}); service ${service} gets the default weight ${DEFAULT_WEIGHT}`);
  return DEFAULT_WEIGHT;
}

/** The JSON text written to etcd for a backend: fixed key order, absent fields left out. */
export function backendJson(b: Backend): string {
  const o: Record<string, string | number> = {};
  if (b.ipv4) o.ipv4 = b.ipv4;
  if (b.ipv6) o.ipv6 = b.ipv6;
  if (b.tcp !== undefined) o.tcp = b.tcp;
  if (b.udp !== undefined) o.udp = b.udp;
  o.weight = b.weight;
  return JSON.stringify(o);
}

/**
 * The keys and values the containers stand for, under the prefix. Warnings are returned per
 * container so the caller can log each set once.
 */
export function desiredKeys(
  containers: Iterable<ContainerInspect>,
  prefix: string,
  opts: BackendOptions & { draining?: undefined; isDraining?: (id: string) => boolean } = {},
): { keys: Map<string, string>; warnings: Map<string, string[]> } {
  const keys = new Map<string, string>();
  const warnings = new Map<string, string[]>();
  for (const c of containers) {
    const r = containerBackends(c, { network: opts.network, published: opts.published, draining: opts.isDraining?.(c.Id) ?? false });
    if (r.warnings.length) warnings.set(c.Id, r.warnings);
    for (const [service, b] of r.backends) keys.set(absoluteKey(prefix, backendKey(service, c.Id)), backendJson(b));
  }
  return { keys, warnings };
}
