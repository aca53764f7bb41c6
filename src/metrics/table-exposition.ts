// The per-service and per-destination families of clusterf-ipvs's /metrics (docs/config.md §8),
// written here in the Prometheus text format and sent in slices. At 5000 services × 10
// destinations they are 300,000 series: prom-client builds and formats those in one call that
// blocked the daemon for seconds on a slow machine (its /healthz unanswered, its route's lease
// at risk). Here the kernel is read one service at a time and the text is written a slice at a
// time, each slice a chunk of the streamed response, with a turn of the event loop in between.

import { type ObservedDest, type ObservedService, type Stats, destKeyString, serviceKeyString } from "../ipvs/types.ts";
import { SLICE_MS, turn } from "../util/slices.ts";

/** The config's names for what the kernel lists. */
export interface TableNames {
  /** The config service that owns an IPVS service ("" when not in the config). */
  owner(vip: string): string;
  /** The config backends merged into each destination of an IPVS service (by destKeyString). */
  backends(vip: string): ReadonlyMap<string, readonly string[]> | undefined;
}

export const STAT_FIELDS: ReadonlyArray<[keyof Stats, string, string]> = [
  ["connections", "connections_total", "connections scheduled"],
  ["packetsIn", "packets_in_total", "packets received"],
  ["packetsOut", "packets_out_total", "packets sent"],
  ["bytesIn", "bytes_in_total", "bytes received"],
  ["bytesOut", "bytes_out_total", "bytes sent"],
];

/** A label value in the text format: backslash, double quote and line feed escaped. */
export function labelValue(v: string): string {
  return /[\\"\n]/.test(v) ? v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n") : v;
}

function header(name: string, type: "counter" | "gauge", help: string): string {
  return `# HELP ${name} ${help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}\n# TYPE ${name} ${type}\n`;
}

/**
 * The text of the table's families, a line (or a family header) at a time; each family's series
 * together, as the format asks. `services` is a listing of the kernel (with stats).
 */
export function* tableLines(services: readonly ObservedService[], names: TableNames): Generator<string, void, void> {
  // Labels are made as the first family that needs them is written (a line at a time, so that a
  // slice can end anywhere), then reused by the others.
  const serviceLabels: string[] = [];
  const destLabels: string[][] = [];
  for (const [f, [field, suffix, what]] of STAT_FIELDS.entries()) {
    const name = `clusterf_ipvs_service_${suffix}`;
    yield header(name, "counter", `IPVS service ${what} (kernel counter); service is the config service name, "" for services not in the config`);
    for (let i = 0; i < services.length; i++) {
      if (f === 0) {
        const vip = serviceKeyString(services[i]!);
        serviceLabels.push(`service="${labelValue(names.owner(vip))}",vip="${labelValue(vip)}"`);
      }
      yield `${name}{${serviceLabels[i]}} ${services[i]!.stats?.[field] ?? 0}\n`;
    }
  }
  const destFamily = function* (name: string, value: (d: ObservedDest) => number): Generator<string, void, void> {
    for (let i = 0; i < services.length; i++) {
      const s = services[i]!;
      let labels = destLabels[i];
      if (!labels) {
        const byDest = names.backends(serviceKeyString(s));
        destLabels[i] = labels = s.dests.map((d) => {
          const dest = destKeyString(d);
          return `${serviceLabels[i]},backend="${labelValue(byDest?.get(dest)?.join(",") ?? "")}",dest="${labelValue(dest)}"`;
        });
      }
      for (let j = 0; j < s.dests.length; j++) yield `${name}{${labels[j]}} ${value(s.dests[j]!)}\n`;
    }
  };
  for (const [field, suffix, what] of STAT_FIELDS) {
    const name = `clusterf_ipvs_dest_${suffix}`;
    yield header(name, "counter", `IPVS destination ${what} (kernel counter); backend lists the config backends merged into the destination`);
    yield* destFamily(name, (d) => d.stats?.[field] ?? 0);
  }
  const name = "clusterf_ipvs_dest_active_connections";
  yield header(name, "gauge", "active connections of an IPVS destination");
  yield* destFamily(name, (d) => d.activeConnections ?? 0);
}

/** Bytes (about) in one chunk of the response: small enough that writing one is a short step too. */
const CHUNK_BYTES = 64 * 1024;

/**
 * Lines joined into chunks of about CHUNK_BYTES, with a turn of the event loop whenever `sliceMs`
 * of work has run (the time of writing the chunks out counts too).
 */
export async function* inSlices(lines: Iterable<string>, sliceMs = SLICE_MS): AsyncGenerator<string, void, void> {
  let chunk = "";
  let start = performance.now();
  for (const line of lines) {
    chunk += line;
    if (chunk.length < CHUNK_BYTES) continue;
    yield chunk;
    chunk = "";
    if (performance.now() - start >= sliceMs) {
      await turn();
      start = performance.now();
    }
  }
  if (chunk) yield chunk;
}
