// The Docker side of clusterf-docker: the containers of this Docker host, kept current from the
// event stream. On every (re)connect: subscribe to events first, then list and inspect every
// container (a full state), so nothing that happens in between is missed. Events mark
// containers dirty; a burst of events is coalesced (debounce, with a maximum delay), then each
// dirty container is inspected once and the whole state reported (the publisher turns it into
// one diff against etcd, and coalesces again while a write is in flight).
//
// Lost connection (Docker daemon restart, broken stream, failed ping): reconnect with backoff
// and report a new full state; meanwhile the last state stands (a Docker daemon that is down
// does not mean its containers are gone: with live-restore they keep running).

import { readFileSync } from "node:fs";
import { join } from "node:path";
// @ts-ignore: dockerode ships no type declarations; DockerApi below types the calls used.
import Docker from "dockerode";
import type { ContainerInspect } from "./labels.ts";
import { Backoff, Sleeper } from "../util/backoff.ts";
import { Debounce } from "../util/debounce.ts";
import { describeError as describe } from "../util/errors.ts";
import * as log from "../util/log.ts";

export interface WatcherOptions {
  /** -docker-endpoint: unix:///path, /path, tcp://host:port, http(s)://host:port. */
  endpoint: string;
  /** Quiet time that ends a burst of events, ms (default 50). */
  debounceMs?: number;
  /** Longest delay of a report during an endless burst, ms (default 500). */
  maxDelayMs?: number;
  /** How often the connection is checked with a ping, ms (default 5000). */
  pingMs?: number;
  /** Deadline of one API request, ms (default 10000). */
  requestTimeoutMs?: number;
  /** Every change of the container state: the whole state, and whether it was a full re-read. */
  onState: (state: DockerState, full: boolean) => void;
}

export interface DockerState {
  containers: ReadonlyMap<string, ContainerInspect>;
  /** Containers for which a stopping kill was seen (kill → weight 0 before die). */
  draining: ReadonlySet<string>;
}

const INSPECT_CONCURRENCY = 16;

/** A Docker request that got no answer in time (Docker may be busy, not gone). */
class DockerTimeout extends Error {}

/** Kill signals that stop a container (others, such as HUP or USR1, only ask it to reload). */
const STOP_SIGNALS = new Set(["2", "3", "9", "15", "SIGINT", "SIGQUIT", "SIGKILL", "SIGTERM", "INT", "QUIT", "KILL", "TERM"]);

/** Container actions that change nothing this daemon publishes. */
function ignoredAction(action: string): boolean {
  return /^(exec_|attach|detach|top|resize|commit|copy|export|archive-path|extract-to-dir)/.test(action);
}

/** Docker's event stream is one JSON object a line, split across chunks anyhow. */
export function onEventLines(stream: NodeJS.ReadableStream, onEvent: (ev: DockerEvent) => void): void {
  let buf = "";
  stream.on("data", (chunk: Buffer) => {
    buf += chunk.toString("utf8");
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line) continue;
      let ev: DockerEvent;
      try {
        ev = JSON.parse(line) as DockerEvent;
      } catch {
        log.warn("docker: unreadable event skipped", { line: line.slice(0, 200) });
        continue;
      }
      onEvent(ev);
    }
  });
}

/** dockerode/docker-modem options for an endpoint string. */
export interface DockerOptions {
  socketPath?: string;
  host?: string;
  port?: number;
  protocol?: "http" | "https";
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/** The dockerode calls used here (the package ships no types). */
interface DockerApi {
  getEvents(opts: object): Promise<NodeJS.ReadableStream>;
  listContainers(opts: object): Promise<{ Id: string }[]>;
  getContainer(id: string): { inspect(): Promise<unknown> };
  ping(): Promise<unknown>;
}

export function dockerOptions(endpoint: string, env: Record<string, string | undefined> = process.env): DockerOptions {
  const e = endpoint.trim();
  if (e.startsWith("unix://")) return { socketPath: e.slice("unix://".length) || "/var/run/docker.sock" };
  if (e.startsWith("/")) return { socketPath: e };
  const m = /^(tcp|http|https):\/\/([^/:]+|\[[^\]]+\]):(\d+)\/?$/.exec(e);
  if (!m) throw new Error(`unsupported Docker endpoint ${JSON.stringify(endpoint)}: expected unix:///path or tcp://host:port`);
  const tls = m[1] === "https" || (m[1] === "tcp" && (env.DOCKER_TLS_VERIFY === "1" || m[3] === "2376"));
  const o: DockerOptions = { host: m[2]!.replace(/^\[|\]$/g, ""), port: Number(m[3]), protocol: tls ? "https" : "http" };
  if (tls && env.DOCKER_CERT_PATH) {
    o.ca = readFileSync(join(env.DOCKER_CERT_PATH, "ca.pem"));
    o.cert = readFileSync(join(env.DOCKER_CERT_PATH, "cert.pem"));
    o.key = readFileSync(join(env.DOCKER_CERT_PATH, "key.pem"));
  }
  return o;
}

