// clusterf-ipvs: keeps the kernel's IPVS table equal to the config in -config-path and etcd.

import { statSync } from "node:fs";
import { join } from "node:path";
import type { ConfigSource } from "../config/source.ts";
import { IpvsDaemon, type IpvsDaemonOptions } from "../daemon/ipvs-daemon.ts";
import { MemoryIpvsTable } from "../ipvs/memory-table.ts";
import type { IpvsTable } from "../ipvs/types.ts";
import * as log from "../util/log.ts";
import { ETCD_AUTH_FLAGS, ETCD_PREFIX_FLAG, OPS_FLAGS, etcdClientOptions, etcdMachinesFlag, etcdPrefix, etcdTtlFlag, etcdTtlSeconds } from "./shared-flags.ts";
import { FlagError, parseOrExit, type FlagSpec, type FlagValues } from "./flags.ts";
import { RouteAdvertiser, advertisedRouteValue } from "../daemon/route-advertiser.ts";
import type { Etcd3 } from "etcd3";
import { startMetrics } from "../metrics/server.ts";
import type { Checker } from "../health/checker.ts";
import { HealthPublisher } from "../health/publish.ts";
import { absoluteKey, routeKey } from "../config/keys.ts";
import { exitWhenWritten } from "./exit.ts";
import { importEtcd } from "../etcd/load.ts";
import { writeStderr, writeStdout } from "../util/stdio.ts";

const METHODS = ["masq", "droute", "tunnel"];

export const IPVS_FLAGS: FlagSpec[] = [
  {
    name: "config-path",
    type: "string",
    default: "/etc/clusterf",
    help: "local config tree (services/, routes/); empty = none",
    // A missing directory is taken (it is picked up when it appears); a file never will be a tree.
    check: (v: string) => (v && statSync(v, { throwIfNoEntry: false })?.isDirectory() === false ? "not a directory" : undefined),
  },
  etcdMachinesFlag("etcd endpoints, comma-separated http:// or https:// URLs; empty = file-only mode"),
  ETCD_PREFIX_FLAG,
  ...ETCD_AUTH_FLAGS,
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
  {
    name: "ipvs-drain-removed",
    type: "duration",
    default: 60_000,
    help: "a TCP/SCTP backend that leaves the config while it has active connections stays at weight 0 until they end, this long at most; 0 = delete at once",
  },
  { name: "flush", type: "bool", default: false, help: "clear the whole IPVS table at start instead of a soft restart" },
  { name: "print", type: "bool", default: false, help: "print the table (ipvsadm -Ln layout) after each apply" },
  { name: "once", type: "bool", default: false, help: "apply once, then exit (status 0 when the table was applied); reads each source once and watches nothing" },
  { name: "state-dir", type: "string", default: "/var/lib/clusterf", help: "where the daemon remembers which IPVS services it created" },
  {
    name: "config-path-cache",
    type: "string",
    default: "",
    help: "where the first read of -config-path keeps what it found, so that a restart reads only the files changed since (it compares each file's stat): empty = config-path.cache in -state-dir (none with -ipvs-mock), off = nowhere",
  },
  { name: "once-timeout", type: "duration", default: 30_000, help: "with -once: how long to wait for the sources' first read" },
  ...OPS_FLAGS,
  etcdTtlFlag("TTL of the advertised route's etcd lease (kept alive while running)"),
  { name: "advertise-route-name", type: "string", default: "", help: "write routes/NAME into etcd for this host (two-tier deployments); empty = none" },
  { name: "advertise-route-prefix4", type: "string", default: "", help: "Prefix4 of the advertised route (IPv4 CIDR)" },
  { name: "advertise-route-gateway4", type: "string", default: "", help: "Gateway4 of the advertised route (this host's IPv4)" },
  { name: "advertise-route-prefix6", type: "string", default: "", help: "Prefix6 of the advertised route (IPv6 CIDR)" },
  { name: "advertise-route-gateway6", type: "string", default: "", help: "Gateway6 of the advertised route (this host's IPv6)" },
  { name: "advertise-route-ipvs-method", type: "string", default: "", help: "IpvsMethod of the advertised route: masq, droute, tunnel or filter" },
];

/** The advertised route's key and value, its name and the etcd prefix. */
interface AdvertisedRouteFlags {
  key: string;
  value: string;
  name: string;
  prefix: string;
}

