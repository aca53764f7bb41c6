// TLS to etcd endpoints given as IP addresses, under Bun: a patch of an etcd3 client's pool.

import { isIP } from "node:net";
import { checkServerIdentity } from "node:tls";
import * as grpcJs from "@grpc/grpc-js";
import { castGrpcError } from "etcd3";

/** The PEM contents of -etcd-cacert, -etcd-key and -etcd-cert (each optional). */
export interface TlsFiles {
  ca?: Buffer;
  key?: Buffer;
  cert?: Buffer;
}

/** The @grpc/grpc-js instance that etcd3 itself uses (its credentials are checked by instanceof). */
function etcd3Grpc(): typeof import("@grpc/grpc-js") {
  // The one grpc-js in node_modules is etcd3's own; a static import keeps it in a compiled binary.
  return grpcJs;
}

/**
 * gRPC sends the host name as TLS SNI; Bun refuses an IP address there (Node only warns), so
 * `https://10.0.0.1:2379` would never connect. For IP-address endpoints: send a fixed SNI name
 * and check the server certificate against the real address (its IP SANs) ourselves.
 * This patches the pool's per-host settings before any connection is made.
 */
export function fixTlsIpHosts(pool: any, tls: TlsFiles): void {
  let grpc: typeof import("@grpc/grpc-js") | null = null;
  for (const host of pool?.hosts ?? []) {
    const addr = String(host.host).replace(/:\d+$/, "").replace(/^\[(.*)\]$/, "$1");
    if (!isIP(addr)) continue;
    grpc ??= etcd3Grpc();
    host.channelCredentials = grpc.credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null, {
      checkServerIdentity: (_name: string, cert: any) => checkServerIdentity(addr, cert),
    });
    host.channelOptions = { ...(host.channelOptions ?? {}), "grpc.ssl_target_name_override": "etcd" };
  }
  // With a password, etcd3 fetches its token over a channel of its own made with the unpatched
  // settings: fetch it through the patched host's Auth client instead.
  const auth = pool?.authenticator;
  if (!grpc || !auth) return;
  const original = auth.getCredentialsFromHost.bind(auth);
  const metadata = grpc.Metadata;
  auth.getCredentialsFromHost = (address: string, name: string, password: string, callOptions: unknown, credentials: unknown) => {
    const host = (pool.hosts as any[]).find((h) => h.host === address);
    if (!host || host.channelCredentials === credentials) return original(address, name, password, callOptions, credentials);
    const client = host.getServiceClient("Auth");
    return new Promise<string>((resolve, reject) =>
      client.authenticate({ name, password }, new metadata(), callOptions ?? {}, (err: Error | null, res: { token: string }) =>
        err ? reject(castGrpcError(err)) : resolve(res.token),
      ),
    );
  };
}
