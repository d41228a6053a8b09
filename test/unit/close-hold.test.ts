// The close hold: the original's FIN/RST reaches the client only once every replica still
// comparing closed the same way at the same offset, or when the hold runs out (finHoldMs after the
// last progress), the replicas that did not then marked diverged.
import t from "tap";
import { CloseHold } from "../../src/replica/close-hold.js";
import { toSeq } from "../../src/replica/offsets.js";
import type { ShadowConversation } from "../../src/replica/shadow.js";
import type { EngineEvent, EngineOutput } from "../../src/replica/types.js";
import { ACK, FIN, RST, type TcpSegment } from "../../src/wire/tcp.js";
import {
  CLIENT,
  CLIENT_ISN,
  CONN_ID,
  CPORT,
  EngineParts,
  ORIGINAL_ISN,
  R2,
  clientSyn,
  engineConfig,
  eventsIn,
  fromService,
  openShadows,
  sendsIn,
  wants,
} from "../engine-parts.js";

const HOLD = engineConfig().finHoldMs;

/** The original's close as the kernel path would deliver it to the client, at reply offset 5. */
function view(flags: number): TcpSegment {
  return fromService(CPORT, { seq: toSeq(5, ORIGINAL_ISN), ack: toSeq(1, CLIENT_ISN), flags: flags | ACK });
}

/** The parts a CloseHold works with, wired as engine.ts does, and one open connection whose
 * original sent "hello" and closes after it, with an open, healthy shadow per replica of `ids`. */
class World extends EngineParts {
  readonly hold = new CloseHold(this.cfg.finHoldMs, this.lifecycle, this.sender, this.outbox);
  readonly conn = this.addOpen(clientSyn(), ORIGINAL_ISN);
  readonly shadows: ShadowConversation[];

  constructor(ids = ["r1", "r2"]) {
    super({ replicas: ids });
    this.conn.original.write(0, Buffer.from("hello"));
    this.conn.originalFinOffset = 5;
    this.shadows = openShadows(this.conn, ids);
    for (const s of this.shadows) {
      s.reply.write(0, Buffer.from("hello"));
      s.compared = 5;
    }
  }
}

function split(out: EngineOutput[]) {
  return { sends: sendsIn(out), events: eventsIn(out) };
}

t.test("the FIN is held until every comparing replica closed at the same offset", async (t) => {
  const x = new World();
  const [s1, s2] = x.shadows as [ShadowConversation, ShadowConversation];
  const fin = view(FIN);
  x.hold.onOriginalClose(x.conn, "fin", fin, 1000);
  t.same(x.outbox.drain(), [], "held: the replicas have not closed");
  t.match(x.conn.held, { kind: "fin", since: 1000, released: false });
  s1.replicaFinOffset = 5;
  x.hold.check(x.conn, 1100);
  t.same(x.outbox.drain(), [], "still held: r2 has not closed");
  s2.replicaFinOffset = 5;
  x.hold.check(x.conn, 1250);
  const out = split(x.outbox.drain());
  t.equal(out.sends.length, 1);
  t.equal(out.sends[0]!.segment, fin, "the original's FIN, as the kernel path would have delivered it");
  t.equal(out.sends[0]!.to, "client");
  t.same(out.events, [{ type: "close-released", conn: CONN_ID, kind: "fin", heldMs: 250, matched: true }]);
  t.ok(x.conn.held?.released);
  t.equal(x.hold.released, 1);
  t.equal(x.hold.timeouts, 0);
  t.equal(s1.status, "healthy");
  t.equal(s2.status, "healthy");
  // Released once: later looks (a replica's retransmitted FIN, the timer) add nothing.
  x.hold.check(x.conn, 1300);
  const w = wants();
  x.hold.expire(x.conn, 1000 + 10 * HOLD, w.want);
  t.same(x.outbox.drain(), []);
  t.same(w.times, [], "no timer for a released hold");
  t.equal(x.hold.released, 1);
  t.equal(x.conn.phase, "open", "the client has not acknowledged it (nor closed) yet");
});

