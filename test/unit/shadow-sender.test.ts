// The shadow sender on its own: the client's stand-in toward one replica. Built from the real parts
// as engine.ts wires them, driven by hand-made replica segments and an explicit clock, and judged
// on what it puts in the outbox (flags, sequence and acknowledgement numbers, payloads) and on
// what its retransmission timer reports to the engine (RtoOutcome).
import t from "tap";
import fc from "fast-check";
import { assertProperty } from "../property.js";
import type { ReplicatedConnection } from "../../src/replica/connection.js";
import { toOffset, toSeq } from "../../src/replica/offsets.js";
import type { ShadowConversation } from "../../src/replica/shadow.js";
import { MAX_BACKOFFS, ShadowSender } from "../../src/replica/shadow-sender.js";
import type { EngineConfig } from "../../src/replica/types.js";
import { ACK, FIN, PSH, RST, SYN, findOption, type TcpOption, type TcpSegment } from "../../src/wire/tcp.js";
import {
  CLIENT_ISN,
  CPORT,
  EngineParts,
  PORT,
  R1,
  REPL,
  REPLICA_ISN,
  bytes,
  clientSyn,
  failureConfig,
  text,
  type SynAck,
} from "../engine-parts.js";

/** n bytes of text that differ from offset to offset (a misplaced byte shows). */
const stream = (n: number, from = 0) =>
  Array.from({ length: n }, (_, i) => String.fromCharCode(97 + ((from + i) % 26))).join("");

const SYN_OPTIONS: TcpOption[] = [
  { kind: "mss", value: 1460 },
  { kind: "sack-permitted" },
  { kind: "timestamp", tsval: 777, tsecr: 0 },
  { kind: "nop" },
  { kind: "wscale", shift: 7 },
  { kind: "unknown", type: 34, data: Uint8Array.of(1, 2, 3) },
];

interface RigOptions {
  config?: Partial<EngineConfig>;
  clientIsn?: number;
  synOptions?: TcpOption[];
}

/** One client connection and the sender, wired as engine.ts's constructor wires them. */
class Rig extends EngineParts {
  readonly conn: ReplicatedConnection;
  readonly syn: TcpSegment;

  constructor(o: RigOptions = {}) {
    super({ config: o.config });
    this.syn = clientSyn(CPORT, o.clientIsn ?? CLIENT_ISN, {
      window: 64240,
      // A copy: the test below overwrites the SYN's bytes as a capture reusing its buffer would.
      options:
        o.synOptions ??
        SYN_OPTIONS.map((x) => (x.kind === "unknown" ? { ...x, data: x.data.slice() } : { ...x })),
    });
    this.conn = this.addOpen(this.syn);
  }

  get isn(): number {
    return this.conn.clientIsn;
  }

  /** A shadow on a new replica, its SYN sent (engine.ts openShadows). */
  shadow(id = "r1", address = R1): ShadowConversation {
    this.replicas.add({ id, address });
    return this.startShadow(this.conn, id);
  }

  /** The replica's SYN-ACK (by default: MSS 100, no other option). */
  synAck(s: ShadowConversation, o: SynAck = {}): void {
    this.answerSyn(this.conn, s, { options: [{ kind: "mss", value: 100 }], ...o });
  }

  /** An open shadow (handshake done, the SYN-ACK acknowledged) with an empty outbox. */
  open(o: SynAck = {}): ShadowConversation {
    const s = this.shadow();
    this.synAck(s, o);
    this.flush(s);
    return s;
  }

  write(data: string): void {
    this.conn.client.write(this.conn.client.end, bytes(data));
  }

  fin(): void {
    this.conn.clientFinOffset = this.conn.client.end;
  }

  /** The replica acknowledges `acked` client-stream units with `window` (unscaled). */
  ack(
    s: ShadowConversation,
    acked: number,
    window = 65535,
    over: Partial<TcpSegment> = {},
  ): "advanced" | "same" | "ignored" {
    return this.replicaAck(this.conn, s, acked, window, over);
  }

  flush(s: ShadowConversation): TcpSegment[] {
    this.sender.flush(this.conn, s, this.now);
    return this.sent();
  }

  /** Segments emitted since the last call (events are dropped). */
  sent(): TcpSegment[] {
    return this.take().segments;
  }

  /** Client-stream offset of a segment sent to the replica. */
  off(g: TcpSegment): number {
    return toOffset(g.seq, this.isn, this.conn.client.end);
  }
}

/** A rig whose open shadow (the replica's window `window`) was sent the client's first `n` bytes
 * (and the client's FIN, with `fin`): the rig, the shadow and what the sender sent. */
function sending(
  n: number,
  o: { window?: number; fin?: boolean; rig?: RigOptions } = {},
): { rig: Rig; s: ShadowConversation; first: TcpSegment[] } {
  const rig = new Rig(o.rig);
  const s = rig.open({ window: o.window ?? 65535 });
  rig.write(stream(n));
  if (o.fin) rig.fin();
  return { rig, s, first: rig.flush(s) };
}

