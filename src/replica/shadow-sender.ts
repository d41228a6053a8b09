// The shadow sender: the client's stand-in toward each replica (mechanism, like a TCP socket's
// send half). It delivers the client's byte stream reliably within the replica's window (RFC 6298
// retransmission timer, fast retransmit on three duplicate ACKs, go-back-N on a timeout, zero
// window probes), copies the client's SYN options and timestamps, and acknowledges the replica's
// reply bytes only as far as the client acknowledged the original's at the same offsets (so a
// replica never runs ahead of what the client has). What to make of a replica that stops
// answering is not its business: it reports it (RtoOutcome) and the engine decides.
import { ACK, FIN, PSH, RST, SYN, findOption, type TcpOption, type TcpSegment } from "../wire/tcp.js";
import { seqAdd } from "../wire/seq.js";
import { assert } from "./assert.js";
import type { CaptureClock } from "./capture-clock.js";
import type { ReplicatedConnection } from "./connection.js";
import { copyOptions, toOffset, toSeq } from "./offsets.js";
import type { Outbox } from "./outbox.js";
import type { ReplicaSet } from "./replica-set.js";
import type { RttTracker } from "./rtt.js";
import type { ShadowConversation } from "./shadow.js";
import type { EngineConfig } from "./types.js";

/** Backoffs without an acknowledgement after which a shadow is given up. */
export const MAX_BACKOFFS = 12;

/** What a retransmission timeout found (the engine acts on it). */
export interface RtoOutcome {
  /** Evidence that the replica itself stopped answering (probed by failure detection). */
  suspect?: string;
  /** The shadow is given up: marked lagging with this reason, closed, RST first if `rst`. */
  giveUp?: { reason: string; offset: number; rst: boolean };
}

export class ShadowSender {
  constructor(
    private readonly config: EngineConfig,
    private readonly outbox: Outbox,
    private readonly replicas: ReplicaSet,
    private readonly clock: CaptureClock,
    private readonly rtt: RttTracker,
  ) {}

  /** Bytes (or a FIN, or a window probe) sent and not acknowledged: the timer must run. */
  outstanding(conn: ReplicatedConnection, s: ShadowConversation): boolean {
    return (
      s.sndNxt > s.sndUna || (s.finSent && !s.finAcked) || (s.sndWnd === 0 && s.sndNxt < conn.client.end)
    );
  }

  /** Reply units we may acknowledge to the replica: what the client acknowledged, clamped to what
   * the replica has really sent (contiguous, plus its FIN). */
  ackFor(conn: ReplicatedConnection, s: ShadowConversation): number {
    const received =
      s.reply.end + (s.replicaFinOffset !== undefined && s.replicaFinOffset === s.reply.end ? 1 : 0);
    return Math.max(s.rcvAcked, Math.min(conn.clientAckOffset, received));
  }

  private segmentTo(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    seq: number,
    flags: number,
    payload: Uint8Array,
    extraOptions: TcpOption[] = [],
  ): TcpSegment {
    const options: TcpOption[] = [];
    if (s.tsOk && conn.lastClientTsval !== undefined) {
      options.push(
        { kind: "nop" },
        { kind: "nop" },
        { kind: "timestamp", tsval: conn.lastClientTsval, tsecr: s.tsRecent ?? 0 },
      );
    }
    options.push(...extraOptions);
    let ack = 0;
    if (s.replicaIsn !== undefined) {
      const a = this.ackFor(conn, s);
      s.rcvAcked = a;
      ack = toSeq(a, s.replicaIsn);
      flags |= ACK;
    }
    s.lastWindowSent = conn.lastClientWindow;
    return this.towardReplica(conn, s, { seq, ack, flags, window: conn.lastClientWindow, options, payload });
  }

  /** A segment of the shadow conversation, from the replication address to the replica. */
  private towardReplica(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    f: Pick<TcpSegment, "seq" | "ack" | "flags" | "window" | "options" | "payload">,
  ): TcpSegment {
    return {
      tos: 0,
      id: this.outbox.nextIpId(),
      dontFragment: true,
      ttl: 64,
      src: this.config.replicationAddress,
      dst: s.replica.address,
      ipOptions: new Uint8Array(0),
      srcPort: conn.port!,
      dstPort: this.config.port,
      urgent: 0,
      ...f,
    };
  }

  private emit(s: ShadowConversation, segment: TcpSegment): void {
    const r = this.replicas.get(s.replica.id);
    s.segmentsSent++;
    if (r) r.segmentsSent++;
    this.outbox.send(segment, "replica");
  }

