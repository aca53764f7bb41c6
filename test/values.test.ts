import { describe, expect, test } from "bun:test";
import { parseBackend, parseFrontend, parseRoute, MAX_VALUE_BYTES } from "../src/config/values.ts";
import { ConfigStore } from "../src/config/store.ts";
import { entries, put } from "./support/config.ts";

describe("frontend values", () => {
  test.each([
    ['{"ipv4": "10.107.107.107", "tcp": 1337}', { ipv4: "10.107.107.107", tcp: 1337, persistent: 0 }],
    ['{"IPv4": "192.0.2.1", "TCP": 80, "UDP": 53}', { ipv4: "192.0.2.1", tcp: 80, udp: 53, persistent: 0 }],
    ['{"ipv6": "2001:DB8:0::0001", "tcp": 443}', { ipv6: "2001:db8::1", tcp: 443, persistent: 0 }],
    ['{"ipv4": "192.0.2.1", "tcp": 80, "scheduler": "rr", "persistent": 300}', { ipv4: "192.0.2.1", tcp: 80, scheduler: "rr", persistent: 300 }],
    ['{"ipv4": "192.0.2.1", "tcp": null, "udp": 53}', { ipv4: "192.0.2.1", udp: 53, persistent: 0 }],
    ['{"ipv4":"192.0.2.1","IPV4":"192.0.2.2","tcp":1}', { ipv4: "192.0.2.2", tcp: 1, persistent: 0 }],
    ['{"ipv4": "", "ipv6": "2001:db8::1", "tcp": 80}', { ipv6: "2001:db8::1", tcp: 80, persistent: 0 }],
  ])("%s", (text, want) => {
    expect(parseFrontend(text).value).toEqual(want as never);
  });

  test("YAML", () => {
    expect(parseFrontend("ipv4: 192.0.2.1\ntcp: 80\n", "yaml").value).toEqual({ ipv4: "192.0.2.1", tcp: 80, persistent: 0 });
  });

  test("unknown keys are warnings, not errors", () => {
    const p = parseFrontend('{"ipv4": "192.0.2.1", "tcp": 80, "colour": "blue"}');
    expect(p.value.tcp).toBe(80);
    expect(p.warnings).toEqual(['unknown key "colour" ignored']);
  });
});

