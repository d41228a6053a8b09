// Probe bookkeeping (mechanism): the probes asked of the I/O edge and not answered yet, when each
// target was last probed and last found alive, candidates passed over in an election, and dead
// answers waiting for the capture channels to catch up. What a probe's answer means is decided
// in detector.ts.
import type { Outbox } from "../outbox.js";

export const PERIODIC = "periodic probe";
export const CANDIDATE = "candidate for promotion";

/** A probe asked of the I/O edge, not answered yet. */
export interface PendingProbe {
  target: string;
  timeoutMs: number;
  /** Asked without evidence: an evidence-based probe does not wait for it. */
  periodic: boolean;
  /** Already the second, patient try after silence: its silence is a verdict. */
  patient: boolean;
  sentAt: number;
  reason: string;
  /** The application health check's deadline, when the probe runs one. */
  checkMs?: number;
}

/** A dead answer waiting for every capture channel to pass the probe's send time. */
export interface DeadVerdict {
  probe: PendingProbe;
  why: string;
  sentUs: number | undefined;
  receivedAt: number;
}

export class ProbeBook {
  private readonly pending = new Map<number, PendingProbe>();
  private nextId = 1;
  readonly counters = { sent: 0, alive: 0, dead: 0, unknown: 0 };
  /** Per target ("original" or replica id): when the last probe answered alive was sent. Evidence
   * older than that is explained (the target was alive after it) and is not probed again. */
  private readonly aliveAt = new Map<string, number>();
  /** Per target: when the last health check its application answered was sent. */
  private readonly checkedAt = new Map<string, number>();
  /** When each target was last probed (periodic probes count from there). */
  private readonly lastProbeAt = new Map<string, number>();
  /** Candidates silent to their election probe: not promoted while a patient second probe decides
   * whether they are dead (silence alone, on a busy machine, does not remove a replica). */
  readonly passedOver = new Set<string>();
  /** Dead probe answers waiting for the capture channels to catch up (detector.settle). */
  readonly deadVerdicts: DeadVerdict[] = [];
  /** Counts originals (forgetOriginal): a verdict about an earlier one is stale. */
  originalGeneration = 0;

  constructor(private readonly outbox: Outbox) {}

  /** Asks the I/O edge to probe `target` unless a probe of it is under way already: `copies`
   * parallel handshakes (the edge answers once: alive or refused if one was, silent only if all
   * were), and with `checkMs` the application health check after the handshake. */
  request(
    target: string,
    address: number,
    reason: string,
    now: number,
    timeoutMs: number,
    patient = false,
    extra: { copies?: number; checkMs?: number | undefined } = {},
  ): void {
    const periodic = reason.endsWith(PERIODIC);
    const checks = extra.checkMs !== undefined;
    for (const p of this.pending.values()) {
      // Evidence does not wait for a periodic probe's longer deadline, nor a health check for a
      // handshake's answer (it asks something else); anything else waits.
      if (p.target === target && (!p.periodic || periodic) && (p.checkMs !== undefined) === checks) return;
    }
    this.lastProbeAt.set(target, now);
    const id = this.nextId++;
    const probe: PendingProbe = { target, sentAt: now, reason, periodic, patient, timeoutMs };
    if (checks) probe.checkMs = extra.checkMs!;
    this.pending.set(id, probe);
    this.counters.sent++;
    const copies = Math.max(1, extra.copies ?? 1);
    this.outbox.push({
      type: "probe",
      id,
      target,
      address,
      timeoutMs: Math.ceil(timeoutMs),
      reason,
      periodic: periodic || patient,
      ...(copies > 1 ? { copies } : {}),
      ...(checks ? { checkMs: Math.ceil(extra.checkMs!) } : {}),
    });
  }

  /** The pending probe `id`, no longer pending (undefined: unknown or answered already). */
  take(id: number): PendingProbe | undefined {
    const p = this.pending.get(id);
    if (p) this.pending.delete(id);
    return p;
  }

  /** When the latest probe of `target` that answered alive was sent (-Infinity: none). */
  aliveSince(target: string): number {
    return this.aliveAt.get(target) ?? -Infinity;
  }

  markAlive(target: string, sentAt: number): void {
    this.aliveAt.set(target, Math.max(this.aliveSince(target), sentAt));
  }

  /** When the latest health check of `target` that its application answered was sent: a stall
   * older than that is explained (the application answers; that request is merely slow). */
  checkedSince(target: string): number {
    return this.checkedAt.get(target) ?? -Infinity;
  }

  markChecked(target: string, sentAt: number): void {
    this.checkedAt.set(target, Math.max(this.checkedSince(target), sentAt));
  }

  lastProbe(target: string): number {
    return this.lastProbeAt.get(target) ?? -Infinity;
  }

  /** A removed replica: nothing about it is pending or remembered. */
  forget(target: string): void {
    for (const [k, p] of this.pending) if (p.target === target) this.pending.delete(k);
    this.aliveAt.delete(target);
    this.checkedAt.delete(target);
    this.passedOver.delete(target);
    this.lastProbeAt.delete(target);
  }

  /** A new original: what was asked or known about the old one no longer applies. */
  forgetOriginal(): void {
    this.originalGeneration++;
    for (const [k, p] of this.pending) if (p.target === "original") this.pending.delete(k);
    for (let i = this.deadVerdicts.length - 1; i >= 0; i--)
      if (this.deadVerdicts[i]!.probe.target === "original") this.deadVerdicts.splice(i, 1);
    this.aliveAt.delete("original");
    this.checkedAt.delete("original");
    this.lastProbeAt.delete("original");
  }

  /** Targets whose dead answer awaits its verdict. */
  dying(): Set<string> {
    return new Set(this.deadVerdicts.map((v) => v.probe.target));
  }

  /** Targets asked because of evidence (not periodically, not as an election's candidate). */
  doubted(): Set<string> {
    const doubted = new Set<string>();
    for (const p of this.pending.values())
      if (!p.periodic && !p.reason.endsWith(CANDIDATE)) doubted.add(p.target);
    return doubted;
  }
}