  sendSyn(conn: ReplicatedConnection, s: ShadowConversation, now: number): void {
    s.synTries++;
    s.rttProbe = s.synTries === 1 ? { end: 0, at: now } : undefined;
    // The client's own SYN options: the replica negotiates exactly what the original did.
    const seg = this.towardReplica(conn, s, {
      seq: conn.clientIsn,
      ack: 0,
      flags: SYN,
      window: conn.clientSynWindow,
      options: copyOptions(conn.clientSynOptions),
      payload: new Uint8Array(0),
    });
    this.emit(s, seg);
    s.rtoDeadline = now + s.rtoMs;
  }

  sendAck(conn: ReplicatedConnection, s: ShadowConversation): void {
    const sack: TcpOption[] = [];
    if (s.sackOk && s.replicaIsn !== undefined) {
      const ranges = s.reply.outOfOrderRanges().slice(0, s.tsOk ? 3 : 4);
      if (ranges.length > 0) {
        const isn = s.replicaIsn;
        sack.push(
          { kind: "nop" },
          { kind: "nop" },
          { kind: "sack", blocks: ranges.map(([a, b]) => [toSeq(a, isn), toSeq(b, isn)]) },
        );
      }
    }
    const seq = toSeq(s.sndNxt + (s.finSent ? 1 : 0), conn.clientIsn);
    this.emit(s, this.segmentTo(conn, s, seq, 0, new Uint8Array(0), sack));
  }

  sendRst(conn: ReplicatedConnection, s: ShadowConversation): void {
    if (conn.port === undefined) return;
    const seq =
      s.state === "syn-sent"
        ? seqAdd(conn.clientIsn, 1)
        : toSeq(s.sndNxt + (s.finSent ? 1 : 0), conn.clientIsn);
    const seg = this.segmentTo(conn, s, seq, RST, new Uint8Array(0));
    this.emit(s, seg);
  }

  /**
   * What a flush owes this shadow: client bytes within the window, then an ACK if one is owed
   * (or the reply advanced and no data carried it), and the persist timer of a zero window.
   */
  flush(conn: ReplicatedConnection, s: ShadowConversation, now: number): void {
    if (s.state !== "open") return;
    const before = s.segmentsSent;
    this.trySend(conn, s, now);
    const sentData = s.segmentsSent !== before;
    if (s.ackOwed || (!sentData && this.ackFor(conn, s) > s.rcvAcked)) this.sendAck(conn, s);
    s.ackOwed = false;
    if (s.sndWnd === 0 && s.sndNxt < conn.client.end && s.rtoDeadline === undefined) {
      s.rtoDeadline = now + s.rtoMs; // persist timer: probe the zero window
    }
  }

  /** Sends client bytes the replica has not been sent yet, within its window; then the FIN. */
  private trySend(conn: ReplicatedConnection, s: ShadowConversation, now: number): void {
    if (s.state !== "open") return;
    const r = this.replicas.get(s.replica.id);
    const limit = Math.max(0, s.sndUna) + s.sndWnd;
    const end = conn.client.end;
    while (s.sndNxt < end && s.sndNxt < limit) {
      const len = Math.min(s.maxPayload, end - s.sndNxt, limit - s.sndNxt);
      const payload = conn.client.read(s.sndNxt, s.sndNxt + len);
      const last = s.sndNxt + len === end;
      this.emit(s, this.segmentTo(conn, s, toSeq(s.sndNxt, conn.clientIsn), last ? PSH : 0, payload));
      this.echoSent(conn, s, now);
      if (!s.rttProbe) s.rttProbe = { end: s.sndNxt + len, at: now };
      s.sndNxt += len;
      s.bytesSent += len;
      if (r) r.bytesSent += len;
      if (s.rtoDeadline === undefined) s.rtoDeadline = now + s.rtoMs;
    }
    if (conn.clientFinReady && s.sndNxt === conn.clientFinOffset && !s.finSent) {
      s.finSent = true;
      this.emit(s, this.segmentTo(conn, s, toSeq(s.sndNxt, conn.clientIsn), FIN, new Uint8Array(0)));
      this.echoSent(conn, s, now);
      if (s.rtoDeadline === undefined) s.rtoDeadline = now + s.rtoMs;
    }
    this.check(conn, s);
  }

  private retransmitOne(conn: ReplicatedConnection, s: ShadowConversation, now: number): void {
    const r = this.replicas.get(s.replica.id);
    const from = Math.max(0, s.sndUna);
    const to = Math.min(s.sndNxt, conn.client.end, from + s.maxPayload);
    s.rttProbe = undefined; // Karn: no RTT samples from retransmitted data
    this.echoResent(conn, s);
    s.retransmits++;
    if (r) r.retransmits++;
    if (to > from) {
      this.emit(s, this.segmentTo(conn, s, toSeq(from, conn.clientIsn), PSH, conn.client.read(from, to)));
    } else if (s.finSent && !s.finAcked && conn.clientFinOffset !== undefined) {
      this.emit(
        s,
        this.segmentTo(conn, s, toSeq(conn.clientFinOffset, conn.clientIsn), FIN, new Uint8Array(0)),
      );
    }
    s.rtoDeadline = now + s.rtoMs;
  }

