// The kernel IPVS table: generic netlink family "IPVS" over a libnl socket (bun:ffi). Requests
// are encoded in JS into one reused buffer (codec.ts), answers are read into one reused buffer
// and matched to requests by sequence number. Calls are synchronous with a receive timeout.

import {
  IpvsError,
  destKeyString,
  serviceKeyString,
  type Dest,
  type DestKey,
  type IpvsErrorCode,
  type IpvsInfo,
  type IpvsTable,
  type ObservedDest,
  type ObservedService,
  type Op,
  type Service,
  type ServiceKey,
} from "../types.ts";
import {
  CMD_ATTR_DEST,
  CMD_ATTR_SERVICE,
  CMD_NAME,
  COMMAND,
  GENL_HDRLEN,
  IPVS_GENL_VERSION,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSG_HDRLEN,
  NlWriter,
  decodeDest,
  decodeInfo,
  decodeService,
  encodeRequest,
  findAttr,
  isDump,
  toHex,
  type DecodedService,
  type Request,
} from "./codec.ts";
import { runSync, type Steps } from "../../util/slices.ts";
import { ERRNO, GenlSocket, strerror } from "./libnl.ts";

export const IPVS_MISSING = "IPVS is not available in this kernel: load ip_vs";

export interface KernelIpvsOptions {
  /** Called with each request and answer (hex and a summary) when set. */
  debug?: (line: string) => void;
  /** Receive timeout of one request, ms (default 5000). */
  timeoutMs?: number;
  /** Largest number of requests sent in one send() by applyBatch (default 64). */
  batchSize?: number;
}

function errnoCode(errno: number): IpvsErrorCode {
  switch (errno) {
    case ERRNO.EEXIST:
      return "EEXIST";
    case ERRNO.ENOENT:
      return "ENOENT";
    case ERRNO.ESRCH:
      return "ESRCH";
    case ERRNO.EINVAL:
      return "EINVAL";
    case ERRNO.ETIMEDOUT:
      return "ETIMEDOUT";
    default:
      return "EOTHER";
  }
}

/** "NEW_DEST inet+tcp://10.0.0.1:80 10.1.0.1:8080" */
export function describeRequest(req: Request): string {
  let s = CMD_NAME[COMMAND[req.type]]!;
  if ("service" in req) s += " " + serviceKeyString(req.service);
  if ("dest" in req) s += " " + destKeyString(req.dest);
  return s;
}

type OnMessage = (buf: Uint8Array, dv: DataView, off: number, end: number) => void;

/** What receive() waits for: the answers to sequence numbers [first, last] (span of them). */
interface Awaited {
  first: number;
  last: number;
  span: number;
  dump: boolean;
  onMessage?: OnMessage;
  /** A batch's per-request errnos (index seq - first); null for one request, whose errno is `result`. */
  errs: Int32Array | null;
  /** Requests not yet acked (a dump: not yet ended). */
  pending: number;
  result: number;
}

const MAX_HEX = 512;

export class KernelIpvsTable implements IpvsTable {
  private sock: GenlSocket | null = null;
  private familyId = 0;
  private seq = (Date.now() / 1000) >>> 0;
  private readonly w = new NlWriter(1 << 16);
  private readonly rbuf = new Uint8Array(1 << 17);
  private readonly rdv = new DataView(this.rbuf.buffer);
  private readonly debug?: (line: string) => void;
  private readonly timeoutMs: number;
  readonly batchSize: number;

  constructor(private readonly opts: KernelIpvsOptions = {}) {
    this.debug = opts.debug;
    this.timeoutMs = opts.timeoutMs ?? 5000;
    this.batchSize = Math.max(1, opts.batchSize ?? 64);
    this.open();
  }

  /** The resolved generic netlink family id of IPVS. */
  get family(): number {
    return this.familyId;
  }

