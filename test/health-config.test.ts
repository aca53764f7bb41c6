import { describe, expect, test } from "bun:test";
import { parseCheck, resolveCheck, specKey, statusAccepted, targetKey, type CheckSpec } from "../src/health/check-config.ts";

const DEFAULTS: CheckSpec = {
  type: "tcp",
  path: "/",
  status: [{ from: 200, to: 399 }],
  verify: false,
  intervalMs: 2000,
  timeoutMs: 1000,
  rise: 2,
  fall: 3,
  slowStartMs: 0,
};

const parse = (text: string) => parseCheck(JSON.parse(text));

describe("check values", () => {
  test.each([
    ["{}", DEFAULTS],
    ["true", DEFAULTS],
    ["false", false],
    ["null", undefined],
    [
      '{"type": "http", "path": "/healthz", "status": [200], "interval": "2s", "timeout": "1s", "rise": 2, "fall": 3, "slowStart": "30s"}',
      { ...DEFAULTS, type: "http", path: "/healthz", status: [{ from: 200, to: 200 }], slowStartMs: 30000 },
    ],
    ['{"TYPE": "HTTPS", "Path": "/", "VERIFY": true, "Host": "www.example.com"}', { ...DEFAULTS, type: "https", verify: true, host: "www.example.com" }],
    ['{"interval": "500ms", "timeout": "250ms"}', { ...DEFAULTS, intervalMs: 500, timeoutMs: 250 }],
    ['{"interval": "1m30s", "slowStart": "1h"}', { ...DEFAULTS, intervalMs: 90000, slowStartMs: 3600000 }],
    ['{"interval": "100ms", "timeout": "99ms"}', { ...DEFAULTS, intervalMs: 100, timeoutMs: 99 }],
    ['{"rise": 1, "fall": 1, "port": 8081}', { ...DEFAULTS, rise: 1, fall: 1, port: 8081 }],
    ['{"type": "http", "status": ["200-299", 301, 404]}', { ...DEFAULTS, type: "http", status: [{ from: 200, to: 299 }, { from: 301, to: 301 }, { from: 404, to: 404 }] }],
    ['{"type": "http", "status": 204}', { ...DEFAULTS, type: "http", status: [{ from: 204, to: 204 }] }],
    ['{"type": "http", "status": ["100-599"]}', { ...DEFAULTS, type: "http", status: [{ from: 100, to: 599 }] }],
    ['{"type": "http", "host": ""}', { ...DEFAULTS, type: "http" }],
    // null keeps the default, as for every other field of the config
    ['{"type": null, "interval": null, "rise": null}', DEFAULTS],
    // the same key twice: the last one in the document wins
    ['{"rise": 5, "RISE": 4}', { ...DEFAULTS, rise: 4 }],
    ['{"slowStart": "0s"}', DEFAULTS],
  ])("%s", (text, want) => {
    const p = parse(text);
    expect(p.value).toEqual(want as never);
    expect(p.warnings).toEqual([]);
  });

  test("YAML-decoded values are read alike (the parser takes the decoded object)", () => {
    expect(parseCheck({ Type: "http", Interval: "3s", Status: [200, "300-302"] }).value).toEqual({
      ...DEFAULTS,
      type: "http",
      intervalMs: 3000,
      status: [{ from: 200, to: 200 }, { from: 300, to: 302 }],
    });
  });
});

describe("check warnings", () => {
  test.each([
    ['{"colour": "blue"}', ['check: unknown key "colour" ignored']],
    ['{"type": "tcp", "path": "/x", "status": [200]}', ["check: path, status only apply to http and https checks: ignored for a tcp check"]],
    ['{"host": "a.example"}', ["check: host only apply to http and https checks: ignored for a tcp check"]],
    ['{"type": "http", "verify": true}', ["check: verify only applies to https checks: ignored"]],
  ])("%s", (text, warnings) => {
    expect(parse(text).warnings).toEqual(warnings);
  });

  test("the field name is the caller's (backends/x: check)", () => {
    expect(parseCheck({ x: 1 }, "healthCheck").warnings).toEqual(['healthCheck: unknown key "x" ignored']);
  });
});

