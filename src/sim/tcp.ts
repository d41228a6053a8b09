// A TCP endpoint that behaves like Linux's where the appliance can tell the difference: the
// options a SYN carries and in what order (MSS, SACK permitted, timestamps, window scale), per
// connection random ISN and timestamp offset, delayed ACKs (40 ms, every second full segment,
// at once for out-of-order data and FINs), SACK blocks, a receive window that never shrinks,
// PAWS, RFC 5961 RST and SYN handling (challenge ACKs), RFC 6298 retransmission (200 ms minimum,
// exponential backoff), fast retransmit on three duplicate ACKs with SACK-aware recovery,
// zero-window probes, the close states with TIME_WAIT, RST on close with unread data, and a
// listener with an accept queue. Not modelled: congestion control beyond slow start and halving,
// Nagle, keepalive, urgent data, ECN, MTU changes.
//
// Time comes from the simulator's Scheduler; segments leave through `send` (the host's link).
import { ACK, FIN, PSH, RST, SYN, findOption, type TcpOption, type TcpSegment } from "../wire/tcp.js";
import { seqAdd, seqDiff, seqGe, seqGt, seqLe, seqLt } from "../wire/seq.js";
import type { Rng } from "./rng.js";
import type { Scheduler, Timer } from "./scheduler.js";

export const MSS = 1460;
const RTO_MIN_MS = 200;
const RTO_INIT_MS = 1000;
const RTO_MAX_MS = 120_000;
const DELACK_MS = 40;
const SYN_RETRIES = 6;
const SYNACK_RETRIES = 5;
/** Backoffs before an established connection gives up (Linux tcp_retries2). */
const RETRIES = 15;
const TIME_WAIT_MS = 60_000;
const WSCALE = 7;
const INIT_CWND = 10;
/** Segments acknowledged at once after the handshake (Linux's quick-ACK mode, roughly). */
const QUICKACKS = 8;

export type TcpState =
  | "SYN_SENT"
  | "SYN_RCVD"
  | "ESTABLISHED"
  | "FIN_WAIT_1"
  | "FIN_WAIT_2"
  | "CLOSE_WAIT"
  | "CLOSING"
  | "LAST_ACK"
  | "TIME_WAIT"
  | "CLOSED";

/** What the application is told. */
export interface SocketEvents {
  connected?(): void;
  /** Bytes are readable (read() them). */
  readable?(): void;
  /** The peer's FIN: no more bytes after what is readable now. */
  end?(): void;
  /** Reset (by the peer or a timeout), or the connection attempt failed. */
  error?(why: "reset" | "refused" | "timeout"): void;
  /** Send buffer space freed. */
  writable?(): void;
}

/** A byte queue addressed by absolute stream position. */
class Bytes {
  private chunks: Buffer[] = [];
  private offset = 0; // within chunks[0]
  length = 0;

  push(b: Uint8Array): void {
    if (b.length === 0) return;
    this.chunks.push(Buffer.from(b));
    this.length += b.length;
  }

  /** Copies `len` bytes starting `at` bytes from the head. */
  peek(at: number, len: number): Buffer {
    const out = Buffer.alloc(Math.max(0, Math.min(len, this.length - at)));
    let skip = at + this.offset;
    let w = 0;
    for (const c of this.chunks) {
      if (w >= out.length) break;
      if (skip >= c.length) {
        skip -= c.length;
        continue;
      }
      const n = Math.min(c.length - skip, out.length - w);
      c.copy(out, w, skip, skip + n);
      w += n;
      skip = 0;
    }
    return out;
  }

  drop(n: number): void {
    n = Math.min(n, this.length);
    this.length -= n;
    let left = n + this.offset;
    while (this.chunks.length > 0 && left >= this.chunks[0]!.length) {
      left -= this.chunks[0]!.length;
      this.chunks.shift();
    }
    this.offset = left;
  }

  take(n: number): Buffer {
    const b = this.peek(0, n);
    this.drop(b.length);
    return b;
  }
}

export interface HostLike {
  readonly address: number;
  readonly sched: Scheduler;
  readonly rng: Rng;
  /** The host's kernel runs (a crashed host sends and answers nothing). */
  readonly up: boolean;
  emit(seg: TcpSegment): void;
  forget(sock: TcpSocket): void;
}

export interface SocketOptions {
  rcvBuf: number;
  sndBuf: number;
  /** Options offered in the SYN (Linux offers all four). */
  offer: { sack: boolean; timestamps: boolean; wscale: boolean };
}

export class TcpSocket {
  state: TcpState;
  events: SocketEvents = {};
  /** Per-connection timestamp offset (Linux randomizes it since 4.10). */
  private readonly tsOffset: number;

