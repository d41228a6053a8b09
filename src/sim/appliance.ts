// The appliance as the simulator sees it: the kernel path (conntrack, DNAT to the original, SNAT
// to the appliance's address, the nft rules that hold the original's FIN/RST, drop the replicas'
// replies and fence former originals), the two capture channels with their own batching, skew,
// stalls and drops, the real ReplicationEngine on the simulated clock, its injected segments,
// its probes (a real TCP handshake from the appliance's own stack) and its promotions (the
// kernel path retargeted a few milliseconds later, as an nft transaction is).
import { ACK, FIN, RST, SYN, buildSegment, parseSegment, type TcpSegment } from "../wire/tcp.js";
import { ReplicationEngine } from "../replica/engine.js";
import type { EngineConfig, EngineEvent } from "../replica/types.js";
import { TcpHost } from "./host.js";
import type { Rng } from "./rng.js";
import type { Scheduler, Timer } from "./scheduler.js";

interface Conntrack {
  clientAddr: number;
  clientPort: number;
  backend: number;
  natPort: number;
  /** Conntrack's state: SYN_SENT, SYN_RECV (the backend answered), ESTABLISHED (the client
   * acknowledged), CLOSE (a RST passed: a later SYN revives the entry with its mapping, as Linux
   * does for a close the client did not begin). Entries not established are forgotten at a
   * retarget. */
  state: "syn_sent" | "syn_recv" | "established" | "close";
  /** When a packet last refreshed the entry (µs): a CLOSE entry expires 10 s after it. */
  seenUs: number;
}

/** nf_conntrack_tcp_timeout_close: a CLOSE entry lives 10 s past its last packet. */
const CT_CLOSE_TIMEOUT_US = 10_000_000;

export interface CaptureTuning {
  /** Delay from capture to the engine, µs (batching in the helper and the pipe). */
  batchUs: [number, number];
  /** Probability that a captured packet never reaches the engine (a full ring). */
  drop: number;
}

export interface ApplianceStats {
  kernelForwarded: number;
  kernelDropped: Record<string, number>;
  captured: Record<"client" | "backend", number>;
  captureDropped: Record<"client" | "backend", number>;
  injected: number;
  probes: number;
}

type Channel = "client" | "backend";

/** Where a segment toward the client came from (checked: FIN/RST only from the engine). */
export type ClientVia = "kernel" | "engine";

export class Appliance {
  readonly engine: ReplicationEngine;
  readonly events: Array<{ at: number; event: EngineEvent }> = [];
  readonly stats: ApplianceStats = {
    kernelForwarded: 0,
    kernelDropped: {},
    captured: { client: 0, backend: 0 },
    captureDropped: { client: 0, backend: 0 },
    injected: 0,
    probes: 0,
  };
  /** The kernel path's original (DNAT target, the hold rule's address). */
  private original: number;
  private readonly fenced = new Set<number>();
  private readonly conntrack = new Map<string, Conntrack>();
  private readonly byNat = new Map<string, Conntrack>();
  /** The appliance's own stack (probes), on the SNAT address. */
  readonly local: TcpHost;
  private readonly queues: Record<Channel, Array<{ bytes: Uint8Array; us: number }>> = {
    client: [],
    backend: [],
  };
  private readonly deliveries: Record<Channel, Timer | undefined> = { client: undefined, backend: undefined };
  /** Until when each capture channel delivers nothing (a stalled helper, a paused channel). */
  readonly channelStall: Record<Channel, number> = { client: 0, backend: 0 };
  /** Until when the engine's event loop runs nothing (a GC pause, a busy loop). */
  engineStallUntil = 0;
  private tickTimer: { timer: Timer; at: number } | undefined;
  /** Called after every engine call (the simulator checks invariants there). */
  afterEngine: () => void = () => undefined;
  /** Each engine event as it comes out. */
  onEvent: (event: EngineEvent) => void = () => undefined;
  /** Outputs toward the client, with how they got there. */
  onClientSegment: (seg: TcpSegment, via: ClientVia) => void = () => undefined;

  constructor(
    readonly config: EngineConfig,
    private readonly sched: Scheduler,
    private readonly rng: Rng,
    readonly capture: CaptureTuning,
    /** Sends a segment out on the link toward its destination address. */
    private readonly route: (seg: TcpSegment) => void,
  ) {
    this.engine = new ReplicationEngine(config);
    this.original = config.original;
    this.local = new TcpHost(
      "appliance",
      config.snatAddress,
      sched,
      rng.fork(),
      (seg) => this.fromLocal(seg),
      { rcvBuf: 65536, sndBuf: 65536, offer: { sack: true, timestamps: true, wscale: true } },
      40000,
    );
  }

