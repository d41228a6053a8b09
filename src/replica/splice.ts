// The splice. At a promotion every open connection whose shadow on the promoted replica is a
// faithful copy (healthy, opened with the connection, no capture gap) continues on it: from then
// on the replica's bytes go to the client translated into the original's sequence space, with a
// TSval offset for PAWS and the window rescaled, starting with what the client has not
// acknowledged yet (sent at once, not after the replica's retransmission timer). Bytes at offsets
// the original had sent go out only once compared equal. Every other connection is reset toward
// the client, never spliced: a diverged or lagging copy would hand it corrupted bytes.
import { ACK, FIN, PSH, RST, type TcpOption, type TcpSegment } from "../wire/tcp.js";
import type { ConnectionTable } from "./connection-table.js";
import type { ReplicatedConnection } from "./connection.js";
import type { Lifecycle } from "./lifecycle.js";
import { seqDiff } from "../wire/seq.js";
import { toSeq } from "./offsets.js";
import type { Outbox } from "./outbox.js";
import type { ShadowConversation } from "./shadow.js";
import type { EngineConfig } from "./types.js";

/** Could connection `conn` continue on replica `id`'s shadow, byte-exact? */
export function canSplice(conn: ReplicatedConnection, id: string): boolean {
  const s = conn.shadows.get(id);
  return (
    s !== undefined &&
    s.state === "open" &&
    s.status === "healthy" &&
    !s.replicaRst &&
    // A replica that closed where the original did not is dying too (or wrong): not spliced.
    (s.replicaFinOffset === undefined || s.replicaFinOffset === conn.originalFinOffset) &&
    !conn.notPromotable.has(id) &&
    conn.originalIsn !== undefined &&
    s.replicaIsn !== undefined &&
    !conn.captureGap &&
    // Every byte the original is known to have sent (before its FIN, or acknowledged by the
    // client) must have been captured: the replica's bytes there were compared with nothing, and
    // the client may hold the original's (found by the simulator, seed 22 with a divergent
    // replica: a segment lost on the original's link, its FIN seen; the splice sent the
    // replica's different bytes).
    conn.original.end >= knownOriginalEnd(conn)
  );
}

/** The end of what the original is known to have sent: its FIN, the client's acknowledgement. */
export function knownOriginalEnd(conn: ReplicatedConnection): number {
  const acked =
    conn.clientAckOffset -
    (conn.originalFinOffset !== undefined && conn.clientAckOffset > conn.originalFinOffset ? 1 : 0);
  return Math.max(conn.original.end, conn.originalFinOffset ?? 0, acked);
}

/** Another replica still holding `conn` open (the caught-up one first). */
export function survivor(conn: ReplicatedConnection, s: ShadowConversation): ShadowConversation | undefined {
  let found: ShadowConversation | undefined;
  for (const x of conn.shadows.values()) {
    if (x === s || !x.live || x.replicaRst || x.replicaFinOffset !== undefined) continue;
    if (Math.max(0, x.sndUna) >= Math.max(0, s.sndUna)) return x;
    found ??= x;
  }
  return found;
}

/** Times a reset toward a client is sent again (200, 400, 800 ms after it: within the linger). */
export const RESET_RESENDS = 3;
/** Unanswered retransmissions toward a spliced connection's client before it is reset. */
export const MAX_SPLICE_BACKOFFS = 12;
/** Orphans' resets waiting to be sent again (one per refused connection at a promotion). */
export const MAX_ORPHAN_RESETS = 4096;

export interface SpliceReport {
  spliced: number;
  reset: number;
  dropped: number;
}

export class Splicer {
  private orphanResets: Array<{ rst: TcpSegment; sent: number; at: number }> = [];

  constructor(
    private readonly config: Pick<EngineConfig, "vip" | "port" | "mtu" | "rto">,
    private readonly table: ConnectionTable,
    private readonly lifecycle: Lifecycle,
    private readonly outbox: Outbox,
  ) {}

