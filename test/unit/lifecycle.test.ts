// Lifecycle of shadows and connections: a shadow's status (each change counted on its replica and
// announced once), closing a shadow, deciding a connection is done, deleting it. Built from the
// real parts as engine.ts's constructor wires them; outcomes read from the outbox, the replica
// records, the connection table and the buffer totals.
import t from "tap";
import fc from "fast-check";
import { assertProperty } from "../property.js";
import type { ReplicatedConnection } from "../../src/replica/connection.js";
import type { ShadowConversation } from "../../src/replica/shadow.js";
import { ACK, FIN, RST } from "../../src/wire/tcp.js";
import { EngineParts, R1, fromService } from "../engine-parts.js";
import { FIN_ACK_GRACE_MS } from "../../src/replica/lifecycle.js";

class Rig extends EngineParts {
  constructor() {
    super({ replicas: ["r1", "r2"] });
  }

  /** A connection with a shadow on each replica; `open` completes the client's and the shadows'
   * handshakes (else it stays half-open, phase "syn", no shadow). */
  connection(open = true): ReplicatedConnection {
    if (!open) return this.addHalfOpen();
    const conn = this.addOpen();
    this.handshake(conn);
    this.outbox.drain();
    return conn;
  }
}

/** A rig with one open connection and its shadows on r1 (`s1`) and r2 (`s2`). */
function opened(): { rig: Rig; conn: ReplicatedConnection; s1: ShadowConversation; s2: ShadowConversation } {
  const rig = new Rig();
  const conn = rig.connection();
  return { rig, conn, s1: conn.shadows.get("r1")!, s2: conn.shadows.get("r2")! };
}

const counts = (rig: Rig, id: string) => {
  const r = rig.replicas.get(id)!;
  return { diverged: r.diverged, lagging: r.lagging, unverified: r.unverified };
};

t.test("healthy to diverged: counted once, announced once with its offset and excerpt", async (t) => {
  const { rig, conn, s1: s } = opened();
  const excerpt = { original: "0", replicaBytes: "1" };
  rig.lifecycle.setStatus(conn, s, "diverged", "reply bytes differ", 13, excerpt);
  t.equal(s.status, "diverged");
  t.equal(s.reason, "reply bytes differ");
  t.same(counts(rig, "r1"), { diverged: 1, lagging: 0, unverified: 0 });
  t.same(rig.take().events, [
    {
      type: "diverged",
      conn: "10.0.0.2:40000",
      replica: "r1",
      offset: 13,
      reason: "reply bytes differ",
      original: "0",
      replicaBytes: "1",
    },
  ]);
  rig.lifecycle.setStatus(conn, s, "diverged", "again", 20);
  t.same(rig.take().events, [], "the same status again: no second event");
  t.equal(s.reason, "reply bytes differ", "the first reason stays");
  t.same(counts(rig, "r1"), { diverged: 1, lagging: 0, unverified: 0 }, "nor a second count");
  t.equal(conn.shadows.get("r2")!.status, "healthy", "the other shadow is untouched");
  t.same(counts(rig, "r2"), { diverged: 0, lagging: 0, unverified: 0 });
});

t.test("healthy to lagging and healthy to unverified: each counted and announced", async (t) => {
  const { rig, conn, s1, s2 } = opened();
  rig.lifecycle.setStatus(conn, s1, "lagging", "stopped acknowledging", 0);
  rig.lifecycle.setStatus(conn, s2, "unverified", "capture gap", 5);
  t.same(rig.take().events, [
    { type: "lagging", conn: conn.id, replica: "r1", reason: "stopped acknowledging" },
    { type: "unverified", conn: conn.id, replica: "r2", reason: "capture gap" },
  ]);
  t.same(counts(rig, "r1"), { diverged: 0, lagging: 1, unverified: 0 });
  t.same(counts(rig, "r2"), { diverged: 0, lagging: 0, unverified: 1 });
});

t.test("lagging is final", async (t) => {
  const { rig, conn, s1: s } = opened();
  rig.lifecycle.setStatus(conn, s, "lagging", "beyond the global limit", 0);
  rig.take();
  rig.lifecycle.setStatus(conn, s, "diverged", "reply bytes differ", 3);
  rig.lifecycle.setStatus(conn, s, "unverified", "capture gap", 3);
  rig.lifecycle.setStatus(conn, s, "lagging", "again", 3);
  t.equal(s.status, "lagging");
  t.equal(s.reason, "beyond the global limit");
  t.same(rig.take().events, [], "nothing announced");
  t.same(counts(rig, "r1"), { diverged: 0, lagging: 1, unverified: 0 });
});

