// The periodic resync and config changes: a change that comes while the resync reads the kernel
// is applied first (the resync is abandoned before it changed anything, and runs again after the
// change), at most RESYNC_GIVE_WAYS (3) times in a row, so that a steady stream of changes does
// not keep drift from being corrected. In-memory table whose reads take 1 ms per service.

import { afterEach, describe, expect, test } from "bun:test";
import { IpvsDaemon } from "../src/daemon/ipvs-daemon.ts";
import { MemoryIpvsTable } from "../src/ipvs/memory-table.ts";
import type { ObservedDest, ServiceKey } from "../src/ipvs/types.ts";
import { DEFAULT_DESIRED_OPTIONS } from "../src/model/desired.ts";
import { configureLog } from "../src/util/log.ts";
import { entries, put } from "./support/config.ts";
import { until } from "./support/until.ts";

configureLog({ level: "off" });

const SERVICES = 300;

/** Reading one service's destinations takes 1 ms: a resync's read of the table takes about 300 ms. */
class SlowReadTable extends MemoryIpvsTable {
  reads = 0;
  override listDests(service: ServiceKey): ObservedDest[] {
    this.reads++;
    for (const end = Bun.nanoseconds() + 1e6; Bun.nanoseconds() < end; );
    return super.listDests(service);
  }
}

const backend = (s: number, weight: number) => ({ ipv4: `198.51.100.${1 + (s % 250)}`, tcp: 1000 + s, weight });

let daemon: IpvsDaemon | undefined;
afterEach(async () => {
  await daemon?.stop();
  daemon = undefined;
});

/** A started daemon with the config applied; its syncs are recorded with the table's read count at their end. */
async function started(resyncMs = 400) {
  const table = new SlowReadTable();
  const d = (daemon = new IpvsDaemon(table, [], { desired: DEFAULT_DESIRED_OPTIONS, filterEtcdRoutes: false, flush: false, noop: false, resyncMs }));
  const config: Record<string, unknown> = {};
  for (let s = 0; s < SERVICES; s++) {
    config[`services/s${s}/frontend`] = { ipv4: `192.0.2.${1 + (s % 250)}`, tcp: 1 + s };
    config[`services/s${s}/backends/b`] = backend(s, 10);
  }
  d.snapshot("etcd", entries(config));
  const syncs: { kind: string; writes: number; reads: number; at: number }[] = [];
  d.onSync((kind, _ms, r) => syncs.push({ kind, writes: r.ops, reads: table.reads, at: performance.now() }));
  await d.start();
  await until(() => syncs.some((x) => x.kind === "full"), 10_000);
  return { d, table, syncs };
}

describe("periodic resync and config changes", () => {
  test("a change during the resync's read is applied before the read ends; the resync then runs through after it", async () => {
    // Resyncs 1.5 s apart: the one after the change is the abandoned one run again, not the next period's.
    const { d, table, syncs } = await started(1500);
    // Into the second resync's read (the first shows how many reads a whole one takes).
    await until(() => syncs.some((x) => x.kind === "resync"), 10_000);
    const readsBefore = table.reads;
    await until(() => table.reads >= readsBefore + 20, 10_000);
    const seen = syncs.length;
    const atChange = table.reads;
    d.update("etcd", [put("services/s7/backends/b", backend(7, 11))]);
    await until(() => syncs.slice(seen).some((x) => x.kind === "resync"), 10_000);
    const after = syncs.slice(seen);
    expect(after[0]).toMatchObject({ kind: "incremental", writes: 1 });
    // Not after the whole read (SERVICES reads): the resync gave way within a few services.
    expect(after[0]!.reads - atChange).toBeLessThan(20);
    // The resync that follows reads the whole table again.
    const resync = after.find((x) => x.kind === "resync")!;
    expect(resync.reads - after[0]!.reads).toBeGreaterThanOrEqual(SERVICES);
    // Right after the change (a whole read takes about 0.3 s), not at the next period (1.5 s).
    expect(resync.at - after[0]!.at).toBeLessThan(900);
  });

  test("changes that keep coming: the resync gives way 3 times in a row at most, then runs through", async () => {
    const { d, table, syncs } = await started();
    await until(() => syncs.some((x) => x.kind === "resync"), 10_000);
    const seen = syncs.length;
    const readsBefore = table.reads;
    // A change every 10 ms, far more often than a whole read takes (about 300 ms).
    let weight = 11;
    const changer = setInterval(() => d.update("etcd", [put("services/s7/backends/b", backend(7, weight++))]), 10);
    let changesApplied = 0;
    try {
      // Each start gives way within a few reads; without a bound it would never finish.
      await until(() => syncs.slice(seen).some((x) => x.kind === "resync"), 5_000);
      changesApplied = syncs.slice(seen).filter((x) => x.kind === "incremental").length;
    } finally {
      clearInterval(changer);
    }
    const resync = syncs.slice(seen).find((x) => x.kind === "resync")!;
    expect(resync.reads - readsBefore).toBeGreaterThanOrEqual(SERVICES); // a whole read
    expect(changesApplied).toBeGreaterThanOrEqual(3); // the changes went on meanwhile
  });
});
