// Config churn against the real kernel (run inside the user-mode kernel by scripts/test.sh): a
// running clusterf-ipvs follows bursts of random edits of its directory tree (services, backends,
// weights, schedulers, routes and methods, both families); at checkpoints the kernel's table must
// equal what a fresh `-once -ipvs-mock -print` computes from the same tree, and a restart on the
// final tree must make zero writes.
import { beforeAll, describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { BUN, Daemon, ROOT, tableLines } from "../support/proc.ts";
import { blocks, kernelScratch, kernelTable, must, writeTree } from "../support/kernel.ts";

const CLI = join(ROOT, "src/cli/clusterf-ipvs.ts");
const { tmp, children, netns } = kernelScratch("churn");

beforeAll(() => {
  must("modprobe ip_vs");
});

type Edit =
  | { kind: "frontend"; s: number; udp: boolean; v6: boolean; scheduler: string; persistent: number }
  | { kind: "backend"; s: number; b: number; host: number; weight: number; v6: boolean }
  | { kind: "route"; r: number; method: string }
  | { kind: "rm-backend"; s: number; b: number }
  | { kind: "rm-service"; s: number }
  | { kind: "rm-route"; r: number };

const S = 8; // services
const B = 6; // backends per service
const ROUTES = ["198.51.100.0/26", "198.51.100.64/26", "198.51.100.128/25"];

const arbEdit: fc.Arbitrary<Edit> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("frontend" as const), s: fc.nat(S - 1), udp: fc.boolean(), v6: fc.boolean(), scheduler: fc.constantFrom("wlc", "rr", "wrr", "sh"), persistent: fc.constantFrom(0, 0, 60) }) },
  { weight: 10, arbitrary: fc.record({ kind: fc.constant("backend" as const), s: fc.nat(S - 1), b: fc.nat(B - 1), host: fc.integer({ min: 1, max: 200 }), weight: fc.integer({ min: 0, max: 20 }), v6: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("route" as const), r: fc.nat(ROUTES.length - 1), method: fc.constantFrom("masq", "droute", "tunnel", "filter") }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("rm-backend" as const), s: fc.nat(S - 1), b: fc.nat(B - 1) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("rm-service" as const), s: fc.nat(S - 1) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("rm-route" as const), r: fc.nat(ROUTES.length - 1) }) },
);

function apply(dir: string, e: Edit): void {
  switch (e.kind) {
    case "frontend":
      writeTree(dir, {
        [`services/s${e.s}/frontend`]: {
          ipv4: `192.0.2.${10 + e.s}`,
          ...(e.v6 ? { ipv6: `2001:db8::${10 + e.s}` } : {}),
          ...(e.udp ? { udp: 53 } : { tcp: 80 }),
          scheduler: e.scheduler,
          persistent: e.persistent,
        },
      });
      return;
    case "backend":
      writeTree(dir, {
        [`services/s${e.s}/backends/b${e.b}`]: {
          ipv4: `198.51.100.${e.host}`,
          ...(e.v6 ? { ipv6: `2001:db8:100::${e.host.toString(16)}` } : {}),
          tcp: 8080,
          udp: 5353,
          weight: e.weight,
        },
      });
      return;
    case "route":
      writeTree(dir, { [`routes/r${e.r}`]: { Prefix4: ROUTES[e.r], IpvsMethod: e.method } });
      return;
    case "rm-backend":
      rmSync(join(dir, `services/s${e.s}/backends/b${e.b}`), { force: true });
      return;
    case "rm-service":
      rmSync(join(dir, `services/s${e.s}`), { recursive: true, force: true });
      return;
    case "rm-route":
      rmSync(join(dir, `routes/r${e.r}`), { force: true });
      return;
  }
}

/** What the pure computation makes of the tree: a fresh -once run on the in-memory table. */
function expected(dir: string): string[] {
  const p = Bun.spawnSync([BUN, CLI, "-etcd-machines=", `-config-path=${dir}`, "-ipvs-mock", "-print", "-once"], { stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`-once failed: ${p.stderr}`);
  return blocks(tableLines(p.stdout.toString()));
}

/** Resolves once the daemon has printed no new table for `quietMs`. */
async function settled(d: Daemon, quietMs = 600): Promise<void> {
  let n = d.tables.length;
  let since = Date.now();
  while (Date.now() - since < quietMs) {
    await Bun.sleep(100);
    if (d.tables.length !== n) {
      n = d.tables.length;
      since = Date.now();
    }
  }
}

describe("config churn in the kernel", () => {
  test("60 bursts of random edits: the kernel follows the tree exactly; a restart on it writes nothing", async () => {
    const ns = netns("cf-churn");
    const dir = join(tmp, "tree");
    const state = join(tmp, "state");
    writeTree(dir, { "routes/default": { IpvsMethod: "masq" } });
    const d = new Daemon([`-config-path=${dir}`, "-etcd-machines=", `-state-dir=${state}`, "-ipvs-resync=0"], {}, ["ip", "netns", "exec", ns]);
    children.push(d.proc);
    await d.waitFor(() => true, 20_000, "first table");

    const bursts = fc.sample(fc.array(arbEdit, { minLength: 1, maxLength: 8 }), { seed: 7, numRuns: 60 });
    let checkpoints = 0;
    for (let i = 0; i < bursts.length; i++) {
      for (const e of bursts[i]!) apply(dir, e);
      if (i % 12 === 11 || i === bursts.length - 1) {
        await settled(d);
        const want = expected(dir);
        expect(kernelTable(ns)).toEqual(want);
        expect(want.length).toBeGreaterThan(0);
        const dests = want.join("\n").split("\n").filter((l) => l.startsWith("->")).length;
        console.log(`checkpoint ${++checkpoints}: ${want.length} services, ${dests} destinations, ${d.tables.length} applies so far`);
      } else {
        await Bun.sleep(30 + (i % 5) * 40); // some bursts land while the last one is being applied
      }
    }
    expect(checkpoints).toBe(5);
    expect(d.stderr).not.toMatch(/^ERROR/m);
    expect(await d.stop("SIGTERM")).toBe(0);

    const again = Bun.spawnSync(["ip", "netns", "exec", ns, BUN, CLI, "-etcd-machines=", `-config-path=${dir}`, `-state-dir=${state}`, "-once"], { stdout: "pipe", stderr: "pipe" });
    expect(again.exitCode).toBe(0);
    expect(again.stderr.toString()).toMatch(/IPVS: applied kind=full writes=0 errors=0/);
  }, 240_000);
});
