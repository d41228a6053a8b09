// Evidence, seen on one connection, that the original failed (policy). It closed alone (replicas
// caught up to the same offset did not close), or it stopped answering what replicas answered,
// or stopped acknowledging client bytes the replicas acknowledged, while it sent nothing at all on
// any connection. "suspect": ask a probe (a dead port or no answer confirms); "failed": no doubt
// left. Thresholds adapt to the original: its handshake RTT (how long a probe may take, when a
// stall is worth a probe) and how far it normally trails its replicas (an unconfirmed stall).
// Silence is measured on the capture clock, so the engine's own lag is not the original's.
import type { CaptureClock, Seen } from "../capture-clock.js";
import type { ReplicatedConnection } from "../connection.js";
import { DelayEstimator } from "../estimator.js";
import type { ShadowConversation } from "../shadow.js";
import { survivor } from "../splice.js";
import type { Confirmation, EngineConfig } from "../types.js";

export const CLOSE_ALONE = "the original closed a connection its replicas keep open";
/** Stall suspicions probe the original at most this often (closes and dead answers are not
 * limited): an original that often trails its replicas costs at most 50 connections a second. */
export const STALL_PROBE_INTERVAL_MS = 20;

export type Verdict =
  | {
      verdict: "failed";
      reason: string;
      conn: ReplicatedConnection;
      afterMs: number;
      /** Unconfirmed evidence: the decision rule (rule.ts) says what it is worth. */
      by: Extract<Confirmation, "hang budget" | "close alone">;
    }
  | { verdict: "suspect"; reason: string; conn: ReplicatedConnection; afterMs: number }
  | { verdict: "none" };

export class OriginalEvidence {
  /** When the current original last sent anything (engine clock and capture clock). */
  private lastFrom: Seen | undefined;
  /** ...and when it last sent payload bytes. */
  private lastDataFrom: Seen | undefined;
  /** How long the original trails its fastest replica when it answers later than one. */
  private lag = new DelayEstimator();
  /** Handshake RTT from the appliance to the original. */
  private rtt = new DelayEstimator();
  /** Stall clocks never start before this (the end of the last planned hold). */
  private stallClockFloor = -Infinity;
  /** When a stall suspicion last asked for a probe (rate limit). */
  lastStallProbeAt = -Infinity;

  constructor(
    private readonly failure: EngineConfig["failure"],
    /** How long a close is held while another replica still makes progress (config finHoldMs). */
    private readonly finHoldMs: number,
    private readonly clock: CaptureClock,
    /** Sends a spliced connection's held FIN on to the client (splice.ts). */
    private readonly releaseSplicedFin: (conn: ReplicatedConnection, s: ShadowConversation) => void,
  ) {}

  /** The original sent a segment (`data`: with payload). */
  heard(data: boolean, seen: Seen): void {
    this.lastFrom = seen;
    if (data) this.lastDataFrom = seen;
  }

  /** A handshake RTT to the original (ms, capture clock). */
  handshakeRtt(ms: number): void {
    this.rtt.add(ms);
  }

  /** The original caught up with a replica that had answered first, `ms` later. */
  trailed(ms: number): void {
    this.lag.add(ms);
  }

  /** A new original: nothing learnt about the old one applies. */
  reset(): void {
    this.lag = new DelayEstimator();
    this.rtt = new DelayEstimator();
    this.lastFrom = undefined;
    this.lastDataFrom = undefined;
  }

  /** Stalls are counted from now on at the earliest. */
  restartStallClocks(now: number): void {
    this.stallClockFloor = now;
  }

  /** The stall suspicion threshold: derived from the RTT to the original (a probe confirms, so
   * a wrong suspicion only costs a connection attempt), bounded below. */
  stallSuspectMs(): number {
    return Math.max(this.failure.stallSuspectMs, 2 * this.rtt.bound(4, 0));
  }

