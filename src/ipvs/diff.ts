// Diff from the desired table to the actual one: the minimal operations, edits in place where
// only config fields (scheduler, persistence, weight, method) differ, delete+add only when an
// identity changes (an identity change is a different key, so it shows up as one delete and one
// add). Pure functions over plain data.

import {
  destConfigEqual,
  destKeyString,
  serviceConfigEqual,
  serviceKeyString,
  type Dest,
  type Op,
  type Table,
  type TableEntry,
} from "./types.ts";
import { CompactMap } from "../util/compact-map.ts";

/** Operations that turn `actual` into `desired` for one service key. */
export function diffService(desired: TableEntry | undefined, actual: TableEntry | undefined, owned: boolean): Op[] {
  if (!desired) {
    return actual && owned ? [{ type: "delete-service", service: actual.service }] : [];
  }
  const ops: Op[] = [];
  const svc = desired.service;
  if (!actual) {
    ops.push({ type: "add-service", service: svc, dests: desired.dests });
    for (const [key, d] of desired.dests) ops.push({ type: "add-dest", service: svc, dest: d, key });
    return ops;
  }
  if (!serviceConfigEqual(svc, actual.service)) ops.push({ type: "edit-service", service: svc });
  // Deletes first: a destination's slot is freed before others are added.
  for (const [key, d] of actual.dests) {
    if (!desired.dests.has(key)) ops.push({ type: "delete-dest", service: svc, dest: { address: d.address, port: d.port } });
  }
  for (const [key, d] of desired.dests) {
    const a = actual.dests.get(key);
    if (!a) ops.push({ type: "add-dest", service: svc, dest: d, key });
    else if (!destConfigEqual(d, a)) ops.push({ type: "edit-dest", service: svc, dest: d, key });
  }
  return ops;
}

/**
 * Operations for the given keys (all keys of both tables when omitted). Services that are not
 * desired are deleted only when `owned(key)` says this daemon may remove them.
 */
export function diffTables(desired: Table, actual: Table, owned: (key: string) => boolean, keys?: Iterable<string>): Op[] {
  const ops: Op[] = [];
  const add = (key: string) => {
    for (const op of diffService(desired.get(key), actual.get(key), owned(key))) ops.push(op);
  };
  if (keys) for (const key of keys) add(key);
  else {
    for (const key of desired.keys()) add(key);
    for (const key of actual.keys()) if (!desired.has(key)) add(key);
  }
  return ops;
}

/**
 * Applies operations to a plain table (the cache of the kernel state, and the property tests). The
 * table keeps the operations' Service and Dest objects (never changed once made), not copies, and
 * an added service's destination map until its first change (copy on write: the map belongs to
 * the desired table).
 */
export function applyOps(table: Table, ops: Iterable<Op>): void {
  for (const op of ops) applyOp(table, op);
}

export function applyOp(table: Table, op: Op): void {
  const key = serviceKeyString(op.service);
  switch (op.type) {
    case "add-service": {
      const e: TableEntry = { service: op.service, dests: (op.dests ?? new CompactMap()) as Map<string, Dest> };
      if (op.dests) borrowed.add(e);
      table.set(key, e);
      return;
    }
    case "edit-service": {
      const e = table.get(key);
      if (e) e.service = op.service;
      return;
    }
    case "delete-service":
      table.delete(key);
      return;
    case "add-dest":
    case "edit-dest": {
      const e = table.get(key);
      const dk = op.key ?? destKeyString(op.dest);
      if (e && e.dests.get(dk) !== op.dest) own(e).set(dk, op.dest);
      return;
    }
    case "delete-dest": {
      const e = table.get(key);
      const dk = destKeyString(op.dest);
      if (e?.dests.has(dk)) own(e).delete(dk);
      return;
    }
  }
}

/** Entries whose destination map is another table's (see applyOp). */
const borrowed = new WeakSet<TableEntry>();

/** The entry's destination map, made its own first if it was borrowed. */
function own(e: TableEntry): Map<string, Dest> {
  if (borrowed.delete(e)) e.dests = new CompactMap(e.dests);
  return e.dests;
}

/** One line per operation, in the words of the original's logs. */
export function describeOp(op: Op): string {
  const svc = serviceKeyString(op.service);
  switch (op.type) {
    case "add-service":
      return `New service ${svc} ${op.service.scheduler}`;
    case "edit-service":
      return `Set service ${svc} ${op.service.scheduler}${op.service.timeout ? ` persistent ${op.service.timeout}` : ""}`;
    case "delete-service":
      return `Delete service ${svc}`;
    case "add-dest":
      return `New service ${svc} dest ${destKeyString(op.dest)} ${op.dest.method} weight ${op.dest.weight}`;
    case "edit-dest":
      return `Set service ${svc} dest ${destKeyString(op.dest)} ${op.dest.method} weight ${op.dest.weight}`;
    case "delete-dest":
      return `Delete service ${svc} dest ${destKeyString(op.dest)}`;
  }
}
