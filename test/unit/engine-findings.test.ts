// Regression tests for what the simulator (npm run sim) and reviews found in the replication
// engine, each through ReplicationEngine's public API (onSegment, tick, flush, drain, probeResult,
// promote, stats): hand-made segments of one or more client connections, a fake clock, and what
// the engine sends, signals and counts. Each test says how its case was found.
import t from "tap";
import { MAX_PASSTHROUGH } from "../../src/replica/connection-table.js";
import { ReplicationEngine, toSeq } from "../../src/replica/engine.js";
import {
  DEFAULT_LIMITS,
  type EngineConfig,
  type EngineEvent,
  type EngineOutput,
} from "../../src/replica/types.js";
import { parseIPv4 } from "../../src/wire/ipv4.js";
import { ACK, FIN, RST, SYN, findOption, type TcpOption, type TcpSegment } from "../../src/wire/tcp.js";
import {
  CLIENT,
  CLIENT_ISN,
  CPORT,
  ORIGINAL,
  ORIGINAL_ISN,
  PORT,
  R1,
  REPL,
  REPLICA_ADDRESSES,
  SNAT,
  VIP,
  bytes,
  clientSyn,
  engineConfig,
  eventsIn,
  failureConfig,
  seg,
  sendsIn,
  text,
} from "../engine-parts.js";

type Probe = Extract<EngineOutput, { type: "probe" }>;
interface Timestamps {
  tsval: number;
  tsecr: number;
}

const timestamps = (ts: Timestamps): TcpOption[] => [
  { kind: "nop" },
  { kind: "nop" },
  { kind: "timestamp", ...ts },
];

/** Another client host. */
const OTHER_CLIENT = parseIPv4("10.0.0.3");

/** The client offers timestamps (so PAWS guards what a splice sends it). */
const CLIENT_OPTIONS: TcpOption[] = [{ kind: "mss", value: 1460 }, ...timestamps({ tsval: 777, tsecr: 0 })];

/**
 * The engine and what it put out: the segments are returned by each step, events and probes are
 * collected. With `channelOf`, every segment carries a capture time (the engine's clock, in µs)
 * on the channel it names.
 */
class Appliance {
  readonly engine: ReplicationEngine;
  readonly events: EngineEvent[] = [];
  readonly probes: Probe[] = [];
  /** When tick() last said it has work next. */
  next: number | undefined;
  channelOf: ((s: TcpSegment) => string) | undefined;

  constructor(
    replicas: readonly string[] = ["r1"],
    over: Partial<EngineConfig> = {},
    public now = 1000,
  ) {
    this.engine = new ReplicationEngine(engineConfig(over));
    for (const id of replicas) this.engine.addReplica({ id, address: REPLICA_ADDRESSES[id]! });
    this.take();
  }

  /** One captured segment and the flush after it: what the engine sent. */
  feed(s: TcpSegment): TcpSegment[] {
    const channel = this.channelOf?.(s);
    this.engine.onSegment(s, this.now, channel ? { channel, timeUs: this.now * 1000 } : undefined);
    this.engine.flush(this.now);
    return this.take();
  }

  tick(at = this.now): TcpSegment[] {
    this.now = at;
    this.next = this.engine.tick(at);
    this.engine.flush(at);
    return this.take();
  }

  /** What the engine put out since the last look: its segments (events and probes are kept). */
  take(): TcpSegment[] {
    const out = this.engine.drain();
    this.events.push(...eventsIn(out));
    this.probes.push(...out.filter((o): o is Probe => o.type === "probe"));
    return sendsIn(out).map((o) => o.segment);
  }

  /** Those of `sent` that go to the client's port `port`. */
  toClient(sent: TcpSegment[], port = CPORT): TcpSegment[] {
    return sent.filter((s) => s.dst === CLIENT && s.dstPort === port);
  }

  eventsOf<K extends EngineEvent["type"]>(type: K): Array<Extract<EngineEvent, { type: K }>> {
    return this.events.filter((e): e is Extract<EngineEvent, { type: K }> => e.type === type);
  }
}