export interface DockerEvent {
  Type?: string;
  Action?: string;
  Actor?: { ID?: string; Attributes?: Record<string, string> };
  /** Older engines' container id field. */
  id?: string;
  timeNano?: number;
}

function statusCode(e: unknown): number | undefined {
  return (e as { statusCode?: number }).statusCode;
}

export class DockerWatcher {
  readonly docker: DockerApi;
  private containers = new Map<string, ContainerInspect>();
  private draining = new Set<string>();
  private dirty = new Set<string>();
  private stopped = false;
  private loop: Promise<void> | undefined;
  private stream: NodeJS.ReadableStream | undefined;
  private breakConnection: ((why: string) => void) | undefined;
  /** A burst of events ends after a quiet time (or the maximum delay): then the dirty containers are inspected. */
  private readonly flush: Debounce;
  /** The reconnect backoff's sleep (stop() cuts it short). */
  private readonly retrySleep = new Sleeper();
  /** Debounced ids waiting for an inspect slot, and those being inspected. */
  private queued = new Set<string>();
  private inflight = new Set<string>();
  private reportTimer: ReturnType<typeof setTimeout> | undefined;
  private connected = false;
  /** True while the Docker engine answers and its state has been read. */
  get isConnected(): boolean {
    return this.connected;
  }
  /** Bumped at every full read, so that an inspect round of an older connection is dropped. */
  private generation = 0;
  /** Full re-reads done (the first one included). */
  resyncs = 0;
  /** A full re-read asked for on the live connection (resync()), and who waits for it. */
  private resyncWanted = false;
  private resyncWake: (() => void) | undefined;
  private resyncWaiters: ((read: boolean) => void)[] = [];

  constructor(private readonly opts: WatcherOptions) {
    this.docker = new Docker(dockerOptions(opts.endpoint)) as DockerApi;
    this.flush = new Debounce(() => this.inspectDirty(), opts.debounceMs ?? 50, opts.maxDelayMs ?? 500);
  }

  get state(): DockerState {
    return { containers: this.containers, draining: this.draining };
  }

  start(): void {
    this.loop ??= this.run();
  }

