// Route lookup: for a backend address, the matching route with the longest prefix; a tie goes to
// the route whose name sorts first (docs/config.md §2). A route without any prefix is a default route
// for both families (length 0).

import { addressBits, type Route } from "../config/values.ts";
import type { Family } from "../ipvs/types.ts";

export interface NamedRoute {
  name: string;
  route: Route;
}

interface Candidate {
  name: string;
  route: Route;
  length: number;
  /** The network address: a 32-bit number for IPv4 (no bigint per lookup), a bigint for IPv6. */
  bits: number | bigint;
}

export class RouteIndex {
  private readonly v4: Candidate[] = [];
  private readonly v6: Candidate[] = [];

  constructor(routes: Iterable<[string, Route]>) {
    const sorted = [...routes].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    for (const [name, route] of sorted) {
      const isDefault = !route.prefix4 && !route.prefix6;
      if (route.prefix4) this.v4.push({ name, route, length: route.prefix4.length, bits: Number(route.prefix4.bits) });
      else if (isDefault) this.v4.push({ name, route, length: 0, bits: 0 });
      if (route.prefix6) this.v6.push({ name, route, length: route.prefix6.length, bits: route.prefix6.bits });
      else if (isDefault) this.v6.push({ name, route, length: 0, bits: 0n });
    }
    // Longest first; the stable sort keeps name order among equal lengths, so the first match wins.
    this.v4.sort((a, b) => b.length - a.length);
    this.v6.sort((a, b) => b.length - a.length);
  }

  get size(): number {
    return this.v4.length + this.v6.length;
  }

  lookup(family: Family, address: string): NamedRoute | undefined {
    const list = family === "inet" ? this.v4 : this.v6;
    if (list.length === 0) return undefined;
    const bits = family === "inet" ? ipv4Number(address) : ipv6Bits(address);
    for (const c of list) if (covers(family, c.length, c.bits, bits)) return { name: c.name, route: c.route };
    return undefined;
  }
}

/** Does the prefix (network bits, length) hold the address (bits of the same family)? */
function covers(family: Family, length: number, net: number | bigint, bits: number | bigint): boolean {
  if (length === 0) return true;
  if (family === "inet") return ((net as number) ^ (bits as number)) >>> (32 - length) === 0;
  const shift = BigInt(128 - length);
  return (net as bigint) >> shift === (bits as bigint) >> shift;
}

/** Does this route apply to the address, at any length? (For finding what a route change touches.) */
export function routeCovers(route: Route, family: Family, address: string): boolean {
  const prefix = family === "inet" ? route.prefix4 : route.prefix6;
  if (!prefix) return !route.prefix4 && !route.prefix6;
  return family === "inet"
    ? covers(family, prefix.length, Number(prefix.bits), ipv4Number(address))
    : covers(family, prefix.length, prefix.bits, ipv6Bits(address));
}

/** A canonical dotted quad as an unsigned 32-bit number. */
function ipv4Number(address: string): number {
  let n = 0;
  let octet = 0;
  for (let i = 0; i < address.length; i++) {
    const c = address.charCodeAt(i);
    if (c === 46) {
      n = n * 256 + octet;
      octet = 0;
    } else octet = octet * 10 + c - 48;
  }
  return n * 256 + octet;
}

const v6Cache = new Map<string, bigint>();

function ipv6Bits(address: string): bigint {
  let bits = v6Cache.get(address);
  if (bits !== undefined) return bits;
  bits = addressBits(address);
  if (v6Cache.size > 100_000) v6Cache.clear();
  v6Cache.set(address, bits);
  return bits;
}
