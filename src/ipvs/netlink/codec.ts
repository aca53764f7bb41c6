// Pure encode/decode of IPVS generic netlink messages (no I/O). Layout: linux/ip_vs.h and
// linux/netlink.h; byte vectors in the tests. Everything is written into a caller-owned,
// reused buffer so that per-object work stays small. The writes it encodes are the table's own
// operations (Op, types.ts); a value the kernel sends that has no name here is decoded as the
// kernel's number.

import {
  AF,
  FWD_METHOD_CODE,
  IPPROTO,
  SVC_F_HASHED,
  type Dest,
  type DestKey,
  type Family,
  type FwdMethod,
  type IpvsInfo,
  type ObservedDest,
  type ObservedService,
  type Op,
  type Protocol,
  type Service,
  type ServiceKey,
  type Stats,
  addressBytes,
  addressText,
} from "../types.ts";

// ---- constants ----------------------------------------------------------------------------

export const NLMSG_HDRLEN = 16;
export const GENL_HDRLEN = 4;
export const NLMSG_NOOP = 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_OVERRUN = 4;

export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ACK = 0x4;
export const NLM_F_DUMP = 0x300;
export const NLM_F_DUMP_INTR = 0x10;

export const IPVS_GENL_VERSION = 1;

export const CMD = {
  NEW_SERVICE: 1,
  SET_SERVICE: 2,
  DEL_SERVICE: 3,
  GET_SERVICE: 4,
  NEW_DEST: 5,
  SET_DEST: 6,
  DEL_DEST: 7,
  GET_DEST: 8,
  NEW_DAEMON: 9,
  DEL_DAEMON: 10,
  GET_DAEMON: 11,
  SET_CONFIG: 12,
  GET_CONFIG: 13,
  SET_INFO: 14,
  GET_INFO: 15,
  ZERO: 16,
  FLUSH: 17,
} as const;

export const CMD_NAME: Record<number, string> = Object.fromEntries(
  Object.entries(CMD).map(([k, v]) => [v, k]),
);

export const CMD_ATTR_SERVICE = 1;
export const CMD_ATTR_DEST = 2;

export const SVC_ATTR = {
  AF: 1,
  PROTOCOL: 2,
  ADDR: 3,
  PORT: 4,
  FWMARK: 5,
  SCHED_NAME: 6,
  FLAGS: 7,
  TIMEOUT: 8,
  NETMASK: 9,
  STATS: 10,
  PE_NAME: 11,
  STATS64: 12,
} as const;

export const DEST_ATTR = {
  ADDR: 1,
  PORT: 2,
  FWD_METHOD: 3,
  WEIGHT: 4,
  U_THRESH: 5,
  L_THRESH: 6,
  ACTIVE_CONNS: 7,
  INACT_CONNS: 8,
  PERSIST_CONNS: 9,
  STATS: 10,
  ADDR_FAMILY: 11,
  STATS64: 12,
} as const;

export const STATS_ATTR = { CONNS: 1, INPKTS: 2, OUTPKTS: 3, INBYTES: 4, OUTBYTES: 5 } as const;

export const INFO_ATTR = { VERSION: 1, CONN_TAB_SIZE: 2 } as const;

const FAMILY_OF_AF: Partial<Record<number, Family>> = { 2: "inet", 10: "inet6" };
const PROTOCOL_OF_NR: Partial<Record<number, Protocol>> = { 6: "tcp", 17: "udp", 132: "sctp" };
const METHOD_OF_CODE: Partial<Record<number, FwdMethod>> = { 0: "masq", 1: "localnode", 2: "tunnel", 3: "droute", 4: "bypass" };
const IP_VS_CONN_F_FWD_MASK = 0x7;

// ---- writer -------------------------------------------------------------------------------

/** Appends netlink messages/attributes into one growable, reused byte buffer. */
export class NlWriter {
  buf: Uint8Array;
  dv: DataView;
  pos = 0;

  constructor(size = 65536) {
    this.buf = new Uint8Array(size);
    this.dv = new DataView(this.buf.buffer);
  }

  reset(): void {
    this.pos = 0;
  }

