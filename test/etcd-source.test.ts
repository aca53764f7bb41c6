// EtcdSource against real etcd processes (test/support/etcd.ts): snapshot, events, prefix
// delete, outages (kill, SIGSTOP), compaction while disconnected, resync(), leader failover in a
// cluster, authentication, TLS (the server certificate's chain and name are both checked).

import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { Etcd3 } from "etcd3";
import { EtcdSource, type EtcdSourceOptions } from "../src/config/etcd-source.ts";
import { makeEtcdClient, poolOf } from "../src/etcd/client.ts";
import { passThroughFaultHandling } from "../src/etcd/faults.ts";
import type { RawValue } from "../src/config/source.ts";
import { configureLog } from "../src/util/log.ts";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { RecordingSink } from "./support/recording-sink.ts";
import { until } from "./support/until.ts";
import { enableAuth, makeTestCerts, startEtcd, startEtcdCluster, type Etcd, type EtcdCluster } from "./support/etcd.ts";

configureLog({ level: (process.env.CLUSTERF_LOG_LEVEL as any) ?? "error" });

/**
 * Everything under /clusterf/ in etcd, relative keys → text (the truth to compare with). Read
 * again on an error: the test clients do not retry by themselves, and a member may be down.
 */
async function etcdState(c: Etcd3, prefix = "/clusterf/"): Promise<Record<string, string>> {
  for (let attempt = 1; ; attempt++) {
    try {
      const all = await c.getAll().prefix(prefix).options({ deadline: new Date(Date.now() + 2000) }).strings();
      return Object.fromEntries(Object.entries(all).map(([k, v]) => [k.slice(prefix.length), v]).sort());
    } catch (e) {
      if (attempt >= 10) throw e;
      await Bun.sleep(100);
    }
  }
}

const sources: EtcdSource[] = [];
const sinks: RecordingSink[] = [];
/** A sink for one source of the test (the tests write each value at most once per key). */
function recordingSink(): RecordingSink {
  const s = new RecordingSink("etcd", { valuesOnceEach: true });
  sinks.push(s);
  return s;
}
/** Every sink of the test saw a faithful delivery (see RecordingSink). */
function expectFaithful(): void {
  expect(sinks.flatMap((s) => s.violations)).toEqual([]);
}
const clients: Etcd3[] = [];
function source(opts: EtcdSourceOptions): EtcdSource {
  const s = new EtcdSource(opts);
  sources.push(s);
  return s;
}
/** A test client that never repeats a request by itself (a retried put would deliver a value twice). */
function client(endpoints: string[]): Etcd3 {
  const c = makeEtcdClient({ endpoints }, passThroughFaultHandling());
  clients.push(c);
  return c;
}
afterEach(async () => {
  sinks.length = 0;
  await Promise.all(sources.splice(0).map((s) => s.stop()));
  for (const c of clients.splice(0)) c.close();
});

