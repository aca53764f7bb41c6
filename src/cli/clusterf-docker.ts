// clusterf-docker: publishes this Docker host's labelled containers as backends in etcd
// (docs/config.md §6), all under one etcd lease that this daemon keeps alive.

import { join } from "node:path";
import type { Etcd3, IOptions } from "etcd3";
import { importEtcd } from "../etcd/load.ts";
import { parseIPv4, parseIPv6 } from "../config/values.ts";
import { DockerDaemon } from "../docker/daemon.ts";
import { STATE_FILE } from "../docker/publisher.ts";
import { dockerOptions } from "../docker/watcher.ts";
import * as log from "../util/log.ts";
import { startMetrics } from "../metrics/server.ts";
import { dockerHealth, dockerMetrics } from "../metrics/docker-metrics.ts";
import { ETCD_AUTH_FLAGS, ETCD_PREFIX_FLAG, OPS_FLAGS, etcdClientOptions, etcdEndpoints, etcdMachinesFlag, etcdPrefix, etcdTtlFlag, etcdTtlSeconds } from "./shared-flags.ts";
import { FlagError, checkWith, parseOrExit, type FlagSpec, type FlagValues } from "./flags.ts";
import { exitWhenWritten } from "./exit.ts";
import { writeStderr } from "../util/stdio.ts";

const ipv4Check = checkWith((v) => parseIPv4(v, ""), "not an IPv4 address");
const ipv6Check = checkWith((v) => parseIPv6(v, ""), "not an IPv6 address");

export const DOCKER_FLAGS: FlagSpec[] = [
  {
    name: "docker-endpoint",
    type: "string",
    default: "unix:///var/run/docker.sock",
    env: "DOCKER_HOST",
    help: "Docker API endpoint: unix:///path or tcp://host:port",
    check: checkWith((v) => dockerOptions(v, {})),
  },
  { name: "docker-network", type: "string", default: "", help: "publish the containers' addresses on this Docker network; empty = the container's only network" },
  { name: "backend-published", type: "bool", default: false, help: "publish -host-ipv4/-host-ipv6 with the published host ports instead of the containers' addresses" },
  { name: "host-ipv4", type: "string", default: "", help: "this Docker host's IPv4 address, with -backend-published", check: ipv4Check },
  { name: "host-ipv6", type: "string", default: "", help: "this Docker host's IPv6 address, with -backend-published", check: ipv6Check },
  etcdMachinesFlag("etcd endpoints, comma-separated http:// or https:// URLs"),
  ETCD_PREFIX_FLAG,
  etcdTtlFlag("TTL of this host's etcd lease (kept alive while running): a dead host's backends expire after it"),
  ...ETCD_AUTH_FLAGS,
  ...OPS_FLAGS,
  { name: "exit-revoke", type: "bool", default: true, help: "at SIGTERM/SIGINT, revoke the lease (remove this host's backends at once); false = leave them to expire with the TTL, or to a restart within it" },
  { name: "state-dir", type: "string", default: "/var/lib/clusterf", help: "where the lease id is kept, so that a restart takes the keys over; empty = nowhere" },
  { name: "debug", type: "bool", default: false, help: "log every container state change" },
];

function checkCombination(flags: FlagValues): void {
  if (flags["backend-published"] && !flags["host-ipv4"] && !flags["host-ipv6"]) {
    throw new FlagError("-backend-published needs -host-ipv4 and/or -host-ipv6");
  }
  if (!flags["backend-published"] && (flags["host-ipv4"] || flags["host-ipv6"])) {
    throw new FlagError("-host-ipv4 and -host-ipv6 only apply with -backend-published");
  }
  if (flags["backend-published"] && flags["docker-network"]) {
    throw new FlagError("-docker-network does not apply with -backend-published");
  }
  if (etcdEndpoints(flags).length === 0) {
    throw new FlagError("-etcd-machines is empty: clusterf-docker needs etcd");
  }
}