  // send side
  readonly iss: number;
  sndUna: number;
  sndNxt: number;
  /** Highest sequence sent so far (a retransmission starts below it). */
  private sndMax: number;
  private sndWnd = 0;
  private sndWl1 = 0;
  private sndWl2 = 0;
  private readonly sndBuf = new Bytes(); // app bytes from sndUna (data only)
  private finQueued = false;
  /** The application closed the socket for good: bytes arriving now are answered with a RST. */
  private appClosed = false;
  /** Sequence number of our FIN once it was sent. */
  private finSeq: number | undefined;
  private peerMss = 536;
  private sndWscale = 0;
  private cwnd = INIT_CWND * MSS;
  private ssthresh = Infinity;
  private dupAcks = 0;
  private recoverPoint: number | undefined;
  /** SACKed ranges above sndUna, as [start, end) sequence numbers. */
  private sacked: Array<[number, number]> = [];
  private srtt: number | undefined;
  private rttvar = 0;
  private rto = RTO_INIT_MS;
  private backoffs = 0;
  private rtoTimer: Timer | undefined;
  private persistTimer: Timer | undefined;
  private synTries = 0;

  // receive side
  irs = 0;
  rcvNxt = 0;
  /** Right edge of the window last advertised (never moves left). */
  private rcvAdv = 0;
  private rcvWscale = 0;
  private readonly rcvQueue = new Bytes(); // in order, not read by the app
  private ooo: Array<{ seq: number; data: Buffer }> = [];
  private oooBytes = 0;
  finReceived = false;
  private sackOk = false;
  private tsOk = false;
  private tsRecent: number | undefined;
  private ackPending = 0;
  private delackTimer: Timer | undefined;
  private quickacks = QUICKACKS;
  private twTimer: Timer | undefined;

  /** Bytes the application has read, in all (the stream position of its next read). */
  readTotal = 0;
  /** Bytes the application wrote, in all. */
  written = 0;
  /** Segments dropped by PAWS, and as outside the window (diagnostics of a hang). */
  pawsDropped = 0;
  unacceptable = 0;
  /** How it ended, when it did. */
  outcome: "closed" | "reset" | "refused" | "timeout" | undefined;

  constructor(
    readonly host: HostLike,
    readonly localPort: number,
    readonly remoteAddress: number,
    readonly remotePort: number,
    private readonly opts: SocketOptions,
    state: "SYN_SENT" | "SYN_RCVD",
  ) {
    this.state = state;
    this.iss = host.rng.u32();
    this.sndUna = this.iss;
    this.sndNxt = this.iss;
    this.sndMax = this.iss;
    this.tsOffset = host.rng.u32();
  }

  get key(): string {
    return `${this.localPort}/${this.remoteAddress}/${this.remotePort}`;
  }

  private get nowMs(): number {
    return this.host.sched.nowMs;
  }

  private tsNow(): number {
    return (Math.floor(this.nowMs) + this.tsOffset) >>> 0;
  }

  // ------------------------------------------------------------------ application interface

  /** Readable bytes now. */
  get readableLength(): number {
    return this.rcvQueue.length;
  }

  read(max = Infinity): Buffer {
    const before = this.window();
    const b = this.rcvQueue.take(Math.min(max, this.rcvQueue.length));
    this.readTotal += b.length;
    // Window update when reading opened the window by two segments or from (nearly) closed.
    if (b.length > 0 && this.synchronized() && this.window() - before >= 2 * MSS) this.sendAck();
    return b;
  }

  /** Queues bytes to send; returns how many fit in the send buffer. */
  write(data: Uint8Array): number {
    if (this.finQueued || !this.canSend()) return 0;
    const room = Math.max(0, this.opts.sndBuf - this.sndBuf.length);
    const n = Math.min(room, data.length);
    this.sndBuf.push(data.subarray(0, n));
    this.written += n;
    this.output();
    return n;
  }

  get sendBuffered(): number {
    return this.sndBuf.length;
  }

  /** Orderly close: FIN after the queued bytes. Unread bytes make it a reset (as Linux does). */
  close(): void {
    if (this.state === "CLOSED" || this.state === "TIME_WAIT" || this.finQueued) return;
    this.appClosed = true;
    if (this.rcvQueue.length > 0 || this.oooBytes > 0) {
      this.abort();
      return;
    }
    if (this.state === "SYN_SENT") {
      this.terminate("closed");
      return;
    }
    if (this.state === "SYN_RCVD") {
      this.abort();
      return;
    }
    this.finQueued = true;
    if (this.state === "ESTABLISHED") this.state = "FIN_WAIT_1";
    else if (this.state === "CLOSE_WAIT") this.state = "LAST_ACK";
    this.output();
  }