/** One client connection through the appliance: where each side's stream stands. */
class Flow {
  /** Client stream units sent (bytes, +1 for a FIN), and the original's. */
  clientSent = 0;
  originalSent = 0;
  natPort: number;
  /** Who answers as the original (another host after a promotion). */
  originalAt = ORIGINAL;
  shadowPort = 0;
  readonly replicaIsn = new Map<string, number>();

  constructor(
    readonly a: Appliance,
    readonly port = CPORT,
    readonly isn = CLIENT_ISN,
    public originalIsn = ORIGINAL_ISN,
  ) {
    this.natPort = port;
  }

  syn(): TcpSegment[] {
    return this.a.feed(clientSyn(this.port, this.isn, { window: 64240, options: CLIENT_OPTIONS }));
  }

  /** The kernel path's SYN toward the original, from NAT port `natPort`. */
  natSyn(natPort = this.port): TcpSegment[] {
    this.natPort = natPort;
    const dst = this.originalAt;
    return this.a.feed(seg({ src: SNAT, dst, srcPort: natPort, dstPort: PORT, seq: this.isn, flags: SYN }));
  }

  synAck(ts?: Timestamps): TcpSegment[] {
    const options: TcpOption[] = [{ kind: "mss", value: 1460 }, ...(ts ? timestamps(ts) : [])];
    return this.a.feed(
      this.fromOriginal({ seq: this.originalIsn, ack: this.isn + 1, flags: SYN | ACK, options }),
    );
  }

  /** The handshake through the kernel path, the original's SYN-ACK carrying `ts`. */
  open(ts?: Timestamps): TcpSegment[] {
    this.syn();
    this.natSyn();
    this.synAck(ts);
    const out = this.client("");
    this.shadowPort = out.find((s) => s.flags & SYN)?.srcPort ?? 0;
    return out;
  }

  /** A client segment carrying `data`, acknowledging `ack` units of the reply stream. */
  client(data: string, o: { ack?: number; flags?: number; ts?: Timestamps } = {}): TcpSegment[] {
    const flags = o.flags ?? ACK;
    const s = seg({
      src: CLIENT,
      dst: VIP,
      srcPort: this.port,
      dstPort: PORT,
      seq: toSeq(this.clientSent, this.isn),
      ack: toSeq(o.ack ?? 0, this.originalIsn),
      flags,
      options: o.ts ? timestamps(o.ts) : [],
      payload: bytes(data),
    });
    this.clientSent += data.length + (flags & FIN ? 1 : 0);
    return this.a.feed(s);
  }

  private fromOriginal(over: Partial<TcpSegment>): TcpSegment {
    return seg({ src: this.originalAt, dst: SNAT, srcPort: PORT, dstPort: this.natPort, ...over });
  }

  /** The original's segment after what it sent so far, acknowledging `ack` client units. */
  original(
    data: string | Uint8Array,
    o: { flags?: number; ack?: number; ts?: Timestamps } = {},
  ): TcpSegment[] {
    const flags = o.flags ?? ACK;
    const payload = typeof data === "string" ? bytes(data) : data;
    const s = this.fromOriginal({
      seq: toSeq(this.originalSent, this.originalIsn),
      ack: toSeq(o.ack ?? this.clientSent, this.isn),
      flags,
      options: o.ts ? timestamps(o.ts) : [],
      payload,
    });
    this.originalSent += payload.length + (flags & FIN ? 1 : 0);
    return this.a.feed(s);
  }

  private fromReplica(id: string, over: Partial<TcpSegment>): TcpSegment {
    const src = REPLICA_ADDRESSES[id]!;
    return seg({ src, dst: REPL, srcPort: PORT, dstPort: this.shadowPort, ...over });
  }

