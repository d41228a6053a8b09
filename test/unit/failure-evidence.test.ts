// OriginalEvidence (src/replica/failure/evidence.ts) on hand-built connection state: the original
// closed alone, or stalled while its replicas answered; thresholds that follow the original's
// handshake RTT and how far it trails, never below their floors; the time `want` reports; the
// held FIN of a spliced connection.
import t from "tap";
import fc from "fast-check";
import { assertProperty } from "../property.js";
import { CaptureClock } from "../../src/replica/capture-clock.js";
import type { ReplicatedConnection } from "../../src/replica/connection.js";
import { CLOSE_ALONE, OriginalEvidence, type Verdict } from "../../src/replica/failure/evidence.js";
import type { ShadowConversation } from "../../src/replica/shadow.js";
import type { EngineConfig } from "../../src/replica/types.js";
import { ACK, FIN } from "../../src/wire/tcp.js";
import { CPORT, earliest, failureConfig, fromService, openConnection, openShadows } from "../engine-parts.js";

const REPLY_STALL = "the original stopped answering what the replicas answer";
const ACK_STALL = "the original stopped acknowledging what the replicas acknowledge";
const UNACKED = "the original stopped acknowledging the client's bytes";

/** n bytes (of "a"). */
const filled = (n: number) => new Uint8Array(n).fill(0x61);

/** An open connection with one healthy, open shadow on each of `ids`. */
function opened(ids = ["r1"]): { conn: ReplicatedConnection; shadows: ShadowConversation[] } {
  const conn = openConnection();
  return { conn, shadows: openShadows(conn, ids) };
}

interface Harness {
  evidence: OriginalEvidence;
  released: Array<[ReplicatedConnection, ShadowConversation]>;
  /** Runs inspect and returns the verdict and the earliest time `want` was given. */
  look(
    conn: ReplicatedConnection,
    now: number,
    aliveAt?: number,
    checkedAt?: number,
  ): { v: Verdict; next: number | undefined };
}

function harness(over: Partial<EngineConfig["failure"]> = {}, finHoldMs = 2000): Harness {
  const released: Array<[ReplicatedConnection, ShadowConversation]> = [];
  const evidence = new OriginalEvidence(failureConfig(over), finHoldMs, new CaptureClock(), (c, s) =>
    released.push([c, s]),
  );
  return {
    evidence,
    released,
    look(conn, now, aliveAt = -Infinity, checkedAt = -Infinity) {
      const { value: v, next } = earliest((want) => evidence.inspect(conn, now, aliveAt, checkedAt, want));
      return { v, next };
    },
  };
}

/** The original's FIN at `finAt` (offset 10), held since `since`; one replica caught up at
 * `caughtUpAt` that has not closed. */
function heldFin(since: number, caughtUpAt: number, kind: "fin" | "rst" = "fin") {
  const { conn, shadows } = opened();
  const s = shadows[0]!;
  conn.original.write(0, filled(10));
  conn.client.write(0, filled(4));
  conn.originalAckOffset = 4;
  if (kind === "fin") conn.originalFinOffset = 10;
  conn.held = {
    kind,
    segment: fromService(CPORT, { flags: FIN | ACK }),
    since,
    released: false,
  };
  s.reply.write(0, filled(10));
  s.compared = 10;
  s.sndUna = 4;
  s.caughtUpAt = caughtUpAt;
  return { conn, s };
}

t.test("a held FIN with a caught-up replica that did not close: suspect after closeMismatchMs", async (t) => {
  const probing = harness({ probes: true });
  const { conn } = heldFin(100, 102);
  // Counted from when the replica was caught up (102), not from the FIN (100): a replica merely
  // late must not look like a survivor.
  const early = probing.look(conn, 103);
  t.same(early.v, { verdict: "none" }, "not before closeMismatchMs");
  t.equal(early.next, 104, "want: when the verdict changes");
  const due = probing.look(conn, 104);
  t.match(due.v, { verdict: "suspect", conn, afterMs: 2 });
  t.equal((due.v as { reason: string }).reason, `${CLOSE_ALONE} (closed)`);

  const noProbes = harness({ probes: false });
  t.same(noProbes.look(conn, 103).v, { verdict: "none" });
  t.match(noProbes.look(conn, 104).v, { verdict: "failed", afterMs: 2 }, "without probes: a failure");

  const rst = heldFin(100, 100, "rst");
  t.match(noProbes.look(rst.conn, 102).v, { verdict: "failed", reason: `${CLOSE_ALONE} (reset)` });
});

