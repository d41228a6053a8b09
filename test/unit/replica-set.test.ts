// The replica set: each id and address once, draining, promotion, and the per-replica statistics.
import t from "tap";
import { InvariantError } from "../../src/replica/assert.js";
import { ReplicaSet } from "../../src/replica/replica-set.js";
import { R1, R2, R3 } from "../engine-parts.js";

/** The counters a replica's record and its stats() entry share, as a fresh record has them. */
const NO_COUNTS = {
  shadowsOpened: 0,
  bytesSent: 0,
  bytesAcked: 0,
  segmentsSent: 0,
  retransmits: 0,
  replyBytes: 0,
  comparedBytes: 0,
  toleratedBytes: 0,
  diverged: 0,
  lagging: 0,
  unverified: 0,
};

t.test("add() returns a fresh record", async (t) => {
  const set = new ReplicaSet();
  const r = set.add({ id: "r1", address: R1 });
  t.equal(set.get("r1"), r);
  t.ok(set.has("r1"));
  t.equal(set.size, 1);
  t.same(set.ids(), ["r1"]);
  t.same(r, {
    info: { id: "r1", address: R1 },
    ...NO_COUNTS,
    buffered: 0,
    rttSamples: 0,
    lastSrttMs: undefined,
    promoted: false,
  });
  t.ok(set.takesNewConnections(r));
  t.equal(set.promotableCount(), 1);
});

t.test("a duplicate id is refused with a clear error and nothing changes", async (t) => {
  const set = new ReplicaSet();
  const r1 = set.add({ id: "r1", address: R1 });
  r1.bytesSent = 42;
  t.throws(() => set.add({ id: "r1", address: R2 }), { message: "replica r1 exists already" });
  t.equal(set.size, 1);
  t.equal(set.get("r1"), r1, "the record is the same one");
  t.equal(r1.info.address, R1, "its address is unchanged");
  t.equal(r1.bytesSent, 42, "and its counters");
  // The refused address was not claimed either.
  t.doesNotThrow(() => set.add({ id: "r2", address: R2 }));
  t.same(set.ids(), ["r1", "r2"]);
});

t.test("a duplicate address is refused with a clear error and nothing changes", async (t) => {
  const set = new ReplicaSet();
  set.add({ id: "r1", address: R1 });
  t.throws(() => set.add({ id: "r2", address: R1 }), { message: "replica address 10.0.1.11 is r1's" });
  t.notOk(set.has("r2"));
  t.equal(set.size, 1);
  t.same(set.ids(), ["r1"]);
  t.equal(set.promotableCount(), 1);
  // The refused id is free for a replica with its own address.
  t.doesNotThrow(() => set.add({ id: "r2", address: R2 }));
  t.equal(set.get("r2")?.info.address, R2);
});

t.test("a removed replica's id and address can be added again", async (t) => {
  const set = new ReplicaSet();
  set.add({ id: "r1", address: R1 });
  set.drain("r1");
  set.remove("r1");
  t.notOk(set.has("r1"));
  t.equal(set.size, 0);
  const again = set.add({ id: "r1", address: R1 });
  t.ok(set.takesNewConnections(again), "the drain went with the removal");
  t.equal(again.bytesSent, 0);
});

t.test("a drained replica takes no new connections but stays promotable", async (t) => {
  const set = new ReplicaSet();
  const r1 = set.add({ id: "r1", address: R1 });
  const r2 = set.add({ id: "r2", address: R2 });
  set.drain("r1");
  t.notOk(set.takesNewConnections(r1));
  t.ok(set.takesNewConnections(r2), "only the drained one");
  t.equal(set.promotableCount(), 2, "its open connections can still move onto it");
  t.same(set.ids(), ["r1", "r2"], "still a member until removed");
  set.promote("r1");
  t.ok(r1.promoted);
  t.equal(set.promotableCount(), 1);
});

t.test("a promoted replica takes no new shadows and is promotable no more", async (t) => {
  const set = new ReplicaSet();
  const r1 = set.add({ id: "r1", address: R1 });
  const r2 = set.add({ id: "r2", address: R2 });
  set.add({ id: "r3", address: R3 });
  t.equal(set.promotableCount(), 3);
  set.promote("r2");
  t.ok(r2.promoted);
  t.notOk(set.takesNewConnections(r2), "it is the original now");
  t.ok(set.takesNewConnections(r1));
  t.equal(set.promotableCount(), 2);
  t.throws(() => set.promote("r2"), InvariantError, "promoted twice");
  t.throws(() => set.promote("nope"), { name: "InvariantError", message: /no replica nope/ });
  t.equal(set.promotableCount(), 2, "a refused promotion changes nothing");
  set.promote("r1");
  set.promote("r3");
  t.equal(set.promotableCount(), 0, "the service runs unreplicated");
});

t.test("stats(): one entry per replica, in the order added", async (t) => {
  const set = new ReplicaSet();
  const r1 = set.add({ id: "r1", address: R1 });
  set.add({ id: "r2", address: R2 });
  const counts = {
    shadowsOpened: 3,
    bytesSent: 100,
    bytesAcked: 90,
    segmentsSent: 7,
    retransmits: 1,
    replyBytes: 50,
    comparedBytes: 40,
    toleratedBytes: 2,
    diverged: 1,
    lagging: 2,
    unverified: 3,
  };
  Object.assign(r1, {
    ...counts,
    buffered: 60,
    rttSamples: 5,
    lastSrttMs: 1.2346,
  });
  const active: Record<string, number> = { r1: 4, r2: 0 };
  const asked: string[] = [];
  const stats = set.stats((id) => {
    asked.push(id);
    return active[id]!;
  });
  t.same(asked, ["r1", "r2"], "active shadows are asked per replica");
  t.strictSame(stats, [
    {
      id: "r1",
      address: "10.0.1.11",
      shadowsActive: 4,
      ...counts,
      bufferedBytes: 60,
      rttUs: { samples: 5, srtt: 1235 },
    },
    {
      id: "r2",
      address: "10.0.1.12",
      shadowsActive: 0,
      ...NO_COUNTS,
      bufferedBytes: 0,
      rttUs: { samples: 0, srtt: null },
    },
  ]);
  t.same(
    new ReplicaSet().stats(() => 1),
    [],
    "no replicas, no entries",
  );
});
