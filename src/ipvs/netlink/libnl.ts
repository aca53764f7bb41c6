// bun:ffi bindings to libnl-3 / libnl-genl-3 (Debian libnl-3-200, libnl-genl-3-200) and the few
// libc calls libnl has no cheap equivalent for (recv into a reused buffer, setsockopt, errno).
// libnl owns the socket, the bind and the generic netlink family resolution; message bytes are
// built in JS (codec.ts) and sent with nl_sendto.

import { dlopen, read, type Pointer } from "bun:ffi";
import { lazy } from "../../util/lazy.ts";

function load() {
  const nl = dlopen("libnl-3.so.200", {
    nl_socket_alloc: { args: [], returns: "ptr" },
    nl_socket_free: { args: ["ptr"], returns: "void" },
    nl_socket_get_fd: { args: ["ptr"], returns: "i32" },
    nl_socket_get_local_port: { args: ["ptr"], returns: "u32" },
    nl_socket_set_buffer_size: { args: ["ptr", "i32", "i32"], returns: "i32" },
    nl_sendto: { args: ["ptr", "ptr", "usize"], returns: "i32" },
    nl_cache_free: { args: ["ptr"], returns: "void" },
    nl_geterror: { args: ["i32"], returns: "cstring" },
  });
  const genl = dlopen("libnl-genl-3.so.200", {
    genl_connect: { args: ["ptr"], returns: "i32" },
    genl_ctrl_resolve: { args: ["ptr", "ptr"], returns: "i32" },
    genl_ctrl_alloc_cache: { args: ["ptr", "ptr"], returns: "i32" },
    genl_ctrl_search_by_name: { args: ["ptr", "ptr"], returns: "ptr" },
    genl_family_get_version: { args: ["ptr"], returns: "u32" },
    genl_family_put: { args: ["ptr"], returns: "void" },
  });
  const libc = dlopen("libc.so.6", {
    recv: { args: ["i32", "ptr", "usize", "i32"], returns: "i64" },
    setsockopt: { args: ["i32", "i32", "i32", "ptr", "u32"], returns: "i32" },
    __errno_location: { args: [], returns: "ptr" },
    strerror: { args: ["i32"], returns: "cstring" },
  });
  return { nl: nl.symbols, genl: genl.symbols, libc: libc.symbols, errnoPtr: libc.symbols.__errno_location()! };
}

/** The libraries, opened at the first call that needs them. */
const L = lazy(load);

export const ERRNO = {
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EAGAIN: 11,
  ENOMEM: 12,
  EEXIST: 17,
  EINVAL: 22,
  ENOBUFS: 105,
  ETIMEDOUT: 110,
} as const;

const SOL_SOCKET = 1;
const SO_RCVTIMEO = 20;
const SOL_NETLINK = 270;
const NETLINK_CAP_ACK = 10;

export function strerror(errno: number): string {
  return String(L().libc.strerror(errno));
}

const cstr = (s: string) => Buffer.from(s + "\0", "latin1");

/** A generic netlink socket made and bound by libnl (genl_connect). */
export class GenlSocket {
  private sk: Pointer | null;
  readonly fd: number;
  readonly port: number;

  constructor(opts: { rcvbuf?: number; sndbuf?: number; timeoutMs?: number } = {}) {
    const { nl, genl, libc } = L();
    const sk = nl.nl_socket_alloc() as Pointer | null;
    if (!sk) throw new Error("nl_socket_alloc failed");
    const rc = genl.genl_connect(sk);
    if (rc < 0) {
      nl.nl_socket_free(sk);
      throw new Error(`genl_connect: ${nl.nl_geterror(rc)}`);
    }
    this.sk = sk;
    this.fd = nl.nl_socket_get_fd(sk);
    this.port = nl.nl_socket_get_local_port(sk);
    nl.nl_socket_set_buffer_size(sk, opts.rcvbuf ?? 1 << 20, opts.sndbuf ?? 1 << 20);
    // small acks: errors do not echo the whole request
    const one = new Int32Array([1]);
    libc.setsockopt(this.fd, SOL_NETLINK, NETLINK_CAP_ACK, one, 4);
    this.setTimeout(opts.timeoutMs ?? 5000);
  }

  setTimeout(ms: number): void {
    const tv = new BigInt64Array([BigInt(Math.floor(ms / 1000)), BigInt((ms % 1000) * 1000)]);
    L().libc.setsockopt(this.fd, SOL_SOCKET, SO_RCVTIMEO, tv, 16);
  }

  /** genl_ctrl_resolve: the family id, or a negative libnl error code. */
  resolve(name: string): number {
    return L().genl.genl_ctrl_resolve(this.ptr(), cstr(name));
  }

  /** The family's version from the controller cache, or -1 when not found. */
  familyVersion(name: string): number {
    const { nl, genl } = L();
    const out = new BigUint64Array(1);
    const rc = genl.genl_ctrl_alloc_cache(this.ptr(), out);
    if (rc < 0) throw new Error(`genl_ctrl_alloc_cache: ${nl.nl_geterror(rc)}`);
    const cache = Number(out[0]) as Pointer;
    try {
      const fam = genl.genl_ctrl_search_by_name(cache, cstr(name));
      if (!fam) return -1;
      const v = genl.genl_family_get_version(fam);
      genl.genl_family_put(fam);
      return v;
    } finally {
      nl.nl_cache_free(cache);
    }
  }

  /** Sends buf[0, len) to the kernel; returns bytes sent or throws. */
  send(buf: Uint8Array, len: number): void {
    const { nl } = L();
    const rc = nl.nl_sendto(this.ptr(), buf, len);
    if (rc < 0) throw new Error(`nl_sendto: ${nl.nl_geterror(rc)}`);
  }

  /** One datagram into buf; returns its length, or -errno (-EAGAIN on timeout). */
  recv(buf: Uint8Array): number {
    const { libc, errnoPtr } = L();
    const n = Number(libc.recv(this.fd, buf, buf.length, 0));
    return n >= 0 ? n : -read.i32(errnoPtr, 0);
  }

  private ptr(): Pointer {
    if (!this.sk) throw new Error("netlink socket is closed");
    return this.sk;
  }

  close(): void {
    if (this.sk) {
      L().nl.nl_socket_free(this.sk);
      this.sk = null;
    }
  }
}