  private open(): GenlSocket {
    if (this.sock) return this.sock;
    const sock = new GenlSocket({ timeoutMs: this.timeoutMs });
    try {
      const id = sock.resolve("IPVS");
      if (id < 0) throw new Error(`${IPVS_MISSING} (generic netlink family IPVS not found)`);
      const version = sock.familyVersion("IPVS");
      if (version !== IPVS_GENL_VERSION)
        throw new Error(`IPVS generic netlink family version ${version}, expected ${IPVS_GENL_VERSION}`);
      this.familyId = id;
    } catch (e) {
      sock.close();
      throw e;
    }
    this.debug?.(`open: IPVS family id ${this.familyId}, port ${sock.port}, fd ${sock.fd}`);
    this.sock = sock;
    return sock;
  }

  private reset(): void {
    this.sock?.close();
    this.sock = null;
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0;
    if (this.seq === 0) this.seq = 1;
    return this.seq;
  }

  /**
   * Sends one request and reads its answer: for a dump, every part until NLMSG_DONE; otherwise
   * the answer messages until the ACK. onMessage gets each message of the family.
   */
  private exec(req: Request, onMessage?: OnMessage): void {
    runSync(this.execSteps(req, onMessage));
  }

  /** exec() with a pause after each datagram of the answer (a dump's parts come a datagram at a time). */
  private *execSteps(req: Request, onMessage?: OnMessage): Steps<void> {
    const sock = this.open();
    const w = this.w;
    w.reset();
    const seq = this.nextSeq();
    encodeRequest(w, { familyId: this.familyId, seq, pid: sock.port }, req);
    if (this.debug) this.debug(`> ${describeRequest(req)} seq=${seq} ${toHex(w.bytes())}`);
    this.send(sock, req);
    const err = yield* this.receiveSteps(seq, seq, isDump(req), onMessage, null);
    if (err) throw this.error(req, err);
  }

  /** One send() of the encoded request(s); protected so that a test can make a request go unanswered. */
  protected send(sock: GenlSocket, req: Request): void {
    try {
      sock.send(this.w.buf, this.w.pos);
    } catch (e) {
      this.reset();
      throw new IpvsError(`${describeRequest(req)}: ${(e as Error).message}; socket reopened`, "EOTHER");
    }
  }

  private error(req: Request, errno: number): IpvsError {
    return new IpvsError(`${describeRequest(req)}: ${strerror(errno)}`, errnoCode(errno), errno);
  }

  /**
   * Receives the answers for sequence numbers [first, last]. Completes when each has been acked
   * (or, for a dump, has ended). Returns the errno of a single request, or records per-request
   * errnos in errs (index seq - first) for a batch.
   */
  private receive(
    first: number,
    last: number,
    dump: boolean,
    onMessage: OnMessage | undefined,
    errs: Int32Array | null,
  ): number {
    return runSync(this.receiveSteps(first, last, dump, onMessage, errs));
  }

  /** receive() with a pause after each datagram. */
  private *receiveSteps(
    first: number,
    last: number,
    dump: boolean,
    onMessage: OnMessage | undefined,
    errs: Int32Array | null,
  ): Steps<number> {
    const span = ((last - first) >>> 0) + 1;
    const awaited: Awaited = { first, last, span, dump, onMessage, errs, pending: span, result: 0 };
    try {
      for (;;) {
        this.readMessages(this.recvDatagram(awaited), awaited);
        if (awaited.pending === 0) return awaited.result;
        yield;
      }
    } finally {
      // Abandoned between datagrams (the caller stopped): the rest of the answer would meet the
      // next request, so the socket is reopened instead.
      if (awaited.pending > 0) this.reset();
    }
  }

