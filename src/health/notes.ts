// What -print says about health-checked destinations: a note after the columns naming each
// backend of the destination that is down (with its last check's reason) or ramping up.

import type { DestNote } from "../ipvs/print.ts";
import { destKeyString, serviceKeyString } from "../ipvs/types.ts";
import type { DesiredTable } from "../model/desired.ts";
import type { Checker } from "./checker.ts";
import { ramping } from "./state.ts";

export function healthNote(desired: DesiredTable, checker: Checker, now = performance.now()): DestNote {
  return (service, dest) => {
    const checks = desired.table.get(serviceKeyString(service))?.checks;
    if (!checks) return undefined;
    const dk = destKeyString(dest);
    const parts: string[] = [];
    for (const c of checks) {
      if (c.dest !== dk) continue;
      const s = checker.health(c.key);
      if (!s) continue;
      if (!s.up) parts.push(`${c.backend} down (${s.reason})`);
      else if (ramping(s, now, c.spec.slowStartMs)) parts.push(`${c.backend} slow start`);
    }
    return parts.length ? `# health: ${parts.join(", ")}` : undefined;
  };
}