t.test("sendSyn copies the client's SYN: sequence number, window and options", async (t) => {
  const rig = new Rig({ clientIsn: 0xfffffffe });
  const s = rig.shadow();
  // The capture reuses its buffers: what the SYN segment held must not change what is sent later.
  const unknown = rig.syn.options.find((o) => o.kind === "unknown");
  if (unknown?.kind === "unknown") unknown.data.fill(0);
  const [syn, ...more] = rig.sent();
  t.equal(more.length, 0, "one segment");
  t.equal(syn!.flags, SYN, "a bare SYN");
  t.equal(syn!.seq, 0xfffffffe, "the client's ISN: client sequence numbers pass through");
  t.equal(syn!.ack, 0);
  t.equal(syn!.window, 64240, "the client's SYN window");
  t.same(
    syn!.options,
    SYN_OPTIONS,
    "the client's own options, so the replica negotiates what the original did",
  );
  t.equal(syn!.src, REPL, "from the replication address");
  t.equal(syn!.dst, R1);
  t.equal(syn!.srcPort, rig.conn.port, "from the connection's shadow port");
  t.equal(syn!.dstPort, PORT);
  t.equal(syn!.payload.length, 0);
  t.equal(s.synTries, 1);
  t.equal(s.rtoDeadline, rig.now + 200, "the retransmission timer runs from the initial RTO");
  t.equal(rig.replicas.get("r1")!.segmentsSent, 1, "counted on the replica");

  // A second SYN (a retry) is a copy too: mutating the first one's options changes nothing.
  syn!.options.length = 0;
  rig.sender.sendSyn(rig.conn, s, rig.now);
  t.same(rig.sent()[0]!.options, SYN_OPTIONS);
  t.equal(s.synTries, 2);
});

t.test("the SYN-ACK: what both offered is what the sender speaks; the first flush ACKs it", async (t) => {
  const rig = new Rig();
  const s = rig.shadow();
  rig.sent();
  rig.now += 10;
  rig.synAck(s, {
    isn: 0xfffffff0,
    window: 3000,
    options: [
      { kind: "mss", value: 1460 },
      { kind: "wscale", shift: 3 },
      { kind: "sack-permitted" },
      { kind: "timestamp", tsval: 4999, tsecr: 777 },
    ],
  });
  t.equal(s.state, "open");
  t.equal(s.sndUna, 0, "the SYN is acknowledged");
  t.equal(s.maxPayload, 1460 - 12, "the timestamp option's 12 bytes come off the MSS");
  t.equal(s.wscale, 3, "the client offered window scaling");
  t.equal(s.sackOk, true);
  t.equal(s.sndWnd, 3000, "a SYN's window is never scaled");
  t.equal(s.rtoDeadline, undefined, "nothing outstanding: no timer");
  t.equal(s.rtoMs, 30, "RTT sample of 10 ms: SRTT 10 + 4 x RTTVAR 5 (RFC 6298)");
  const [ack, ...more] = rig.flush(s);
  t.equal(more.length, 0);
  t.equal(ack!.flags, ACK, "a pure ACK");
  t.equal(ack!.seq, toSeq(0, rig.isn), "the next client byte");
  t.equal(ack!.ack, toSeq(0, 0xfffffff0), "the replica's SYN acknowledged (its ISN wraps)");
  const ts = findOption(ack!.options, "timestamp");
  t.same(ts, { kind: "timestamp", tsval: 777, tsecr: 4999 }, "the client's TSval, echoing the replica's");
  t.same(rig.flush(s), [], "owed once");

  // A window update is scaled by the negotiated shift.
  rig.ack(s, 0, 1000);
  t.equal(s.sndWnd, 8000);

  // Without the client's offer, options the replica offers are not used.
  const bare = new Rig({ synOptions: [{ kind: "mss", value: 1460 }] });
  const b = bare.shadow();
  bare.synAck(b, {
    options: [
      { kind: "mss", value: 1460 },
      { kind: "wscale", shift: 3 },
      { kind: "sack-permitted" },
      { kind: "timestamp", tsval: 4999, tsecr: 0 },
    ],
  });
  t.same([b.wscale, b.sackOk, b.tsOk, b.maxPayload], [0, false, false, 1460], "none negotiated");
});

