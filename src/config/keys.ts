// The key layout (docs/config.md §2): the contract between the writers (clusterf-docker, an
// intermediate host's advertised route and health records, the operator) and the readers
// (clusterf-ipvs). Keys are relative to the root (the -etcd-prefix, the -config-path directory):
//   services/<service>/frontend
//   services/<service>/backends/<backend>
//   routes/<route>
//   health/<route>/<service>/<backend>   (etcd only, docs/config.md §5, §9)
// This module parses and builds them; nothing else spells them out.

import { quote } from "../util/log.ts";

export type KeyPath =
  | { kind: "frontend"; service: string }
  | { kind: "backend"; service: string; backend: string }
  | { kind: "route"; route: string }
  | { kind: "health"; route: string; service: string; backend: string };

/** The top-level names of the layout (keys under any other name are not config). */
export const SERVICES = "services";
export const ROUTES = "routes";
export const HEALTH = "health";

/** What a malformed path under a layout name should have looked like, for warnings. */
export const LAYOUT_HINT = "services/NAME/frontend, services/NAME/backends/NAME, routes/NAME or health/ROUTE/SERVICE/BACKEND";

export const frontendKey = (service: string): string => `${SERVICES}/${service}/frontend`;
export const backendKey = (service: string, backend: string): string => `${SERVICES}/${service}/backends/${backend}`;
export const routeKey = (route: string): string => `${ROUTES}/${route}`;
export const healthKey = (route: string, service: string, backend: string): string => `${HEALTH}/${route}/${service}/${backend}`;

/** The default etcd prefix of the tree (-etcd-prefix). */
export const DEFAULT_PREFIX = "/clusterf";

/** An etcd prefix without its trailing slashes: keys are built as PREFIX/services/…. */
export function trimPrefix(prefix: string): string {
  return prefix.replace(/\/+$/, "");
}

/** The absolute etcd key of a relative one (`rel` may also be a folder such as "services/"). */
export function absoluteKey(prefix: string, rel: string): string {
  return `${trimPrefix(prefix)}/${rel}`;
}

/** Longest accepted name, in characters (names become metric labels and log fields). */
const MAX_NAME_LENGTH = 255;

/** Printable ASCII without "/", not starting with a space: a good name unless too long, "." or "..". */
const PLAIN_NAME = /^[!-.0-~][ -.0-~]*$/;

/**
 * Why a service, backend or route name is refused (undefined: it is a good name): names are one
 * path segment, not "." or "..", without control characters, not starting with white space, at
 * most MAX_NAME_LENGTH characters.
 */
export function nameProblem(name: string): string | undefined {
  // Most names are printable ASCII: one test, no garbage (every key of a 110,000-key read comes here).
  if (PLAIN_NAME.test(name) && name.length <= MAX_NAME_LENGTH && name !== "." && name !== "..") return undefined;
  const bad = (why: string) => `invalid name ${quote(name.length > 40 ? name.slice(0, 40) + "…" : name)}: ${why}`;
  if (name === "") return bad("empty");
  if (name === "." || name === "..") return bad('"." and ".." are not names');
  if (name.length > MAX_NAME_LENGTH) return bad(`${name.length} characters, more than ${MAX_NAME_LENGTH}`);
  const control = /\p{Cc}/u.exec(name);
  if (control) return bad(`control character ${codePoint(control[0])}`);
  if (/^\s/u.test(name)) return bad(`starts with white space (${codePoint(name[0]!)})`);
  if (name.includes("/")) return bad("contains a slash");
  return undefined;
}

const codePoint = (c: string) => `U+${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}`;

/** Maps a key path to what it names; undefined for paths outside the layout or with a bad name. */
export function parseKeyPath(key: string): KeyPath | undefined {
  // Sliced in place rather than split: this runs for every key of a full read.
  if (key.startsWith("routes/")) {
    const route = key.slice(7);
    return route.includes("/") || nameProblem(route) !== undefined ? undefined : { kind: "route", route };
  }
  if (key.startsWith("health/")) {
    const parts = key.slice(7).split("/");
    if (parts.length !== 3 || parts.some((p) => nameProblem(p) !== undefined)) return undefined;
    return { kind: "health", route: parts[0]!, service: parts[1]!, backend: parts[2]! };
  }
  if (!key.startsWith("services/")) return undefined;
  const slash = key.indexOf("/", 9);
  if (slash < 0) return undefined;
  const service = key.slice(9, slash);
  if (nameProblem(service) !== undefined) return undefined;
  if (key.length === slash + 9 && key.endsWith("/frontend")) return { kind: "frontend", service };
  if (!key.startsWith("/backends/", slash)) return undefined;
  const backend = key.slice(slash + 10);
  return backend.includes("/") || nameProblem(backend) !== undefined ? undefined : { kind: "backend", service, backend };
}

/** The top-level name of a relative key ("services" for services/web/frontend). */
export function topLevelName(key: string): string {
  const slash = key.indexOf("/");
  return slash < 0 ? key : key.slice(0, slash);
}
