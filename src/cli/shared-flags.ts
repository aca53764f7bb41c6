// Flags both daemons share: etcd connection (docs/config.md §3) and operations (§8).
import type { EtcdClientOptions } from "../etcd/client.ts";
import { checkWith, type FlagSpec, type FlagValues } from "./flags.ts";
import { parseListen } from "../metrics/server.ts";
import { DEFAULT_PREFIX, trimPrefix } from "../config/keys.ts";

/**
 * -metrics-listen: empty (off), or what parseListen takes with a port a server can be found on
 * (port 0 would bind a random one).
 */
function checkListen(listen: string): string | undefined {
  if (!listen) return undefined;
  const port = listen.slice(listen.lastIndexOf(":") + 1).trim();
  if (!/^\d+$/.test(port)) return `port ${JSON.stringify(port)} is not a number`;
  if (Number(port) < 1 || Number(port) > 65535) return `port ${Number(port)} is out of range 1-65535`;
  return checkWith(parseListen, "expected ADDR:PORT")(listen);
}

/** Operations flags both daemons share (docs/config.md §8). */
export const OPS_FLAGS: FlagSpec[] = [
  {
    name: "metrics-listen",
    type: "string",
    default: "",
    help: "serve Prometheus /metrics and /healthz on ADDR:PORT; empty = off",
    check: checkListen,
  },
  {
    name: "log-format",
    type: "string",
    default: "text",
    help: "log line format on stderr: text or json",
    check: (v: string) => (v === "text" || v === "json" ? undefined : "expected text or json"),
  },
];

/** The entries of an -etcd-machines value (empty entries dropped). */
function splitMachines(machines: string): string[] {
  return machines.split(",").map((s) => s.trim()).filter(Boolean);
}

/** -etcd-machines, with each daemon's own help (what an empty value means differs). */
export function etcdMachinesFlag(help: string): FlagSpec {
  return {
    name: "etcd-machines",
    type: "string",
    default: "http://127.0.0.1:2379",
    help,
    check: (machines: string) => {
      for (const entry of splitMachines(machines)) {
        const url = URL.parse(entry);
        if (!url || (url.protocol !== "http:" && url.protocol !== "https:") || !url.hostname) {
          return `${JSON.stringify(entry)} is not an http:// or https:// URL`;
        }
      }
      return undefined;
    },
  };
}

export const ETCD_PREFIX_FLAG: FlagSpec = {
  name: "etcd-prefix",
  type: "string",
  default: DEFAULT_PREFIX,
  help: "etcd key prefix of the config tree",
  check: (v: string) => (v.startsWith("/") && !/\s/.test(v) ? undefined : "expected a key prefix starting with /, without spaces"),
};

/**
 * -etcd-ttl, one rule for both daemons: etcd grants leases in whole seconds, at least one, so a
 * TTL that etcd would round is refused instead of silently changed.
 */
export function etcdTtlFlag(help: string): FlagSpec {
  return {
    name: "etcd-ttl",
    type: "duration",
    default: 10_000,
    help: `${help} (whole seconds, at least 1s)`,
    check: (ms: number) => (ms >= 1000 && ms % 1000 === 0 ? undefined : "must be at least 1s, in whole seconds"),
  };
}

/** The -etcd-prefix value without trailing slashes (keys are built as PREFIX/services/…). */
export function etcdPrefix(flags: FlagValues): string {
  return trimPrefix(flags["etcd-prefix"] as string);
}

/** The lease TTL in seconds, from a value etcdTtlFlag accepted. */
export function etcdTtlSeconds(flags: FlagValues): number {
  return (flags["etcd-ttl"] as number) / 1000;
}

export const ETCD_AUTH_FLAGS: FlagSpec[] = [
  { name: "etcd-cacert", type: "string", default: "", help: "CA certificate file for etcd TLS" },
  { name: "etcd-cert", type: "string", default: "", help: "client certificate file for etcd TLS" },
  { name: "etcd-key", type: "string", default: "", help: "client key file for etcd TLS" },
  { name: "etcd-username", type: "string", default: "", help: "etcd user name" },
  { name: "etcd-password", type: "string", default: "", help: "etcd password", env: "ETCD_PASSWORD" },
];

export function etcdEndpoints(flags: FlagValues): string[] {
  return splitMachines(flags["etcd-machines"] as string);
}

export function etcdClientOptions(flags: FlagValues): EtcdClientOptions {
  return {
    endpoints: etcdEndpoints(flags),
    cacert: (flags["etcd-cacert"] as string) || undefined,
    cert: (flags["etcd-cert"] as string) || undefined,
    key: (flags["etcd-key"] as string) || undefined,
    username: (flags["etcd-username"] as string) || undefined,
    password: (flags["etcd-password"] as string) || undefined,
  };
}
