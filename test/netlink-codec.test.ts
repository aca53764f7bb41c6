import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import ipaddr from "ipaddr.js";
import {
  GENL_HDRLEN,
  NLMSG_HDRLEN,
  NlWriter,
  encodeRequest,
  netmaskPrefix,
  netmaskValue,
  readAddr,
  writeAddr,
  toHex,
  type Request,
} from "../src/ipvs/netlink/codec.ts";
import type { Dest, FwdMethod, Op, Service, ServiceKey } from "../src/ipvs/types.ts";
import { inetNtop, inetPton } from "./support/libc.ts";
import { attr, attrBytes, decodeRequestAttrs, encodeAttrs, namedAttrs, nest, type Attr } from "./support/netlink.ts";

const v4: ServiceKey = { family: "inet", protocol: "tcp", address: "10.0.0.1", port: 80 };
const v4svc: Service = { ...v4, scheduler: "wlc", flags: 0, timeout: 0, netmask: 32 };
const v6: ServiceKey = { family: "inet6", protocol: "udp", address: "2001:db8::1", port: 53 };
const v6svc: Service = { ...v6, scheduler: "wlc", flags: 0, timeout: 0, netmask: 128 };
const d = (address: string, port: number, method: FwdMethod, weight: number): Dest => ({
  address,
  port,
  method,
  weight,
  upperThreshold: 0,
  lowerThreshold: 0,
});

// The vectors of netlink-vectors.md, attribute by attribute (payloads in hex, host order but for
// addresses and ports), with the IPv6 NETMASK 128 difference.
const v4Key = [attr("AF", "0200"), attr("PROTOCOL", "0600"), attr("ADDR", "0a000001"), attr("PORT", "0050")];
const v6Key = [attr("AF", "0a00"), attr("PROTOCOL", "1100"), attr("ADDR", "20010db8000000000000000000000001"), attr("PORT", "0035")];
/** SCHED_NAME "wlc", FLAGS {0, mask 0xffffffff}, TIMEOUT 0, then NETMASK. */
const wlcConfig = (netmask: string) => [attr("SCHED_NAME", "776c6300"), attr("FLAGS", "00000000ffffffff"), attr("TIMEOUT", "00000000"), attr("NETMASK", netmask)];
/** FWD_METHOD, WEIGHT (LE u32), U_THRESH 0, L_THRESH 0. */
const destConfig = (method: string, weight: string) => [attr("FWD_METHOD", method), attr("WEIGHT", weight), attr("U_THRESH", "00000000"), attr("L_THRESH", "00000000")];