  /**
   * A full re-read of every container on the live connection, reported like the one after a
   * reconnect (onState with full = true). Resolves true once reported; false when Docker is not
   * connected now (its reconnect re-reads everything anyway) or the connection breaks meanwhile.
   */
  resync(): Promise<boolean> {
    if (!this.connected || this.stopped) return Promise.resolve(false);
    return new Promise((resolve) => {
      this.resyncWaiters.push(resolve);
      this.resyncWanted = true;
      this.resyncWake?.();
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.flush.cancel();
    clearTimeout(this.reportTimer);
    this.breakConnection?.("stopping");
    this.retrySleep.wake();
    // Not waiting out a reconnect backoff: nothing is reported once stopped.
    await Promise.race([this.loop?.catch(() => {}), Bun.sleep(500)]);
  }

  private timeout<T>(p: Promise<T>, what: string, ms = this.opts.requestTimeoutMs ?? 10_000): Promise<T> {
    let t: ReturnType<typeof setTimeout>;
    return Promise.race([
      p,
      new Promise<T>((_, reject) => {
        t = setTimeout(() => reject(new DockerTimeout(`${what}: no answer from Docker within ${ms} ms`)), ms);
      }),
    ]).finally(() => clearTimeout(t));
  }

  private async run(): Promise<void> {
    const backoff = new Backoff();
    while (!this.stopped) {
      const started = Date.now();
      try {
        await this.session();
      } catch (e) {
        if (this.stopped) break;
        log.warn(this.connected ? "docker: connection lost; reconnecting" : "docker: cannot connect; retrying", {
          endpoint: this.opts.endpoint,
          error: describe(e),
          retryMs: backoff.ms,
        });
      }
      this.connected = false;
      if (this.stopped) break;
      if (Date.now() - started > 30_000) backoff.reset();
      await this.retrySleep.sleep(backoff.next());
    }
  }

  /** One connection: events stream, full read, then events until the stream breaks. */
  private async session(): Promise<void> {
    const closed = new Promise<never>((_, reject) => {
      this.breakConnection = (why: string) => reject(new Error(why));
    });
    closed.catch(() => {});
    const stream = (await this.timeout(
      this.docker.getEvents({ filters: { type: ["container", "network"] } }),
      "events",
    )) as NodeJS.ReadableStream & { destroy?: () => void };
    this.stream = stream;
    const pending: DockerEvent[] = [];
    let live = false; // false while the full read runs: events are queued (they only mark ids dirty)
    onEventLines(stream, (ev) => {
      if (live) this.onEvent(ev);
      else pending.push(ev);
    });
    stream.on("end", () => this.breakConnection?.("event stream ended"));
    stream.on("close", () => this.breakConnection?.("event stream closed"));
    stream.on("error", (e: Error) => this.breakConnection?.(`event stream: ${describe(e)}`));

    const pinger = setInterval(() => {
      this.timeout(this.docker.ping(), "ping", Math.min(this.opts.requestTimeoutMs ?? 10_000, 5000)).catch((e) =>
        this.breakConnection?.(describe(e)),
      );
    }, this.opts.pingMs ?? 5000);
    try {
      for (;;) {
        const waiters = this.resyncWaiters.splice(0);
        this.resyncWanted = false;
        live = false;
        await Promise.race([this.fullRead(), closed]);
        live = true;
        for (const ev of pending.splice(0)) this.onEvent(ev);
        for (const w of waiters) w(true);
        // Events until the connection breaks, or until a resync() asks for another full read
        // (events queue meanwhile, as at the first one).
        if (!this.resyncWanted) await Promise.race([new Promise<void>((r) => (this.resyncWake = r)), closed]);
        this.resyncWake = undefined;
      }
    } finally {
      for (const w of this.resyncWaiters.splice(0)) w(false);
      this.resyncWake = undefined;
      clearInterval(pinger);
      this.breakConnection = undefined;
      this.stream = undefined;
      try {
        stream.removeAllListeners("data");
        stream.destroy?.();
      } catch {
        /* gone */
      }
    }
  }

  private async fullRead(): Promise<void> {
    const t0 = Date.now();
    const list = await this.timeout(this.docker.listContainers({ all: true }), "list containers");
    const next = new Map<string, ContainerInspect>();
    await this.inspectAll(
      list.map((c) => c.Id),
      (id, c) => {
        if (c) next.set(id, c);
      },
    );
    this.generation++;
    this.queued.clear();
    this.containers = next;
    for (const id of this.draining) if (!next.get(id)?.State?.Running) this.draining.delete(id);
    this.dirty.clear();
    this.resyncs++;
    if (!this.connected) log.info("docker: connected", { endpoint: this.opts.endpoint, containers: next.size, ms: Date.now() - t0 });
    this.connected = true;
    this.opts.onState(this.state, true);
  }

  /** Inspects containers, a few at a time; `on(id, undefined)` for a container that is gone. */
  private async inspectAll(ids: string[], on: (id: string, c: ContainerInspect | undefined) => void): Promise<void> {
    const queue = [...ids];
    const worker = async () => {
      for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
        try {
          const c = (await this.timeout(this.docker.getContainer(id).inspect(), `inspect ${id.slice(0, 12)}`)) as unknown as ContainerInspect;
          on(id, c);
        } catch (e) {
          if (statusCode(e) === 404) on(id, undefined);
          else throw e;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(INSPECT_CONCURRENCY, queue.length) }, worker));
  }

  private onEvent(ev: DockerEvent): void {
    const action = ev.Action ?? "";
    let id: string | undefined;
    if (ev.Type === "container") {
      // A created container is not running yet: its start event will follow.
      if (ignoredAction(action) || action === "create") return;
      id = ev.Actor?.ID;
      if (!id) return;
      if (action === "kill") {
        const sig = ev.Actor?.Attributes?.signal ?? "";
        if (STOP_SIGNALS.has(sig) && !this.draining.has(id)) return this.drain(id);
      } else if (action === "start" || action === "restart") {
        this.draining.delete(id);
      } else if ((action === "die" || action === "destroy") && !this.draining.has(id)) {
        // No kill came first (the main process exited by itself, or crashed).
        return this.drain(id);
      }
    } else if (ev.Type === "network") {
      // connect / disconnect change the addresses of a running container; for one that is
      // starting or stopping, the start or die event says all.
      id = ev.Actor?.Attributes?.container;
      if (!id || !this.containers.get(id)?.State?.Running) return;
    } else return;
    this.dirty.add(id);
    this.flush.trigger();
  }

  /**
   * A stopping kill, or a die without one: weight 0 at once, from the cached state, without
   * waiting for the inspect (Docker may hold a dying container's lock for seconds, and an
   * inspect of a container that has exited already would remove it without the drain). The
   * inspect follows at once; it removes the container or, for one that lives on, keeps the drain
   * until its next start.
   */
  private drain(id: string): void {
    this.draining.add(id);
    this.dirty.add(id);
    this.flush.trigger(true);
    this.scheduleReport();
  }

  /** The end of a burst: the dirty containers join the inspect queue. */
  private inspectDirty(): void {
    for (const id of this.dirty) this.queued.add(id);
    this.dirty.clear();
    this.pump();
  }

  /**
   * Inspects the queued containers, a few at a time, each on its own: a container that Docker
   * keeps busy (its start holds its lock) delays no other. A container is never inspected twice
   * at once; one that changes again meanwhile is inspected again afterwards.
   */
  private pump(): void {
    if (this.stopped) return;
    for (const id of this.queued) {
      if (this.inflight.size >= INSPECT_CONCURRENCY) break;
      if (this.inflight.has(id)) continue;
      this.queued.delete(id);
      this.inflight.add(id);
      void this.inspectOne(id, this.generation);
    }
  }

  private async inspectOne(id: string, gen: number): Promise<void> {
    let c: ContainerInspect | undefined;
    let ok = true;
    try {
      c = (await this.timeout(this.docker.getContainer(id).inspect(), `inspect ${id.slice(0, 12)}`)) as unknown as ContainerInspect;
    } catch (e) {
      if (statusCode(e) !== 404) {
        ok = false;
        if (e instanceof DockerTimeout) {
          // Docker answers, but keeps this container busy (a start or stop holds its lock):
          // ask again later; a re-read of every container would only add to its load.
          log.debug("docker: inspect timed out; retrying", { container: id.slice(0, 12) });
          if (gen === this.generation) setTimeout(() => (this.queued.add(id), this.pump()), 1000);
        } else if (gen === this.generation) {
          // Docker went away: the reconnect re-reads everything.
          this.breakConnection?.(`inspect: ${describe(e)}`);
        }
      }
    } finally {
      this.inflight.delete(id);
    }
    if (!ok || gen !== this.generation || this.stopped) {
      this.pump();
      return;
    }
    if (c) this.containers.set(id, c);
    else this.containers.delete(id);
    // A drain ends when the container is gone or no longer running (a restart's start event
    // ends it for a container that comes back).
    if (!c?.State?.Running) this.draining.delete(id);
    this.scheduleReport();
    this.pump();
  }

  /** Results that arrive together make one report (the publisher coalesces further). */
  private scheduleReport(): void {
    if (this.reportTimer) return;
    this.reportTimer = setTimeout(() => {
      this.reportTimer = undefined;
      if (!this.stopped) this.opts.onState(this.state, false);
    }, 0);
  }
}