t.test("diverged can still become lagging (the worse state wins)", async (t) => {
  const { rig, conn, s1: s } = opened();
  rig.lifecycle.setStatus(conn, s, "diverged", "reply bytes differ", 3);
  rig.lifecycle.setStatus(conn, s, "lagging", "beyond the per-replica limit", 3);
  t.equal(s.status, "lagging");
  t.same(
    rig.take().events.map((e) => e.type),
    ["diverged", "lagging"],
  );
  t.same(counts(rig, "r1"), { diverged: 1, lagging: 1, unverified: 0 });
});

t.test("unverified never replaces another non-healthy status; the others replace it", async (t) => {
  const { rig, conn, s1: d, s2: u } = opened();
  rig.lifecycle.setStatus(conn, d, "diverged", "reply bytes differ", 3);
  rig.take();
  rig.lifecycle.setStatus(conn, d, "unverified", "capture gap", 3);
  t.equal(d.status, "diverged", "diverged says more than unverified");
  t.same(rig.take().events, []);
  t.equal(rig.replicas.get("r1")!.unverified, 0);

  rig.lifecycle.setStatus(conn, u, "unverified", "capture gap", 3);
  rig.lifecycle.setStatus(conn, u, "diverged", "reply bytes differ", 9);
  t.equal(u.status, "diverged", "a difference found later is reported");
  t.same(
    rig.take().events.map((e) => [e.type, "replica" in e ? e.replica : ""]),
    [
      ["unverified", "r2"],
      ["diverged", "r2"],
    ],
  );
  t.same(counts(rig, "r2"), { diverged: 1, lagging: 0, unverified: 1 });
});

t.test("a status change releases the original's bytes held only for that shadow", async (t) => {
  const { rig, conn, s1, s2 } = opened();
  conn.original.write(0, new Uint8Array(100));
  s1.compared = 80;
  s2.compared = 20;
  rig.buffers.releaseOriginal(conn);
  t.equal(conn.original.base, 20);
  rig.lifecycle.setStatus(conn, s2, "unverified", "capture gap", 20);
  t.equal(conn.original.base, 80, "r2's replies are no longer compared: only r1's comparison holds bytes");
});

type Status = "diverged" | "lagging" | "unverified";
const STATUS_RULES =
  "whatever statuses are reported, each kind is announced and counted at most once, in order";
t.test(STATUS_RULES, async (t) => {
  let changes = 0;
  assertProperty(
    STATUS_RULES,
    fc.property(
      fc.array(fc.constantFrom<Status>("diverged", "lagging", "unverified"), { maxLength: 12 }),
      (asked) => {
        const { rig, conn, s1: s } = opened();
        asked.forEach((st, i) => rig.lifecycle.setStatus(conn, s, st, `reason ${i}`, i));
        const events = rig.take().events;
        const kinds = events.map((e) => e.type);
        changes += kinds.length;
        // Each kind at most once, never back towards "less bad": unverified, diverged, lagging.
        const order = ["unverified", "diverged", "lagging"];
        const ranks = kinds.map((k) => order.indexOf(k));
        if (ranks.some((x, i) => x < 0 || (i > 0 && x <= ranks[i - 1]!))) return false;
        // The final status: the worst one asked for (unverified only if nothing worse was).
        const want = asked.includes("lagging")
          ? "lagging"
          : asked.includes("diverged")
            ? "diverged"
            : asked.includes("unverified")
              ? "unverified"
              : "healthy";
        if (s.status !== want) return false;
        // Announced with the reason of the request that made the change.
        for (const e of events) {
          const first = asked.indexOf(e.type as Status);
          if (!("reason" in e) || e.reason !== `reason ${first}`) return false;
        }
        // Unverified only ever follows healthy: if anything else came first, it is never reported.
        const firstUnverified = asked.indexOf("unverified");
        const worseBefore = asked.slice(0, Math.max(0, firstUnverified)).some((x) => x !== "unverified");
        if (kinds.includes("unverified") === (firstUnverified < 0 || worseBefore)) return false;
        const c = counts(rig, "r1");
        return (
          c.diverged === kinds.filter((k) => k === "diverged").length &&
          c.lagging === kinds.filter((k) => k === "lagging").length &&
          c.unverified === kinds.filter((k) => k === "unverified").length
        );
      },
    ),
    { numRuns: 300 },
  );
  t.ok(changes > 300, `${changes} status changes checked`);
});