const vectors: [string, Request, Attr[]][] = [
  ["NEW_SERVICE v4 tcp 10.0.0.1:80 wlc", { type: "add-service", service: v4svc }, [nest("SERVICE", ...v4Key, ...wlcConfig("ffffffff"))]],
  ["SET_SERVICE v4", { type: "edit-service", service: v4svc }, [nest("SERVICE", ...v4Key, ...wlcConfig("ffffffff"))]],
  ["DEL_SERVICE v4", { type: "delete-service", service: v4 }, [nest("SERVICE", ...v4Key)]],
  ["GET_DEST dump v4", { type: "list-dests", service: v4 }, [nest("SERVICE", ...v4Key)]],
  ["NEW_DEST v4 10.1.0.1:8080 masq w=10", { type: "add-dest", service: v4, dest: d("10.1.0.1", 8080, "masq", 10) },
    [nest("SERVICE", ...v4Key), nest("DEST", attr("ADDR", "0a010001"), attr("PORT", "1f90"), ...destConfig("00000000", "0a000000"))]],
  ["SET_DEST v4 10.255.0.1:80 droute w=20", { type: "edit-dest", service: v4, dest: d("10.255.0.1", 80, "droute", 20) },
    [nest("SERVICE", ...v4Key), nest("DEST", attr("ADDR", "0aff0001"), attr("PORT", "0050"), ...destConfig("03000000", "14000000"))]],
  ["DEL_DEST v4 10.1.0.1:8080", { type: "delete-dest", service: v4, dest: { address: "10.1.0.1", port: 8080 } },
    [nest("SERVICE", ...v4Key), nest("DEST", attr("ADDR", "0a010001"), attr("PORT", "1f90"))]],
  ["NEW_SERVICE v6 udp [2001:db8::1]:53 wlc (netmask 128)", { type: "add-service", service: v6svc }, [nest("SERVICE", ...v6Key, ...wlcConfig("80000000"))]],
  ["NEW_DEST v6 [2001:db8:1::1]:53 tunnel w=0", { type: "add-dest", service: v6, dest: d("2001:db8:1::1", 53, "tunnel", 0) },
    [nest("SERVICE", ...v6Key), nest("DEST", attr("ADDR", "20010db8000100000000000000000001"), attr("PORT", "0035"), ...destConfig("02000000", "00000000"))]],
  ["an IPv4 dest in an IPv6 service carries ADDR_FAMILY", { type: "add-dest", service: v6, dest: d("192.0.2.1", 53, "tunnel", 1) },
    [nest("SERVICE", ...v6Key), nest("DEST", attr("ADDR", "c0000201"), attr("PORT", "0035"), ...destConfig("02000000", "01000000"), attr("ADDR_FAMILY", "0200"))]],
  ["persistence flags and timeout", { type: "add-service", service: { ...v4svc, flags: 1, timeout: 300 } },
    [nest("SERVICE", ...v4Key, attr("SCHED_NAME", "776c6300"), attr("FLAGS", "01000000ffffffff"), attr("TIMEOUT", "2c010000"), attr("NETMASK", "ffffffff"))]],
  ["the HASHED flag is never sent", { type: "edit-service", service: { ...v4svc, flags: 3 } },
    [nest("SERVICE", ...v4Key, attr("SCHED_NAME", "776c6300"), attr("FLAGS", "01000000ffffffff"), attr("TIMEOUT", "00000000"), attr("NETMASK", "ffffffff"))]],
];