  /** Reads one datagram into rbuf; returns its length. No answer in time, or a socket error: the socket is reopened and an IpvsError thrown. */
  private recvDatagram(a: Awaited): number {
    for (;;) {
      const n = this.sock!.recv(this.rbuf);
      if (n >= 0) return n;
      if (-n === ERRNO.EINTR) continue;
      this.reset();
      if (-n === ERRNO.EAGAIN) {
        throw new IpvsError(
          `netlink: no answer within ${this.timeoutMs} ms (seq ${a.first}${a.span > 1 ? `-${a.last}` : ""}); socket reopened`,
          "ETIMEDOUT",
          ERRNO.ETIMEDOUT,
        );
      }
      throw new IpvsError(`netlink recv: ${strerror(-n)}; socket reopened`, errnoCode(-n), -n);
    }
  }

  /** The messages of one datagram (rbuf[0, n)): each logged, those of awaited requests taken as their answers. */
  private readMessages(n: number, a: Awaited): void {
    const dv = this.rdv;
    let off = 0;
    while (off + NLMSG_HDRLEN <= n) {
      const len = dv.getUint32(off, true);
      if (len < NLMSG_HDRLEN || off + len > n) break;
      const idx = (dv.getUint32(off + 8, true) - a.first) >>> 0;
      if (this.debug) this.debugMessage(off, len, idx >= a.span);
      if (idx < a.span) this.answer(off, len, idx, a);
      off += (len + 3) & ~3;
    }
  }

  /** One message for awaited request idx: its ack or error, the end of its dump, or a part of its answer (onMessage). */
  private answer(off: number, len: number, idx: number, a: Awaited): void {
    const dv = this.rdv;
    const type = dv.getUint16(off + 4, true);
    if (type === NLMSG_ERROR) {
      const e = -dv.getInt32(off + NLMSG_HDRLEN, true);
      if (a.errs) a.errs[idx] = e;
      else a.result = e;
      if (e !== 0 || !a.dump) a.pending--;
    } else if (type === NLMSG_DONE) {
      const e = len >= NLMSG_HDRLEN + 4 ? -dv.getInt32(off + NLMSG_HDRLEN, true) : 0;
      if (e > 0) a.result = e;
      a.pending--;
    } else if (type === this.familyId && a.onMessage) {
      a.onMessage(this.rbuf, dv, off + NLMSG_HDRLEN + GENL_HDRLEN, off + len);
    }
  }

  private debugMessage(off: number, len: number, stale: boolean): void {
    const dv = this.rdv;
    const hex = toHex(this.rbuf.subarray(off, off + Math.min(len, MAX_HEX)));
    this.debug!(
      `< type=${dv.getUint16(off + 4, true)} flags=0x${dv.getUint16(off + 6, true).toString(16)} seq=${dv.getUint32(off + 8, true)} len=${len}${
        stale ? " (stale, skipped)" : ""
      } ${hex}${len > MAX_HEX ? "…" : ""}`,
    );
  }

  info(): IpvsInfo {
    let info: IpvsInfo | null = null;
    this.exec({ type: "info" }, (_buf, dv, off, end) => {
      info = decodeInfo(dv, off, end);
    });
    if (!info) throw new IpvsError("GET_INFO: no answer", "EOTHER");
    return info;
  }

  list(): ObservedService[] {
    const services = this.listServices();
    for (const svc of services) svc.dests.push(...this.listDests(svc));
    return services;
  }

  listServices(withStats = true): ObservedService[] {
    return runSync(this.listServicesSteps(withStats));
  }

  /**
   * listServices() a datagram of the dump at a time (5000 services took 0.3 s at once in a slow
   * guest). Between two pauses nothing else may use this table's socket: a reader beside the
   * syncs takes its own (reader()).
   */
  *listServicesSteps(withStats = true): Steps<ObservedService[]> {
    const services: ObservedService[] = [];
    yield* this.execSteps({ type: "list-services" }, (buf, dv, off, end) => {
      const a = findAttr(dv, off, end, CMD_ATTR_SERVICE);
      if (!a) return;
      const svc = decodeService(buf, dv, a[0], a[0] + a[1], withStats);
      if (modelled(svc)) services.push(svc);
      else this.debug?.(`list: skipping ${svc.fwmark !== undefined ? `fwmark service ${svc.fwmark}` : `service of family ${svc.family}, protocol ${svc.protocol}`}`);
    });
    return services;
  }

