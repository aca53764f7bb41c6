// clusterf-ipvs metrics (docs/config.md §8): kernel counters per service and destination, labelled with
// the config's service and backend names, and the daemon's own health counters.

import client from "prom-client";
import type { IpvsDaemon } from "../daemon/ipvs-daemon.ts";
import { destKeyString, serviceKeyString, type ObservedService, type Stats } from "../ipvs/types.ts";
import { scrapedMetric, type Health } from "./server.ts";
import { healthMetrics } from "../health/metrics.ts";

const STAT_FIELDS: [keyof Stats, string, string][] = [
  ["connections", "connections_total", "connections scheduled"],
  ["packetsIn", "packets_in_total", "packets received"],
  ["packetsOut", "packets_out_total", "packets sent"],
  ["bytesIn", "bytes_in_total", "bytes received"],
  ["bytesOut", "bytes_out_total", "bytes sent"],
];

/** The kernel folds its counters in every 2 s: a scrape re-reads the table at most once a second. */
const LIST_CACHE_MS = 1000;

export function ipvsMetrics(daemon: IpvsDaemon): client.Registry {
  const registry = new client.Registry();
  let cache: { at: number; services: ObservedService[] } | undefined;
  const listed = (): ObservedService[] => {
    if (!cache || Date.now() - cache.at > LIST_CACHE_MS) {
      try {
        cache = { at: Date.now(), services: daemon.reconciler.ipvs.list() };
      } catch {
        cache = { at: Date.now(), services: [] };
      }
    }
    return cache.services;
  };

  /** Each listed destination with its labels: config service and backend names where known. */
  const destRows = () =>
    listed().flatMap((s) => {
      const vip = serviceKeyString(s);
      const entry = daemon.desired.table.get(vip);
      const names = entry && daemon.desired.backendsByDest(vip);
      return s.dests.map((dest) => {
        const dk = destKeyString(dest);
        const backend = names?.get(dk)?.join(",") ?? "";
        return { dest, labels: { service: entry?.owner ?? "", vip, backend, dest: dk } };
      });
    });

  const serviceLabels = ["service", "vip"];
  const destLabels = ["service", "vip", "backend", "dest"];
  for (const [field, suffix, what] of STAT_FIELDS) {
    new client.Counter({
      name: `clusterf_ipvs_service_${suffix}`,
      help: `IPVS service ${what} (kernel counter); service is the config service name, "" for services not in the config`,
      labelNames: serviceLabels,
      registers: [registry],
      collect() {
        this.reset();
        for (const s of listed()) {
          const key = serviceKeyString(s);
          const owner = daemon.desired.table.get(key)?.owner ?? "";
          this.inc({ service: owner, vip: key }, s.stats?.[field] ?? 0);
        }
      },
    });
    new client.Counter({
      name: `clusterf_ipvs_dest_${suffix}`,
      help: `IPVS destination ${what} (kernel counter); backend lists the config backends merged into the destination`,
      labelNames: destLabels,
      registers: [registry],
      collect() {
        this.reset();
        for (const { labels, dest } of destRows()) this.inc(labels, dest.stats?.[field] ?? 0);
      },
    });
  }
  new client.Gauge({
    name: "clusterf_ipvs_dest_active_connections",
    help: "active connections of an IPVS destination",
    labelNames: destLabels,
    registers: [registry],
    collect() {
      this.reset();
      for (const { labels, dest } of destRows()) this.set(labels, dest.activeConnections ?? 0);
    },
  });

  const syncDuration = new client.Histogram({
    name: "clusterf_ipvs_sync_duration_seconds",
    help: "time to bring the IPVS table to the desired state (full: first apply; incremental: after config changes; resync: periodic re-read)",
    labelNames: ["kind"],
    buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10],
    registers: [registry],
  });
  daemon.onSync((kind, ms) => syncDuration.observe({ kind }, ms / 1000));

  new client.Counter({
    name: "clusterf_ipvs_operations_total",
    help: "IPVS writes made, by kind",
    labelNames: ["op"],
    registers: [registry],
    collect() {
      this.reset();
      for (const [op, n] of Object.entries(daemon.reconciler.counters.writes)) this.inc({ op }, n);
    },
  });
  if (daemon.health) healthMetrics(registry, daemon.health);
  const simple = (name: string, help: string, value: () => number, type: "counter" | "gauge" = "counter") =>
    scrapedMetric(registry, type, name, help, value);
  new client.Counter({
    name: "clusterf_config_errors_total",
    help: "bad config values refused (the last good value stayed in force), by source",
    labelNames: ["source"],
    registers: [registry],
    collect() {
      this.reset();
      for (const [source, n] of Object.entries(daemon.counters.configErrors)) this.inc({ source }, n);
    },
  });
  new client.Gauge({
    name: "clusterf_ipvs_service_failing",
    help: "1 for each service whose last write the kernel refused (for example an unknown scheduler); the others are programmed",
    labelNames: ["service", "vip"],
    registers: [registry],
    collect() {
      this.reset();
      for (const vip of daemon.reconciler.failing.keys()) this.set({ service: daemon.desired.table.get(vip)?.owner ?? "", vip }, 1);
    },
  });
  simple("clusterf_ipvs_netlink_errors_total", "IPVS writes that the kernel refused or that timed out", () => daemon.reconciler.counters.netlinkErrors);
  simple("clusterf_ipvs_drift_corrections_total", "differences between the kernel and the last written table found by a resync", () => daemon.reconciler.counters.driftCorrections);
  simple("clusterf_etcd_connected", "1 when the etcd source is connected (0 when down or not configured)", () => (daemon.sourceUp.etcd ? 1 : 0), "gauge");
  simple("clusterf_ipvs_last_sync_timestamp_seconds", "when the table was last brought to the desired state (services the kernel keeps refusing aside: see clusterf_ipvs_service_failing)", () => daemon.counters.lastSyncAt / 1000, "gauge");
  simple("clusterf_ipvs_services", "IPVS services in the desired table", () => daemon.desired.table.size, "gauge");
  simple(
    "clusterf_ipvs_draining_destinations",
    "destinations that left the config but stay at weight 0 until their active connections end (-ipvs-drain-removed)",
    () => [...daemon.reconciler.draining.values()].reduce((n, m) => n + [...m.values()].filter((d) => !d.released).length, 0),
    "gauge",
  );
  return registry;
}

/** Healthy once the first sync is done and every source is up. */
export function ipvsHealth(daemon: IpvsDaemon): Health {
  const down = Object.entries(daemon.sourceUp).filter(([, up]) => !up).map(([s]) => s);
  if (!daemon.ready || daemon.counters.lastSyncAt === 0) {
    // The first sync waits for every source's first read: name the ones that are down.
    return { ok: false, detail: `waiting for the first sync${down.length ? `; config source down: ${down.join(", ")}` : ""}` };
  }
  if (down.length) return { ok: false, detail: `config source down: ${down.join(", ")} (the last known config stays in force)` };
  const failing = daemon.reconciler.failing.size;
  // A service the kernel refuses is the config's problem, not the daemon's: reported, still 200.
  const named = [...daemon.reconciler.failing.keys()].map((vip) => `${daemon.desired.table.get(vip)?.owner ?? "?"} (${vip})`);
  const note = failing ? `; ${failing} service(s) refused by the kernel: ${named.join(", ")}` : "";
  return { ok: true, detail: `ok: last sync ${new Date(daemon.counters.lastSyncAt).toISOString()}${note}` };
}