  /** Reset now. */
  abort(): void {
    if (this.state === "CLOSED") return;
    if (this.state !== "SYN_SENT" && this.state !== "TIME_WAIT")
      this.emit({ seq: this.sndNxt, ack: this.rcvNxt, flags: RST | ACK });
    this.terminate("reset");
  }

  private canSend(): boolean {
    return this.state === "ESTABLISHED" || this.state === "CLOSE_WAIT" || this.state === "SYN_RCVD";
  }

  private synchronized(): boolean {
    return this.state !== "SYN_SENT" && this.state !== "SYN_RCVD" && this.state !== "CLOSED";
  }

  // ------------------------------------------------------------------ opening

  /** Active open: the SYN with Linux's options. */
  connect(): void {
    this.synTries++;
    const o = this.opts.offer;
    const options: TcpOption[] = [{ kind: "mss", value: MSS }];
    if (o.sack) options.push({ kind: "sack-permitted" });
    if (o.timestamps) options.push({ kind: "timestamp", tsval: this.tsNow(), tsecr: 0 });
    else if (o.sack) options.push({ kind: "nop" }, { kind: "nop" });
    if (o.wscale) options.push({ kind: "nop" }, { kind: "wscale", shift: WSCALE });
    this.rawEmit({ seq: this.iss, ack: 0, flags: SYN, window: Math.min(0xffff, this.opts.rcvBuf), options });
    this.sndNxt = seqAdd(this.iss, 1);
    this.sndMax = this.sndNxt;
    this.armRto(
      this.synTries === 1 ? RTO_INIT_MS : Math.min(RTO_MAX_MS, RTO_INIT_MS * 2 ** (this.synTries - 1)),
    );
  }

  /** Passive open: answers the client's SYN. */
  acceptSyn(syn: TcpSegment): void {
    this.irs = syn.seq;
    this.rcvNxt = seqAdd(syn.seq, 1);
    const o = this.opts.offer;
    const mss = findOption(syn.options, "mss");
    this.peerMss = Math.min(MSS, mss?.value ?? 536);
    this.sackOk = o.sack && !!findOption(syn.options, "sack-permitted");
    const ts = findOption(syn.options, "timestamp");
    this.tsOk = o.timestamps && !!ts;
    if (ts && this.tsOk) this.tsRecent = ts.tsval;
    const ws = findOption(syn.options, "wscale");
    if (o.wscale && ws) {
      this.sndWscale = Math.min(14, ws.shift);
      this.rcvWscale = WSCALE;
    }
    this.sndWnd = syn.window; // a SYN's window is never scaled
    this.sndWl1 = syn.seq;
    this.sndWl2 = 0;
    this.sendSynAck();
  }

  private sendSynAck(): void {
    this.synTries++;
    const options: TcpOption[] = [{ kind: "mss", value: MSS }];
    if (this.sackOk) options.push({ kind: "sack-permitted" });
    if (this.tsOk) options.push({ kind: "timestamp", tsval: this.tsNow(), tsecr: this.tsRecent ?? 0 });
    else if (this.sackOk) options.push({ kind: "nop" }, { kind: "nop" });
    if (this.rcvWscale > 0) options.push({ kind: "nop" }, { kind: "wscale", shift: this.rcvWscale });
    this.rawEmit({
      seq: this.iss,
      ack: this.rcvNxt,
      flags: SYN | ACK,
      window: Math.min(0xffff, this.opts.rcvBuf),
      options,
    });
    this.rcvAdv = seqAdd(this.rcvNxt, Math.min(0xffff, this.opts.rcvBuf));
    this.sndNxt = seqAdd(this.iss, 1);
    this.sndMax = this.sndNxt;
    this.armRto(Math.min(RTO_MAX_MS, RTO_INIT_MS * 2 ** (this.synTries - 1)));
  }

  // ------------------------------------------------------------------ input

