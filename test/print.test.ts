import { describe, expect, test } from "bun:test";
import { parseFrontend } from "../src/config/values.ts";
import { formatTable } from "../src/ipvs/print.ts";
import type { Dest, Service } from "../src/ipvs/types.ts";
import { inetNtop, inetPton } from "./support/libc.ts";

const info = { version: "1.2.1", connTableSize: 4096 };
const dest = (address: string, port = 80): Dest => ({ address, port, method: "masq", weight: 1, upperThreshold: 0, lowerThreshold: 0 });
const service = (address: string, dests: Dest[] = []): Service & { dests: Dest[] } => ({
  family: address.includes(":") ? "inet6" : "inet",
  protocol: "tcp",
  address,
  port: 80,
  scheduler: "wlc",
  flags: 0,
  timeout: 0,
  netmask: address.includes(":") ? 128 : 32,
  dests,
});
const body = (text: string) => text.split("\n").slice(3).filter(Boolean).map((l) => l.replace(/\s+/g, " ").trim());

// Each form as an operator may write it; ipvsadm -Ln shows glibc's inet_ntop of its bytes.
const FORMS = [
  "::10.0.0.1", // IPv4-compatible: not the mapped ::ffff:10.0.0.1
  "::ffff:10.1.0.2",
  "0:0:0:0:0:ffff:a01:2",
  "::1",
  "::",
  "::0.0.0.1",
  "::0.1.0.0",
  "::ffff:0:0",
  "::ffff:0:1.2.3.4",
  "::fffe:1.2.3.4",
  "64:ff9b::198.51.100.7",
  "1:0:0:2:0:0:3:4", // tie: the first run of zeros is compressed
  "1:0:0:2:0:0:0:3", // the longer run wins
  "0:0:1::",
  "::1:0:0:0:0",
  "2001:db8:0:1:1:1:1:1", // a single zero group stays
  "2001:0DB8:0000::00a0", // leading zeros and upper case
  "fe80::1:2:3:4:5:6",
];

describe("-print writes addresses as ipvsadm -Ln does", () => {
  test("the literal forms an operator sees", () => {
    const text = formatTable([service(parseFrontend('{"ipv6": "::10.0.0.1"}').value.ipv6!, [dest(parseFrontend('{"ipv6": "0:0:0:0:0:ffff:a01:2"}').value.ipv6!)])], info);
    expect(body(text)).toEqual(["TCP [::10.0.0.1]:80 wlc", "-> [::ffff:10.1.0.2]:80 Masq 1 0 0"]);
  });

  test.each(FORMS)("%s: value text = glibc inet_ntop of its bytes", (form) => {
    const bytes = inetPton(form);
    expect(bytes).toBeDefined();
    // a frontend takes every form (a backend refuses IPv4-mapped ones: the kernel does)
    const address = parseFrontend(JSON.stringify({ ipv6: form })).value.ipv6!;
    expect(body(formatTable([service("2001:db8::1", [dest(address)])], info))[1]).toBe(`-> [${inetNtop(bytes!)}]:80 Masq 1 0 0`);
    expect(body(formatTable([service(address)], info))[0]).toBe(`TCP [${inetNtop(bytes!)}]:80 wlc`);
  });

  test("services and destinations are sorted by their bytes", () => {
    const lines = body(
      formatTable(
        [
          service("2001:db8::1", ["::ffff:1.2.3.4", "2001:db8::", "::1.2.3.5", "::1.2.3.4", "::ffff:1.2.3.3"].map((a) => dest(a))),
          service("::ffff:192.0.2.1"),
          service("::192.0.2.2"),
          service("192.0.2.3"),
        ],
        info,
      ),
    );
    expect(lines).toEqual([
      "TCP 192.0.2.3:80 wlc",
      "TCP [::192.0.2.2]:80 wlc",
      "TCP [::ffff:192.0.2.1]:80 wlc",
      "TCP [2001:db8::1]:80 wlc",
      "-> [::1.2.3.4]:80 Masq 1 0 0",
      "-> [::1.2.3.5]:80 Masq 1 0 0",
      "-> [::ffff:1.2.3.3]:80 Masq 1 0 0",
      "-> [::ffff:1.2.3.4]:80 Masq 1 0 0",
      "-> [2001:db8::]:80 Masq 1 0 0",
    ]);
  });
});