t.test("a held close is no evidence when the replica is not a survivor", async (t) => {
  const h = harness({ probes: true });
  const cases: Array<[string, (c: ReplicatedConnection, s: ShadowConversation) => void]> = [
    ["the replica closed too", (_c, s) => (s.replicaFinOffset = 10)],
    ["the replica has not answered up to the FIN", (_c, s) => (s.compared = 9)],
    ["the replica has not received every client byte", (_c, s) => (s.sndUna = 3)],
    ["the shadow is not healthy", (_c, s) => (s.status = "diverged")],
    ["the close was released", (c) => (c.held!.released = true)],
  ];
  for (const [name, change] of cases) {
    const { conn, s } = heldFin(100, 100);
    t.match(h.look(conn, 200).v, { verdict: "suspect" }, `control for: ${name}`);
    change(conn, s);
    const { v, next } = h.look(conn, 200);
    t.same(v, { verdict: "none" }, name);
    t.equal(next, undefined, `${name}: nothing to look at later`);
  }
  const reset = heldFin(100, 100, "rst");
  reset.s.replicaRst = true;
  t.same(h.look(reset.conn, 200).v, { verdict: "none" }, "a held RST when the replica reset too");
});

t.test("a probe answered alive after the evidence explains it", async (t) => {
  const h = harness({ probes: true });
  const { conn } = heldFin(100, 100);
  t.match(h.look(conn, 110, 99).v, { verdict: "suspect" }, "a probe sent before the close explains nothing");
  t.same(h.look(conn, 110, 100).v, { verdict: "none" }, "a probe sent when the close was held");
  t.same(h.look(conn, 110, 105).v, { verdict: "none" }, "a probe sent after it");
});

/** An open connection whose replica answered 20 bytes where the original answered 10. */
function replyAhead() {
  const { conn, shadows } = opened();
  conn.original.write(0, filled(10));
  shadows[0]!.reply.write(0, filled(20));
  shadows[0]!.compared = 10;
  return conn;
}

t.test(
  "reply stall: the replica answered more and the original sent no data for the hang budget",
  async (t) => {
    const h = harness({ probes: false, hangBudgetMs: 60 });
    const conn = replyAhead();
    h.evidence.heard(true, { at: 0, captureUs: undefined });
    const first = h.look(conn, 10);
    t.equal(conn.replyAheadSince, 10, "the stall clock starts when it is first seen");
    t.same(first.v, { verdict: "none" });
    t.equal(first.next, 70, "want: since + the hang budget");
    t.same(h.look(conn, 69).v, { verdict: "none" });
    t.same(h.look(conn, 70).v, {
      verdict: "failed",
      reason: REPLY_STALL,
      conn,
      afterMs: 60,
      by: "hang budget",
    });

    // A frozen application's kernel still sends ACKs: the reply stall counts data only.
    h.evidence.heard(false, { at: 65, captureUs: undefined });
    t.match(h.look(conn, 70).v, { verdict: "failed", reason: REPLY_STALL }, "an ACK is not an answer");

    // Data from the original (on any connection): it is busy, not dead.
    const busy = harness({ probes: false, hangBudgetMs: 60 });
    const other = replyAhead();
    busy.evidence.heard(true, { at: 0, captureUs: undefined });
    busy.look(other, 10);
    busy.evidence.heard(true, { at: 30, captureUs: undefined });
    const later = busy.look(other, 70);
    t.same(later.v, { verdict: "none" }, "the original sent data 40 ms ago");
    t.equal(later.next, 90, "want: when its silence reaches the hang budget");
    t.same(busy.look(other, 89).v, { verdict: "none" });
    t.match(busy.look(other, 90).v, { verdict: "failed", reason: REPLY_STALL, afterMs: 80 });
    t.same(
      busy.look(replyAhead(), 90).v,
      { verdict: "none" },
      "a connection's own clock starts at its first look",
    );
  },
);