  input(seg: TcpSegment): void {
    if (this.state === "CLOSED") return;
    if (this.state === "SYN_SENT") return this.inputSynSent(seg);
    const ts = this.tsOk ? findOption(seg.options, "timestamp") : undefined;
    // PAWS (RFC 7323): an old timestamp means an old duplicate; Linux drops it with a dup ACK.
    if (ts && this.tsRecent !== undefined && seqDiff(ts.tsval, this.tsRecent) < 0 && !(seg.flags & RST)) {
      this.pawsDropped++;
      this.sendAck();
      return;
    }
    const len = seg.payload.length + (seg.flags & SYN ? 1 : 0) + (seg.flags & FIN ? 1 : 0);
    if (this.state === "SYN_RCVD" && seg.flags & SYN && !(seg.flags & ACK) && seg.seq === this.irs) {
      this.sendSynAck(); // the client's SYN again: our SYN-ACK was lost
      return;
    }
    if (!this.acceptable(seg.seq, len)) {
      this.unacceptable++;
      if (!(seg.flags & RST)) this.sendAck();
      return;
    }
    if (seg.flags & RST) {
      // RFC 5961: only an exact RST resets; one elsewhere in the window draws a challenge ACK.
      if (seg.seq === this.rcvNxt) this.terminate(this.state === "SYN_RCVD" ? "refused" : "reset");
      else this.sendAck();
      return;
    }
    if (seg.flags & SYN) {
      this.sendAck(); // RFC 5961 challenge ACK for a SYN on a synchronized connection
      return;
    }
    if (!(seg.flags & ACK)) return;
    if (ts && seqLe(seg.seq, this.rcvNxt)) this.tsRecent = ts.tsval;
    if (this.state === "SYN_RCVD") {
      if (!seqGt(seg.ack, this.iss) || seqGt(seg.ack, this.sndNxt)) {
        this.emit({ seq: seg.ack, ack: 0, flags: RST });
        return;
      }
      this.state = "ESTABLISHED";
      this.sndUna = seg.ack;
      this.backoffs = 0;
      this.synTries = 0;
      this.clearRto();
      this.updateWindow(seg);
      this.host.sched.after(0, () => this.onEstablished?.());
    } else if (!this.processAck(seg)) return;
    if (seg.payload.length > 0 || seg.flags & FIN) this.processData(seg);
    if ((this.state as TcpState) === "CLOSED") return;
    this.output();
  }

  /** Called (once) when a passive open completes: the listener puts it in the accept queue. */
  onEstablished: (() => void) | undefined;

  private inputSynSent(seg: TcpSegment): void {
    const ackOk = (seg.flags & ACK) !== 0 && seg.ack === this.sndNxt;
    if (seg.flags & RST) {
      if (ackOk) this.terminate("refused");
      return;
    }
    if (!(seg.flags & SYN) || !ackOk) {
      if (seg.flags & ACK && !ackOk) this.emit({ seq: seg.ack, ack: 0, flags: RST });
      return;
    }
    this.irs = seg.seq;
    this.rcvNxt = seqAdd(seg.seq, 1);
    this.rcvAdv = this.rcvNxt; // the window offered from here on (emit() opens it)
    this.sndUna = seg.ack;
    const o = this.opts.offer;
    this.peerMss = Math.min(MSS, findOption(seg.options, "mss")?.value ?? 536);
    this.sackOk = o.sack && !!findOption(seg.options, "sack-permitted");
    const ts = findOption(seg.options, "timestamp");
    this.tsOk = o.timestamps && !!ts;
    if (ts && this.tsOk) this.tsRecent = ts.tsval;
    const ws = findOption(seg.options, "wscale");
    if (o.wscale && ws) {
      this.sndWscale = Math.min(14, ws.shift);
      this.rcvWscale = WSCALE;
    }
    this.sndWnd = seg.window;
    this.sndWl1 = seg.seq;
    this.sndWl2 = seg.ack;
    this.state = "ESTABLISHED";
    this.synTries = 0;
    this.backoffs = 0;
    this.clearRto();
    this.sendAck();
    this.events.connected?.();
    this.output();
  }

  private acceptable(seq: number, len: number): boolean {
    const wnd = Math.max(0, seqDiff(this.rcvAdv, this.rcvNxt));
    if (len === 0)
      return wnd === 0
        ? seq === this.rcvNxt
        : (seqGe(seq, this.rcvNxt) && seqLt(seq, seqAdd(this.rcvNxt, wnd))) || seq === this.rcvNxt;
    if (wnd === 0) return false;
    const end = seqAdd(seq, len - 1);
    const lo = this.rcvNxt;
    const hi = seqAdd(this.rcvNxt, wnd);
    return (
      (seqGe(seq, lo) && seqLt(seq, hi)) ||
      (seqGe(end, lo) && seqLt(end, hi)) ||
      (seqLt(seq, lo) && seqGe(end, hi))
    );
  }

