// Parsing of config values: frontend, backend and route objects (docs/config.md §2).
// Pure functions: text in, a typed value or a ConfigValueError out, plus warnings for unknown keys.
// JSON keys match case-insensitively, as Go's encoding/json did; when two spellings of one key
// appear, the last one in the document wins (also as Go did).

import type * as Yaml from "yaml";
import { parseCheck, type CheckSetting } from "../health/check-config.ts";
import { addressBytes, addressText } from "../ipvs/types.ts";
import { lazy } from "../util/lazy.ts";
import type { ValueFormat } from "./source.ts";

export type RouteMethod = "masq" | "droute" | "tunnel" | "filter";

export interface Frontend {
  ipv4?: string;
  ipv6?: string;
  tcp?: number;
  udp?: number;
  /** IPVS scheduler for this service; undefined = -ipvs-sched-name. */
  scheduler?: string;
  /** Client persistence in seconds; 0 = off. */
  persistent: number;
  /** The health check of every backend of the service (a backend's own replaces it); false = none. */
  check?: CheckSetting;
}

export interface Backend {
  ipv4?: string;
  ipv6?: string;
  tcp?: number;
  udp?: number;
  weight: number;
  /** This backend's own health check (replaces the frontend's); false = none. */
  check?: CheckSetting;
}

export interface Cidr {
  /** The network address, host bits cleared, canonical text. */
  address: string;
  length: number;
  /** The network address as an integer (IPv4 fits a number, but bigint keeps one code path). */
  bits: bigint;
}

export interface Route {
  prefix4?: Cidr;
  prefix6?: Cidr;
  gateway4?: string;
  gateway6?: string;
  /** undefined = keep -ipvs-fwd-method. */
  method?: RouteMethod;
}

export const DEFAULT_WEIGHT = 10;
export const MAX_WEIGHT = 2147483647;
/** Values above this are refused before parsing: a config value is a small object. */
export const MAX_VALUE_BYTES = 1024 * 1024;

export class ConfigValueError extends Error {
  constructor(
    message: string,
    readonly field?: string,
  ) {
    super(field ? `${field}: ${message}` : message);
    this.name = "ConfigValueError";
  }
}

export interface Parsed<T> {
  value: T;
  warnings: string[];
}

/** Loaded at the first YAML value: most trees are JSON only, and the parser is 7 MiB of a start-up. */
const yaml = lazy(() => require("yaml") as typeof Yaml);

/** Parses the text of a value into a plain object (JSON or YAML), refusing anything else. */
export function parseObject(text: string, format: ValueFormat): Record<string, unknown> {
  if (text.length > MAX_VALUE_BYTES) {
    throw new ConfigValueError(`value is ${text.length} bytes, larger than the limit of ${MAX_VALUE_BYTES}`);
  }
  if (text.trim() === "") throw new ConfigValueError("empty value: expected an object such as {}");
  let data: unknown;
  if (format === "yaml") {
    try {
      data = yaml().parse(text, { uniqueKeys: false, maxAliasCount: 100, logLevel: "error" });
    } catch (e) {
      throw new ConfigValueError(`invalid YAML: ${firstLine((e as Error).message)}`);
    }
  } else {
    try {
      data = JSON.parse(text);
    } catch (e) {
      throw new ConfigValueError(`invalid JSON: ${firstLine((e as Error).message)}`);
    }
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new ConfigValueError(`expected an object, got ${describe(data)}`);
  }
  return data as Record<string, unknown>;
}

function firstLine(s: string): string {
  return s.split("\n")[0]!.slice(0, 200);
}

/** A value as an error message names it: "the string \"x\"", "number 5", "an array"… */
export function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") return `the string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + "…" : v)}`;
  if (typeof v === "object") return "an object";
  return `${typeof v} ${String(v)}`;
}

const FIELDS = new Map<string, unknown>();

