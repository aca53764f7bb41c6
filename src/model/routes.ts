// Route lookup: for a backend address, the matching route with the longest prefix; a tie goes to
// the route whose name sorts first (docs/config.md §2). A route without any prefix is a default route
// for both families (length 0).

import { addressBits, type Cidr, type Route } from "../config/values.ts";
import type { Family } from "../ipvs/types.ts";

export interface NamedRoute {
  name: string;
  route: Route;
}

interface Candidate {
  name: string;
  route: Route;
  length: number;
  bits: bigint;
  width: bigint;
}

export class RouteIndex {
  private readonly v4: Candidate[] = [];
  private readonly v6: Candidate[] = [];

  constructor(routes: Iterable<[string, Route]>) {
    const sorted = [...routes].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    for (const [name, route] of sorted) {
      const isDefault = !route.prefix4 && !route.prefix6;
      for (const [list, prefix, width] of [
        [this.v4, route.prefix4, 32n],
        [this.v6, route.prefix6, 128n],
      ] as const) {
        if (prefix) list.push(candidate(name, route, prefix, width));
        else if (isDefault) list.push({ name, route, length: 0, bits: 0n, width });
      }
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
    const bits = family === "inet" ? ipv4Bits(address) : ipv6Bits(address);
    for (const c of list) {
      if (c.length === 0 || bits >> (c.width - BigInt(c.length)) === c.bits >> (c.width - BigInt(c.length))) {
        return { name: c.name, route: c.route };
      }
    }
    return undefined;
  }
}

function candidate(name: string, route: Route, prefix: Cidr, width: bigint): Candidate {
  return { name, route, length: prefix.length, bits: prefix.bits, width };
}

/** Does this route apply to the address, at any length? (For finding what a route change touches.) */
export function routeCovers(route: Route, family: Family, address: string): boolean {
  const prefix = family === "inet" ? route.prefix4 : route.prefix6;
  if (!prefix) return !route.prefix4 && !route.prefix6;
  const width = family === "inet" ? 32n : 128n;
  const bits = family === "inet" ? ipv4Bits(address) : ipv6Bits(address);
  const shift = width - BigInt(prefix.length);
  return bits >> shift === prefix.bits >> shift;
}

function ipv4Bits(address: string): bigint {
  const p = address.split(".");
  return BigInt(((+p[0]! << 24) >>> 0) + (+p[1]! << 16) + (+p[2]! << 8) + +p[3]!);
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
