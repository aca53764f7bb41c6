// etcd3's gRPC schema, parsed in advance (src/etcd/schema.ts): the JSON kept in the tree equals a
// fresh parse of the installed etcd3's rpc.proto, and a module loaded through importEtcd gets it
// without parsing rpc.proto (in a fresh process: etcd3 is loaded once per process).

import { describe, expect, test } from "bun:test";
import { createRequire } from "node:module";
import * as path from "node:path";
import schema from "../src/etcd/rpc-schema.json";
import { parseRpcProto } from "../src/etcd/schema.ts";

const ROOT = path.join(import.meta.dir, "..");

describe("etcd3's schema, parsed in advance", () => {
  test("rpc-schema.json equals a fresh parse of the installed etcd3's rpc.proto (else: bun src/etcd/schema.ts)", () => {
    const file = createRequire(import.meta.url).resolve("etcd3/proto/rpc.proto");
    expect(schema).toEqual(parseRpcProto(file) as typeof schema);
  });

  test("a module loaded through importEtcd: etcd3 gets the schema without parsing rpc.proto, and works", () => {
    const script = `
      const pl = require("@grpc/proto-loader");
      const parsed = [];
      const loadSync = pl.loadSync;
      pl.loadSync = (file, options) => (parsed.push(require("node:path").basename(file)), loadSync(file, options));
      const { importEtcd } = await import("./src/etcd/load.ts");
      const { makeEtcdClient } = await importEtcd(() => import("./src/etcd/client.ts"));
      const client = makeEtcdClient({ endpoints: ["http://127.0.0.1:9"] });
      const kv = typeof client.kv.range === "function";
      client.close();
      console.log(JSON.stringify({ parsed, kv }));
    `;
    const r = Bun.spawnSync([process.execPath, "-e", script], { cwd: ROOT, stderr: "pipe" });
    expect(r.stderr.toString()).toBe("");
    expect(JSON.parse(r.stdout.toString())).toEqual({ parsed: [], kv: true });
  });
});