t.test("closeShadow frees its reply, stops its timer and lets go of what only it held", async (t) => {
  const { rig, conn, s1, s2 } = opened();
  conn.client.write(0, new Uint8Array(50));
  for (const s of [s1, s2]) rig.sender.flush(conn, s, rig.now);
  rig.replicaAck(conn, s2, 50, 1000);
  s1.reply.write(0, new Uint8Array(30));
  s1.reply.write(40, new Uint8Array(5));
  rig.buffers.account(conn);
  t.ok(s1.rtoDeadline !== undefined, "data outstanding: a timer runs");
  t.equal(rig.buffers.total, 50 + 35);
  rig.take();
  rig.lifecycle.closeShadow(conn, s1);
  t.equal(s1.state, "closed");
  t.equal(s1.live, false);
  t.equal(s1.rtoDeadline, undefined, "no timer on a closed shadow");
  t.equal(s1.reply.footprint, 0, "its reply (out of order bytes too) is freed");
  t.equal(conn.client.footprint, 0, "r2 acknowledged everything: nobody needs the client's bytes now");
  t.same(rig.take(), { events: [], segments: [] }, "closing is silent (no RST: that is abandon's)");
  rig.buffers.account(conn);
  t.equal(rig.buffers.total, 0);
  t.equal(rig.replicas.get("r1")!.buffered, 0);
});

/** An open connection in a chosen state of its close (everything else left undone). */
function closing(
  rig: Rig,
  o: {
    clientFin?: number;
    originalAck?: number;
    held?: { kind: "fin" | "rst"; released: boolean };
    originalFin?: number;
    clientAck?: number;
    clientFinAt?: number;
    originalFinAt?: number;
  },
): ReplicatedConnection {
  const conn = rig.connection();
  conn.client.write(0, new Uint8Array(10));
  conn.clientFinOffset = o.clientFin;
  conn.originalAckOffset = o.originalAck ?? 0;
  conn.originalFinOffset = o.originalFin;
  conn.clientAckOffset = o.clientAck ?? 0;
  conn.clientFinAt = o.clientFinAt;
  conn.originalFinAt = o.originalFinAt;
  if (o.held) {
    const segment = fromService(conn.clientPort, { flags: ACK | FIN });
    conn.held = { ...o.held, segment, since: rig.now };
  }
  return conn;
}

t.test("checkDone closes a connection only when both directions finished", async (t) => {
  const done = {
    clientFin: 10,
    originalAck: 11,
    held: { kind: "fin" as const, released: true },
    originalFin: 20,
    clientAck: 21,
  };
  const cases: Array<[string, Parameters<typeof closing>[1], boolean]> = [
    ["both FINs sent and acknowledged, the original's released", done, true],
    ["the client's FIN not sent", { ...done, clientFin: undefined }, false],
    ["the client's FIN not acknowledged by the original", { ...done, originalAck: 10 }, false],
    ["the original's FIN still held", { ...done, held: { kind: "fin", released: false } }, false],
    ["the original has not closed", { ...done, held: undefined, originalFin: undefined }, false],
    ["the original's FIN not acknowledged by the client", { ...done, clientAck: 20 }, false],
    [
      "the original reset, released",
      { ...done, held: { kind: "rst", released: true }, originalFin: undefined, clientAck: 0 },
      true,
    ],
    ["the original's reset still held", { ...done, held: { kind: "rst", released: false } }, false],
    // The ACK of a FIN lost to capture: over FIN_ACK_GRACE_MS after the FIN was last seen.
    [
      "the client's FIN not acknowledged, FIN_ACK_GRACE_MS after it",
      { ...done, originalAck: 10, clientFinAt: 5000 - FIN_ACK_GRACE_MS },
      true,
    ],
    [
      "the client's FIN not acknowledged, less than FIN_ACK_GRACE_MS after it",
      { ...done, originalAck: 10, clientFinAt: 5001 - FIN_ACK_GRACE_MS },
      false,
    ],
    [
      "the original's FIN not acknowledged, FIN_ACK_GRACE_MS after it",
      { ...done, clientAck: 20, originalFinAt: 5000 - FIN_ACK_GRACE_MS },
      true,
    ],
    [
      "the original's FIN not acknowledged by a client that has not closed",
      { ...done, clientAck: 20, clientFin: undefined, originalFinAt: 0 },
      false,
    ],
  ];
  for (const [what, state, closes] of cases) {
    const rig = new Rig();
    const conn = closing(rig, state);
    rig.now = 5000;
    rig.lifecycle.checkDone(conn, rig.now);
    t.equal(conn.phase, closes ? "closed" : "open", what);
    t.equal(conn.closedAt, closes ? 5000 : undefined, `${what}: closedAt`);
  }

  // Closed already: a later check does not move closedAt (linger counts from the first close).
  const rig = new Rig();
  const conn = closing(rig, done);
  rig.lifecycle.checkDone(conn, 5000);
  rig.lifecycle.checkDone(conn, 6000);
  t.equal(conn.closedAt, 5000);
  // Half-open: nothing to finish.
  const half = rig.connection(false);
  Object.assign(half, { clientFinOffset: 0, originalAckOffset: 1, originalFinOffset: 0, clientAckOffset: 1 });
  half.held = {
    kind: "fin",
    released: true,
    since: 0,
    segment: fromService(1),
  };
  rig.lifecycle.checkDone(half, 5000);
  t.equal(half.phase, "syn", "a half-open connection is not closed by checkDone");
});

