// Capture gaps: bytes one side acknowledged that the capture never delivered. With one ordered
// stream that is a gap at once; with several capture channels a suspicion, cleared when the bytes
// arrive and confirmed only once the lagging channel has passed it (plus a slack) or after
// gapConfirmMs. A confirmed gap gives up (client direction) or unverifies (original direction)
// the connection's live shadows.
import t from "tap";
import { CaptureGaps, capturedUpTo } from "../../src/replica/capture-gaps.js";
import { toSeq } from "../../src/replica/offsets.js";
import { RST } from "../../src/wire/tcp.js";
import {
  CLIENT_ISN,
  EngineParts,
  ORIGINAL_ISN,
  PORT,
  R1,
  R2,
  capturePacket,
  clientSyn,
  engineConfig,
  eventsIn,
  openShadows,
  sendsIn,
} from "../engine-parts.js";

const FRONT = "front"; // capture channel of the client's segments
const BACK = "back"; // capture channel of the original's

const config = engineConfig();
const SLACK_US = config.gapSlackMs * 1000;
const CONFIRM = config.gapConfirmMs;

/** The engine's parts a CaptureGaps works with, wired as engine.ts does, and one open connection
 * with an open, healthy shadow on each of two replicas. */
class World extends EngineParts {
  readonly gaps = new CaptureGaps(
    this.cfg,
    this.clock,
    this.lifecycle,
    this.sender,
    this.buffers,
    this.outbox,
  );
  readonly conn = this.addOpen(clientSyn(), ORIGINAL_ISN);

  constructor() {
    super({ replicas: ["r1", "r2"] });
    openShadows(this.conn, ["r1", "r2"]);
  }
}

/** The client's bytes captured on the front channel at `us` (engine time `now`). */
function clientBytes(x: World, from: number, data: string, us: number, now: number): void {
  capturePacket(x.clock, FRONT, us, now, "client", () => x.conn.client.write(from, Buffer.from(data)));
}

/** The original acknowledges client offset `acked` in a segment captured on the back channel. */
function originalAcks(x: World, acked: number, us: number, now: number): void {
  capturePacket(x.clock, BACK, us, now, "original", () => x.gaps.suspect(x.conn, "client", acked, now));
}

/** An acknowledgement of `direction`'s bytes up to `acked` in one ordered stream (no capture times). */
function acksUncaptured(x: World, direction: "client" | "original", acked: number, now: number): void {
  x.clock.begin(undefined, now);
  x.gaps.suspect(x.conn, direction, acked, now);
  x.clock.end();
}

t.test("without capture times, an acknowledgement beyond the capture is a gap at once", async (t) => {
  const x = new World();
  x.conn.client.write(0, Buffer.from("abcd"));
  const s1 = x.conn.shadows.get("r1")!;
  s1.sndNxt = 4;
  x.outbox.drain();
  acksUncaptured(x, "client", 10, 100);
  t.ok(x.conn.captureGap);
  t.equal(x.gaps.count, 1);
  const out = x.outbox.drain();
  const events = eventsIn(out);
  t.same(events[0], {
    type: "capture-gap",
    conn: "10.0.0.2:40000",
    direction: "client",
    acked: 10,
    captured: 4,
  });
  // Client bytes the replicas can never get: each live shadow is given up and its replica reset.
  t.same(
    events.slice(1),
    ["r1", "r2"].map((replica) => ({
      type: "lagging",
      conn: "10.0.0.2:40000",
      replica,
      reason: "client bytes lost to capture",
    })),
  );
  const rsts = sendsIn(out).map((o) => o.segment);
  t.same(
    rsts.map((r) => [r.dst, r.srcPort, r.dstPort, r.flags & RST]),
    [
      [R1, x.conn.port, PORT, RST],
      [R2, x.conn.port, PORT, RST],
    ],
  );
  t.equal(rsts[0]!.seq, toSeq(4, CLIENT_ISN), "the RST sits where the shadow's sending stopped");
  for (const s of x.conn.shadows.values()) {
    t.equal(s.state, "closed");
    t.equal(s.status, "lagging");
  }
  t.equal(x.replicas.get("r1")!.lagging, 1);
  // Once a gap, always a gap: a second one is not counted again.
  x.gaps.suspect(x.conn, "client", 20, 200);
  t.equal(x.gaps.count, 1);
  t.same(x.outbox.drain(), []);
});

