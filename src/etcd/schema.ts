// etcd3 parses its gRPC schema (node_modules/etcd3/proto/rpc.proto, 36 KB) with protobufjs when
// it is first imported. The same schema, parsed once and kept beside this file as JSON
// (rpc-schema.json; `bun src/etcd/schema.ts` writes it again from the installed etcd3, and a test
// checks that it equals a fresh parse), goes through proto-loader's fromJSON instead: an etcd
// client's start-up 0.19 → 0.17 s and 64 → 62 MiB here. Run before etcd3 is loaded (load.ts),
// this module points proto-loader's loadSync at it for that one file, with the options etcd3
// gives; any other file, or other options, is parsed as before.

import { createRequire } from "node:module";
import { normalize } from "node:path";
import type * as ProtoLoader from "@grpc/proto-loader";
import schema from "./rpc-schema.json";

/** The options etcd3 1.x loads rpc.proto with (lib/connection-pool.js); keepCase shapes the parse. */
const ETCD3_PROTO_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const RPC_PROTO = /[\\/]etcd3[\\/]proto[\\/]rpc\.proto$/;

/** The JSON form of etcd3's rpc.proto, as protobufjs parses it with etcd3's options. */
export function parseRpcProto(file: string): unknown {
  const protobuf = require("protobufjs") as typeof import("protobufjs");
  return new protobuf.Root().loadSync(file, { keepCase: true }).toJSON();
}

// The module object itself (CommonJS exports, shared with etcd3's require), not an ES namespace;
// a literal require, so that the compiled binary's bundle has it.
const protoLoader = require("@grpc/proto-loader") as typeof ProtoLoader;
const parse = protoLoader.loadSync;
const sameOptions = (o: ProtoLoader.Options | undefined) =>
  !!o && Object.keys(ETCD3_PROTO_OPTIONS).length === Object.keys(o).length && Object.entries(ETCD3_PROTO_OPTIONS).every(([k, v]) => (o as Record<string, unknown>)[k] === v);

(protoLoader as { loadSync: typeof parse }).loadSync = (file, options) =>
  typeof file === "string" && RPC_PROTO.test(normalize(file)) && sameOptions(options) ? protoLoader.fromJSON(schema, options) : parse(file, options);

if (import.meta.main) {
  const { writeFileSync } = await import("node:fs");
  const file = createRequire(import.meta.url).resolve("etcd3/proto/rpc.proto");
  writeFileSync(new URL("./rpc-schema.json", import.meta.url), JSON.stringify(parseRpcProto(file)) + "\n");
  console.log(`wrote src/etcd/rpc-schema.json from ${file.replace(/.*node_modules/, "node_modules")}`);
}