  /** Replica `id`'s SYN-ACK in the shadow conversation (with timestamps: its clock at 4999). */
  replicaSynAck(id: string, isn: number): TcpSegment[] {
    this.replicaIsn.set(id, isn);
    const options = [{ kind: "mss", value: 1460 } as const, ...timestamps({ tsval: 4999, tsecr: 777 })];
    return this.a.feed(
      this.fromReplica(id, { seq: isn, ack: this.isn + 1, flags: SYN | ACK, window: 65535, options }),
    );
  }

  /** Replica `id`'s segment at reply offset `off`, acknowledging `acked` client units. */
  replica(id: string, off: number, data: string, acked: number, flags = ACK): TcpSegment[] {
    const s = this.fromReplica(id, {
      seq: toSeq(off, this.replicaIsn.get(id)!),
      ack: toSeq(acked, this.isn),
      flags,
      options: timestamps({ tsval: 5000 + off, tsecr: 777 }),
      payload: bytes(data),
    });
    return this.a.feed(s);
  }
}

/** A connection with a shadow on each of `replicas` where the client asked "q", the original and
 * every replica answered `reply`, and the client acknowledged it. */
function answered(replicas: readonly string[] = ["r1"], reply = "a", over: Partial<EngineConfig> = {}) {
  const a = new Appliance(replicas, over);
  const f = new Flow(a);
  f.open();
  replicas.forEach((id, i) => f.replicaSynAck(id, 70_000 + 10_000 * i));
  f.client("q");
  f.original(reply);
  for (const id of replicas) f.replica(id, 0, reply, 1);
  f.client("", { ack: reply.length });
  return { a, f };
}

t.test("a splice continues the client's timestamps above the newest TSval the client echoed", async (t) => {
  // Found by the simulator (seeds 8 and 119): the original's segments were stuck in a stalled
  // capture channel, so the engine knew an old TSval of the original; the spliced replica's
  // segments went out below what the client had accepted and PAWS dropped every one.
  const a = new Appliance();
  const f = new Flow(a);
  f.open({ tsval: 100_000, tsecr: 777 });
  f.replicaSynAck("r1", 70_000);
  f.client("q", { ts: { tsval: 778, tsecr: 100_000 } });
  f.original("a", { ts: { tsval: 100_010, tsecr: 778 } });
  f.replica("r1", 0, "a", 1);
  // The original's next segments (TSvals up to 250 000) are not captured yet; the client's next
  // request echoes the newest of them.
  f.client("r", { ack: 1, ts: { tsval: 779, tsecr: 250_000 } });
  f.replica("r1", 1, "b", 2);
  // The stalled channel then delivers one of the older ones: it must not lower the floor.
  f.original("", { ack: 1, ts: { tsval: 150_000, tsecr: 778 } });

  t.same(a.engine.promote("r1", a.now), { spliced: 1, reset: 0, dropped: 0 });
  const spliced = a.toClient(a.take());
  t.same(
    spliced.map((s) => text(s.payload)),
    ["b"],
    "r1's answer the client has not seen goes out at once",
  );
  const tsval = findOption(spliced[0]?.options ?? [], "timestamp")?.tsval;
  t.ok(tsval !== undefined && tsval > 250_000, `TSval ${tsval} above the client's TSecr 250000 (PAWS)`);
  const next = a.toClient(f.replica("r1", 2, "c", 2));
  const later = findOption(next[0]?.options ?? [], "timestamp")?.tsval;
  t.ok(later !== undefined && later > 250_000, `and the next segment's too (${later})`);
});

