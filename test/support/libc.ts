// glibc's own inet_pton and inet_ntop (through bun:ffi): the oracle for address text, since
// ipvsadm prints addresses with inet_ntop from the same libc.
import { dlopen, FFIType, ptr } from "bun:ffi";

const libc = dlopen("libc.so.6", {
  inet_ntop: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr, FFIType.u32], returns: FFIType.ptr },
  inet_pton: { args: [FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
});
const AF_INET = 2;
const AF_INET6 = 10;

/** The bytes glibc reads from an address text (4 or 16), or undefined when it refuses it. */
export function inetPton(text: string): number[] | undefined {
  const af = text.includes(":") ? AF_INET6 : AF_INET;
  const out = new Uint8Array(af === AF_INET6 ? 16 : 4);
  const cstr = Buffer.from(text + "\0");
  return libc.symbols.inet_pton(af, ptr(cstr), ptr(out)) === 1 ? [...out] : undefined;
}

/** The text glibc (and so ipvsadm -Ln) prints for 4 or 16 address bytes. */
export function inetNtop(bytes: ArrayLike<number>): string {
  const src = Uint8Array.from(bytes as number[]);
  const dst = new Uint8Array(64);
  if (!libc.symbols.inet_ntop(src.length === 16 ? AF_INET6 : AF_INET, ptr(src), ptr(dst), dst.length)) throw new Error("inet_ntop failed");
  return Buffer.from(dst.subarray(0, dst.indexOf(0))).toString();
}