describe("bad values give a clear error", () => {
  const cases: [string, () => unknown, RegExp][] = [
    ["invalid JSON", () => parseFrontend('{"ipv4": "192.0.2.1",'), /invalid JSON/],
    ["binary garbage", () => parseBackend("\u0000\u00ff\u0013garbage\u0007"), /invalid JSON/],
    ["empty file", () => parseBackend(""), /empty value/],
    ["whitespace only", () => parseBackend(" \n"), /empty value/],
    ["array", () => parseBackend("[1,2]"), /expected an object, got an array/],
    ["string", () => parseBackend('"x"'), /expected an object, got the string/],
    ["null", () => parseBackend("null"), /expected an object, got null/],
    ["bad IPv4", () => parseFrontend('{"ipv4": "10.0.0.256", "tcp": 80}'), /ipv4: invalid IPv4 address "10.0.0.256"/],
    ["short IPv4", () => parseFrontend('{"ipv4": "10.1", "tcp": 80}'), /ipv4: invalid IPv4 address/],
    ["IPv6 in ipv4", () => parseFrontend('{"ipv4": "2001:db8::1", "tcp": 80}'), /ipv4: invalid IPv4 address/],
    ["bad IPv6", () => parseBackend('{"ipv6": "2001:db8:::1", "tcp": 80}'), /ipv6: invalid IPv6 address/],
    ["IPv4 tail with a leading zero", () => parseBackend('{"ipv6": "::ffff:10.01.0.2", "tcp": 80}'), /ipv6: invalid IPv6 address "::ffff:10.01.0.2"/],
    ["IPv4 tail in hex", () => parseBackend('{"ipv6": "::0xa.1.0.2", "tcp": 80}'), /ipv6: invalid IPv6 address/],
    ["IPv6 zone", () => parseBackend('{"ipv6": "fe80::1%eth0", "tcp": 80}'), /ipv6: invalid IPv6 address/],
    ["IPv4 in ipv6", () => parseBackend('{"ipv6": "192.0.2.1", "tcp": 80}'), /ipv6: invalid IPv6 address/],
    // the kernel refuses an IPv4-mapped destination (EINVAL): refused here, for that key only
    ["IPv4-mapped backend", () => parseBackend('{"ipv6": "::FFFF:0a01:0002", "tcp": 80}'), /ipv6: IPv4-mapped address ::ffff:10.1.0.2 cannot be an IPVS destination/],
    ["IPv4-mapped Gateway6", () => parseRoute('{"Prefix6": "2001:db8::/64", "Gateway6": "::ffff:192.0.2.1"}'), /Gateway6: IPv4-mapped address ::ffff:192.0.2.1 cannot/],
    ["IPv4-mapped Gateway", () => parseRoute('{"Gateway": "::ffff:192.0.2.1"}'), /Gateway: IPv4-mapped address/],
    ["address not a string", () => parseBackend('{"ipv4": 167772161}'), /ipv4: expected a string, got number/],
    ["port 0", () => parseFrontend('{"ipv4": "192.0.2.1", "tcp": 0}'), /tcp: port must be an integer 1…65535, got number 0/],
    ["port 70000", () => parseFrontend('{"ipv4": "192.0.2.1", "udp": 70000}'), /udp: port must be an integer 1…65535/],
    ["port as string", () => parseBackend('{"ipv4": "192.0.2.1", "tcp": "80"}'), /tcp: port must be an integer 1…65535, got the string "80"/],
    ["port fraction", () => parseBackend('{"ipv4": "192.0.2.1", "tcp": 80.5}'), /tcp: port/],
    ["weight -1", () => parseBackend('{"ipv4": "192.0.2.1", "tcp": 80, "weight": -1}'), /weight: weight must be an integer 0…2147483647/],
    ["weight 2^31", () => parseBackend('{"ipv4": "192.0.2.1", "tcp": 80, "weight": 2147483648}'), /weight: weight must be an integer/],
    ["weight 1.5", () => parseBackend('{"ipv4": "192.0.2.1", "tcp": 80, "weight": 1.5}'), /weight: weight must be an integer/],
    ["weight bool", () => parseBackend('{"ipv4": "192.0.2.1", "tcp": 80, "weight": true}'), /weight: weight must be an integer/],
    ["CIDR /33", () => parseRoute('{"Prefix4": "10.0.0.0/33"}'), /Prefix4: invalid CIDR "10.0.0.0\/33": prefix length must be 0…32/],
    ["CIDR /129", () => parseRoute('{"Prefix6": "2001:db8::/129"}'), /Prefix6: invalid CIDR/],
    ["CIDR without length", () => parseRoute('{"Prefix": "10.0.0.0"}'), /Prefix: invalid CIDR "10.0.0.0": expected ADDRESS\/LENGTH/],
    ["IPv6 CIDR in Prefix4", () => parseRoute('{"Prefix4": "2001:db8::/32"}'), /Prefix4: expected an IPv4 CIDR/],
    ["unknown method", () => parseRoute('{"IpvsMethod": "nat"}'), /IpvsMethod: unknown method "nat": expected masq, droute, tunnel or filter/],
    ["bad gateway", () => parseRoute('{"Gateway4": "10.0.0.300"}'), /Gateway4: invalid IPv4 address/],
    ["Prefix4 with only Gateway6", () => parseRoute('{"Prefix4": "10.0.0.0/8", "Gateway6": "2001:db8::1"}'), /^Gateway6: an IPv6 gateway needs an IPv6 prefix in a route that has a prefix; this route has only an IPv4 prefix$/],
    ["Prefix6 with Gateway4", () => parseRoute('{"Prefix6": "2001:db8::/32", "Gateway4": "192.0.2.1"}'), /^Gateway4: an IPv4 gateway needs an IPv4 prefix in a route that has a prefix; this route has only an IPv6 prefix$/],
    ["Prefix4 and Gateway4 with a stray Gateway6", () => parseRoute('{"Prefix4": "10.0.0.0/8", "Gateway4": "192.0.2.1", "Gateway6": "2001:db8::1"}'), /^Gateway6: an IPv6 gateway needs an IPv6 prefix/],
    ["Prefix (IPv4) with Gateway (IPv6)", () => parseRoute('{"Prefix": "10.0.0.0/8", "Gateway": "2001:db8::1"}'), /^Gateway: an IPv6 gateway needs an IPv6 prefix/],
    ["Prefix (IPv6) with Gateway (IPv4)", () => parseRoute('{"Prefix": "2001:db8::/32", "Gateway": "192.0.2.1"}'), /^Gateway: an IPv4 gateway needs an IPv4 prefix/],
    ["Prefix vs Prefix4 disagree", () => parseRoute('{"Prefix4": "10.0.0.0/8", "Prefix": "10.1.0.0/16"}'), /Prefix: conflicts/],
    ["bad scheduler", () => parseFrontend('{"ipv4": "192.0.2.1", "tcp": 80, "scheduler": "Round Robin"}'), /scheduler: invalid scheduler name/],
    ["negative persistence", () => parseFrontend('{"ipv4": "192.0.2.1", "tcp": 80, "persistent": -5}'), /persistent/],
    ["invalid YAML", () => parseFrontend("ipv4: [unclosed\n", "yaml"), /invalid YAML/],
    ["YAML port as string", () => parseFrontend('ipv4: 192.0.2.1\ntcp: "80"\n', "yaml"), /tcp: port/],
  ];
  test.each(cases)("%s", (_name, fn, re) => {
    expect(fn).toThrow(re);
  });

  test("a 10 MB value is refused before parsing", () => {
    const big = '{"ipv4": "192.0.2.1", "x": "' + "a".repeat(10 * 1024 * 1024) + '"}';
    expect(() => parseBackend(big)).toThrow(new RegExp(`larger than the limit of ${MAX_VALUE_BYTES}`));
  });

  test("deep unknown trees are only warnings", () => {
    let deep = "1";
    for (let i = 0; i < 500; i++) deep = `{"a${i}": ${deep}}`;
    const p = parseBackend(`{"ipv4": "192.0.2.1", "tcp": 80, "junk": ${deep}}`);
    expect(p.value).toEqual({ ipv4: "192.0.2.1", tcp: 80, weight: 10 });
    expect(p.warnings).toEqual(['unknown key "junk" ignored']);
  });
});

