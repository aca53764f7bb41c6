// A snapshot in parts (SourceSink.snapshot's `more`): a large tree's first read goes to the
// daemon as it is read, so that its raw text is never all held at once. The store takes parts in
// as puts and deletes, at the last part, what the source had before and no part gave again; the
// daemon takes parts in before its first apply but programs nothing before the last part, and
// after its first apply holds parts back until the last one; the directory source sends a large
// first read in parts whose union is the tree.

import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DirSource, readConfigDir } from "../src/config/dir-source.ts";
import type { ConfigSource, SnapshotPart } from "../src/config/source.ts";
import { ConfigStore } from "../src/config/store.ts";
import { IpvsDaemon } from "../src/daemon/ipvs-daemon.ts";
import { MemoryIpvsTable } from "../src/ipvs/memory-table.ts";
import { DEFAULT_DESIRED_OPTIONS } from "../src/model/desired.ts";
import { configureLog } from "../src/util/log.ts";
import { entries } from "./support/config.ts";
import { plain } from "./support/dir-tree.ts";
import { RecordingSink } from "./support/recording-sink.ts";
import { until } from "./support/until.ts";

configureLog({ level: "off" });

const frontend = (n: number) => ({ ipv4: `192.0.2.${n}`, tcp: 80 });
const backend = (n: number) => ({ ipv4: `198.51.100.${n}`, tcp: 8080 });

/** Applies a snapshot's events the way the daemon does. */
function take(store: ConfigStore, config: Record<string, unknown>, part?: SnapshotPart): void {
  for (const e of store.snapshotEvents("etcd", entries(config), part)) if (e) store.apply("etcd", e);
}

const backendsOf = (store: ConfigStore, service: string) => [...(store.services.get(service)?.backends.keys() ?? [])].sort();

describe("the store, a snapshot in parts", () => {
  test("a first read in parts: each part's keys are in as it comes, nothing is deleted", () => {
    const store = new ConfigStore();
    take(store, { "services/a/frontend": frontend(1), "services/a/backends/x": backend(1) }, "more");
    expect(backendsOf(store, "a")).toEqual(["x"]);
    take(store, { "services/a/backends/y": backend(2) }, "more");
    take(store, { "services/b/frontend": frontend(2) }, "last");
    expect(backendsOf(store, "a")).toEqual(["x", "y"]);
    expect(store.services.get("b")?.frontend).toEqual({ ...frontend(2), persistent: 0 });
  });

  test("a later snapshot in parts deletes, at its last part, the keys no part gave again", () => {
    const store = new ConfigStore();
    take(store, { "services/a/frontend": frontend(1), "services/a/backends/x": backend(1), "services/a/backends/y": backend(2), "routes/r": { Prefix4: "203.0.113.0/24" } });
    take(store, { "services/a/backends/y": backend(3), "services/a/backends/z": backend(4) }, "more");
    // Not before the last part: x may still come.
    expect(backendsOf(store, "a")).toEqual(["x", "y", "z"]);
    take(store, { "services/a/frontend": frontend(1) }, "last");
    expect(backendsOf(store, "a")).toEqual(["y", "z"]);
    expect(store.services.get("a")?.backends.get("y")?.ipv4).toBe("198.51.100.3");
    expect(store.routes.size).toBe(0);
    // A snapshot left unfinished, then a whole one: the whole one replaces everything, the
    // unfinished one's keys included.
    take(store, { "services/a/backends/w": backend(5) }, "more");
    take(store, { "services/a/frontend": frontend(1), "services/a/backends/z": backend(4) });
    expect(backendsOf(store, "a")).toEqual(["z"]);
    // And the next snapshot in parts starts from what the source has then (v came by an update).
    store.apply("etcd", { key: "services/a/backends/v", value: { text: JSON.stringify(backend(6)), format: "json", origin: "test" } });
    take(store, { "services/a/frontend": frontend(1) }, "more");
    take(store, {}, "last");
    expect(backendsOf(store, "a")).toEqual([]);
  });
});

let daemon: IpvsDaemon | undefined;
afterEach(async () => {
  await daemon?.stop();
  daemon = undefined;
});

/** A source the test speaks for (its calls are made by the test): the daemon waits for its first snapshot. */
const quietSource: ConfigSource = { name: "etcd", start: async () => {}, resync: async () => {}, stop: async () => {} };