  /** A second handle on the kernel's table, with its own socket: for a reader that runs beside the syncs (/metrics). */
  reader(): KernelIpvsTable {
    return new KernelIpvsTable(this.opts);
  }

  listDests(service: ServiceKey, withStats = true): ObservedDest[] {
    const dests: ObservedDest[] = [];
    this.exec({ type: "list-dests", service }, (buf, dv, off, end) => {
      const a = findAttr(dv, off, end, CMD_ATTR_DEST);
      if (a) dests.push(decodeDest(buf, dv, a[0], a[0] + a[1], service.family, withStats));
    });
    return dests;
  }

  addService(service: Service): void {
    this.exec({ type: "add-service", service });
  }

  editService(service: Service): void {
    this.exec({ type: "edit-service", service });
  }

  deleteService(key: ServiceKey): void {
    this.exec({ type: "delete-service", service: key });
  }

  addDest(service: ServiceKey, dest: Dest): void {
    this.exec({ type: "add-dest", service, dest });
  }

  editDest(service: ServiceKey, dest: Dest): void {
    this.exec({ type: "edit-dest", service, dest });
  }

  deleteDest(service: ServiceKey, dest: DestKey): void {
    this.exec({ type: "delete-dest", service, dest });
  }

  flush(): void {
    this.exec({ type: "flush" });
  }

  /** IpvsTable.writeBatch: many writes to a send (applyBatch). */
  writeBatch(ops: readonly Op[]): (Error | null)[] {
    try {
      return this.applyBatch(ops);
    } catch (e) {
      // No answer (timeout) or a socket error: none of them is known to have happened.
      return ops.map(() => e as Error);
    }
  }

  /**
   * Sends many writes, up to batchSize messages per send() call, and returns one result per op
   * (null, or the IpvsError of that op). The kernel handles the messages of one send in order
   * and answers each; a failed op does not stop the ones after it.
   */
  applyBatch(ops: readonly Request[]): (IpvsError | null)[] {
    const results: (IpvsError | null)[] = new Array(ops.length).fill(null);
    const errs = new Int32Array(this.batchSize);
    for (let i = 0; i < ops.length; i += this.batchSize) {
      const sock = this.open();
      const w = this.w;
      w.reset();
      const end = Math.min(ops.length, i + this.batchSize);
      if (this.seq + this.batchSize >= 0xffffffff) this.seq = 0; // no wrap inside a batch
      const first = this.seq + 1;
      let last = first;
      for (let j = i; j < end; j++) {
        last = this.nextSeq();
        encodeRequest(w, { familyId: this.familyId, seq: last, pid: sock.port }, ops[j]!);
      }
      if (this.debug) this.debug(`> batch of ${end - i} seq=${first}-${last} ${toHex(w.bytes())}`);
      this.send(sock, ops[i]!);
      errs.fill(0);
      this.receive(first, last, false, undefined, errs);
      for (let j = i; j < end; j++) {
        const e = errs[j - i]!;
        if (e) results[j] = this.error(ops[j]!, e);
      }
    }
    return results;
  }

  close(): void {
    this.reset();
  }
}

/** Services this code can name: no fwmark, a known family and protocol (anything else is left out of the listing). */
function modelled(s: DecodedService): s is DecodedService & ObservedService {
  return s.fwmark === undefined && typeof s.family === "string" && typeof s.protocol === "string";
}

/** Opens the kernel table, or throws an Error saying clearly that IPVS is missing. */
export function openKernelIpvs(opts: KernelIpvsOptions = {}): KernelIpvsTable {
  return new KernelIpvsTable(opts);
}

/** Whether the kernel IPVS family can be resolved (no exception). */
export function kernelIpvsAvailable(): { ok: true } | { ok: false; reason: string } {
  try {
    new KernelIpvsTable().close();
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
}