  /** The hang budget: a stall no probe confirmed (the kernel answers, the application does not)
   * is a failure only after this long: at least the configured budget, and well beyond how far
   * the original has been seen to trail its replicas. */
  hangBudgetMs(): number {
    return this.lag.bound(8, this.failure.hangBudgetMs);
  }

  /** How long a probe of the original may take: a few of its handshake RTTs, measured on the
   * capture clock (probe handshakes timed through the event loop carry the proxy's own lag, up to
   * 7 ms at start-up, and would slow detection for nothing). */
  probeTimeoutMs(): number {
    return Math.max(this.failure.probeTimeoutMs, 4 * this.rtt.bound(4, 0));
  }

  /**
   * The evidence on `conn` (`aliveAt`: when the last probe of the original that answered alive
   * was sent: older suspicions are explained; `checkedAt`: when the last health check its
   * application answered was sent: older stalls are). Reports when to look again via `want`.
   */
  inspect(
    conn: ReplicatedConnection,
    now: number,
    aliveAt: number,
    checkedAt: number,
    want: (t: number) => void,
  ): Verdict {
    if (conn.phase !== "open") return { verdict: "none" };
    const f = this.failure;
    if (conn.spliced) return this.splicedClose(conn, conn.spliced, now, aliveAt, want);
    const healthy = [...conn.shadows.values()].filter((s) => s.comparing);
    if (healthy.length === 0) return { verdict: "none" };
    const held = conn.held;
    if (held && !held.released && held.since > aliveAt) {
      // A replica that received everything the original had received (the same client bytes,
      // FIN included) and answered everything it answered, but did not close: the original's
      // close was not the service's decision. Counted from when the replica was caught up, so a
      // replica that is merely late (engine lag) is never mistaken for a survivor.
      let since: number | undefined;
      for (const s of healthy) {
        const caughtUp =
          held.kind === "rst"
            ? !s.replicaRst && Math.max(0, s.sndUna) >= conn.originalAckOffset
            : s.replicaFinOffset === undefined &&
              s.compared >= (conn.originalFinOffset ?? Infinity) &&
              Math.max(0, s.sndUna) >= conn.originalAckOffset;
        if (caughtUp) {
          const t = Math.max(held.since, s.caughtUpAt);
          since = since === undefined ? t : Math.min(since, t);
        }
      }
      if (since !== undefined) {
        if (now - since >= f.closeMismatchMs) {
          const reason = `${CLOSE_ALONE} (${held.kind === "rst" ? "reset" : "closed"})`;
          if (f.probes) return { verdict: "suspect", reason, conn, afterMs: now - since };
          return { verdict: "failed", reason, conn, afterMs: now - since, by: "close alone" };
        }
        want(since + f.closeMismatchMs);
      }
    }
    // Stalls only count while the original sends nothing at all, on any connection: a busy or
    // slow original keeps sending elsewhere; a frozen, unplugged or vanished one does not. A
    // frozen application's kernel still sends ACKs, so the long reply stall counts data only.
    // What the original answered: what was captured, or what the client acknowledged when the
    // capture missed some (a capture drop is not the original falling behind).
    const answered = Math.max(conn.original.end, originalAnswered(conn));
    const ahead = healthy.some((s) => s.reply.end > answered);
    if (ahead) conn.replyAheadSince ??= now;
    else conn.replyAheadSince = undefined;
    const behind =
      conn.client.end > conn.originalAckOffset &&
      healthy.some((s) => Math.max(0, s.sndUna) > conn.originalAckOffset);
    if (behind) conn.ackBehindSince ??= now;
    else conn.ackBehindSince = undefined;
    if (conn.client.end > conn.originalAckOffset) conn.unackedSince ??= now;
    else conn.unackedSince = undefined;
    const floor = this.stallClockFloor;
    if (conn.replyAheadSince !== undefined && conn.replyAheadSince < floor) conn.replyAheadSince = floor;
    if (conn.ackBehindSince !== undefined && conn.ackBehindSince < floor) conn.ackBehindSince = floor;
    if (conn.unackedSince !== undefined && conn.unackedSince < floor) conn.unackedSince = floor;
    const silentAny = this.clock.silentMs(this.lastFrom, now);
    const silentData = this.clock.silentMs(this.lastDataFrom, now);
    const suspectMs = this.stallSuspectMs();
    const budget = this.hangBudgetMs();
    const stalls: Array<[number | undefined, number, number, string]> = [
      [conn.replyAheadSince, budget, silentData, "the original stopped answering what the replicas answer"],
      [
        conn.ackBehindSince,
        budget,
        silentAny,
        "the original stopped acknowledging what the replicas acknowledge",
      ],
      // Only a suspicion (a probe decides): it needs no replica to have answered yet, so an
      // engine running behind its replicas does not delay the detection.
      [conn.unackedSince, Infinity, silentAny, "the original stopped acknowledging the client's bytes"],
    ];
    let suspicion: Verdict = { verdict: "none" };
    for (const [since, limit, silent, reason] of stalls) {
      if (since === undefined) continue;
      // A health check answered since the stall began: the application is alive, the stall is
      // counted again from the check (a slow request is not a hung service).
      const hung = Math.max(since, checkedAt);
      if (now - hung >= limit && silent >= limit)
        return { verdict: "failed", reason, conn, afterMs: now - since, by: "hang budget" };
      if (limit !== Infinity) want(Math.max(hung + limit, now + Math.max(0, limit - silent)));
      // A suspicion the last probe already answered is not asked again; nor, to bound what probes
      // cost a slow original, more often than every STALL_PROBE_INTERVAL_MS.
      if (!f.probes || since <= aliveAt) continue;
      const allowed = this.lastStallProbeAt + STALL_PROBE_INTERVAL_MS;
      if (now - since >= suspectMs && silentAny >= suspectMs && now >= allowed) {
        if (suspicion.verdict === "none")
          suspicion = { verdict: "suspect", reason, conn, afterMs: now - since };
      } else {
        want(Math.max(since + suspectMs, now + Math.max(0, suspectMs - silentAny), allowed));
      }
    }
    return suspicion;
  }