describe("backend values", () => {
  test.each([
    ['{"ipv4": "10.3.107.1", "tcp": 1337, "weight": 10}', { ipv4: "10.3.107.1", tcp: 1337, weight: 10 }],
    ['{"ipv4": "10.3.107.1", "tcp": 1337}', { ipv4: "10.3.107.1", tcp: 1337, weight: 10 }],
    ['{"ipv4": "10.3.107.1", "tcp": 1337, "weight": 0}', { ipv4: "10.3.107.1", tcp: 1337, weight: 0 }],
    ['{"ipv4": "10.3.107.1", "tcp": 1337, "weight": null}', { ipv4: "10.3.107.1", tcp: 1337, weight: 10 }],
    ['{"ipv4": "10.3.107.1", "tcp": 1, "weight": 2147483647}', { ipv4: "10.3.107.1", tcp: 1, weight: 2147483647 }],
    ['{"ipv6": "2001:db8::2", "udp": 53, "Weight": 3}', { ipv6: "2001:db8::2", udp: 53, weight: 3 }],
    // IPv6 text as glibc's inet_ntop (and so ipvsadm -Ln) prints the same 16 bytes
    ['{"ipv6": "::10.0.0.1", "tcp": 80}', { ipv6: "::10.0.0.1", tcp: 80, weight: 10 }],
    ['{"ipv6": "::A:0a01:0002", "tcp": 80}', { ipv6: "::a:a01:2", tcp: 80, weight: 10 }],
    ['{"ipv6": "0:0:0:0:0:0:0:1", "tcp": 80}', { ipv6: "::1", tcp: 80, weight: 10 }],
    ['{"ipv6": "::0.0.0.1", "tcp": 80}', { ipv6: "::1", tcp: 80, weight: 10 }],
    ['{"ipv6": "1:0:0:2:0:0:3:4", "tcp": 80}', { ipv6: "1::2:0:0:3:4", tcp: 80, weight: 10 }],
  ])("%s", (text, want) => {
    expect(parseBackend(text).value).toEqual(want as never);
  });
});

describe("a backend that cannot become a destination is a warning, as for a frontend", () => {
  test.each([
    ['{"ipv4": "192.0.2.1"}', ["backend has no tcp or udp port: no IPVS destination"]],
    ['{"ipv6": "2001:db8::1", "weight": 0}', ["backend has no tcp or udp port: no IPVS destination"]],
    ['{"tcp": 80}', ["backend has no ipv4 or ipv6 address: no IPVS destination"]],
    ['{"ipv4": "", "udp": 53}', ["backend has no ipv4 or ipv6 address: no IPVS destination"]],
    ["{}", ["backend has no ipv4 or ipv6 address: no IPVS destination"]],
    ['{"ipv4": "192.0.2.1", "udp": 53}', []],
  ])("%s", (text, want) => {
    expect(parseBackend(text).warnings).toEqual(want);
  });
});