t.test("a replica that closed at another offset has diverged; the others decide the release", async (t) => {
  const x = new World();
  const [s1, s2] = x.shadows as [ShadowConversation, ShadowConversation];
  s1.replicaFinOffset = 3;
  x.hold.onOriginalClose(x.conn, "fin", view(FIN), 1000);
  const first = split(x.outbox.drain());
  t.same(first.sends, [], "r2 has not closed: still held");
  t.same(first.events, [
    {
      type: "diverged",
      conn: CONN_ID,
      replica: "r1",
      offset: 3,
      reason: "closed at offset 3, original at 5",
    },
  ]);
  t.equal(s1.status, "diverged");
  t.equal(x.replicas.get("r1")!.diverged, 1);
  s2.replicaFinOffset = 5;
  x.hold.check(x.conn, 1010);
  const second = split(x.outbox.drain());
  t.equal(second.sends.length, 1, "released: every replica still comparing closed alike");
  t.same(second.events, [{ type: "close-released", conn: CONN_ID, kind: "fin", heldMs: 10, matched: true }]);
  t.equal(x.replicas.get("r1")!.diverged, 1, "not marked twice");
});

t.test("a replica that reset where the original closed has diverged", async (t) => {
  const x = new World();
  const [s1, s2] = x.shadows as [ShadowConversation, ShadowConversation];
  s1.replicaRst = true;
  s2.replicaFinOffset = 5;
  x.hold.onOriginalClose(x.conn, "fin", view(FIN), 1000);
  const out = split(x.outbox.drain());
  t.match(out.events[0], {
    type: "diverged",
    replica: "r1",
    reason: "replica reset where the original closed",
  });
  t.equal(s1.status, "diverged");
  t.equal(s2.status, "healthy");
  t.equal(out.sends.length, 1, "released at once: r2 closed alike, r1 no longer counts");
  t.match(out.events[1], { type: "close-released", matched: true, heldMs: 0 });
});

t.test("a shadow that is not comparing is not waited for", async (t) => {
  const x = new World();
  const [s1, s2] = x.shadows as [ShadowConversation, ShadowConversation];
  s2.status = "lagging";
  s1.replicaFinOffset = 5;
  x.hold.onOriginalClose(x.conn, "fin", view(FIN), 1000);
  const out = split(x.outbox.drain());
  t.equal(out.sends.length, 1);
  t.same(out.events, [{ type: "close-released", conn: CONN_ID, kind: "fin", heldMs: 0, matched: true }]);
  t.equal(s2.status, "lagging");
});

t.test("the hold expires finHoldMs after the last progress of a replica it waits for", async (t) => {
  // One replica, which never closes: still sending toward its close for a while, then quiet.
  const x = new World(["r2"]);
  const s2 = x.shadows[0]!;
  x.hold.onOriginalClose(x.conn, "fin", view(FIN), 1000);
  s2.lastProgressAt = 1500; // its reply advanced after the original's FIN
  const w1 = wants();
  x.hold.expire(x.conn, 1000 + HOLD, w1.want);
  t.same(x.outbox.drain(), [], "not yet: the replica made progress 500 ms into the hold");
  t.same(w1.times, [1500 + HOLD], "the deadline counts from the last progress");
  const w2 = wants();
  x.hold.expire(x.conn, 1500 + HOLD - 1, w2.want);
  t.same(x.outbox.drain(), []);
  t.same(w2.times, [1500 + HOLD]);
  x.hold.expire(x.conn, 1500 + HOLD, () => t.fail("no timer after the release"));
  const out = split(x.outbox.drain());
  t.same(out.events, [
    {
      type: "diverged",
      conn: CONN_ID,
      replica: "r2",
      offset: 5,
      reason: "did not close with the original",
    },
    { type: "close-released", conn: CONN_ID, kind: "fin", heldMs: 500 + HOLD, matched: false },
  ]);
  t.equal(out.sends.length, 1, "released to the client anyway");
  t.equal(s2.status, "diverged");
  t.equal(x.hold.timeouts, 1);
  t.equal(x.hold.released, 1);
  t.equal(s2.state, "open", "a FIN release does not end the shadow");
  t.equal(x.conn.phase, "open");
});

t.test("a retransmitted FIN after the release is passed on", async (t) => {
  const x = new World([]);
  x.hold.onOriginalClose(x.conn, "fin", view(FIN), 1000);
  t.equal(split(x.outbox.drain()).sends.length, 1, "no replica to wait for: released at once");
  // The client's ACK of it was lost; the original retransmits.
  const again = view(FIN);
  x.hold.onOriginalClose(x.conn, "fin", again, 1200);
  const out = x.outbox.drain();
  t.same(out, [{ type: "send", segment: again, to: "client" }], "passed on, without a second event");
  t.equal(x.hold.released, 1);
});

