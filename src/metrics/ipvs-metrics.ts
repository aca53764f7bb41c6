// clusterf-ipvs metrics (docs/config.md §8): kernel counters per service and destination, labelled with
// the config's service and backend names, and the daemon's own health counters.

import client from "prom-client";
import type { IpvsDaemon, IpvsDaemonStatus } from "../daemon/ipvs-daemon.ts";
import type { IpvsTable, ObservedService } from "../ipvs/types.ts";
import { listSteps } from "../ipvs/list.ts";
import { runSliced } from "../util/slices.ts";
import { oncePerScrape, type Exposition, type Health } from "./server.ts";
import { scrapedMetric } from "./scraped.ts";
import { inSlices, tableLines, type TableNames } from "./table-exposition.ts";
import { healthMetrics } from "../health/metrics.ts";

/** The kernel folds its counters in every 2 s: a scrape re-reads the table at most once a second. */
const LIST_CACHE_MS = 1000;

/**
 * clusterf-ipvs's /metrics: the table's families (kernel counters per service and destination,
 * written in slices by table-exposition.ts) and the daemon's own metrics (prom-client).
 */
export function ipvsMetrics(daemon: IpvsDaemon): Exposition {
  const registry = daemonRegistry(daemon);
  let cache: { at: number; services: Promise<ObservedService[]> } | undefined;
  // Its own handle on the table: its read pauses between slices while the daemon syncs.
  let table: IpvsTable | undefined;
  // One read of the kernel for the scrapes of the same second, one service at a time.
  const listed = (): Promise<ObservedService[]> => {
    if (!cache || Date.now() - cache.at > LIST_CACHE_MS) {
      table ??= daemon.tableReader();
      const services = runSliced(listSteps(table)).then(
        (s) => s ?? [],
        () => [],
      );
      cache = { at: Date.now(), services };
    }
    return cache.services;
  };
  const names: TableNames = { owner: (vip) => daemon.ownerOf(vip), backends: (vip) => daemon.backendsOf(vip) };
  return {
    contentType: registry.contentType,
    async *chunks() {
      yield* inSlices(tableLines(await listed(), names));
      yield await registry.metrics();
    },
  };
}

/** The daemon's own metrics, read from its status view at each scrape. */
function daemonRegistry(daemon: IpvsDaemon): client.Registry {
  const registry = new client.Registry();
  const status = oncePerScrape(() => daemon.statusView());
  const syncDuration = new client.Histogram({
    name: "clusterf_ipvs_sync_duration_seconds",
    help: "time to bring the IPVS table to the desired state (full: first apply; incremental: after config changes; resync: periodic re-read)",
    labelNames: ["kind"],
    buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10],
    registers: [registry],
  });
  daemon.onSync((kind, ms) => syncDuration.observe({ kind }, ms / 1000));
  /** A counter with one label, its values read at each scrape. */
  const labelled = (name: string, help: string, label: string, values: () => Iterable<[string, number]>) =>
    new client.Counter({
      name,
      help,
      labelNames: [label],
      registers: [registry],
      collect() {
        this.reset();
        for (const [v, n] of values()) this.inc({ [label]: v }, n);
      },
    });
  labelled("clusterf_ipvs_operations_total", "IPVS writes made, by kind", "op", () => Object.entries(status().writes));
  if (daemon.health) healthMetrics(registry, daemon.health);
  labelled(
    "clusterf_config_errors_total",
    "bad config values refused (the last good value stayed in force), by source",
    "source",
    () => Object.entries(status().configErrors),
  );
  new client.Gauge({
    name: "clusterf_ipvs_service_failing",
    help: "1 for each service whose last write the kernel refused (for example an unknown scheduler); the others are programmed",
    labelNames: ["service", "vip"],
    registers: [registry],
    collect() {
      this.reset();
      for (const vip of status().failing) this.set({ service: daemon.ownerOf(vip), vip }, 1);
    },
  });
  const simple = (name: string, help: string, value: (s: IpvsDaemonStatus) => number, type: "counter" | "gauge" = "counter") =>
    scrapedMetric(registry, type, name, help, () => value(status()));
  simple("clusterf_ipvs_netlink_errors_total", "IPVS writes that the kernel refused or that timed out", (s) => s.netlinkErrors);
  simple("clusterf_ipvs_drift_corrections_total", "differences between the kernel and the last written table found by a resync", (s) => s.driftCorrections);
  simple("clusterf_etcd_connected", "1 when the etcd source is connected (0 when down or not configured)", (s) => (s.sourceUp.etcd ? 1 : 0), "gauge");
  simple("clusterf_ipvs_last_sync_timestamp_seconds", "when the table was last brought to the desired state (services the kernel keeps refusing aside: see clusterf_ipvs_service_failing)", (s) => s.lastSyncAt / 1000, "gauge");
  simple("clusterf_ipvs_services", "IPVS services in the desired table", (s) => s.services, "gauge");
  simple(
    "clusterf_ipvs_draining_destinations",
    "destinations that left the config but stay at weight 0 until their active connections end (-ipvs-drain-removed)",
    (s) => s.draining,
    "gauge",
  );
  return registry;
}

/** Healthy once the first sync is done and every source is up. */
export function ipvsHealth(daemon: IpvsDaemon): Health {
  const s = daemon.statusView();
  const down = Object.entries(s.sourceUp).filter(([, up]) => !up).map(([name]) => name);
  if (!s.ready) {
    // The first sync waits for every source's first read: name the ones that are down.
    return { ok: false, detail: `waiting for the first sync${down.length ? `; config source down: ${down.join(", ")}` : ""}` };
  }
  if (down.length) return { ok: false, detail: `config source down: ${down.join(", ")} (the last known config stays in force)` };
  // A service the kernel refuses is the config's problem, not the daemon's: reported, still 200.
  const named = s.failing.map((vip) => `${daemon.ownerOf(vip) || "?"} (${vip})`);
  const note = named.length ? `; ${named.length} service(s) refused by the kernel: ${named.join(", ")}` : "";
  return { ok: true, detail: `ok: last sync ${new Date(s.lastSyncAt).toISOString()}${note}` };
}