  addReplica(id: string, address: number): void {
    this.engine.addReplica({ id, address });
    this.drain();
  }

  /** The engine's clock: the simulator's, in ms. */
  private get now(): number {
    return this.sched.nowMs;
  }

  // ------------------------------------------------------------------ the kernel path

  private drop(why: string): void {
    this.stats.kernelDropped[why] = (this.stats.kernelDropped[why] ?? 0) + 1;
  }

  /** A segment from the client side (to the VIP). */
  fromClient(seg: TcpSegment): void {
    const c = this.config;
    if (seg.dst !== c.vip || seg.dstPort !== c.port) return this.drop("not-vip");
    this.captureCopy("client", seg);
    const key = `${seg.src}:${seg.srcPort}`;
    let ct = this.conntrack.get(key);
    if (ct?.state === "close" && this.sched.now - ct.seenUs > CT_CLOSE_TIMEOUT_US) {
      this.forget(key, ct);
      ct = undefined;
    }
    if (!ct) {
      const kind = seg.flags & (SYN | ACK | RST | FIN);
      // Linux: a SYN opens an entry; a bare ACK (data too) is picked up mid-stream as ESTABLISHED
      // (nf_conntrack_tcp_loose); FIN, RST or SYN-ACK without an entry are invalid.
      // The kernel path's guard (nft.ts): with replication, a connection is never picked up
      // mid-stream (toward the current original it is one that host does not know: a spliced
      // connection whose entry expired or was deleted at the failover), and an invalid segment
      // for the VIP goes nowhere.
      if (kind !== SYN && kind !== ACK) {
        if (this.guardsMidstream()) return this.drop("invalid-to-vip");
        // Without it, nothing NATs the segment: the VIP is the appliance's own address, and its
        // stack answers a segment no socket owns with a RST.
        if (!(seg.flags & RST)) this.refuseAsVip(seg);
        return this.drop("no-conntrack");
      }
      if (kind === ACK && this.guardsMidstream()) return this.drop("midstream-pickup");
      ct = {
        clientAddr: seg.src,
        clientPort: seg.srcPort,
        backend: this.original,
        natPort: this.natPort(this.original, seg.srcPort),
        state: kind === SYN ? "syn_sent" : "established",
        seenUs: this.sched.now,
      };
      this.conntrack.set(key, ct);
      this.byNat.set(`${ct.backend}:${ct.natPort}`, ct);
    }
    ct.seenUs = this.sched.now;
    // Conntrack sees the packet before the forward chain (fence, hold) drops it.
    if (ct.state === "syn_recv" && seg.flags & ACK && !(seg.flags & SYN)) ct.state = "established";
    if (seg.flags & RST) ct.state = "close";
    else if (ct.state === "close" && (seg.flags & (SYN | ACK)) === SYN) ct.state = "syn_sent";
    if (this.fenced.has(ct.backend)) return this.drop("fenced");
    const out: TcpSegment = {
      ...seg,
      src: c.snatAddress,
      srcPort: ct.natPort,
      dst: ct.backend,
      ttl: seg.ttl - 1,
    };
    // The NATed SYN leaves on the backend side; the client channel's filter takes it.
    if ((seg.flags & (SYN | ACK)) === SYN) this.captureCopy("client", out);
    this.stats.kernelForwarded++;
    this.route(out);
  }

  /** Linux keeps the client's port unless that tuple is taken toward the backend. */
  private natPort(backend: number, want: number): number {
    let p = want;
    while (this.byNat.has(`${backend}:${p}`) || this.local.hasSocket(p, backend, this.config.port))
      p = p >= 65535 ? 1024 : p + 1;
    return p;
  }

