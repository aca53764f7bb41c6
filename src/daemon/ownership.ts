// Ownership (docs/config.md §4): the reconciler removes only the services that this daemon
// created or that the config describes. Which ones it created is kept in
// <-state-dir>/ipvs-owned.json, so that a restart still knows them.

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Op } from "../ipvs/types.ts";
import * as log from "../util/log.ts";
import { writeJsonAtomic } from "../util/state-file.ts";

const OWNED_FILE = "ipvs-owned.json";

export class Ownership {
  /** Service keys this daemon created. */
  private readonly owned = new Set<string>();
  /** Changed since the last save. */
  private dirty = false;

  /** stateDir undefined: memory only. noop: never saved (a noop daemon writes nothing). */
  constructor(
    private readonly stateDir: string | undefined,
    private readonly noop = false,
  ) {
    this.load();
  }

  has(key: string): boolean {
    return this.owned.has(key);
  }

  /** A write to service `key`: a service it deletes is no longer this daemon's, one it writes anything else to is. */
  record(op: Op, key: string): void {
    if (op.type === "delete-service") {
      if (this.owned.delete(key)) this.dirty = true;
    } else this.claim(key);
  }

  /** A service this daemon is about to create. */
  claim(key: string): void {
    if (this.owned.has(key)) return;
    this.owned.add(key);
    this.dirty = true;
  }

  /** The table was flushed: nothing is this daemon's any more. */
  clear(): void {
    this.owned.clear();
    this.dirty = true;
  }

  /** Writes the file when anything changed (a new file, renamed over the old one: never half written). */
  save(): void {
    if (!this.dirty || !this.stateDir || this.noop) return;
    const file = join(this.stateDir, OWNED_FILE);
    try {
      writeJsonAtomic(file, { services: [...this.owned].sort() });
      this.dirty = false;
    } catch (e) {
      log.warn("state: cannot save the list of services this daemon created", { file, error: (e as Error).message });
      this.dirty = false; // warn once per change, not on every sync
    }
  }

  private load(): void {
    if (!this.stateDir) return;
    const file = join(this.stateDir, OWNED_FILE);
    if (!existsSync(file)) return;
    try {
      const data = JSON.parse(readFileSync(file, "utf8")) as { services?: unknown };
      if (Array.isArray(data.services)) for (const k of data.services) if (typeof k === "string") this.owned.add(k);
    } catch (e) {
      log.warn("state: cannot read the list of services this daemon created; starting without it", {
        file,
        error: (e as Error).message,
      });
    }
  }
}
