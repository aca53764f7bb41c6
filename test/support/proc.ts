// Runs the clusterf binaries from the source tree, and follows their printed tables.
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { join } from "node:path";

export const ROOT = join(import.meta.dir, "..", "..");
export const BUN = process.execPath;

export function runCli(program: "clusterf-ipvs" | "clusterf-docker", args: string[], env: Record<string, string> = {}) {
  const p = Bun.spawnSync([BUN, join(ROOT, "src/cli", `${program}.ts`), ...args], {
    env: { ...process.env, ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

/** The service and destination lines of an ipvsadm -Ln style table, spaces folded. */
export function tableLines(text: string): string[] {
  return text
    .split("\n")
    .filter((l) => /^(TCP|UDP|SCTP)\s|^\s+->\s+[\d[]/.test(l))
    .map((l) => l.replace(/\s+/g, " ").trim());
}

/**
 * A long-running clusterf-ipvs with -print: each printed table is collected, and waitFor()
 * resolves once a table satisfies a predicate.
 */
export class Daemon {
  readonly proc: ReturnType<typeof Bun.spawn>;
  readonly tables: string[][] = [];
  stderr = "";
  private waiters: { pred: (t: string[]) => boolean; resolve: (t: string[]) => void }[] = [];

  /** `prefix` runs the daemon through another command, e.g. ["ip", "netns", "exec", "lb"]. */
  constructor(args: string[], env: Record<string, string> = {}, prefix: string[] = []) {
    this.proc = Bun.spawn([...prefix, BUN, join(ROOT, "src/cli/clusterf-ipvs.ts"), "-print", ...args], {
      env: { ...process.env, ...env },
      stdout: "pipe",
      stderr: "pipe",
    });
    this.read(this.proc.stdout as ReadableStream<Uint8Array>, (chunk) => this.onStdout(chunk));
    this.read(this.proc.stderr as ReadableStream<Uint8Array>, (chunk) => (this.stderr += chunk));
  }

  private buf = "";
  private onStdout(chunk: string) {
    this.buf += chunk;
    // A table starts with the version header; a complete one is followed by the next header or a pause.
    const parts = this.buf.split(/(?=^IP Virtual Server version)/m);
    this.buf = parts.pop()!;
    for (const p of parts) this.push(p);
    clearTimeout(this.flushTimer);
    this.flushTimer = setTimeout(() => {
      if (this.buf) this.push(this.buf);
      this.buf = "";
    }, 50);
  }
  private flushTimer?: ReturnType<typeof setTimeout>;

  private push(text: string) {
    if (!text.startsWith("IP Virtual Server")) return;
    const t = tableLines(text);
    this.tables.push(t);
    this.waiters = this.waiters.filter((w) => (w.pred(t) ? (w.resolve(t), false) : true));
  }

  private async read(stream: ReadableStream<Uint8Array>, on: (s: string) => void) {
    const dec = new TextDecoder();
    for await (const chunk of stream) on(dec.decode(chunk));
  }

  get last(): string[] | undefined {
    return this.tables.at(-1);
  }

  waitFor(pred: (t: string[]) => boolean, timeoutMs = 10_000, what = "table"): Promise<string[]> {
    const last = this.last;
    if (last && pred(last)) return Promise.resolve(last);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`timed out waiting for ${what}; last table:\n${(this.last ?? []).join("\n")}\nstderr:\n${this.stderr.slice(-3000)}`));
      }, timeoutMs);
      this.waiters.push({ pred, resolve: (t) => (clearTimeout(timer), resolve(t)) });
    });
  }

  async stop(signal: "SIGTERM" | "SIGINT" | "SIGKILL" = "SIGTERM"): Promise<number> {
    this.proc.kill(signal);
    return await this.proc.exited;
  }
}

/** The inotify watches a process holds: the `inotify wd:` lines in the fdinfo of its inotify fds. */
export function inotifyWatches(pid: number | "self" = "self"): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`) !== "anon_inode:inotify") continue;
      n += readFileSync(`/proc/${pid}/fdinfo/${fd}`, "utf8").split("\n").filter((l) => l.startsWith("inotify wd:")).length;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}
