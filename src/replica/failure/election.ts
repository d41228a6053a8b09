// The election (policy): once the original failed, the replica to promote is the one that can
// carry the most open connections on (healthy, faithful shadows, still open ones first), trusted
// (not suspected of failing itself, not asked because of evidence, not silent to an election
// probe), then the lowest smoothed RTT; it is probed first (it may have died with the original
// without a sign yet) and promoted on its answer. Also the original's refusals of new
// connections, held while a probe decides whether they are the truth (a live original that
// refuses) or the death of the service (dropped: the client's SYN retransmission reaches the new
// original).
import type { TcpSegment } from "../../wire/tcp.js";
import type { CaptureClock } from "../capture-clock.js";
import type { ConnectionTable } from "../connection-table.js";
import type { Outbox } from "../outbox.js";
import type { ReplicaRecord, ReplicaSet } from "../replica-set.js";
import { canSplice, knownOriginalEnd } from "../splice.js";
import type { Confirmation, EngineConfig } from "../types.js";
import { CANDIDATE, type ProbeBook } from "./probes.js";

/** Refusals held at once; beyond, they go to their clients unheld. */
export const MAX_HELD_REFUSALS = 1024;
/** A held refusal goes out after this long whatever happens (the probe was lost). */
export const REFUSAL_HOLD_MS = 1000;
/**
 * A promotion waits at most this long for the original's capture channel to deliver reply bytes
 * a client already acknowledged: spliced, such a connection continues; promoted without them, it
 * is reset (canSplice: bytes never captured were compared with nothing). Under load the backend
 * channel runs tens of milliseconds behind the client's (found by CI: 30 of the 50 INCR loops of
 * failover-kill reset at a process kill, their last reply still in the capture pipeline).
 */
export const PROMOTION_CATCH_UP_MS = 200;
/** Packets captured on different CPUs reach one ring this much out of time order. */
const CATCH_UP_SLACK_US = 2000;

export class Election {
  /** The original failed; the best replica is being asked whether it is alive. */
  private current:
    | {
        since: number;
        reason: string;
        /** What confirmed the failure ("switchover": none, it was asked for). */
        confirmedBy: Confirmation | "switchover";
        /** A switchover's replica (the operator chose it; no probe first). */
        target?: string;
        catchUpUntil?: number;
        catchUpFrom?: number;
      }
    | undefined;
  /** A failure of the current original was signalled already (one signal per original). */
  failureSignaled = false;
  failuresDetected = 0;
  /** The original's refusals of new connections, waiting for a probe's verdict. */
  private heldRefusals: Array<{ segment: TcpSegment; at: number }> = [];
  refusalsDropped = 0;

  constructor(
    private readonly failure: EngineConfig["failure"],
    private readonly table: ConnectionTable,
    private readonly replicas: ReplicaSet,
    private readonly probes: ProbeBook,
    /** Whether a replica is suspected of failing itself (detector.ts). */
    private readonly suspected: (id: string) => boolean,
    private readonly outbox: Outbox,
    private readonly promote: (
      id: string,
      now: number,
      captureWaitMs: number,
      confirmedBy: Confirmation | "switchover",
      reason: string,
    ) => void,
    private readonly clock: CaptureClock,
    /** The original stops reaching clients (kernel fence, before the promotion's retarget). */
    private readonly fence: () => void,
  ) {}

  get running(): boolean {
    return this.current !== undefined;
  }

  get refusalsHeld(): number {
    return this.heldRefusals.length;
  }

  /**
   * The replica to promote: not promoted, not suspected of failing itself, the one that can carry
   * the most open connections on (healthy, faithful shadows, still open ones first), then the
   * lowest smoothed RTT.
   */
  bestReplica(): string | undefined {
    const dying = this.probes.dying();
    const doubted = this.probes.doubted();
    let best: { r: ReplicaRecord; trusted: number; score: number } | undefined;
    for (const r of this.replicas.values()) {
      if (r.promoted || dying.has(r.info.id)) continue;
      // Suspected, or asked because of evidence: only when nothing better is left; passed over
      // in an election (silent to its probe): last of all.
      const trusted = this.probes.passedOver.has(r.info.id)
        ? 0
        : !this.suspected(r.info.id) && !doubted.has(r.info.id)
          ? 2
          : 1;
      // A shadow still open counts more than one that closed with the original: when the
      // original failed, a replica that closed at the same moment is likely failing with it.
      let score = 0;
      for (const c of this.table.values()) {
        if (c.phase !== "open" || !canSplice(c, r.info.id)) continue;
        score += c.shadows.get(r.info.id)!.replicaFinOffset === undefined ? 2 : 1;
      }
      const better =
        !best ||
        trusted > best.trusted ||
        (trusted === best.trusted &&
          (score > best.score ||
            (score === best.score && (r.lastSrttMs ?? Infinity) < (best.r.lastSrttMs ?? Infinity))));
      if (better) best = { r, trusted, score };
    }
    return best?.r.info.id;
  }

