// The table in the layout of `ipvsadm -Ln`, sorted (services by protocol, address, port;
// destinations by address, port) so that it can be compared line by line with ipvsadm output.
// A destination may carry a note (health checks: a backend down) after its last column, so the
// columns stay where ipvsadm has them.

import { IPPROTO, SVC_F_PERSISTENT, addressBytes, destKeyString, type Dest, type FwdMethod, type IpvsInfo, type ObservedDest, type Service } from "./types.ts";

const METHOD_WORD: Record<FwdMethod, string> = {
  masq: "Masq",
  localnode: "Local",
  tunnel: "Tunnel",
  droute: "Route",
  bypass: "Bypass",
};

export interface PrintableService extends Service {
  dests: Iterable<Dest | ObservedDest>;
}

/** ipvsadm's word for a method; one without a name here as the kernel's number. */
const methodWord = (method: Dest["method"]): string => (typeof method === "number" ? String(method) : METHOD_WORD[method]);

function addrSortKey(address: string): string {
  const bytes = addressBytes(address);
  return (bytes.length === 4 ? "4" : "6") + bytes.map((b) => b.toString(16).padStart(2, "0")).join("");
}

const hostPort = (address: string, port: number) => destKeyString({ address, port });

/** A note for a destination ("# health: a down (refused)"), or undefined for none. */
export type DestNote = (service: Service, dest: Dest) => string | undefined;

export function formatTable(services: Iterable<PrintableService>, info: IpvsInfo, note?: DestNote): string {
  const lines = [
    `IP Virtual Server version ${info.version} (size=${info.connTableSize})`,
    "Prot LocalAddress:Port Scheduler Flags",
    "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
  ];
  const sorted = [...services].sort(
    (a, b) =>
      IPPROTO[a.protocol] - IPPROTO[b.protocol] ||
      cmp(addrSortKey(a.address), addrSortKey(b.address)) ||
      a.port - b.port,
  );
  for (const s of sorted) {
    let line = `${s.protocol.toUpperCase()}  ${hostPort(s.address, s.port)} ${s.scheduler}`;
    if (s.flags & SVC_F_PERSISTENT) line += ` persistent ${s.timeout}`;
    lines.push(line);
    const dests = [...s.dests].sort((a, b) => cmp(addrSortKey(a.address), addrSortKey(b.address)) || a.port - b.port);
    for (const d of dests) {
      const o = d as ObservedDest;
      const head = `  -> ${hostPort(d.address, d.port).padEnd(28)} ${methodWord(d.method).padEnd(7)} ${String(d.weight).padEnd(6)} ${String(o.activeConnections ?? 0).padEnd(10)} `;
      const inactive = String(o.inactiveConnections ?? 0);
      const n = note?.(s, d);
      lines.push(n ? `${head}${inactive.padEnd(10)} ${n}` : head + inactive);
    }
  }
  return lines.join("\n") + "\n";
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
