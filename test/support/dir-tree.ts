// Helpers for the -config-path source tests: sources started on temporary trees, tree edits,
// seeds, convergence.

import { expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import fc from "fast-check";
import { DirSource, readConfigDir, type DirSourceOptions } from "../../src/config/dir-source.ts";
import type { RawValue } from "../../src/config/source.ts";
import { configureLog } from "../../src/util/log.ts";
import { redirectStderr } from "../../src/util/stdio.ts";
import { RecordingSink } from "./recording-sink.ts";
import { until } from "./until.ts";

/** Temporary trees, and the sources started on them (stopped by `cleanup`, meant for afterEach). */
export class Harness {
  readonly base = fs.mkdtempSync(path.join(os.tmpdir(), "clusterf-dir-"));
  private counter = 0;
  private sources: DirSource[] = [];
  private recorders: RecordingSink[] = [];

  newRoot(): string {
    const d = path.join(this.base, `t${++this.counter}`);
    fs.mkdirSync(d, { recursive: true });
    return d;
  }

  /** A fresh path beside the roots (not created). */
  scratch(name: string): string {
    return path.join(this.base, `${name}-${++this.counter}`);
  }

  async start(root: string, opts: Partial<DirSourceOptions> = {}): Promise<{ src: DirSource; rec: RecordingSink }> {
    const src = new DirSource({ root, debounceMs: 20, ...opts });
    this.sources.push(src);
    const rec = new RecordingSink("local");
    this.recorders.push(rec);
    await src.start(rec);
    return { src, rec };
  }

  /** A test whose body ends by asserting that no recorder saw a broken sink rule. */
  test(name: string, fn: () => Promise<void>, timeoutMs?: number): void {
    test(
      name,
      async () => {
        await fn();
        await this.check();
      },
      timeoutMs,
    );
  }

  /** In the test body: no recorder saw a broken sink rule (after letting late batches arrive). */
  async check(): Promise<void> {
    await Promise.all(this.sources.map((s) => s.settle()));
    expect(this.recorders.flatMap((r) => r.violations)).toEqual([]);
  }

  async cleanup(): Promise<void> {
    while (this.sources.length) await this.sources.pop()!.stop();
    this.recorders.length = 0;
  }

  remove(): void {
    fs.rmSync(this.base, { recursive: true, force: true });
  }
}

export function plain(m: Map<string, RawValue>): Array<[string, string, string, string]> {
  return [...m].map(([k, v]) => [k, v.text, v.format, v.origin] as [string, string, string, string]).sort((a, b) => (a[0] < b[0] ? -1 : 1));
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function write(root: string, rel: string, text: string): void {
  const p = path.join(root, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, text);
}

/** The accumulated map equals a fresh read of the tree (waiting up to `timeoutMs` for it). */
export async function converged(root: string, rec: RecordingSink, timeoutMs = 3000): Promise<void> {
  let fresh: Map<string, RawValue> = new Map();
  try {
    await until(async () => {
      fresh = await readConfigDir(root);
      return JSON.stringify(plain(fresh)) === JSON.stringify(plain(rec.map));
    }, timeoutMs);
  } catch {
    expect(plain(rec.map)).toEqual(plain(fresh));
  }
}

/** The log lines written while `fn` runs, at `level` and up. */
export async function captureLogs(fn: () => Promise<void>, level: "info" | "warn" = "warn"): Promise<string[]> {
  const lines: string[] = [];
  const restore = redirectStderr((text) => lines.push(text));
  configureLog({ level });
  try {
    await fn();
  } finally {
    configureLog({ level: "error" });
    restore();
  }
  return lines;
}

/**
 * The seeds a randomized test runs with: the fixed regression seeds, plus one new seed per run
 * (or only `envName`'s seed when set, to replay a failure).
 */
export function seeds(envName: string, fixed: number[]): number[] {
  const forced = process.env[envName];
  if (forced) return [Number(forced)];
  return [...fixed, Math.floor(Math.random() * 2 ** 31)];
}

/** Runs `fn(seed)`; a failure names the seed and how to replay it. */
export async function withSeed(envName: string, seed: number, fn: (seed: number) => Promise<void>): Promise<void> {
  try {
    await fn(seed);
  } catch (e) {
    const msg = `seed ${seed} failed (replay: ${envName}=${seed})`;
    console.error(msg);
    if (e instanceof Error) e.message = `${msg}: ${e.message}`;
    throw e;
  }
}

// --- random edits of a small tree ---

const FILES = [
  "services/a/frontend",
  "services/a/frontend.json",
  "services/a/frontend.yaml",
  "services/a/backends/b1.json",
  "services/a/backends/b2",
  "services/a/backends/b3.yml",
  "services/b/frontend.yml",
  "services/b/backends/b1",
  "services/b/backends/.hidden",
  "services/b/backends/b1~",
  "routes/r1",
  "routes/r2.yaml",
  "services/.hidden/frontend",
];
const DIRS = ["services/a", "services/a/backends", "services/b", "services/b/backends", "routes", "services"];

export type Edit =
  | { op: "write"; f: string; t: string }
  | { op: "atomic"; f: string; t: string }
  | { op: "vim"; f: string; t: string }
  | { op: "rm"; f: string }
  | { op: "mv"; f: string; g: string }
  | { op: "rmdir"; d: string }
  | { op: "recreate"; d: string; f: string; t: string }
  | { op: "mvdir"; d: string; e: string }
  | { op: "swapdir"; d: string; e: string }
  | { op: "link"; f: string; g: string }
  | { op: "sleep"; ms: number };

const fileArb = fc.constantFrom(...FILES);
const textArb = fc.constantFrom("{}", '{"tcp":1}', '{"tcp":2}', "tcp: 3\n", "");
const svcArb = fc.constantFrom("services/a", "services/b", "services/c");

/** The edits of the original property test (same order and values: its seeds replay as before). */
export const editArb: fc.Arbitrary<Edit> = fc.oneof(
  fc.record({ op: fc.constant("write" as const), f: fileArb, t: textArb }),
  fc.record({ op: fc.constant("atomic" as const), f: fileArb, t: textArb }),
  fc.record({ op: fc.constant("rm" as const), f: fileArb }),
  fc.record({ op: fc.constant("mv" as const), f: fileArb, g: fileArb }),
  fc.record({ op: fc.constant("rmdir" as const), d: fc.constantFrom(...DIRS) }),
  fc.record({ op: fc.constant("mvdir" as const), d: fc.constantFrom("services/a", "services/b"), e: svcArb }),
  fc.record({ op: fc.constant("link" as const), f: fileArb, g: fileArb }),
  fc.record({ op: fc.constant("sleep" as const), ms: fc.integer({ min: 1, max: 40 }) }),
);

/** Those, plus the saves and directory replacements that a watcher can miss. */
export const burstEditArb: fc.Arbitrary<Edit> = fc.oneof(
  editArb,
  fc.record({ op: fc.constant("vim" as const), f: fileArb, t: textArb }),
  fc.record({ op: fc.constant("recreate" as const), d: fc.constantFrom(...DIRS), f: fileArb, t: textArb }),
  fc.record({ op: fc.constant("swapdir" as const), d: svcArb, e: svcArb }),
);

/** Applies one edit; an edit that makes no sense on the current tree (a path under a file) is skipped. */
export async function applyEdit(root: string, o: Edit): Promise<void> {
  const p = (r: string) => path.join(root, r);
  try {
    switch (o.op) {
      case "write":
        write(root, o.f, o.t);
        break;
      case "atomic":
        write(root, o.f + ".tmp", o.t);
        fs.renameSync(p(o.f + ".tmp"), p(o.f));
        break;
      case "vim":
        // vim's default: the original moved aside as a backup, the file written anew, the backup deleted
        if (fs.existsSync(p(o.f))) fs.renameSync(p(o.f), p(o.f + "~"));
        write(root, o.f, o.t);
        fs.rmSync(p(o.f + "~"), { force: true });
        break;
      case "rm":
        fs.rmSync(p(o.f), { force: true });
        break;
      case "mv":
        if (fs.existsSync(p(o.f))) {
          fs.mkdirSync(path.dirname(p(o.g)), { recursive: true });
          fs.renameSync(p(o.f), p(o.g));
        }
        break;
      case "rmdir":
        fs.rmSync(p(o.d), { recursive: true, force: true });
        break;
      case "recreate":
        // rm -r d; mkdir d; then a file written into the new d
        fs.rmSync(p(o.d), { recursive: true, force: true });
        fs.mkdirSync(p(o.d), { recursive: true });
        if (o.f.startsWith(o.d + "/")) write(root, o.f, o.t);
        break;
      case "mvdir":
        if (o.d !== o.e && fs.existsSync(p(o.d))) {
          fs.rmSync(p(o.e), { recursive: true, force: true });
          fs.renameSync(p(o.d), p(o.e));
        }
        break;
      case "swapdir": {
        // a new version of d (a copy of e) staged under a hidden name, d moved aside, the new one
        // moved in, the old one removed
        const dir = path.dirname(p(o.d));
        const staged = path.join(dir, ".staged");
        const old = path.join(dir, ".old");
        if (!fs.existsSync(p(o.e)) || o.d === o.e) break;
        fs.rmSync(staged, { recursive: true, force: true });
        fs.rmSync(old, { recursive: true, force: true });
        fs.cpSync(p(o.e), staged, { recursive: true, verbatimSymlinks: true });
        if (fs.existsSync(p(o.d))) fs.renameSync(p(o.d), old);
        fs.renameSync(staged, p(o.d));
        fs.rmSync(old, { recursive: true, force: true });
        break;
      }
      case "link":
        // ln -sf (relative, resolved from the link's directory)
        fs.mkdirSync(path.dirname(p(o.g)), { recursive: true });
        fs.rmSync(p(o.g), { force: true });
        fs.symlinkSync(path.relative(path.dirname(p(o.g)), p(o.f)), p(o.g));
        break;
      case "sleep":
        await sleep(o.ms);
        break;
    }
  } catch {
    // a path that is (or sits under) a file of another edit: not a valid edit, skip it
  }
}
