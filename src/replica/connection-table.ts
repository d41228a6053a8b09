// The connection table and demultiplexing: client connections by (address, port), by the NAT
// port the kernel path gave them toward the original, and by the source port of their shadow
// conversations; the original's segments that arrive before the NATed SYN naming their port (the
// two capture channels are not ordered with each other) wait here, bounded. Segments that belong
// to nothing are counted by reason.
import { ACK, SYN, type TcpSegment } from "../wire/tcp.js";
import { assert } from "./assert.js";
import { ReplicatedConnection } from "./connection.js";
import { copyOptions } from "./offsets.js";

/** The original's segments held until the NATed SYN naming their port is handled, at most. */
export const MAX_UNBOUND = 16_384;
/** NATed SYNs remembered before their client's SYN was seen, at most. */
export const MAX_PENDING_NAT = 1024;
/** Connections the table refused (full) whose closes are still passed on, at most. */
export const MAX_PASSTHROUGH = 65_536;

/** A client's address and port. */
export interface ClientEnd {
  addr: number;
  port: number;
  /** The client's ISN (a SYN-ACK acknowledging another one is a new connection's). */
  isn: number;
  /** The client's latest acknowledgement seen (where it expects the next byte). */
  lastAck?: number;
  /** The sequence number after the newest byte (or FIN) the original sent it, if seen. */
  sentEnd?: number;
}

export function connectionKey(clientAddr: number, clientPort: number): number {
  return clientAddr * 65536 + clientPort;
}

export class ConnectionTable {
  private readonly conns = new Map<number, ReplicatedConnection>();
  private readonly byNatPort = new Map<number, ReplicatedConnection>();
  private readonly byShadowPort = new Map<number, ReplicatedConnection>();
  /** Connections whose NAT port no NATed SYN has named yet (see bindByAck). */
  private readonly awaitingNat = new Set<ReplicatedConnection>();
  /** Original's segments for a NAT port not bound yet (channel skew), by port. */
  private readonly unbound = new Map<number, Array<{ seg: TcpSegment; at: number }>>();
  private unboundCount = 0;
  /** NATed SYNs toward a replaced original of connections not tracked (see staleSyn). */
  private readonly staleSyns = new Set<number>();
  /** NATed SYNs seen before the client's SYN: client ISN -> NAT port. */
  private readonly pendingNat = new Map<number, number>();
  /**
   * Connections refused because the table was full, by NAT port: the kernel path holds the
   * original's FIN and RST of every connection, so the engine must still pass theirs on (found by
   * the simulator: a refused connection hung at its close). Client ISN -> client until the NATed
   * SYN names the port. Both bounded; the oldest entry goes first (counted).
   */
  private readonly passthrough = new Map<number, ClientEnd>();
  private readonly passthroughByClient = new Map<number, ClientEnd>();
  private readonly refused = new Map<number, ClientEnd>();
  /** Refused connections fenced with the original they were on (see forgetNat). */
  private readonly orphans = new Set<number>();
  /** Refused connections forgotten at the bound: their closes can no longer be passed on. */
  passthroughEvicted = 0;
  /** NAT ports learnt from the original's acknowledgements (their NATed SYN lost to capture). */
  natInferred = 0;
  private nextPort: number;
  /** Segments that belong to no conversation the engine follows, in all and by reason. */
  unmatched = 0;
  readonly unmatchedBy: Record<string, number> = {};

  constructor(
    private readonly portRange: [number, number],
    private readonly synTimeoutMs: number,
  ) {
    this.nextPort = portRange[0];
  }

  get size(): number {
    return this.conns.size;
  }

  get(key: number): ReplicatedConnection | undefined {
    return this.conns.get(key);
  }

  values(): IterableIterator<ReplicatedConnection> {
    return this.conns.values();
  }

  byNat(port: number): ReplicatedConnection | undefined {
    return this.byNatPort.get(port);
  }

  byShadow(port: number): ReplicatedConnection | undefined {
    return this.byShadowPort.get(port);
  }

  /** Is `conn` still the table's entry for its key (not deleted, not replaced)? */
  holds(conn: ReplicatedConnection): boolean {
    return this.conns.get(conn.key) === conn;
  }

  /** A new connection from the client's SYN; its NAT port if that SYN was seen first. Returns
   * the held segments of the original to replay for it. */
  add(conn: ReplicatedConnection): Array<{ seg: TcpSegment; at: number }> {
    assert(!this.conns.has(conn.key), `table: ${conn.id} added twice`);
    this.conns.set(conn.key, conn);
    const nat = this.pendingNat.get(conn.clientIsn);
    if (nat === undefined) {
      this.awaitingNat.add(conn);
      return [];
    }
    this.pendingNat.delete(conn.clientIsn);
    return this.bindNat(conn, nat);
  }

