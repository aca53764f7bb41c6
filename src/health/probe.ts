// One health probe against one target: a TCP connect, or an HTTP(S) GET whose status decides.
// The edge of the health engine: sockets live here and nowhere else. Every probe ends within its
// timeout and closes its socket when it ends (a timed-out connect is destroyed, not left to the
// kernel's two-minute SYN retries), so a concurrency limit on probes bounds open sockets.

import * as net from "node:net";
import { hostPort, statusAccepted, type CheckSpec } from "./check-config.ts";

export interface ProbeTarget {
  address: string;
  /** The port probed (the check's own port already applied). */
  port: number;
  spec: CheckSpec;
}

export interface ProbeResult {
  ok: boolean;
  /** "connected", "status 200", "refused", "timeout", "status 503", "reset", "tls: …". */
  reason: string;
  ms: number;
}

export const STOPPED = "stopped";

const CODES: Record<string, string> = {
  ECONNREFUSED: "refused",
  ConnectionRefused: "refused",
  ECONNRESET: "reset",
  ConnectionClosed: "closed before answering",
  EPIPE: "reset",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  EADDRNOTAVAIL: "no local address",
  ETIMEDOUT: "timeout",
  EMFILE: "out of file descriptors",
};

/** A short reason for a failed connect or request: the words an operator greps for. */
export function errorReason(e: unknown): string {
  const err = e as { code?: unknown; message?: unknown };
  const code = typeof err?.code === "string" ? err.code : undefined;
  if (code && CODES[code]) return CODES[code];
  const msg = String(err?.message ?? e).split("\n")[0]!.slice(0, 120);
  // Certificate and handshake failures: name them as TLS so they are not read as a dead backend.
  if (code && /CERT|TLS|SSL|SELF_SIGNED|VERIFY|HANDSHAKE/i.test(code)) return `tls: ${code}`;
  return code ? `error ${code}` : `error: ${msg}`;
}

export function probe(t: ProbeTarget, stop?: AbortSignal): Promise<ProbeResult> {
  return t.spec.type === "tcp" ? probeTcp(t, stop) : probeHttp(t, stop);
}

function probeTcp(t: ProbeTarget, stop?: AbortSignal): Promise<ProbeResult> {
  const start = performance.now();
  return new Promise((resolve) => {
    if (stop?.aborted) return resolve({ ok: false, reason: STOPPED, ms: 0 });
    const sock = net.connect({ host: t.address, port: t.port });
    let done = false;
    const finish = (ok: boolean, reason: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      stop?.removeEventListener("abort", onStop);
      sock.destroy();
      resolve({ ok, reason, ms: performance.now() - start });
    };
    const onStop = () => finish(false, STOPPED);
    const timer = setTimeout(() => finish(false, "timeout"), t.spec.timeoutMs);
    stop?.addEventListener("abort", onStop);
    sock.once("connect", () => finish(true, "connected"));
    sock.once("error", (e) => finish(false, errorReason(e)));
    // A peer that closes before the connect event (cannot happen with TCP, but keep it bounded).
    sock.once("close", () => finish(false, "closed"));
  });
}

async function probeHttp(t: ProbeTarget, stop?: AbortSignal): Promise<ProbeResult> {
  const start = performance.now();
  const { spec } = t;
  if (stop?.aborted) return { ok: false, reason: STOPPED, ms: 0 };
  const ctl = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    ctl.abort();
  }, spec.timeoutMs);
  const onStop = () => ctl.abort();
  stop?.addEventListener("abort", onStop);
  const headers: Record<string, string> = { connection: "close", "user-agent": "clusterf-health-check", accept: "*/*" };
  if (spec.host) headers.host = spec.host;
  try {
    const res = await fetch(`${spec.type}://${hostPort(t.address, t.port)}${spec.path}`, {
      method: "GET",
      headers,
      redirect: "manual",
      signal: ctl.signal,
      keepalive: false,
      // Bun's fetch: certificates are checked only when asked (verify: true).
      tls: { rejectUnauthorized: spec.verify, ...(spec.host ? { serverName: spec.host } : {}) },
    } as RequestInit);
    // Only the status matters: drop the body, which also lets the connection close.
    await res.body?.cancel().catch(() => {});
    const ok = statusAccepted(spec, res.status);
    return { ok, reason: `status ${res.status}`, ms: performance.now() - start };
  } catch (e) {
    const reason = timedOut ? "timeout" : stop?.aborted ? STOPPED : errorReason(e);
    return { ok: false, reason, ms: performance.now() - start };
  } finally {
    clearTimeout(timer);
    stop?.removeEventListener("abort", onStop);
  }
}
