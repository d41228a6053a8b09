// The decision rule (policy): what a verdict against the original must be confirmed by before the
// service is failed over. Detection itself (evidence, probes) only reports what it saw; this file
// says what is enough. docs/ARCHITECTURE.md "Decision rule" gives the reasoning and the measured
// trade-off (bench/results/detector-*).
//
//   crash-type evidence a probe confirmed    refused, reset, unreachable, or two parallel
//                                            handshakes unanswered: fail over now
//   a stall no probe confirms                its kernel answers, its application does not (a GC
//   (the "hang budget")                      pause, a page-fault storm, steal time, a hung
//                                            process): only once it lasted the hang budget;
//                                            with a health check, the check is asked then and
//                                            decides (it answers: a slow request, no failure)
//   a health check that failed               fail over now
//   an external signal (the hypervisor)      fail over now
//   within hysteresisMs of a promotion       only confirmed evidence fails over again: a stall
//                                            alone is withheld (counted, an event)
import type { Confirmation, EngineConfig } from "../types.js";

/** Probe answers that are certain: the target's kernel said nothing listens. */
export const REFUSALS = new Set(["ECONNREFUSED", "ECONNRESET"]);
/** ...or the network said the host is not there. */
const UNREACHABLE = new Set(["EHOSTUNREACH", "ENETUNREACH", "EHOSTDOWN"]);

/**
 * Parallel handshakes of an evidence probe of the original (the edge answers once): it is dead by
 * silence only when every one went unanswered. On a link losing 8 % of packets (the simulator's
 * worst) one handshake is lost with p ≈ 15 %: single probes failed healthy originals over; all
 * three at once, p ≈ 0.4 %. Parallel copies cost no time, where a second try after the first
 * deadline would delay every real detection by one probe timeout.
 */
export const EVIDENCE_PROBE_COPIES = 3;

export type Decision =
  | { act: "fail-over" }
  /** Ask the application health check; its failure fails over. */
  | { act: "check" }
  | { act: "withhold"; why: string; until: number };

export function decide(
  by: Confirmation,
  failure: Pick<EngineConfig["failure"], "hysteresisMs" | "healthCheckMs" | "probes">,
  now: number,
  lastPromotionAt: number,
): Decision {
  if (by !== "hang budget") return { act: "fail-over" };
  if (failure.probes && failure.healthCheckMs !== undefined) return { act: "check" };
  const until = lastPromotionAt + failure.hysteresisMs;
  if (now < until)
    return {
      act: "withhold",
      why: `a stall alone, ${Math.round(now - lastPromotionAt)} ms after a promotion (hysteresis ${failure.hysteresisMs} ms): only confirmed evidence fails over again`,
      until,
    };
  return { act: "fail-over" };
}

/** What a dead probe answer confirms. */
export function confirmation(why: string, checked: boolean): Confirmation {
  if (REFUSALS.has(why)) return "probe refused";
  if (UNREACHABLE.has(why)) return "unreachable";
  if (checked && /health check/.test(why)) return "health check failed";
  return "probe unanswered";
}
