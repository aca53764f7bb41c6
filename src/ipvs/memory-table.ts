// The in-memory IPVS table (-ipvs-mock): the same interface and the same error answers as the
// kernel (EEXIST on a second add, ESRCH for a missing service, ENOENT for a missing dest), so the
// reconciler is exercised the same way without a kernel.

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
  writeEach,
  type Service,
  type ServiceKey,
} from "./types.ts";

interface Row {
  service: Service;
  dests: Map<string, Dest>;
}

export class MemoryIpvsTable implements IpvsTable {
  private readonly rows = new Map<string, Row>();
  /** Counts of write calls, for tests and the benchmark. */
  writes = 0;

  writeBatch(ops: readonly Op[]): (Error | null)[] {
    return writeEach(this, ops);
  }

  info(): IpvsInfo {
    return { version: "1.2.1", connTableSize: 4096 };
  }

  list(): ObservedService[] {
    return [...this.rows.values()].map((r) => ({ ...r.service, dests: this.observed(r) }));
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
    this.writes++;
    const k = serviceKeyString(s);
    if (this.rows.has(k)) throw new IpvsError(`${k}: File exists`, "EEXIST", 17);
    this.rows.set(k, { service: pickService(s), dests: new Map() });
  }

  editService(s: Service): void {
    this.writes++;
    this.row(s).service = pickService(s);
  }

  deleteService(key: ServiceKey): void {
    this.writes++;
    this.row(key);
    this.rows.delete(serviceKeyString(key));
  }

  addDest(svc: ServiceKey, d: Dest): void {
    this.writes++;
    const r = this.row(svc);
    const k = destKeyString(d);
    if (r.dests.has(k)) throw new IpvsError(`${serviceKeyString(svc)} ${k}: File exists`, "EEXIST", 17);
    r.dests.set(k, pickDest(d));
  }

  editDest(svc: ServiceKey, d: Dest): void {
    this.writes++;
    const r = this.row(svc);
    const k = destKeyString(d);
    if (!r.dests.has(k)) throw new IpvsError(`${serviceKeyString(svc)} ${k}: No such file or directory`, "ENOENT", 2);
    r.dests.set(k, pickDest(d));
  }

  deleteDest(svc: ServiceKey, d: DestKey): void {
    this.writes++;
    const r = this.row(svc);
    if (!r.dests.delete(destKeyString(d))) {
      throw new IpvsError(`${serviceKeyString(svc)} ${destKeyString(d)}: No such file or directory`, "ENOENT", 2);
    }
  }

  flush(): void {
    this.writes++;
    this.rows.clear();
  }

  close(): void {}
}

function pickService(s: Service): Service {
  const { family, protocol, address, port, scheduler, flags, timeout, netmask } = s;
  return { family, protocol, address, port, scheduler, flags, timeout, netmask };
}

function pickDest(d: Dest): Dest {
  const { address, port, method, weight, upperThreshold, lowerThreshold } = d;
  return { address, port, method, weight, upperThreshold, lowerThreshold };
}
