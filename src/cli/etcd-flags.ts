// The etcd connection flags both daemons share (CONTRACT §3), and their mapping to client options.
import type { EtcdClientOptions } from "../config/etcd-source.ts";
import type { FlagSpec, FlagValues } from "./flags.ts";

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