t.test("flush sends within the replica's window in maxPayload pieces, then the FIN last", async (t) => {
  // The client's sequence numbers wrap in the stream.
  const { rig, s, first } = sending(1000, { window: 250, rig: { clientIsn: 0xffffff00 } });
  t.same(
    first.map((g) => [rig.off(g), g.payload.length]),
    [
      [0, 100],
      [100, 100],
      [200, 50],
    ],
    "100-byte pieces (the MSS), stopping at the 250-byte window",
  );
  t.same(
    first.map((g) => text(g.payload)),
    [stream(100), stream(100, 100), stream(50, 200)],
    "the client's bytes at their offsets",
  );
  t.ok(
    first.every((g) => g.flags === ACK),
    "no PSH before the end of what the client sent",
  );
  t.ok(
    first.every((g) => g.ack === toSeq(0, REPLICA_ISN)),
    "each carries the ACK of the replica's SYN",
  );
  t.equal(s.sndNxt, 250);
  t.same(rig.flush(s), [], "the window is full");

  t.equal(rig.ack(s, 100, 250), "advanced");
  t.same(
    rig.flush(s).map((g) => [rig.off(g), g.payload.length]),
    [[250, 100]],
    "the window slid by 100: 100 more",
  );

  t.equal(rig.ack(s, 350, 10_000), "advanced");
  rig.fin();
  const rest = rig.flush(s);
  t.same(
    rest.map((g) => rig.off(g)),
    [350, 450, 550, 650, 750, 850, 950, 1000],
    "the rest in order, then the FIN",
  );
  t.equal(
    rest
      .slice(0, -1)
      .map((g) => text(g.payload))
      .join(""),
    stream(650, 350),
  );
  t.equal(rest[6]!.flags, ACK | PSH, "PSH on the segment that ends the client's bytes");
  t.equal(rest[6]!.payload.length, 50);
  const fin = rest[7]!;
  t.equal(fin.flags, FIN | ACK, "the FIN goes last, on its own");
  t.equal(fin.payload.length, 0);
  t.equal(s.finSent, true);
  t.same(rig.flush(s), [], "the FIN is sent once");
  t.equal(s.bytesSent, 1000);
  t.equal(rig.replicas.get("r1")!.bytesSent, 1000);
});

t.test("the FIN waits for the bytes before it when the window is short", async (t) => {
  const { rig, s, first } = sending(300, { window: 200, fin: true });
  t.same(
    first.map((g) => [rig.off(g), g.flags]),
    [
      [0, ACK],
      [100, ACK],
    ],
    "200 bytes, no FIN",
  );
  t.equal(s.finSent, false);
  rig.ack(s, 200, 200);
  const rest = rig.flush(s);
  t.same(
    rest.map((g) => [rig.off(g), g.flags, g.payload.length]),
    [
      [200, ACK | PSH, 100],
      [300, ACK | FIN, 0],
    ],
    "the last bytes, then the FIN at the client's FIN offset",
  );
});

t.test("onAck: advancing, the same, and ignored when it acknowledges what was never sent", async (t) => {
  const { rig, s } = sending(300, { window: 1000 });
  t.equal(rig.ack(s, 150, 900), "advanced");
  t.equal(s.sndUna, 150);
  t.equal(s.sndWnd, 900);
  t.equal(rig.replicas.get("r1")!.bytesAcked, 150);
  t.ok(s.rtoDeadline !== undefined, "150 bytes still outstanding: the timer runs");

  t.equal(rig.ack(s, 301, 7), "ignored", "one byte beyond what was sent");
  t.equal(s.sndUna, 150, "nothing acknowledged");
  t.equal(s.sndWnd, 900, "nor the window taken from it");
  t.equal(rig.ack(s, 300 + 2 ** 20, 7), "ignored", "far beyond");
  t.equal(rig.ack(s, 100, 900), "same", "an old ACK acknowledges nothing new");
  t.equal(s.sndUna, 150, "sndUna never goes back");

  t.equal(rig.ack(s, 300), "advanced");
  t.equal(s.rtoDeadline, undefined, "everything acknowledged: the timer stops");
  t.equal(rig.ack(s, 301), "ignored", "the FIN was not sent yet: its unit cannot be acknowledged");
  rig.fin();
  t.equal(rig.flush(s).at(-1)!.flags, FIN | ACK);
  t.ok(s.rtoDeadline !== undefined, "the FIN outstanding: the timer runs");
  t.equal(rig.ack(s, 302), "ignored", "beyond the FIN");
  t.equal(rig.ack(s, 301), "advanced");
  t.equal(s.finAcked, true);
  t.equal(rig.replicas.get("r1")!.bytesAcked, 300, "the FIN is not a byte");
  t.equal(s.rtoDeadline, undefined);
});

t.test("three duplicate ACKs trigger exactly one fast retransmit", async (t) => {
  const { rig, s, first } = sending(500);
  t.equal(first.length, 5);
  rig.ack(s, 100);
  const outs: number[] = [];
  for (let i = 0; i < 6; i++) {
    t.equal(rig.ack(s, 100), "same");
    const out = rig.sent();
    outs.push(out.length);
    if (i === 2) {
      t.equal(rig.off(out[0]!), 100, "from the first unacknowledged byte");
      t.equal(text(out[0]!.payload), stream(100, 100), "the client's bytes, one segment's worth");
      t.equal(out[0]!.flags, ACK | PSH);
    }
  }
  t.same(outs, [0, 0, 1, 0, 0, 0], "the third duplicate, and only it, retransmits");
  t.equal(s.retransmits, 1);
  t.equal(rig.replicas.get("r1")!.retransmits, 1);
  t.equal(s.recoverPoint, 500, "recovery until what was sent is acknowledged");
});