t.test(
  "an RST replaces a held FIN, keeping when the hold began; a FIN does not replace an RST",
  async (t) => {
    const x = new World();
    x.hold.onOriginalClose(x.conn, "fin", view(FIN), 1000);
    const rst = view(RST);
    x.hold.onOriginalClose(x.conn, "rst", rst, 1300);
    t.equal(x.conn.held?.kind, "rst");
    t.equal(x.conn.held?.segment, rst);
    t.equal(x.conn.held?.since, 1000);
    x.hold.onOriginalClose(x.conn, "fin", view(FIN), 1400);
    t.equal(x.conn.held?.kind, "rst", "a FIN after the RST does not undo it");
    t.equal(x.conn.held?.segment, rst);
    x.hold.onOriginalClose(x.conn, "rst", view(RST), 1500);
    t.equal(x.conn.held?.segment, rst, "nor does another RST: the first one is held");
    t.equal(x.conn.held?.since, 1000);
    t.same(x.outbox.drain(), [], "still held: no replica reset");
  },
);

t.test("an RST matched by every replica is released; the connection is closed", async (t) => {
  const x = new World();
  const [s1, s2] = x.shadows as [ShadowConversation, ShadowConversation];
  const rst = view(RST);
  x.hold.onOriginalClose(x.conn, "rst", rst, 1000);
  t.same(x.outbox.drain(), []);
  // The replicas reset too (the engine closes a shadow whose replica reset it).
  s1.replicaRst = true;
  s1.state = "closed";
  x.hold.check(x.conn, 1050);
  t.same(x.outbox.drain(), [], "r2 has not reset yet");
  s2.replicaRst = true;
  s2.state = "closed";
  x.hold.check(x.conn, 1080);
  const out = split(x.outbox.drain());
  t.same(
    out.sends.map((s) => [s.segment, s.to]),
    [[rst, "client"]],
    "only the client's RST: the shadows are closed already",
  );
  t.same(out.events, [{ type: "close-released", conn: CONN_ID, kind: "rst", heldMs: 80, matched: true }]);
  t.equal(x.conn.phase, "closed");
  t.equal(x.conn.closedAt, 1080);
  t.equal(s1.status, "healthy");
  t.equal(s2.status, "healthy");
});

t.test("an RST released at expiry resets the live shadows and closes the connection", async (t) => {
  const x = new World();
  const [s1, s2] = x.shadows as [ShadowConversation, ShadowConversation];
  s1.replicaRst = true;
  s1.state = "closed";
  s2.sndNxt = 3;
  x.hold.onOriginalClose(x.conn, "rst", view(RST), 1000);
  t.same(x.outbox.drain(), [], "r2 keeps its connection open");
  x.hold.expire(x.conn, 1000 + HOLD, () => t.fail("released, no timer wanted"));
  const out = split(x.outbox.drain());
  t.same(
    out.events.map((e: EngineEvent) => e.type),
    ["diverged", "close-released"],
  );
  t.match(out.events[0], { replica: "r2", reason: "did not reset with the original" });
  t.match(out.events[1], { kind: "rst", matched: false, heldMs: HOLD });
  t.same(
    out.sends.map((s) => [s.to, s.segment.dst]),
    [
      ["client", CLIENT],
      ["replica", R2],
    ],
    "the RST to the client, then one to the replica still open (not to r1, closed)",
  );
  const toR2 = out.sends[1]!.segment;
  t.ok(toR2.flags & RST);
  t.equal(toR2.seq, toSeq(3, CLIENT_ISN));
  t.equal(toR2.srcPort, x.conn.port);
  t.equal(s2.state, "closed");
  t.equal(x.conn.phase, "closed");
  t.equal(x.conn.closedAt, 1000 + HOLD);
});

t.test("a released FIN the client acknowledged after its own close ends the connection", async (t) => {
  const x = new World([]);
  x.conn.client.write(0, Buffer.from("q"));
  x.conn.clientFinOffset = 1;
  x.conn.originalAckOffset = 2; // the original acknowledged the client's byte and FIN
  x.conn.clientAckOffset = 6; // and the client acknowledged the original's bytes and FIN
  x.hold.onOriginalClose(x.conn, "fin", view(FIN), 1000);
  t.equal(x.conn.phase, "closed", "both directions are done once the FIN is released");
  t.equal(x.conn.closedAt, 1000);
});
