// Reading a whole IPVS table in slices (docs/config.md §4): for the daemon's resyncs and for
// /metrics, which read it beside the syncs.

import { IpvsError, type IpvsTable, type ObservedService } from "./types.ts";
import type { Steps } from "../util/slices.ts";

/**
 * IpvsTable.list() in slices where the table reads each service's destinations with a request of
 * its own (the kernel): one service at a time, for runSliced (the table's readers: resyncs and
 * /metrics scrapes). `giveWay`, asked after each service, abandons the read when it says so: null.
 * `withStats` false leaves the traffic counters out where reading them costs (the syncs' reads).
 */
export function listSteps(ipvs: IpvsTable): Steps<ObservedService[]>;
export function listSteps(ipvs: IpvsTable, giveWay: () => boolean, withStats?: boolean): Steps<ObservedService[] | null>;
export function* listSteps(ipvs: IpvsTable, giveWay?: () => boolean, withStats = true): Steps<ObservedService[] | null> {
  if (!ipvs.listServices) return ipvs.list();
  const out: ObservedService[] = [];
  const services = ipvs.listServicesSteps ? yield* ipvs.listServicesSteps(withStats) : ipvs.listServices(withStats);
  for (const s of services) {
    yield;
    if (giveWay?.()) return null;
    try {
      s.dests.push(...ipvs.listDests(s, withStats));
    } catch (e) {
      // Deleted (by hand) since the list: gone, like a service the list did not show.
      if (e instanceof IpvsError && (e.code === "ESRCH" || e.code === "ENOENT")) continue;
      throw e;
    }
    out.push(s);
  }
  return out;
}