describe("EtcdSource, one member", () => {
  let etcd: Etcd;
  beforeAll(async () => {
    etcd = await startEtcd();
  });
  afterAll(async () => {
    await etcd?.destroy();
  });

  test("snapshot, put and delete events, prefix delete", async () => {
    const c = client([etcd.clientUrl]);
    await c.delete().all();
    await c.put("/clusterf/services/web/frontend").value('{"ipv4":"10.0.0.1","tcp":80}');
    await c.put("/clusterf/services/web/backends/b1").value('{"ipv4":"10.1.0.1"}');
    await c.put("/clusterf/routes/r1").value('{"Prefix4":"10.1.0.0/16"}');
    await c.put("/clusterfoo/x").value("not ours");
    await c.put("/other/services/x/frontend").value("not ours");

    const sink = recordingSink();
    const src = source({ endpoints: [etcd.clientUrl] });
    await src.start(sink);
    await src.ready;
    expect(sink.snapshots.length).toBe(1);
    expect(sink.texts()).toEqual({
      "routes/r1": '{"Prefix4":"10.1.0.0/16"}',
      "services/web/backends/b1": '{"ipv4":"10.1.0.1"}',
      "services/web/frontend": '{"ipv4":"10.0.0.1","tcp":80}',
    });
    expect(sink.map.get("routes/r1")).toEqual({
      text: '{"Prefix4":"10.1.0.0/16"}',
      format: "json",
      origin: "/clusterf/routes/r1",
    });
    await until(() => sink.up === true, 10000, "status up", 20);

    // put, update, delete: one batch each
    await c.put("/clusterf/services/web/backends/b2").value('{"ipv4":"10.1.0.2"}');
    await until(() => sink.map.has("services/web/backends/b2"), 10000, "b2", 20);
    expect(sink.updates.at(-1)).toEqual([
      {
        key: "services/web/backends/b2",
        value: { text: '{"ipv4":"10.1.0.2"}', format: "json", origin: "/clusterf/services/web/backends/b2" },
      },
    ]);
    await c.put("/clusterf/services/web/backends/b1").value('{"ipv4":"10.1.0.1","weight":0}');
    await until(() => sink.map.get("services/web/backends/b1")?.text.includes("weight") === true, 10000, "b1 reweighted", 20);
    await c.delete().key("/clusterf/routes/r1");
    await until(() => !sink.map.has("routes/r1"), 10000, "r1 deleted", 20);
    expect(sink.updates.at(-1)).toEqual([{ key: "routes/r1", value: null }]);

    // A transaction: one response, one batch.
    const before = sink.updates.length;
    await c
      .if("/clusterf/services/web/frontend", "Version", ">", 0)
      .then(
        c.put("/clusterf/services/test/frontend").value('{"ipv4":"10.0.0.2","tcp":81}'),
        c.put("/clusterf/services/test/backends/t1").value('{"ipv4":"10.2.0.1"}'),
        c.put("/clusterf/services/test/backends/t2").value('{"ipv4":"10.2.0.2"}'),
      )
      .commit();
    await until(() => sink.map.has("services/test/backends/t2"), 10000, "test service", 20);
    expect(sink.updates.length).toBe(before + 1);
    expect(sink.updates.at(-1)!.map((e) => e.key).sort()).toEqual([
      "services/test/backends/t1",
      "services/test/backends/t2",
      "services/test/frontend",
    ]);

    // `etcdctl del --prefix`: one delete event per key, delivered as one batch.
    const n = sink.updates.length;
    const del = Bun.spawnSync(["etcdctl", "--endpoints", etcd.clientUrl, "del", "--prefix", "/clusterf/services/test"], {
      env: { ...process.env, ETCDCTL_API: "3" },
    });
    expect(del.stdout.toString().trim()).toBe("3");
    await until(() => ![...sink.map.keys()].some((k) => k.startsWith("services/test/")), 10000, "test service removed", 20);
    expect(sink.updates.length).toBe(n + 1);
    expect(sink.updates.at(-1)!.map((e) => [e.key, e.value]).sort()).toEqual([
      ["services/test/backends/t1", null],
      ["services/test/backends/t2", null],
      ["services/test/frontend", null],
    ]);
    expect(sink.texts()).toEqual(await etcdState(c));
    expect(sink.snapshots.length).toBe(1);
    expectFaithful();
  });

  test("a custom prefix, with a trailing slash", async () => {
    const c = client([etcd.clientUrl]);
    await c.put("/lb2/routes/a").value("{}");
    await c.put("/lb2x/routes/b").value("{}");
    const sink = recordingSink();
    const src = source({ endpoints: [etcd.clientUrl], prefix: "/lb2/" });
    await src.start(sink);
    expect(sink.texts()).toEqual({ "routes/a": "{}" });
    await c.put("/lb2x/routes/c").value("{}");
    await c.put("/lb2/routes/d").value("{}");
    await until(() => sink.map.has("routes/d"), 10000, "d", 20);
    expect(sink.texts()).toEqual({ "routes/a": "{}", "routes/d": "{}" });
    expectFaithful();
  });

  test("etcd killed and restarted: down, no empty snapshot, catches up by resuming the watch", async () => {
    const sink = recordingSink();
    const src = source({ endpoints: [etcd.clientUrl] });
    await src.start(sink);
    await until(() => sink.up === true, 10000, "up", 20);
    // The last event before the outage: resuming the watch must not deliver it again.
    await client([etcd.clientUrl]).put("/clusterf/routes/before-kill").value('{"IpvsMethod":"masq"}');
    await until(() => sink.map.has("routes/before-kill"), 10000, "before-kill", 20);
    const snaps = sink.snapshots.length;
    const revBefore = src.revision!;

    await etcd.kill();
    await until(() => sink.up === false, 10000, "down", 20);
    expect(sink.statuses.at(-1)!.detail).toBeTruthy();
    const stateWhileDown = sink.texts();
    await Bun.sleep(600); // a few retries against the dead server
    expect(sink.texts()).toEqual(stateWhileDown);

    await etcd.restart();
    const c = client([etcd.clientUrl]);
    await c.put("/clusterf/services/web/backends/b3").value('{"ipv4":"10.1.0.3"}');
    await c.delete().key("/clusterf/services/web/backends/b2");
    // More than etcd's 1000-revision replay chunk: the catch-up arrives in several responses.
    for (let i = 0; i < 1500; i += 100) {
      await Promise.all(
        Array.from({ length: 100 }, (_, j) => c.put(`/clusterf/services/bulk/backends/b${(i + j) % 40}`).value(`{"weight":${i + j}}`)),
      );
    }
    await until(() => sink.up === true, 15000, "up again", 20);
    await until(async () => JSON.stringify(sink.texts()) === JSON.stringify(await etcdState(c)), 10000, "caught up", 20);
    expect(sink.snapshots.length).toBe(snaps); // resumed from the revision, no re-read
    expect(sink.snapshots.every((s) => s.size > 0)).toBe(true);
    expect(src.revision!).toBeGreaterThan(revBefore);
    expect(sink.updates.length).toBeGreaterThanOrEqual(2); // 1500+ revisions: at least two responses
    expectFaithful();
  }, 30000);

  test("a frozen etcd (SIGSTOP) is noticed by keepalive; resumes after SIGCONT", async () => {
    const sink = recordingSink();
    const src = source({ endpoints: [etcd.clientUrl], keepaliveMs: 5000, keepaliveTimeoutMs: 1000 });
    await src.start(sink);
    await until(() => sink.up === true, 10000, "up", 20);
    const snaps = sink.snapshots.length;
    etcd.pause();
    try {
      await until(() => sink.up === false, 12000, "down", 20);
      expectFaithful();
    } finally {
      etcd.resume();
    }
    const c = client([etcd.clientUrl]);
    await c.put("/clusterf/routes/after-freeze").value('{"IpvsMethod":"droute"}');
    await until(() => sink.up === true, 10000, "up again", 20);
    await until(() => sink.map.has("routes/after-freeze"), 10000, "caught up", 20);
    expect(sink.texts()).toEqual(await etcdState(c));
    expect(sink.snapshots.length).toBe(snaps);
  }, 30000);

  test("compacted while disconnected: a full re-read, delivered as a snapshot of the current state", async () => {
    const sink = recordingSink();
    // A long first backoff keeps the source away while we change and compact.
    const src = source({ endpoints: [etcd.clientUrl], backoffInitialMs: 3000, backoffMaxMs: 3000 });
    await src.start(sink);
    await until(() => sink.up === true, 10000, "up", 20);
    expect(sink.snapshots.length).toBe(1);
    const had = src.revision!;

    await etcd.kill();
    await until(() => sink.up === false, 10000, "down", 20);
    await etcd.restart();
    const c = client([etcd.clientUrl]);
    await c.delete().key("/clusterf/services/web/backends/b1");
    await c.put("/clusterf/services/web/backends/b9").value('{"ipv4":"10.1.0.9"}');
    await c.put("/clusterf/routes/late").value('{"IpvsMethod":"tunnel"}');
    const head = await c.get("/clusterf/routes/late").exec();
    const compactTo = Number(head.header.revision);
    expect(compactTo).toBeGreaterThan(had + 1);
    await c.kv.compact({ revision: String(compactTo), physical: true });
    expect(src.revision).toBe(had); // it has not reconnected yet

    await until(() => sink.snapshots.length === 2, 10000, "re-read", 20);
    await until(() => sink.up === true, 10000, "up again", 20);
    const expected = await etcdState(c);
    expect(Object.fromEntries([...sink.snapshots[1]!].map(([k, v]) => [k, v.text]).sort())).toEqual(expected);
    expect(sink.map.has("services/web/backends/b1")).toBe(false);
    expect(src.revision!).toBeGreaterThanOrEqual(compactTo);

    // and it follows on from there
    await c.put("/clusterf/routes/later").value("{}");
    await until(() => sink.map.has("routes/later"), 10000, "later", 20);
    expect(sink.snapshots.length).toBe(2);
    expectFaithful();
  }, 30000);

  test("watch: false (-once): one full read, connected, no watch stream; a change is read only at resync()", async () => {
    const c = client([etcd.clientUrl]);
    await c.delete().all();
    await c.put("/clusterf/routes/once-1").value('{"IpvsMethod":"masq"}');
    const sink = recordingSink();
    const src = source({ endpoints: [etcd.clientUrl], watch: false });
    await src.start(sink);
    await until(() => sink.up === true, 10000, "up", 20);
    expect(sink.snapshots.length).toBe(1);
    expect(sink.texts()).toEqual(await etcdState(c));
    expect(src.endpoint).toBeNull();
    // A watch delivers a put within milliseconds here; none is open.
    await c.put("/clusterf/routes/once-2").value('{"IpvsMethod":"droute"}');
    await Bun.sleep(500);
    expect(sink.updates.length).toBe(0);
    expect(sink.map.has("routes/once-2")).toBe(false);
    await src.resync();
    expect(sink.snapshots.length).toBe(2);
    expect(sink.texts()).toEqual(await etcdState(c));
    expect(sink.up).toBe(true);
    expect(src.endpoint).toBeNull();
    expectFaithful();
  });

  test("resync(): one snapshot equal to a fresh read, the watch goes on from its revision, changes arrive once", async () => {
    const c = client([etcd.clientUrl]);
    const sink = recordingSink();
    const src = source({ endpoints: [etcd.clientUrl] });
    await src.resync(); // before start(): nothing to do
    expect(sink.snapshots.length).toBe(0);
    await src.start(sink);
    await until(() => sink.up === true, 10000, "up", 20);
    await c.put("/clusterf/routes/resync-1").value('{"IpvsMethod":"masq","n":1}');
    await until(() => sink.map.has("routes/resync-1"), 10000, "resync-1", 20);

    // Quiet: the snapshot is a fresh read (the sink's own state, spoiled here, plays no part).
    sink.map.delete("routes/resync-1");
    sink.map.set("routes/not-in-etcd", { text: "{}", format: "json", origin: "test" });
    // A change outside the prefix moves etcd's revision past the last one the watch delivered:
    // the watch must go on from the read's revision.
    const watched = src.revision!;
    const head = Number((await c.put("/other/resync").value("x").exec()).header.revision);
    expect(head).toBeGreaterThan(watched);
    const updatesBefore = sink.updates.length;
    await src.resync();
    expect(sink.snapshots.length).toBe(2);
    expect(sink.updates.length).toBe(updatesBefore);
    const fresh = await etcdState(c);
    expect(Object.fromEntries([...sink.snapshots[1]!].map(([k, v]) => [k, v.text]).sort())).toEqual(fresh);
    expect(sink.texts()).toEqual(fresh);
    expect(src.revision).toBe(head);

    // Later changes: each exactly once, in order (in one batch or two: etcd may send two writes in
    // one watch response, as one clean-clone run saw).
    await c.put("/clusterf/routes/resync-2").value('{"IpvsMethod":"masq","n":2}');
    await c.delete().key("/clusterf/routes/resync-1");
    await until(() => !sink.map.has("routes/resync-1"), 10000, "resync-1 deleted", 20);
    expect(sink.updates.slice(updatesBefore).flat()).toEqual([
      { key: "routes/resync-2", value: { text: '{"IpvsMethod":"masq","n":2}', format: "json", origin: "/clusterf/routes/resync-2" } },
      { key: "routes/resync-1", value: null },
    ]);

    // Busy: re-reads while keys change lose nothing and deliver nothing twice.
    let writes = 0;
    let stop = false;
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        await c.put(`/clusterf/services/resync/backends/b${i % 5}`).value(`{"weight":${i}}`);
        writes++;
      }
    })();
    for (let r = 0; r < 3; r++) {
      const n = writes;
      await until(() => writes >= n + 20, 10000, "writes", 20);
      await src.resync();
    }
    const n = writes;
    await until(() => writes >= n + 20, 10000, "writes after the re-reads", 20);
    stop = true;
    await writer;
    const truth = await etcdState(c);
    await until(() => JSON.stringify(sink.texts()) === JSON.stringify(truth), 10000, "converged", 20);
    expect(sink.snapshots.length).toBe(5);
    expectFaithful();
  });

  /**
   * Records the range requests of `src` (its full reads) and runs `after(n)` once the n-th one
   * (from 0) has answered, before the source sees the answer: "between two pages".
   */
  function spyPages(src: EtcdSource, after: (n: number) => Promise<void> | void = () => {}) {
    // The source's range requests go through the client's pool (src/etcd/client.ts rangePage).
    const pool = poolOf(src.etcd);
    const exec = pool.exec.bind(pool);
    const calls: { key: string; limit: number; revision: number; ok?: boolean; bytes?: number }[] = [];
    pool.exec = async (service: string, method: string, req: any, options: unknown) => {
      if (service !== "KV") return exec(service, method, req, options);
      const call = { key: req.key!.toString(), limit: Number(req.limit ?? 0), revision: Number(req.revision ?? 0) };
      calls.push(call);
      const n = calls.length - 1;
      const res = await exec(service, method, req, options).catch((e: unknown) => {
        call.ok = false;
        throw e;
      });
      call.ok = true;
      call.bytes = res.buf.length;
      await after(n);
      return res;
    };
    return calls;
  }

  /** The 100 keys of the paged-read tests, under /paged/ (values carry a counter). */
  async function loadPaged(c: Etcd3): Promise<void> {
    await c.delete().prefix("/paged");
    await c.put("/paged").value("not ours");
    await c.put("/pagedx/routes/r").value("not ours");
    for (let i = 0; i < 100; i += 20) {
      await Promise.all(
        Array.from({ length: 20 }, (_, j) => c.put(`/paged/services/s${String(i + j).padStart(3, "0")}/frontend`).value(`{"n":${i + j}}`)),
      );
    }
  }
  const snapshotTexts = (m: Map<string, RawValue>) => Object.fromEntries([...m].map(([k, v]) => [k, v.text]).sort());

  test("a full read in pages (100 keys, pageSize 7): one snapshot equal to a fresh read, all pages at one revision", async () => {
    const c = client([etcd.clientUrl]);
    await loadPaged(c);
    const fresh = await etcdState(c, "/paged/");
    expect(Object.keys(fresh).length).toBe(100);
    const sink = recordingSink();
    const src = source({ endpoints: [etcd.clientUrl], prefix: "/paged", pageSize: 7 });
    const calls = spyPages(src);
    await src.start(sink);
    expect(sink.snapshots.length).toBe(1);
    expect(snapshotTexts(sink.snapshots[0]!)).toEqual(fresh);
    // Several requests, each after the last key of the one before, the first at the newest
    // revision and the others at the revision it answered with. The first page and the last
    // ones are 7 keys; those between take half of what remains (93, 46, 23 remain after the
    // first three): 6 requests.
    const limits = calls.map((x) => x.limit);
    expect(calls.every((x) => x.ok)).toBe(true);
    expect(limits).toEqual([7, 47, 23, 12, 7, 7]);
    expect(calls[0]!.key).toBe("/paged/");
    expect(calls[0]!.revision).toBe(0);
    expect(calls[1]!.key).toBe("/paged/services/s006/frontend\0");
    expect(new Set(calls.slice(1).map((x) => x.revision))).toEqual(new Set([src.revision!]));
    // The first read went to the sink page by page (the last part marked as such).
    expect(sink.partSizes).toEqual([[7, 47, 23, 12, 7, 4]]);
    // and it follows on from there
    await c.put("/paged/routes/after").value("{}");
    await until(() => sink.map.has("routes/after"), 10000, "after", 20);
    expect(sink.texts()).toEqual(await etcdState(c, "/paged/"));
    expect(sink.snapshots.length).toBe(1);
    // A later full read is handed over whole.
    await src.resync();
    expect(sink.partSizes).toEqual([[7, 47, 23, 12, 7, 4], [101]]);
    expect(sink.texts()).toEqual(await etcdState(c, "/paged/"));
    expectFaithful();
  });

  test("large values: fewer keys a page, each page about pageBytes at most", async () => {
    const c = client([etcd.clientUrl]);
    await c.delete().prefix("/big");
    const value = (i: number) => JSON.stringify({ n: i, pad: "x".repeat(400) }); // about 440 bytes a key
    for (let i = 0; i < 100; i += 20) {
      await Promise.all(Array.from({ length: 20 }, (_, j) => c.put(`/big/services/s${String(i + j).padStart(3, "0")}/frontend`).value(value(i + j))));
    }
    const sink = recordingSink();
    const src = source({ endpoints: [etcd.clientUrl], prefix: "/big", pageSize: 5, pageBytes: 4000 });
    const calls = spyPages(src);
    await src.start(sink);
    expect(snapshotTexts(sink.snapshots[0]!)).toEqual(await etcdState(c, "/big/"));
    // The first page is pageSize keys; the others are at most 4000 bytes' worth (about 9 keys),
    // not half of what remains (47, 24, …).
    expect(calls[0]!.limit).toBe(5);
    for (const call of calls.slice(1)) {
      expect(call.limit).toBeLessThanOrEqual(9);
      expect(call.bytes!).toBeLessThanOrEqual(4000);
    }
    expect(calls.length).toBeGreaterThanOrEqual(11);
    expectFaithful();
  });

  test("writes between two pages of the full read: not in the snapshot, then each once through the watch", async () => {
    const c = client([etcd.clientUrl]);
    await loadPaged(c);
    const before = await etcdState(c, "/paged/");
    const sink = recordingSink();
    const src = source({ endpoints: [etcd.clientUrl], prefix: "/paged", pageSize: 7 });
    const written = [
      "services/s000/frontend", // on the first page, already read
      "services/s003/backends/b1", // a new key, on a page already read
      "services/s050/frontend", // on a page not read yet
      "services/s051/backends/b1", // a new key, on a page not read yet
      "services/s099/frontend", // the last page
    ];
    const deleted = "services/s070/frontend"; // on a page not read yet
    const calls = spyPages(src, async (n) => {
      if (n !== 1) return; // after the second page
      for (const k of written) await c.put(`/paged/${k}`).value('{"written":"between pages"}');
      await c.delete().key(`/paged/${deleted}`);
    });
    await src.start(sink);
    expect(calls.length).toBeGreaterThan(2);
    expect(sink.snapshots.length).toBe(1);
    expect(snapshotTexts(sink.snapshots[0]!)).toEqual(before);
    const after = await etcdState(c, "/paged/");
    expect(after).not.toEqual(before);
    await until(() => JSON.stringify(sink.texts()) === JSON.stringify(after), 10000, "the writes, through the watch", 20);
    const delivered = sink.updates.flat().map((e) => e.key);
    expect(delivered.sort()).toEqual([...written, deleted].sort());
    expect(sink.map.has(deleted)).toBe(false);
    expect(sink.snapshots.length).toBe(1);
    expectFaithful();
  });

  test("the full read's revision compacted between two pages: the read starts over, the snapshot is consistent", async () => {
    const c = client([etcd.clientUrl]);
    await loadPaged(c);
    const sink = recordingSink();
    const src = source({ endpoints: [etcd.clientUrl], prefix: "/paged", pageSize: 7 });
    let compactedTo = 0;
    const calls = spyPages(src, async (n) => {
      if (n !== 2) return; // after the third page
      await c.put("/paged/services/s001/frontend").value('{"written":"before the compaction"}');
      await c.delete().key("/paged/services/s002/frontend"); // on a page already read
      await c.delete().key("/paged/services/s080/frontend");
      const put = await c.put("/paged/services/s090/frontend").value('{"written":"before the compaction"}').exec();
      compactedTo = Number(put.header.revision);
      await c.kv.compact({ revision: String(compactedTo), physical: true });
    });
    await src.start(sink);
    expect(compactedTo).toBeGreaterThan(0);
    // The fourth request, at the compacted revision, failed; the read started over at the newest.
    expect(calls[3]!.ok).toBe(false);
    expect(calls[3]!.revision).toBeLessThan(compactedTo);
    expect(calls[4]!.key).toBe("/paged/");
    expect(calls[4]!.revision).toBe(0);
    const fresh = await etcdState(c, "/paged/");
    expect(Object.keys(fresh).length).toBe(98);
    expect(calls.length).toBeGreaterThan(5);
    expect(calls.slice(5).every((x) => x.ok && x.revision === src.revision)).toBe(true);
    expect(src.revision!).toBeGreaterThanOrEqual(compactedTo);
    expect(sink.snapshots.length).toBe(1);
    expect(snapshotTexts(sink.snapshots[0]!)).toEqual(fresh);
    // The pages read before the compaction went as parts; the read that started over, whole
    // (it replaces them).
    expect(sink.partSizes).toEqual([[98]]);
    expect(fresh["services/s001/frontend"]).toBe('{"written":"before the compaction"}');
    expect(fresh["services/s002/frontend"]).toBeUndefined();
    expect(fresh["services/s080/frontend"]).toBeUndefined();
    // started over at once: no error, no status down, no retry after a backoff
    expect(sink.statuses.filter((st) => !st.up)).toEqual([]);
    // and it follows on from there, nothing delivered twice
    await c.put("/paged/routes/after").value("{}");
    await until(() => sink.map.has("routes/after"), 10000, "after", 20);
    expect(sink.updates.flat().map((e) => e.key)).toEqual(["routes/after"]);
    expect(sink.texts()).toEqual(await etcdState(c, "/paged/"));
    expectFaithful();
  });

  test("resync() while etcd is down: rejects with the reason; the re-read happens when etcd is back", async () => {
    const sink = recordingSink();
    const src = source({ endpoints: [etcd.clientUrl], backoffInitialMs: 3000, backoffMaxMs: 3000 });
    await src.start(sink);
    await until(() => sink.up === true, 10000, "up", 20);
    await etcd.kill();
    await until(() => sink.up === false, 10000, "down", 20);
    const t0 = Date.now();
    await expect(src.resync()).rejects.toThrow(/^etcd: cannot re-read \/clusterf\/: .*UNAVAILABLE/);
    expect(Date.now() - t0).toBeLessThan(2000); // at once, not after the 3 s backoff
    expect(sink.snapshots.length).toBe(1);
    await etcd.restart();
    await until(() => sink.snapshots.length === 2, 15000, "re-read", 20);
    await until(() => sink.up === true, 10000, "up again", 20);
    expect(sink.texts()).toEqual(await etcdState(client([etcd.clientUrl])));
    await src.stop();
    await src.resync(); // after stop(): nothing to do
    expect(sink.snapshots.length).toBe(2);
    expectFaithful();
  }, 30000);

  test("etcd down at start: start() resolves, status down, ready once it comes up", async () => {
    await etcd.kill();
    const sink = recordingSink();
    const src = source({ endpoints: [etcd.clientUrl], backoffInitialMs: 100, backoffMaxMs: 400 });
    let ready = false;
    src.ready.then(() => (ready = true));
    const t0 = Date.now();
    await src.start(sink);
    expect(Date.now() - t0).toBeLessThan(6000);
    expect(sink.up).toBe(false);
    expect(sink.snapshots.length).toBe(0);
    await Bun.sleep(300);
    expect(ready).toBe(false);
    await etcd.restart();
    await src.ready;
    await until(() => sink.up === true, 10000, "up", 20);
    expect(sink.snapshots.length).toBe(1);
    expect(sink.snapshots[0]!.size).toBeGreaterThan(0);
    expectFaithful();
  }, 30000);

  test("stop() before the first snapshot rejects ready and returns", async () => {
    const sink = recordingSink();
    const src = new EtcdSource({ endpoints: ["http://127.0.0.1:1"], backoffInitialMs: 50 });
    await src.start(sink);
    expect(sink.up).toBe(false);
    await src.stop();
    await expect(src.ready).rejects.toThrow(/stopped/);
    expectFaithful();
  });
});