  /**
   * The kernel path's SYN toward the original: the NAT port of the half-open connection with
   * this ISN, or remembered until that connection's SYN is seen. Returns the connection it bound
   * (if any) and the held segments of the original to replay for it.
   */
  natSyn(
    seg: TcpSegment,
  ): { conn: ReplicatedConnection; replay: Array<{ seg: TcpSegment; at: number }> } | undefined {
    for (const conn of this.conns.values()) {
      // Unanswered, it may be bound already: after a failover the client's retransmitted SYN
      // goes to the new original, maybe from another NAT port. The latest binding wins.
      if (conn.phase === "syn" && conn.clientIsn === seg.seq && conn.originalIsn === undefined) {
        if (conn.natPort !== undefined && this.byNatPort.get(conn.natPort) === conn)
          this.byNatPort.delete(conn.natPort);
        return { conn, replay: this.bindNat(conn, seg.srcPort) };
      }
    }
    const refused = this.refused.get(seg.seq);
    if (refused) {
      this.refused.delete(seg.seq);
      this.passThrough(seg.srcPort, refused);
      return undefined;
    }
    // Late (the other channel was behind): the original's acknowledgement bound it already.
    if (this.byNatPort.get(seg.srcPort)?.clientIsn === seg.seq) return undefined;
    // Bounded; the oldest entry goes first. SYNs from the appliance's own address that are not the
    // kernel path's (its probes) land here too and must not push out a real binding all at once.
    if (this.pendingNat.size >= MAX_PENDING_NAT) this.pendingNat.delete(this.pendingNat.keys().next().value!);
    this.pendingNat.set(seg.seq, seg.srcPort);
    this.staleSyns.delete(seg.seq); // its retransmission reached the current original
    return undefined;
  }

  /**
   * The original's segment on a port no NATed SYN named: if it acknowledges the client's
   * sequence space of a connection still waiting for its NAT port (a SYN-ACK acknowledges its
   * client's ISN + 1; later segments at most its bytes, SYN and FIN), that port is the
   * connection's. The NATed SYN travels once and the capture can lose it; without this, every
   * segment of the original on that connection, its FIN included, expired unheard and the client
   * waited for a close only the engine releases (found by the simulator, seed 994). ISNs are
   * random 32-bit numbers, so an acknowledgement inside another connection's few bytes is
   * as unlikely as a wrong guess of its ISN; the appliance's own probes acknowledge their own.
   */
  bindByAck(
    seg: TcpSegment,
  ): { conn: ReplicatedConnection; replay: Array<{ seg: TcpSegment; at: number }> } | undefined {
    if (!(seg.flags & ACK)) return undefined;
    for (const conn of this.awaitingNat) {
      const d = (seg.ack - conn.clientIsn) >>> 0;
      const span = seg.flags & SYN ? 1 : conn.client.end + 2;
      if (d >= 1 && d <= span) {
        this.natInferred++;
        return { conn, replay: this.bindNat(conn, seg.dstPort) };
      }
    }
    return undefined;
  }

  /**
   * The kernel path's SYN of a refused connection went to an original just replaced (the nft
   * race, see Engine.onStaleNatSyn): nothing will carry it on, so it is an orphan from now on
   * (its client's next segment draws a RST) instead of waiting for a NAT port toward the
   * current original that never comes (simulator seed 1817). True if there was one.
   */
  orphanRefused(clientIsn: number): boolean {
    const c = this.refused.get(clientIsn);
    if (!c) return false;
    this.refused.delete(clientIsn);
    if (this.orphans.size >= MAX_PASSTHROUGH) this.orphans.delete(this.orphans.keys().next().value!);
    this.orphans.add(connectionKey(c.addr, c.port));
    return true;
  }

  /**
   * The kernel path's SYN toward an original just replaced, of a connection the engine does not
   * track (its client's SYN lost to capture): remembered (bounded, oldest first) so that its
   * client's handshake ACK makes it an orphan (adopt()) instead of an unknown connection left on
   * a fenced host (simulator seed 2049).
   */
  staleSyn(clientIsn: number): void {
    if (this.staleSyns.size >= MAX_PENDING_NAT) this.staleSyns.delete(this.staleSyns.values().next().value!);
    this.staleSyns.add(clientIsn);
  }

  /** A connection the table is too full to track: only its closes will be passed on. */
  refuse(clientIsn: number, client: ClientEnd): void {
    const nat = this.pendingNat.get(clientIsn);
    if (nat !== undefined) {
      this.pendingNat.delete(clientIsn);
      this.passThrough(nat, client);
      return;
    }
    if (this.refused.size >= MAX_PASSTHROUGH) {
      this.refused.delete(this.refused.keys().next().value!);
      this.passthroughEvicted++;
    }
    this.refused.set(clientIsn, client);
  }