describe("netlink codec: byte vectors", () => {
  for (const [name, req, attrs] of vectors) {
    test(name, () => {
      const got = encodeAttrs(req);
      const want = attrBytes(attrs);
      // Attribute by attribute, by name (a failing vector shows which one differs), then every
      // byte (lengths and padding).
      expect(namedAttrs(got)).toEqual(namedAttrs(want));
      expect(toHex(got)).toBe(toHex(want));
    });
  }

  test("headers: nlmsghdr + genlmsghdr, flags 0x5 / 0x305", () => {
    const w = new NlWriter(64);
    encodeRequest(w, { familyId: 0x1c, seq: 7, pid: 99 }, { type: "delete-service", service: v4 });
    const b = w.bytes();
    expect(b.length).toBe(NLMSG_HDRLEN + GENL_HDRLEN + 0x24);
    expect(toHex(b.subarray(0, 20))).toBe("38000000" + "1c00" + "0500" + "07000000" + "63000000" + "03010000");
    const start = w.pos;
    encodeRequest(w, { familyId: 0x1c, seq: 8, pid: 99 }, { type: "list-services" });
    expect(toHex(w.bytes(start))).toBe("14000000" + "1c00" + "0503" + "08000000" + "63000000" + "04010000");
    const s2 = w.pos;
    encodeRequest(w, { familyId: 0x1c, seq: 9, pid: 99 }, { type: "list-dests", service: v4 });
    expect(toHex(w.bytes(s2).subarray(4, 8))).toBe("1c000503");
  });

  test("an IPv4 dest in an IPv6 service decodes as IPv4", () => {
    const back = decodeRequestAttrs(encodeAttrs({ type: "add-dest", service: v6, dest: d("192.0.2.1", 53, "tunnel", 1) }));
    expect(back.dest?.address).toBe("192.0.2.1");
  });

  test("netmask values", () => {
    expect(netmaskValue("inet", 32)).toBe(0xffffffff);
    expect(netmaskValue("inet", 24)).toBe(0x00ffffff);
    expect(netmaskValue("inet6", 128)).toBe(128);
    for (let p = 0; p <= 32; p++) expect(netmaskPrefix("inet", netmaskValue("inet", p))).toBe(p);
    expect(netmaskPrefix("inet6", 64)).toBe(64);
  });

  test("read-back of kernel flags: HASHED stripped, host order", () => {
    // A kernel answer: FLAGS = {0x3 (persistent|hashed), 0xffffffff}; the kernel sends 16 address bytes.
    const answer = attrBytes([nest("SERVICE",
      attr("AF", "0200"), attr("PROTOCOL", "0600"), attr("ADDR", "c0000201000000000000000000000000"), attr("PORT", "0050"),
      attr("SCHED_NAME", "727200"), attr("FLAGS", "03000000ffffffff"), attr("TIMEOUT", "68010000"), attr("NETMASK", "ffffffff"))]);
    expect(decodeRequestAttrs(answer).service).toEqual({
      family: "inet", protocol: "tcp", address: "192.0.2.1", port: 80,
      scheduler: "rr", flags: 1, timeout: 360, netmask: 32, dests: [],
    });
  });

  test("counters: the 64-bit nest where the kernel sends one, else the 32-bit one; none decoded when not asked for", () => {
    const u32 = (n: number) => toHex(Uint8Array.of(n & 255, (n >> 8) & 255, (n >> 16) & 255, n >>> 24));
    const u64 = (lo: number, hi: number) => u32(lo) + u32(hi);
    const stats32 = nest("STATS", attr("CONNS", u32(7)), attr("INPKTS", u32(70)), attr("OUTPKTS", u32(60)), attr("INBYTES", u64(7000, 0)), attr("OUTBYTES", u64(6000, 0)));
    // 2^32 + 5 connections: only the 64-bit counters can say so.
    const stats64 = nest("STATS64", attr("CONNS", u64(5, 1)), attr("INPKTS", u64(80, 0)), attr("OUTPKTS", u64(90, 0)), attr("INBYTES", u64(0, 2)), attr("OUTBYTES", u64(9000, 0)));
    const service = (...stats: Attr[]) => nest("SERVICE", ...v4Key, ...wlcConfig("ffffffff"), ...stats);
    const dest = (...stats: Attr[]) => nest("DEST", attr("ADDR", "c6336401"), attr("PORT", "0050"), ...destConfig("00000000", "01000000"), ...stats);
    const both = attrBytes([service(stats32, stats64), dest(stats64, stats32)]);
    const wide = { connections: 2 ** 32 + 5, packetsIn: 80, packetsOut: 90, bytesIn: 2 * 2 ** 32, bytesOut: 9000 };
    expect(decodeRequestAttrs(both).service!.stats).toEqual(wide);
    expect(decodeRequestAttrs(both).dest!.stats).toEqual(wide);
    const narrow = attrBytes([service(stats32), dest(stats32)]);
    const plain = { connections: 7, packetsIn: 70, packetsOut: 60, bytesIn: 7000, bytesOut: 6000 };
    expect(decodeRequestAttrs(narrow).service!.stats).toEqual(plain);
    expect(decodeRequestAttrs(narrow).dest!.stats).toEqual(plain);
    const bare = decodeRequestAttrs(both, false);
    expect(bare.service!.stats).toBeUndefined();
    expect(bare.dest!.stats).toBeUndefined();
    expect(bare.dest).toMatchObject({ address: "198.51.100.1", port: 80, weight: 1 });
  });

  test("kernel values without a name here stay the kernel's numbers", () => {
    const answer = attrBytes([
      nest("SERVICE", attr("AF", "0700"), attr("PROTOCOL", "6300"), attr("PORT", "0050"), attr("SCHED_NAME", "6e657700")),
      nest("DEST", attr("ADDR", "c6336401"), attr("PORT", "0050"), attr("FWD_METHOD", "05000000"), attr("WEIGHT", "01000000"), attr("ADDR_FAMILY", "0200")),
    ]);
    const back = decodeRequestAttrs(answer);
    expect(back.service).toMatchObject({ family: 7, protocol: 99, address: "", scheduler: "new" });
    expect(back.dest).toMatchObject({ address: "198.51.100.1", method: 5 });
    // Written back as it came (a drain keeps a destination's method).
    const dest: Dest = { ...back.dest!, weight: 0 };
    expect(namedAttrs(encodeAttrs({ type: "edit-dest", service: v4, dest }))).toContain("DEST.FWD_METHOD 05000000");
  });
});