t.test(
  "ack stall: the replica acknowledged client bytes the original did not, for the hang budget",
  async (t) => {
    const h = harness({ probes: false, hangBudgetMs: 100 });
    const { conn, shadows } = opened();
    conn.client.write(0, filled(10));
    conn.originalAckOffset = 4;
    shadows[0]!.sndUna = 10;
    t.same(h.look(conn, 0).v, { verdict: "none" });
    t.equal(conn.ackBehindSince, 0);
    t.equal(conn.unackedSince, 0);
    t.same(h.look(conn, 99).v, { verdict: "none" });
    t.same(h.look(conn, 100).v, {
      verdict: "failed",
      reason: ACK_STALL,
      conn,
      afterMs: 100,
      by: "hang budget",
    });
    // Any segment of the original (an ACK on another connection) proves it is not silent.
    h.evidence.heard(false, { at: 50, captureUs: undefined });
    t.same(h.look(conn, 100).v, { verdict: "none" });
    t.match(h.look(conn, 150).v, { verdict: "failed", reason: ACK_STALL });
    // The original catches up: no evidence, and the clocks stop.
    conn.originalAckOffset = 10;
    t.same(h.look(conn, 500).v, { verdict: "none" });
    t.equal(conn.ackBehindSince, undefined);
    t.equal(conn.unackedSince, undefined);
  },
);

t.test("an unacknowledged client byte is only a suspicion, probed at most every 20 ms", async (t) => {
  const h = harness({ probes: true });
  const { conn } = opened();
  conn.client.write(0, filled(10));
  t.equal(h.look(conn, 0).next, 3, "want: stallSuspectMs later");
  t.same(h.look(conn, 2).v, { verdict: "none" });
  t.same(h.look(conn, 3).v, { verdict: "suspect", reason: UNACKED, conn, afterMs: 3 });
  t.same(h.look(conn, 1e6).v.verdict, "suspect", "never a failure by itself");
  h.evidence.lastStallProbeAt = 10;
  const limited = h.look(conn, 20);
  t.same(limited.v, { verdict: "none" }, "rate-limited");
  t.equal(limited.next, 30, "want: when the next stall probe is allowed");
  t.same(h.look(conn, 30).v.verdict, "suspect");
  t.same(h.look(conn, 40, 0).v, { verdict: "none" }, "a stall the last alive probe answered already");
  t.same(harness({ probes: false }).look(conn, 1e6).v, { verdict: "none" }, "without probes: no suspicion");
});

t.test("restartStallClocks floors the stall clocks", async (t) => {
  const h = harness({ probes: false, hangBudgetMs: 60 });
  const conn = replyAhead();
  h.look(conn, 0);
  t.equal(conn.replyAheadSince, 0);
  // A planned hold ended at 50: a stall must last its full threshold from there.
  h.evidence.restartStallClocks(50);
  const v = h.look(conn, 60);
  t.equal(conn.replyAheadSince, 50, "moved up to the floor");
  t.same(v.v, { verdict: "none" }, "60 ms of stall, but only 10 since the hold");
  t.equal(v.next, 110);
  t.same(h.look(conn, 109).v, { verdict: "none" });
  t.match(h.look(conn, 110).v, { verdict: "failed", reason: REPLY_STALL, afterMs: 60 });
  const later = replyAhead();
  later.replyAheadSince = 80;
  h.look(later, 90);
  t.equal(later.replyAheadSince, 80, "a clock started after the floor is not moved");
});

