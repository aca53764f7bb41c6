// clusterf-docker benchmark (issue 4): a private dockerd and etcd (the test harnesses), one
// clusterf-docker process, then 200 labelled containers started at once and stopped at once.
// Measured from an etcd watch (the arrival of each key), the Docker event stream (when dockerd
// reported each start, kill and die) and clusterf-docker's /metrics (etcd writes):
//   - the time from the first start request, and from the last start that returned, until all
//     200 backend keys are in etcd; per container: start returned → key in etcd, and the Docker
//     start event → key in etcd (median, p90, max);
//   - the same for stopping them all: until every key is at weight 0 (the drain at the kill),
//     and until every key is removed (after the die);
//   - etcd writes per container (puts, deletes) and write requests (txns).
// The goal: one write per container, all in etcd within 2 s of the last start returning; the
// yardstick printed beside it is Docker's own time for the same starts and stops in this run.
// Exit status: 0 when the goal is met, 1 when it is not (or on an error), 130 when interrupted.
// No traffic is ever sent to the containers. Everything (containers, dockerd, etcd, temp dirs)
// is removed at the end, also after an error or Ctrl-C.
//
// Run (root, Debian's docker.io, etcd-server and busybox-static): npm run bench:docker
// BENCH_DOCKER_CONTAINERS=N changes the number of containers (default 200); BENCH_DOCKER_GOAL_MS
// the goal's time limit (default 2000); BENCH_DOCKER_DUMP=file writes every container's timings
// (ms, from the first start / stop request) and the daemon's log.
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
// @ts-ignore: dockerode ships no type declarations
import Docker from "dockerode";
import { Etcd3 } from "etcd3";
import { onEventLines } from "../src/docker/watcher.ts";
import { dockerUnavailable, startDocker, type DockerEngine } from "../test/support/docker.ts";
import { freePorts, startEtcd, type Etcd } from "../test/support/etcd.ts";

const ROOT = join(import.meta.dir, "..");
const N = Number(process.env.BENCH_DOCKER_CONTAINERS ?? 200);
const GOAL_MS = Number(process.env.BENCH_DOCKER_GOAL_MS ?? 2000);
if (!Number.isInteger(N) || N < 1) throw new Error(`BENCH_DOCKER_CONTAINERS: expected a positive integer, got ${process.env.BENCH_DOCKER_CONTAINERS}`);
if (!Number.isFinite(GOAL_MS)) throw new Error(`BENCH_DOCKER_GOAL_MS: expected milliseconds, got ${process.env.BENCH_DOCKER_GOAL_MS}`);
const STOP_TIMEOUT_S = 2; // sleep as PID 1 ignores SIGTERM: the stop drains for 2 s, then SIGKILL
const PREFIX = "/bench";
const SERVICE = "bench";
const S = "net.qmsk.clusterf.service";
const B = "net.qmsk.clusterf.backend";
const CREATE_CONCURRENCY = 16;

/** Wall-clock milliseconds with sub-millisecond resolution (comparable with Docker's timeNano). */
const now = () => performance.timeOrigin + performance.now();

interface KeyLog {
  puts: { t: number; weight: number; rev: string }[];
  deleted?: number;
}

interface DockerApi {
  createContainer(o: object): Promise<{ id: string }>;
  getContainer(id: string): { start(): Promise<unknown>; stop(o: object): Promise<unknown> };
  getEvents(o: object): Promise<NodeJS.ReadableStream & { destroy?: () => void }>;
}

let docker: DockerEngine | undefined;
let etcd: Etcd | undefined;
let client: Etcd3 | undefined;
let cd: ReturnType<typeof Bun.spawn> | undefined;
let stateDir: string | undefined;
const cleanups: (() => unknown)[] = [];
let cleaning: Promise<void> | undefined;
let interrupted = false;

function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const f of cleanups.splice(0).reverse()) {
      try {
        await f();
      } catch {
        /* best effort */
      }
    }
    if (cd && cd.exitCode === null && cd.signalCode === null) {
      cd.kill("SIGTERM");
      const t = setTimeout(() => cd?.kill("SIGKILL"), 5000);
      await cd.exited;
      clearTimeout(t);
    }
    client?.close();
    await Promise.all([docker?.destroy().catch((e) => console.error(`docker cleanup: ${e}`)), etcd?.destroy().catch((e) => console.error(`etcd cleanup: ${e}`))]);
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  })();
  return cleaning;
}

for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    interrupted = true;
    console.error(`${sig}: cleaning up`);
    cleanup().finally(() => process.exit(130));
  });
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}
const ms = (x: number) => `${Math.round(x)} ms`;
const dist = (xs: number[]) => (xs.length ? `${ms(quantile(xs, 0.5))} / ${ms(quantile(xs, 0.9))} / ${ms(Math.max(...xs))}` : "–");
const per = (n: number) => (Number.isInteger(n / N) ? String(n / N) : (n / N).toFixed(2));
const writes = (n: number, kind: string) => `${n} ${kind}${n === 1 ? "" : "s"} (${per(n)})`;