  /** The bytes written so far (a view, valid until the next write). */
  bytes(from = 0): Uint8Array {
    return this.buf.subarray(from, this.pos);
  }

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const nb = new Uint8Array(size);
    nb.set(this.buf.subarray(0, this.pos));
    this.buf = nb;
    this.dv = new DataView(nb.buffer);
  }

  private hdr(type: number, len: number): void {
    this.dv.setUint16(this.pos, len, true);
    this.dv.setUint16(this.pos + 2, type, true);
    this.pos += 4;
  }

  u16(type: number, v: number): void {
    this.ensure(8);
    this.hdr(type, 6);
    this.dv.setUint32(this.pos, v & 0xffff, true);
    this.pos += 4;
  }

  /** u16 in network byte order (ports). */
  be16(type: number, v: number): void {
    this.ensure(8);
    this.hdr(type, 6);
    this.dv.setUint32(this.pos, 0, true);
    this.dv.setUint16(this.pos, v & 0xffff, false);
    this.pos += 4;
  }

  u32(type: number, v: number): void {
    this.ensure(8);
    this.hdr(type, 8);
    this.dv.setUint32(this.pos, v >>> 0, true);
    this.pos += 4;
  }

  /** Raw bytes, padded to 4. */
  raw(type: number, data: ArrayLike<number>): void {
    const n = data.length;
    const padded = (n + 3) & ~3;
    this.ensure(4 + padded);
    this.hdr(type, 4 + n);
    const b = this.buf;
    let p = this.pos;
    for (let i = 0; i < n; i++) b[p++] = data[i]!;
    for (let i = n; i < padded; i++) b[p++] = 0;
    this.pos = p;
  }

  /** NUL-terminated ASCII string, padded to 4. */
  str(type: number, s: string): void {
    const n = s.length + 1;
    const padded = (n + 3) & ~3;
    this.ensure(4 + padded);
    this.hdr(type, 4 + n);
    const b = this.buf;
    let p = this.pos;
    for (let i = 0; i < s.length; i++) b[p++] = s.charCodeAt(i) & 0xff;
    for (let i = s.length; i < padded; i++) b[p++] = 0;
    this.pos = p;
  }

  /** Address attribute: 4 bytes for inet, 16 for inet6. */
  addr(type: number, family: Family, address: string): void {
    const len = family === "inet" ? 4 : 16;
    this.ensure(4 + len);
    this.hdr(type, 4 + len);
    writeAddr(this.buf, this.pos, family, address);
    this.pos += len;
  }

  /** Starts a nested attribute (without NLA_F_NESTED, as the IPVS kernel code expects). */
  nestStart(type: number): number {
    this.ensure(4);
    const at = this.pos;
    this.hdr(type, 0);
    return at;
  }

  nestEnd(at: number): void {
    this.dv.setUint16(at, this.pos - at, true);
  }

  /** Writes nlmsghdr + genlmsghdr; returns the message start for msgEnd(). */
  msgStart(familyId: number, flags: number, seq: number, pid: number, cmd: number): number {
    this.ensure(NLMSG_HDRLEN + GENL_HDRLEN);
    const at = this.pos;
    const dv = this.dv;
    dv.setUint32(at, 0, true); // length, set by msgEnd
    dv.setUint16(at + 4, familyId, true);
    dv.setUint16(at + 6, flags, true);
    dv.setUint32(at + 8, seq >>> 0, true);
    dv.setUint32(at + 12, pid >>> 0, true);
    this.buf[at + 16] = cmd;
    this.buf[at + 17] = IPVS_GENL_VERSION;
    dv.setUint16(at + 18, 0, true);
    this.pos = at + NLMSG_HDRLEN + GENL_HDRLEN;
    return at;
  }

  msgEnd(at: number): void {
    this.dv.setUint32(at, this.pos - at, true);
  }
}

// ---- addresses ----------------------------------------------------------------------------

/** Writes an address (4 bytes for inet, 16 for inet6) at buf[off]. Throws on a bad address. */
export function writeAddr(buf: Uint8Array, off: number, family: Family, address: string): void {
  if (family === "inet") {
    // four-part decimal only (not the classful/octal/hex forms that inet_aton and ipaddr.js take)
    if (!fastIPv4(buf, off, address)) throw new Error(`not an IPv4 address: ${address}`);
  } else {
    if (fastIPv6(buf, off, address)) return;
    const bytes = addressBytes(address);
    if (bytes.length !== 16) throw new Error(`not an IPv6 address: ${address}`);
    buf.set(bytes, off);
  }
}