describe("EtcdSource, three members", () => {
  let cluster: EtcdCluster;
  beforeAll(async () => {
    cluster = await startEtcdCluster(3);
  }, 30000);
  afterAll(async () => {
    await cluster?.destroy();
  });

  /** Writes keys in a loop (1 s deadline per write, so a write lost in an election does not stall it). */
  function writer(c: Etcd3) {
    let stop = false;
    const w = {
      count: 0,
      done: null as unknown as Promise<void>,
      async stop() {
        stop = true;
        await w.done;
        return w.count;
      },
    };
    w.done = (async () => {
      for (let i = 0; !stop; i++) {
        const key = `/clusterf/services/s${i % 3}/backends/b${i % 7}`;
        const deadline = { deadline: new Date(Date.now() + 1000) };
        try {
          if (i % 5 === 4) await c.delete().key(key).options(deadline);
          else await c.put(key).value(JSON.stringify({ ipv4: `10.9.0.${i % 250}`, weight: i })).options(deadline);
          w.count++;
        } catch {
          await Bun.sleep(50);
        }
        await Bun.sleep(5);
      }
    })();
    return w;
  }

  test("leader killed while keys change, then the source's own member: it follows through the others", async () => {
    const c = client(cluster.clientUrls);
    await c.put("/clusterf/services/s0/frontend").value('{"ipv4":"10.0.0.9","tcp":80}');
    const sink = recordingSink();
    const src = source({ endpoints: cluster.clientUrls, backoffInitialMs: 100, backoffMaxMs: 1000 });
    await src.start(sink);
    await until(() => sink.up === true, 10000, "up", 20);

    const w = writer(c);
    const progress = async (what: string) => {
      const n = w.count;
      await until(() => w.count >= n + 20, 15000, what, 20);
    };
    await progress("writes before");
    const leader = await cluster.killLeader();
    await progress("writes after the leader was killed");
    await cluster.restartMember(leader);

    // Now kill the member the source watches through (the old leader is back, so quorum holds).
    await until(() => src.endpoint !== null, 10000, "connected", 20);
    const mine = cluster.members.find((m) => m.clientUrl.endsWith(src.endpoint!))!;
    expect(mine).toBeDefined();
    const downs = sink.statuses.filter((st) => !st.up).length;
    await mine.kill();
    try {
      await until(() => sink.statuses.filter((st) => !st.up).length > downs, 10000, "down", 20);
      await progress("writes after the source's member was killed");
      await until(() => src.endpoint !== null && !mine.clientUrl.endsWith(src.endpoint), 10000, "reconnected elsewhere", 20);
      await progress("writes after the source reconnected");
      // at least 20 in each of the 4 phases (on a slow machine, exactly that)
      const writes = await w.stop();
      expect(writes).toBeGreaterThanOrEqual(80);

      const truth = await etcdState(c);
      await until(() => JSON.stringify(sink.texts()) === JSON.stringify(truth), 10000, "converged", 20);
      expect(sink.snapshots.every((s) => s.size > 0)).toBe(true);
    } finally {
      await cluster.restartMember(mine); // the next test needs all three, whatever happened here
    }
    expectFaithful();
  }, 40000);

  test("the source's member frozen (SIGSTOP): keepalive notices, the watch moves to another member", async () => {
    const sink = recordingSink();
    const src = source({ endpoints: cluster.clientUrls, keepaliveMs: 5000, keepaliveTimeoutMs: 1000, backoffInitialMs: 100 });
    await src.start(sink);
    await until(() => src.endpoint !== null, 10000, "connected", 20);
    const mine = cluster.members.find((m) => m.clientUrl.endsWith(src.endpoint!))!;
    // Writes go through the other members.
    const c = client(cluster.members.filter((m) => m !== mine).map((m) => m.clientUrl));
    mine.pause();
    try {
      // If the frozen member was the leader, a write can be lost in the election: retry it.
      for (let i = 0; ; i++) {
        try {
          await c.put("/clusterf/routes/while-frozen").value("{}").options({ deadline: new Date(Date.now() + 1000) });
          break;
        } catch (e) {
          if (i >= 10) throw e;
        }
      }
      await until(() => src.endpoint !== null && !mine.clientUrl.endsWith(src.endpoint), 15000, "moved to another member", 20);
      await until(() => sink.map.has("routes/while-frozen"), 10000, "caught up", 20);
      expect(sink.snapshots.length).toBe(1);
      expectFaithful();
    } finally {
      mine.resume();
    }
    expect(sink.texts()).toEqual(await etcdState(c));
  }, 30000);
});