describe("route values", () => {
  test("gateways of a family without a prefix of that family are fine in a default route, and beside the other prefix", () => {
    expect(parseRoute('{"Gateway6": "2001:db8::1", "IpvsMethod": "droute"}').value).toEqual({ gateway6: "2001:db8::1", method: "droute" });
    const r = parseRoute('{"Prefix4": "10.0.0.0/8", "Prefix6": "2001:db8::/32", "Gateway4": "192.0.2.1"}').value;
    expect([r.gateway4, r.gateway6, r.prefix6?.length]).toEqual(["192.0.2.1", undefined, 32]);
  });

  test("both spellings", () => {
    const a = parseRoute('{"Prefix4": "10.3.107.0/24", "Gateway4": "10.0.0.1", "IpvsMethod": "droute"}').value;
    const b = parseRoute('{"Prefix": "10.3.107.0/24", "Gateway": "10.0.0.1", "IPVSMethod": "droute"}').value;
    expect(a).toEqual(b);
    expect(a.prefix4).toEqual({ address: "10.3.107.0", length: 24, bits: 0x0a036b00n });
    expect(a.gateway4).toBe("10.0.0.1");
    expect(a.method).toBe("droute");
  });
  test("family taken from the value of Prefix and Gateway", () => {
    const r = parseRoute('{"Prefix": "2001:db8:1::/48", "Gateway": "2001:db8::9", "ipvsmethod": "tunnel"}').value;
    expect(r.prefix4).toBeUndefined();
    expect(r.prefix6?.address).toBe("2001:db8:1::");
    expect(r.prefix6?.length).toBe(48);
    expect(r.gateway6).toBe("2001:db8::9");
    expect(r.method).toBe("tunnel");
  });
  test("IPv6 prefixes and gateways keep their bytes, in ipvsadm's text", () => {
    const r = parseRoute('{"Prefix": "::ffff:10.1.2.3/120", "Gateway": "::192.0.2.9"}').value;
    expect(r.prefix6).toEqual({ address: "::ffff:10.1.2.0", length: 120, bits: 0xffff0a010200n });
    expect(r.gateway6).toBe("::192.0.2.9");
    expect(parseRoute('{"Prefix6": "::10.0.0.0/104"}').value.prefix6).toEqual({ address: "::10.0.0.0", length: 104, bits: 0x0a000000n });
  });
  test("host bits are cleared", () => {
    expect(parseRoute('{"Prefix4": "10.1.2.3/16"}').value.prefix4?.address).toBe("10.1.0.0");
  });
  test("empty and absent method keep the default; filter is a method", () => {
    expect(parseRoute("{}").value).toEqual({});
    expect(parseRoute('{"IpvsMethod": ""}').value.method).toBeUndefined();
    expect(parseRoute('{"IpvsMethod": "filter"}').value.method).toBe("filter");
    expect(parseRoute('{"IpvsMethod": "MASQ"}').value.method).toBe("masq");
  });
  test("dual-family route", () => {
    const r = parseRoute('{"Prefix4": "10.0.0.0/8", "Gateway4": "192.0.2.1", "Prefix6": "2001:db8::/32", "Gateway6": "2001:db8::1"}').value;
    expect(r.prefix4?.length).toBe(8);
    expect(r.prefix6?.length).toBe(32);
    expect(r.gateway6).toBe("2001:db8::1");
  });
});