  /** Returns false when the segment is to be dropped. */
  private processAck(seg: TcpSegment): boolean {
    if (seqGt(seg.ack, this.sndMax)) {
      this.sendAck(); // acknowledges what was never sent
      return false;
    }
    const oldWnd = this.sndWnd;
    this.updateWindow(seg);
    const sack = this.sackOk ? findOption(seg.options, "sack") : undefined;
    if (sack) this.addSacks(sack.blocks);
    if (seqGt(seg.ack, this.sndUna)) {
      const acked = seqDiff(seg.ack, this.sndUna);
      const dataAcked = Math.min(acked, this.sndBuf.length);
      this.sndBuf.drop(dataAcked);
      this.sndUna = seg.ack;
      if (seqLt(this.sndNxt, this.sndUna)) this.sndNxt = this.sndUna;
      this.sacked = this.sacked.filter(([, e]) => seqGt(e, this.sndUna));
      const ts = this.tsOk ? findOption(seg.options, "timestamp") : undefined;
      if (ts && ts.tsecr !== 0) this.rttSample(seqDiff(this.tsNow(), ts.tsecr));
      this.backoffs = 0;
      this.dupAcks = 0;
      if (this.recoverPoint !== undefined) {
        if (seqGe(seg.ack, this.recoverPoint)) {
          this.recoverPoint = undefined;
          this.cwnd = Math.max(this.ssthresh, 2 * MSS);
        } else {
          this.retransmitHole(); // partial ACK: the next hole is lost too
        }
      } else if (this.cwnd < this.ssthresh) this.cwnd += Math.min(acked, MSS);
      else this.cwnd += Math.max(1, Math.floor((MSS * MSS) / this.cwnd));
      if (this.outstanding()) this.armRto(this.rto);
      else this.clearRto();
      this.ackedFin();
      if (dataAcked > 0) this.host.sched.after(0, () => this.events.writable?.());
    } else if (
      seg.ack === this.sndUna &&
      seg.payload.length === 0 &&
      !(seg.flags & FIN) &&
      this.sndWnd === oldWnd &&
      seqGt(this.sndMax, this.sndUna)
    ) {
      this.dupAcks++;
      if (this.recoverPoint === undefined && (this.dupAcks === 3 || this.sackedSegments() >= 3)) {
        this.recoverPoint = this.sndMax;
        this.ssthresh = Math.max(Math.floor(seqDiff(this.sndMax, this.sndUna) / 2), 2 * MSS);
        this.cwnd = this.ssthresh;
        this.retransmitHole();
      } else if (this.recoverPoint !== undefined) {
        this.retransmitHole();
      }
    }
    return true;
  }

  private get finAcked(): boolean {
    return this.finSeq !== undefined && seqGt(this.sndUna, this.finSeq);
  }

  private ackedFin(): void {
    if (!this.finAcked) return;
    // Everything including our FIN is acknowledged.
    if (this.state === "FIN_WAIT_1") this.state = "FIN_WAIT_2";
    else if (this.state === "CLOSING") this.enterTimeWait();
    else if (this.state === "LAST_ACK") this.terminate("closed");
  }

  private updateWindow(seg: TcpSegment): void {
    if (seqLt(this.sndWl1, seg.seq) || (this.sndWl1 === seg.seq && seqLe(this.sndWl2, seg.ack))) {
      const wasZero = this.sndWnd === 0;
      this.sndWnd = seg.window << this.sndWscale;
      this.sndWl1 = seg.seq;
      this.sndWl2 = seg.ack;
      if (wasZero && this.sndWnd > 0 && this.persistTimer) {
        this.persistTimer.cancelled = true;
        this.persistTimer = undefined;
      }
    }
  }

  private addSacks(blocks: Array<[number, number]>): void {
    for (const [s, e] of blocks) {
      if (!seqGt(e, this.sndUna) || seqGt(e, this.sndMax) || !seqLt(s, e)) continue;
      this.sacked.push([s, e]);
    }
    // Merge, lowest first.
    this.sacked.sort((a, b) => seqDiff(a[0], b[0]));
    const merged: Array<[number, number]> = [];
    for (const r of this.sacked) {
      const last = merged[merged.length - 1];
      if (last && seqLe(r[0], last[1])) {
        if (seqGt(r[1], last[1])) last[1] = r[1];
      } else merged.push([r[0], r[1]]);
    }
    this.sacked = merged;
  }

  private sackedSegments(): number {
    let n = 0;
    for (const [s, e] of this.sacked) n += seqDiff(e, s);
    return Math.floor(n / MSS);
  }

  /** Resends the first unacknowledged, un-SACKed segment. */
  private retransmitHole(): void {
    let from = this.sndUna;
    for (const [s, e] of this.sacked) if (seqLe(s, from) && seqGt(e, from)) from = e;
    if (!seqLt(from, this.sndMax)) return;
    let to = seqAdd(from, this.peerMss - (this.tsOk ? 12 : 0));
    if (seqGt(to, this.sndMax)) to = this.sndMax;
    for (const [s] of this.sacked) if (seqGt(s, from) && seqLt(s, to)) to = s;
    this.sendRange(from, to);
  }

  /** Sends [from, to) of the stream (data, and the FIN if it lies there). */
  private sendRange(from: number, to: number): number {
    const off = seqDiff(from, this.sndUna);
    const dataLen = Math.max(0, Math.min(seqDiff(to, from), this.sndBuf.length - off));
    const payload = this.sndBuf.peek(off, dataLen);
    const end = seqAdd(from, payload.length);
    const fin = this.finSeq !== undefined && end === this.finSeq && seqGt(to, this.finSeq);
    if (payload.length === 0 && !fin) return from;
    this.emit({
      seq: from,
      ack: this.rcvNxt,
      flags: ACK | (fin ? FIN : 0) | (payload.length ? PSH : 0),
      payload,
    });
    if (!this.rtoTimer) this.armRto(this.rto);
    return seqAdd(end, fin ? 1 : 0);
  }