  /**
   * A segment of a connection the engine does not track (its client's SYN was lost to capture):
   * if the NATed SYN of that connection was seen (its ISN is the segment's sequence number - 1,
   * the client's handshake ACK), its closes are passed on from now on (the kernel path holds them
   * for every connection; found by the simulator, seed 332, a client that hung at its close).
   * Returns the original's segments held for that port, to replay.
   */
  adopt(seg: TcpSegment): Array<{ seg: TcpSegment; at: number }> {
    const isn = (seg.seq - 1) >>> 0;
    if (this.staleSyns.delete(isn)) {
      if (this.orphans.size >= MAX_PASSTHROUGH) this.orphans.delete(this.orphans.keys().next().value!);
      this.orphans.add(connectionKey(seg.src, seg.srcPort));
      return [];
    }
    const nat = this.pendingNat.get(isn);
    if (nat === undefined) return [];
    this.pendingNat.delete(isn);
    this.passThrough(nat, { addr: seg.src, port: seg.srcPort, isn });
    const waiting = this.unbound.get(nat) ?? [];
    this.unbound.delete(nat);
    this.unboundCount -= waiting.length;
    return waiting;
  }

  /** A deleted connection's closes are passed on from now on (its NAT port is free again). */
  remember(natPort: number, client: ClientEnd): void {
    if (!this.byNatPort.has(natPort)) this.passThrough(natPort, client);
  }

  private passThrough(natPort: number, client: ClientEnd): void {
    this.dropPassthrough(natPort);
    if (this.passthrough.size >= MAX_PASSTHROUGH) {
      this.dropPassthrough(this.passthrough.keys().next().value!);
      this.passthroughEvicted++;
    }
    this.passthrough.set(natPort, client);
    this.passthroughByClient.set(connectionKey(client.addr, client.port), client);
  }

  private dropPassthrough(natPort: number): void {
    const c = this.passthrough.get(natPort);
    if (!c) return;
    this.passthrough.delete(natPort);
    this.passthroughByClient.delete(connectionKey(c.addr, c.port));
  }

  /** A SYN-ACK on a passed-through port that answers another client ISN is a new connection's:
   * closes on the port are no longer passed on to the old client. */
  synAckOn(natPort: number, ack: number): void {
    const c = this.passthrough.get(natPort);
    if (c && ack !== (c.isn + 1) >>> 0) this.dropPassthrough(natPort);
  }

  /** The client of a refused connection with this NAT port, if any. */
  passedThrough(natPort: number): ClientEnd | undefined {
    return this.passthrough.get(natPort);
  }

  get passthroughTracked(): number {
    return this.passthrough.size + this.refused.size;
  }

  private bindNat(conn: ReplicatedConnection, port: number): Array<{ seg: TcpSegment; at: number }> {
    this.dropPassthrough(port); // the port is a tracked connection's now
    conn.onReplacedOriginal = false; // its kernel path goes to the current original
    this.awaitingNat.delete(conn);
    const old = this.byNatPort.get(port);
    if (old && old !== conn) old.natPort = undefined;
    conn.natPort = port;
    this.byNatPort.set(port, conn);
    const waiting = this.unbound.get(port);
    if (!waiting) return [];
    this.unbound.delete(port);
    this.unboundCount -= waiting.length;
    assert(this.unboundCount >= 0, "table: unbound count below zero");
    return waiting;
  }

  /**
   * New connections go to a new original: NATed SYNs and NAT ports seen toward the old one mean
   * nothing now. NAT ports are unique per backend only: a new connection to the new original may
   * get a port a spliced connection had toward the old one (found by the simulator, seed 211:
   * the new connection's segments were taken for the old one's and ignored).
   */
  /** The refused connection of this client, if its NAT port is known. */
  passedThroughClient(addr: number, port: number): ClientEnd | undefined {
    return this.passthroughByClient.get(connectionKey(addr, port));
  }

