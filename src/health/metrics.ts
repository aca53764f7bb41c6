// Health-check metrics: per-backend up/down, check durations, transitions, and the checker's load.
// Up/down and the load are read from the checker at each scrape; durations and transitions are
// counted as they happen.

import client, { type Registry } from "prom-client";
import type { Checker } from "./checker.ts";

export function healthMetrics(registry: Registry, checker: Checker): void {
  new client.Gauge({
    name: "clusterf_backend_up",
    help: "1 while every health-checked destination of the backend passes its check, 0 while one is down (backends without a check: no series)",
    labelNames: ["service", "backend"],
    registers: [registry],
    collect() {
      this.reset();
      // A backend with an IPv4 and an IPv6 destination has two targets: it is up when both are.
      const up = new Map<string, { service: string; backend: string; up: boolean }>();
      for (const t of checker.list()) {
        for (const u of t.users) {
          const k = JSON.stringify([u.service, u.backend]);
          const had = up.get(k);
          up.set(k, { ...u, up: (had?.up ?? true) && t.state.up });
        }
      }
      for (const { service, backend, up: isUp } of up.values()) this.set({ service, backend }, isUp ? 1 : 0);
    },
  });
  const duration = new client.Histogram({
    name: "clusterf_health_check_duration_seconds",
    help: "time a health check took, by check type and result (pass, fail)",
    labelNames: ["type", "result"],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [registry],
  });
  const transitions = new client.Counter({
    name: "clusterf_health_transitions_total",
    help: "health-check transitions of a backend, by direction (to: up, down)",
    labelNames: ["service", "backend", "to"],
    registers: [registry],
  });
  checker.listen({
    result: (t, r) => duration.observe({ type: t.spec.type, result: r.ok ? "pass" : "fail" }, r.ms / 1000),
    transition: (ev) => {
      for (const u of ev.target.users) transitions.inc({ service: u.service, backend: u.backend, to: ev.transition });
    },
  });
  new client.Gauge({
    name: "clusterf_health_targets",
    help: "health-check targets (one per address, port and check, however many backends share it)",
    registers: [registry],
    collect() {
      this.set(checker.size);
    },
  });
  new client.Gauge({
    name: "clusterf_health_checks_in_flight",
    help: "health checks running now (at most the concurrency limit: each holds one socket)",
    registers: [registry],
    collect() {
      this.set(checker.active);
    },
  });
  new client.Gauge({
    name: "clusterf_health_checks_queued",
    help: "health checks due but waiting for a free slot (above 0 for long: checks run late)",
    registers: [registry],
    collect() {
      this.set(checker.queued);
    },
  });
}