async function waitFor(pred: () => boolean, what: string, timeoutMs: number, logFile: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (cd && cd.exitCode !== null) throw new Error(`clusterf-docker exited (${cd.exitCode}) while waiting for ${what}:\n${tail(logFile)}`);
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; clusterf-docker log:\n${tail(logFile)}`);
    await Bun.sleep(5);
  }
}

function tail(file: string, lines = 20): string {
  try {
    return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

async function metrics(url: string): Promise<Record<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const l of text.split("\n")) {
    if (!l || l.startsWith("#")) continue;
    const i = l.lastIndexOf(" ");
    out[l.slice(0, i)] = Number(l.slice(i + 1));
  }
  return out;
}
const W = (kind: string) => `clusterf_docker_etcd_writes_total{kind="${kind}"}`;

async function pool<T>(items: T[], n: number, f: (x: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        await f(items[i]!, i);
      }
    }),
  );
}

/** Runs the benchmark and prints its report; true when the goal is met. */
async function main(): Promise<boolean> {
  const why = dockerUnavailable();
  if (why) throw new Error(`cannot run the Docker benchmark: ${why}`);
  const t0 = Date.now();
  [docker, etcd] = await Promise.all([startDocker(), startEtcd()]);
  console.error(`dockerd (${docker.storageDriver}) and etcd up in ${Date.now() - t0} ms`);
  client = new Etcd3({ hosts: etcd.clientUrl });
  const api = new Docker({ socketPath: docker.socket }) as DockerApi;

  // What arrives in etcd, and when.
  const keyLog = new Map<string, KeyLog>(); // by container id
  const base = `${PREFIX}/services/${SERVICE}/backends/`;
  const idOf = (key: string) => (key.startsWith(base) ? key.slice(base.length) : undefined);
  const watcher = await client.watch().prefix(`${PREFIX}/services/`).create();
  cleanups.push(() => watcher.cancel());
  watcher.on("put", (kv) => {
    const t = now();
    const id = idOf(kv.key.toString());
    if (!id) return;
    let l = keyLog.get(id);
    if (!l) keyLog.set(id, (l = { puts: [] }));
    l.puts.push({ t, weight: Number(JSON.parse(kv.value.toString()).weight), rev: kv.mod_revision });
  });
  watcher.on("delete", (kv) => {
    const t = now();
    const id = idOf(kv.key.toString());
    const l = id && keyLog.get(id);
    if (l) l.deleted ??= t;
  });

  // What dockerd reported, and when (its own clock: the same host).
  const dockerEvents = new Map<string, Map<string, number>>(); // id → action → first time
  const events = await api.getEvents({ filters: { type: ["container"] } });
  cleanups.push(() => events.destroy?.());
  onEventLines(events, (ev) => {
    const id = ev.Actor?.ID ?? ev.id;
    if (!id || !ev.Action || !ev.timeNano) return;
    let m = dockerEvents.get(id);
    if (!m) dockerEvents.set(id, (m = new Map()));
    if (!m.has(ev.Action)) m.set(ev.Action, ev.timeNano / 1e6);
  });

  // clusterf-docker, as an operator runs it.
  stateDir = mkdtempSync(join(tmpdir(), "clusterf-bench-docker-"));
  const logFile = join(stateDir, "clusterf-docker.log");
  const [port] = await freePorts(1);
  const murl = `http://127.0.0.1:${port}`;
  const fd = openSync(logFile, "a");
  cd = Bun.spawn(
    [
      process.execPath,
      join(ROOT, "src/cli/clusterf-docker.ts"),
      `-docker-endpoint=${docker.endpoint}`,
      `-etcd-machines=${etcd.clientUrl}`,
      `-etcd-prefix=${PREFIX}`,
      `-state-dir=${stateDir}`,
      `-metrics-listen=127.0.0.1:${port}`,
    ],
    { stdin: "ignore", stdout: fd, stderr: fd },
  );
  closeSync(fd);
  {
    const deadline = Date.now() + 20_000;
    while ((await fetch(`${murl}/healthz`).catch(() => undefined))?.status !== 200) {
      if (cd.exitCode !== null || Date.now() > deadline) throw new Error(`clusterf-docker not healthy:\n${tail(logFile)}`);
      await Bun.sleep(50);
    }
  }

  // The containers: created first (not measured), then started all at once.
  const ids: string[] = [];
  const tc = Date.now();
  await pool(
    Array.from({ length: N }, (_, i) => i),
    CREATE_CONCURRENCY,
    async (i) => {
      const c = await api.createContainer({
        name: `bench-${i}`,
        Image: docker!.image,
        Cmd: ["/bin/sleep", "3600"],
        Labels: { [S]: SERVICE, [`${B}.tcp`]: "80" },
        ExposedPorts: { "80/tcp": {} },
      });
      ids[i] = c.id;
    },
  );
  console.error(`${N} containers created in ${Date.now() - tc} ms; starting them at once`);

  // ---- start
  const m0 = await metrics(murl);
  const startSent = now();
  const started = new Map<string, number>();
  await Promise.all(
    ids.map(async (id) => {
      await api.getContainer(id).start();
      started.set(id, now());
    }),
  );
  const lastStarted = Math.max(...started.values());
  const published = (id: string) => keyLog.get(id)?.puts.find((p) => p.weight > 0)?.t;
  await waitFor(() => ids.every((id) => published(id) !== undefined), `${N} keys in etcd`, 120_000, logFile);
  await Bun.sleep(1000); // settle: any later write would be counted
  const m1 = await metrics(murl);
  const allIn = Math.max(...ids.map((id) => published(id)!));
  const startPuts = ids.reduce((a, id) => a + keyLog.get(id)!.puts.length, 0);
  const startRevs = new Set(ids.flatMap((id) => keyLog.get(id)!.puts.map((p) => p.rev))).size;
  const start = {
    fromFirst: allIn - startSent,
    fromLast: allIn - lastStarted,
    startWall: lastStarted - startSent,
    call: ids.map((id) => published(id)! - started.get(id)!),
    event: ids.flatMap((id) => {
      const e = dockerEvents.get(id)?.get("start");
      return e === undefined ? [] : [published(id)! - e];
    }),
    puts: m1[W("put")]! - m0[W("put")]!,
    deletes: m1[W("delete")]! - m0[W("delete")]!,
    txns: m1[W("txn")]! - m0[W("txn")]!,
    watchPuts: startPuts,
    watchRevs: startRevs,
    maxPutsPerKey: Math.max(...ids.map((id) => keyLog.get(id)!.puts.length)),
  };

  // ---- stop
  const putsBefore = new Map(ids.map((id) => [id, keyLog.get(id)!.puts.length]));
  const stopSent = now();
  const stopped = new Map<string, number>();
  await Promise.all(
    ids.map(async (id) => {
      await api.getContainer(id).stop({ t: STOP_TIMEOUT_S });
      stopped.set(id, now());
    }),
  );
  const lastStopped = Math.max(...stopped.values());
  const drained = (id: string) => keyLog.get(id)!.puts.slice(putsBefore.get(id)!).find((p) => p.weight === 0)?.t;
  await waitFor(() => ids.every((id) => keyLog.get(id)!.deleted !== undefined), `${N} keys removed`, 120_000, logFile);
  await Bun.sleep(1000);
  const m2 = await metrics(murl);
  const stopPutsList = ids.flatMap((id) => keyLog.get(id)!.puts.slice(putsBefore.get(id)!));
  const drainedAt = ids.map(drained).filter((t): t is number => t !== undefined);
  const removedAt = ids.map((id) => keyLog.get(id)!.deleted!);
  const stop = {
    drainedCount: drainedAt.length,
    drainFromFirst: drainedAt.length ? Math.max(...drainedAt) - stopSent : NaN,
    drainCall: ids.flatMap((id) => (drained(id) === undefined ? [] : [drained(id)! - stopSent])),
    drainEvent: ids.flatMap((id) => {
      const e = dockerEvents.get(id)?.get("kill");
      const d = drained(id);
      return e === undefined || d === undefined ? [] : [d - e];
    }),
    removeFromFirst: Math.max(...removedAt) - stopSent,
    removeFromLast: Math.max(...removedAt) - lastStopped,
    stopWall: lastStopped - stopSent,
    removeCall: ids.map((id) => keyLog.get(id)!.deleted! - stopped.get(id)!),
    removeEvent: ids.flatMap((id) => {
      const e = dockerEvents.get(id)?.get("die");
      return e === undefined ? [] : [keyLog.get(id)!.deleted! - e];
    }),
    puts: m2[W("put")]! - m1[W("put")]!,
    deletes: m2[W("delete")]! - m1[W("delete")]!,
    txns: m2[W("txn")]! - m1[W("txn")]!,
    watchPuts: stopPutsList.length,
    // Keys that went back above weight 0 after their drain, before their removal: for how long.
    bounced: ids.flatMap((id) => {
      const ps = keyLog.get(id)!.puts.slice(putsBefore.get(id)!);
      const z = ps.findIndex((p) => p.weight === 0);
      const up = z < 0 ? undefined : ps.slice(z + 1).find((p) => p.weight > 0);
      return up ? [keyLog.get(id)!.deleted! - up.t] : [];
    }),
    afterDie: ids.flatMap((id) => {
      const die = dockerEvents.get(id)?.get("die");
      const up = die === undefined ? undefined : keyLog.get(id)!.puts.find((p) => p.t > die && p.weight > 0);
      return up ? [up.t - die!] : [];
    }),
  };
  const reconnects = (readFileSync(logFile, "utf8").match(/docker: connection lost/g) ?? []).length;

  if (process.env.BENCH_DOCKER_DUMP) {
    const rows = ids.map((id) => ({ id: id.slice(0, 12), started: started.get(id)! - startSent, stopped: stopped.get(id)! - stopSent, events: Object.fromEntries([...(dockerEvents.get(id) ?? [])].map(([a, t]) => [a, t - (a === "start" || a === "create" ? startSent : stopSent)])), puts: keyLog.get(id)!.puts.map((p) => ({ ...p, t: p.t - (p.t < stopSent ? startSent : stopSent) })), deleted: keyLog.get(id)!.deleted! - stopSent }));
    await Bun.write(process.env.BENCH_DOCKER_DUMP, JSON.stringify(rows, null, 1));
    await Bun.write(process.env.BENCH_DOCKER_DUMP + ".log", readFileSync(logFile));
  }
  // ---- report
  console.log(`clusterf-docker, ${N} labelled containers on one Docker host (dockerd ${docker.storageDriver}, etcd on loopback, ${navigatorCpus()} CPUs)`);
  console.log("");
  console.log("| step | first request → all in etcd | last call returned → all in etcd | per container: call → etcd (median / p90 / max) | Docker event → etcd (median / p90 / max) | etcd writes (per container) | txns |");
  console.log("|---|---|---|---|---|---|---|");
  console.log(
    `| start ${N} at once → published | ${ms(start.fromFirst)} | ${ms(start.fromLast)} | start returned → put: ${dist(start.call)} | start → put: ${dist(start.event)} | ${writes(start.puts, "put")}${start.deletes ? `, ${writes(start.deletes, "delete")}` : ""} | ${start.txns} |`,
  );
  console.log(
    `| stop ${N} at once (-t ${STOP_TIMEOUT_S}) → weight 0 | ${ms(stop.drainFromFirst)}${stop.drainedCount < N ? ` (${stop.drainedCount} of ${N} drained)` : ""} | | stop sent → put: ${dist(stop.drainCall)} | kill → put: ${dist(stop.drainEvent)} | ${writes(stop.puts, "put")} | |`,
  );
  console.log(
    `| … → removed | ${ms(stop.removeFromFirst)} | ${ms(stop.removeFromLast)} | stop returned → delete: ${dist(stop.removeCall)} | die → delete: ${dist(stop.removeEvent)} | ${writes(stop.deletes, "delete")} | ${stop.txns} (stop, both) |`,
  );
  // The yardstick: Docker's own time for the same requests in this run.
  console.log(`| yardstick: Docker alone, first request → last call returned | start ${ms(start.startWall)}, stop ${ms(stop.stopWall)} | | | | | |`);
  console.log("");
  console.log(
    `Seen by the etcd watch: ${start.watchPuts} puts in ${start.watchRevs} revisions at the start (at most ${start.maxPutsPerKey} per key), ${stop.watchPuts} puts at the stop.`,
  );
  if (stop.bounced.length) {
    console.log(
      `After the drain, ${stop.bounced.length} of ${N} keys went back to their full weight before they were removed (${stop.afterDie.length} of them after the container's die event), ` +
        `and stayed there ${dist(stop.bounced)} (median / p90 / max).`,
    );
  }
  if (reconnects) console.log(`clusterf-docker lost its Docker connection ${reconnects} time(s) (an inspect without an answer in time) and read the whole state again.`);
  const misses = [
    ...(start.puts === N && start.maxPutsPerKey === 1 ? [] : [`${start.puts} puts for ${N} containers, at most ${start.maxPutsPerKey} per key`]),
    ...(start.fromLast <= GOAL_MS ? [] : [`all in etcd ${ms(start.fromLast)} after the last start returned`]),
  ];
  console.log(
    `Goal (one write per container, all in etcd within ${ms(GOAL_MS)} of the last start returning; Docker's own starts took ${ms(start.startWall)}): ` +
      (misses.length ? `NOT met: ${misses.join("; ")}.` : `met: ${ms(start.fromLast)}.`),
  );
  return misses.length === 0;
}

function navigatorCpus(): number {
  return (navigator as { hardwareConcurrency?: number }).hardwareConcurrency ?? 0;
}

let code = 0;
try {
  code = (await main()) ? 0 : 1;
} catch (e) {
  if (!interrupted) console.error(`bench/docker.ts: ${(e as Error).stack ?? e}`);
  code = interrupted ? 130 : 1;
} finally {
  await cleanup();
}
process.exit(code);