t.test("the spliced FIN is sent again while the client has not acknowledged it", async (t) => {
  // Found by the simulator (e006966): a spliced FIN that was lost was never sent again, and the
  // client waited for it forever.
  const { a, f } = answered();
  a.engine.promote("r1", a.now);
  a.take();
  const fins = (sent: TcpSegment[]) => a.toClient(sent).filter((s) => s.flags & FIN);
  const first = fins(f.replica("r1", 1, "", 1, FIN | ACK));
  t.same(
    first.map((s) => s.seq),
    [toSeq(1, ORIGINAL_ISN)],
    "r1 closes after its answer: its FIN goes to the client",
  );
  // That FIN is lost: the client does not acknowledge it, so neither does the engine toward r1,
  // whose retransmission timer sends its FIN again.
  const again = fins(f.replica("r1", 1, "", 1, FIN | ACK));
  t.same(
    again.map((s) => [s.seq, s.flags & (FIN | ACK)]),
    [[toSeq(1, ORIGINAL_ISN), FIN | ACK]],
    "the retransmitted FIN is sent to the client again",
  );
  f.client("", { ack: 2 });
  t.same(fins(f.replica("r1", 1, "", 1, FIN | ACK)), [], "once the client acknowledged it, not again");
});

t.test(
  "a spliced connection whose shadow was given up is reset toward the client at the next tick",
  async (t) => {
    // Found by the simulator (seed 21): the shadow serving a spliced client was given up and the
    // client waited forever on a stream that would never come.
    const { a, f } = answered();
    a.engine.promote("r1", a.now);
    a.take();
    // The client asks again; r1 (the original now) never acknowledges it: its retransmission timer
    // backs off until the shadow is given up.
    f.client("x", { ack: 1 });
    for (let i = 0; i < 200 && a.eventsOf("lagging").length === 0; i++) a.tick(a.next ?? a.now + 100);
    t.match(
      a.eventsOf("lagging"),
      [{ replica: "r1", reason: "stopped acknowledging" }],
      "r1's shadow given up",
    );
    const reset = a.toClient(a.tick(a.now + 1));
    t.ok(reset.length > 0, "the next tick resets the client");
    t.ok(
      reset.every((s) => s.flags & RST && s.src === VIP && s.srcPort === PORT),
      "RSTs from the service",
    );
    t.ok(
      reset.some((s) => s.seq === toSeq(1, ORIGINAL_ISN)),
      "one at what the client acknowledged",
    );
    const conn = a.engine.connection(CLIENT, CPORT)!;
    t.equal(conn.phase, "closed", "the connection is closed");
    t.ok(conn.resetting, "and answers a challenge ACK with another RST");
  },
);

t.test("a dead verdict about a replaced original is dropped by the promotion that replaced it", async (t) => {
  // Found in review of FailureDetector.settle: a dead answer about the old original, waiting for
  // the capture channels when another verdict promoted r1, was put back and later failed the new,
  // healthy original over.
  const failure = failureConfig({ probes: true, autoFailover: true, probeIntervalMs: 500 });
  const a = new Appliance(["r1", "r2"], { failure }, 0);
  a.channelOf = (s) => (s.src === CLIENT || s.src === SNAT ? "client" : "backend");
  a.tick(0);
  const periodic = a.probes.find((p) => p.target === "original" && p.reason === "periodic probe")!;
  t.ok(periodic, "tick(0) probes the original periodically");
  // At 1 the original refuses a new connection: it is probed (X) with r1, the candidate.
  a.now = 1;
  const f = new Flow(a);
  f.syn();
  f.natSyn();
  a.feed(
    seg({ src: ORIGINAL, dst: SNAT, srcPort: PORT, dstPort: CPORT, ack: CLIENT_ISN + 1, flags: RST | ACK }),
  );
  const x = a.probes.find((p) => p.target === "original" && /refused a connection/.test(p.reason))!;
  const candidate = a.probes.find((p) => p.target === "r1" && p.reason.endsWith("candidate for promotion"))!;
  t.ok(x && candidate, "the original and its candidate are probed");
  a.engine.probeResult(candidate.id, true, 1);
  a.take();
  // At 2: X refused, sent at 2000 µs; neither channel has delivered anything captured since.
  a.now = 2;
  a.engine.probeResult(x.id, false, 2, "ECONNREFUSED", 2000);
  a.take();
  t.equal(a.engine.stats().failures.detected, 0, "X's verdict waits for the capture channels");
  // The periodic probe refused too, without a send time: it decides at once, r1 is promoted.
  a.engine.probeResult(periodic.id, false, 2, "ECONNREFUSED");
  a.take();
  t.same(a.engine.stats().failures.promotions, 1, "r1 promoted");
  t.equal(a.engine.originalAddress, R1, "r1 is the original");
  // At 3 both channels deliver packets captured at 3000 µs: the client's retried connection,
  // answered by r1.
  a.now = 3;
  f.originalAt = R1;
  f.syn();
  f.natSyn();
  f.synAck();
  a.tick(3);
  t.equal(a.eventsOf("original-failure").length, 1, "no second original-failure event");
  t.equal(a.engine.stats().failures.detected, 1, "one failure detected");
  t.equal(a.engine.stats().failures.promotions, 1, "one promotion");
  t.equal(a.engine.originalAddress, R1, "r1 stays the original");
});

