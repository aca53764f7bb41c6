// clusterf-ipvs's /healthz, through bin/clusterf-ipvs with the in-memory table and a real etcd:
// 503 with the reason before the first sync (etcd not answering yet), 200 once synced, 503 with
// the reason during an etcd outage while the table stays, 200 again when etcd is back.
import { afterAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePorts, startEtcd, type Etcd, etcdctl as etcdctlAt } from "./support/etcd.ts";
import { ROOT, tableLines } from "./support/proc.ts";
import { until } from "./support/until.ts";

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => {});
});

const etcdctl = (etcd: Etcd, ...args: string[]) => void etcdctlAt(etcd.clientUrl, args);

/** The /healthz answer, or null while nothing listens yet. */
async function healthz(url: string): Promise<{ status: number; body: string } | null> {
  try {
    const r = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(2000) });
    return { status: r.status, body: await r.text() };
  } catch {
    return null;
  }
}

/** Polls /healthz until it answers with `status`; returns that answer. */
async function healthzUntil(url: string, status: number, timeoutMs: number, what: string): Promise<{ status: number; body: string }> {
  let last: { status: number; body: string } | null = null;
  const answered = async () => {
    last = await healthz(url);
    return last?.status === status && last;
  };
  return await until(answered, timeoutMs, () => `/healthz ${status} (${what}); last answer: ${JSON.stringify(last)}`, 50);
}

test("/healthz: 503 before the first sync, 200 once synced, 503 with the reason while etcd is down, 200 when it is back", async () => {
  const etcd = await startEtcd();
  cleanups.push(() => etcd.destroy());
  etcdctl(etcd, "put", "/clusterf/services/web/frontend", '{"ipv4": "192.0.2.80", "tcp": 80}');
  etcdctl(etcd, "put", "/clusterf/services/web/backends/a", '{"ipv4": "198.51.100.80", "tcp": 8080}');
  const dir = mkdtempSync("/tmp/clusterf-health-");
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, "services/local/backends"), { recursive: true });
  writeFileSync(join(dir, "services/local/frontend"), '{"ipv4": "192.0.2.81", "tcp": 81}');
  // etcd does not answer yet when the daemon starts.
  await etcd.kill();

  const [port] = await freePorts(1);
  const url = `http://127.0.0.1:${port}`;
  const proc = Bun.spawn(
    [join(ROOT, "bin/clusterf-ipvs"), `-etcd-machines=${etcd.clientUrl}`, `-config-path=${dir}`, "-ipvs-mock", "-print", `-metrics-listen=127.0.0.1:${port}`],
    { stdout: "pipe", stderr: "pipe" },
  );
  cleanups.push(() => proc.kill("SIGKILL"));
  let stdout = "";
  let stderr = "";
  const drain = async (stream: ReadableStream<Uint8Array>, on: (s: string) => void) => {
    const dec = new TextDecoder();
    for await (const chunk of stream) on(dec.decode(chunk));
  };
  drain(proc.stdout, (s) => (stdout += s));
  drain(proc.stderr, (s) => (stderr += s));

  // Before the first sync: the local tree is read, etcd is not, so nothing is applied.
  // The etcd source reports itself down after its first attempt: wait for the full reason.
  const h = await until(async () => {
    const answer = await healthz(url);
    return answer?.body.includes("etcd") && answer;
  }, 15_000, "/healthz naming etcd", 50);
  expect(h).toEqual({ status: 503, body: "waiting for the first sync; config source down: etcd\n" });
  await Bun.sleep(1000);
  expect(await healthz(url)).toEqual({ status: 503, body: "waiting for the first sync; config source down: etcd\n" });
  expect(stdout).toBe(""); // no table printed: nothing applied

  // etcd answers: the first sync, then 200 with the time of the last sync.
  const beforeSync = Date.now();
  await etcd.restart();
  const ok = await healthzUntil(url, 200, 15_000, "after etcd came up");
  const afterSync = Date.now();
  const m = /^ok: last sync (\S+)\n$/.exec(ok.body);
  expect(m).not.toBeNull();
  const at = Date.parse(m![1]!);
  expect(at).toBeGreaterThanOrEqual(beforeSync);
  expect(at).toBeLessThanOrEqual(afterSync);
  const table = ["TCP 192.0.2.80:80 wlc", "-> 198.51.100.80:8080 Masq 10 0 0", "TCP 192.0.2.81:81 wlc"];
  expect(tableLines(stdout)).toEqual(table);

  // etcd down: 503 with the reason; the table stays as it was.
  await etcd.stop();
  const down = await healthzUntil(url, 503, 10_000, "etcd down");
  expect(down.body).toBe("config source down: etcd (the last known config stays in force)\n");
  await Bun.sleep(1000);
  expect(await healthz(url)).toEqual(down);
  expect(tableLines(stdout)).toEqual(table); // not re-applied, not emptied

  // Back: 200 again.
  await etcd.restart();
  const again = await healthzUntil(url, 200, 15_000, "etcd back");
  expect(again.body).toMatch(/^ok: last sync \S+\n$/);
  expect(proc.exitCode).toBeNull();
  proc.kill("SIGTERM");
  expect(await proc.exited).toBe(0);
  expect(stderr).toContain("config: source down");
}, 60_000);
