// Config churn against the real kernel (run inside the user-mode kernel by test/kernel/run.sh): a
// running clusterf-ipvs follows bursts of random edits of its directory tree (services, backends,
// weights, schedulers, routes with gateways, filter and methods, both families, two services on
// one VIP); at checkpoints the kernel's table must equal what an independent model
// (test/model/ipvs-model.ts) makes of the tree, and a restart on the final tree must make zero
// writes. Runs on a fixed seed and on one that varies per run (named in the test's title).
import { beforeAll, describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { BUN, Daemon, ROOT } from "../support/proc.ts";
import { blocks, kernelScratch, kernelTable, must, writeTree } from "../support/kernel.ts";
import { seeds } from "../support/seed.ts";
import { ipvsadmLines, modelTable, type ModelConfig, type ModelOptions, type ModelRoute } from "../model/ipvs-model.ts";

const CLI = join(ROOT, "src/cli/clusterf-ipvs.ts");
const { tmp, children, netns } = kernelScratch("churn");

beforeAll(() => {
  must("modprobe ip_vs");
});

type Method = "masq" | "droute" | "tunnel" | "filter";
type Edit =
  | { kind: "frontend"; s: number; udp: boolean; v6: boolean; sharedVip: boolean; scheduler?: string; persistent: number }
  | { kind: "backend"; s: number; b: number; host: number; weight?: number; v6: boolean }
  | { kind: "route"; r: number; method?: Method; gateway: boolean; v6: boolean }
  | { kind: "default-route"; method?: Method }
  | { kind: "rm-backend"; s: number; b: number }
  | { kind: "rm-service"; s: number }
  | { kind: "rm-route"; r: number }
  | { kind: "rm-default-route" };

const S = 8; // services
const B = 6; // backends per service
// Overlapping prefixes (r3 holds the others; r4 ties with r1, which wins by name); backends are
// 198.51.100.HOST and 2001:db8:100::HOST. Routes of even index share one gateway, odd ones the
// other, so backends of several routes merge on one gateway, with methods that may differ.
const PREFIX4 = ["198.51.100.0/26", "198.51.100.64/26", "198.51.100.128/25", "198.51.100.0/24", "198.51.100.64/26"];
const PREFIX6 = ["2001:db8:100::/122", "2001:db8:100::40/122", "2001:db8:100::80/121", "2001:db8:100::/120", "2001:db8:100::40/122"];
const GATEWAY4 = ["192.0.2.250", "192.0.2.251"];
const GATEWAY6 = ["2001:db8::250", "2001:db8::251"];
const method = fc.option(fc.constantFrom<Method>("masq", "droute", "tunnel", "filter"), { nil: undefined, freq: 4 });
// The daemon's defaults differ from the built-in ones, so that a default is seen to be the flag's.
const OPTS: ModelOptions = { defaultMethod: "droute", scheduler: "lc", elide: false };
const FLAGS = [`-ipvs-fwd-method=${OPTS.defaultMethod}`, `-ipvs-sched-name=${OPTS.scheduler}`];

const arbEdit: fc.Arbitrary<Edit> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("frontend" as const), s: fc.nat(S - 1), udp: fc.boolean(), v6: fc.boolean(), sharedVip: fc.constantFrom(false, false, false, true), scheduler: fc.option(fc.constantFrom("wlc", "rr", "wrr", "sh"), { nil: undefined }), persistent: fc.constantFrom(0, 0, 60) }) },
  { weight: 10, arbitrary: fc.record({ kind: fc.constant("backend" as const), s: fc.nat(S - 1), b: fc.nat(B - 1), host: fc.integer({ min: 1, max: 255 }), weight: fc.option(fc.oneof({ weight: 9, arbitrary: fc.integer({ min: 0, max: 20 }) }, { weight: 1, arbitrary: fc.constant(2147483000) }), { nil: undefined, freq: 6 }), v6: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("route" as const), r: fc.nat(PREFIX4.length - 1), method, gateway: fc.boolean(), v6: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("default-route" as const), method }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("rm-backend" as const), s: fc.nat(S - 1), b: fc.nat(B - 1) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("rm-service" as const), s: fc.nat(S - 1) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("rm-route" as const), r: fc.nat(PREFIX4.length - 1) }) },
  { weight: 1, arbitrary: fc.constant({ kind: "rm-default-route" as const }) },
);

/**
 * Writes one edit into the tree, and the same into `cfg` (the model's view of the tree). Files are
 * replaced by a rename, as editors and ConfigMap updates do: a watcher that read a file half
 * written would log a bad value (rightly), and this test allows no error lines.
 */