t.test("a held FIN that times out marks diverged only the replicas that did not close alike", async (t) => {
  // Found in review of CloseHold.release: at the timeout every comparing shadow was marked, also
  // the one that had closed at the original's offset (a faithful copy, promotable).
  const { a, f } = answered(["r1", "r2"], "answer");
  t.same(a.toClient(f.original("", { flags: FIN | ACK })), [], "the original's FIN at 6 is held");
  t.same(a.toClient(f.replica("r1", 6, "", 1, FIN | ACK)), [], "r1 closes at 6 too; r2 never closes");
  const finHoldMs = engineConfig().finHoldMs;
  t.same(a.toClient(a.tick(a.now + finHoldMs - 1)), [], "held until finHoldMs");
  const released = a.toClient(a.tick(a.now + 1));
  t.same(
    released.map((s) => s.flags & (FIN | RST)),
    [FIN],
    "released after finHoldMs",
  );
  t.same(
    a.eventsOf("diverged").map((e) => [e.replica, e.reason]),
    [["r2", "did not close with the original"]],
    "only r2 is marked",
  );
  const conn = a.engine.connection(CLIENT, CPORT)!;
  t.equal(conn.shadows.get("r1")!.status, "healthy", "r1 closed alike: still a faithful copy");
  t.same(
    a.engine.stats().replicas.map((r) => [r.id, r.diverged]),
    [
      ["r1", 0],
      ["r2", 1],
    ],
    "counted on r2 only",
  );
});

t.test(
  "an RST after the original's released FIN reaches the client; the replicas' RSTs are expected",
  async (t) => {
    // Found in review of CloseHold.onOriginalClose: after a released FIN the original's reset was
    // passed on, but the replicas resetting the same way (they get the same bytes) were then marked
    // diverged and suspected of failing. (The working tree's version, reworked after simulator seed
    // 212, leaves the shadows to finish on their own: this test does not pin either way.)
    const { a, f } = answered(["r1", "r2"], "answer", { failure: failureConfig({ probes: true }) });
    f.original("", { flags: FIN | ACK });
    f.replica("r1", 6, "", 1, FIN | ACK);
    const fin = a.toClient(f.replica("r2", 6, "", 1, FIN | ACK));
    t.same(
      fin.map((s) => s.flags & FIN),
      [FIN],
      "both replicas closed alike: the FIN is released",
    );
    // The client writes after the service closed; the original's kernel resets (and so, given the
    // same bytes, do the replicas' kernels, a moment later).
    f.client("more", { ack: 7 });
    const out = f.original("", { flags: RST | ACK });
    t.same(
      a.toClient(out).map((s) => [s.flags, s.seq, s.src, s.srcPort]),
      [[RST | ACK, toSeq(7, ORIGINAL_ISN), VIP, PORT]],
      "the original's RST goes to the client once, as the kernel path would deliver it",
    );
    f.replica("r1", 7, "", 5, RST | ACK);
    f.replica("r2", 7, "", 5, RST | ACK);
    a.tick(a.now + 10); // past closeMismatchMs: a suspicion would have been probed by now
    t.same(a.eventsOf("diverged"), [], "no replica diverged");
    t.same(
      a.probes.filter((p) => p.target !== "original"),
      [],
      "no replica suspected (none probed)",
    );
    t.same(
      a.engine.stats().replicas.map((r) => [r.diverged, r.lagging]),
      [
        [0, 0],
        [0, 0],
      ],
      "neither replica counted as diverged or lagging",
    );
    const shadows = [...a.engine.connection(CLIENT, CPORT)!.shadows.values()];
    t.same(
      shadows.map((s) => [s.state, s.status]),
      [
        ["closed", "healthy"],
        ["closed", "healthy"],
      ],
      "both shadows ended by their replica's RST, still faithful",
    );
    // The connection is over on the original's side: it lingers, then leaves the table (it stayed
    // open for good before).
    t.equal(a.engine.connection(CLIENT, CPORT)!.phase, "closed");
    a.tick(a.now + a.engine.config.lingerMs + 1);
    t.equal(a.engine.connection(CLIENT, CPORT), undefined, "deleted after its linger");
    t.equal(a.engine.stats().connections.active, 0);
  },
);