  /** Every connection at a promotion of `id`: spliced onto it, reset, or (not open) dropped. */
  promote(id: string, now: number): SpliceReport {
    const report = { spliced: 0, reset: 0, dropped: 0 };
    for (const conn of [...this.table.values()]) {
      if (conn.phase !== "open") {
        if (conn.phase === "syn" && conn.originalIsn !== undefined && !conn.resetting) {
          // Half-open for the engine, but the client may have completed its handshake (its ACK
          // not captured yet): its later segments would go to the fenced original for good. A
          // RST without ACK resets an established client and is dropped by one still in
          // SYN-SENT (RFC 9293 3.10.7.3), whose SYN retransmission reaches the new original.
          this.resetClient(conn);
          this.lifecycle.markClosed(conn, now);
        } else if (conn.phase === "syn") {
          // Unanswered so far: dropped; its SYN retransmission reaches the new original as a new
          // connection. But the old original's SYN-ACK may still slip through before the fence:
          // its client's handshake then goes to a fenced host for good, so it is remembered as
          // stale and such a handshake is reset (simulator seed 287; ConnectionTable.adopt).
          // (Keeping these connections marked instead failed CI's failover-newconns test, 1 run
          // in 5, with a client never answered: see docs/PROGRESS.md, session 10.)
          if (conn.natPort !== undefined) this.table.staleSyn(conn.clientIsn);
          this.lifecycle.deleteConnection(conn);
        }
        // A closed one lingers: its replicas finish closing it (see the engine's tick).
        report.dropped++;
        continue;
      }
      const s = conn.shadows.get(id);
      if (s && canSplice(conn, id)) {
        this.splice(conn, s, now);
        report.spliced++;
      } else {
        this.resetClient(conn);
        this.lifecycle.resetShadows(conn, now);
        report.reset++;
      }
    }
    return report;
  }

  private splice(conn: ReplicatedConnection, s: ShadowConversation, now: number): void {
    conn.spliced = s;
    // Its FIN came before the promotion (with the original's): held like one arriving later.
    if (s.replicaFinOffset !== undefined) conn.spliceFinSince ??= now;
    conn.sentToClient = Math.max(
      conn.clientAckOffset -
        (conn.originalFinOffset !== undefined && conn.clientAckOffset > conn.originalFinOffset ? 1 : 0),
      0,
    );
    if (conn.lastOriginalTsval !== undefined && s.tsRecent !== undefined) {
      conn.tsOffset = (conn.lastOriginalTsval + 1 - s.tsRecent) >>> 0;
    }
    // The old original's close, if any was held, is moot: the replica decides now.
    if (conn.held && !conn.held.released) conn.held.released = true;
    for (const x of conn.shadows.values()) {
      if (x !== s && x.live)
        this.lifecycle.setStatus(conn, x, "unverified", "its original was replaced", x.compared);
    }
    this.forward(conn, s, undefined, 0);
  }

  /** A segment from the VIP to the client in the original's sequence space. */
  toClient(
    conn: ReplicatedConnection,
    seq: number,
    flags: number,
    payload: Uint8Array = new Uint8Array(0),
  ): TcpSegment {
    const s = conn.spliced;
    const options: TcpOption[] = [];
    if (s?.tsOk && s.tsRecent !== undefined) {
      options.push(
        { kind: "nop" },
        { kind: "nop" },
        {
          kind: "timestamp",
          tsval: (s.tsRecent + conn.tsOffset) >>> 0,
          tsecr: conn.lastClientTsval ?? 0,
        },
      );
    }
    const ack = s ? toSeq(Math.max(0, s.sndUna), conn.clientIsn) : toSeq(conn.client.end, conn.clientIsn);
    const window = this.windowFor(conn);
    if (s) conn.windowToClient = window;
    return {
      tos: 0,
      id: this.outbox.nextIpId(),
      dontFragment: true,
      ttl: 64,
      src: this.config.vip,
      dst: conn.clientAddr,
      ipOptions: new Uint8Array(0),
      srcPort: this.config.port,
      dstPort: conn.clientPort,
      seq,
      ack,
      flags: flags & RST && !(flags & ACK) ? flags : flags | ACK,
      window,
      urgent: 0,
      options,
      payload,
    };
  }

  /** The promoted replica's window in the client's scale (the original's). */
  private windowFor(conn: ReplicatedConnection): number {
    const s = conn.spliced;
    return s ? Math.min(0xffff, Math.floor((s.lastWindow * 2 ** s.wscale) / 2 ** conn.originalWscale)) : 0;
  }

  /**
   * The client echoed `tsecr`: the newest TSval it accepted. After a splice that may be the old
   * original's, sent after the engine last saw one (the fence takes a few milliseconds): the
   * translation moves up so the replica's TSvals continue above it, or PAWS drops every segment
   * (found by the simulator, seed 730: a client that never got its last reply).
   */
  clientEcho(conn: ReplicatedConnection, tsecr: number): void {
    const s = conn.spliced;
    if (!s?.tsOk || s.tsRecent === undefined) return;
    const behind = seqDiff(tsecr, (s.tsRecent + conn.tsOffset) >>> 0);
    if (behind > 0) conn.tsOffset = (conn.tsOffset + behind) >>> 0;
  }

  /** A zero-window probe to a spliced connection's client: one below what it was sent draws
   * an ACK with its window. */
  probeClientWindow(conn: ReplicatedConnection): void {
    if (!conn.spliced || conn.originalIsn === undefined || conn.resetting) return;
    this.outbox.send(this.toClient(conn, toSeq(conn.sentToClient - 1, conn.originalIsn), 0), "client");
  }