  private processData(seg: TcpSegment): void {
    if (this.finReceived) return;
    if (this.appClosed && seqGt(seqAdd(seg.seq, seg.payload.length), this.rcvNxt) && seg.payload.length > 0) {
      // Nobody will ever read them (Linux: tcp_rcv_state_process on an orphan): reset.
      this.abort();
      return;
    }
    let seq = seg.seq;
    let data: Uint8Array = seg.payload;
    let fin = (seg.flags & FIN) !== 0;
    // Trim what we have already.
    const skip = seqDiff(this.rcvNxt, seq);
    if (skip > 0) {
      if (skip > data.length) {
        this.sendAck(); // a duplicate (maybe of a FIN we acknowledged): our ACK was lost
        return;
      }
      data = data.subarray(skip);
      seq = this.rcvNxt;
    }
    // Trim beyond the advertised window.
    const room = seqDiff(this.rcvAdv, seq);
    if (data.length > room) {
      data = data.subarray(0, Math.max(0, room));
      fin = false;
    }
    if (seq !== this.rcvNxt) {
      if (data.length > 0) this.storeOutOfOrder(seq, data);
      this.sendAck(); // out of order: a duplicate ACK with SACK at once
      return;
    }
    if (data.length === 0 && !fin) {
      this.sendAck();
      return;
    }
    const hadHole = this.ooo.length > 0;
    this.rcvQueue.push(data);
    this.rcvNxt = seqAdd(this.rcvNxt, data.length);
    fin = this.pullOutOfOrder(fin);
    if (data.length > 0) this.host.sched.after(0, () => this.events.readable?.());
    if (fin) {
      this.rcvNxt = seqAdd(this.rcvNxt, 1);
      this.finReceived = true;
      this.sendAck();
      if (this.state === "ESTABLISHED") this.state = "CLOSE_WAIT";
      else if (this.state === "FIN_WAIT_1") this.state = "CLOSING";
      else if (this.state === "FIN_WAIT_2") this.enterTimeWait();
      this.host.sched.after(0, () => this.events.end?.());
      return;
    }
    // Delayed ACK: every second full segment, after a hole was filled, in quick-ACK mode, or
    // after 40 ms.
    this.ackPending += data.length;
    if (hadHole || this.quickacks > 0 || this.ackPending >= 2 * this.peerMss) {
      if (this.quickacks > 0) this.quickacks--;
      this.sendAck();
    } else if (!this.delackTimer) {
      this.delackTimer = this.host.sched.after(DELACK_MS * 1000, () => {
        this.delackTimer = undefined;
        if (this.ackPending > 0 && this.state !== "CLOSED") this.sendAck();
      });
    }
  }

  private storeOutOfOrder(seq: number, data: Uint8Array): void {
    // Keep within the receive buffer; overlapping pieces are trimmed against what is held.
    if (this.oooBytes + data.length > this.opts.rcvBuf) return;
    for (const o of this.ooo) {
      const oEnd = seqAdd(o.seq, o.data.length);
      if (seqGe(seq, o.seq) && seqLe(seqAdd(seq, data.length), oEnd)) return; // held already
    }
    this.ooo.push({ seq, data: Buffer.from(data) });
    this.oooBytes += data.length;
    this.ooo.sort((a, b) => seqDiff(a.seq, b.seq));
  }

  /** Moves held out-of-order bytes that now follow rcvNxt into the queue. */
  private pullOutOfOrder(fin: boolean): boolean {
    let progress = true;
    while (progress) {
      progress = false;
      for (let i = 0; i < this.ooo.length; i++) {
        const o = this.ooo[i]!;
        const end = seqAdd(o.seq, o.data.length);
        if (seqGt(o.seq, this.rcvNxt)) continue;
        this.ooo.splice(i, 1);
        this.oooBytes -= o.data.length;
        if (seqGt(end, this.rcvNxt)) {
          const part = o.data.subarray(seqDiff(this.rcvNxt, o.seq));
          this.rcvQueue.push(part);
          this.rcvNxt = end;
        }
        progress = true;
        break;
      }
    }
    return fin && this.ooo.length === 0;
  }

  // ------------------------------------------------------------------ output

  private outstanding(): boolean {
    return seqGt(this.sndMax, this.sndUna);
  }