// ---- round trips --------------------------------------------------------------------------

const ipv4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((a) => a.join("."));
const ipv6 = fc.array(fc.nat(0xffff), { minLength: 8, maxLength: 8 }).map((g) => {
  // canonical text, as glibc (and so ipvsadm) prints it
  return inetNtop(g.flatMap((x) => [x >> 8, x & 0xff]));
});
const port = fc.integer({ min: 0, max: 65535 });
const method = fc.constantFrom<FwdMethod>("masq", "localnode", "tunnel", "droute", "bypass");
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const serviceArb = fc
  .record({
    family: fc.constantFrom("inet" as const, "inet6" as const),
    protocol: fc.constantFrom("tcp" as const, "udp" as const, "sctp" as const),
    v4: ipv4,
    v6: ipv6,
    port,
    scheduler: fc.constantFrom("wlc", "rr", "wrr", "lc", "sh", "dh", "mh", "lblc"),
    persistent: fc.boolean(),
    timeout: u32,
    prefix: fc.integer({ min: 0, max: 128 }),
  })
  .map(
    (r): Service => ({
      family: r.family,
      protocol: r.protocol,
      address: r.family === "inet" ? r.v4 : r.v6,
      port: r.port,
      scheduler: r.scheduler,
      flags: r.persistent ? 1 : 0,
      timeout: r.timeout,
      netmask: r.family === "inet" ? Math.min(r.prefix, 32) : r.prefix,
    }),
  );
const destArb = fc
  .record({
    v6: fc.boolean(),
    a4: ipv4,
    a6: ipv6,
    port,
    method,
    weight: fc.integer({ min: 0, max: 0x7fffffff }),
    upperThreshold: u32,
    lowerThreshold: u32,
  })
  .map(
    (r): Dest => ({
      address: r.v6 ? r.a6 : r.a4,
      port: r.port,
      method: r.method,
      weight: r.weight,
      upperThreshold: r.upperThreshold,
      lowerThreshold: r.lowerThreshold,
    }),
  );

describe("netlink codec: round trips", () => {
  test("service encode -> decode", () => {
    fc.assert(
      fc.property(serviceArb, fc.constantFrom("add-service" as const, "edit-service" as const), (svc, type) => {
        const back = decodeRequestAttrs(encodeAttrs({ type, service: svc })).service!;
        const { dests, ...rest } = back;
        expect(dests).toEqual([]);
        expect(rest).toEqual(svc);
      }),
      { numRuns: 500 },
    );
  });

  test("dest encode -> decode", () => {
    fc.assert(
      fc.property(serviceArb, destArb, fc.constantFrom("add-dest" as const, "edit-dest" as const), (svc, dest, type) => {
        const back = decodeRequestAttrs(encodeAttrs({ type, service: svc, dest }));
        expect(back.dest).toEqual(dest);
        const { family, protocol, address, port } = back.service!;
        expect({ family, protocol, address, port }).toEqual({
          family: svc.family, protocol: svc.protocol, address: svc.address, port: svc.port,
        });
      }),
      { numRuns: 500 },
    );
  });

  test("dest identity encode -> decode", () => {
    fc.assert(
      fc.property(serviceArb, destArb, (svc, dest) => {
        const back = decodeRequestAttrs(encodeAttrs({ type: "delete-dest", service: svc, dest })).dest!;
        expect({ address: back.address, port: back.port }).toEqual({ address: dest.address, port: dest.port });
      }),
      { numRuns: 300 },
    );
  });

  test("many messages in one reused writer", () => {
    const w = new NlWriter(64); // grows
    fc.assert(
      fc.property(fc.array(serviceArb, { maxLength: 50 }), (svcs) => {
        w.reset();
        const starts = svcs.map((s, i) => encodeRequest(w, { familyId: 30, seq: i, pid: 1 }, { type: "add-service", service: s }));
        svcs.forEach((s, i) => {
          const at = starts[i]!;
          const len = w.dv.getUint32(at, true);
          const back = decodeRequestAttrs(w.buf.slice(at + 20, at + len)).service!;
          expect(back.address).toBe(s.address);
          expect(w.dv.getUint32(at + 8, true)).toBe(i);
        });
      }),
      { numRuns: 50 },
    );
  });
});