t.test("the replicas' RSTs after a close made alike are expected whichever comes first", async (t) => {
  // Review of the fix above: with the replicas' resets captured before the original's, they were
  // marked diverged and probed.
  const { a, f } = answered(["r1", "r2"], "answer", { failure: failureConfig({ probes: true }) });
  f.original("", { flags: FIN | ACK });
  f.replica("r1", 6, "", 1, FIN | ACK);
  f.replica("r2", 6, "", 1, FIN | ACK);
  f.client("more", { ack: 7 });
  f.replica("r1", 7, "", 5, RST | ACK);
  f.replica("r2", 7, "", 5, RST | ACK);
  f.original("", { flags: RST | ACK });
  a.tick(a.now + 10);
  t.same(a.eventsOf("diverged"), [], "no replica diverged");
  t.same(
    a.probes.filter((p) => p.target !== "original"),
    [],
    "no replica suspected",
  );
});

t.test(
  "a promotion resets a half-open client whose SYN-ACK was seen; its SYN retry is tracked",
  async (t) => {
    // Found by the simulator (seed 19): a client whose SYN-ACK was lost (or whose ACK was not
    // captured yet) at the failover was left to the fenced original, or reset again on its retry.
    const a = new Appliance(["r1"]);
    const f = new Flow(a);
    f.syn();
    f.natSyn();
    f.synAck(); // the client's ACK, if it sent one, is not captured
    a.engine.promote("r1", a.now);
    t.same(
      a.toClient(a.take()).map((s) => [s.flags, s.seq]),
      [[RST, toSeq(0, ORIGINAL_ISN)]],
      "one RST without ACK at the original's next sequence number",
    );
    const old = a.engine.connection(CLIENT, CPORT);
    t.ok(old?.resetting, "kept to answer a challenge ACK");
    t.equal(old?.phase, "closed", "and closed");
    // The client was still in SYN-SENT: it ignored that RST and retransmits its SYN, which now
    // reaches r1 (the original's ISN is r1's own).
    f.syn();
    const fresh = a.engine.connection(CLIENT, CPORT);
    t.not(fresh, old, "starts a new connection");
    t.equal(fresh?.phase, "syn", "half-open");
    t.notOk(fresh?.resetting, "not reset");
    f.originalAt = R1;
    f.originalIsn = 8000;
    f.natSyn();
    f.synAck();
    const opened = f.client("");
    t.same(a.toClient(opened), [], "its handshake ACK draws no RST");
    t.equal(a.engine.connection(CLIENT, CPORT)!.phase, "open", "tracked and open");
    t.equal(a.engine.stats().connections.opened, 1, "counted as opened");
  },
);