/**
 * Folds the keys of a decoded object onto the known field names (a foldMap), case-insensitively.
 * Leaves the fields in `fields` (by default the shared FIELDS; null values dropped: null keeps the
 * default); returns warnings for unknown keys.
 */
export function fold(obj: Record<string, unknown>, byLower: Map<string, string>, fields: Map<string, unknown> = FIELDS): string[] {
  // One map for every top-level value (parsing is synchronous): a full read makes no garbage map per value.
  fields.clear();
  const warnings: string[] = [];
  for (const key in obj) {
    const value = obj[key];
    const name = byLower.get(key) ?? byLower.get(key.toLowerCase());
    if (!name) {
      warnings.push(`unknown key ${JSON.stringify(key)} ignored`);
      continue;
    }
    if (value === null) fields.delete(name);
    else fields.set(name, value);
  }
  return warnings;
}

export function integer(v: unknown, field: string, min: number, max: number, what: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new ConfigValueError(`${what} must be an integer ${min}…${max}, got ${describe(v)}`, field);
  }
  return v;
}

const port = (v: unknown, field: string) => integer(v, field, 1, 65535, "port");

function str(v: unknown, field: string): string {
  if (typeof v !== "string") throw new ConfigValueError(`expected a string, got ${describe(v)}`, field);
  return v;
}

/**
 * An address of the given family (either, when none is given): its canonical text, from its bytes
 * (addressText: as ipvsadm -Ln prints it); "" = absent. Canonical IPv6 text has a ":", IPv4 none.
 */
function parseAddress(v: unknown, field: string, family?: 4 | 6): string | undefined {
  const s = str(v, field).trim();
  if (s === "") return undefined;
  // Four-part decimal IPv4 without leading zeros is its own canonical text: no bytes, no copy.
  if (family !== 6 && IPV4.test(s)) return s;
  let bytes: number[] | undefined;
  try {
    bytes = addressBytes(s);
  } catch {
    bytes = undefined;
  }
  const fam = bytes?.length === 4 ? 4 : 6;
  if (!bytes || (family && fam !== family)) throw new ConfigValueError(`invalid ${family ? `IPv${family}` : "IP"} address ${JSON.stringify(s)}`, field);
  return addressText(bytes);
}

const OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
const IPV4 = new RegExp(`^${OCTET}(?:\\.${OCTET}){3}$`);

/** An IPv4 address in dotted-quad form, canonical text; "" = absent. */
export function parseIPv4(v: unknown, field: string): string | undefined {
  return parseAddress(v, field, 4);
}

/** An IPv6 address, canonical text; "" = absent. */
export function parseIPv6(v: unknown, field: string): string | undefined {
  return parseAddress(v, field, 6);
}

/**
 * A destination (backend or gateway) address: the kernel refuses an IPv4-mapped IPv6 address
 * (::ffff:a.b.c.d) as a destination with EINVAL, so it is a bad value here rather than a service
 * retried forever. As a frontend (a service address) the kernel takes it.
 */