describe("EtcdSource, authentication and TLS", () => {
  test("username/password: reads with a read-only user; a wrong password is reported, not fatal", async () => {
    const etcd = await startEtcd();
    try {
      const ctl = (...args: string[]) => {
        const r = Bun.spawnSync(["etcdctl", "--endpoints", etcd.clientUrl, ...args], { env: { ...process.env, ETCDCTL_API: "3" } });
        if (r.exitCode !== 0) throw new Error(`etcdctl ${args.join(" ")}: ${r.stderr}`);
      };
      ctl("put", "/clusterf/routes/r1", "{}");
      enableAuth(ctl, "rootpw", { name: "lb", password: "lbpw" });

      const sink = recordingSink();
      const src = source({ endpoints: [etcd.clientUrl], username: "lb", password: "lbpw" });
      await src.start(sink);
      expect(sink.texts()).toEqual({ "routes/r1": "{}" });
      const admin = makeEtcdClient({ endpoints: [etcd.clientUrl], username: "root", password: "rootpw" });
      clients.push(admin);
      await admin.put("/clusterf/routes/r2").value("{}");
      await until(() => sink.map.has("routes/r2"), 10000, "r2", 20);

      const bad = recordingSink();
      const src2 = source({ endpoints: [etcd.clientUrl], username: "lb", password: "wrong", backoffInitialMs: 50 });
      await src2.start(bad);
      expect(bad.up).toBe(false);
      expect(bad.statuses[0]!.detail).toMatch(/authentication failed/);
      expect(bad.snapshots.length).toBe(0);
      expectFaithful();
    } finally {
      await Promise.all(sources.splice(0).map((s) => s.stop()));
      await etcd.destroy();
    }
  }, 20000);

  test("TLS with client certificates, on an IP-address endpoint", async () => {
    const etcd = await startEtcd({ tls: true });
    try {
      const tls = { cacert: etcd.certs!.ca, cert: etcd.certs!.clientCert, key: etcd.certs!.clientKey };
      expect(etcd.clientUrl).toStartWith("https://127.0.0.1:");
      const c = makeEtcdClient({ endpoints: [etcd.clientUrl], ...tls });
      clients.push(c);
      await c.put("/clusterf/routes/tls").value('{"IpvsMethod":"masq"}');

      const sink = recordingSink();
      const src = source({ endpoints: [etcd.clientUrl], ...tls });
      await src.start(sink);
      expect(sink.texts()).toEqual({ "routes/tls": '{"IpvsMethod":"masq"}' });
      await c.put("/clusterf/routes/tls2").value("{}");
      await until(() => sink.map.has("routes/tls2"), 10000, "tls2", 20);

      // The server certificate is checked: another CA is refused.
      const otherDir = join(dirname(etcd.certs!.ca), "other-ca");
      mkdirSync(otherDir);
      const other = makeTestCerts(otherDir);
      const bad = recordingSink();
      const src2 = source({ endpoints: [etcd.clientUrl], ...tls, cacert: other.ca, backoffInitialMs: 50 });
      await src2.start(bad);
      expect(bad.up).toBe(false);
      expect(bad.snapshots.length).toBe(0);
      expectFaithful();
    } finally {
      await Promise.all(sources.splice(0).map((s) => s.stop()));
      await etcd.destroy();
    }
  }, 20000);

  // The member answers over TLS with a chain of the client's own CA (startEtcd checked that), so
  // only the name check stands between the client and a server that is not the one it asked for.
  for (const [what, san, host] of [
    ["for another IP address, on an IP-address endpoint", "IP:127.0.0.2,DNS:etcd", "127.0.0.1"],
    ["with a DNS name only (its CN is the address), on an IP-address endpoint", "DNS:localhost", "127.0.0.1"],
    ["for another name, on a host-name endpoint", "IP:127.0.0.1,DNS:other", "localhost"],
  ] as const) {
    test(`TLS: a server certificate of the same CA ${what} is refused`, async () => {
      const etcd = await startEtcd({ tls: true, serverSan: san });
      try {
        const tls = { cacert: etcd.certs!.ca, cert: etcd.certs!.clientCert, key: etcd.certs!.clientKey };
        const sink = recordingSink();
        const endpoint = etcd.clientUrl.replace("127.0.0.1", host);
        const src = source({ endpoints: [endpoint], ...tls, backoffInitialMs: 50, backoffMaxMs: 200 });
        await src.start(sink);
        await Bun.sleep(1500); // several attempts
        expect(sink.statuses.some((st) => st.up)).toBe(false);
        expect(sink.statuses[0]?.detail).toMatch(/altnames/);
        expect(sink.snapshots.length).toBe(0);
        expect(src.endpoint).toBeNull();
        expectFaithful();
      } finally {
        await Promise.all(sources.splice(0).map((s) => s.stop()));
        await etcd.destroy();
      }
    }, 20000);
  }
});