function fastIPv4(buf: Uint8Array, off: number, s: string): boolean {
  let part = 0;
  let digits = 0;
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || n === 3) return false;
      buf[off + n++] = part;
      part = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && part === 0) return false; // leading zero
      part = part * 10 + (c - 48);
      if (++digits > 3 || part > 255) return false;
    } else return false;
  }
  if (digits === 0 || n !== 3) return false;
  buf[off + 3] = part;
  return true;
}

const groups = new Uint16Array(8);

/** Plain IPv6 text (hex groups, at most one "::", optional dotted IPv4 tail) to 16 bytes. */
function fastIPv6(buf: Uint8Array, off: number, s: string): boolean {
  const dbl = s.indexOf("::");
  if (dbl >= 0 && s.indexOf("::", dbl + 1) >= 0) return false;
  const head = dbl >= 0 ? s.slice(0, dbl) : s;
  const tail = dbl >= 0 ? s.slice(dbl + 2) : "";
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const all = dbl >= 0 ? [...h, ...t] : h;
  let count = all.length;
  const last = all[all.length - 1];
  const v4 = last !== undefined && last.includes(".");
  if (v4) count += 1; // the IPv4 tail is two groups
  if (dbl >= 0 ? count > 7 : count !== 8) return false;
  const fill = 8 - count;
  let gi = 0;
  /** `holdsLast`: this list ends the address (where a dotted IPv4 tail may stand). */
  const put = (parts: string[], holdsLast: boolean): boolean => {
    for (let i = 0; i < parts.length; i++) {
      const g = parts[i]!;
      if (v4 && holdsLast && i === parts.length - 1) {
        const tmp = new Uint8Array(4);
        if (!fastIPv4(tmp, 0, g)) return false;
        groups[gi++] = (tmp[0]! << 8) | tmp[1]!;
        groups[gi++] = (tmp[2]! << 8) | tmp[3]!;
        continue;
      }
      if (g.length < 1 || g.length > 4) return false;
      let v = 0;
      for (let k = 0; k < g.length; k++) {
        const c = g.charCodeAt(k);
        const d = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : c >= 65 && c <= 70 ? c - 55 : -1;
        if (d < 0) return false;
        v = (v << 4) | d;
      }
      groups[gi++] = v;
    }
    return true;
  };
  if (dbl >= 0) {
    if (v4 && t.length === 0) return false; // "1.2.3.4::" forms: leave to addressBytes
    if (!put(h, false)) return false;
    for (let i = 0; i < fill; i++) groups[gi++] = 0;
    if (!put(t, true)) return false;
  } else if (!put(h, true)) return false;
  if (gi !== 8) return false;
  for (let i = 0; i < 8; i++) {
    buf[off + 2 * i] = groups[i]! >> 8;
    buf[off + 2 * i + 1] = groups[i]! & 0xff;
  }
  return true;
}

/** Canonical text of a 4- or 16-byte address read from buf[off] (as ipvsadm -Ln prints it). */
export function readAddr(buf: Uint8Array, off: number, family: Family): string {
  return addressText(buf, off, family === "inet" ? 4 : 16);
}

/** Family of a textual address (for dests, whose family may differ from the service's). */
export function addrFamily(address: string): Family {
  return address.includes(":") ? "inet6" : "inet";
}

// ---- attribute bodies ---------------------------------------------------------------------

/** Netmask attribute value: inet carries a network-order mask, inet6 a prefix length (LE u32). */
export function netmaskValue(family: Family, prefix: number): number {
  if (family === "inet6") return prefix >>> 0;
  if (prefix <= 0) return 0;
  if (prefix >= 32) return 0xffffffff;
  const mask = (0xffffffff << (32 - prefix)) >>> 0;
  // the kernel reads it as be32: store the bytes in network order, i.e. byte-swap for a LE u32
  return (
    (((mask & 0xff) << 24) | ((mask & 0xff00) << 8) | ((mask >>> 8) & 0xff00) | (mask >>> 24)) >>> 0
  );
}

