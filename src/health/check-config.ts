// The `check` object of a frontend or backend value (active health checks). Pure: a decoded JSON
// or YAML value in, a CheckSpec (or "off") out, or a ConfigValueError naming the field
// (`check.interval: …`), plus warnings for unknown keys. Keys match case-insensitively, as in
// the rest of the config; `null` for a field keeps its default.

import { parseDuration } from "../util/duration.ts";
import { ConfigValueError, describe, fold, foldMap, integer } from "../config/values.ts";
import { destKeyString } from "../ipvs/types.ts";
import { lazy } from "../util/lazy.ts";

export type CheckType = "tcp" | "http" | "https";

/** An accepted HTTP status range, both ends included. */
export interface StatusRange {
  from: number;
  to: number;
}

export interface CheckSpec {
  type: CheckType;
  /** http(s) only: the request path (starts with "/"). */
  path: string;
  /** http(s) only: the accepted status codes. */
  status: StatusRange[];
  /** http(s) only: the Host header; undefined = the target's address. */
  host?: string;
  /** https only: verify the server's certificate (off by default: backends rarely have one for their address). */
  verify: boolean;
  intervalMs: number;
  timeoutMs: number;
  rise: number;
  fall: number;
  /** undefined = the destination's port. */
  port?: number;
  /** 0 = none: the full weight at once on recovery. */
  slowStartMs: number;
}

/**
 * What one value says about checks: a spec, `false` (explicitly off), or undefined (the key is
 * absent: a backend then takes its frontend's check).
 */
export type CheckSetting = CheckSpec | false | undefined;

export const CHECK_DEFAULTS = {
  type: "tcp",
  path: "/",
  status: [{ from: 200, to: 399 }],
  verify: false,
  intervalMs: 2000,
  timeoutMs: 1000,
  rise: 2,
  fall: 3,
  slowStartMs: 0,
} as const satisfies Partial<CheckSpec>;

/** Below this, thousands of targets would be a probe storm; 100 ms is already aggressive. */
export const MIN_INTERVAL_MS = 100;
/** Timers hold at most 2^31-1 ms; a day is far beyond any sensible check period or ramp. */
export const MAX_DURATION_MS = 24 * 3600 * 1000;
export const MAX_RISE_FALL = 1000;

const KEYS = ["type", "path", "status", "host", "verify", "interval", "timeout", "rise", "fall", "port", "slowStart"] as const;
/** Made at the first check (values.ts imports this module: its foldMap may not be ready at load). */
const checkKeys = lazy(() => foldMap(KEYS));
const HTTP_ONLY = ["path", "status", "host"] as const;

/** Go-style duration text ("500ms", "2s", "1m30s"), the same syntax as the duration flags. */
function duration(v: unknown, field: string): number {
  // A bare JSON number is refused: is 2 seconds or milliseconds? The string says which.
  const ms = typeof v === "string" ? parseDuration(v) : undefined;
  if (ms === undefined) throw new ConfigValueError(`expected a duration such as "500ms", "2s" or "1m", got ${describe(v)}`, field);
  if (ms > MAX_DURATION_MS) throw new ConfigValueError(`${v} is longer than the limit of 24h`, field);
  return ms;
}

// What goes on the request line and in a header: printable ASCII without spaces (a space or a
// control character would split or smuggle a request line).
const REQUEST_TOKEN = /^[\x21-\x7e]+$/;

function statusCode(v: unknown, field: string): number {
  return integer(v, field, 100, 599, "status code");
}

/** `[200]`, `[200, 204]`, `["200-299", 301]`, or a lone `200`. */
function parseStatus(v: unknown, field: string): StatusRange[] {
  const items = Array.isArray(v) ? v : [v];
  if (items.length === 0) throw new ConfigValueError("empty list: no status would pass", field);
  return items.map((item, i) => {
    const at = Array.isArray(v) ? `${field}[${i}]` : field;
    if (typeof item === "string") {
      const m = /^\s*(\d{3})\s*-\s*(\d{3})\s*$/.exec(item);
      if (!m) throw new ConfigValueError(`expected a status code or a range such as "200-299", got ${describe(item)}`, at);
      const from = statusCode(Number(m[1]), at);
      const to = statusCode(Number(m[2]), at);
      if (from > to) throw new ConfigValueError(`range ${item} is empty (its start is above its end)`, at);
      return { from, to };
    }
    const code = statusCode(item, at);
    return { from: code, to: code };
  });
}