/** The advertised route from the flags, checked as readers will check it; undefined when not asked for. */
function advertisedRoute(flags: FlagValues): AdvertisedRouteFlags | undefined {
  const name = flags["advertise-route-name"] as string;
  if (!name) return undefined;
  if (!/^[^/\s]+$/.test(name)) throw new FlagError(`invalid value ${JSON.stringify(name)} for flag -advertise-route-name: not a key name`);
  if (!(flags["etcd-machines"] as string)) throw new FlagError("-advertise-route-name needs etcd: -etcd-machines is empty");
  try {
    const value = advertisedRouteValue({
      Prefix4: flags["advertise-route-prefix4"] as string,
      Gateway4: flags["advertise-route-gateway4"] as string,
      Prefix6: flags["advertise-route-prefix6"] as string,
      Gateway6: flags["advertise-route-gateway6"] as string,
      IpvsMethod: flags["advertise-route-ipvs-method"] as string,
    });
    const prefix = etcdPrefix(flags);
    return { key: absoluteKey(prefix, routeKey(name)), value, name, prefix };
  } catch (e) {
    throw new FlagError(`invalid -advertise-route-* flags: ${(e as Error).message}`);
  }
}

async function openIpvs(flags: FlagValues): Promise<IpvsTable> {
  if (flags["ipvs-mock"]) return new MemoryIpvsTable();
  const { openKernelIpvs } = await import("../ipvs/netlink/kernel-table.ts");
  return openKernelIpvs({ debug: flags["ipvs-debug"] ? (line: string) => log.debug(`ipvs: ${line}`) : undefined });
}

/** The -config-path cache's file name in -state-dir (src/config/tree-cache.ts). */
const CONFIG_PATH_CACHE = "config-path.cache";

/** -state-dir; none with -ipvs-mock (a table in memory: nothing of it outlives the process). */
function stateDirOf(flags: FlagValues): string | undefined {
  return flags["ipvs-mock"] ? undefined : (flags["state-dir"] as string) || undefined;
}

/** The -config-path cache's file (-config-path-cache); undefined: none. */
function configPathCache(flags: FlagValues): string | undefined {
  const file = flags["config-path-cache"] as string;
  if (file === "off") return undefined;
  if (file) return file;
  const stateDir = stateDirOf(flags);
  return stateDir ? join(stateDir, CONFIG_PATH_CACHE) : undefined;
}

async function openSources(flags: FlagValues): Promise<ConfigSource[]> {
  const sources: ConfigSource[] = [];
  const configPath = flags["config-path"] as string;
  if (configPath) {
    const { DirSource } = await import("../config/dir-source.ts");
    sources.push(new DirSource({ root: configPath, watch: !flags.once, cacheFile: configPathCache(flags) })); // -once reads once and watches nothing
  }
  const etcd = etcdClientOptions(flags);
  if (etcd.endpoints.length) {
    const { EtcdSource } = await importEtcd(() => import("../config/etcd-source.ts"));
    sources.push(new EtcdSource({ ...etcd, prefix: etcdPrefix(flags), watch: !flags.once }));
  }
  return sources;
}

/** The metrics server once started: undefined when -metrics-listen is empty. */
type Metrics = Exclude<ReturnType<typeof startMetrics>, null>;

/** The daemon's options from the flags. */
function daemonOptions(flags: FlagValues, health: Checker | undefined): IpvsDaemonOptions {
  return {
    desired: {
      defaultMethod: flags["ipvs-fwd-method"] as "masq" | "droute" | "tunnel",
      scheduler: flags["ipvs-sched-name"] as string,
      elide: flags["ipvs-elide"] as boolean,
    },
    filterEtcdRoutes: flags["filter-etcd-routes"] as boolean,
    print: flags.print ? writeStdout : undefined,
    flush: flags.flush as boolean,
    noop: flags["ipvs-noop"] as boolean,
    stateDir: stateDirOf(flags),
    resyncMs: flags.once ? 0 : (flags["ipvs-resync"] as number),
    // -once cannot wait for connections to end: it deletes at once.
    drainMs: flags.once ? 0 : (flags["ipvs-drain-removed"] as number),
    health, // none with -once
    // -once serves nothing while it works: it may pause to collect the parse's garbage.
    collectAfterLargeSteps: flags.once ? "full" : "background",
  };
}

/** -metrics-listen: prom-client only when metrics are asked for (13 MiB of a start-up without them). */
async function startIpvsMetrics(flags: FlagValues, daemon: IpvsDaemon): Promise<ReturnType<typeof startMetrics>> {
  const listen = flags["metrics-listen"] as string;
  const m = listen ? await import("../metrics/ipvs-metrics.ts") : undefined;
  return startMetrics(listen, () => m!.ipvsMetrics(daemon), () => m!.ipvsHealth(daemon));
}