function apply(dir: string, cfg: ModelConfig, e: Edit): void {
  const put = (path: string, value: unknown) => writeTree(dir, { [path]: value }, true);
  const service = (s: number) => (cfg.services[`s${s}`] ??= { backends: {} });
  switch (e.kind) {
    case "frontend": {
      // A shared VIP puts two config services on one IPVS service: the first by name describes it.
      const n = e.sharedVip ? 10 : 10 + e.s;
      const fe = {
        ipv4: `192.0.2.${n}`,
        ...(e.v6 ? { ipv6: `2001:db8::${n.toString(16)}` } : {}),
        ...(e.udp ? { udp: 53 } : { tcp: 80 }),
        ...(e.scheduler ? { scheduler: e.scheduler } : {}),
        persistent: e.persistent,
      };
      put(`services/s${e.s}/frontend`, fe);
      service(e.s).frontend = fe;
      return;
    }
    case "backend": {
      const b = {
        ipv4: `198.51.100.${e.host}`,
        ...(e.v6 ? { ipv6: `2001:db8:100::${e.host.toString(16)}` } : {}),
        tcp: 8080,
        udp: 5353,
        ...(e.weight !== undefined ? { weight: e.weight } : {}),
      };
      put(`services/s${e.s}/backends/b${e.b}`, b);
      service(e.s).backends[`b${e.b}`] = b;
      return;
    }
    case "route": {
      const model: ModelRoute = { prefix4: PREFIX4[e.r] };
      const text: Record<string, string> = { Prefix4: PREFIX4[e.r]! };
      if (e.v6) text.Prefix6 = model.prefix6 = PREFIX6[e.r]!;
      if (e.gateway) text.Gateway4 = model.gateway4 = GATEWAY4[e.r % 2]!;
      if (e.gateway && e.v6) text.Gateway6 = model.gateway6 = GATEWAY6[e.r % 2]!;
      if (e.method) text.IpvsMethod = model.method = e.method;
      put(`routes/r${e.r}`, text);
      cfg.routes[`r${e.r}`] = model;
      return;
    }
    case "default-route":
      put("routes/default", e.method ? { IpvsMethod: e.method } : {});
      cfg.routes.default = e.method ? { method: e.method } : {};
      return;
    case "rm-backend":
      rmSync(join(dir, `services/s${e.s}/backends/b${e.b}`), { force: true });
      if (cfg.services[`s${e.s}`]) delete cfg.services[`s${e.s}`]!.backends[`b${e.b}`];
      return;
    case "rm-service":
      rmSync(join(dir, `services/s${e.s}`), { recursive: true, force: true });
      delete cfg.services[`s${e.s}`];
      return;
    case "rm-route":
      rmSync(join(dir, `routes/r${e.r}`), { force: true });
      delete cfg.routes[`r${e.r}`];
      return;
    case "rm-default-route":
      rmSync(join(dir, "routes/default"), { force: true });
      delete cfg.routes.default;
      return;
  }
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
  for (const [round, { seed, label }] of seeds(7).entries()) {
    test(`60 bursts of random edits: the kernel follows the tree exactly; a restart on it writes nothing; ${label}`, async () => {
      const ns = netns(`cf-churn${round}`);
      const dir = join(tmp, `tree${round}`);
      const state = join(tmp, `state${round}`);
      const cfg: ModelConfig = { services: {}, routes: {} };
      apply(dir, cfg, { kind: "default-route", method: "masq" });
      const d = new Daemon([`-config-path=${dir}`, "-etcd-machines=", `-state-dir=${state}`, "-ipvs-resync=0", ...FLAGS], {}, ["ip", "netns", "exec", ns]);
      children.push(d.proc);
      await d.waitFor(() => true, 20_000, "first table");

      const bursts = fc.sample(fc.array(arbEdit, { minLength: 1, maxLength: 8 }), { seed, numRuns: 60 });
      let checkpoints = 0;
      let destinations = 0;
      for (let i = 0; i < bursts.length; i++) {
        for (const e of bursts[i]!) apply(dir, cfg, e);
        if (i % 12 === 11 || i === bursts.length - 1) {
          await settled(d);
          const want = blocks(ipvsadmLines(modelTable(cfg, OPTS)));
          const got = kernelTable(ns);
          if (got.join("\n") !== want.join("\n")) {
            // Late, or wrong? Say which before failing.
            await Bun.sleep(3000);
            const late = kernelTable(ns).join("\n") === want.join("\n");
            console.log(`${label}, checkpoint ${checkpoints + 1}: the kernel differs from the model; 3 s later it ${late ? "equals it (late)" : "still differs"}; daemon log:\n${d.stderr.slice(-5000)}`);
          }
          expect(got).toEqual(want);
          const dests = want.join("\n").split("\n").filter((l) => l.startsWith("->")).length;
          destinations += dests;
          console.log(`${label}, checkpoint ${++checkpoints}: ${want.length} services, ${dests} destinations, ${d.tables.length} applies so far`);
        } else {
          await Bun.sleep(30 + (i % 5) * 40); // some bursts land while the last one is being applied
        }
      }
      expect(checkpoints).toBe(5);
      expect(destinations).toBeGreaterThan(0);
      expect(d.stderr).not.toMatch(/^ERROR/m);
      expect(await d.stop("SIGTERM")).toBe(0);

      const again = Bun.spawnSync(["ip", "netns", "exec", ns, BUN, CLI, "-etcd-machines=", `-config-path=${dir}`, `-state-dir=${state}`, "-once", ...FLAGS], { stdout: "pipe", stderr: "pipe" });
      expect(again.exitCode).toBe(0);
      expect(again.stderr.toString()).toMatch(/IPVS: applied kind=full writes=0 errors=0/);
    }, 300_000);
  }
});
