// The decoder of a full read's Range responses (src/etcd/range.ts) against messages encoded by
// the protobuf library etcd3 itself uses, from etcd3's own rpc.proto.

import { describe, expect, test } from "bun:test";
import { loadSync } from "@grpc/proto-loader";
import { createRequire } from "node:module";
import * as path from "node:path";
import { decodeRangePage } from "../src/etcd/range.ts";

// Loaded as etcd3 loads it (connection-pool.js), so that the bytes are the ones it would read.
const proto = path.join(path.dirname(createRequire(import.meta.url).resolve("etcd3/package.json")), "proto", "rpc.proto");
const kv = loadSync(proto, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true })["etcdserverpb.KV"] as any;
const encode = (res: object): Buffer => kv.Range.responseSerialize(res);

const text = (buf: Buffer, spans: number[]) => {
  const out: [string, string][] = [];
  for (let i = 0; i < spans.length; i += 4) out.push([buf.toString("utf8", spans[i], spans[i + 1]), buf.toString("utf8", spans[i + 2], spans[i + 3])]);
  return out;
};

describe("decodeRangePage", () => {
  test("keys and values in order, the header's revision, more and count; int64 fields beyond 2^32 and 2^53 skipped", () => {
    const buf = encode({
      header: { cluster_id: "14841639068965178418", member_id: "10276657743932975437", revision: "5000000123", raft_term: "7" },
      kvs: [
        { key: Buffer.from("/clusterf/services/a/frontend"), create_revision: "4294967297", mod_revision: "5000000000", version: "3", value: Buffer.from('{"ipv4":"192.0.2.1","tcp":80}'), lease: "7587862072526612001" },
        { key: Buffer.from("/clusterf/services/é/backends/b"), create_revision: "2", mod_revision: "2", version: "1", value: Buffer.from(""), lease: "0" },
        { key: Buffer.from("/clusterf/routes/x"), value: Buffer.from("ünïcødé ✓") },
      ],
      more: true,
      count: "110002",
    });
    const page = decodeRangePage(buf);
    expect(page.revision).toBe(5000000123);
    expect(page.count).toBe(110002);
    expect(page.more).toBe(true);
    expect(page.buf).toBe(buf);
    expect(text(buf, page.spans)).toEqual([
      ["/clusterf/services/a/frontend", '{"ipv4":"192.0.2.1","tcp":80}'],
      ["/clusterf/services/é/backends/b", ""],
      ["/clusterf/routes/x", "ünïcødé ✓"],
    ]);
  });

  test("an empty range: no keys, more false, count 0 (fields at their defaults are not on the wire)", () => {
    const page = decodeRangePage(encode({ header: { revision: "42" }, kvs: [], more: false, count: "0" }));
    expect(page).toMatchObject({ revision: 42, count: 0, more: false, spans: [] });
  });

  test("fields it does not know (a newer etcd) are skipped", () => {
    const known = encode({ header: { revision: "9" }, kvs: [{ key: Buffer.from("k"), value: Buffer.from("v") }], count: "1" });
    // field 15 as a varint, field 16 length-delimited, field 17 fixed64, field 18 fixed32
    const unknown = Buffer.from([0x78, 0x96, 0x01, 0x82, 0x01, 0x02, 0x61, 0x62, 0x89, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0x95, 0x01, 1, 2, 3, 4]);
    const buf = Buffer.concat([unknown, known]);
    const page = decodeRangePage(buf);
    expect(page.revision).toBe(9);
    expect(text(buf, page.spans)).toEqual([["k", "v"]]);
  });

  test("a truncated or malformed response is an error, not a short page", () => {
    const buf = encode({ header: { revision: "9" }, kvs: [{ key: Buffer.from("key"), value: Buffer.from("value") }], count: "1" });
    for (const cut of [1, 3, buf.length - 1]) expect(() => decodeRangePage(buf.subarray(0, cut))).toThrow(/RangeResponse/);
    expect(() => decodeRangePage(Buffer.from([0x0b]))).toThrow(/wire type 3/);
  });
});
