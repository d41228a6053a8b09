// Capture-gap reconciliation. When one side acknowledges bytes the capture never delivered, those
// bytes cannot reach the replicas (client direction: their state would silently differ, so their
// shadows are given up) or cannot be verified (original direction: marked unverified). With
// several capture channels the other channel may only be behind, so an acknowledgement beyond
// what was captured is a suspicion until that channel delivered packets captured after it (plus a
// slack for a sender's retransmission to fill the hole) or gapConfirmMs passed.
import type { Buffers } from "./buffers.js";
import type { CaptureClock } from "./capture-clock.js";
import type { GapSuspect, ReplicatedConnection } from "./connection.js";
import type { Lifecycle } from "./lifecycle.js";
import type { Outbox } from "./outbox.js";
import type { ShadowSender } from "./shadow-sender.js";
import type { EngineConfig } from "./types.js";

export type Direction = "client" | "original";

export class CaptureGaps {
  /** Connections a gap was confirmed on. */
  count = 0;

  constructor(
    private readonly config: Pick<EngineConfig, "gapSlackMs" | "gapConfirmMs">,
    private readonly clock: CaptureClock,
    private readonly lifecycle: Lifecycle,
    private readonly sender: ShadowSender,
    private readonly buffers: Buffers,
    private readonly outbox: Outbox,
  ) {}

  /**
   * Something was acknowledged that we have not captured. With capture times it is only a
   * suspicion (see check()); with none (one ordered stream), it is a gap now.
   */
  suspect(conn: ReplicatedConnection, direction: Direction, acked: number, now: number): void {
    if (conn.captureGap) return;
    const atUs = this.clock.captureUs;
    if (atUs === undefined) {
      this.detected(conn, direction, acked, capturedUpTo(conn, direction));
      return;
    }
    const cur = conn.gapSuspects[direction];
    const suspect: GapSuspect = { offset: acked, atUs, since: now };
    // Each suspicion keeps its own capture time and start: an acknowledgement that runs ahead
    // of its channel again and again (the other channel is behind, under load) must not inherit
    // the first one's age, or a steady skew would confirm a gap that is not there.
    if (!cur) conn.gapSuspects[direction] = suspect;
    else if (acked > (cur.next?.offset ?? cur.offset)) cur.next = suspect;
  }

  /** Clears suspicions the bytes arrived for; confirms the others. Returns the next deadline. */
  check(conn: ReplicatedConnection, now: number): number | undefined {
    let next: number | undefined;
    for (const direction of ["client", "original"] as const) {
      const have = capturedUpTo(conn, direction);
      let s = conn.gapSuspects[direction];
      // Resolved: the newest acknowledgement beyond it is watched now, if it is still ahead.
      while (s && (have >= s.offset || conn.captureGap)) s = conn.captureGap ? undefined : s.next;
      conn.gapSuspects[direction] = s;
      if (!s) continue;
      const watermark = this.clock.watermarkOf(direction);
      // Slack: packets captured on different CPUs can reach one ring slightly out of time order.
      if (watermark >= s.atUs + this.config.gapSlackMs * 1000 || now - s.since >= this.config.gapConfirmMs) {
        conn.gapSuspects[direction] = undefined;
        this.detected(conn, direction, s.offset, have);
      } else {
        const d = s.since + this.config.gapConfirmMs;
        if (next === undefined || d < next) next = d;
      }
    }
    return next;
  }

  private detected(conn: ReplicatedConnection, direction: Direction, acked: number, captured: number): void {
    conn.captureGap = true;
    this.count++;
    this.outbox.event({ type: "capture-gap", conn: conn.id, direction, acked, captured });
    for (const s of conn.shadows.values()) {
      if (!s.live) continue;
      if (direction === "client") {
        // Client bytes the replicas can never get: their state would silently differ.
        this.lifecycle.setStatus(conn, s, "lagging", "client bytes lost to capture", s.compared);
        this.sender.sendRst(conn, s);
        this.lifecycle.closeShadow(conn, s);
      } else {
        this.lifecycle.setStatus(conn, s, "unverified", "original's reply bytes lost to capture", s.compared);
      }
    }
    this.buffers.account(conn);
  }
}

/** The stream units of `direction` captured so far (data, +1 once its FIN is in). */
export function capturedUpTo(conn: ReplicatedConnection, direction: Direction): number {
  return direction === "client"
    ? conn.client.end + (conn.clientFinReady ? 1 : 0)
    : conn.original.end + (conn.originalFinOffset === conn.original.end ? 1 : 0);
}