t.test("after a splice, the promoted replica's side decides when the connection is done", async (t) => {
  const cases: Array<[string, { una: number; fin: number | undefined; clientAck: number }, boolean]> = [
    [
      "the replica acknowledged the client's FIN and the client its FIN",
      { una: 11, fin: 30, clientAck: 31 },
      true,
    ],
    ["the client's FIN not acknowledged by the replica", { una: 10, fin: 30, clientAck: 31 }, false],
    ["the replica has not closed", { una: 11, fin: undefined, clientAck: 31 }, false],
    ["the replica's FIN not acknowledged by the client", { una: 11, fin: 30, clientAck: 30 }, false],
  ];
  for (const [what, c, closes] of cases) {
    const rig = new Rig();
    // The original's side says "done" in every case: after a splice it must not count.
    const conn = closing(rig, { clientFin: 10, originalAck: 11, clientAck: c.clientAck });
    const sp = conn.shadows.get("r1")!;
    conn.spliced = sp;
    sp.sndUna = c.una;
    sp.replicaFinOffset = c.fin;
    rig.lifecycle.checkDone(conn, 7000);
    t.equal(conn.phase, closes ? "closed" : "open", what);
  }
});

t.test(
  "deleteConnection removes an open connection, resets its live shadows, frees and counts it",
  async (t) => {
    const { rig, conn, s1, s2 } = opened();
    const keep = rig.connection(); // another connection: untouched
    conn.client.write(0, new Uint8Array(40));
    conn.original.write(0, new Uint8Array(25));
    s1.reply.write(0, new Uint8Array(7));
    rig.lifecycle.closeShadow(conn, s2); // already closed: no RST for it
    rig.buffers.account(conn);
    keep.client.write(0, new Uint8Array(3));
    rig.buffers.account(keep);
    t.equal(rig.buffers.total, 40 + 25 + 7 + 3);
    rig.dirty.add(conn);
    const port = conn.port!;
    rig.take();

    rig.lifecycle.deleteConnection(conn);
    const out = rig.take();
    t.equal(rig.table.get(conn.key), undefined, "gone from the table");
    t.equal(rig.table.byShadow(port), undefined, "its shadow port is free");
    t.equal(rig.table.holds(keep), true, "the other connection stays");
    t.equal(rig.table.size, 1);
    t.equal(rig.dirty.has(conn), false, "nothing more to send for it");
    t.same(
      out.segments.map((g) => [g.dst, g.flags & RST ? "rst" : "other"]),
      [[R1, "rst"]],
      "one RST, to the replica still talking",
    );
    t.equal(s1.state, "closed");
    t.equal(rig.buffers.total, 3, "its bytes are freed: only the other connection's remain");
    t.equal(rig.replicas.get("r1")!.buffered, 3);
    t.equal(rig.lifecycle.closed, 1, "counted closed");
    t.same(out.events, [{ type: "connection-closed", conn: conn.id }]);
  },
);

t.test("deleteConnection of a half-open connection: removed, but never counted closed", async (t) => {
  const rig = new Rig();
  const conn = rig.connection(false);
  rig.lifecycle.deleteConnection(conn);
  const out = rig.take();
  t.equal(rig.table.size, 0, "removed");
  t.equal(rig.lifecycle.closed, 0, "it never opened: not counted");
  t.same(out, { events: [], segments: [] }, "no event, nothing sent");

  // A connection that closed (phase "closed") counts when its linger ends and it is deleted. Its
  // shadows never finished (their replicas did not even answer the SYN): deleting it resets them,
  // which may discard what their replicas hold, so each is reported lagging first.
  const c = rig.connection();
  rig.lifecycle.markClosed(c, rig.now);
  rig.lifecycle.deleteConnection(c);
  t.equal(rig.lifecycle.closed, 1);
  t.same(
    rig.take().events.map((e) => [e.type, "replica" in e ? e.replica : undefined]),
    [
      ["lagging", "r1"],
      ["lagging", "r2"],
      ["connection-closed", undefined],
    ],
  );
});