  /** One signal per original: it is either promoted away now, or left to the operator. */
  originalFailed(
    reason: string,
    conn: string,
    afterMs: number,
    now: number,
    confirmedBy: Confirmation,
    since = now,
  ): void {
    this.failureSignaled = true;
    this.failuresDetected++;
    this.outbox.event({ type: "original-failure", reason, conn, afterMs, confirmedBy });
    if (!this.failure.autoFailover) {
      this.releaseRefusals(() => true); // nobody takes over: the refusals are the truth
      return;
    }
    // The refused clients retry their SYN and reach the new original (or, with no replica left,
    // the same refusal again, then delivered).
    this.refusalsDropped += this.heldRefusals.length;
    this.heldRefusals = [];
    this.current = { since, reason, confirmedBy };
    this.run(now);
  }

  /**
   * Promotes the best replica once it proved alive after the failure (it may have died with the
   * original without a sign yet: a host or link gone silently): probed first, promoted on the
   * answer; a dead one is removed and the next best asked. Without probes: at once.
   */
  run(now: number, want?: (t: number) => void): void {
    const e = this.current;
    if (!e) return;
    if (e.target !== undefined) {
      const r = this.replicas.get(e.target);
      if (!r || r.promoted) {
        this.current = undefined;
        this.outbox.event({
          type: "switchover-abandoned",
          replica: e.target,
          reason: "the replica left the set while the promotion waited for the capture",
        });
        return;
      }
      this.promoteCaughtUp(e, e.target, now, want);
      return;
    }
    const best = this.bestReplica();
    if (!best) {
      this.current = undefined;
      this.outbox.event({
        type: "no-replica-left",
        reason: `the original failed (${e.reason}) and no replica is left`,
      });
      return;
    }
    if (!this.failure.probes || this.probes.aliveSince(best) >= e.since) {
      this.promoteCaughtUp(e, best, now, want);
      return;
    }
    const r = this.replicas.get(best)!;
    const timeout = Math.max(this.failure.probeTimeoutMs, 4 * (r.lastSrttMs ?? 0));
    this.probes.request(best, r.info.address, `replica ${best}: ${CANDIDATE}`, now, timeout);
  }

  /**
   * A replica chosen by the operator (a planned switchover, or a failover signalled from outside):
   * promoted once the capture caught up, like an elected one, without a probe first.
   */
  switchover(
    id: string,
    reason: string,
    now: number,
    confirmedBy: "switchover" | "external" = "switchover",
  ): void {
    this.current = { since: now, reason, confirmedBy, target: id };
    this.run(now);
  }

  /**
   * Promotes `id` unless the capture is behind: then the original is fenced (a live one would
   * keep the clients acknowledging bytes ahead of the capture) and the promotion waits, at most
   * PROMOTION_CATCH_UP_MS.
   */
  private promoteCaughtUp(
    e: NonNullable<Election["current"]>,
    id: string,
    now: number,
    want: ((t: number) => void) | undefined,
  ): void {
    if (this.captureBehind() > 0) {
      if (e.catchUpFrom === undefined) {
        e.catchUpFrom = now;
        e.catchUpUntil = now + PROMOTION_CATCH_UP_MS;
        this.fence();
      }
      if (now < e.catchUpUntil!) {
        want?.(Math.min(e.catchUpUntil!, now + 1));
        return;
      }
    }
    this.current = undefined;
    this.promote(id, now, e.catchUpFrom === undefined ? 0 : now - e.catchUpFrom, e.confirmedBy, e.reason);
  }

  /**
   * Open connections whose client acknowledged reply bytes the original's capture channel has not
   * delivered yet, while that channel has delivered nothing captured after the acknowledgement:
   * the bytes may still come. (Once it has, they were lost: waiting longer changes nothing.)
   */
  captureBehind(): number {
    const watermark = this.clock.watermarkOf("original");
    let n = 0;
    for (const c of this.table.values()) {
      if (c.phase !== "open" || c.captureGap || c.spliced) continue;
      const s = c.gapSuspects.original;
      if (!s || c.original.end >= knownOriginalEnd(c)) continue;
      if (watermark < (s.next ?? s).atUs + CATCH_UP_SLACK_US) n++;
    }
    return n;
  }

  /** A promotion happened (by the election or by hand): the next original starts afresh. */
  promoted(): void {
    this.current = undefined;
    this.failureSignaled = false;
  }

  /** The original refused a connection: held while a probe decides (true), or not held. */
  holdRefusal(segment: TcpSegment, now: number): boolean {
    if (!this.failure.probes || this.failureSignaled || this.heldRefusals.length >= MAX_HELD_REFUSALS)
      return false;
    this.heldRefusals.push({ segment, at: now });
    return true;
  }

  /** Held refusals go to their clients (those `which` selects). */
  releaseRefusals(which: (r: { at: number }) => boolean): void {
    const keep: typeof this.heldRefusals = [];
    for (const r of this.heldRefusals) {
      if (which(r)) this.outbox.send(r.segment, "client");
      else keep.push(r);
    }
    this.heldRefusals = keep;
  }

  /** Refusals held for REFUSAL_HOLD_MS go out whatever happens (the probe was lost). */
  expireRefusals(now: number, want: (t: number) => void): void {
    if (this.heldRefusals.length === 0) return;
    this.releaseRefusals((r) => now - r.at >= REFUSAL_HOLD_MS);
    if (this.heldRefusals.length > 0) want(this.heldRefusals[0]!.at + REFUSAL_HOLD_MS);
  }
}