function newDaemon() {
  const table = new MemoryIpvsTable();
  const d = (daemon = new IpvsDaemon(table, [quietSource], { desired: DEFAULT_DESIRED_OPTIONS, filterEtcdRoutes: false, flush: false, noop: false, resyncMs: 0 }));
  return { d, table };
}

describe("the daemon, a snapshot in parts", () => {
  test("before the first apply: parts are taken in as they come, nothing is programmed before the last part", async () => {
    const { d, table } = newDaemon();
    const part = entries({ "services/a/frontend": frontend(1), "services/a/backends/x": backend(1) });
    d.snapshot("etcd", part, "more");
    await d.start();
    // Taken in (parsed; the part's map emptied) while the source is still reading.
    await until(() => d.store.services.has("a"), 5000);
    expect(part.size).toBe(0);
    await Bun.sleep(50);
    expect(table.list()).toEqual([]);
    expect(d.ready).toBe(false);
    d.snapshot("etcd", entries({ "services/a/backends/y": backend(2) }), "last");
    await until(() => table.list().length === 1, 5000);
    expect(table.list()[0]!.dests.map((x) => x.address).sort()).toEqual(["198.51.100.1", "198.51.100.2"]);
  });

  test("after the first apply: parts wait for the last one, and an apply in between programs none of them", async () => {
    const { d, table } = newDaemon();
    const applies: number[] = [];
    d.onSync((kind, _ms, r) => kind !== "resync" && applies.push(r.ops));
    await d.start();
    d.snapshot("etcd", entries({ "services/a/frontend": frontend(1), "services/a/backends/x": backend(1), "services/b/frontend": frontend(2), "services/b/backends/x": backend(3) }));
    await until(() => applies.length === 1, 5000);
    const dests = (vip: string) => table.list().find((s) => s.address === vip)?.dests.map((x) => x.address).sort();
    d.snapshot("etcd", entries({ "services/a/frontend": frontend(1), "services/a/backends/x": backend(1), "services/a/backends/y": backend(2) }), "more");
    // Another source's change makes an apply: the held part is not in it.
    d.update("local", [{ key: "services/c/frontend", value: { text: JSON.stringify(frontend(3)), format: "json", origin: "test" } }]);
    await until(() => applies.length === 2, 5000);
    expect(dests("192.0.2.1")).toEqual(["198.51.100.1"]);
    expect(dests("192.0.2.2")).toEqual(["198.51.100.3"]);
    // The last part: y comes in, and b, which no part gave, goes.
    d.snapshot("etcd", entries({}), "last");
    await until(() => applies.length === 3, 5000);
    expect(dests("192.0.2.1")).toEqual(["198.51.100.1", "198.51.100.2"]);
    expect(dests("192.0.2.2")).toBeUndefined();
    // A part, then a whole snapshot instead of the rest (a read that failed and started over):
    // the part is dropped, never applied.
    d.snapshot("etcd", entries({ "services/d/frontend": frontend(4) }), "more");
    d.snapshot("etcd", entries({ "services/a/frontend": frontend(1), "services/a/backends/x": backend(1) }));
    await until(() => applies.length === 4, 5000);
    expect(table.list().map((s) => s.address)).toEqual(["192.0.2.1", "192.0.2.3"]);
    expect(dests("192.0.2.1")).toEqual(["198.51.100.1"]);
  });
});

describe("the directory source, a large first read", () => {
  const roots: string[] = [];
  afterEach(() => {
    for (const r of roots.splice(0)) fs.rmSync(r, { recursive: true, force: true });
  });

  test("goes to the sink in parts of 4096 keys, the last one marked so; their union is the tree", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "clusterf-parts-"));
    roots.push(root);
    const services = 1000;
    for (let s = 0; s < services; s++) {
      fs.mkdirSync(path.join(root, `services/s${s}/backends`), { recursive: true });
      fs.writeFileSync(path.join(root, `services/s${s}/frontend.json`), JSON.stringify(frontend(1 + (s % 250))));
      for (let b = 0; b < 9; b++) fs.writeFileSync(path.join(root, `services/s${s}/backends/b${b}.json`), JSON.stringify(backend(1 + b)));
    }
    const src = new DirSource({ root, watch: false });
    const rec = new RecordingSink("local");
    try {
      await src.start(rec);
    } finally {
      await src.stop();
    }
    expect(rec.violations).toEqual([]);
    expect(rec.partSizes).toEqual([[4096, 4096, 1808]]);
    expect(plain(rec.map)).toEqual(plain(await readConfigDir(root)));
    expect(rec.map.size).toBe(10_000);
  });
});
