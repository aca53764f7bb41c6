// IPVS table types. Identity fields (what names an object in the kernel) are kept apart from
// config fields (what can be edited in place) and from observed fields (stats, counters), as
// cloudflare/ipvs and merlin do: an identity change is delete+add, a config change is an edit.
// Service and Dest values are never changed once made (a change is a new object): the desired
// table, the operations, the reconciler's cache and the in-memory table share them instead of
// each keeping a copy of every destination.

import type Ipaddr from "ipaddr.js";
import type { Steps } from "../util/slices.ts";
import { lazy } from "../util/lazy.ts";

/** ipaddr.js at the first address it reads: its regular expressions are a tenth of an empty tree's start in a slow guest. */
const ipaddr = lazy(() => require("ipaddr.js") as typeof Ipaddr);

export type Family = "inet" | "inet6";
export type Protocol = "tcp" | "udp" | "sctp";
export type FwdMethod = "masq" | "localnode" | "tunnel" | "droute" | "bypass";

export const AF: Record<Family, number> = { inet: 2, inet6: 10 };
export const IPPROTO: Record<Protocol, number> = { tcp: 6, udp: 17, sctp: 132 };
export const FWD_METHOD_CODE: Record<FwdMethod, number> = {
  masq: 0,
  localnode: 1,
  tunnel: 2,
  droute: 3,
  bypass: 4,
};

/** IP_VS_SVC_F_PERSISTENT: client persistence, timeout = seconds. */
export const SVC_F_PERSISTENT = 0x0001;
/** IP_VS_SVC_F_HASHED: set by the kernel on every listed service; never ours to compare. */
export const SVC_F_HASHED = 0x0002;

export interface ServiceKey {
  family: Family;
  protocol: Protocol;
  /** Canonical textual address (addressText(): dotted IPv4, IPv6 as ipvsadm -Ln prints it). */
  address: string;
  port: number;
}

export interface ServiceConfig {
  scheduler: string;
  /** IP_VS_SVC_F_* bits that we own (persistence); the HASHED bit is stripped on read. */
  flags: number;
  /** Persistence timeout in seconds (0 when not persistent). */
  timeout: number;
  /** 32 for IPv4 (sent as 0xffffffff), 128 for IPv6. */
  netmask: number;
}

export interface Service extends ServiceKey, ServiceConfig {}

export interface DestKey {
  address: string;
  port: number;
}

export interface DestConfig {
  /** A number: a method the kernel listed that has no name here (a newer kernel's), as it came. */
  method: FwdMethod | number;
  weight: number;
  upperThreshold: number;
  lowerThreshold: number;
}

export interface Dest extends DestKey, DestConfig {}

/** One service of a table and its destinations (keyed by destKeyString). */
export interface TableEntry {
  service: Service;
  dests: Map<string, Dest>;
}

/**
 * A whole table, serviceKeyString → entry: the desired table (src/model), the reconciler's cache
 * of the kernel, what diff and applyOp work on.
 */
export type Table = Map<string, TableEntry>;

/** Counters observed in the kernel; never part of a comparison. */
export interface Stats {
  connections: number;
  packetsIn: number;
  packetsOut: number;
  bytesIn: number;
  bytesOut: number;
}

export interface ObservedDest extends Dest {
  activeConnections?: number;
  inactiveConnections?: number;
  persistentConnections?: number;
  stats?: Stats;
}

export interface ObservedService extends Service {
  stats?: Stats;
  dests: ObservedDest[];
}

export interface IpvsInfo {
  version: string;
  connTableSize: number;
}

/**
 * One write to the IPVS table. `key` is the destination's destKeyString when its maker has it (a
 * table that stores the destination keeps that string rather than making another). An added
 * service's `dests` are the destinations the operations after it give it (a cache of the table
 * may keep that map until it changes, rather than build a copy).
 */
