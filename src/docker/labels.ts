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

/**
 * The backends a container stands for now. A container that is not running has none (its keys
 * are removed); a running one that is paused, unhealthy, still starting its health check, or
 * being stopped has weight 0 (drain).
 */
export function containerBackends(c: ContainerInspect, opts: BackendOptions = {}): ContainerBackends {
  const backends = new Map<string, Backend>();
  const warnings: string[] = [];
  const labels = c.Config?.Labels ?? {};
  const who = describeContainer(c);
  const names = serviceNames(labels);
  if (names.length === 0) return { backends, warnings };
  const state = c.State ?? {};
  if (!state.Running || state.Restarting) return { backends, warnings };

  const services: string[] = [];
  for (const name of names) {
    // The readers' own rule for a key name (clusterf-ipvs would skip the key otherwise).
    if (nameProblem(name) === undefined) services.push(name);
    else warnings.push(`${who}: label ${LABEL_SERVICE}: service name ${JSON.stringify(name)} is not a valid key name; skipped`);
  }
  if (services.length === 0) return { backends, warnings };

  // The address: the container's own on its network, or the host's in published mode.
  let ipv4: string | undefined;
  let ipv6: string | undefined;
  const published = opts.published;
  if (published) {
    ipv4 = published.ipv4 || undefined;
    ipv6 = published.ipv6 || undefined;
  } else {
    const networks = c.NetworkSettings?.Networks ?? {};
    const netNames = Object.keys(networks).sort();
    let net: string | undefined;
    if (opts.network) {
      if (networks[opts.network]) net = opts.network;
      else {
        warnings.push(`${who}: not on the network ${JSON.stringify(opts.network)} (-docker-network); on ${netNames.length ? netNames.join(", ") : "no network"}: not published`);
        return { backends, warnings };
      }
    } else if (netNames.length === 0) {
      warnings.push(`${who}: on no network: not published`);
      return { backends, warnings };
    } else {
      net = netNames[0];
      if (netNames.length > 1) {
        warnings.push(`${who}: on several networks (${netNames.join(", ")}); publishing its address on ${net}; choose with -docker-network`);
      }
    }
    const settings = networks[net!] ?? {};
    try {
      ipv4 = parseIPv4(settings.IPAddress ?? "", "IPAddress");
    } catch {
      warnings.push(`${who}: network ${net}: IPv4 address ${JSON.stringify(settings.IPAddress)} is not valid; ignored`);
    }
    try {
      ipv6 = parseIPv6(settings.GlobalIPv6Address ?? "", "GlobalIPv6Address");
    } catch {
      warnings.push(`${who}: network ${net}: IPv6 address ${JSON.stringify(settings.GlobalIPv6Address)} is not valid; ignored`);
    }
    if (!ipv4 && !ipv6) {
      warnings.push(`${who}: no IP address on network ${net}: not published`);
      return { backends, warnings };
    }
  }

  const exposed = c.Config?.ExposedPorts ?? {};
  const portBindings = c.NetworkSettings?.Ports ?? {};

  // Weight 0 (drain) for a container that is up but should get no new connections.
  const health = state.Health?.Status;
  const drained = state.Paused
    ? "paused"
    : opts.draining
      ? "stopping"
      : health === "unhealthy"
        ? "unhealthy"
        : health === "starting"
          ? "health check starting"
          : undefined;

  const generic = (what: string) => `${LABEL_PREFIX}.${what}`;
  const specific = (service: string, what: string) => `${LABEL_PREFIX}:${service}.${what}`;

  /** The port a label gives, checked; undefined (with a warning) when it is bad. */
  const labelPort = (service: string, label: string, proto: Proto): number | undefined => {
    const text = labels[label]!;
    const port = decimal(text, 1, 65535);
    if (port === undefined) {
      warnings.push(`${who}: label ${label}=${JSON.stringify(text)}: not a port number (1-65535); service ${service} has no ${proto} port`);
      return undefined;
    }
    const dockerPort = `${port}/${proto}`;
    if (!Object.hasOwn(exposed, dockerPort)) {
      warnings.push(`${who}: label ${label}=${text}: port ${dockerPort} is not exposed by the container; service ${service} has no ${proto} port`);
      return undefined;
    }
    return port;
  };

  /** In published mode: the host port of a container port, per address family. */
  const hostPort = (service: string, label: string, port: number, proto: Proto): { v4?: number; v6?: number } | undefined => {
    const bindings = portBindings[`${port}/${proto}`] ?? [];
    const find = (accept: string[]) => {
      for (const b of bindings) {
        const hp = decimal(b.HostPort ?? "", 1, 65535);
        if (hp !== undefined && accept.includes(b.HostIp ?? "")) return hp;
      }
      return undefined;
    };
    const v4 = ipv4 ? find(["", "0.0.0.0", ipv4]) : undefined;
    const v6 = ipv6 ? find(["", "::", ipv6]) : undefined;
    if (v4 === undefined && v6 === undefined) {
      const on = [ipv4, ipv6].filter(Boolean).join(" or ");
      warnings.push(`${who}: label ${label}=${port}: port ${port}/${proto} is not published on the host address ${on}; service ${service} has no ${proto} port`);
      return undefined;
    }
    return { v4, v6 };
  };

  for (const service of services) {
    const ports: Partial<Record<Proto, number>> = {};
    let v4ok = !!ipv4;
    let v6ok = !!ipv6;
    for (const proto of ["tcp", "udp"] as const) {
      const label = labels[specific(service, proto)] !== undefined ? specific(service, proto) : labels[generic(proto)] !== undefined ? generic(proto) : undefined;
      if (!label) continue;
      const port = labelPort(service, label, proto);
      if (port === undefined) continue;
      if (!published) {
        ports[proto] = port;
        continue;
      }
      const hp = hostPort(service, label, port, proto);
      if (!hp) continue;
      // One backend has one port per protocol for both families: the IPv4 binding decides,
      // and an IPv6 binding to another host port leaves IPv6 out.
      const chosen = hp.v4 ?? hp.v6!;
      if (ipv4 && hp.v4 === undefined) v4ok = false;
      if (ipv6 && hp.v6 !== chosen) {
        if (hp.v6 !== undefined) warnings.push(`${who}: port ${port}/${proto} is published on different host ports for IPv4 and IPv6; service ${service} is published on IPv4 only`);
        v6ok = false;
      }
      ports[proto] = chosen;
    }
    if (ports.tcp === undefined && ports.udp === undefined) {
      if (labels[specific(service, "tcp")] === undefined && labels[generic("tcp")] === undefined && labels[specific(service, "udp")] === undefined && labels[generic("udp")] === undefined) {
        warnings.push(`${who}: service ${service}: no port label (${generic("tcp")}, ${specific(service, "tcp")} or the udp ones); skipped`);
      }
      continue;
    }

    let weight = DEFAULT_WEIGHT;
    const wLabel = labels[specific(service, "weight")] !== undefined ? specific(service, "weight") : labels[generic("weight")] !== undefined ? generic("weight") : undefined;
    if (wLabel) {
      const w = decimal(labels[wLabel]!, 0, MAX_WEIGHT);
      if (w === undefined) warnings.push(`${who}: label ${wLabel}=${JSON.stringify(labels[wLabel])}: not a weight (0-${MAX_WEIGHT}); service ${service} gets the default weight ${DEFAULT_WEIGHT}`);
      else weight = w;
    }

    const b: Backend = { weight: drained ? 0 : weight };
    if (v4ok) b.ipv4 = ipv4;
    if (v6ok) b.ipv6 = ipv6;
    if (!b.ipv4 && !b.ipv6) continue; // warned above
    if (ports.tcp !== undefined) b.tcp = ports.tcp;
    if (ports.udp !== undefined) b.udp = ports.udp;
    backends.set(service, b);
  }
  return { backends, warnings, drained: backends.size ? drained : undefined };
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