t.test("ACKs that change the window or carry data are not duplicates", async (t) => {
  const { rig, s } = sending(500);
  rig.ack(s, 100, 1000);
  for (const w of [1001, 1002, 1003]) rig.ack(s, 100, w); // window updates
  t.same(rig.sent(), [], "window updates retransmit nothing");
  for (let i = 0; i < 3; i++)
    rig.ack(s, 100, 1003, { payload: bytes("reply"), seq: toSeq(i * 5, s.replicaIsn!) });
  t.same(rig.sent(), [], "nor do ACKs riding on reply data");
  t.equal(s.retransmits, 0);
});

t.test("a partial ACK during recovery retransmits the next hole; the full ACK ends it", async (t) => {
  const { rig, s } = sending(500);
  rig.ack(s, 100);
  for (let i = 0; i < 3; i++) rig.ack(s, 100);
  t.equal(rig.sent().length, 1, "fast retransmit of [100, 200)");

  t.equal(rig.ack(s, 200), "advanced", "a partial ACK: 200 < the recovery point 500");
  const hole = rig.sent();
  t.same(
    hole.map((g) => [rig.off(g), text(g.payload)]),
    [[200, stream(100, 200)]],
    "the next hole, at once (no three more duplicates needed)",
  );
  t.equal(s.retransmits, 2);

  t.equal(rig.ack(s, 500), "advanced");
  t.same(rig.sent(), [], "the full ACK retransmits nothing");
  t.equal(s.recoverPoint, undefined, "recovery is over");
  t.equal(s.retransmits, 2);
});

t.test("SYN retries double the RTO, then the shadow is given up without an RST", async (t) => {
  const rig = new Rig();
  const s = rig.shadow();
  const start = rig.now;
  t.equal(rig.sent().length, 1);
  const gaps: number[] = [];
  const suspects: Array<string | undefined> = [];
  let giveUp: { reason: string; offset: number; rst: boolean } | undefined;
  let syns = 1;
  for (let i = 0; i < 20 && !giveUp; i++) {
    const deadline = s.rtoDeadline!;
    gaps.push(deadline - rig.now);
    rig.now = deadline;
    const o = rig.sender.onRto(rig.conn, s, rig.now);
    suspects.push(o.suspect);
    giveUp = o.giveUp;
    for (const g of rig.sent()) {
      t.equal(g.flags, SYN, "each retry is the same SYN");
      t.equal(g.seq, rig.isn);
      syns++;
    }
  }
  t.equal(syns, 1 + rig.cfg.maxSynRetries, "the first SYN and maxSynRetries retries");
  t.same(gaps, [200, 400, 800, 1600, 2000, 2000, 2000], "the RTO doubles up to rto.maxMs");
  t.same(
    suspects,
    [undefined, undefined, ...Array<string>(4).fill("does not answer SYNs"), undefined],
    "suspected once more SYNs than replicaProbeBackoffs went unanswered",
  );
  t.same(giveUp, { reason: "did not answer the SYN", offset: 0, rst: false }, "nothing to reset");
  t.equal(s.rtoDeadline, undefined, "no timer after giving up");
  t.equal(rig.now - start, 200 + 400 + 800 + 1600 + 2000 * 3);

  // The number of retries is the configuration's.
  const rig2 = new Rig({ config: { maxSynRetries: 1 } });
  const s2 = rig2.shadow();
  t.same(rig2.sender.onRto(rig2.conn, s2, rig2.now + 200), {}, "one retry");
  t.match(rig2.sender.onRto(rig2.conn, s2, rig2.now + 600), { giveUp: { reason: "did not answer the SYN" } });
  t.equal(rig2.sent().length, 2);
});

t.test("a data timeout goes back to the first unacknowledged byte, within the current window", async (t) => {
  const { rig, s, first } = sending(500, { window: 1000, fin: true });
  t.equal(first.length, 6, "five segments and the FIN");
  rig.ack(s, 200, 200); // the replica has [0, 200) and shrinks its window to 200
  t.same(rig.sent(), []);
  const rto = s.rtoMs;
  rig.now = s.rtoDeadline!;
  t.same(rig.sender.onRto(rig.conn, s, rig.now), {}, "one backoff: not suspect yet");
  const again = rig.sent();
  t.same(
    again.map((g) => [rig.off(g), text(g.payload)]),
    [
      [200, stream(100, 200)],
      [300, stream(100, 300)],
    ],
    "go-back-N from sndUna, as much as the 200-byte window allows",
  );
  t.equal(s.sndNxt, 400, "sending resumes after what was resent");
  t.equal(s.finSent, false, "the FIN will be resent after the bytes before it");
  t.equal(s.backoffs, 1);
  t.equal(s.rtoMs, Math.min(2000, rto * 2), "the RTO doubled");
  t.equal(s.rtoDeadline, rig.now + s.rtoMs);
  t.equal(s.retransmits, 1, "one timeout, one retransmission episode");

  rig.ack(s, 400, 1000);
  t.equal(s.backoffs, 0, "an acknowledgement resets the backoff");
  t.same(
    rig.flush(s).map((g) => [rig.off(g), g.flags]),
    [
      [400, ACK | PSH],
      [500, ACK | FIN],
    ],
    "the rest, then the FIN again",
  );
});

