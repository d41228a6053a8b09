// Where a new machine goes, over the configured hypervisor hosts. A replica is only worth having
// if it does not fail with the original, so the policy spreads a service's machines over distinct
// hosts (OpenNebula's "striping") with penalties in the manner of CygnusCloud's scheduler:
//
//   host holds this service's original           +100  (a replica there dies with it)
//   each replica of this service on the host      +10  (two replicas on one host: one failure
//                                                       takes both)
//   each other machine of ours on the host         +1  (load)
//
// The lowest penalty wins; ties go to the host listed first. Unreachable hosts are never chosen.
// With fewer hosts than machines, sharing is allowed (penalized, not refused): a replica on the
// original's host still covers a failure of the original's service or guest.
import type { MachineRole } from "./domain-template.js";

export interface HostView {
  uri: string;
  reachable: boolean;
  machines: ReadonlyArray<{ service: string; role: MachineRole }>;
}

export const PENALTY = { original: 100, replica: 10, other: 1 } as const;

export function penalty(host: HostView, service: string): number {
  let p = 0;
  for (const m of host.machines) {
    if (m.service !== service) p += PENALTY.other;
    else p += m.role === "original" ? PENALTY.original : PENALTY.replica;
  }
  return p;
}

/** The host for a new machine of `service`, or undefined when none is reachable. */
export function placeMachine(hosts: readonly HostView[], service: string): HostView | undefined {
  let best: HostView | undefined;
  let bestPenalty = Infinity;
  for (const h of hosts) {
    if (!h.reachable) continue;
    const p = penalty(h, service);
    if (p < bestPenalty) {
      best = h;
      bestPenalty = p;
    }
  }
  return best;
}