describe("the check key of frontends and backends", () => {
  const tcpDefaults = { type: "tcp", path: "/", status: [{ from: 200, to: 399 }], verify: false, intervalMs: 2000, timeoutMs: 1000, rise: 2, fall: 3, slowStartMs: 0 };

  test("a frontend's check, a backend's own, false and null", () => {
    const fe = parseFrontend('{"ipv4": "192.0.2.1", "tcp": 80, "Check": {"type": "http", "path": "/healthz"}}').value;
    expect(fe.check).toEqual({ ...tcpDefaults, type: "http", path: "/healthz" } as never);
    const be = parseBackend('{"ipv4": "198.51.100.1", "tcp": 80, "check": {"port": 8081, "slowStart": "10s"}}').value;
    expect(be.check).toEqual({ ...tcpDefaults, port: 8081, slowStartMs: 10000 } as never);
    expect(parseBackend('{"ipv4": "198.51.100.1", "tcp": 80, "check": false}').value.check).toBe(false);
    expect(parseBackend('{"ipv4": "198.51.100.1", "tcp": 80, "check": true}').value.check).toEqual(tcpDefaults as never);
    // null keeps the default: no check of its own, so the frontend's applies
    expect(parseBackend('{"ipv4": "198.51.100.1", "tcp": 80, "check": null}').value).toEqual({ ipv4: "198.51.100.1", tcp: 80, weight: 10 });
    expect(parseBackend('{"ipv4": "198.51.100.1", "tcp": 80}').value).toEqual({ ipv4: "198.51.100.1", tcp: 80, weight: 10 });
  });

  test("the check comes first in the document: the value's other fields are still read", () => {
    // parseCheck folds its own object; the backend's fields must not be lost to it.
    const b = parseBackend('{"check": {"rise": 5}, "ipv4": "198.51.100.1", "tcp": 80, "weight": 3}').value;
    expect(b).toMatchObject({ ipv4: "198.51.100.1", tcp: 80, weight: 3 });
    expect(b.check).toMatchObject({ rise: 5 });
    const f = parseFrontend('{"check": {"fall": 4}, "ipv4": "192.0.2.1", "udp": 53, "persistent": 9}').value;
    expect(f).toMatchObject({ ipv4: "192.0.2.1", udp: 53, persistent: 9 });
    expect(f.check).toMatchObject({ fall: 4 });
  });

  test("YAML", () => {
    const b = parseBackend("ipv4: 198.51.100.1\ntcp: 80\ncheck:\n  type: http\n  status: [200, '300-302']\n  interval: 5s\n", "yaml").value;
    expect(b.check).toEqual({ ...tcpDefaults, type: "http", status: [{ from: 200, to: 200 }, { from: 300, to: 302 }], intervalMs: 5000 } as never);
  });

  test("a bad check is a bad value for its key; unknown keys in it are warnings", () => {
    expect(() => parseBackend('{"ipv4": "198.51.100.1", "tcp": 80, "check": {"interval": "50ms"}}')).toThrow(
      /^check\.interval: interval 50 ms is under the minimum of 100 ms$/,
    );
    expect(() => parseFrontend('{"ipv4": "192.0.2.1", "tcp": 80, "check": "http"}')).toThrow(/^check: expected an object/);
    const p = parseBackend('{"ipv4": "198.51.100.1", "tcp": 80, "colour": 1, "check": {"colour": 2}}');
    expect(p.warnings).toEqual(['unknown key "colour" ignored', 'check: unknown key "colour" ignored']);
    expect(p.value.check).toEqual(tcpDefaults as never);
  });

  test("a change of the check alone is a change of the value (the store compares values field by field)", () => {
    const s = new ConfigStore();
    s.snapshot("etcd", entries({ "services/web/frontend": { ipv4: "192.0.2.1", tcp: 80, check: { rise: 2 } }, "services/web/backends/a": { ipv4: "198.51.100.1", tcp: 80 } }));
    const edits: [string, unknown][] = [
      ["services/web/frontend", { ipv4: "192.0.2.1", tcp: 80, check: { rise: 3 } }],
      ["services/web/frontend", { ipv4: "192.0.2.1", tcp: 80, check: { rise: 3, port: 81 } }],
      ["services/web/frontend", { ipv4: "192.0.2.1", tcp: 80, check: false }],
      ["services/web/frontend", { ipv4: "192.0.2.1", tcp: 80 }],
      ["services/web/backends/a", { ipv4: "198.51.100.1", tcp: 80, check: { type: "http" } }],
      ["services/web/backends/a", { ipv4: "198.51.100.1", tcp: 80, check: { type: "http", path: "/h" } }],
    ];
    for (const [key, value] of edits) expect([key, s.apply("etcd", put(key, value))]).toEqual([key, { kind: "service", service: "web" }]);
    // the same check written another way is no change
    expect(s.apply("etcd", put("services/web/backends/a", { ipv4: "198.51.100.1", tcp: 80, CHECK: { Path: "/h", type: "HTTP", interval: "2000ms" } }))).toBeUndefined();
  });
});