t.test("a zero window is probed with an ACK one below sndUna; the reopened window is used", async (t) => {
  const { rig, s } = sending(300, { window: 1000 });
  rig.ack(s, 300, 0);
  t.equal(s.rtoDeadline, undefined, "nothing outstanding yet");
  rig.write(stream(100, 300));
  t.same(rig.flush(s), [], "nothing fits a zero window");
  t.ok(s.rtoDeadline !== undefined, "the persist timer runs");
  const rto = s.rtoMs;
  rig.now = s.rtoDeadline!;
  t.same(rig.sender.onRto(rig.conn, s, rig.now), {}, "a first probe: not suspect");
  const [probe, ...more] = rig.sent();
  t.equal(more.length, 0);
  t.equal(probe!.flags, ACK, "a bare ACK");
  t.equal(probe!.payload.length, 0, "no data byte squeezed into the closed window");
  t.equal(probe!.seq, toSeq(299, rig.isn), "one below what the replica expects: it must answer");
  t.equal(s.rtoDeadline, rig.now + Math.min(2000, rto * 2), "probes back off");
  t.equal(s.sndNxt, 300, "nothing counted as sent");

  t.equal(rig.ack(s, 300, 1000), "same", "the answer reopens the window");
  t.same(
    rig.flush(s).map((g) => [rig.off(g), text(g.payload), g.flags]),
    [[300, stream(100, 300), ACK | PSH]],
    "the waiting bytes go out",
  );
});

t.test("a silent replica: suspect after replicaProbeBackoffs, given up after MAX_BACKOFFS", async (t) => {
  const { rig, s } = sending(100, {
    window: 1000,
    rig: { config: { failure: failureConfig({ replicaProbeBackoffs: 3 }) } },
  });
  s.compared = 42; // where comparison stood: the offset the engine reports
  const outcomes: Array<ReturnType<ShadowSender["onRto"]>> = [];
  let resent = 0;
  for (let i = 1; i <= MAX_BACKOFFS + 1; i++) {
    rig.now = s.rtoDeadline!;
    outcomes.push(rig.sender.onRto(rig.conn, s, rig.now));
    const out = rig.sent();
    if (i <= MAX_BACKOFFS) {
      t.equal(out.length, 1, `timeout ${i} resends`);
      t.equal(rig.off(out[0]!), 0);
      resent++;
    } else t.same(out, [], "giving up sends nothing: the engine resets and closes");
  }
  t.equal(resent, MAX_BACKOFFS);
  t.same(outcomes[0], {}, "1 backoff");
  t.same(outcomes[1], {}, "2 backoffs");
  t.same(outcomes[2], { suspect: "stopped acknowledging" }, "replicaProbeBackoffs (3): suspect");
  t.same(outcomes[MAX_BACKOFFS - 1], { suspect: "stopped acknowledging" }, "still only suspect");
  t.same(
    outcomes[MAX_BACKOFFS],
    {
      suspect: "stopped acknowledging",
      giveUp: { reason: "stopped acknowledging", offset: 42, rst: true },
    },
    "given up after MAX_BACKOFFS",
  );
  t.equal(s.rtoMs, 2000, "the RTO stopped doubling at rto.maxMs");
});

t.test("a timer with nothing outstanding, or on a closed shadow, does nothing", async (t) => {
  const { rig, s } = sending(10);
  rig.ack(s, 10);
  t.same(rig.sender.onRto(rig.conn, s, rig.now + 10_000), {});
  t.same(rig.sent(), [], "no spurious retransmission");
  t.equal(s.backoffs, 0);
  s.state = "closed";
  rig.write(stream(10));
  t.same(rig.sender.onRto(rig.conn, s, rig.now + 20_000), {});
  t.same(rig.flush(s), [], "a closed shadow sends nothing");
});

t.test("ackFor: never beyond what the replica sent, nor beyond what the client acknowledged", async (t) => {
  const rig = new Rig();
  const s = rig.open({ isn: 0xfffffffa });
  const { conn, sender } = rig;
  s.reply.write(0, bytes("0123456789"));
  conn.clientAckOffset = 4;
  t.equal(sender.ackFor(conn, s), 4, "the client acknowledged 4 of the original's bytes");
  conn.clientAckOffset = 25;
  t.equal(sender.ackFor(conn, s), 10, "the replica sent only 10");
  s.reply.write(20, bytes("later"));
  t.equal(sender.ackFor(conn, s), 10, "bytes beyond a hole are not acknowledged");
  s.replicaFinOffset = 25;
  t.equal(sender.ackFor(conn, s), 10, "nor a FIN beyond the hole");
  s.reply.write(10, bytes("ABCDEFGHIJ"));
  t.equal(sender.ackFor(conn, s), 25, "the hole filled: the bytes, not yet the FIN the client did not ack");
  conn.clientAckOffset = 26;
  t.equal(sender.ackFor(conn, s), 26, "the FIN, once the client acknowledged the original's");

  // What goes out carries it, in the replica's sequence space (its ISN wraps here).
  rig.sender.sendAck(conn, s);
  const [ack] = rig.sent();
  t.equal(ack!.ack, toSeq(26, 0xfffffffa));
  t.equal(s.rcvAcked, 26);
  t.equal(ack!.seq, toSeq(0, rig.isn));
});