t.test("with capture times, a suspicion is cleared when the bytes arrive", async (t) => {
  const x = new World();
  clientBytes(x, 0, "abcd", 900_000, 900);
  originalAcks(x, 8, 1_000_000, 1000);
  t.notOk(x.conn.captureGap, "not a gap yet: the front channel may only be behind");
  t.same(x.conn.gapSuspects.client, { offset: 8, atUs: 1_000_000, since: 1000 });
  t.equal(x.gaps.check(x.conn, 1000), 1000 + CONFIRM, "the next look is its confirmation deadline");
  // The front channel delivers the bytes (captured before the acknowledgement, handled after).
  clientBytes(x, 4, "efgh", 950_000, 1200);
  t.equal(x.gaps.check(x.conn, 1200), undefined, "nothing left to watch");
  t.equal(x.conn.gapSuspects.client, undefined);
  t.notOk(x.conn.captureGap);
  t.equal(x.gaps.count, 0);
  t.same(x.events(), []);
  t.equal(x.conn.shadows.get("r1")!.status, "healthy");
});

t.test("a suspicion is confirmed once its channel passed it by the slack", async (t) => {
  const x = new World();
  clientBytes(x, 0, "abcd", 900_000, 900);
  originalAcks(x, 8, 1_000_000, 1000);
  clientBytes(x, 4, "", 1_000_000 + SLACK_US - 1, 1100); // a packet of the front channel, no bytes
  x.gaps.check(x.conn, 1100);
  t.notOk(x.conn.captureGap, "a microsecond short of the slack: the retransmission may still come");
  clientBytes(x, 4, "", 1_000_000 + SLACK_US, 1101);
  t.equal(x.gaps.check(x.conn, 1101), undefined);
  t.ok(x.conn.captureGap, "the front channel has passed the acknowledgement: the bytes are lost");
  t.equal(x.gaps.count, 1);
  const events = x.events();
  t.same(events[0], {
    type: "capture-gap",
    conn: "10.0.0.2:40000",
    direction: "client",
    acked: 8,
    captured: 4,
  });
  t.same(
    events.slice(1).map((e) => e.type),
    ["lagging", "lagging"],
  );
  t.equal(x.conn.gapSuspects.client, undefined);
});

t.test("a suspicion is confirmed after gapConfirmMs when its channel stays silent", async (t) => {
  const x = new World();
  clientBytes(x, 0, "abcd", 900_000, 900);
  originalAcks(x, 8, 1_000_000, 1000);
  t.equal(x.gaps.check(x.conn, 1000 + CONFIRM - 1), 1000 + CONFIRM);
  t.notOk(x.conn.captureGap);
  t.equal(x.gaps.check(x.conn, 1000 + CONFIRM), undefined);
  t.ok(x.conn.captureGap);
  t.equal(x.gaps.count, 1);
  t.match(x.events()[0], { type: "capture-gap", direction: "client", acked: 8, captured: 4 });
});

t.test("a steady skew never confirms: each suspicion keeps its own age", async (t) => {
  const x = new World();
  // The front channel runs a second behind the back channel, for longer than gapConfirmMs: the
  // original always acknowledges two steps of bytes the front channel has not delivered yet,
  // and they always arrive one step later.
  const step = 10;
  let confirmedLooks = 0;
  for (let k = 0; k < 20; k++) {
    const now = 1000 + 1000 * k;
    originalAcks(x, (k + 2) * step, now * 1000, now);
    if (k > 0) clientBytes(x, (k - 1) * step, "x".repeat(step), (now - 1000) * 1000, now);
    x.gaps.check(x.conn, now);
    if (x.conn.captureGap) confirmedLooks++;
  }
  t.equal(confirmedLooks, 0, "never a gap, though the skew lasted 20 s");
  t.equal(x.gaps.count, 0);
  t.same(x.events(), []);
  const watched = x.conn.gapSuspects.client;
  t.ok(watched, "the latest acknowledgement is still watched");
  t.ok(watched!.since >= 1000 + 1000 * 18, `its age is its own (since ${watched!.since})`);
  // The bytes stop coming: now the suspicion does confirm, after gapConfirmMs.
  const last = 1000 + 1000 * 19;
  x.gaps.check(x.conn, last + CONFIRM);
  t.ok(x.conn.captureGap);
  t.equal(x.gaps.count, 1);
});