  /** An ACK to a spliced connection's client now (its segment brought nothing new). */
  ackClient(conn: ReplicatedConnection): void {
    if (!conn.spliced || conn.originalIsn === undefined) return;
    this.outbox.send(this.toClient(conn, toSeq(conn.sentToClient, conn.originalIsn), 0), "client");
  }

  /**
   * Sends the client the spliced replica's bytes it has not been sent, its FIN, and an ACK when
   * the replica acknowledged more of the client's bytes. Bytes at offsets the original had sent
   * go out only once compared equal; `resend` re-sends a range the replica retransmitted (the
   * client missed it), `finAgain` the FIN the replica retransmitted (the client has not
   * acknowledged it: ours was lost).
   */
  forward(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    resend: number | undefined,
    resendLength: number,
    finAgain = false,
  ): void {
    const isn = conn.originalIsn!;
    if (s.status === "diverged") {
      this.resetClient(conn);
      return;
    }
    const verified = s.compared >= conn.original.end ? s.reply.end : s.compared;
    const maxPayload = Math.max(1, Math.min(conn.originalMss, this.config.mtu - 40) - (s.tsOk ? 12 : 0));
    const send = (from: number, to: number) => {
      for (let off = from; off < to; off += maxPayload) {
        const end = Math.min(to, off + maxPayload);
        this.outbox.send(
          this.toClient(conn, toSeq(off, isn), end === to ? PSH : 0, s.reply.read(off, end)),
          "client",
        );
      }
    };
    if (resend !== undefined && resend < conn.sentToClient) {
      const from = Math.max(resend, s.reply.base, conn.clientAckOffset);
      const to = Math.min(resend + resendLength, conn.sentToClient);
      if (to > from) send(from, to);
    }
    const from = Math.max(conn.sentToClient, s.reply.base);
    if (verified > from) {
      send(from, verified);
      conn.sentToClient = verified;
    }
    let acked = false;
    if (
      finAgain &&
      conn.spliceFinSent &&
      s.replicaFinOffset !== undefined &&
      conn.clientAckOffset <= s.replicaFinOffset
    ) {
      this.outbox.send(this.toClient(conn, toSeq(s.replicaFinOffset, isn), FIN), "client");
      acked = true;
    } else if (
      s.replicaFinOffset !== undefined &&
      conn.sentToClient === s.replicaFinOffset &&
      !conn.spliceFinSent &&
      (conn.spliceFinReleased || survivor(conn, s) === undefined)
    ) {
      conn.spliceFinSent = true;
      this.outbox.send(this.toClient(conn, toSeq(s.replicaFinOffset, isn), FIN), "client");
      acked = true;
    }
    // An ACK when the replica acknowledged more of the client's bytes, or opened its window (the
    // client may be waiting on a zero window).
    const windowUpdate = this.windowFor(conn) > conn.windowToClient;
    if (!acked && (Math.max(0, s.sndUna) > conn.ackToClient || windowUpdate) && verified <= from) {
      this.outbox.send(this.toClient(conn, toSeq(conn.sentToClient, isn), 0), "client");
    }
    conn.ackToClient = Math.max(conn.ackToClient, Math.max(0, s.sndUna));
  }

  /**
   * A spliced connection's client is served by the engine from here on, so the engine must also
   * retransmit toward it: the promoted replica retransmits only what the engine has not
   * acknowledged, and the engine acknowledges it up to what it received (it never retransmits
   * what it was told was SACKed: found by the simulator, seed 288, a client waiting forever for
   * a segment lost on its link). Bytes from the client's acknowledgement on are still held in the
   * replica's reply buffer (released only as far as the client acknowledged).
   */
  private outstandingToClient(conn: ReplicatedConnection, s: ShadowConversation): boolean {
    return (
      conn.sentToClient > conn.clientAckOffset ||
      (conn.spliceFinSent && s.replicaFinOffset !== undefined && conn.clientAckOffset <= s.replicaFinOffset)
    );
  }

  /** The client acknowledged up to conn.clientAckOffset (was `before`): timer and dup ACKs. */
  clientAcked(conn: ReplicatedConnection, before: number, pureAck: boolean, now: number): void {
    const s = conn.spliced;
    if (!s) return;
    // A client that answers with a zero window is alive and only slow to read: its answers reset
    // the backoff (as Linux does for a peer answering window probes), or a download would be cut.
    if (conn.lastClientWindow === 0) conn.spliceBackoffs = 0;
    if (conn.clientAckOffset > before) {
      conn.spliceBackoffs = 0;
      conn.spliceDupAcks = 0;
      conn.spliceRtoAt = this.outstandingToClient(conn, s) ? now + this.config.rto.initialMs : undefined;
    } else if (pureAck && this.outstandingToClient(conn, s) && ++conn.spliceDupAcks === 3) {
      this.retransmitToClient(conn, s); // fast retransmit: the client says a segment is missing
    }
  }