  /** A segment from the backend side (a backend's or a replica's). */
  fromBackend(seg: TcpSegment): void {
    const c = this.config;
    if (seg.dst === c.replicationAddress) {
      if (seg.srcPort === c.port) this.captureCopy(seg.flags & SYN ? "client" : "backend", seg);
      return this.drop("replica-replies-to-engine"); // raw prerouting drop
    }
    if (seg.dst !== c.snatAddress) return this.drop("not-ours");
    if (seg.srcPort === c.port) this.captureCopy("backend", seg);
    let ct = this.byNat.get(`${seg.src}:${seg.dstPort}`);
    if (ct?.state === "close" && this.sched.now - ct.seenUs > CT_CLOSE_TIMEOUT_US) {
      this.forget(`${ct.clientAddr}:${ct.clientPort}`, ct);
      ct = undefined;
    }
    if (!ct || seg.srcPort !== c.port) {
      this.local.input(seg); // the appliance's own connections (probes)
      return;
    }
    ct.seenUs = this.sched.now;
    if (seg.flags & SYN && seg.flags & ACK && ct.state === "syn_sent") ct.state = "syn_recv";
    if (seg.flags & RST) ct.state = "close";
    if (this.fenced.has(seg.src)) return this.drop("fenced");
    if (seg.src === this.original && seg.flags & (FIN | RST)) return this.drop("original-close-held");
    const out: TcpSegment = {
      ...seg,
      src: c.vip,
      srcPort: c.port,
      dst: ct.clientAddr,
      dstPort: ct.clientPort,
      ttl: seg.ttl - 1,
    };
    this.stats.kernelForwarded++;
    this.onClientSegment(out, "kernel");
    this.route(out);
  }

  /** The appliance's own stack sends (probes): out the backend side, seen by the capture. */
  private fromLocal(seg: TcpSegment): void {
    if ((seg.flags & (SYN | ACK)) === SYN && seg.dstPort === this.config.port)
      this.captureCopy("client", seg);
    this.route(seg);
  }

  /** New connections go to `original`; `previous` is fenced; its entries that are not
   * established forgotten (as proxy.ts does with conntrack -D: SYN_SENT, SYN_RECV, CLOSE). */
  private retarget(original: number, previous: number): void {
    this.fenced.add(previous);
    this.fenced.delete(original);
    this.original = original;
    for (const [k, ct] of this.conntrack) {
      if (ct.backend === previous && ct.state !== "established") this.forget(k, ct);
    }
  }

  private forget(key: string, ct: Conntrack): void {
    this.conntrack.delete(key);
    if (this.byNat.get(`${ct.backend}:${ct.natPort}`) === ct)
      this.byNat.delete(`${ct.backend}:${ct.natPort}`);
  }

  /** The appliance's own stack answers a segment for the VIP that no socket owns. */
  private refuseAsVip(seg: TcpSegment): void {
    const len = seg.payload.length + (seg.flags & FIN ? 1 : 0);
    const out: TcpSegment = {
      ...seg,
      src: this.config.vip,
      srcPort: this.config.port,
      dst: seg.src,
      dstPort: seg.srcPort,
      ttl: 64,
      seq: seg.flags & ACK ? seg.ack : 0,
      ack: seg.flags & ACK ? 0 : (seg.seq + len) >>> 0,
      flags: seg.flags & ACK ? RST : RST | ACK,
      window: 0,
      options: [],
      payload: new Uint8Array(0),
    };
    this.onClientSegment(out, "kernel");
    this.route(out);
  }

  /** Whether the kernel path drops a connection's mid-stream pickup (nft.ts "midstream-pickup"):
   * a method so that a test can plant the rule's absence. */
  guardsMidstream(): boolean {
    return true;
  }

  // ------------------------------------------------------------------ capture

  private captureCopy(channel: Channel, seg: TcpSegment): void {
    this.stats.captured[channel]++;
    if (this.rng.chance(this.capture.drop)) {
      this.stats.captureDropped[channel]++;
      return;
    }
    const q = this.queues[channel];
    q.push({ bytes: buildSegment(seg), us: this.sched.now });
    if (!this.deliveries[channel]) {
      const [lo, hi] = this.capture.batchUs;
      this.deliveries[channel] = this.sched.after(lo + this.rng.float() * (hi - lo), () =>
        this.deliver(channel),
      );
    }
  }

  /** A batch of one channel reaches the engine (later if the channel or the engine stalls). */
  private deliver(channel: Channel): void {
    const stalled = Math.max(this.channelStall[channel], this.engineStallUntil);
    if (stalled > this.sched.now) {
      this.deliveries[channel] = this.sched.at(stalled, () => this.deliver(channel));
      return;
    }
    this.deliveries[channel] = undefined;
    const q = this.queues[channel];
    // A read returns what the pipe holds, sometimes cut short: the rest comes with the next one.
    const n = this.rng.chance(0.2) ? this.rng.int(1, q.length) : q.length;
    const batch = q.splice(0, n);
    for (const p of batch) {
      const r = parseSegment(p.bytes, { verifyChecksums: true });
      if (!r.ok) throw new Error(`capture: a captured packet did not parse: ${r.reason}`);
      this.engine.onSegment(r.segment, this.now, { channel, timeUs: p.us });
      this.afterEngine();
    }
    this.engine.flush(this.now);
    this.afterEngine();
    this.drain();
    if (q.length > 0)
      this.deliveries[channel] = this.sched.after(this.rng.int(1, 50), () => this.deliver(channel));
  }

