// One shadow conversation: the engine's TCP conversation with one replica on behalf of one client
// connection. Toward the replica the engine is the client's stand-in sender (it delivers the
// client's bytes reliably, respecting the replica's window, retransmitting on its own timer); from
// the replica it is the receiver (it collects the replica's reply bytes for comparison and
// acknowledges them only as far as the client acknowledged the original's bytes at the same offsets).
import { ByteStream } from "./byte-stream.js";
import { EchoTimer } from "./rtt.js";
import type { ReplicaInfo, ShadowStatus } from "./types.js";

export type ShadowState = "syn-sent" | "open" | "closed";

export class ShadowConversation {
  state: ShadowState = "syn-sent";
  status: ShadowStatus = "healthy";
  reason: string | undefined;

  // --- sending the client's stream (offsets in the client stream; the SYN is offset -1) ---
  /** Acknowledged by the replica: -1 until the SYN is acknowledged. */
  sndUna = -1;
  /** Next client-stream offset to send. */
  sndNxt = 0;
  finSent = false;
  finAcked = false;
  /** The client reset the connection while this replica had every byte but had not answered
   * all of them yet: its RST waits until it has (it would discard what its application has not
   * read), at most SHADOW_CLOSE_MS. */
  resetPending = false;
  /** Usable window in bytes (already scaled). */
  sndWnd = 0;
  /** Replica's window scale shift (0 when not negotiated). */
  wscale = 0;
  /** Largest payload per segment toward this replica. */
  maxPayload = 536;
  tsOk = false;
  sackOk = false;

  // --- retransmission (RFC 6298) ---
  srttMs: number | undefined;
  rttvarMs = 0;
  rtoMs: number;
  rtoDeadline: number | undefined;
  backoffs = 0;
  rttProbe: { end: number; at: number } | undefined;
  /** Our segments' TSvals (the client's, relayed) until the replica echoes them (path RTT). */
  readonly echoTimer = new EchoTimer();
  dupAcks = 0;
  recoverPoint: number | undefined;
  synTries = 0;
  /** Window advertised to the replica last, to detect when a window update is owed. */
  lastWindowSent = 0;
  /** The replica's last window field (unscaled). */
  lastWindow = 0;
  /** An ACK must go out at the next flush even if no data does (duplicate, hole, window). */
  ackOwed = false;

  // --- receiving the replica's reply (offsets in the reply stream) ---
  replicaIsn: number | undefined;
  readonly reply: ByteStream;
  replicaFinOffset: number | undefined;
  replicaRst = false;
  tsRecent: number | undefined;
  /** Reply offset acknowledged to the replica (data bytes, +1 once its FIN is acknowledged). */
  rcvAcked = 0;
  /** When the replica last acknowledged more of the client's bytes. */
  caughtUpAt = 0;
  /** When the replica's reply stream last advanced (a held close waits while it does). */
  lastProgressAt = 0;
  /** Reply bytes compared with the original's so far. */
  compared = 0;

  // --- accounting ---
  bytesSent = 0;
  segmentsSent = 0;
  retransmits = 0;
  replyBytes = 0;
  comparedBytes = 0;
  /** Reply bytes that differed from the original's where a tolerance excused it (HTTP Date). */
  toleratedBytes = 0;
  /** Reply bytes this shadow added to the engine's global total at the last accounting. */
  accountedGlobal = 0;
  /** Bytes (client backlog + reply) it added to its replica's total at the last accounting. */
  accountedReplica = 0;

  constructor(
    readonly replica: ReplicaInfo,
    initialRtoMs: number,
    maxOutOfOrder: number,
  ) {
    this.rtoMs = initialRtoMs;
    this.reply = new ByteStream(0, maxOutOfOrder);
  }

  /** Still exchanging segments with the replica. */
  get live(): boolean {
    return this.state !== "closed";
  }

  /** Its replies are still being checked against the original's. */
  get comparing(): boolean {
    return this.live && this.status === "healthy";
  }

  /** Client bytes this shadow still needs held (not acknowledged by the replica). */
  clientBacklog(clientEnd: number): number {
    return Math.max(0, clientEnd - Math.max(0, this.sndUna));
  }

  /** Feeds one RTT sample (ms) into SRTT/RTTVAR and recomputes the RTO. */
  rttSample(ms: number, minMs: number, maxMs: number): void {
    if (this.srttMs === undefined) {
      this.srttMs = ms;
      this.rttvarMs = ms / 2;
    } else {
      this.rttvarMs = 0.75 * this.rttvarMs + 0.25 * Math.abs(this.srttMs - ms);
      this.srttMs = 0.875 * this.srttMs + 0.125 * ms;
    }
    this.rtoMs = Math.min(maxMs, Math.max(minMs, this.srttMs + 4 * this.rttvarMs));
  }
}
