import { afterEach, describe, expect, test } from "bun:test";
import fc from "fast-check";
import { configureLog, log, type Fields } from "../src/util/log.ts";
import { redirectStderr } from "../src/util/stdio.ts";

/** What log() writes to stderr, in text or JSON form. */
function written(json: boolean, msg: string, fields: Fields): string {
  const chunks: string[] = [];
  const restore = redirectStderr((text) => chunks.push(text));
  try {
    configureLog({ json, level: "info" });
    log("warn", msg, fields);
  } finally {
    restore();
  }
  return chunks.join("");
}

afterEach(() => configureLog({ json: false }));

/** Control characters other than the line's own final newline. */
const controls = (line: string) => [...line.slice(0, -1)].filter((c) => /\p{Cc}/u.test(c));

describe("log lines escape every control character", () => {
  const msg = "bad\rvalue\u001b[31m red\u007f\u009b end\u0000";
  const fields = { key: "services/a\u001bb", file: "x\ny", n: 5, c1: "a\u0085b", tab: "a\tb", plain: "ok" };

  test("text: C0 (\\r, ESC, NUL), DEL and C1 in the message and in values", () => {
    expect(written(false, msg, fields)).toBe(
      'WARN bad\\rvalue\\u001b[31m red\\u007f\\u009b end\\u0000 key="services/a\\u001bb" file="x\\ny" n=5 c1="a\\u0085b" tab="a\\tb" plain=ok\n',
    );
  });

  test("JSON: valid, the same strings back, no raw control character", () => {
    const line = written(true, msg, fields);
    expect(controls(line)).toEqual([]);
    expect(line.endsWith("\n")).toBe(true);
    expect(JSON.parse(line)).toEqual({ time: expect.any(String), level: "warn", msg, ...fields });
  });

  test("property: any text gives one line without control characters; JSON gives it back", () => {
    const text = fc.string({ unit: "binary", maxLength: 40 });
    const seen: { line: string; json: string; msg: string; value: string }[] = [];
    fc.assert(
      fc.property(text, text, (m, v) => {
        seen.push({ line: written(false, m, { v }), json: written(true, m, { v }), msg: m, value: v });
      }),
      { seed: 7, numRuns: 500 },
    );
    for (const s of seen) {
      expect([s.line, controls(s.line)]).toEqual([s.line, []]);
      expect([s.json, controls(s.json)]).toEqual([s.json, []]);
      expect(JSON.parse(s.json)).toMatchObject({ msg: s.msg, v: s.value });
    }
  });
});