function parseObjectCheck(obj: Record<string, unknown>, field: string): { value: CheckSpec; warnings: string[] } {
  // A map of its own: the frontend or backend being parsed holds the shared one.
  const fields = new Map<string, unknown>();
  const warnings = fold(obj, checkKeys(), fields).map((w) => `${field}: ${w}`);
  const f = (k: (typeof KEYS)[number]) => `${field}.${k}`;
  const spec: CheckSpec = { ...CHECK_DEFAULTS, status: [...CHECK_DEFAULTS.status] };
  if (fields.has("type")) {
    const t = fields.get("type");
    const s = typeof t === "string" ? t.trim().toLowerCase() : undefined;
    if (s !== "tcp" && s !== "http" && s !== "https") throw new ConfigValueError(`unknown check type ${describe(t)}: expected tcp, http or https`, f("type"));
    spec.type = s;
  }
  if (fields.has("path")) {
    const p = fields.get("path");
    if (typeof p !== "string") throw new ConfigValueError(`expected a string, got ${describe(p)}`, f("path"));
    if (!p.startsWith("/")) throw new ConfigValueError(`path ${JSON.stringify(p)} must start with "/"`, f("path"));
    if (!REQUEST_TOKEN.test(p)) throw new ConfigValueError(`path ${JSON.stringify(p)} has a space or a control character (percent-encode it)`, f("path"));
    spec.path = p;
  }
  if (fields.has("status")) spec.status = parseStatus(fields.get("status"), f("status"));
  if (fields.has("host")) {
    const h = fields.get("host");
    if (typeof h !== "string") throw new ConfigValueError(`expected a string, got ${describe(h)}`, f("host"));
    if (h !== "" && !REQUEST_TOKEN.test(h)) throw new ConfigValueError(`host ${JSON.stringify(h)} has a space or a control character`, f("host"));
    if (h !== "") spec.host = h;
  }
  if (fields.has("verify")) {
    const v = fields.get("verify");
    if (typeof v !== "boolean") throw new ConfigValueError(`expected true or false, got ${describe(v)}`, f("verify"));
    spec.verify = v;
  }
  if (fields.has("interval")) spec.intervalMs = duration(fields.get("interval"), f("interval"));
  if (fields.has("timeout")) spec.timeoutMs = duration(fields.get("timeout"), f("timeout"));
  if (fields.has("rise")) spec.rise = integer(fields.get("rise"), f("rise"), 1, MAX_RISE_FALL, "rise");
  if (fields.has("fall")) spec.fall = integer(fields.get("fall"), f("fall"), 1, MAX_RISE_FALL, "fall");
  if (fields.has("port")) spec.port = integer(fields.get("port"), f("port"), 1, 65535, "port");
  if (fields.has("slowStart")) spec.slowStartMs = duration(fields.get("slowStart"), f("slowStart"));

  if (spec.intervalMs < MIN_INTERVAL_MS) {
    throw new ConfigValueError(`interval ${spec.intervalMs} ms is under the minimum of ${MIN_INTERVAL_MS} ms`, f("interval"));
  }
  if (spec.timeoutMs <= 0) throw new ConfigValueError("timeout must be above 0", f("timeout"));
  // A check still running when the next one is due would overlap it: the timeout ends it first.
  if (spec.timeoutMs >= spec.intervalMs) {
    throw new ConfigValueError(`timeout ${spec.timeoutMs} ms must be below the interval (${spec.intervalMs} ms)`, f("timeout"));
  }
  if (spec.type === "tcp") {
    const stray = HTTP_ONLY.filter((k) => fields.has(k));
    if (stray.length) warnings.push(`${field}: ${stray.join(", ")} only apply to http and https checks: ignored for a tcp check`);
  }
  if (spec.type !== "https" && fields.has("verify")) warnings.push(`${field}: verify only applies to https checks: ignored`);
  return { value: spec, warnings };
}

/**
 * The value of a `check` key. `false` turns checks off (on a frontend: none for its backends,
 * unless a backend sets its own); `true` is a tcp check with every default; `null` is as absent.
 */
export function parseCheck(v: unknown, field = "check"): { value: CheckSetting; warnings: string[] } {
  if (v === undefined || v === null) return { value: undefined, warnings: [] };
  if (v === false) return { value: false, warnings: [] };
  if (v === true) return parseObjectCheck({}, field);
  if (typeof v !== "object" || Array.isArray(v)) {
    throw new ConfigValueError(`expected an object (or false to turn checks off), got ${describe(v)}`, field);
  }
  return parseObjectCheck(v as Record<string, unknown>, field);
}

/**
 * The check that applies to one backend: its own `check` replaces the frontend's as a whole
 * (fields it leaves out take the defaults, not the frontend's values, so each key's check is valid
 * on its own); `false` on the backend turns it off; absent on the backend, the frontend's applies.
 */
export function resolveCheck(frontend: CheckSetting, backend: CheckSetting): CheckSpec | undefined {
  if (backend === false) return undefined;
  if (backend) return backend;
  return frontend || undefined;
}

/**
 * A stable text for a spec: equal specs give equal keys (key order and defaults do not matter).
 * The port is not in it: targetKey puts the probed port in front, so a check naming port 8081 on
 * a destination at :80 and a check without a port on a destination at :8081 are one target.
 */
export function specKey(spec: CheckSpec): string {
  let key = SPEC_KEYS.get(spec);
  if (key === undefined) SPEC_KEYS.set(spec, (key = makeSpecKey(spec)));
  return key;
}

/** Specs are immutable once parsed: each one's key is made once (the desired table asks per backend). */
const SPEC_KEYS = new WeakMap<CheckSpec, string>();

function makeSpecKey(spec: CheckSpec): string {
  const status = spec.status.map((r) => (r.from === r.to ? `${r.from}` : `${r.from}-${r.to}`)).join(",");
  const parts = [spec.type, `i=${spec.intervalMs}`, `t=${spec.timeoutMs}`, `r=${spec.rise}`, `f=${spec.fall}`, `ss=${spec.slowStartMs}`];
  if (spec.type !== "tcp") parts.push(`path=${spec.path}`, `status=${status}`, `host=${spec.host ?? ""}`);
  if (spec.type === "https") parts.push(`verify=${spec.verify}`);
  return parts.join(" ");
}

/** "198.51.100.1:80", "[2001:db8::1]:80": written as a destination's key. */
export const hostPort = (address: string, port: number): string => destKeyString({ address, port });

/** The probed port: the check's own, else the destination's. */
export const checkPort = (spec: CheckSpec, destPort: number): number => spec.port ?? destPort;

/** One checker per address:port:check (docs: not one per frontend × backend). */
export function targetKey(address: string, destPort: number, spec: CheckSpec): string {
  return `${hostPort(address, checkPort(spec, destPort))} ${specKey(spec)}`;
}

export function statusAccepted(spec: CheckSpec, code: number): boolean {
  return spec.status.some((r) => code >= r.from && code <= r.to);
}
