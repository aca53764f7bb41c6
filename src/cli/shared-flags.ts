// Flags both daemons share: etcd connection (docs/config.md §3) and operations (§8).
import type { EtcdClientOptions } from "../config/etcd-source.ts";
import { checkWith, type FlagSpec, type FlagValues } from "./flags.ts";
import { parseListen } from "../metrics/server.ts";

/** Operations flags both daemons share (docs/config.md §8). */
export const OPS_FLAGS: FlagSpec[] = [
  {
    name: "metrics-listen",
    type: "string",
    default: "",
    help: "serve Prometheus /metrics and /healthz on ADDR:PORT; empty = off",
    check: checkWith((v) => v && parseListen(v), "expected ADDR:PORT"),
  },
  {
    name: "log-format",
    type: "string",
    default: "text",
    help: "log line format on stderr: text or json",
    check: (v: string) => (v === "text" || v === "json" ? undefined : "expected text or json"),
  },
];

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
  return (flags["etcd-machines"] as string).split(",").map((s) => s.trim()).filter(Boolean);
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
