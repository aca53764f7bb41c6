// clusterf-docker metrics (docs/config.md §8): backends published, etcd writes, lease keep-alive failures.
import client from "prom-client";
import type { DockerDaemon } from "../docker/daemon.ts";
import { oncePerScrape, type Health } from "./server.ts";
import { scrapedMetric } from "./scraped.ts";

export function dockerMetrics(daemon: DockerDaemon): client.Registry {
  const registry = new client.Registry();
  const view = oncePerScrape(() => daemon.statusView());
  const counter = (name: string, help: string, value: () => number) => scrapedMetric(registry, "counter", name, help, value);
  const gauge = (name: string, help: string, value: () => number) => scrapedMetric(registry, "gauge", name, help, value);
  gauge("clusterf_docker_containers_published", "labelled containers this host publishes", () => view().publishedContainers);
  gauge("clusterf_docker_backends_published", "backend keys this host publishes (one per labelled container and service)", () => view().published);
  gauge("clusterf_docker_connected", "1 while the Docker engine answers", () => (view().connected ? 1 : 0));
  new client.Counter({
    name: "clusterf_docker_etcd_writes_total",
    help: "etcd key writes, by kind (put, delete) and write requests (txn)",
    labelNames: ["kind"],
    registers: [registry],
    collect() {
      this.reset();
      const w = view().writes;
      this.inc({ kind: "put" }, w.puts);
      this.inc({ kind: "delete" }, w.deletes);
      this.inc({ kind: "txn" }, w.txns);
    },
  });
  counter("clusterf_docker_etcd_resyncs_total", "full two-way resyncs with etcd", () => view().writes.resyncs);
  counter("clusterf_docker_lease_grants_total", "etcd leases granted (a take-over does not count)", () => view().writes.grants);
  counter("clusterf_docker_lease_keepalive_failures_total", "lease keep-alive failures", () => view().writes.keepaliveFailures);
  return registry;
}

/** Healthy once Docker's state is published and both Docker and the lease keep-alive work. */
export function dockerHealth(daemon: DockerDaemon): Health {
  const s = daemon.statusView();
  if (!s.synced) return { ok: false, detail: "waiting for the first Docker state" };
  if (!s.connected) return { ok: false, detail: "Docker engine not answering" };
  if (s.keepaliveFailing) return { ok: false, detail: "etcd lease keep-alive failing" };
  return { ok: true, detail: `ok: ${s.published} backends published` };
}