t.test("a health check the application answered restarts the hang budget from its send time", async (t) => {
  const h = harness({ probes: true, hangBudgetMs: 60 });
  const conn = replyAhead();
  h.evidence.heard(true, { at: 0, captureUs: undefined });
  h.look(conn, 0);
  t.match(h.look(conn, 60).v, { verdict: "failed", by: "hang budget" }, "unchecked: the budget ran out");
  // A check sent at 50 was answered: the application is alive, the request merely slow.
  const checked = h.look(conn, 60, -Infinity, 50);
  t.not(checked.v.verdict, "failed", "the stall counts from the check");
  t.equal(checked.next, 110, "want: the check's send time + the budget");
  t.match(h.look(conn, 110, -Infinity, 50).v, { verdict: "failed", reason: REPLY_STALL, afterMs: 110 });
  t.match(
    h.look(conn, 1000, 900, -Infinity).v,
    { verdict: "failed", by: "hang budget" },
    "a kernel-level probe answering explains a suspicion, never a hang",
  );
});

t.test(
  "thresholds follow the handshake RTT and the trailing samples, never below their floors",
  async (t) => {
    const h = harness({ stallSuspectMs: 3, probeTimeoutMs: 5, hangBudgetMs: 60 });
    const e = h.evidence;
    t.equal(e.stallSuspectMs(), 3, "floor before any sample");
    t.equal(e.probeTimeoutMs(), 5);
    t.equal(e.hangBudgetMs(), 60);
    // Fast paths: the estimates are below the floors.
    e.handshakeRtt(0.1); // bound: 0.1 + 4 × 0.05 = 0.3
    e.trailed(1); // bound: 1 + 8 × 0.5 = 5
    t.equal(e.stallSuspectMs(), 3, "2 × 0.3 is below the floor");
    t.equal(e.probeTimeoutMs(), 5, "4 × 0.3 is below the floor");
    t.equal(e.hangBudgetMs(), 60, "5 is below the floor");

    e.reset();
    e.handshakeRtt(10); // mean 10, deviation 5: bound 30
    t.equal(e.stallSuspectMs(), 60, "2 × the RTT bound");
    t.equal(e.probeTimeoutMs(), 120, "4 × the RTT bound");
    e.trailed(20); // mean 20, deviation 10: bound 100
    t.equal(e.hangBudgetMs(), 100, "mean + 8 × deviation of how far it trails");
    const high = harness({ hangBudgetMs: 150 }).evidence;
    high.trailed(20);
    t.equal(high.hangBudgetMs(), 150, "the configured budget still wins when higher");
    e.reset();
    t.equal(e.stallSuspectMs(), 3, "a new original starts from the floors");
    t.equal(e.hangBudgetMs(), 60);
  },
);

t.test("inspect uses the adapted thresholds", async (t) => {
  const slow = harness({ probes: true });
  slow.evidence.handshakeRtt(10); // stall suspicion after 60 ms
  const { conn } = opened();
  conn.client.write(0, filled(10));
  const first = slow.look(conn, 0);
  t.equal(first.next, 60);
  t.same(slow.look(conn, 59).v, { verdict: "none" }, "3 ms is not enough for a slow path");
  t.match(slow.look(conn, 60).v, { verdict: "suspect", reason: UNACKED });

  const trailing = harness({ probes: false, hangBudgetMs: 60 });
  trailing.evidence.trailed(20); // reply stall after 100 ms
  const ahead = replyAhead();
  t.equal(trailing.look(ahead, 0).next, 100);
  t.same(trailing.look(ahead, 99).v, { verdict: "none" }, "an original that often trails gets longer");
  t.match(trailing.look(ahead, 100).v, { verdict: "failed", reason: REPLY_STALL });
});