  /** The retransmission timer toward a spliced connection's client (from the engine's tick).
   * Returns false when the client stopped answering and the connection was reset. */
  timer(conn: ReplicatedConnection, now: number, want: (t: number) => void): boolean {
    const s = conn.spliced;
    if (!s || conn.resetting || !this.outstandingToClient(conn, s)) {
      conn.spliceRtoAt = undefined;
      return true;
    }
    if (conn.spliceRtoAt === undefined) conn.spliceRtoAt = now + this.config.rto.initialMs;
    if (now >= conn.spliceRtoAt) {
      if (++conn.spliceBackoffs > MAX_SPLICE_BACKOFFS) {
        this.resetClient(conn);
        return false;
      }
      this.retransmitToClient(conn, s);
      const backoff = Math.min(this.config.rto.maxMs, this.config.rto.initialMs * 2 ** conn.spliceBackoffs);
      conn.spliceRtoAt = now + backoff;
    }
    want(conn.spliceRtoAt);
    return true;
  }

  /** Sends the client the first segment it has not acknowledged (or the FIN again). */
  private retransmitToClient(conn: ReplicatedConnection, s: ShadowConversation): void {
    const isn = conn.originalIsn!;
    const from = Math.max(conn.clientAckOffset, s.reply.base);
    if (from < conn.sentToClient) {
      const maxPayload = Math.max(1, Math.min(conn.originalMss, this.config.mtu - 40) - (s.tsOk ? 12 : 0));
      const end = Math.min(conn.sentToClient, from + maxPayload);
      this.outbox.send(this.toClient(conn, toSeq(from, isn), PSH, s.reply.read(from, end)), "client");
    } else if (conn.spliceFinSent && s.replicaFinOffset !== undefined) {
      this.outbox.send(this.toClient(conn, toSeq(s.replicaFinOffset, isn), FIN), "client");
    }
  }

  /** Sends a reset again now and then while the connection lingers (a RST can be lost, and a
   * client waiting for data sends nothing that would draw another: found by the simulator, seed
   * 241). Reports when to look again. */
  resendReset(conn: ReplicatedConnection, now: number, want: (t: number) => void): void {
    if (!conn.resetting || conn.resetsResent >= RESET_RESENDS) return;
    if (conn.resetAgainAt === undefined) conn.resetAgainAt = now + this.config.rto.initialMs;
    if (now >= conn.resetAgainAt) {
      this.resetClient(conn);
      conn.resetsResent++;
      conn.resetAgainAt = now + this.config.rto.initialMs * 2 ** conn.resetsResent;
    }
    if (conn.resetsResent < RESET_RESENDS) want(conn.resetAgainAt);
  }

  /**
   * A refused connection's client, fenced with the replaced original: reset now and, as a RST
   * can be lost (nothing answers it), again RESET_RESENDS times (found by the simulator, seed 2
   * with request loops: a lost RST left a client waiting for a reply for good). Bounded: the
   * oldest pending resends go first.
   */
  resetOrphan(rst: TcpSegment, now: number): void {
    this.outbox.send(rst, "client");
    if (this.orphanResets.length >= MAX_ORPHAN_RESETS) this.orphanResets.shift();
    this.orphanResets.push({ rst, sent: 0, at: now + this.config.rto.initialMs });
  }

  /** Resends the orphans' resets that are due; asks for the next one. */
  resendOrphanResets(now: number, want: (t: number) => void): void {
    if (this.orphanResets.length === 0) return;
    const keep: typeof this.orphanResets = [];
    for (const o of this.orphanResets) {
      if (now >= o.at) {
        this.outbox.send({ ...o.rst, id: this.outbox.nextIpId() }, "client");
        o.sent++;
        o.at = now + this.config.rto.initialMs * 2 ** o.sent;
      }
      if (o.sent < RESET_RESENDS) {
        keep.push(o);
        want(o.at);
      }
    }
    this.orphanResets = keep;
  }

  /** Resets of refused connections' clients still to be sent again. */
  get orphanResetsPending(): number {
    return this.orphanResets.length;
  }

  /** Resets the client's connection: at what it acknowledged and at what it may have received. */
  resetClient(conn: ReplicatedConnection): void {
    if (conn.originalIsn === undefined) return;
    conn.resetting = true;
    const at = new Set([conn.clientAckOffset, conn.original.end, conn.sentToClient]);
    for (const off of at) this.outbox.send(this.toClient(conn, toSeq(off, conn.originalIsn), RST), "client");
  }
}
