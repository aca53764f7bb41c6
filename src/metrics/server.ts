// The -metrics-listen HTTP endpoint shared by both daemons: Prometheus text at /metrics and a
// health answer at /healthz (200 when healthy, 503 with the reason otherwise).

import type { Registry } from "prom-client";
import * as log from "../util/log.ts";

export interface Health {
  ok: boolean;
  detail: string;
}

/** A /metrics body written in parts (streamed, with turns of the event loop in between). */
export interface Exposition {
  contentType: string;
  chunks(): AsyncIterable<string>;
}

/** A prom-client registry as an exposition of one part. */
function registryExposition(registry: Registry): Exposition {
  return {
    contentType: registry.contentType,
    async *chunks() {
      yield await registry.metrics();
    },
  };
}

export interface MetricsServer {
  url: string;
  stop(): void;
}

/**
 * "ADDR:PORT", "[v6]:PORT", ":PORT" or "PORT" → hostname and port. Without an address it binds
 * to loopback (metrics name services and backends: exposing them is the operator's choice, made
 * by naming an address such as 0.0.0.0 or [::]).
 */
export function parseListen(listen: string): { hostname: string; port: number } {
  const m = /^(?:(?:\[([^\]]+)\]|([^:[\]]*)):)?(\d{1,5})$/.exec(listen.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`invalid listen address ${JSON.stringify(listen)}: expected ADDR:PORT`);
  return { hostname: m[1] ?? (m[2] || "127.0.0.1"), port };
}

export function serveMetrics(listen: string, metrics: Registry | Exposition, health: () => Health): MetricsServer {
  const { hostname, port } = parseListen(listen);
  const exposition = "chunks" in metrics ? metrics : registryExposition(metrics);
  const server = Bun.serve({
    hostname,
    port,
    async fetch(req) {
      const path = new URL(req.url).pathname;
      if (path === "/metrics") {
        return new Response(ReadableStream.from(exposition.chunks()), { headers: { "content-type": exposition.contentType } });
      }
      if (path === "/healthz") {
        const h = health();
        return new Response(h.detail + "\n", { status: h.ok ? 200 : 503, headers: { "content-type": "text/plain" } });
      }
      return new Response("not found: try /metrics or /healthz\n", { status: 404 });
    },
  });
  const url = `http://${hostname.includes(":") ? `[${hostname}]` : hostname}:${server.port}`;
  log.info("metrics: listening", { url });
  return { url, stop: () => server.stop(true) };
}

/**
 * The -metrics-listen flag: undefined when it is empty (off), the server when listening, null
 * (after logging why) when it cannot listen; the caller exits then.
 */
export function startMetrics(listen: string, metrics: () => Registry | Exposition, health: () => Health): MetricsServer | undefined | null {
  if (!listen) return undefined;
  try {
    return serveMetrics(listen, metrics(), health);
  } catch (e) {
    log.error(`metrics: cannot listen on ${listen}: ${(e as Error).message}`);
    return null;
  }
}

/** A counter or gauge without labels whose value is read from the daemon at each scrape. */
/**
 * `read()` once per scrape: the metrics of one scrape, collected one after the other in the same
 * turn of the event loop, share one status view instead of making one each.
 */
export function oncePerScrape<T>(read: () => T): () => T {
  let view: T | undefined;
  return () => {
    if (view === undefined) {
      view = read();
      setImmediate(() => (view = undefined));
    }
    return view;
  };
}