describe("addresses: the same bytes and text as glibc (and so ipvsadm)", () => {
  // groups biased to zero (runs of zeros, "::"), and prefixes that glibc prints with an IPv4 tail
  const group = fc.oneof(fc.constant(0), fc.constant(0), fc.nat(0xffff), fc.nat(0xff));
  const groups8 = fc.array(group, { minLength: 8, maxLength: 8 });
  const tailed = fc.tuple(fc.constantFrom([0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0xffff], [0, 0, 0, 0, 0xffff, 0]), group, group);
  const bytes16 = fc
    .oneof(groups8, tailed.map(([h, a, b]) => [...h, a, b]))
    .map((g) => g.flatMap((x) => [x >> 8, x & 0xff]));

  test("readAddr(inet6) = glibc inet_ntop", () => {
    fc.assert(
      fc.property(bytes16, (b) => {
        expect(readAddr(Uint8Array.from(b), 0, "inet6")).toBe(inetNtop(b));
      }),
      { numRuns: 3000 },
    );
    for (const text of ["::10.0.0.1", "::ffff:10.1.0.2", "::1", "::", "::0.1.0.0", "1::2:0:0:3:4", "2001:db8:0:1:1:1:1:1"]) {
      expect(readAddr(Uint8Array.from(inetPton(text)!), 0, "inet6")).toBe(text);
    }
  });

  test("writeAddr(inet6) of any textual form = glibc inet_pton bytes", () => {
    const forms = (b: number[]): string[] => {
      const a = ipaddr.fromByteArray(b) as ipaddr.IPv6;
      const full = a.toNormalizedString().split(":").map((g) => g.padStart(4, "0")).join(":");
      const norm = a.toNormalizedString();
      const tail4 = norm.split(":").slice(0, 6).join(":") + ":" + b.slice(12).join(".");
      const glibc = inetNtop(b);
      return [a.toString(), full, norm, full.toUpperCase(), tail4, a.toString().toUpperCase(), glibc];
    };
    fc.assert(
      fc.property(bytes16, (b) => {
        for (const text of forms(b)) {
          const out = new Uint8Array(16);
          writeAddr(out, 0, "inet6", text);
          expect([text, ...out]).toEqual([text, ...inetPton(text)!]);
        }
      }),
      { numRuns: 1000 },
    );
    for (const text of ["::", "::1", "1::", "::ffff:192.0.2.1", "::192.0.2.1", "::0:192.0.2.1", "64:ff9b::198.51.100.7", "2001:db8::", "fe80::1:2:3:4:5:6"]) {
      const out = new Uint8Array(16);
      writeAddr(out, 0, "inet6", text);
      expect([text, ...out]).toEqual([text, ...inetPton(text)!]);
    }
  });

  test("bad addresses are refused", () => {
    for (const text of ["1:2:3:4:5:6:7:8:9", "1::2::3", "12345::", "g::", "1.2.3.4.5", ""]) {
      expect(() => writeAddr(new Uint8Array(16), 0, "inet6", text)).toThrow();
    }
    for (const text of ["256.0.0.1", "1.2.3", "a.b.c.d", "", "2001:db8::1"]) {
      expect(() => writeAddr(new Uint8Array(16), 0, "inet", text)).toThrow();
    }
  });
});
