// A file-only start-up loads only what its flags need: no etcd client, no metrics library, no YAML
// parser for a tree without YAML (each is megabytes of a daemon's memory), and -once no watcher
// code. Checked from the process's module cache after a real -once run.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePorts } from "./support/etcd.ts";
import { BUN, ROOT } from "./support/proc.ts";

const dir = mkdtempSync(join(tmpdir(), "clusterf-startup-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs clusterf-ipvs's main in a fresh process; the packages it loaded (of those watched). */
function loaded(args: string[]): string[] {
  const script = `
    const { main } = await import(${JSON.stringify(join(ROOT, "src/cli/clusterf-ipvs.ts"))});
    const code = await main(${JSON.stringify(args)});
    const mods = Object.keys(require.cache);
    const watched = [
      ...["prom-client", "etcd3", "@grpc/grpc-js", "yaml", "ipaddr.js"].filter((p) => mods.some((m) => m.includes("/node_modules/" + p + "/"))),
      ...["src/config/watcher-fs.ts"].filter((f) => mods.some((m) => m.endsWith("/" + f))),
    ];
    process.stdout.write(JSON.stringify({ code, watched }));
    process.exit(0);`;
  const r = Bun.spawnSync([BUN, "-e", script], { stdout: "pipe", stderr: "pipe", env: { ...process.env, CLUSTERF_LOG_LEVEL: "error" } });
  const out = JSON.parse(r.stdout.toString()) as { code: number; watched: string[] };
  expect(out.code).toBe(0);
  return out.watched;
}

describe("start-up loads what the flags need", () => {
  const base = ["-once", "-ipvs-mock", "-etcd-machines="];

  test("an empty tree, file-only: no etcd client, metrics library, YAML parser, address library or watcher code", () => {
    mkdirSync(join(dir, "empty"));
    expect(loaded([...base, `-config-path=${join(dir, "empty")}`])).toEqual([]);
  });

  test("a YAML value loads the YAML parser", () => {
    mkdirSync(join(dir, "yaml/services/web"), { recursive: true });
    writeFileSync(join(dir, "yaml/services/web/frontend.yaml"), "ipv4: 192.0.2.1\ntcp: 80\n");
    expect(loaded([...base, `-config-path=${join(dir, "yaml")}`])).toEqual(["yaml"]);
  });

  test("-metrics-listen loads the metrics library", async () => {
    const [port] = await freePorts(1);
    expect(loaded([...base, `-config-path=${join(dir, "empty")}`, `-metrics-listen=127.0.0.1:${port}`])).toEqual(["prom-client"]);
  });
});