t.test("sendAck reports out-of-order reply bytes as SACK blocks", async (t) => {
  const rig = new Rig();
  const s = rig.open({ isn: 9, options: [{ kind: "mss", value: 100 }, { kind: "sack-permitted" }] });
  s.reply.write(0, bytes("abc"));
  s.reply.write(10, bytes("xyz"));
  rig.conn.clientAckOffset = 3;
  rig.sender.sendAck(rig.conn, s);
  const [ack] = rig.sent();
  t.equal(ack!.ack, toSeq(3, 9));
  t.same(findOption(ack!.options, "sack")?.blocks, [[toSeq(10, 9), toSeq(13, 9)]]);
});

const ACK_FOR = "whatever the replica sends and the client acknowledges, ackFor stays within both";
t.test(ACK_FOR, async (t) => {
  let checked = 0;
  assertProperty(
    ACK_FOR,
    fc.property(
      fc.integer({ min: 0, max: 2 ** 32 - 1 }),
      fc.array(
        fc.oneof(
          fc.record({ k: fc.constant("reply" as const), at: fc.nat(60), n: fc.integer({ min: 1, max: 20 }) }),
          fc.record({ k: fc.constant("client" as const), n: fc.nat(30) }),
          fc.record({ k: fc.constant("fin" as const) }),
        ),
        { maxLength: 40 },
      ),
      (isn, ops) => {
        const rig = new Rig();
        const s = rig.open({ isn });
        const { conn, sender } = rig;
        let lastAck = 0;
        for (const op of ops) {
          if (op.k === "reply" && s.replicaFinOffset === undefined)
            s.reply.write(op.at, new Uint8Array(op.n));
          else if (op.k === "client") conn.clientAckOffset += op.n;
          else if (op.k === "fin" && s.replicaFinOffset === undefined) s.replicaFinOffset = s.reply.highest;
          const a = sender.ackFor(conn, s);
          const received =
            s.reply.end + (s.replicaFinOffset !== undefined && s.replicaFinOffset === s.reply.end ? 1 : 0);
          if (a > received || a > conn.clientAckOffset) return false;
          // As much as both allow: the replica is never held back by less than the client has.
          if (a !== Math.min(received, conn.clientAckOffset)) return false;
          sender.sendAck(conn, s);
          const [g] = rig.sent();
          if (g?.ack !== toSeq(a, isn) || a < lastAck) return false;
          lastAck = a;
          checked++;
        }
        return true;
      },
    ),
    { numRuns: 200 },
  );
  t.ok(checked > 500, `${checked} ACKs checked`);
});

t.test("check() throws InvariantError when the sender's state is corrupted", async (t) => {
  const fresh = () => sending(10);
  {
    const { rig, s } = fresh();
    t.doesNotThrow(() => rig.sender.check(rig.conn, s), "a sound state passes");
    s.sndNxt = 11;
    t.throws(() => rig.sender.check(rig.conn, s), {
      name: "InvariantError",
      message: /sent 11 of 10 client bytes/,
    });
    t.throws(() => rig.flush(s), { name: "InvariantError" }, "sending checks it");
  }
  {
    const { rig, s } = fresh();
    s.sndUna = 12;
    t.throws(() => rig.sender.check(rig.conn, s), { name: "InvariantError", message: /sndUna 12 beyond/ });
    t.throws(() => rig.ack(s, 5), { name: "InvariantError" }, "an ACK checks it");
  }
  {
    const { rig, s } = fresh();
    s.finSent = true; // the client sent no FIN
    t.throws(() => rig.sender.check(rig.conn, s), { name: "InvariantError", message: /FIN sent at 10/ });
  }
  {
    const { rig, s } = fresh();
    s.finAcked = true;
    t.throws(() => rig.sender.check(rig.conn, s), { name: "InvariantError", message: /never sent/ });
  }
});

/** A client byte that depends on its offset (a misplaced byte shows). */
const byteAt = (off: number) => Math.imul(off + 1, 2654435761) >>> 24;

type Op =
  | { k: "write"; n: number }
  | { k: "fin" }
  | { k: "flush" }
  | { k: "deliver"; loss: number; window: number }
  | { k: "rto" }
  | { k: "junk"; beyond: number };

const OP: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ k: fc.constant("write" as const), n: fc.integer({ min: 1, max: 700 }) }),
  fc.record({ k: fc.constant("fin" as const) }),
  fc.record({ k: fc.constant("flush" as const) }),
  fc.record({
    k: fc.constant("deliver" as const),
    loss: fc.integer({ min: 0, max: 0xffff }),
    window: fc.integer({ min: 0, max: 3000 }),
  }),
  fc.record({ k: fc.constant("rto" as const) }),
  fc.record({
    k: fc.constant("junk" as const),
    // One beyond is the edge that matters most: draw it often.
    beyond: fc.oneof(fc.constant(1), fc.integer({ min: 1, max: 5000 })),
  }),
);