/** An etcd client that leaves retries to the daemon (no circuit breaker holding a single endpoint back). */
async function etcdClient(flags: FlagValues): Promise<Etcd3> {
  const [{ makeEtcdClient }, { passThroughFaultHandling }] = await importEtcd(() => Promise.all([import("../etcd/client.ts"), import("../etcd/faults.ts")]));
  const extra: Partial<IOptions> = {
    ...passThroughFaultHandling(),
    grpcOptions: { "grpc.keepalive_time_ms": 6000, "grpc.keepalive_timeout_ms": 3000 },
  };
  return makeEtcdClient(etcdClientOptions(flags), extra);
}

/** The daemon from the flags (not started). */
function dockerDaemon(flags: FlagValues, client: Etcd3): DockerDaemon {
  const stateDir = flags["state-dir"] as string;
  return new DockerDaemon(client, {
    dockerEndpoint: flags["docker-endpoint"] as string,
    network: (flags["docker-network"] as string) || undefined,
    published: flags["backend-published"]
      ? { ipv4: parseIPv4(flags["host-ipv4"] as string, "host-ipv4"), ipv6: parseIPv6(flags["host-ipv6"] as string, "host-ipv6") }
      : undefined,
    prefix: etcdPrefix(flags),
    ttlSeconds: etcdTtlSeconds(flags),
    stateFile: stateDir ? join(stateDir, STATE_FILE) : undefined,
    etcdEndpoints: etcdEndpoints(flags),
  });
}

/**
 * Runs until SIGTERM or SIGINT (a second one exits at once), then stops the daemon (revoking
 * the lease with -exit-revoke); SIGHUP resyncs meanwhile. The exit status.
 */
function untilStopped(flags: FlagValues, daemon: DockerDaemon, client: Etcd3, metrics: ReturnType<typeof startMetrics>): Promise<number> {
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        log.warn("exit: second signal, exiting at once", { signal });
        resolve(1);
        return;
      }
      stopping = true;
      log.info("exit", { signal });
      daemon
        .stop({ revoke: flags["exit-revoke"] as boolean })
        .then(
          () => 0,
          (e) => {
            log.error(`exit: ${(e as Error).message}`);
            return 1;
          },
        )
        .then((code) => {
          client.close();
          metrics?.stop();
          resolve(code);
        });
    };
    process.on("SIGTERM", () => stop("SIGTERM"));
    process.on("SIGINT", () => stop("SIGINT"));
    // SIGHUP: a full two-way resync, as after a reconnect (its default action would kill the daemon).
    process.on("SIGHUP", () => {
      if (stopping) return;
      daemon.resync().catch((e) => log.error(`resync: ${(e as Error).message}`));
    });
  });
}

export async function main(argv: string[]): Promise<number> {
  const flags = parseOrExit("clusterf-docker", "Publishes this Docker host's labelled containers as clusterf backends in etcd.", argv, DOCKER_FLAGS);
  try {
    checkCombination(flags);
  } catch (e) {
    writeStderr(`clusterf-docker: ${(e as Error).message}\n`);
    return 2;
  }
  log.configureLog({ level: flags.debug ? "debug" : undefined, json: flags["log-format"] === "json" });
  let client: Etcd3;
  try {
    client = await etcdClient(flags);
  } catch (e) {
    log.error(`etcd: ${(e as Error).message}`);
    return 1;
  }
  const daemon = dockerDaemon(flags, client);
  log.info("clusterf-docker: starting", {
    docker: flags["docker-endpoint"] as string,
    etcd: flags["etcd-machines"] as string,
    prefix: etcdPrefix(flags),
    ttl: etcdTtlSeconds(flags),
  });
  const metrics = startMetrics(flags["metrics-listen"] as string, () => dockerMetrics(daemon), () => dockerHealth(daemon));
  if (metrics === null) {
    client.close();
    return 1;
  }
  daemon.start();
  return await untilStopped(flags, daemon, client, metrics);
}

if (import.meta.main) {
  main(process.argv.slice(2)).then(exitWhenWritten);
}