  forgetNat(): ClientEnd[] {
    // NATed SYNs toward the replaced original whose client's SYN was not seen: a handshake
    // completed there is an orphan (simulator seed 2049: its SYN-ACK slipped through before the
    // fence, and the client waited on a fenced host for good).
    for (const isn of this.pendingNat.keys()) this.staleSyn(isn);
    this.pendingNat.clear();
    for (const c of this.byNatPort.values()) {
      c.natPort = undefined;
      // Unanswered: its retransmitted SYN goes to the new original, from a port to learn again.
      if (c.phase === "syn") this.awaitingNat.add(c);
    }
    this.byNatPort.clear();
    // Refused connections to the old original are fenced with it: nothing carries them on, and
    // their clients would retransmit into the fence (found by the simulator, seed 211). Their
    // next segment is answered with a RST (orphaned()).
    const orphaned = [...this.passthrough.values()];
    for (const c of orphaned) {
      if (this.orphans.size >= MAX_PASSTHROUGH) this.orphans.delete(this.orphans.keys().next().value!);
      this.orphans.add(connectionKey(c.addr, c.port));
    }
    this.passthrough.clear();
    this.passthroughByClient.clear();
    return orphaned;
  }

  /** Was this client's connection refused and then fenced with its original? (Forgotten once
   * the client resets or opens a new connection from that port.) */
  orphaned(addr: number, port: number, flags: { rst: boolean; syn: boolean }): boolean {
    const key = connectionKey(addr, port);
    if (!this.orphans.has(key)) return false;
    if (flags.rst || flags.syn) {
      this.orphans.delete(key);
      return false;
    }
    return true;
  }

  /** Counts a segment that belongs to nothing the engine follows. */
  unmatch(reason: string, n = 1): void {
    this.unmatched += n;
    this.unmatchedBy[reason] = (this.unmatchedBy[reason] ?? 0) + n;
  }

  /** Bounded: at most MAX_UNBOUND segments over all ports, each kept at most synTimeoutMs. */
  holdUnbound(seg: TcpSegment, now: number): void {
    if (this.unboundCount >= MAX_UNBOUND) {
      this.unmatch("original-unbound-full");
      return;
    }
    const list = this.unbound.get(seg.dstPort) ?? [];
    list.push({
      seg: { ...seg, payload: Uint8Array.from(seg.payload), options: copyOptions(seg.options) },
      at: now,
    });
    this.unbound.set(seg.dstPort, list);
    this.unboundCount++;
  }

  /** Expires held segments; reports when the next ones expire. */
  expireUnbound(now: number, want: (t: number) => void): void {
    if (this.unboundCount === 0) return;
    for (const [port, list] of this.unbound) {
      if (now - list[0]!.at >= this.synTimeoutMs) {
        this.unbound.delete(port);
        this.unboundCount -= list.length;
        this.unmatch("original-unbound-expired", list.length);
      }
    }
    for (const list of this.unbound.values()) want(list[0]!.at + this.synTimeoutMs);
  }

  get unboundHeld(): number {
    return this.unboundCount;
  }

  /** A source port for the connection's shadow conversations, or undefined when all are taken. */
  allocateShadowPort(conn: ReplicatedConnection): number | undefined {
    const [lo, hi] = this.portRange;
    const span = hi - lo + 1;
    for (let i = 0; i < span; i++) {
      const p = this.nextPort;
      this.nextPort = p >= hi ? lo : p + 1;
      if (!this.byShadowPort.has(p)) {
        conn.port = p;
        this.byShadowPort.set(p, conn);
        return p;
      }
    }
    return undefined;
  }

  delete(conn: ReplicatedConnection): void {
    this.conns.delete(conn.key);
    this.awaitingNat.delete(conn);
    if (conn.natPort !== undefined && this.byNatPort.get(conn.natPort) === conn)
      this.byNatPort.delete(conn.natPort);
    if (conn.port !== undefined && this.byShadowPort.get(conn.port) === conn)
      this.byShadowPort.delete(conn.port);
  }

  /** Whole-table consistency (tests and the simulator; O(n)). */
  checkInvariants(maxConnections: number): void {
    assert(this.conns.size <= maxConnections, "table: more connections than the limit");
    let held = 0;
    for (const list of this.unbound.values()) held += list.length;
    assert(held === this.unboundCount, `table: unbound count ${this.unboundCount}, held ${held}`);
    assert(held <= MAX_UNBOUND, "table: unbound hold beyond its limit");
    assert(this.pendingNat.size <= MAX_PENDING_NAT, "table: pending NAT beyond its limit");
    assert(this.staleSyns.size <= MAX_PENDING_NAT, "table: stale SYNs beyond their limit");
    for (const c of this.awaitingNat)
      assert(
        c.natPort === undefined && this.conns.get(c.key) === c,
        `table: ${c.id} awaits a NAT port it has`,
      );
    for (const [port, c] of this.byNatPort)
      assert(
        c.natPort === port && this.conns.get(c.key) === c,
        `table: NAT port ${port} names a stale entry`,
      );
    for (const [port, c] of this.byShadowPort)
      assert(
        c.port === port && this.conns.get(c.key) === c,
        `table: shadow port ${port} names a stale entry`,
      );
  }
}
