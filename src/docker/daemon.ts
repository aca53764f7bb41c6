// clusterf-docker's loop: the Docker state (watcher) → the keys it stands for (labels, pure) →
// etcd (publisher, one lease). Warnings about a container's labels are logged once per change.

import type { Etcd3 } from "etcd3";
import { LABEL_SERVICE, describeContainer, desiredKeys, type BackendOptions } from "./labels.ts";
import { Publisher, type PublisherStats } from "./publisher.ts";
import { DockerWatcher, type DockerState } from "./watcher.ts";
import * as log from "../util/log.ts";

export interface DockerDaemonOptions {
  dockerEndpoint: string;
  network?: string;
  published?: BackendOptions["published"];
  prefix: string;
  ttlSeconds: number;
  stateFile?: string;
  etcdEndpoints: string[];
  debounceMs?: number;
}

/** What /metrics and /healthz read of clusterf-docker, as of the call. */
export interface DockerDaemonStatus {
  /** The first full Docker state has been handed to the publisher. */
  synced: boolean;
  /** The Docker engine answers. */
  connected: boolean;
  /** Backend keys this host publishes, and the containers behind them. */
  published: number;
  publishedContainers: number;
  keepaliveFailing: boolean;
  /** The publisher's counters: etcd writes, resyncs, lease grants and keep-alive failures. */
  writes: Readonly<PublisherStats>;
}

export class DockerDaemon {
  readonly watcher: DockerWatcher;
  readonly publisher: Publisher;
  private lastWarnings = new Map<string, string>();
  private lastState = new Map<string, string>();
  /** Backend keys this host publishes now (after the last Docker state). */
  published = 0;
  /** Containers behind those keys (a container with several services counts once). */
  publishedContainers = 0;
  /** Set once the first full Docker state has been handed to the publisher. */
  synced = false;

  constructor(
    client: Etcd3,
    private readonly opts: DockerDaemonOptions,
  ) {
    this.publisher = new Publisher(client, {
      prefix: opts.prefix,
      ttlSeconds: opts.ttlSeconds,
      stateFile: opts.stateFile,
      endpoints: opts.etcdEndpoints,
    });
    this.watcher = new DockerWatcher({
      endpoint: opts.dockerEndpoint,
      debounceMs: opts.debounceMs,
      onState: (state, full) => this.onState(state, full),
    });
  }

  statusView(): DockerDaemonStatus {
    return {
      synced: this.synced,
      connected: this.watcher.isConnected,
      published: this.published,
      publishedContainers: this.publishedContainers,
      keepaliveFailing: this.publisher.keepaliveFailing,
      writes: { ...this.publisher.stats },
    };
  }

  start(): void {
    // The lease first: a taken-over lease must be kept alive while Docker is being read.
    this.publisher.start();
    this.watcher.start();
  }

  private onState(state: DockerState, full: boolean): void {
    const { keys, warnings } = desiredKeys(state.containers.values(), this.opts.prefix, {
      network: this.opts.network,
      published: this.opts.published,
      isDraining: (id) => state.draining.has(id),
    });
    // Log each container's warnings once, when they change.
    for (const [id, ws] of warnings) {
      const text = ws.join("\n");
      if (this.lastWarnings.get(id) === text) continue;
      this.lastWarnings.set(id, text);
      for (const w of ws) log.warn(`labels: ${w}`);
    }
    for (const id of [...this.lastWarnings.keys()]) if (!warnings.has(id)) this.lastWarnings.delete(id);
    // One line per labelled container whose state changed, for the operator.
    const seen = new Set<string>();
    for (const c of state.containers.values()) {
      if (!c.Config?.Labels?.[LABEL_SERVICE]) continue;
      seen.add(c.Id);
      const st = c.State ?? {};
      const text = `${st.Status ?? "?"}${st.Health?.Status ? `/${st.Health.Status}` : ""}${state.draining.has(c.Id) ? "/stopping" : ""}`;
      if (this.lastState.get(c.Id) !== text) {
        this.lastState.set(c.Id, text);
        log.debug(`docker: ${describeContainer(c)}: ${text}`);
      }
    }
    for (const id of [...this.lastState.keys()]) if (!seen.has(id)) this.lastState.delete(id);
    if (full) log.info("docker: full state read; resyncing etcd", { containers: state.containers.size, keys: keys.size });
    this.published = keys.size;
    this.publishedContainers = new Set([...keys.keys()].map((k) => k.slice(k.lastIndexOf("/") + 1))).size;
    this.synced = true;
    this.publisher.setDesired(keys, { reread: full });
  }

  /**
   * A full two-way resync, as after a reconnect (SIGHUP): every container inspected again, and
   * this host's keys read back from etcd, stale ones deleted, missing or different ones written.
   * With Docker down, etcd is resynced to the last known state now and Docker when it returns.
   * Resolves once the new desired state is handed to the publisher (not when etcd has it).
   */
  async resync(): Promise<void> {
    log.info("resync requested: re-reading Docker and etcd");
    if (!(await this.watcher.resync())) this.publisher.resync();
  }

  /** revoke: remove every key at once (clean exit); otherwise they expire with the lease TTL. */
  async stop(opts: { revoke: boolean }): Promise<void> {
    await this.watcher.stop();
    await this.publisher.stop(opts);
  }
}
