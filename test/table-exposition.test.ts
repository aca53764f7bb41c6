// The table's /metrics families, written by hand in slices: the same text prom-client writes for
// the same series (it is the yardstick here, not the code under test), label escaping, and the
// event loop's turns between chunks.

import { describe, expect, test } from "bun:test";
import { countTurns } from "./support/turns.ts";
import client from "prom-client";
import { STAT_FIELDS, inSlices, labelValue, tableLines, type TableNames } from "../src/metrics/table-exposition.ts";
import type { ObservedDest, ObservedService, Stats } from "../src/ipvs/types.ts";

const stats = (n: number): Stats => ({ connections: n, packetsIn: 10 * n, packetsOut: 20 * n, bytesIn: 1000 * n, bytesOut: 2 ** 40 + n });

function dest(address: string, port: number, n: number): ObservedDest {
  return { address, port, method: "masq", weight: 1, upperThreshold: 0, lowerThreshold: 0, activeConnections: n % 3, stats: stats(n) };
}

function service(address: string, port: number, n: number, dests: ObservedDest[]): ObservedService {
  return { family: "inet", protocol: "tcp", address, port, scheduler: "wlc", flags: 0, timeout: 0, netmask: 32, stats: stats(n), dests };
}

const LISTING: ObservedService[] = [
  service("192.0.2.1", 80, 7, [dest("198.51.100.1", 8080, 1), dest("198.51.100.2", 8080, 2)]),
  service("192.0.2.2", 443, 9, [dest("203.0.113.9", 8443, 5)]),
  service("192.0.2.3", 53, 0, []), // not in the config
];

const NAMES: TableNames = {
  owner: (vip) => ({ "inet+tcp://192.0.2.1:80": "web", "inet+tcp://192.0.2.2:443": 'odd"name\\x' })[vip] ?? "",
  backends: (vip) =>
    vip === "inet+tcp://192.0.2.1:80"
      ? new Map([["198.51.100.1:8080", ["a", "b"]]])
      : vip === "inet+tcp://192.0.2.2:443"
        ? new Map([["203.0.113.9:8443", ["c"]]])
        : undefined,
};

/** The same families through prom-client, as the daemon wrote them before. */
async function promClientText(): Promise<string> {
  const registry = new client.Registry();
  const vip = (s: ObservedService) => `inet+tcp://${s.address}:${s.port}`;
  for (const [field, suffix, what] of STAT_FIELDS) {
    const c = new client.Counter({
      name: `clusterf_ipvs_service_${suffix}`,
      help: `IPVS service ${what} (kernel counter); service is the config service name, "" for services not in the config`,
      labelNames: ["service", "vip"],
      registers: [registry],
    });
    for (const s of LISTING) c.inc({ service: NAMES.owner(vip(s)), vip: vip(s) }, s.stats![field]);
  }
  const destSeries = (metric: client.Counter | client.Gauge, value: (d: ObservedDest) => number) => {
    for (const s of LISTING) {
      for (const d of s.dests) {
        const key = `${d.address}:${d.port}`;
        const labels = { service: NAMES.owner(vip(s)), vip: vip(s), backend: NAMES.backends(vip(s))?.get(key)?.join(",") ?? "", dest: key };
        if (metric instanceof client.Counter) metric.inc(labels, value(d));
        else metric.set(labels, value(d));
      }
    }
  };
  for (const [field, suffix, what] of STAT_FIELDS) {
    const c = new client.Counter({
      name: `clusterf_ipvs_dest_${suffix}`,
      help: `IPVS destination ${what} (kernel counter); backend lists the config backends merged into the destination`,
      labelNames: ["service", "vip", "backend", "dest"],
      registers: [registry],
    });
    destSeries(c, (d) => d.stats![field]);
  }
  const g = new client.Gauge({ name: "clusterf_ipvs_dest_active_connections", help: "active connections of an IPVS destination", labelNames: ["service", "vip", "backend", "dest"], registers: [registry] });
  destSeries(g, (d) => d.activeConnections!);
  return registry.metrics();
}

describe("table exposition", () => {
  test("writes what prom-client writes for the same series", async () => {
    const ours = [...tableLines(LISTING, NAMES)].join("");
    const theirs = await promClientText();
    // prom-client separates families with a blank line and ends with one newline
    expect(ours.split("\n").filter(Boolean)).toEqual(theirs.split("\n").filter(Boolean));
    expect(ours).toContain('clusterf_ipvs_service_bytes_out_total{service="odd\\"name\\\\x",vip="inet+tcp://192.0.2.2:443"} 1099511627785\n');
    expect(ours).toContain('clusterf_ipvs_dest_connections_total{service="web",vip="inet+tcp://192.0.2.1:80",backend="a,b",dest="198.51.100.1:8080"} 1\n');
    expect(ours).toContain('clusterf_ipvs_dest_active_connections{service="web",vip="inet+tcp://192.0.2.1:80",backend="",dest="198.51.100.2:8080"} 2\n');
  });

  test("label values escape backslash, double quote and line feed", () => {
    expect(labelValue('a"b\\c\nd')).toBe('a\\"b\\\\c\\nd');
    expect(labelValue("plain-name_1")).toBe("plain-name_1");
  });

  test("asks for each service's backend names once, however many families use them", () => {
    let asked = 0;
    const counting: TableNames = { owner: NAMES.owner, backends: (vip) => (asked++, NAMES.backends(vip)) };
    [...tableLines(LISTING, counting)];
    expect(asked).toBe(LISTING.length);
  });

  test("a large table comes in many chunks, with turns of the event loop in between", async () => {
    const lines = Array.from({ length: 100_000 }, (_, i) => `m{i="${i}"} ${i}\n`);
    const turns = countTurns();
    const seen: number[] = [];
    const sizes: number[] = [];
    let text = "";
    for await (const chunk of inSlices(lines, 0)) {
      seen.push(turns.count);
      sizes.push(chunk.length);
      text += chunk;
    }
    turns.stop();
    expect(text).toBe(lines.join(""));
    // chunks of 64 KiB (the line that reaches it included), the loop turned before each next one
    // (with a 0 ms slice)
    expect(sizes.length).toBeGreaterThan(20);
    for (const n of sizes.slice(0, -1)) expect(n).toBeGreaterThanOrEqual(64 * 1024), expect(n).toBeLessThan(64 * 1024 + 20);
    expect(sizes.at(-1)!).toBeLessThan(64 * 1024 + 20);
    for (let i = 1; i < seen.length; i++) expect(seen[i]!).toBeGreaterThan(seen[i - 1]!);
  });
});