  /** The retransmission timer of `s` fired. */
  onRto(conn: ReplicatedConnection, s: ShadowConversation, now: number): RtoOutcome {
    s.rtoDeadline = undefined;
    const f = this.config.failure;
    if (s.state === "syn-sent") {
      if (s.synTries > this.config.maxSynRetries)
        return { giveUp: { reason: "did not answer the SYN", offset: 0, rst: false } };
      s.rtoMs = Math.min(this.config.rto.maxMs, s.rtoMs * 2);
      const suspect = s.synTries > f.replicaProbeBackoffs;
      this.sendSyn(conn, s, now);
      return suspect ? { suspect: "does not answer SYNs" } : {};
    }
    if (s.state !== "open" || !this.outstanding(conn, s)) return {};
    s.backoffs++;
    s.rtoMs = Math.min(this.config.rto.maxMs, s.rtoMs * 2);
    const outcome: RtoOutcome =
      s.backoffs >= f.replicaProbeBackoffs ? { suspect: "stopped acknowledging" } : {};
    if (s.backoffs > MAX_BACKOFFS) {
      outcome.giveUp = { reason: "stopped acknowledging", offset: s.compared, rst: true };
      return outcome;
    }
    if (s.sndWnd === 0 && s.sndNxt >= Math.max(0, s.sndUna)) {
      // Zero-window probe: an ACK one below what it expects draws an ACK with its window.
      this.emit(
        s,
        this.segmentTo(conn, s, toSeq(Math.max(0, s.sndUna) - 1, conn.clientIsn), 0, new Uint8Array(0)),
      );
      s.rtoDeadline = now + s.rtoMs;
      return outcome;
    }
    // Go back to the first unacknowledged byte (RFC 6298 5.4) and resend what the window allows.
    s.recoverPoint = undefined;
    s.dupAcks = 0;
    s.rttProbe = undefined;
    this.echoResent(conn, s);
    s.retransmits++;
    const r = this.replicas.get(s.replica.id);
    if (r) r.retransmits++;
    s.sndNxt = Math.max(0, s.sndUna);
    if (s.finSent && !s.finAcked) s.finSent = false;
    this.trySend(conn, s, now);
    if (s.rtoDeadline === undefined && this.outstanding(conn, s)) s.rtoDeadline = now + s.rtoMs;
    return outcome;
  }

  /** The replica's SYN-ACK: the shadow is open; what it negotiated is what we speak. */
  onSynAck(conn: ReplicatedConnection, s: ShadowConversation, seg: TcpSegment, now: number): void {
    s.replicaIsn = seg.seq;
    s.state = "open";
    s.sndUna = 0;
    s.synTries = 0;
    s.backoffs = 0;
    s.rtoDeadline = undefined;
    if (s.rttProbe) {
      this.rttSample(s, now - s.rttProbe.at);
      this.rtt.replicaSample(s.replica.id, "handshake", this.clock.nowUs(now) - s.rttProbe.at * 1000, now);
      s.rttProbe = undefined;
    }
    const ws = findOption(seg.options, "wscale");
    s.wscale = ws && conn.clientOffered("wscale") ? Math.min(14, ws.shift) : 0;
    s.sackOk = !!findOption(seg.options, "sack-permitted") && conn.clientOffered("sack-permitted");
    const ts = findOption(seg.options, "timestamp");
    s.tsOk = !!ts && conn.clientOffered("timestamp");
    if (ts) s.tsRecent = ts.tsval;
    const mss = findOption(seg.options, "mss")?.value ?? 536;
    s.maxPayload = Math.max(1, Math.min(mss, this.config.mtu - 40) - (s.tsOk ? 12 : 0));
    s.sndWnd = seg.window; // never scaled in a SYN
    s.ackOwed = true;
  }