  /** Sends what the windows allow: new data, then the FIN (which needs no window). */
  private output(): void {
    if (!this.synchronized() || this.finAcked) {
      if (this.ackPending > 0 && this.synchronized()) this.sendAck();
      return;
    }
    for (;;) {
      // After a timeout sndNxt is back near sndUna: skip what the peer SACKed.
      for (const [s, e] of this.sacked) if (seqLe(s, this.sndNxt) && seqGt(e, this.sndNxt)) this.sndNxt = e;
      const dataEnd = seqAdd(this.sndUna, this.sndBuf.length);
      const unsent = seqDiff(dataEnd, this.sndNxt);
      const inflight = seqDiff(this.sndNxt, this.sndUna);
      const wnd = Math.min(this.cwnd, this.sndWnd) - inflight;
      if (unsent > 0 && wnd > 0) {
        const len = Math.min(this.peerMss - (this.tsOk ? 12 : 0), unsent, wnd);
        const from = this.sndNxt;
        const payload = this.sndBuf.peek(seqDiff(from, this.sndUna), len);
        let next = seqAdd(from, len);
        const fin = this.finQueued && next === dataEnd;
        if (fin) {
          this.finSeq = dataEnd;
          next = seqAdd(next, 1);
        }
        this.sndNxt = next;
        if (seqGt(next, this.sndMax)) this.sndMax = next;
        this.emit({ seq: from, ack: this.rcvNxt, flags: ACK | PSH | (fin ? FIN : 0), payload });
        if (!this.rtoTimer) this.armRto(this.rto);
        continue;
      }
      if (unsent === 0 && this.finQueued) {
        this.finSeq = dataEnd;
        this.sndNxt = seqAdd(dataEnd, 1);
        if (seqGt(this.sndNxt, this.sndMax)) this.sndMax = this.sndNxt;
        this.emit({ seq: dataEnd, ack: this.rcvNxt, flags: FIN | ACK });
        if (!this.rtoTimer) this.armRto(this.rto);
      }
      break;
    }
    // Zero window with bytes to send and none in flight: the persist timer probes it.
    const dataEnd = seqAdd(this.sndUna, this.sndBuf.length);
    if (this.sndWnd === 0 && seqLt(this.sndNxt, dataEnd) && !this.outstanding() && !this.persistTimer)
      this.armPersist(this.rto);
    if (this.ackPending > 0) this.sendAck();
  }

  private armPersist(ms: number): void {
    this.persistTimer = this.host.sched.after(ms * 1000, () => {
      this.persistTimer = undefined;
      if (this.state === "CLOSED" || !this.host.up) return;
      if (this.sndWnd > 0) {
        this.output();
        return;
      }
      // Linux's zero-window probe: an old sequence number draws an ACK with the window.
      this.emit({ seq: seqAdd(this.sndUna, -1), ack: this.rcvNxt, flags: ACK });
      this.armPersist(Math.min(RTO_MAX_MS, ms * 2));
    });
  }

  private rttSample(ms: number): void {
    if (!(ms >= 0) || ms > 600_000) return;
    if (this.srtt === undefined) {
      this.srtt = ms;
      this.rttvar = ms / 2;
    } else {
      this.rttvar = 0.75 * this.rttvar + 0.25 * Math.abs(this.srtt - ms);
      this.srtt = 0.875 * this.srtt + 0.125 * ms;
    }
    this.rto = Math.min(RTO_MAX_MS, Math.max(RTO_MIN_MS, this.srtt + 4 * this.rttvar));
  }

  private armRto(ms: number): void {
    this.clearRto();
    this.rtoTimer = this.host.sched.after(ms * 1000, () => {
      this.rtoTimer = undefined;
      this.onRto();
    });
  }

  private clearRto(): void {
    if (this.rtoTimer) this.rtoTimer.cancelled = true;
    this.rtoTimer = undefined;
  }

  private onRto(): void {
    if (this.state === "CLOSED" || !this.host.up) return;
    if (this.state === "SYN_SENT") {
      if (this.synTries > SYN_RETRIES) return this.terminate("timeout");
      return this.connect();
    }
    if (this.state === "SYN_RCVD") {
      if (this.synTries > SYNACK_RETRIES) return this.terminate("timeout");
      return this.sendSynAck();
    }
    if (!this.outstanding()) return;
    this.backoffs++;
    if (this.backoffs > RETRIES) return this.terminate("timeout");
    this.rto = Math.min(RTO_MAX_MS, this.rto * 2);
    this.ssthresh = Math.max(Math.floor(seqDiff(this.sndMax, this.sndUna) / 2), 2 * MSS);
    this.cwnd = MSS;
    this.recoverPoint = undefined;
    this.dupAcks = 0;
    // Go back to the first unacknowledged byte and resend one segment (SACKed bytes skipped),
    // whatever the window: a retransmission doubles as a zero-window probe, as in Linux.
    let from = this.sndUna;
    for (const [s, e] of this.sacked) if (seqLe(s, from) && seqGt(e, from)) from = e;
    // Only what was sent before (Linux retransmits the head segment): new data waits for the
    // window, and sndMax keeps meaning "highest sent".
    const len = Math.min(this.peerMss - (this.tsOk ? 12 : 0), Math.max(0, seqDiff(this.sndMax, from)));
    this.sndNxt = this.sendRange(from, seqAdd(from, len));
    if (seqLt(this.sndNxt, from)) this.sndNxt = from;
    this.armRto(this.rto);
  }

