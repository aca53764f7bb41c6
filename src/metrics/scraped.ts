// A metric whose value is read from the daemon at each scrape. prom-client is imported only by the
// metrics modules that -metrics-listen loads (ipvs-metrics.ts, docker-metrics.ts): the packaged
// binary then keeps it in their chunk, not in the code every start loads (server.ts is).

import client, { type Registry } from "prom-client";

export function scrapedMetric(registry: Registry, type: "counter" | "gauge", name: string, help: string, value: () => number): void {
  if (type === "counter") {
    new client.Counter({ name, help, registers: [registry], collect() { this.reset(); this.inc(value()); } });
  } else {
    new client.Gauge({ name, help, registers: [registry], collect() { this.set(value()); } });
  }
}