export type Op =
  | { type: "add-service"; service: Service; dests?: ReadonlyMap<string, Dest> }
  | { type: "edit-service"; service: Service }
  | { type: "delete-service"; service: ServiceKey }
  | { type: "add-dest"; service: ServiceKey; dest: Dest; key?: string }
  | { type: "edit-dest"; service: ServiceKey; dest: Dest; key?: string }
  | { type: "delete-dest"; service: ServiceKey; dest: DestKey };

/**
 * The small interface every IPVS backend implements: the in-memory table (-ipvs-mock) and the
 * kernel driver (libnl over bun:ffi). Calls are synchronous: a netlink request is a blocking
 * send and receive with a timeout. Errors are thrown as IpvsError.
 */
export interface IpvsTable {
  info(): IpvsInfo;
  /** Every service with its destinations (and stats where the backend has them). */
  list(): ObservedService[];
  /**
   * Every service without its destinations (dests empty), where reading them costs one request
   * per service (the kernel): the reader then takes them one service at a time with listDests,
   * pausing in between (docs/config.md §4).
   */
  listServices?(withStats?: boolean): ObservedService[];
  /** listServices() with pauses (yields) between the parts of its answer. */
  listServicesSteps?(withStats?: boolean): Steps<ObservedService[]>;
  /**
   * A handle on the same table for a reader that runs beside the syncs, in slices of its own
   * (/metrics): the kernel's has its own socket; absent: this one.
   */
  reader?(): IpvsTable;
  /**
   * One service's destinations with their connection counts (one small dump). `withStats` false:
   * without the traffic counters, where a backend must decode them (a sync compares config only).
   */
  listDests(service: ServiceKey, withStats?: boolean): ObservedDest[];
  addService(service: Service): void;
  editService(service: Service): void;
  deleteService(key: ServiceKey): void;
  addDest(service: ServiceKey, dest: Dest): void;
  editDest(service: ServiceKey, dest: Dest): void;
  deleteDest(service: ServiceKey, dest: DestKey): void;
  flush(): void;
  /**
   * Several writes, in order (the kernel driver sends many in one netlink message): one result
   * per write, null or its error. A failed write does not stop the ones after it.
   */
  writeBatch(ops: readonly Op[]): (Error | null)[];
  close(): void;
}

/** One write through the single-write methods. */
export function writeOne(ipvs: IpvsTable, op: Op): void {
  switch (op.type) {
    case "add-service":
      return ipvs.addService(op.service);
    case "edit-service":
      return ipvs.editService(op.service);
    case "delete-service":
      return ipvs.deleteService(op.service);
    case "add-dest":
      return ipvs.addDest(op.service, op.dest);
    case "edit-dest":
      return ipvs.editDest(op.service, op.dest);
    case "delete-dest":
      return ipvs.deleteDest(op.service, op.dest);
  }
}

/** writeBatch() for tables without a faster way: one write after another, each op's error kept. */
export function writeEach(ipvs: IpvsTable, ops: readonly Op[], write: (op: Op) => void = (op) => writeOne(ipvs, op)): (Error | null)[] {
  return ops.map((op) => {
    try {
      write(op);
      return null;
    } catch (e) {
      return e as Error;
    }
  });
}

export type IpvsErrorCode = "EEXIST" | "ENOENT" | "ESRCH" | "EINVAL" | "ETIMEDOUT" | "EOTHER";

export class IpvsError extends Error {
  constructor(
    message: string,
    readonly code: IpvsErrorCode,
    readonly errno = 0,
  ) {
    super(message);
    this.name = "IpvsError";
  }
}

/**
 * The bytes of an address text: 4 for dotted-quad IPv4, 16 for IPv6 in any form (no zone).
 * Throws when the text is neither.
 */