  /**
   * A spliced connection's new original (the promoted replica) closed it: its FIN waits while
   * another replica, caught up with the client's bytes, keeps the connection open, up to finHoldMs
   * after the last progress (then it goes out). Still open after closeMismatchMs: the current
   * original is suspected (probe). If it fails over, the connection is reset: never closed as if
   * the service had finished.
   */
  private splicedClose(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    now: number,
    aliveAt: number,
    want: (t: number) => void,
  ): Verdict {
    const since = conn.spliceFinSince;
    if (since === undefined || conn.spliceFinSent || conn.spliceFinReleased) return { verdict: "none" };
    const other = survivor(conn, s);
    if (!other) {
      this.releaseSplicedFin(conn, s);
      return { verdict: "none" };
    }
    const release = Math.max(since, other.lastProgressAt) + this.finHoldMs;
    if (now >= release) {
      conn.spliceFinReleased = true;
      this.releaseSplicedFin(conn, s);
      return { verdict: "none" };
    }
    want(release);
    const f = this.failure;
    const caughtUp = Math.max(0, other.sndUna) >= Math.max(0, s.sndUna);
    if (!caughtUp || since <= aliveAt) return { verdict: "none" };
    if (now - since < f.closeMismatchMs) {
      want(since + f.closeMismatchMs);
      return { verdict: "none" };
    }
    const reason = `${CLOSE_ALONE} (closed after a promotion)`;
    if (f.probes) return { verdict: "suspect", reason, conn, afterMs: now - since };
    return { verdict: "failed", reason, conn, afterMs: now - since, by: "close alone" };
  }
}

/** Reply bytes the client acknowledged (its FIN excluded): the original sent at least those. */
export function originalAnswered(conn: ReplicatedConnection): number {
  const fin = conn.originalFinOffset !== undefined && conn.clientAckOffset > conn.originalFinOffset ? 1 : 0;
  return conn.clientAckOffset - fin;
}