  /** The replica's acknowledgement and window: new bytes acknowledged ("advanced"), or none, or
   * "ignored" (it acknowledges what was never sent). */
  onAck(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    seg: TcpSegment,
    now: number,
  ): "advanced" | "same" | "ignored" {
    const r = this.replicas.get(s.replica.id);
    const ackOff = toOffset(seg.ack, conn.clientIsn, Math.max(0, s.sndUna));
    const maxAckable = s.sndNxt + (s.finSent ? 1 : 0);
    if (ackOff > maxAckable) return "ignored"; // acknowledges what we never sent
    const oldWnd = s.sndWnd;
    // An older acknowledgement (reordered) does not set the window: its right edge is stale and
    // could let us send past what the replica offers now.
    if (ackOff >= Math.max(0, s.sndUna)) s.sndWnd = seg.window << s.wscale;
    // A zero-window probe answered (or the window reopening) proves the replica is there: its
    // backoffs are not unanswered retransmissions (Linux resets its probe count on any ACK).
    if (ackOff >= Math.max(0, s.sndUna) && (oldWnd === 0 || s.sndWnd === 0)) s.backoffs = 0;
    let advanced = false;
    if (ackOff > s.sndUna) {
      const acked = Math.min(ackOff, conn.clientFinOffset ?? Infinity) - Math.max(0, s.sndUna);
      if (r) r.bytesAcked += Math.max(0, acked);
      s.sndUna = ackOff;
      s.caughtUpAt = now;
      if (s.finSent && conn.clientFinOffset !== undefined && ackOff === conn.clientFinOffset + 1)
        s.finAcked = true;
      if (s.rttProbe && ackOff >= s.rttProbe.end) {
        // The retransmission timer runs on the engine's clock (it includes the engine's own
        // lag, which is what the timer has to cover); the histogram wants the path's RTT: the
        // acknowledgement's capture time, on the same clock as the engine's.
        this.rttSample(s, now - s.rttProbe.at);
        this.rtt.replicaSample(s.replica.id, "data", this.clock.nowUs(now) - s.rttProbe.at * 1000, now);
        s.rttProbe = undefined;
      }
      s.dupAcks = 0;
      s.backoffs = 0;
      if (s.recoverPoint !== undefined && ackOff < s.recoverPoint) {
        this.retransmitOne(conn, s, now); // partial ACK: the next hole is lost too
      } else {
        s.recoverPoint = undefined;
      }
      s.rtoDeadline = this.outstanding(conn, s) ? now + s.rtoMs : undefined;
      advanced = true;
    } else if (
      ackOff === s.sndUna &&
      seg.payload.length === 0 &&
      !(seg.flags & FIN) &&
      s.sndWnd === oldWnd &&
      // Data or the FIN in flight: an answer to a window probe is no duplicate ACK.
      (s.sndNxt > Math.max(0, s.sndUna) || (s.finSent && !s.finAcked))
    ) {
      s.dupAcks++;
      if (s.dupAcks === 3 && s.recoverPoint === undefined) {
        s.recoverPoint = s.sndNxt;
        this.retransmitOne(conn, s, now);
      }
    }
    this.check(conn, s);
    return advanced ? "advanced" : "same";
  }

  /** Times the replica's echo of the TSval (the client's, relayed) on a segment just sent. */
  private echoSent(conn: ReplicatedConnection, s: ShadowConversation, now: number): void {
    if (s.tsOk && conn.lastClientTsval !== undefined)
      s.echoTimer.sent(conn.lastClientTsval, now * 1000, true);
  }

  /** A retransmission carries the client's TSval again, maybe the one a timing waits for: which
   * copy the echo answers is then unknown, so that timing ends without a sample. */
  private echoResent(conn: ReplicatedConnection, s: ShadowConversation): void {
    if (conn.lastClientTsval !== undefined) s.echoTimer.forget(conn.lastClientTsval);
  }

  private rttSample(s: ShadowConversation, ms: number): void {
    s.rttSample(ms, this.config.rto.minMs, this.config.rto.maxMs);
    const r = this.replicas.get(s.replica.id);
    if (r) {
      r.rttSamples++;
      r.lastSrttMs = s.srttMs;
      r.minRttMs = Math.min(r.minRttMs ?? Infinity, ms);
    }
  }

  /** The sender's invariants (O(1)): what was sent lies within what the client sent. */
  check(conn: ReplicatedConnection, s: ShadowConversation): void {
    assert(
      s.sndUna >= -1 && s.sndUna <= s.sndNxt + (s.finSent ? 1 : 0),
      () => `shadow ${s.replica.id} of ${conn.id}: sndUna ${s.sndUna} beyond sndNxt ${s.sndNxt}`,
    );
    assert(
      s.sndNxt <= conn.client.end,
      () => `shadow ${s.replica.id} of ${conn.id}: sent ${s.sndNxt} of ${conn.client.end} client bytes`,
    );
    assert(
      !s.finSent || s.sndNxt === conn.clientFinOffset,
      () =>
        `shadow ${s.replica.id} of ${conn.id}: FIN sent at ${s.sndNxt}, client's at ${conn.clientFinOffset}`,
    );
    assert(
      !s.finAcked || s.finSent,
      () => `shadow ${s.replica.id} of ${conn.id}: FIN acknowledged, never sent`,
    );
  }
}
