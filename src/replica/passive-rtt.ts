// Passive RTT of every path (observability; detection keeps its own estimators): the client
// path from the original's data and SYN-ACK to the client's acknowledgements, the original path
// from the client's data and the NATed SYN to the original's, each replica path from the shadow
// sender's segments (shadow-sender.ts). Two estimators per path: sequence/ACK matching (Karn's
// rule, kind "data", and "handshake") and TCP timestamp echoes (kind "timestamp"). Times are
// capture times where there are any; samples go to RttTracker's histograms.
import { FIN, SYN, type TcpOption, type TcpSegment } from "../wire/tcp.js";
import type { CaptureClock } from "./capture-clock.js";
import type { ReplicatedConnection } from "./connection.js";
import type { RttTracker } from "./rtt.js";
import type { ShadowConversation } from "./shadow.js";

type Timestamp = Extract<TcpOption, { kind: "timestamp" }>;

/** Does this segment call for an answer from its receiver (timestamp-echo timing)? */
function answerable(seg: TcpSegment): boolean {
  return seg.payload.length > 0 || (seg.flags & (SYN | FIN)) !== 0;
}

export class PassiveRtt {
  constructor(
    private readonly rtt: RttTracker,
    private readonly clock: CaptureClock,
    /** Whether any replica is configured (the handshake's degradation class). */
    private readonly anyReplica: () => boolean,
  ) {}

  /** The client's timestamps: its echo of the original's TSval, and its own TSval to time. */
  clientTimestamps(conn: ReplicatedConnection, seg: TcpSegment, ts: Timestamp, now: number): void {
    // After a splice the client echoes our translated TSvals and the original is gone.
    if (conn.spliced) return;
    const at = this.clock.nowUs(now);
    const back = conn.echoToClient.echoed(ts.tsecr, at);
    if (back !== undefined) this.rtt.clientSample("timestamp", back, now, conn.shadows.size > 0);
    const early = conn.echoToOriginal.sent(ts.tsval, at, answerable(seg));
    if (early !== undefined) this.rtt.originalSample("timestamp", early, now);
  }

  /** The client's ACK of the SYN-ACK. */
  clientHandshakeAck(conn: ReplicatedConnection, now: number): void {
    if (typeof conn.synAckAtUs === "number")
      this.rtt.clientSample("handshake", this.clock.nowUs(now) - conn.synAckAtUs, now, this.anyReplica());
    else if (conn.synAckAtUs === undefined && this.clock.captureUs !== undefined)
      conn.handshakeAckAtUs = this.clock.captureUs;
    conn.synAckAtUs = null;
  }

  /** The client acknowledged the original's stream up to `ackOff`. */
  clientAck(conn: ReplicatedConnection, ackOff: number, now: number): void {
    const rtt = conn.rttToClient.acked(ackOff, this.clock.nowUs(now));
    if (rtt !== undefined) this.rtt.clientSample("data", rtt, now, conn.shadows.size > 0);
  }

  /** The client sent [off, off + length) (timed until the original acknowledges it). */
  clientData(conn: ReplicatedConnection, off: number, length: number, now: number): void {
    const early = conn.rttToOriginal.sent(off, off + length, this.clock.nowUs(now));
    if (early !== undefined) this.rtt.originalSample("data", early, now);
  }

  /**
   * The original's SYN-ACK: the original path's handshake (from the NATed SYN) and the client's
   * (until the client's ACK, which another channel may have delivered first). Returns the
   * original path's handshake RTT (ms), if it was timed.
   */
  originalSynAck(conn: ReplicatedConnection, now: number): number | undefined {
    let ms: number | undefined;
    const syn = conn.natSynAt;
    if (syn) {
      conn.natSynAt = undefined;
      const captureUs = this.clock.captureUs;
      ms =
        syn.captureUs !== undefined && captureUs !== undefined
          ? (captureUs - syn.captureUs) / 1000
          : now - syn.at;
      this.rtt.originalSample("handshake", ms * 1000, now);
    }
    if (conn.handshakeAckAtUs !== undefined && conn.synAckAtUs === null) {
      // The client's ACK was handled first (another capture channel): timed now.
      this.rtt.clientSample(
        "handshake",
        conn.handshakeAckAtUs - this.clock.nowUs(now),
        now,
        this.anyReplica(),
      );
      conn.handshakeAckAtUs = undefined;
    } else {
      conn.synAckAtUs = conn.synAckAtUs === undefined ? this.clock.nowUs(now) : null;
    }
    return ms;
  }

  /** The original's timestamps: its echo of the client's TSval, and its own TSval to time. */
  originalTimestamps(conn: ReplicatedConnection, seg: TcpSegment, ts: Timestamp, now: number): void {
    const at = this.clock.nowUs(now);
    const back = conn.echoToOriginal.echoed(ts.tsecr, at);
    if (back !== undefined) this.rtt.originalSample("timestamp", back, now);
    const early = conn.echoToClient.sent(ts.tsval, at, answerable(seg));
    if (early !== undefined) this.rtt.clientSample("timestamp", early, now, conn.shadows.size > 0);
  }

  /** The original acknowledged the client's stream up to `ackOff`. */
  originalAck(conn: ReplicatedConnection, ackOff: number, now: number): void {
    const rtt = conn.rttToOriginal.acked(ackOff, this.clock.nowUs(now));
    if (rtt !== undefined) this.rtt.originalSample("data", rtt, now);
  }

  /** The original sent [off, off + length) (timed until the client acknowledges it). */
  originalData(conn: ReplicatedConnection, off: number, length: number, now: number): void {
    const early = conn.rttToClient.sent(off, off + length, this.clock.nowUs(now));
    if (early !== undefined) this.rtt.clientSample("data", early, now, conn.shadows.size > 0);
  }

  /** A replica's echo of a TSval the shadow sender relayed. */
  replicaEcho(s: ShadowConversation, tsecr: number, now: number): void {
    const rtt = s.echoTimer.echoed(tsecr, this.clock.nowUs(now));
    if (rtt !== undefined) this.rtt.replicaSample(s.replica.id, "timestamp", rtt, now);
  }
}
