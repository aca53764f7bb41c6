// clusterf-ipvs: keeps the kernel's IPVS table equal to the config in -config-path and etcd.

import type { ConfigSource } from "../config/source.ts";
import { IpvsDaemon } from "../daemon/ipvs-daemon.ts";
import { MemoryIpvsTable } from "../ipvs/memory-table.ts";
import type { IpvsTable } from "../ipvs/types.ts";
import * as log from "../util/log.ts";
import { parseOrExit, type FlagSpec, type FlagValues } from "./flags.ts";

const METHODS = ["masq", "droute", "tunnel"];

export const IPVS_FLAGS: FlagSpec[] = [
  { name: "config-path", type: "string", default: "/etc/clusterf", help: "local config tree (services/, routes/); empty = none" },
  { name: "etcd-machines", type: "string", default: "http://127.0.0.1:2379", help: "etcd endpoints, comma-separated URLs; empty = file-only mode" },
  { name: "etcd-prefix", type: "string", default: "/clusterf", help: "etcd key prefix of the config tree" },
  { name: "etcd-cacert", type: "string", default: "", help: "CA certificate file for etcd TLS" },
  { name: "etcd-cert", type: "string", default: "", help: "client certificate file for etcd TLS" },
  { name: "etcd-key", type: "string", default: "", help: "client key file for etcd TLS" },
  { name: "etcd-username", type: "string", default: "", help: "etcd user name" },
  { name: "etcd-password", type: "string", default: "", help: "etcd password", env: "ETCD_PASSWORD" },
  { name: "filter-etcd-routes", type: "bool", default: false, help: "ignore every route in etcd; only local routes apply" },
  {
    name: "ipvs-fwd-method",
    type: "string",
    default: "masq",
    help: "forwarding method for backends that no route sets: masq, droute or tunnel",
    check: (v: string) => (METHODS.includes(v) ? undefined : "expected masq, droute or tunnel"),
  },
  {
    name: "ipvs-sched-name",
    type: "string",
    default: "wlc",
    help: "IPVS scheduler for services whose frontend sets none",
    check: (v: string) => (/^[a-z][a-z0-9_]{0,15}$/.test(v) ? undefined : "not a scheduler name"),
  },
  { name: "ipvs-elide", type: "bool", default: false, help: "leave out services with no destinations" },
  { name: "ipvs-mock", type: "bool", default: false, help: "use an in-memory IPVS table instead of the kernel" },
  { name: "ipvs-noop", type: "bool", default: false, help: "read the kernel table, log the writes it would make, make none" },
  { name: "ipvs-debug", type: "bool", default: false, help: "log every netlink request and answer" },
  { name: "ipvs-resync", type: "duration", default: 60_000, help: "re-read the kernel table and correct drift this often; 0 = never" },
  { name: "flush", type: "bool", default: false, help: "clear the whole IPVS table at start instead of a soft restart" },
  { name: "print", type: "bool", default: false, help: "print the table (ipvsadm -Ln layout) after each apply" },
  { name: "once", type: "bool", default: false, help: "apply once, then exit (status 0 when the table was applied)" },
  { name: "state-dir", type: "string", default: "/var/lib/clusterf", help: "where the daemon remembers which IPVS services it created" },
  { name: "once-timeout", type: "duration", default: 30_000, help: "with -once: how long to wait for the sources' first read" },
];

async function openIpvs(flags: FlagValues): Promise<IpvsTable> {
  if (flags["ipvs-mock"]) return new MemoryIpvsTable();
  const { openKernelIpvs } = await import("../ipvs/netlink/kernel-table.ts");
  return openKernelIpvs({ debug: flags["ipvs-debug"] ? (line: string) => log.debug(`ipvs: ${line}`) : undefined });
}

async function openSources(flags: FlagValues): Promise<ConfigSource[]> {
  const sources: ConfigSource[] = [];
  const configPath = flags["config-path"] as string;
  if (configPath) {
    const { DirSource } = await import("../config/dir-source.ts");
    sources.push(new DirSource({ root: configPath }));
  }
  const machines = (flags["etcd-machines"] as string).split(",").map((s) => s.trim()).filter(Boolean);
  if (machines.length) {
    const { EtcdSource } = await import("../config/etcd-source.ts");
    sources.push(
      new EtcdSource({
        endpoints: machines,
        prefix: flags["etcd-prefix"] as string,
        cacert: (flags["etcd-cacert"] as string) || undefined,
        cert: (flags["etcd-cert"] as string) || undefined,
        key: (flags["etcd-key"] as string) || undefined,
        username: (flags["etcd-username"] as string) || undefined,
        password: (flags["etcd-password"] as string) || undefined,
      }),
    );
  }
  return sources;
}

export async function main(argv: string[]): Promise<number> {
  const flags = parseOrExit("clusterf-ipvs", "Keeps the kernel's IPVS table equal to the clusterf config.", argv, IPVS_FLAGS);
  if (flags["ipvs-debug"]) log.configureLog({ level: "debug" });
  let ipvs: IpvsTable;
  try {
    ipvs = await openIpvs(flags);
  } catch (e) {
    log.error(`IPVS: ${(e as Error).message}`);
    return 1;
  }
  const sources = await openSources(flags);
  if (sources.length === 0) log.warn("config: no sources (-config-path and -etcd-machines are both empty): the table will be empty");
  const daemon = new IpvsDaemon(ipvs, sources, {
    desired: {
      defaultMethod: flags["ipvs-fwd-method"] as "masq" | "droute" | "tunnel",
      scheduler: flags["ipvs-sched-name"] as string,
      elide: flags["ipvs-elide"] as boolean,
    },
    filterEtcdRoutes: flags["filter-etcd-routes"] as boolean,
    print: flags.print ? (text) => process.stdout.write(text) : undefined,
    flush: flags.flush as boolean,
    noop: flags["ipvs-noop"] as boolean,
    stateDir: flags["ipvs-mock"] ? undefined : (flags["state-dir"] as string) || undefined,
    resyncMs: flags.once ? 0 : (flags["ipvs-resync"] as number),
  });

  const firstApply = daemon.nextApply();
  try {
    await daemon.start();
  } catch (e) {
    log.error(`start: ${(e as Error).message}`);
    await daemon.stop().catch(() => {});
    return 1;
  }

  if (flags.once) {
    const timeout = flags["once-timeout"] as number;
    const result = await Promise.race([firstApply, Bun.sleep(timeout).then(() => undefined)]);
    await daemon.stop();
    if (!result) {
      log.error("once: the config sources did not deliver a first read in time", { timeoutMs: timeout });
      return 1;
    }
    return result.errors === 0 ? 0 : 1;
  }

  return await new Promise<number>((resolve) => {
    const stop = (signal: string) => {
      log.info("exit", { signal });
      daemon.stop().then(
        () => resolve(0),
        () => resolve(1),
      );
    };
    process.once("SIGTERM", () => stop("SIGTERM"));
    process.once("SIGINT", () => stop("SIGINT"));
  });
}

if (import.meta.main) {
  main(process.argv.slice(2)).then((code) => process.exit(code));
}