t.test("an original-direction gap marks the live shadows unverified", async (t) => {
  const x = new World();
  x.conn.original.write(0, Buffer.from("reply"));
  const s2 = x.conn.shadows.get("r2")!;
  s2.state = "closed"; // ended before: not touched
  acksUncaptured(x, "original", 9, 100);
  t.ok(x.conn.captureGap);
  t.equal(x.gaps.count, 1);
  const out = x.outbox.drain();
  t.same(
    out.filter((o) => o.type === "send"),
    [],
    "reply bytes lost to capture change nothing the replicas have: no reset",
  );
  t.same(
    out.map((o) => (o.type === "event" ? o.event : o.type)),
    [
      { type: "capture-gap", conn: "10.0.0.2:40000", direction: "original", acked: 9, captured: 5 },
      {
        type: "unverified",
        conn: "10.0.0.2:40000",
        replica: "r1",
        reason: "original's reply bytes lost to capture",
      },
    ],
  );
  const s1 = x.conn.shadows.get("r1")!;
  t.equal(s1.status, "unverified");
  t.equal(s1.state, "open", "the shadow goes on");
  t.equal(s2.status, "healthy", "a closed shadow is not marked");
  t.equal(x.replicas.get("r1")!.unverified, 1);
});

t.test("an original-direction suspicion waits for the back channel", async (t) => {
  const x = new World();
  capturePacket(x.clock, BACK, 500_000, 500, "original", () => x.conn.original.write(0, Buffer.from("ab")));
  // The client acknowledges reply bytes the back channel has not delivered yet.
  capturePacket(x.clock, FRONT, 1_000_000, 1000, "client", () => x.gaps.suspect(x.conn, "original", 4, 1000));
  x.gaps.check(x.conn, 1000);
  t.notOk(x.conn.captureGap);
  t.match(x.conn.gapSuspects.original, { offset: 4, atUs: 1_000_000 });
  // The front channel running ahead proves nothing: it is the back channel that must pass.
  capturePacket(x.clock, FRONT, 9_000_000, 1100);
  x.gaps.check(x.conn, 1100);
  t.notOk(x.conn.captureGap, "the other channel's watermark does not count");
  capturePacket(x.clock, BACK, 1_000_000 + SLACK_US, 1200);
  x.gaps.check(x.conn, 1200);
  t.ok(x.conn.captureGap);
  t.match(x.events()[0], { type: "capture-gap", direction: "original", acked: 4, captured: 2 });
});

t.test("one confirmed gap clears the other direction's suspicion", async (t) => {
  const x = new World();
  clientBytes(x, 0, "abcd", 900_000, 900);
  originalAcks(x, 8, 1_000_000, 1000);
  capturePacket(x.clock, FRONT, 1_000_000, 1000, undefined, () =>
    x.gaps.suspect(x.conn, "original", 3, 1000),
  );
  t.ok(x.conn.gapSuspects.original);
  x.gaps.check(x.conn, 1000 + CONFIRM);
  t.equal(x.gaps.count, 1, "the connection is counted once");
  t.equal(x.conn.gapSuspects.client, undefined);
  t.equal(x.conn.gapSuspects.original, undefined);
  t.equal(x.events().filter((e) => e.type === "capture-gap").length, 1);
});

t.test("capturedUpTo counts a side's FIN once its bytes are all in", async (t) => {
  const x = new World();
  x.conn.client.write(0, Buffer.from("abcd"));
  x.conn.original.write(0, Buffer.from("xy"));
  t.equal(capturedUpTo(x.conn, "client"), 4);
  t.equal(capturedUpTo(x.conn, "original"), 2);
  x.conn.clientFinOffset = 4;
  x.conn.originalFinOffset = 5; // its FIN was seen, bytes before it were not
  t.equal(capturedUpTo(x.conn, "client"), 5, "the FIN is a stream unit");
  t.equal(capturedUpTo(x.conn, "original"), 2, "not while bytes before the FIN are missing");
  x.conn.original.write(2, Buffer.from("zzz"));
  t.equal(capturedUpTo(x.conn, "original"), 6);
});
