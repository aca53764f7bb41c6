// The in-memory IPVS table (-ipvs-mock): the same interface and the same error answers as the
// kernel (EEXIST on a second add, ESRCH for a missing service, ENOENT for a missing dest), so the
// reconciler is exercised the same way without a kernel. It keeps the Service and Dest objects it
// is given (never changed once made, see types.ts) and hands out copies.

import {
  IpvsError,
  destKeyString,
  serviceKeyString,
  type Dest,
  type DestKey,
  type IpvsInfo,
  type IpvsTable,
  type ObservedDest,
  type ObservedService,
  type Op,
  type Service,
  type ServiceKey,
  writeEach,
  writeOne,
} from "./types.ts";
import { CompactMap } from "../util/compact-map.ts";

interface Row {
  service: Service;
  dests: Map<string, Dest>;
}

export class MemoryIpvsTable implements IpvsTable {
  private readonly rows = new Map<string, Row>();
  writeBatch(ops: readonly Op[]): (Error | null)[] {
    // Destinations through putDest: it keeps the operation's key string instead of making one.
    return writeEach(this, ops, (op) => {
      if (op.type === "add-dest" || op.type === "edit-dest") this.putDest(op.service, op.dest, op.type === "add-dest", op.key);
      else writeOne(this, op);
    });
  }

  info(): IpvsInfo {
    return { version: "1.2.1", connTableSize: 4096 };
  }

  list(): ObservedService[] {
    return [...this.rows.values()].map((r) => ({ ...r.service, dests: this.observed(r) }));
  }

  /** Without destinations: a reader takes them a service at a time (listSteps), as from the kernel. */
  listServices(): ObservedService[] {
    return [...this.rows.values()].map((r) => ({ ...r.service, dests: [] }));
  }

  listDests(service: ServiceKey): ObservedDest[] {
    return this.observed(this.row(service));
  }

  /** Active connections per "service|dest" key: set by tests (the fake has no traffic). */
  readonly activeConnections = new Map<string, number>();

  private observed(r: Row): ObservedDest[] {
    const svc = serviceKeyString(r.service);
    return [...r.dests.values()].map((d) => ({ ...d, activeConnections: this.activeConnections.get(`${svc}|${destKeyString(d)}`) ?? 0, inactiveConnections: 0 }));
  }

  private row(key: ServiceKey): Row {
    const r = this.rows.get(serviceKeyString(key));
    if (!r) throw new IpvsError(`${serviceKeyString(key)}: No such process`, "ESRCH", 3);
    return r;
  }

  addService(s: Service): void {
    const k = serviceKeyString(s);
    if (this.rows.has(k)) throw new IpvsError(`${k}: File exists`, "EEXIST", 17);
    this.rows.set(k, { service: s, dests: new CompactMap() });
  }

  editService(s: Service): void {
    this.row(s).service = s;
  }

  deleteService(key: ServiceKey): void {
    this.row(key);
    this.rows.delete(serviceKeyString(key));
  }

  addDest(svc: ServiceKey, d: Dest): void {
    this.putDest(svc, d, true);
  }

  editDest(svc: ServiceKey, d: Dest): void {
    this.putDest(svc, d, false);
  }

  /** `key`: the destination's destKeyString when the caller has it. */
  private putDest(svc: ServiceKey, d: Dest, add: boolean, key?: string): void {
    const r = this.row(svc);
    const k = key ?? destKeyString(d);
    if (add && r.dests.has(k)) throw new IpvsError(`${serviceKeyString(svc)} ${k}: File exists`, "EEXIST", 17);
    if (!add && !r.dests.has(k)) throw new IpvsError(`${serviceKeyString(svc)} ${k}: No such file or directory`, "ENOENT", 2);
    r.dests.set(k, d);
  }

  deleteDest(svc: ServiceKey, d: DestKey): void {
    const r = this.row(svc);
    if (!r.dests.delete(destKeyString(d))) {
      throw new IpvsError(`${serviceKeyString(svc)} ${destKeyString(d)}: No such file or directory`, "ENOENT", 2);
    }
  }

  flush(): void {
    this.rows.clear();
  }

  close(): void {}
}