  /** The window we can offer now (bytes). */
  private window(): number {
    const free = Math.max(0, this.opts.rcvBuf - this.rcvQueue.length - this.oooBytes);
    return (free >> this.rcvWscale) << this.rcvWscale;
  }

  sendAck(): void {
    if (this.state === "CLOSED" || this.state === "SYN_SENT") return;
    this.emit({ seq: this.sndNxt, ack: this.rcvNxt, flags: ACK });
  }

  private emit(f: { seq: number; ack: number; flags: number; payload?: Uint8Array }): void {
    if (!this.host.up) return;
    const options: TcpOption[] = [];
    if (this.tsOk && !(f.flags & RST && !(f.flags & ACK)))
      options.push(
        { kind: "nop" },
        { kind: "nop" },
        { kind: "timestamp", tsval: this.tsNow(), tsecr: this.tsRecent ?? 0 },
      );
    if (this.sackOk && f.flags & ACK && !(f.flags & RST) && this.ooo.length > 0) {
      const blocks = this.oooRanges().slice(0, this.tsOk ? 3 : 4);
      options.push({ kind: "nop" }, { kind: "nop" }, { kind: "sack", blocks });
    }
    let window = 0;
    if (!(f.flags & RST)) {
      // Never shrink the window already offered (RFC 7323 2.4; Linux does not either).
      const edge = seqAdd(this.rcvNxt, this.window());
      if (seqGt(edge, this.rcvAdv)) this.rcvAdv = edge;
      window = Math.min(0xffff, seqDiff(this.rcvAdv, this.rcvNxt) >> this.rcvWscale);
      this.ackPending = 0;
      if (this.delackTimer) {
        this.delackTimer.cancelled = true;
        this.delackTimer = undefined;
      }
    }
    this.rawEmit({ seq: f.seq, ack: f.ack, flags: f.flags, window, options, payload: f.payload });
  }

  private oooRanges(): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    for (const o of this.ooo) {
      const end = seqAdd(o.seq, o.data.length);
      const last = out[out.length - 1];
      if (last && seqLe(o.seq, last[1])) {
        if (seqGt(end, last[1])) last[1] = end;
      } else out.push([o.seq, end]);
    }
    // Linux reports the most recent block first; the lowest first is as valid and deterministic.
    return out;
  }

  private rawEmit(f: {
    seq: number;
    ack: number;
    flags: number;
    window: number;
    options: TcpOption[];
    payload?: Uint8Array | undefined;
  }): void {
    if (!this.host.up) return;
    this.host.emit({
      tos: 0,
      id: 0,
      dontFragment: true,
      ttl: 64,
      src: this.host.address,
      dst: this.remoteAddress,
      ipOptions: new Uint8Array(0),
      srcPort: this.localPort,
      dstPort: this.remotePort,
      seq: f.seq >>> 0,
      ack: f.ack >>> 0,
      flags: f.flags,
      window: f.window,
      urgent: 0,
      options: f.options,
      payload: f.payload ?? new Uint8Array(0),
    });
  }

  // ------------------------------------------------------------------ ending

  private enterTimeWait(): void {
    this.state = "TIME_WAIT";
    this.clearRto();
    if (this.twTimer) this.twTimer.cancelled = true;
    this.twTimer = this.host.sched.after(TIME_WAIT_MS * 1000, () => this.terminate("closed"));
    this.outcome ??= "closed";
  }

  /** The connection is over: timers stop, the host forgets it, the application is told. */
  terminate(outcome: "closed" | "reset" | "refused" | "timeout"): void {
    const was = this.state;
    this.state = "CLOSED";
    this.clearRto();
    for (const t of [this.persistTimer, this.delackTimer, this.twTimer]) if (t) t.cancelled = true;
    this.host.forget(this);
    if (this.outcome !== undefined) return;
    this.outcome = outcome;
    if (outcome !== "closed" || was === "SYN_SENT") {
      const why = outcome === "closed" ? "reset" : outcome;
      this.host.sched.after(0, () => this.events.error?.(why));
    }
  }

  /** The host crashed: everything is gone, nothing is sent. */
  vanish(): void {
    this.clearRto();
    for (const t of [this.persistTimer, this.delackTimer, this.twTimer]) if (t) t.cancelled = true;
    this.state = "CLOSED";
  }
}