const LOSSY =
  "whatever the ACKs, losses and timeouts: sndUna <= sndNxt <= client end, and every byte sent is the client's at its offset, within a window the replica offered";
t.test(LOSSY, async (t) => {
  let completed = 0;
  let gaveUp = 0;
  assertProperty(
    LOSSY,
    fc.property(
      fc.integer({ min: 0, max: 2 ** 32 - 1 }),
      fc.integer({ min: 1, max: 300 }),
      fc.integer({ min: 1, max: 3000 }),
      fc.array(OP, { minLength: 1, maxLength: 60 }),
      (isn, mss, window0, ops) => {
        const must = (ok: boolean, what: () => string) => {
          if (!ok) throw new Error(what());
        };
        const rig = new Rig({ clientIsn: isn });
        const s = rig.shadow();
        rig.sent();
        rig.synAck(s, { window: window0, options: [{ kind: "mss", value: mss }] });
        const { conn, sender } = rig;
        const model: number[] = [];
        let finAt: number | undefined;
        let rightEdge = window0; // the furthest offset the replica ever allowed
        let inflight: TcpSegment[] = [];
        let received = 0; // the receiver: in order only, cumulative ACKs
        let finReceived = false;

        const collect = () => {
          for (const g of rig.sent()) {
            must(g.dst === R1 && g.src === REPL && g.srcPort === conn.port, () => "misaddressed");
            must((g.flags & (RST | SYN)) === 0, () => `flags ${g.flags}`);
            const off = toOffset(g.seq, isn, Math.max(0, s.sndUna));
            const end = off + g.payload.length;
            if (g.payload.length > 0) {
              must(off >= 0 && end <= model.length, () => `[${off}, ${end}) of ${model.length} client bytes`);
              must(end <= rightEdge, () => `[${off}, ${end}) beyond the window's edge ${rightEdge}`);
              must(
                Buffer.from(g.payload).equals(Buffer.from(model.slice(off, end))),
                () => `bytes at ${off} are not the client's`,
              );
            }
            if (g.flags & FIN) must(g.payload.length === 0 && off === finAt, () => `FIN at ${off}`);
            inflight.push(g);
          }
        };
        const deliver = (loss: number, window: number) => {
          const batch = inflight;
          inflight = [];
          batch.forEach((g, i) => {
            if ((loss >> (i % 16)) & 1) return;
            const off = toOffset(g.seq, isn, received);
            if (g.payload.length > 0 && off <= received && off + g.payload.length > received)
              received = off + g.payload.length;
            if (g.flags & FIN && off === received) finReceived = true;
            // Every segment is answered (duplicates too: that is what drives fast retransmit).
            const ackTo = received + (finReceived ? 1 : 0);
            rightEdge = Math.max(rightEdge, received + window);
            const una = s.sndUna;
            const r = rig.ack(s, ackTo, window);
            must(r !== "ignored", () => `the honest ACK ${ackTo} ignored`);
            must(s.sndUna === Math.max(una, ackTo), () => `sndUna ${s.sndUna} after ACK ${ackTo}`);
            if (r === "advanced") rig.buffers.releaseClient(conn); // as the engine does
            collect();
          });
        };
        const rto = (): boolean => {
          if (s.rtoDeadline === undefined) return false;
          rig.now = Math.max(rig.now, s.rtoDeadline);
          const o = sender.onRto(conn, s, rig.now);
          collect();
          if (o.giveUp) {
            must(s.backoffs > MAX_BACKOFFS && o.giveUp.rst, () => `gave up after ${s.backoffs} backoffs`);
            return true;
          }
          return false;
        };
        const invariants = () => {
          must(
            s.sndUna >= 0 && s.sndUna <= s.sndNxt + (s.finSent ? 1 : 0) && s.sndNxt <= conn.client.end,
            () => `sndUna ${s.sndUna} sndNxt ${s.sndNxt} client end ${conn.client.end}`,
          );
          must(s.sndUna <= received + (finReceived ? 1 : 0), () => `sndUna ${s.sndUna}: more than received`);
        };

        let over = false;
        for (const op of ops) {
          rig.now += 1;
          if (op.k === "write" && finAt === undefined) {
            const data = Array.from({ length: op.n }, (_, i) => byteAt(model.length + i));
            conn.client.write(model.length, Uint8Array.from(data));
            model.push(...data);
          } else if (op.k === "fin" && finAt === undefined) {
            finAt = model.length;
            conn.clientFinOffset = finAt;
          } else if (op.k === "flush") {
            sender.flush(conn, s, rig.now);
            collect();
          } else if (op.k === "deliver") deliver(op.loss, op.window);
          else if (op.k === "rto") over = rto();
          else if (op.k === "junk") {
            const before = [s.sndUna, s.sndNxt, s.sndWnd, s.dupAcks];
            const r = rig.ack(s, s.sndNxt + (s.finSent ? 1 : 0) + op.beyond, 12345);
            must(r === "ignored", () => `an ACK ${op.beyond} beyond what was sent: ${r}`);
            must(
              [s.sndUna, s.sndNxt, s.sndWnd, s.dupAcks].every((v, i) => v === before[i]),
              () => "an ignored ACK changed the sender",
            );
            must(rig.sent().length === 0, () => "an ignored ACK made the sender send");
          }
          invariants();
          if (over) break;
        }
        if (over) {
          gaveUp++;
          return true;
        }
        // Then a clean link: everything the client sent arrives, exactly once in order.
        const done = () =>
          received === model.length &&
          (finAt === undefined || (finReceived && s.finAcked)) &&
          s.sndUna === model.length + (finAt === undefined ? 0 : 1);
        for (let round = 0; round < 1000 && !done() && !over; round++) {
          rig.now += 1;
          sender.flush(conn, s, rig.now);
          collect();
          if (inflight.length > 0) deliver(0, 3000);
          else if (!done()) {
            must(s.rtoDeadline !== undefined, () => "stuck: nothing in flight and no timer");
            over = rto();
          }
          invariants();
        }
        if (over) {
          gaveUp++;
          return true;
        }
        must(done(), () => `received ${received} of ${model.length}, fin ${finReceived}`);
        completed++;
        return true;
      },
    ),
    { numRuns: 300 },
  );
  t.ok(completed > 250, `${completed} runs delivered everything, ${gaveUp} gave up after MAX_BACKOFFS`);
});