describe("bad check values are errors naming the field", () => {
  test.each([
    ["unknown type", '{"type": "icmp"}', /^check\.type: unknown check type the string "icmp": expected tcp, http or https$/],
    ["type not a string", '{"type": 1}', /^check\.type: unknown check type number 1/],
    ["interval under 100 ms", '{"interval": "99ms", "timeout": "10ms"}', /^check\.interval: interval 99 ms is under the minimum of 100 ms$/],
    ["interval 0", '{"interval": "0s"}', /^check\.interval: interval 0 ms is under the minimum/],
    ["timeout equal to the interval", '{"interval": "1s", "timeout": "1s"}', /^check\.timeout: timeout 1000 ms must be below the interval \(1000 ms\)$/],
    ["timeout above the interval", '{"interval": "1m", "timeout": "1m0.5s"}', /^check\.timeout: timeout 60500 ms must be below the interval/],
    ["default timeout with a short interval", '{"interval": "500ms"}', /^check\.timeout: timeout 1000 ms must be below the interval \(500 ms\)$/],
    ["timeout 0", '{"timeout": "0ms"}', /^check\.timeout: timeout must be above 0$/],
    ["duration as a number", '{"interval": 2}', /^check\.interval: expected a duration such as "500ms", "2s" or "1m", got number 2$/],
    ["duration garbage", '{"timeout": "1 second"}', /^check\.timeout: expected a duration/],
    ["negative duration", '{"slowStart": "-5s"}', /^check\.slowStart: expected a duration/],
    ["duration over a day", '{"slowStart": "25h"}', /^check\.slowStart: 25h is longer than the limit of 24h$/],
    ["path without a leading /", '{"type": "http", "path": "healthz"}', /^check\.path: path "healthz" must start with "\/"$/],
    ["path with a space", '{"type": "http", "path": "/a b"}', /^check\.path: path "\/a b" has a space or a control character/],
    ["path with a newline", '{"type": "http", "path": "/a\\r\\nX: y"}', /^check\.path: path .* has a space or a control character/],
    ["path not a string", '{"type": "http", "path": ["/"]}', /^check\.path: expected a string, got an array$/],
    ["host with a space", '{"type": "http", "host": "a b"}', /^check\.host: host "a b" has a space/],
    ["host not a string", '{"type": "http", "host": 5}', /^check\.host: expected a string/],
    ["status 99", '{"type": "http", "status": [99]}', /^check\.status\[0\]: status code must be an integer 100…599, got number 99$/],
    ["status 600", '{"type": "http", "status": [200, 600]}', /^check\.status\[1\]: status code must be an integer 100…599, got number 600$/],
    ["status range out of bounds", '{"type": "http", "status": ["200-600"]}', /^check\.status\[0\]: status code must be an integer 100…599, got number 600$/],
    ["status range reversed", '{"type": "http", "status": ["299-200"]}', /^check\.status\[0\]: range 299-200 is empty/],
    ["status list empty", '{"type": "http", "status": []}', /^check\.status: empty list: no status would pass$/],
    ["status as text", '{"type": "http", "status": "ok"}', /^check\.status: expected a status code or a range such as "200-299", got the string "ok"$/],
    ["status fraction", '{"type": "http", "status": [200.5]}', /^check\.status\[0\]: status code must be an integer/],
    ["rise 0", '{"rise": 0}', /^check\.rise: rise must be an integer 1…1000, got number 0$/],
    ["fall 0", '{"fall": 0}', /^check\.fall: fall must be an integer 1…1000, got number 0$/],
    ["fall -1", '{"fall": -1}', /^check\.fall: fall must be an integer 1…1000/],
    ["rise as a string", '{"rise": "2"}', /^check\.rise: rise must be an integer 1…1000, got the string "2"$/],
    ["port 0", '{"port": 0}', /^check\.port: port must be an integer 1…65535, got number 0$/],
    ["port 65536", '{"port": 65536}', /^check\.port: port must be an integer 1…65535/],
    ["verify as a string", '{"type": "https", "verify": "yes"}', /^check\.verify: expected true or false, got the string "yes"$/],
    ["check as a string", '"http"', /^check: expected an object \(or false to turn checks off\), got the string "http"$/],
    ["check as a number", "1", /^check: expected an object \(or false to turn checks off\), got number 1$/],
    ["check as an array", "[]", /^check: expected an object \(or false to turn checks off\), got an array$/],
  ])("%s", (_name, text, re) => {
    let err: unknown;
    try {
      parse(text);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).name).toBe("ConfigValueError");
    expect((err as Error).message).toMatch(re);
  });
});