t.test("want reports the time the reply-stall verdict changes", async (t) => {
  assertProperty(
    "evidence: want names the first failing time of a reply stall",
    fc.property(
      fc.integer({ min: 0, max: 200 }), // when the stall is first seen
      fc.integer({ min: -200, max: 200 }), // when the original last sent data, relative to that
      fc.integer({ min: 0, max: 2 }), // trailing samples raise the threshold
      fc.double({ min: 0, max: 1, noNaN: true }), // when, before the verdict, inspect looks
      (start, heard, samples, frac) => {
        const h = harness({ probes: false, hangBudgetMs: 60 });
        for (let i = 0; i < samples; i++) h.evidence.trailed(30 + 20 * i);
        const limit = h.evidence.hangBudgetMs();
        const conn = replyAhead();
        const heardAt = start + heard;
        h.evidence.heard(true, { at: heardAt, captureUs: undefined });
        h.look(conn, start); // starts the stall clock
        // Failed once the stall and the original's silence both reached the threshold.
        const failsAt = Math.max(start, heardAt) + limit;
        const lookAt = Math.max(start, heardAt) + Math.floor(frac * (limit - 1));
        const { v, next } = h.look(conn, lookAt);
        if (v.verdict !== "none" || next !== failsAt) return false;
        const before = h.look(conn, failsAt - 0.5);
        const at = h.look(conn, failsAt);
        return before.v.verdict === "none" && before.next === failsAt && at.v.verdict === "failed";
      },
    ),
    { numRuns: 300 },
  );
  t.pass("the property held");
});

/** A spliced connection: r1 promoted and closed (FIN at 10 since `since`), r2 still open. */
function splicedFin(since: number) {
  const { conn, shadows } = opened(["r1", "r2"]);
  const [s, other] = shadows as [ShadowConversation, ShadowConversation];
  conn.spliced = s;
  conn.spliceFinSince = since;
  s.replicaFinOffset = 10;
  s.sndUna = 5;
  other.sndUna = 5;
  other.lastProgressAt = since - 50;
  return { conn, s, other };
}

t.test("a spliced connection's FIN goes out when no other replica survives", async (t) => {
  const h = harness({ probes: true }, 2000);
  const alone = splicedFin(100);
  alone.other.state = "closed";
  t.same(h.look(alone.conn, 100).v, { verdict: "none" });
  t.equal(h.released.length, 1, "released at once");
  t.equal(h.released[0]![0], alone.conn);
  t.equal(h.released[0]![1], alone.s, "the spliced shadow's FIN");

  const both = splicedFin(100);
  both.other.replicaFinOffset = 10;
  h.look(both.conn, 100);
  t.equal(h.released.length, 2, "the other replica closed too: no survivor");

  const sent = splicedFin(100);
  sent.other.state = "closed";
  sent.conn.spliceFinSent = true;
  h.look(sent.conn, 100);
  t.equal(h.released.length, 2, "a FIN already sent is not released again");
});

t.test("a spliced FIN with a survivor: held, then suspected, then released after finHoldMs", async (t) => {
  const h = harness({ probes: true }, 2000);
  const { conn, s, other } = splicedFin(100);
  const early = h.look(conn, 101);
  t.same(early.v, { verdict: "none" }, "not before closeMismatchMs");
  t.equal(early.next, 102);
  t.equal(h.released.length, 0, "held while the other replica keeps the connection open");
  t.match(h.look(conn, 102).v, {
    verdict: "suspect",
    reason: `${CLOSE_ALONE} (closed after a promotion)`,
    afterMs: 2,
  });
  t.match(harness({ probes: false }).look(conn, 102).v, { verdict: "failed" }, "without probes: failed");
  t.same(h.look(conn, 102, 100).v, { verdict: "none" }, "a probe answered alive since the FIN explains it");
  other.sndUna = 4;
  t.same(h.look(conn, 102).v, { verdict: "none" }, "a survivor behind the new original is no evidence");
  other.sndUna = 5;

  other.lastProgressAt = 500; // the survivor still makes progress: the hold counts from there
  t.equal(h.look(conn, 600).next, 2500, "want: the release time");
  t.equal(h.released.length, 0);
  t.same(h.look(conn, 2500).v, { verdict: "none" });
  t.equal(h.released.length, 1, "released at finHoldMs after the last progress");
  t.equal(h.released[0]![1], s);
  t.ok(conn.spliceFinReleased, "marked released: the FIN may go out despite the survivor");
});
