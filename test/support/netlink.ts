// Netlink vectors by name: golden vectors written as named attributes (as cloudflare/ipvs's tests
// do), encoded bytes listed attribute by attribute, and the codec's requests and answers as the
// tests need them. A failing vector then names the attribute that differs.
//
// The attribute numbers are written here again from linux/ip_vs.h rather than taken from the
// codec: a wrong number in the codec must make the vectors fail, not move with them.
import {
  CMD_ATTR_DEST,
  CMD_ATTR_SERVICE,
  GENL_HDRLEN,
  NLMSG_HDRLEN,
  NlWriter,
  decodeDest,
  decodeService,
  encodeRequest,
  findAttr,
  toHex,
  type DecodedService,
  type Request,
} from "../../src/ipvs/netlink/codec.ts";
import type { ObservedDest } from "../../src/ipvs/types.ts";

const SERVICE_ATTRS = ["AF", "PROTOCOL", "ADDR", "PORT", "FWMARK", "SCHED_NAME", "FLAGS", "TIMEOUT", "NETMASK", "STATS", "PE_NAME", "STATS64"];
const DEST_ATTRS = ["ADDR", "PORT", "FWD_METHOD", "WEIGHT", "U_THRESH", "L_THRESH", "ACTIVE_CONNS", "INACT_CONNS", "PERSIST_CONNS", "STATS", "ADDR_FAMILY", "STATS64"];

/** Attribute names by level: IPVS_CMD_ATTR_* at the top, each nest's own below it (numbers from 1). */
interface Names {
  names: string[];
  nested?: Record<string, Names>;
}

/** IPVS_STATS_ATTR_*: the counters' nest (STATS and STATS64 alike). */
const STATS: Names = { names: ["CONNS", "INPKTS", "OUTPKTS", "INBYTES", "OUTBYTES", "CPS", "INPPS", "OUTPPS", "INBPS", "OUTBPS"] };

const COMMAND_ATTRS: Names = {
  names: ["SERVICE", "DEST"],
  nested: {
    SERVICE: { names: SERVICE_ATTRS, nested: { STATS, STATS64: STATS } },
    DEST: { names: DEST_ATTRS, nested: { STATS, STATS64: STATS } },
  },
};

/** One attribute of a vector: its name and payload (hex, without padding), or a nest of more. */
export type Attr = { name: string; hex: string } | { name: string; nest: Attr[] };

export const attr = (name: string, hex: string): Attr => ({ name, hex });
export const nest = (name: string, ...attrs: Attr[]): Attr => ({ name, nest: attrs });

export function fromHex(h: string): Uint8Array {
  const clean = h.replace(/\s+/g, "");
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.substr(i * 2, 2), 16);
  return out;
}

/** The bytes of attributes: length, type, payload padded to 4 (nests without NLA_F_NESTED, as IPVS expects). */
export function attrBytes(attrs: Attr[], level: Names = COMMAND_ATTRS): Uint8Array {
  const parts: number[] = [];
  for (const a of attrs) {
    const type = level.names.indexOf(a.name) + 1;
    if (type === 0) throw new Error(`no attribute ${a.name} here`);
    const payload = "nest" in a ? attrBytes(a.nest, level.nested?.[a.name] ?? { names: [] }) : fromHex(a.hex);
    const len = 4 + payload.length;
    parts.push(len & 0xff, len >> 8, type & 0xff, type >> 8, ...payload);
    while (parts.length % 4) parts.push(0);
  }
  return Uint8Array.from(parts);
}

/**
 * Attributes as lines "SERVICE.PORT 0050" (payload without padding), nests opened, so that two
 * encodings compare attribute by attribute. An unknown type shows as its number ("#13").
 */
export function namedAttrs(bytes: Uint8Array, level: Names = COMMAND_ATTRS, prefix = ""): string[] {
  const lines: string[] = [];
  let off = 0;
  while (off + 4 <= bytes.length) {
    const len = bytes[off]! | (bytes[off + 1]! << 8);
    const type = (bytes[off + 2]! | (bytes[off + 3]! << 8)) & 0x3fff;
    if (len < 4 || off + len > bytes.length) {
      lines.push(`${prefix}(bad length ${len} at byte ${off})`);
      break;
    }
    const name = level.names[type - 1] ?? `#${type}`;
    const payload = bytes.subarray(off + 4, off + len);
    const inner = level.nested?.[name];
    if (inner) lines.push(...namedAttrs(payload, inner, `${prefix}${name}.`));
    else lines.push(`${prefix}${name} ${toHex(payload)}`);
    off += (len + 3) & ~3;
  }
  return lines;
}

/** The genetlink payload of one request (after the genlmsghdr), as a copy. */
export function encodeAttrs(req: Request): Uint8Array {
  const w = new NlWriter(256);
  encodeRequest(w, { familyId: 0, seq: 0, pid: 0 }, req);
  return w.bytes(NLMSG_HDRLEN + GENL_HDRLEN).slice();
}

/** Decodes the service and dest nests of a request payload (attributes after the genlmsghdr): for round trips. */
export function decodeRequestAttrs(payload: Uint8Array, withStats = true): { service?: DecodedService; dest?: ObservedDest } {
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const out: { service?: DecodedService; dest?: ObservedDest } = {};
  const s = findAttr(dv, 0, payload.length, CMD_ATTR_SERVICE);
  if (s) out.service = decodeService(payload, dv, s[0], s[0] + s[1], withStats);
  const d = findAttr(dv, 0, payload.length, CMD_ATTR_DEST);
  const family = typeof out.service?.family === "string" ? out.service.family : "inet";
  if (d) out.dest = decodeDest(payload, dv, d[0], d[0] + d[1], family, withStats);
  return out;
}
