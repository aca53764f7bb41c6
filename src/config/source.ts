// What a config source (the -config-path directory, etcd) hands to the daemon: raw key events.
// Sources only move text in; parsing, validation and merging happen in the pure core.

export type SourceName = "local" | "etcd";

/** The parser a value asks for: files may be YAML; etcd values and extension-less files are JSON. */
export type ValueFormat = "json" | "yaml";

export interface RawValue {
  text: string;
  format: ValueFormat;
  /** Where it came from, for error messages: a file path, or an etcd key. */
  origin: string;
}

/**
 * One key change. `key` is relative to the source root (the -config-path directory, or the etcd
 * prefix), "/"-separated with no leading or trailing slash and no file extension:
 * `services/web/frontend`, `services/web/backends/b1`, `routes/r1`. `value` null = deleted.
 */
export interface KeyEvent {
  key: string;
  value: RawValue | null;
}

/** A part of a snapshot (SourceSink.snapshot): one of several that follow ("more"), or the one that ends it. */
export type SnapshotPart = "more" | "last";

export interface SourceSink {
  /**
   * A complete snapshot (initial read, or a re-read after an etcd compaction): replaces all keys.
   * The map is the sink's from then on (it may empty it once taken in). `part`: the snapshot
   * comes in parts, "more" for each but the last, "last" for the last (a large first read comes
   * as it is read, so that its raw text need not be held all at once: the sink may take a part in
   * before the rest comes, but applies nothing of it before the last part). A whole snapshot
   * (no `part`) replaces everything, the parts of a snapshot left unfinished included.
   */
  snapshot(source: SourceName, entries: Map<string, RawValue>, part?: SnapshotPart): void;
  /** Incremental changes, already coalesced by the source where it can. */
  update(source: SourceName, events: KeyEvent[]): void;
  /** Connection state, for logs, metrics and health ("source down" never means "empty config"). */
  status(source: SourceName, up: boolean, detail?: string): void;
}

export interface ConfigSource {
  readonly name: SourceName;
  /** Reads everything once (a snapshot() call), then follows changes until stop(). */
  start(sink: SourceSink): Promise<void>;
  /**
   * Reads everything again, as a fresh start would, and hands it over before resolving (SIGHUP:
   * whatever the source may have missed, the sink then holds exactly what it holds): the etcd
   * source as one snapshot(), the directory source as one update() of the keys that differ from
   * what it handed over (it keeps a fingerprint of each value, not the text). Does nothing before
   * start() or after stop().
   */
  resync(): Promise<void>;
  stop(): Promise<void>;
}
