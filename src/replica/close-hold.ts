// The close hold. The kernel path drops the original's FIN and RST (nft "original-close-held");
// the engine releases them to the client once every replica still comparing closed the same way
// at the same offset: a normal close of the service. A replica that does not is diverged (it
// closed elsewhere, or reset where the original closed) or, when the hold runs out, marked as
// not having closed with the original. A close the replicas do not share is also the first
// evidence that the original died (failure-detector.ts reads `held`).
import type { TcpSegment } from "../wire/tcp.js";
import type { ReplicatedConnection } from "./connection.js";
import type { Lifecycle } from "./lifecycle.js";
import type { Outbox } from "./outbox.js";
import type { ShadowSender } from "./shadow-sender.js";

export class CloseHold {
  /** Holds that ran out (finHoldMs after the last progress of a replica it waited for). */
  timeouts = 0;
  released = 0;

  constructor(
    private readonly finHoldMs: number,
    private readonly lifecycle: Lifecycle,
    private readonly sender: ShadowSender,
    private readonly outbox: Outbox,
  ) {}

  /** The original's FIN or RST (`view`: as the kernel path would have delivered it). */
  onOriginalClose(conn: ReplicatedConnection, kind: "fin" | "rst", view: TcpSegment, now: number): void {
    if (conn.held?.released && kind === "rst" && conn.held.kind === "fin") {
      // A reset after a close that was released: the original's kernel answering a segment that
      // came after its close (a client writing as the service closed, a late duplicate). It goes
      // to the client; the replicas finish on their own (they get the same bytes, and reset the
      // same way: expected now). Resetting their shadows here cut off bytes the original had
      // received (found by the simulator, seed 212).
      conn.held = { kind, segment: view, since: now, released: true };
      this.outbox.send(view, "client");
      // Over on the original's side: it lingers (the shadows go on meanwhile), then is deleted.
      this.lifecycle.markClosed(conn, now);
      return;
    } else if (conn.held?.released) {
      // A retransmission of what was released already (the client's ACK was lost): pass it on.
      this.outbox.send(view, "client");
    } else if (!conn.held || (kind === "rst" && conn.held.kind === "fin")) {
      conn.held = { kind, segment: view, since: conn.held?.since ?? now, released: false };
    }
    this.check(conn, now);
  }

  /**
   * The original's FIN/RST reaches the client only once every replica still comparing closed the
   * same way at the same offset (a normal close), or when the hold time runs out.
   */
  check(conn: ReplicatedConnection, now: number): void {
    const held = conn.held;
    if (!held || held.released) return;
    let waiting = false;
    for (const s of conn.shadows.values()) {
      if (!s.comparing && !(held.kind === "rst" && s.replicaRst)) continue;
      if (held.kind === "rst") {
        if (!s.replicaRst) waiting = true;
        continue;
      }
      if (s.replicaRst) {
        this.lifecycle.setStatus(conn, s, "diverged", "replica reset where the original closed", s.compared);
      } else if (s.replicaFinOffset === undefined) {
        waiting = true;
      } else if (s.replicaFinOffset !== conn.originalFinOffset) {
        this.lifecycle.setStatus(
          conn,
          s,
          "diverged",
          `closed at offset ${s.replicaFinOffset}, original at ${conn.originalFinOffset}`,
          Math.min(s.replicaFinOffset, conn.originalFinOffset ?? 0),
        );
      }
    }
    if (!waiting) this.release(conn, now, false);
  }

  /** A replica still sending toward its close is not a failure, only slower: the hold expires
   * finHoldMs after the last progress of any replica it waits for. */
  expire(conn: ReplicatedConnection, now: number, want: (t: number) => void): void {
    if (!conn.held || conn.held.released) return;
    let last = conn.held.since;
    for (const s of conn.shadows.values())
      if (s.comparing && s.lastProgressAt > last) last = s.lastProgressAt;
    const deadline = last + this.finHoldMs;
    if (now >= deadline) this.release(conn, now, true);
    else want(deadline);
  }

  private release(conn: ReplicatedConnection, now: number, timedOut: boolean): void {
    const held = conn.held;
    if (!held || held.released) return;
    if (timedOut) {
      this.timeouts++;
      for (const s of conn.shadows.values()) {
        // One that did close alike is not waited for: others are (it stays a faithful copy).
        const closedAlike =
          held.kind === "fin" ? s.replicaFinOffset === conn.originalFinOffset : s.replicaRst;
        if (s.comparing && !closedAlike)
          this.lifecycle.setStatus(
            conn,
            s,
            "diverged",
            `did not ${held.kind === "fin" ? "close" : "reset"} with the original`,
            s.compared,
          );
      }
    }
    held.released = true;
    this.released++;
    this.outbox.send(held.segment, "client");
    this.outbox.event({
      type: "close-released",
      conn: conn.id,
      kind: held.kind,
      heldMs: now - held.since,
      matched: !timedOut,
    });
    if (held.kind === "rst") {
      for (const s of conn.shadows.values()) {
        if (s.live) {
          this.sender.sendRst(conn, s);
          this.lifecycle.closeShadow(conn, s);
        }
      }
      this.lifecycle.markClosed(conn, now);
    }
    this.lifecycle.checkDone(conn, now);
  }
}
