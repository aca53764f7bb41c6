// The daemons' state files under -state-dir (the lease id, the services created).

import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";

/**
 * Writes `value` as one line of JSON to `file`, atomically: written aside and renamed over, so a
 * crash leaves the old file or the new one, never half of one. The directory is created if
 * needed; `mode` applies to a new file. Throws on failure (the caller decides what it costs).
 */
export function writeJsonAtomic(file: string, value: unknown, mode?: number): void {
  mkdirSync(dirname(file), { recursive: true });
  const aside = `${file}.tmp${process.pid}`;
  writeFileSync(aside, JSON.stringify(value) + "\n", mode === undefined ? undefined : { mode });
  renameSync(aside, file);
}