/** -once: waits for the first apply (at most -once-timeout), stops; the exit status. */
async function runOnce(flags: FlagValues, daemon: IpvsDaemon, firstApply: ReturnType<IpvsDaemon["nextApply"]>, metrics: Metrics): Promise<number> {
  const timeout = flags["once-timeout"] as number;
  const result = await Promise.race([firstApply, Bun.sleep(timeout).then(() => undefined)]);
  await daemon.stop();
  metrics?.stop();
  if (!result) {
    log.error("once: the config sources did not deliver a first read in time", { timeoutMs: timeout });
    return 1;
  }
  if (!daemon.desired.checkTargets().next().done) log.info("once: health checks do not run with -once; the configured weights were programmed");
  return result.errors === 0 ? 0 : 1;
}

/** What advertising a route runs: the advertiser, its etcd client and the health records under its lease. */
interface Advertising {
  advertiser: RouteAdvertiser;
  etcdClient: Etcd3;
  publisher?: HealthPublisher;
}

/** -advertise-route-*: the route goes into etcd after the first apply, the backends' health with it. */
async function startAdvertising(flags: FlagValues, route: AdvertisedRouteFlags, daemon: IpvsDaemon, firstApply: Promise<unknown>): Promise<Advertising> {
  const { makeEtcdClient } = await importEtcd(() => import("../etcd/client.ts"));
  const { passThroughFaultHandling } = await importEtcd(() => import("../etcd/faults.ts"));
  const etcdClient = makeEtcdClient(etcdClientOptions(flags), passThroughFaultHandling());
  const advertiser = new RouteAdvertiser(etcdClient, route.key, route.value, etcdTtlSeconds(flags));
  firstApply.then(() => advertiser.start());
  // The health of the backends behind the route, under its lease, for the frontend tier.
  const health = daemon.health;
  if (!health) return { advertiser, etcdClient };
  const publisher = new HealthPublisher(advertiser, () => daemon.healthRecords(), route.prefix, route.name);
  health.listen({ change: () => publisher.update() });
  daemon.onSync(() => publisher.update());
  return { advertiser, etcdClient, publisher };
}

/** Runs until SIGTERM or SIGINT, then stops everything; the exit status. */
function untilStopped(daemon: IpvsDaemon, advertising: Advertising | undefined, metrics: Metrics): Promise<number> {
  return new Promise<number>((resolve) => {
    const stop = (signal: string) => {
      log.info("exit", { signal });
      advertising?.publisher?.stop();
      Promise.all([advertising?.advertiser.stop(), daemon.stop()])
        .finally(() => {
          advertising?.etcdClient.close();
          metrics?.stop();
        })
        .then(
          () => resolve(0),
          () => resolve(1),
        );
    };
    process.once("SIGTERM", () => stop("SIGTERM"));
    process.once("SIGINT", () => stop("SIGINT"));
  });
}

export async function main(argv: string[]): Promise<number> {
  const flags = parseOrExit("clusterf-ipvs", "Keeps the kernel's IPVS table equal to the clusterf config.", argv, IPVS_FLAGS);
  let advertise: AdvertisedRouteFlags | undefined;
  try {
    advertise = advertisedRoute(flags);
  } catch (e) {
    writeStderr(`clusterf-ipvs: ${(e as Error).message}\n`);
    return 2;
  }
  log.configureLog({ level: flags["ipvs-debug"] ? "debug" : undefined, json: flags["log-format"] === "json" });
  let ipvs: IpvsTable;
  try {
    ipvs = await openIpvs(flags);
  } catch (e) {
    log.error(`IPVS: ${(e as Error).message}`);
    return 1;
  }
  const sources = await openSources(flags);
  if (sources.length === 0) log.warn("config: no sources (-config-path and -etcd-machines are both empty): the table will be empty");
  // -once runs no health checks (it programs the configured weights): their code (node:net, a
  // tenth of a second in a slow guest) is not loaded then.
  const health = flags.once ? undefined : new (await import("../health/checker.ts")).Checker();
  const daemon = new IpvsDaemon(ipvs, sources, daemonOptions(flags, health));

  // SIGHUP reloads (its default action would kill the daemon, leaving an advertised route to its TTL).
  process.on("SIGHUP", () => {
    log.info("reload: SIGHUP: re-reading every source, then resyncing the IPVS table");
    daemon.reload().catch((e) => log.error(`reload: ${(e as Error).message}`));
  });

  const firstApply = daemon.nextApply();
  const metrics = await startIpvsMetrics(flags, daemon);
  if (metrics === null) return 1;
  try {
    await daemon.start();
  } catch (e) {
    log.error(`start: ${(e as Error).message}`);
    await daemon.stop().catch(() => {});
    return 1;
  }
  if (flags.once) return await runOnce(flags, daemon, firstApply, metrics);
  const advertising = advertise ? await startAdvertising(flags, advertise, daemon, firstApply) : undefined;
  return await untilStopped(daemon, advertising, metrics);
}

if (import.meta.main) {
  main(process.argv.slice(2)).then(exitWhenWritten);
}
