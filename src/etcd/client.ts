// The etcd3 client both daemons use: made from the -etcd-* options, with gRPC's reconnect backoff
// capped and TLS to IP-address endpoints made to work under Bun (tls-ip.ts). The few places where
// clusterf reaches into the etcd3 library's connection pool are here and in tls-ip.ts.

import { readFileSync } from "node:fs";
import { Etcd3, type IOptions } from "etcd3";
import { decodeRangePage, type RangePage } from "./range.ts";
import { fixTlsIpHosts, type TlsFiles } from "./tls-ip.ts";

export interface EtcdClientOptions {
  /** Client URLs (`http://host:2379`, `https://…`) or `host:port`. At least one. */
  endpoints: string[];
  /** PEM file paths for TLS: CA bundle, client certificate and its key. */
  cacert?: string;
  cert?: string;
  key?: string;
  /** etcd authentication (the password from -etcd-password or ETCD_PASSWORD, read by the caller). */
  username?: string;
  password?: string;
}

/**
 * An `Etcd3` client from the -etcd-* options (TLS files read here, auth passed on). `extra`
 * is merged into the library options last (fault handling, gRPC options…).
 */
export function makeEtcdClient(opts: EtcdClientOptions, extra: Partial<IOptions> = {}): Etcd3 {
  const hosts = opts.endpoints.map((e) => e.trim()).filter((e) => e !== "");
  if (hosts.length === 0) throw new Error("etcd: no endpoints given");
  const o: IOptions = { hosts };
  let tls: TlsFiles | null = null;
  if (opts.cacert || opts.cert || opts.key) {
    if (!!opts.cert !== !!opts.key) throw new Error("etcd: a client certificate needs both -etcd-cert and -etcd-key");
    tls = {
      ca: opts.cacert ? readFileSync(opts.cacert) : undefined,
      key: opts.key ? readFileSync(opts.key) : undefined,
      cert: opts.cert ? readFileSync(opts.cert) : undefined,
    };
    // Without a CA file, gRPC falls back to the system roots.
    o.credentials = { rootCertificate: tls.ca as Buffer, privateKey: tls.key, certChain: tls.cert };
  } else if (hosts.some((h) => h.startsWith("https:"))) {
    tls = {};
  }
  if (opts.username) o.auth = { username: opts.username, password: opts.password ?? "" };
  // gRPC's own reconnect backoff grows to 120 s: after a long outage the channel would stay
  // down that long after etcd is back, whatever our retry loops do. Cap it at 2 s.
  const grpcOptions = { "grpc.initial_reconnect_backoff_ms": 250, "grpc.max_reconnect_backoff_ms": 2000, ...extra.grpcOptions };
  const client = new Etcd3({ ...o, ...extra, grpcOptions });
  if (tls) fixTlsIpHosts(poolOf(client), tls);
  return client;
}

/** The pool's hosts and authenticator: etcd3 keeps them private. */
export const poolOf = (client: Etcd3): any => (client as any).pool;

/** Drops the auth token, so that the next request fetches a new one (etcd refused it as expired or unknown). */
export function invalidateAuthToken(client: Etcd3): void {
  poolOf(client)?.authenticator?.invalidateMetadata();
}

/**
 * A raw gRPC Watch stream on one of the pool's hosts (chosen by its host policy), with the
 * "hasleader" metadata: a member cut off from the quorum cancels the stream instead of serving
 * nothing. The config source drives the watch protocol on it itself (etcd-source.ts says why).
 */
export async function openWatchStream(client: Etcd3): Promise<{ stream: any; host: string }> {
  let host = "";
  const stream = await poolOf(client).withConnection("Watch", ({ client, metadata, resource }: any) => {
    host = resource.host;
    const md = metadata.clone();
    md.set("hasleader", "true");
    return client.watch(md, {});
  });
  return { stream, host };
}

/** The KV client's method that decodes a Range response with decodeRangePage. */
const RANGE_PAGE = "clusterfRangePage";
let rangePageAdded = false;

/**
 * One Range request through etcd3's pool (its host choice, retries, auth token and error types,
 * as for `client.kv.range`), its response decoded by decodeRangePage instead of the library's
 * generic decoding: for full reads of a large prefix (range.ts says why).
 */
export async function rangePage(
  client: Etcd3,
  req: { key: Buffer; range_end: Buffer; limit: number; revision: number },
  options: { deadline: Date },
): Promise<RangePage> {
  const pool = poolOf(client);
  // The pool calls `client[method](req, metadata, options, callback)`: the KV client class (one
  // for every pool of the process) gets one method more, the library's own Range with another
  // response decoder. Reached once through a connection, which makes no request.
  if (!rangePageAdded) {
    await pool.withConnection("KV", ({ client: kv }: any) => {
      const proto = Object.getPrototypeOf(kv);
      const range = proto.Range;
      proto[RANGE_PAGE] ??= function (this: any, ...args: unknown[]) {
        return this.makeUnaryRequest(range.path, range.requestSerialize, decodeRangePage, ...args);
      };
    });
    rangePageAdded = true;
  }
  return pool.exec("KV", RANGE_PAGE, req, options);
}