/** Prefix length of a NETMASK attribute value read as a LE u32. */
export function netmaskPrefix(family: Family, v: number): number {
  if (family === "inet6") return v;
  // bytes in network order: count leading one bits of the big-endian value
  const be = (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0;
  let n = 0;
  for (let bit = 31; bit >= 0 && (be >>> bit) & 1; bit--) n++;
  return n;
}

/** Service identity attributes: AF, PROTOCOL, ADDR, PORT. */
export function putServiceKey(w: NlWriter, s: ServiceKey): void {
  w.u16(SVC_ATTR.AF, AF[s.family]);
  w.u16(SVC_ATTR.PROTOCOL, IPPROTO[s.protocol]);
  w.addr(SVC_ATTR.ADDR, s.family, s.address);
  w.be16(SVC_ATTR.PORT, s.port);
}

/** CMD_ATTR_SERVICE{identity (+ SCHED_NAME, FLAGS, TIMEOUT, NETMASK when full)}. */
export function putService(w: NlWriter, s: ServiceKey | Service, full: boolean): void {
  const at = w.nestStart(CMD_ATTR_SERVICE);
  putServiceKey(w, s);
  if (full) {
    const svc = s as Service;
    w.str(SVC_ATTR.SCHED_NAME, svc.scheduler);
    w.ensure(12);
    const p = w.pos;
    w.dv.setUint16(p, 12, true);
    w.dv.setUint16(p + 2, SVC_ATTR.FLAGS, true);
    w.dv.setUint32(p + 4, (svc.flags & ~SVC_F_HASHED) >>> 0, true);
    w.dv.setUint32(p + 8, 0xffffffff, true);
    w.pos = p + 12;
    w.u32(SVC_ATTR.TIMEOUT, svc.timeout);
    w.u32(SVC_ATTR.NETMASK, netmaskValue(s.family, svc.netmask));
  }
  w.nestEnd(at);
}

/** CMD_ATTR_DEST{ADDR, PORT (+ FWD_METHOD, WEIGHT, U_THRESH, L_THRESH when full)}. */
export function putDest(w: NlWriter, serviceFamily: Family, d: DestKey | Dest, full: boolean): void {
  const at = w.nestStart(CMD_ATTR_DEST);
  const fam = addrFamily(d.address);
  w.addr(DEST_ATTR.ADDR, fam, d.address);
  w.be16(DEST_ATTR.PORT, d.port);
  if (full) {
    const dest = d as Dest;
    // A number is a method the kernel listed without a name here: written back as it came.
    const code = typeof dest.method === "number" ? dest.method : FWD_METHOD_CODE[dest.method];
    if (code === undefined) throw new Error(`unknown forwarding method: ${dest.method}`);
    w.u32(DEST_ATTR.FWD_METHOD, code);
    w.u32(DEST_ATTR.WEIGHT, dest.weight);
    w.u32(DEST_ATTR.U_THRESH, dest.upperThreshold);
    w.u32(DEST_ATTR.L_THRESH, dest.lowerThreshold);
  }
  // a dest of the other family (tunnel to an IPv4 real server from an IPv6 service, ...)
  if (fam !== serviceFamily) w.u16(DEST_ATTR.ADDR_FAMILY, AF[fam]);
  w.nestEnd(at);
}

// ---- whole requests -----------------------------------------------------------------------

export interface Header {
  familyId: number;
  seq: number;
  pid: number;
}

/**
 * One request: a write to the table (the reconciler's Op, as it is) or one of the reads and the
 * flush, named after the IpvsTable methods that send them.
 */
export type Request =
  | Op
  | { type: "list-services" }
  | { type: "list-dests"; service: ServiceKey }
  | { type: "info" }
  | { type: "flush" };

/** The netlink command of each request. */
export const COMMAND: Record<Request["type"], number> = {
  "add-service": CMD.NEW_SERVICE,
  "edit-service": CMD.SET_SERVICE,
  "delete-service": CMD.DEL_SERVICE,
  "add-dest": CMD.NEW_DEST,
  "edit-dest": CMD.SET_DEST,
  "delete-dest": CMD.DEL_DEST,
  "list-services": CMD.GET_SERVICE,
  "list-dests": CMD.GET_DEST,
  info: CMD.GET_INFO,
  flush: CMD.FLUSH,
};

/** The listings are dumps: their answer is many messages, ended by NLMSG_DONE. */
export function isDump(req: Request): boolean {
  return req.type === "list-services" || req.type === "list-dests";
}

/** Flags of a request: REQUEST|ACK, plus DUMP for the listings. */
function requestFlags(req: Request): number {
  return isDump(req) ? NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP : NLM_F_REQUEST | NLM_F_ACK;
}

/** Appends one complete netlink message for req to w; returns its start offset. */
export function encodeRequest(w: NlWriter, h: Header, req: Request): number {
  const at = w.msgStart(h.familyId, requestFlags(req), h.seq, h.pid, COMMAND[req.type]);
  switch (req.type) {
    case "add-service":
    case "edit-service":
      putService(w, req.service, true);
      break;
    case "delete-service":
    case "list-dests":
      putService(w, req.service, false);
      break;
    case "add-dest":
    case "edit-dest":
      putService(w, req.service, false);
      putDest(w, req.service.family, req.dest, true);
      break;
    case "delete-dest":
      putService(w, req.service, false);
      putDest(w, req.service.family, req.dest, false);
      break;
  }
  w.msgEnd(at);
  return at;
}

// ---- reader -------------------------------------------------------------------------------

/**
 * Calls fn(type, payloadOffset, payloadLength) for each attribute in buf[off, end).
 * The type is masked to drop NLA_F_NESTED / NLA_F_NET_BYTEORDER.
 */
export function forEachAttr(
  dv: DataView,
  off: number,
  end: number,
  fn: (type: number, p: number, len: number) => void,
): void {
  while (off + 4 <= end) {
    const len = dv.getUint16(off, true);
    if (len < 4 || off + len > end) break;
    fn(dv.getUint16(off + 2, true) & 0x3fff, off + 4, len - 4);
    off += (len + 3) & ~3;
  }
}

function readU64(dv: DataView, p: number): number {
  return dv.getUint32(p, true) + dv.getUint32(p + 4, true) * 0x100000000;
}

/** Reads u8/u16/u32/u64 by attribute length. */
function readUint(dv: DataView, p: number, len: number): number {
  if (len >= 8) return readU64(dv, p);
  if (len >= 4) return dv.getUint32(p, true);
  if (len >= 2) return dv.getUint16(p, true);
  if (len >= 1) return dv.getUint8(p);
  return 0;
}

export function decodeStats(dv: DataView, off: number, end: number): Stats {
  const s: Stats = { connections: 0, packetsIn: 0, packetsOut: 0, bytesIn: 0, bytesOut: 0 };
  forEachAttr(dv, off, end, (t, p, len) => {
    switch (t) {
      case STATS_ATTR.CONNS:
        s.connections = readUint(dv, p, len);
        break;
      case STATS_ATTR.INPKTS:
        s.packetsIn = readUint(dv, p, len);
        break;
      case STATS_ATTR.OUTPKTS:
        s.packetsOut = readUint(dv, p, len);
        break;
      case STATS_ATTR.INBYTES:
        s.bytesIn = readUint(dv, p, len);
        break;
      case STATS_ATTR.OUTBYTES:
        s.bytesOut = readUint(dv, p, len);
        break;
    }
  });
  return s;
}

/**
 * A service as the kernel listed it. A family or protocol without a name here stays the kernel's
 * number; fwmark services (not modelled) come back with fwmark set and no address.
 */
export interface DecodedService extends Omit<ObservedService, "family" | "protocol"> {
  family: Family | number;
  protocol: Protocol | number;
  fwmark?: number;
}

/** A CMD_ATTR_SERVICE nest's attributes as sent: numbers and offsets, not yet named. */
interface ServiceAttrs {
  af: number;
  protocol: number;
  /** Offset of the address in buf; -1 when absent. */
  addrAt: number;
  port: number;
  fwmark: number;
  scheduler: string;
  flags: number;
  timeout: number;
  /** The NETMASK value as sent; -1 when absent. */
  netmask: number;
  /** Where the STATS and STATS64 nests are ([offset, end); -1 when absent): decoded only when asked for. */
  statsAt: number;
  statsEnd: number;
  stats64At: number;
  stats64End: number;
}

/** The 64-bit counters where the kernel sends them, else the 32-bit ones (one nest decoded, not both). */
function pickStats(dv: DataView, a: { statsAt: number; statsEnd: number; stats64At: number; stats64End: number }): Stats | undefined {
  if (a.stats64At >= 0) return decodeStats(dv, a.stats64At, a.stats64End);
  if (a.statsAt >= 0) return decodeStats(dv, a.statsAt, a.statsEnd);
  return undefined;
}

/**
 * Decodes the body of a CMD_ATTR_SERVICE nest (buf[off, end)). Dests are left empty. Without
 * `withStats` the counters are not decoded (a sync compares config, not traffic: a tenth of
 * reading a large table in a slow guest).
 */
export function decodeService(buf: Uint8Array, dv: DataView, off: number, end: number, withStats = true): DecodedService {
  const a = readServiceAttrs(buf, dv, off, end);
  const family = FAMILY_OF_AF[a.af];
  const svc: DecodedService = {
    family: family ?? a.af,
    protocol: PROTOCOL_OF_NR[a.protocol] ?? a.protocol,
    address: family && a.addrAt >= 0 ? readAddr(buf, a.addrAt, family) : "",
    port: a.port,
    scheduler: a.scheduler,
    flags: a.flags & ~SVC_F_HASHED,
    timeout: a.timeout,
    netmask: a.netmask < 0 ? (family === "inet6" ? 128 : 32) : netmaskPrefix(family ?? "inet", a.netmask),
    dests: [],
  };
  const stats = withStats ? pickStats(dv, a) : undefined;
  if (stats) svc.stats = stats;
  if (a.fwmark) svc.fwmark = a.fwmark;
  return svc;
}

function readServiceAttrs(buf: Uint8Array, dv: DataView, off: number, end: number): ServiceAttrs {
  const a: ServiceAttrs = { af: 0, protocol: 0, addrAt: -1, port: 0, fwmark: 0, scheduler: "", flags: 0, timeout: 0, netmask: -1, statsAt: -1, statsEnd: -1, stats64At: -1, stats64End: -1 };
  forEachAttr(dv, off, end, (t, p, len) => {
    switch (t) {
      case SVC_ATTR.AF:
        a.af = dv.getUint16(p, true);
        break;
      case SVC_ATTR.PROTOCOL:
        a.protocol = dv.getUint16(p, true);
        break;
      case SVC_ATTR.ADDR:
        a.addrAt = p;
        break;
      case SVC_ATTR.PORT:
        a.port = dv.getUint16(p, false);
        break;
      case SVC_ATTR.FWMARK:
        a.fwmark = dv.getUint32(p, true);
        break;
      case SVC_ATTR.SCHED_NAME:
        a.scheduler = readString(buf, p, len);
        break;
      case SVC_ATTR.FLAGS:
        a.flags = dv.getUint32(p, true);
        break;
      case SVC_ATTR.TIMEOUT:
        a.timeout = dv.getUint32(p, true);
        break;
      case SVC_ATTR.NETMASK:
        a.netmask = dv.getUint32(p, true);
        break;
      case SVC_ATTR.STATS:
        a.statsAt = p;
        a.statsEnd = p + len;
        break;
      case SVC_ATTR.STATS64:
        a.stats64At = p;
        a.stats64End = p + len;
        break;
    }
  });
  return a;
}

/** A NUL-terminated ASCII string attribute. */
function readString(buf: Uint8Array, p: number, len: number): string {
  let e = p;
  while (e < p + len && buf[e] !== 0) e++;
  return String.fromCharCode(...buf.subarray(p, e));
}

/** A CMD_ATTR_DEST nest's attributes as sent: numbers and offsets, not yet named. */
interface DestAttrs {
  /** Offset of the address in buf; -1 when absent. */
  addrAt: number;
  addrLen: number;
  /** ADDR_FAMILY; 0 when absent (the service's family). */
  af: number;
  port: number;
  method: number;
  weight: number;
  upperThreshold: number;
  lowerThreshold: number;
  activeConnections?: number;
  inactiveConnections?: number;
  persistentConnections?: number;
  /** As in ServiceAttrs. */
  statsAt: number;
  statsEnd: number;
  stats64At: number;
  stats64End: number;
}

/** Decodes the body of a CMD_ATTR_DEST nest; the address family defaults to the service's. Counters as in decodeService. */
export function decodeDest(
  buf: Uint8Array,
  dv: DataView,
  off: number,
  end: number,
  serviceFamily: Family,
  withStats = true,
): ObservedDest {
  const a = readDestAttrs(dv, off, end);
  const d: ObservedDest = {
    address: a.addrAt >= 0 ? readAddr(buf, a.addrAt, destFamily(a, serviceFamily)) : "",
    port: a.port,
    method: METHOD_OF_CODE[a.method] ?? a.method,
    weight: a.weight,
    upperThreshold: a.upperThreshold,
    lowerThreshold: a.lowerThreshold,
  };
  if (a.activeConnections !== undefined) d.activeConnections = a.activeConnections;
  if (a.inactiveConnections !== undefined) d.inactiveConnections = a.inactiveConnections;
  if (a.persistentConnections !== undefined) d.persistentConnections = a.persistentConnections;
  const stats = withStats ? pickStats(dv, a) : undefined;
  if (stats) d.stats = stats;
  return d;
}

/** A dest's own ADDR_FAMILY, else the service's; an address shorter than 16 bytes is IPv4 whatever they say. */
function destFamily(a: DestAttrs, serviceFamily: Family): Family {
  const family = FAMILY_OF_AF[a.af] ?? serviceFamily;
  return family === "inet6" && a.addrLen > 0 && a.addrLen < 16 ? "inet" : family;
}

function readDestAttrs(dv: DataView, off: number, end: number): DestAttrs {
  const a: DestAttrs = { addrAt: -1, addrLen: 0, af: 0, port: 0, method: 0, weight: 0, upperThreshold: 0, lowerThreshold: 0, statsAt: -1, statsEnd: -1, stats64At: -1, stats64End: -1 };
  forEachAttr(dv, off, end, (t, p, len) => {
    switch (t) {
      case DEST_ATTR.ADDR:
        a.addrAt = p;
        a.addrLen = len;
        break;
      case DEST_ATTR.PORT:
        a.port = dv.getUint16(p, false);
        break;
      case DEST_ATTR.FWD_METHOD:
        a.method = dv.getUint32(p, true) & IP_VS_CONN_F_FWD_MASK;
        break;
      case DEST_ATTR.WEIGHT:
        a.weight = dv.getInt32(p, true);
        break;
      case DEST_ATTR.U_THRESH:
        a.upperThreshold = dv.getUint32(p, true);
        break;
      case DEST_ATTR.L_THRESH:
        a.lowerThreshold = dv.getUint32(p, true);
        break;
      case DEST_ATTR.ACTIVE_CONNS:
        a.activeConnections = dv.getUint32(p, true);
        break;
      case DEST_ATTR.INACT_CONNS:
        a.inactiveConnections = dv.getUint32(p, true);
        break;
      case DEST_ATTR.PERSIST_CONNS:
        a.persistentConnections = dv.getUint32(p, true);
        break;
      case DEST_ATTR.STATS:
        a.statsAt = p;
        a.statsEnd = p + len;
        break;
      case DEST_ATTR.STATS64:
        a.stats64At = p;
        a.stats64End = p + len;
        break;
      case DEST_ATTR.ADDR_FAMILY:
        a.af = dv.getUint16(p, true);
        break;
    }
  });
  return a;
}

/** Decodes a GET_INFO answer's attributes (after the genlmsghdr). */
export function decodeInfo(dv: DataView, off: number, end: number): IpvsInfo {
  let v = 0;
  let size = 0;
  forEachAttr(dv, off, end, (t, p) => {
    if (t === INFO_ATTR.VERSION) v = dv.getUint32(p, true);
    else if (t === INFO_ATTR.CONN_TAB_SIZE) size = dv.getUint32(p, true);
  });
  return { version: `${(v >> 16) & 0xff}.${(v >> 8) & 0xff}.${v & 0xff}`, connTableSize: size };
}

/** Finds the first attribute of a type in buf[off, end); returns [payloadOffset, len] or null. */
export function findAttr(dv: DataView, off: number, end: number, type: number): [number, number] | null {
  while (off + 4 <= end) {
    const len = dv.getUint16(off, true);
    if (len < 4 || off + len > end) break;
    if ((dv.getUint16(off + 2, true) & 0x3fff) === type) return [off + 4, len - 4];
    off += (len + 3) & ~3;
  }
  return null;
}

// ---- debug --------------------------------------------------------------------------------

/** Bytes as hex (the kernel driver's debug lines). */
export function toHex(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i++) s += b[i]!.toString(16).padStart(2, "0");
  return s;
}