describe("frontend and backend checks", () => {
  const fe = parse('{"type": "http", "path": "/healthz"}').value as CheckSpec;
  const be = parse('{"port": 9000}').value as CheckSpec;
  test.each([
    ["no checks anywhere", undefined, undefined, undefined],
    ["the frontend's applies to a backend without one", fe, undefined, fe],
    ["the backend's replaces the frontend's as a whole (defaults, not the frontend's fields)", fe, be, { ...DEFAULTS, port: 9000 }],
    ["false on the backend turns the frontend's off", fe, false, undefined],
    ["false on the frontend: none for backends without their own", false, undefined, undefined],
    ["false on the frontend: a backend's own still applies", false, be, be],
    ["a backend's own without a frontend check", undefined, be, be],
  ] as const)("%s", (_name, f, b, want) => {
    expect(resolveCheck(f as never, b as never)).toEqual(want as never);
  });
});

describe("target keys: one checker per address, port and check", () => {
  const a = parse('{"type": "http", "path": "/h", "interval": "3s", "status": [200, "201-204"]}').value as CheckSpec;
  const sameReordered = parse('{"STATUS": [200, "201-204"], "interval": "3000ms", "path": "/h", "type": "HTTP"}').value as CheckSpec;
  test("equal checks written differently share a key", () => {
    expect(specKey(sameReordered)).toBe(specKey(a));
    expect(targetKey("198.51.100.1", 80, sameReordered)).toBe(targetKey("198.51.100.1", 80, a));
  });
  test.each([
    ["another address", () => targetKey("198.51.100.2", 80, a)],
    ["another port", () => targetKey("198.51.100.1", 81, a)],
    ["another interval", () => targetKey("198.51.100.1", 80, { ...a, intervalMs: 2000 })],
    ["another path", () => targetKey("198.51.100.1", 80, { ...a, path: "/x" })],
    ["another status list", () => targetKey("198.51.100.1", 80, { ...a, status: [{ from: 200, to: 200 }] })],
    ["another host", () => targetKey("198.51.100.1", 80, { ...a, host: "h.example" })],
    ["another type", () => targetKey("198.51.100.1", 80, { ...a, type: "https" })],
    ["another slow start", () => targetKey("198.51.100.1", 80, { ...a, slowStartMs: 1000 })],
  ])("%s: another key", (_n, k) => {
    expect(k()).not.toBe(targetKey("198.51.100.1", 80, a));
  });
  test("the check's port wins over the destination's: the TCP and UDP destinations of a backend share one target", () => {
    const p = { ...DEFAULTS, port: 8081 };
    expect(targetKey("198.51.100.1", 80, p)).toBe(targetKey("198.51.100.1", 53, p));
    expect(targetKey("198.51.100.1", 80, p).startsWith("198.51.100.1:8081 ")).toBe(true);
    expect(targetKey("2001:db8::1", 80, DEFAULTS).startsWith("[2001:db8::1]:80 ")).toBe(true);
    // the same address, port probed and check, reached two ways
    expect(targetKey("198.51.100.1", 80, p)).toBe(targetKey("198.51.100.1", 8081, DEFAULTS));
    expect(targetKey("198.51.100.1", 80, p)).not.toBe(targetKey("198.51.100.1", 80, DEFAULTS));
  });
});

test.each([
  ["200-399", [{ from: 200, to: 399 }], 199, false],
  ["200-399", [{ from: 200, to: 399 }], 200, true],
  ["200-399", [{ from: 200, to: 399 }], 399, true],
  ["200-399", [{ from: 200, to: 399 }], 400, false],
  ["200, 404", [{ from: 200, to: 200 }, { from: 404, to: 404 }], 404, true],
  ["200, 404", [{ from: 200, to: 200 }, { from: 404, to: 404 }], 403, false],
])("status %s accepts %d: %p", (_label, status, code, want) => {
  expect(statusAccepted({ ...DEFAULTS, type: "http", status }, code)).toBe(want);
});
