// A simulated machine's TCP stack: sockets by 4-tuple, listeners with an accept queue, RSTs for
// segments nobody owns, and the ways a server fails: its process dies (the kernel closes the
// sockets: FIN, or RST where bytes were unread; the port refuses), the machine dies (silence),
// the process freezes (the kernel still acknowledges, accepts and buffers; nothing is read,
// written or accepted until it thaws).
import { ACK, FIN, RST, SYN, type TcpSegment } from "../wire/tcp.js";
import { seqAdd } from "../wire/seq.js";
import type { Rng } from "./rng.js";
import type { Scheduler } from "./scheduler.js";
import { TcpSocket, type HostLike, type SocketEvents, type SocketOptions } from "./tcp.js";

interface Listener {
  backlog: number;
  pending: Set<TcpSocket>;
  queue: TcpSocket[];
  accept: (sock: TcpSocket) => void;
}

export class TcpHost implements HostLike {
  up = true;
  /** The application is paused (SIGSTOP, a long GC): its callbacks wait. */
  frozen = false;
  /** The application process died: its callbacks are dropped. */
  processDead = false;
  private readonly sockets = new Map<string, TcpSocket>();
  private readonly listeners = new Map<number, Listener>();
  /** Sockets the application owns (accepted or connected). */
  private readonly owned = new Set<TcpSocket>();
  private deferred: Array<() => void> = [];
  private nextPort: number;

  constructor(
    readonly name: string,
    readonly address: number,
    readonly sched: Scheduler,
    readonly rng: Rng,
    private readonly link: (seg: TcpSegment) => void,
    readonly socketOptions: SocketOptions,
    firstPort = 32768,
  ) {
    this.nextPort = firstPort;
  }

  emit(seg: TcpSegment): void {
    if (this.up) this.link(seg);
  }

  forget(sock: TcpSocket): void {
    if (this.sockets.get(sock.key) === sock) this.sockets.delete(sock.key);
    this.owned.delete(sock);
  }

  /** Runs an application callback now, later (frozen), or never (its process died). */
  dispatch(fn: () => void): void {
    if (this.processDead || !this.up) return;
    if (this.frozen) this.deferred.push(fn);
    else fn();
  }

  /** Events as the application sees them: paused while frozen, gone with its process. */
  wrap(events: SocketEvents): SocketEvents {
    const d = (fn: () => void) => this.dispatch(fn);
    return {
      connected: () => d(() => events.connected?.()),
      readable: () => d(() => events.readable?.()),
      end: () => d(() => events.end?.()),
      error: (why) => d(() => events.error?.(why)),
      writable: () => d(() => events.writable?.()),
    };
  }

  listen(port: number, backlog: number, accept: (sock: TcpSocket) => void): void {
    this.listeners.set(port, { backlog, pending: new Set(), queue: [], accept });
  }

  /** Active open from an ephemeral port not in use toward that peer (`avoid` rules out more). */
  connect(remote: number, port: number, events: SocketEvents, avoid?: (port: number) => boolean): TcpSocket {
    let local = this.nextPort;
    for (let i = 0; i < 30000; i++) {
      local = this.nextPort;
      this.nextPort = this.nextPort >= 60999 ? 32768 : this.nextPort + 1;
      if (!this.sockets.has(`${local}/${remote}/${port}`) && !avoid?.(local)) break;
    }
    const sock = new TcpSocket(this, local, remote, port, this.socketOptions, "SYN_SENT");
    sock.events = this.wrap(events);
    this.sockets.set(sock.key, sock);
    this.owned.add(sock);
    sock.connect();
    return sock;
  }

  hasSocket(localPort: number, remote: number, remotePort: number): boolean {
    return this.sockets.has(`${localPort}/${remote}/${remotePort}`);
  }

  input(seg: TcpSegment): void {
    if (!this.up || seg.dst !== this.address) return;
    const sock = this.sockets.get(`${seg.dstPort}/${seg.src}/${seg.srcPort}`);
    if (sock) {
      sock.input(seg);
      return;
    }
    const l = this.listeners.get(seg.dstPort);
    if (l && (seg.flags & (SYN | ACK | RST)) === SYN) {
      // Linux drops a SYN when the accept queue is full (the client retries).
      if (l.pending.size + l.queue.length >= l.backlog) return;
      const child = new TcpSocket(this, seg.dstPort, seg.src, seg.srcPort, this.socketOptions, "SYN_RCVD");
      this.sockets.set(child.key, child);
      l.pending.add(child);
      child.onEstablished = () => {
        l.pending.delete(child);
        if (child.state === "CLOSED") return;
        l.queue.push(child);
        this.acceptQueued(l);
      };
      child.acceptSyn(seg);
      return;
    }
    this.refuse(seg);
  }

  private acceptQueued(l: Listener): void {
    this.dispatch(() => {
      while (l.queue.length > 0) {
        const s = l.queue.shift()!;
        if (s.state === "CLOSED") continue;
        this.owned.add(s);
        l.accept(s);
      }
    });
  }

  /** Nothing here owns the segment: a RST (RFC 793), never to a RST. */
  private refuse(seg: TcpSegment): void {
    if (seg.flags & RST) return;
    const len = seg.payload.length + (seg.flags & SYN ? 1 : 0) + (seg.flags & FIN ? 1 : 0);
    const rst =
      seg.flags & ACK
        ? { seq: seg.ack, ack: 0, flags: RST }
        : { seq: 0, ack: seqAdd(seg.seq, len), flags: RST | ACK };
    this.emit({
      tos: 0,
      id: 0,
      dontFragment: true,
      ttl: 64,
      src: this.address,
      dst: seg.src,
      ipOptions: new Uint8Array(0),
      srcPort: seg.dstPort,
      dstPort: seg.srcPort,
      seq: rst.seq >>> 0,
      ack: rst.ack >>> 0,
      flags: rst.flags,
      window: 0,
      urgent: 0,
      options: [],
      payload: new Uint8Array(0),
    });
  }

  /** The application process dies: the kernel closes what it owned, the port refuses. */
  crashProcess(): void {
    if (this.processDead || !this.up) return;
    this.processDead = true;
    this.frozen = false;
    this.deferred = [];
    for (const l of this.listeners.values()) {
      for (const s of [...l.pending, ...l.queue]) s.abort();
    }
    this.listeners.clear();
    for (const s of [...this.owned]) s.close();
  }

  /** The machine dies: nothing is sent or answered any more. */
  crashHost(): void {
    this.up = false;
    for (const s of this.sockets.values()) s.vanish();
    this.sockets.clear();
    this.listeners.clear();
    this.deferred = [];
  }

  freeze(): void {
    if (!this.processDead) this.frozen = true;
  }

  thaw(): void {
    if (!this.frozen) return;
    this.frozen = false;
    const d = this.deferred;
    this.deferred = [];
    for (const fn of d) this.dispatch(fn);
  }

  /** The application can run (not dead, not frozen, machine up). */
  get serving(): boolean {
    return this.up && !this.processDead && !this.frozen;
  }
}