function destination(address: string | undefined, field: string): string | undefined {
  if (address === undefined) return undefined;
  const b = addressBytes(address);
  if (b.length === 16 && b.slice(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) {
    throw new ConfigValueError(`IPv4-mapped address ${address} cannot be an IPVS destination (the kernel refuses it): use ipv4`, field);
  }
  return address;
}

/** Address text → integer, for prefix matching. */
export function addressBits(address: string): bigint {
  let n = 0n;
  for (const b of addressBytes(address)) n = (n << 8n) | BigInt(b);
  return n;
}

export function parseCidr(v: unknown, field: string, family?: 4 | 6): { family: 4 | 6; cidr: Cidr } | undefined {
  const s = str(v, field).trim();
  if (s === "") return undefined;
  const slash = s.indexOf("/");
  if (slash < 0) throw new ConfigValueError(`invalid CIDR ${JSON.stringify(s)}: expected ADDRESS/LENGTH`, field);
  const lenText = s.slice(slash + 1);
  let bytes: number[];
  try {
    bytes = addressBytes(s.slice(0, slash));
  } catch {
    throw new ConfigValueError(`invalid CIDR ${JSON.stringify(s)}: bad address`, field);
  }
  const fam = bytes.length === 4 ? 4 : 6;
  if (family && fam !== family) throw new ConfigValueError(`expected an IPv${family} CIDR, got ${JSON.stringify(s)}`, field);
  const max = fam === 4 ? 32 : 128;
  if (!/^\d{1,3}$/.test(lenText) || Number(lenText) > max) {
    throw new ConfigValueError(`invalid CIDR ${JSON.stringify(s)}: prefix length must be 0…${max}`, field);
  }
  const length = Number(lenText);
  // clear the host bits
  for (let i = 0; i < bytes.length; i++) {
    const keep = Math.min(8, Math.max(0, length - 8 * i));
    bytes[i]! &= (0xff00 >> keep) & 0xff;
  }
  let bits = 0n;
  for (const b of bytes) bits = (bits << 8n) | BigInt(b);
  return { family: fam, cidr: { address: addressText(bytes), length, bits } };
}

const SCHEDULER = /^[a-z][a-z0-9_]{0,15}$/;
/** Known field names by their lower-case spelling, and by their own (the common case: one lookup). */
export function foldMap(known: readonly string[]): Map<string, string> {
  return new Map(known.flatMap((k) => [[k.toLowerCase(), k], [k, k]] as [string, string][]));
}
const FRONTEND_KEYS = foldMap(["ipv4", "ipv6", "tcp", "udp", "scheduler", "persistent", "check"]);
const BACKEND_KEYS = foldMap(["ipv4", "ipv6", "tcp", "udp", "weight", "check"]);

/**
 * The `check` key of a frontend or backend, parsed last: parseCheck folds its own object, and
 * FIELDS must have been read by then. Its warnings join the value's.
 */
function withCheck(into: Frontend | Backend, fields: Map<string, unknown>, warnings: string[]): void {
  if (!fields.has("check")) return;
  const c = parseCheck(fields.get("check"));
  warnings.push(...c.warnings);
  if (c.value === undefined) return;
  into.check = c.value;
}
const ROUTE_KEYS = foldMap(["Prefix4", "Gateway4", "Prefix6", "Gateway6", "Prefix", "Gateway", "IpvsMethod"]);

export function parseFrontend(text: string, format: ValueFormat = "json"): Parsed<Frontend> {
  const warnings = fold(parseObject(text, format), FRONTEND_KEYS);
  const fields = FIELDS;
  const f: Frontend = { persistent: 0 };
  if (fields.has("ipv4")) f.ipv4 = parseIPv4(fields.get("ipv4"), "ipv4");
  if (fields.has("ipv6")) f.ipv6 = parseIPv6(fields.get("ipv6"), "ipv6");
  if (fields.has("tcp")) f.tcp = port(fields.get("tcp"), "tcp");
  if (fields.has("udp")) f.udp = port(fields.get("udp"), "udp");
  if (fields.has("scheduler")) {
    const s = str(fields.get("scheduler"), "scheduler").trim();
    if (s !== "" && !SCHEDULER.test(s)) throw new ConfigValueError(`invalid scheduler name ${JSON.stringify(s)}`, "scheduler");
    if (s !== "") f.scheduler = s;
  }
  if (fields.has("persistent")) f.persistent = integer(fields.get("persistent"), "persistent", 0, 2147483647, "persistence (seconds)");
  withCheck(f, fields, warnings);
  if (!f.ipv4 && !f.ipv6) warnings.push("frontend has no ipv4 or ipv6 address: no IPVS service");
  else if (!f.tcp && !f.udp) warnings.push("frontend has no tcp or udp port: no IPVS service");
  return { value: f, warnings };
}

export function parseBackend(text: string, format: ValueFormat = "json"): Parsed<Backend> {
  const warnings = fold(parseObject(text, format), BACKEND_KEYS);
  const fields = FIELDS;
  const b: Backend = { weight: DEFAULT_WEIGHT };
  if (fields.has("ipv4")) b.ipv4 = parseIPv4(fields.get("ipv4"), "ipv4");
  if (fields.has("ipv6")) b.ipv6 = destination(parseIPv6(fields.get("ipv6"), "ipv6"), "ipv6");
  if (fields.has("tcp")) b.tcp = port(fields.get("tcp"), "tcp");
  if (fields.has("udp")) b.udp = port(fields.get("udp"), "udp");
  if (fields.has("weight")) b.weight = integer(fields.get("weight"), "weight", 0, MAX_WEIGHT, "weight");
  withCheck(b, fields, warnings);
  if (!b.ipv4 && !b.ipv6) warnings.push("backend has no ipv4 or ipv6 address: no IPVS destination");
  else if (!b.tcp && !b.udp) warnings.push("backend has no tcp or udp port: no IPVS destination");
  return { value: b, warnings };
}

export function parseRouteMethod(v: unknown, field: string): RouteMethod | undefined {
  const s = str(v, field).trim().toLowerCase();
  if (s === "") return undefined;
  if (s === "masq" || s === "droute" || s === "tunnel" || s === "filter") return s;
  throw new ConfigValueError(`unknown method ${JSON.stringify(s)}: expected masq, droute, tunnel or filter`, field);
}

export function parseRoute(text: string, format: ValueFormat = "json"): Parsed<Route> {
  const warnings = fold(parseObject(text, format), ROUTE_KEYS);
  const fields = FIELDS;
  const r: Route = {};
  const setPrefix = (family: 4 | 6, cidr: Cidr, field: string) => {
    const slot = family === 4 ? "prefix4" : "prefix6";
    const had = r[slot];
    if (had && (had.bits !== cidr.bits || had.length !== cidr.length)) {
      throw new ConfigValueError(`conflicts with the IPv${family} prefix given by another key`, field);
    }
    r[slot] = cidr;
  };
  const gatewayField: Partial<Record<4 | 6, string>> = {};
  const setGateway = (family: 4 | 6, address: string, field: string) => {
    const slot = family === 4 ? "gateway4" : "gateway6";
    if (r[slot] && r[slot] !== address) throw new ConfigValueError(`conflicts with the IPv${family} gateway given by another key`, field);
    r[slot] = address;
    gatewayField[family] = field;
  };
  for (const [field, family] of [["Prefix4", 4], ["Prefix6", 6], ["Prefix", undefined]] as const) {
    if (!fields.has(field)) continue;
    const p = parseCidr(fields.get(field), field, family);
    if (p) setPrefix(p.family, p.cidr, field);
  }
  if (fields.has("Gateway4")) {
    const g = parseIPv4(fields.get("Gateway4"), "Gateway4");
    if (g) setGateway(4, g, "Gateway4");
  }
  if (fields.has("Gateway6")) {
    const g = destination(parseIPv6(fields.get("Gateway6"), "Gateway6"), "Gateway6");
    if (g) setGateway(6, g, "Gateway6");
  }
  if (fields.has("Gateway")) {
    const g = parseAddress(fields.get("Gateway"), "Gateway");
    if (g) setGateway(g.includes(":") ? 6 : 4, destination(g, "Gateway")!, "Gateway");
  }
  // A route with a prefix applies only to the families it has a prefix for: a gateway of the
  // other family would never be used.
  if (r.prefix4 || r.prefix6) {
    for (const [family, other] of [[4, 6], [6, 4]] as const) {
      const field = gatewayField[family];
      if (field && !r[family === 4 ? "prefix4" : "prefix6"]) {
        throw new ConfigValueError(
          `an IPv${family} gateway needs an IPv${family} prefix in a route that has a prefix; this route has only an IPv${other} prefix`,
          field,
        );
      }
    }
  }
  if (fields.has("IpvsMethod")) r.method = parseRouteMethod(fields.get("IpvsMethod"), "IpvsMethod");
  return { value: r, warnings };
}