  // ------------------------------------------------------------------ the engine's outputs

  /** Takes the engine's outputs: sends, probes, promotions, events; schedules its timer. */
  drain(): void {
    for (const o of this.engine.drain()) {
      if (o.type === "send") {
        this.stats.injected++;
        if (o.to === "client") this.onClientSegment(o.segment, "engine");
        this.route(o.segment);
      } else if (o.type === "event") {
        this.events.push({ at: this.now, event: o.event });
        this.onEvent(o.event);
      } else if (o.type === "probe") {
        this.probe(o.id, o.address, o.timeoutMs, o.copies);
      } else if (o.type === "fence") {
        const { address } = o;
        this.nft(() => this.fenced.add(address));
      } else {
        const { original, previous } = o;
        this.nft(() => this.retarget(original, previous));
      }
    }
    this.scheduleTick(this.sched.now + this.rng.int(10, 100));
  }

  /** An nft transaction: it takes a few milliseconds (the old rules apply meanwhile), one after
   * the other (Proxy.kernelUpdate). */
  private nft(apply: () => void): void {
    this.nftDoneUs = Math.max(this.sched.now, this.nftDoneUs) + this.rng.int(500, 5000);
    this.sched.at(this.nftDoneUs, apply);
  }
  private nftDoneUs = 0;

  private scheduleTick(atUs: number): void {
    if (this.tickTimer && this.tickTimer.at <= atUs) return;
    if (this.tickTimer) this.tickTimer.timer.cancelled = true;
    const timer = this.sched.at(atUs, () => this.tick());
    this.tickTimer = { timer, at: atUs };
  }

  private tick(): void {
    this.tickTimer = undefined;
    if (this.engineStallUntil > this.sched.now) {
      this.scheduleTick(this.engineStallUntil);
      return;
    }
    const next = this.engine.tick(this.now);
    this.afterEngine();
    this.engine.flush(this.now);
    this.afterEngine();
    this.drain();
    // setTimeout fires up to a millisecond late.
    if (next !== undefined) this.scheduleTick(Math.max(next * 1000, this.sched.now) + this.rng.int(0, 1000));
  }

  /** A probe: `copies` real handshakes from the appliance, answered once as probe.ts's
   * probeCopies answers (alive or refused if one was, silent only if all were). */
  private probe(id: number, address: number, timeoutMs: number, copies = 1): void {
    this.stats.probes++;
    const sentUs = this.sched.now;
    let done = false;
    let left = copies;
    const answer = (alive: boolean, why: string) => {
      if (done) return;
      done = true;
      // The answer is handled by the event loop a little later (or after a stall).
      const at = Math.max(this.sched.now + this.rng.int(20, 200), this.engineStallUntil);
      this.sched.at(at, () => {
        this.engine.probeResult(id, alive, this.now, why, sentUs);
        this.afterEngine();
        this.drain();
      });
    };
    const one = () => {
      let over = false;
      const end = (alive: boolean, why: string) => {
        if (over) return;
        over = true;
        timer.cancelled = true;
        if (alive) sock.abort();
        else if (sock.state !== "CLOSED") sock.terminate("closed");
        left--;
        if (alive || why === "ECONNREFUSED" || left === 0) answer(alive, why);
      };
      const sock = this.local.connect(
        address,
        this.config.port,
        {
          connected: () => end(true, "connected"),
          error: (why) => end(false, why === "refused" || why === "reset" ? "ECONNREFUSED" : "ETIMEDOUT"),
        },
        (p) => this.byNat.has(`${address}:${p}`),
      );
      const timer = this.sched.after(timeoutMs * 1000, () => end(false, "no answer to the handshake"));
    };
    for (let i = 0; i < copies; i++) one();
  }

  /** An external promotion (an operator's switchover, a hypervisor's failure signal). */
  /** A switchover asked for by the operator (as Proxy.promote asks it). */
  promote(id: string): void {
    this.engine.switchover(id, this.now);
    this.afterEngine();
    this.drain();
  }
}