export function addressBytes(text: string): number[] {
  const { IPv4, IPv6 } = ipaddr();
  if (IPv4.isValidFourPartDecimal(text)) return IPv4.parse(text).toByteArray();
  const tail = text.slice(text.lastIndexOf(":") + 1);
  // An IPv4 tail in the same four-part decimal as an IPv4 address (ipaddr.js also takes hex and
  // leading zeros there, which inet_pton refuses); no zone.
  if (!IPv6.isValid(text) || text.includes("%") || (tail.includes(".") && !IPv4.isValidFourPartDecimal(tail))) {
    throw new Error(`not an IP address: ${JSON.stringify(text)}`);
  }
  // ipaddr.js reads "::a.b.c.d" (IPv4-compatible) as "::ffff:a.b.c.d" (IPv4-mapped); "::0:a.b.c.d"
  // is the same 16 bytes as written, and it reads that one as written.
  return IPv6.parse(text === `::${tail}` && tail.includes(".") ? `::0:${tail}` : text).toByteArray();
}

/**
 * Canonical text of 4 or 16 address bytes (at buf[off]): dotted IPv4, and IPv6 exactly as glibc's
 * inet_ntop (and so ipvsadm -Ln) writes it, so that -print compares line by line with ipvsadm.
 * The longest run of two or more zero groups is "::" (the first on a tie); ::a.b.c.d and
 * ::ffff:a.b.c.d keep an IPv4 tail.
 */
export function addressText(buf: ArrayLike<number>, off = 0, length = buf.length - off): string {
  if (length === 4) return `${buf[off]}.${buf[off + 1]}.${buf[off + 2]}.${buf[off + 3]}`;
  if (length !== 16) throw new Error(`an address is 4 or 16 bytes, not ${length}`);
  const group = (i: number) => (buf[off + 2 * i]! << 8) | buf[off + 2 * i + 1]!;
  let bestAt = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (group(i) !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && group(j) === 0) j++;
    if (j - i > bestLen) [bestAt, bestLen] = [i, j - i];
    i = j;
  }
  if (bestAt === 0 && (bestLen === 6 || (bestLen === 5 && group(5) === 0xffff))) {
    const tail = `${buf[off + 12]}.${buf[off + 13]}.${buf[off + 14]}.${buf[off + 15]}`;
    return bestLen === 6 ? `::${tail}` : `::ffff:${tail}`;
  }
  let s = "";
  for (let i = 0; i < 8; i++) {
    if (i === bestAt) {
      s += "::";
      i += bestLen - 1;
      continue;
    }
    if (s.length && !s.endsWith(":")) s += ":";
    s += group(i).toString(16);
  }
  return s;
}

/** The last key made, by object and fields: a service's operations come one after another. */
let last: { k?: ServiceKey; family?: Family; protocol?: Protocol; address?: string; port?: number; key: string } = { key: "" };

export function serviceKeyString(k: ServiceKey): string {
  if (k === last.k && k.address === last.address && k.port === last.port && k.family === last.family && k.protocol === last.protocol) {
    return last.key;
  }
  const key = `${k.family}+${k.protocol}://${k.family === "inet6" ? `[${k.address}]` : k.address}:${k.port}`;
  last = { k, family: k.family, protocol: k.protocol, address: k.address, port: k.port, key };
  return key;
}

export function destKeyString(k: DestKey): string {
  return k.address.includes(":") ? `[${k.address}]:${k.port}` : `${k.address}:${k.port}`;
}

export function serviceConfigEqual(a: ServiceConfig, b: ServiceConfig): boolean {
  return (
    a.scheduler === b.scheduler &&
    (a.flags & ~SVC_F_HASHED) === (b.flags & ~SVC_F_HASHED) &&
    a.timeout === b.timeout &&
    a.netmask === b.netmask
  );
}

export function destConfigEqual(a: DestConfig, b: DestConfig): boolean {
  return (
    a.method === b.method &&
    a.weight === b.weight &&
    a.upperThreshold === b.upperThreshold &&
    a.lowerThreshold === b.lowerThreshold
  );
}