t.test("a replica answering zero-window probes for 30 s is neither suspected nor given up", async (t) => {
  // Found in review of ShadowSender.onAck: the answers to window probes did not reset the
  // backoffs (the replica was suspected, then given up, while it answered every probe) and were
  // counted as duplicate ACKs (a fast retransmit of nothing in flight).
  const { rig, s } = sending(300, { window: 1000 });
  rig.ack(s, 300, 0); // everything acknowledged, and the replica's application reads nothing
  rig.write(stream(100, 300));
  t.same(rig.flush(s), [], "nothing fits the zero window");
  const start = rig.now;
  const outcomes: Array<ReturnType<ShadowSender["onRto"]>> = [];
  const probes: TcpSegment[] = [];
  while (s.rtoDeadline !== undefined && s.rtoDeadline - start <= 30_000) {
    rig.now = s.rtoDeadline;
    outcomes.push(rig.sender.onRto(rig.conn, s, rig.now));
    probes.push(...rig.sent());
    t.equal(rig.ack(s, 300, 0), "same", "answered: at sndUna, window still 0");
    t.same(rig.sent(), [], "an answer to a window probe triggers no retransmission");
  }
  t.ok(outcomes.length > MAX_BACKOFFS, `${outcomes.length} probes: more than MAX_BACKOFFS (${MAX_BACKOFFS})`);
  t.same(
    outcomes.filter((o) => o.suspect !== undefined || o.giveUp !== undefined),
    [],
    "no timeout reported a suspicion or gave the shadow up",
  );
  t.equal(probes.length, outcomes.length, "one probe per timeout");
  t.ok(
    probes.every((g) => g.payload.length === 0 && g.seq === toSeq(299, rig.isn)),
    "each a window probe",
  );
  t.equal(s.retransmits, 0, "no retransmission counted");
  t.equal(s.dupAcks, 0, "no duplicate ACK counted");
  t.ok(s.rtoDeadline !== undefined && s.state === "open", "still probing");
  rig.ack(s, 300, 1000);
  t.same(
    rig.flush(s).map((g) => [rig.off(g), text(g.payload)]),
    [[300, stream(100, 300)]],
    "the window reopens: the waiting bytes go out",
  );
});

t.test("an older, reordered ACK does not set the window", async (t) => {
  // Found in review of ShadowSender.onAck: an ACK below sndUna set the window from its stale
  // right edge, letting the sender go past what the replica offers.
  const { rig, s, first } = sending(2000, { window: 1000 });
  t.same(
    first.map((g) => rig.off(g)),
    [0, 100, 200, 300, 400, 500, 600, 700, 800, 900],
    "[0, 1000) sent: the SYN-ACK's window, in MSS-sized segments",
  );
  t.equal(rig.ack(s, 500, 500), "advanced");
  t.same(rig.flush(s), [], "the window ends at 1000: nothing more");
  t.equal(rig.ack(s, 100, 900), "same", "an older ACK (reordered) arrives late");
  t.equal(s.sndWnd, 500, "the window stays the newest ACK's");
  t.same(rig.flush(s), [], "nothing beyond offset 1000");
  t.equal(rig.ack(s, 600, 500), "advanced", "a newer ACK moves the window on");
  t.same(
    rig.flush(s).map((g) => [rig.off(g), g.payload.length]),
    [[1000, 100]],
    "up to its right edge, 1100",
  );
});