t.test("connections refused by a full table still get the original's FIN and RST", async (t) => {
  // Found by the simulator (seed 114): the kernel path holds every connection's FIN and RST for
  // the engine, which passed on none for connections it did not track: their clients hung.
  const limits = { ...DEFAULT_LIMITS, maxConnections: 1 };
  const a = new Appliance(["r1"], { limits });
  const tracked = new Flow(a);
  tracked.syn(); // the table is full from here on
  // B: the client's SYN first, then the NATed SYN.
  const b = new Flow(a, CPORT + 1, 2000);
  b.syn();
  b.natSyn(50_001);
  // C: the NATed SYN first (the channels are not ordered with each other).
  const c = new Flow(a, CPORT + 2, 3000);
  c.natSyn(50_002);
  c.syn();
  t.equal(a.engine.stats().connections.notReplicated, 2, "B and C are not replicated");
  t.same(b.synAck(), [], "the original's SYN-ACK is the kernel path's to deliver");
  t.same(b.original("hello"), [], "so are its bytes");
  const bFin = b.original("", { flags: FIN | ACK });
  t.same(
    bFin.map((s) => [s.src, s.srcPort, s.dst, s.dstPort, s.flags, s.seq]),
    [[VIP, PORT, CLIENT, CPORT + 1, FIN | ACK, toSeq(5, ORIGINAL_ISN)]],
    "B's FIN goes to B's client as the kernel path would deliver it",
  );
  const cRst = c.original("", { flags: RST | ACK });
  t.same(
    cRst.map((s) => [s.dstPort, s.flags]),
    [[CPORT + 2, RST | ACK]],
    "C's RST goes to C's client",
  );
  t.equal(a.engine.stats().connections.closesPassedThrough, 2, "both counted");

  // The tracked connection expires; a new, tracked one gets B's NAT port.
  a.tick(a.now + engineConfig().synTimeoutMs + 1);
  const d = new Flow(a, CPORT + 3, 4000);
  d.syn();
  d.natSyn(50_001);
  d.synAck();
  d.client("");
  t.equal(a.engine.connection(CLIENT, CPORT + 3)?.phase, "open", "D is tracked");
  const dFin = d.original("", { flags: FIN | ACK });
  t.same(
    dFin.filter((s) => s.dstPort === CPORT + 1),
    [],
    "D's FIN is not passed to B's client",
  );
  t.same(a.toClient(dFin, CPORT + 3), [], "it is held for r1, as any tracked connection's");
  t.equal(a.engine.stats().connections.closesPassedThrough, 2, "not counted as passed through");

  // Bounded: MAX_PASSTHROUGH refused SYNs awaiting their NATed SYN; one more evicts the oldest.
  // (From other clients: their ports must not be taken for those of the connections above.)
  const isn = 1_000_000;
  for (let i = 0; i <= MAX_PASSTHROUGH; i++)
    a.engine.onSegment(clientSyn(1024 + (i % 60_000), isn + i, { src: OTHER_CLIENT }), a.now);
  a.take();
  t.equal(a.engine.stats().connections.passthroughEvicted, 1, "the oldest is forgotten, counted");
  const oldest = new Flow(a, 1024, isn);
  oldest.natSyn(50_010);
  t.same(oldest.original("", { flags: FIN | ACK }), [], "the forgotten one's FIN is not passed on");
  const second = new Flow(a, 1025, isn + 1);
  second.natSyn(50_011);
  t.same(
    second.original("", { flags: FIN | ACK }).map((s) => s.dstPort),
    [1025],
    "the next oldest is still remembered",
  );
});

t.test("without a comparing shadow the original's reply bytes are not kept", async (t) => {
  // Found by the simulator (seed 127): a connection without replicas kept its whole reply stream,
  // up to the per-connection limit (8 MiB), and the global limit could not free it.
  const a = new Appliance([]);
  const f = new Flow(a);
  f.open();
  f.client("GET");
  const chunk = new Uint8Array(1024).fill(0x61);
  for (let i = 0; i < 1024; i++) f.original(chunk);
  const s = a.engine.stats();
  t.equal(s.originalBytes, 1024 * 1024, "1 MiB from the original was taken in");
  t.ok(s.bufferedBytes < 64 * 1024, `${s.bufferedBytes} bytes held`);
});
