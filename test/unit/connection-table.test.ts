// The connection table on its own: connections by client address, by NAT port and by shadow port;
// the kernel path's NATed SYNs that arrive before (or after) the client's SYN; the original's
// segments held until the NATed SYN naming their port is seen, bounded in count and in time.
import t from "tap";
import {
  ConnectionTable,
  MAX_PENDING_NAT,
  MAX_UNBOUND,
  connectionKey,
} from "../../src/replica/connection-table.js";
import type { ReplicatedConnection } from "../../src/replica/connection.js";
import { InvariantError } from "../../src/replica/assert.js";
import { toSeq } from "../../src/replica/offsets.js";
import { SYN, type TcpSegment } from "../../src/wire/tcp.js";
import { CLIENT, ORIGINAL, PORT, SNAT, clientSyn, connectionFrom, seg, wants } from "../engine-parts.js";

const SYN_TIMEOUT = 10_000;

/** A half-open connection from the client's SYN (client port `cport`, ISN `isn`). */
function conn(cport: number, isn: number): ReplicatedConnection {
  return connectionFrom(clientSyn(cport, isn));
}

/** The kernel path's SYN toward the original for the client ISN `isn`, from NAT port `natPort`. */
function natSyn(isn: number, natPort: number): TcpSegment {
  return seg({ src: SNAT, dst: ORIGINAL, srcPort: natPort, dstPort: PORT, seq: isn, flags: SYN });
}

/** A segment of the original toward the SNAT address's NAT port `natPort`. */
function fromOriginal(natPort: number, seq: number, payload = new Uint8Array()): TcpSegment {
  return seg({ src: ORIGINAL, dst: SNAT, srcPort: PORT, dstPort: natPort, seq, payload });
}

function table(range: [number, number] = [20000, 20009]): ConnectionTable {
  return new ConnectionTable(range, SYN_TIMEOUT);
}

/** A table holding connection `a` (client port 40000, ISN 1000) bound to NAT port 31000 and, with
 * `withB`, connection `b` (client port 40001, ISN 2000), not bound. */
function bound(withB = false): { tb: ConnectionTable; a: ReplicatedConnection; b: ReplicatedConnection } {
  const tb = table();
  const a = conn(40000, 1000);
  const b = conn(40001, 2000);
  tb.add(a);
  if (withB) tb.add(b);
  tb.natSyn(natSyn(1000, 31000));
  return { tb, a, b };
}

t.test("add() binds the NAT port of a NATed SYN seen before the client's SYN", async (t) => {
  const tb = table();
  // The backend channel is ahead: the NATed SYN and the original's SYN-ACK come first.
  t.equal(tb.natSyn(natSyn(1000, 31000)), undefined, "no half-open connection to bind yet");
  t.equal(tb.byNat(31000), undefined, "a pending binding maps no port");
  tb.holdUnbound(fromOriginal(31000, 5000), 10);
  t.equal(tb.unboundHeld, 1);

  const other = conn(40001, 2222);
  t.same(tb.add(other), [], "a connection with another ISN takes nothing");
  t.equal(other.natPort, undefined);

  const c = conn(40000, 1000);
  const replay = tb.add(c);
  t.equal(c.natPort, 31000, "bound to the pending NAT port");
  t.equal(tb.byNat(31000), c);
  t.equal(replay.length, 1, "the held segment is handed back for replay");
  t.equal(replay[0]!.seg.seq, 5000);
  t.equal(replay[0]!.at, 10, "with the time it was captured");
  t.equal(tb.unboundHeld, 0, "no longer held");
  t.equal(tb.get(c.key), c);
  t.ok(tb.holds(c));
  t.equal(tb.size, 2);

  // The pending binding was consumed: another connection with the same ISN does not get it.
  tb.delete(c);
  const again = conn(40000, 1000);
  t.same(tb.add(again), []);
  t.equal(again.natPort, undefined, "the pending entry went with its first use");
  tb.checkInvariants(10);
});

t.test("add() refuses a key that is in the table already", async (t) => {
  const tb = table();
  tb.add(conn(40000, 1));
  t.throws(() => tb.add(conn(40000, 2)), InvariantError);
  t.equal(tb.size, 1);
});

t.test("natSyn() binds a half-open connection; a later NATed SYN rebinds it", async (t) => {
  const tb = table();
  const c = conn(40000, 1000);
  tb.add(c);
  tb.holdUnbound(fromOriginal(31000, 7), 5);
  tb.holdUnbound(fromOriginal(31000, 8), 6);
  const first = tb.natSyn(natSyn(1000, 31000));
  t.equal(first?.conn, c);
  t.same(
    first?.replay.map((w) => [w.seg.seq, w.at]),
    [
      [7, 5],
      [8, 6],
    ],
    "held segments come back in their order, with their times",
  );
  t.equal(tb.byNat(31000), c);
  t.equal(tb.unboundHeld, 0);

  // After a failover the client's retransmitted SYN reaches the new original from another port:
  // the latest binding wins and the old port names nothing any more.
  const second = tb.natSyn(natSyn(1000, 31001));
  t.equal(second?.conn, c);
  t.same(second?.replay, []);
  t.equal(c.natPort, 31001);
  t.equal(tb.byNat(31001), c);
  t.equal(tb.byNat(31000), undefined, "the old port no longer maps to it");
  tb.checkInvariants(10);
});

t.test("natSyn() does not rebind a connection the original answered or that is open", async (t) => {
  const { tb, a: answered } = bound();
  answered.originalIsn = 5000; // its SYN-ACK was seen: its NAT port is settled
  t.equal(tb.natSyn(natSyn(1000, 31001)), undefined, "not bound: remembered as pending instead");
  t.equal(answered.natPort, 31000);
  t.equal(tb.byNat(31000), answered);
  t.equal(tb.byNat(31001), undefined);

  const open = conn(40001, 2000);
  tb.add(open);
  open.phase = "open";
  t.equal(tb.natSyn(natSyn(2000, 31002)), undefined);
  t.equal(open.natPort, undefined);
  tb.checkInvariants(10);
});

t.test("a NAT port bound to another connection is taken from the one that had it", async (t) => {
  const { tb, a, b } = bound(true);
  // The kernel reused the port for b's connection (a's NAT entry is gone).
  tb.natSyn(natSyn(2000, 31000));
  t.equal(tb.byNat(31000), b);
  t.equal(b.natPort, 31000);
  t.equal(a.natPort, undefined, "a no longer claims the port");
  tb.checkInvariants(10);
  // Deleting a must not take b's binding with it.
  tb.delete(a);
  t.equal(tb.byNat(31000), b);
  tb.checkInvariants(10);
});

t.test("pending NAT bindings are bounded: beyond MAX_PENDING_NAT the oldest goes", async (t) => {
  const tb = table();
  // Probes from the appliance's own address land here too; they must not grow it without bound.
  let bound = 0;
  for (let i = 0; i <= MAX_PENDING_NAT; i++) if (tb.natSyn(natSyn(100 + i, 30000 + i))) bound++;
  t.equal(bound, 0, "no connection to bind: all pending");
  tb.checkInvariants(10);

  const oldest = conn(40000, 100);
  tb.add(oldest);
  t.equal(oldest.natPort, undefined, "the oldest pending binding was dropped");
  const second = conn(40001, 101);
  tb.add(second);
  t.equal(second.natPort, 30001, "the second oldest is still there");
  const newest = conn(40002, 100 + MAX_PENDING_NAT);
  tb.add(newest);
  t.equal(newest.natPort, 30000 + MAX_PENDING_NAT, "the newest is there");
});

t.test("forgetNat() drops NAT bindings seen for the old original", async (t) => {
  const tb = table();
  tb.natSyn(natSyn(1000, 31000));
  // A tracked connection bound to NAT port 31001 toward the old original.
  const old = conn(40001, 2000);
  tb.add(old);
  tb.natSyn(natSyn(2000, 31001));
  t.equal(tb.byNat(31001), old);
  tb.forgetNat();
  const c = conn(40000, 1000);
  tb.add(c);
  t.equal(c.natPort, undefined, "a pending NATed SYN of the old original binds nothing");
  t.equal(tb.byNat(31001), undefined, "the old binding is gone");
  t.equal(old.natPort, undefined);
  // A new connection to the new original may get the same port (ports are per backend).
  const fresh = conn(40002, 3000);
  tb.add(fresh);
  tb.natSyn(natSyn(3000, 31001));
  t.equal(tb.byNat(31001), fresh, "the port names the new connection");
  tb.checkInvariants(10);
});

t.test("held segments are bounded: beyond MAX_UNBOUND they are counted, not kept", async (t) => {
  const tb = table();
  for (let i = 0; i < MAX_UNBOUND; i++) tb.holdUnbound(fromOriginal(30000 + (i % 64), i), 1);
  t.equal(tb.unboundHeld, MAX_UNBOUND);
  t.equal(tb.unmatched, 0, "nothing counted while below the bound");
  tb.holdUnbound(fromOriginal(30000, 999_999), 1);
  t.equal(tb.unboundHeld, MAX_UNBOUND, "the one beyond is not held");
  t.equal(tb.unmatched, 1);
  t.same(tb.unmatchedBy, { "original-unbound-full": 1 });
  tb.checkInvariants(10);
  // Binding a port frees room again.
  const c = conn(40000, 1000);
  tb.add(c);
  const bound = tb.natSyn(natSyn(1000, 30000));
  t.equal(bound?.replay.length, MAX_UNBOUND / 64);
  t.notOk(
    bound?.replay.some((w) => w.seg.seq === 999_999),
    "the refused segment is not replayed",
  );
  t.equal(tb.unboundHeld, MAX_UNBOUND - MAX_UNBOUND / 64);
  tb.holdUnbound(fromOriginal(30001, 5), 2);
  t.equal(tb.unmatched, 1, "held again once there is room");
  tb.checkInvariants(10);
});

t.test("held segments expire synTimeoutMs after the port's first one", async (t) => {
  const tb = table();
  const w0 = wants();
  tb.expireUnbound(0, w0.want);
  t.same(w0.times, [], "nothing held: no timer wanted");

  tb.holdUnbound(fromOriginal(31000, 1), 1000);
  tb.holdUnbound(fromOriginal(31000, 2), 1500);
  tb.holdUnbound(fromOriginal(31001, 3), 4000);

  const w1 = wants();
  tb.expireUnbound(1000 + SYN_TIMEOUT - 1, w1.want);
  t.equal(tb.unboundHeld, 3, "nothing expires a millisecond early");
  t.equal(tb.unmatched, 0);
  t.equal(Math.min(...w1.times), 1000 + SYN_TIMEOUT, "the next expiry is reported");
  t.same([...w1.times].sort(), [1000 + SYN_TIMEOUT, 4000 + SYN_TIMEOUT]);

  const w2 = wants();
  tb.expireUnbound(1000 + SYN_TIMEOUT, w2.want);
  t.equal(tb.unboundHeld, 1, "the first port's segments are gone");
  t.same(tb.unmatchedBy, { "original-unbound-expired": 2 }, "each expired segment is counted");
  t.same(w2.times, [4000 + SYN_TIMEOUT], "then the other port's expiry");
  tb.checkInvariants(10);

  // Expired segments are not replayed; the other port's still are.
  const a = conn(40000, 1000);
  const b = conn(40001, 2000);
  tb.add(a);
  tb.add(b);
  t.same(tb.natSyn(natSyn(1000, 31000))?.replay, []);
  t.same(
    tb.natSyn(natSyn(2000, 31001))?.replay.map((x) => [x.seg.seq, x.at]),
    [[3, 4000]],
  );
  const w3 = wants();
  tb.expireUnbound(1_000_000, w3.want);
  t.same(w3.times, [], "nothing left to expire");
  t.equal(tb.unmatched, 2);
});

t.test("held segments are copies: the capture may reuse its buffers", async (t) => {
  const tb = table();
  const payload = Uint8Array.from([1, 2, 3]);
  const optData = Uint8Array.from([9, 9]);
  const s = fromOriginal(31000, toSeq(0, 5000), payload);
  s.options = [
    { kind: "unknown", type: 99, data: optData },
    { kind: "mss", value: 1460 },
  ];
  tb.holdUnbound(s, 7);
  // The capture writes the next packet into the same memory.
  payload.fill(0xee);
  optData.fill(0);
  s.options.push({ kind: "nop" });
  const c = conn(40000, 1000);
  tb.add(c);
  const replay = tb.natSyn(natSyn(1000, 31000))?.replay ?? [];
  t.equal(replay.length, 1);
  const held = replay[0]!.seg;
  t.same([...held.payload], [1, 2, 3], "payload as captured");
  t.same(held.options, [
    { kind: "unknown", type: 99, data: Uint8Array.from([9, 9]) },
    { kind: "mss", value: 1460 },
  ]);
  t.equal(held.seq, toSeq(0, 5000));
  t.equal(held.dstPort, 31000);
});

t.test("shadow ports cycle through the range, skip ports in use, run out", async (t) => {
  const tb = table([20000, 20003]);
  const cs = [0, 1, 2, 3, 4, 5, 6].map((i) => conn(40000 + i, 1000 + i));
  for (const c of cs) tb.add(c);
  t.equal(tb.allocateShadowPort(cs[0]!), 20000);
  t.equal(tb.allocateShadowPort(cs[1]!), 20001);
  tb.delete(cs[0]!);
  t.equal(tb.byShadow(20000), undefined, "freed by delete");
  // The next allocation goes on from where the last stopped, not back to the freed port.
  t.equal(tb.allocateShadowPort(cs[2]!), 20002);
  t.equal(tb.allocateShadowPort(cs[3]!), 20003);
  t.equal(tb.allocateShadowPort(cs[4]!), 20000, "wrapped around to the freed port");
  t.equal(cs[4]!.port, 20000);
  t.equal(tb.byShadow(20000), cs[4]);
  t.equal(tb.allocateShadowPort(cs[5]!), undefined, "every port taken");
  t.equal(cs[5]!.port, undefined);
  tb.delete(cs[3]!); // frees 20003
  t.equal(tb.allocateShadowPort(cs[6]!), 20003, "skips 20001 and 20002, both in use");
  t.equal(tb.byShadow(20001), cs[1]);
  t.equal(tb.byShadow(20002), cs[2]);
  tb.checkInvariants(10);
});

t.test("delete() removes the connection from every index", async (t) => {
  const { tb, a: c } = bound();
  const port = tb.allocateShadowPort(c);
  t.equal(port, 20000);
  t.ok(tb.holds(c));
  tb.delete(c);
  t.equal(tb.get(connectionKey(CLIENT, 40000)), undefined);
  t.equal(tb.byNat(31000), undefined);
  t.equal(tb.byShadow(20000), undefined);
  t.equal(tb.size, 0);
  t.notOk(tb.holds(c));
  t.same([...tb.values()], []);
  tb.checkInvariants(0);
});

t.test("holds() tells a replaced entry from the current one", async (t) => {
  const tb = table();
  const old = conn(40000, 1000);
  tb.add(old);
  tb.delete(old);
  const fresh = conn(40000, 3000); // the client reused its port
  tb.add(fresh);
  t.notOk(tb.holds(old));
  t.ok(tb.holds(fresh));
});

t.test("unmatch() counts in all and by reason", async (t) => {
  const tb = table();
  tb.unmatch("foreign-flow");
  tb.unmatch("foreign-flow");
  tb.unmatch("replica-unknown-shadow", 3);
  t.equal(tb.unmatched, 5);
  t.same(tb.unmatchedBy, { "foreign-flow": 2, "replica-unknown-shadow": 3 });
});

t.test("checkInvariants() passes on consistent state and names what broke", async (t) => {
  const { tb, a, b } = bound(true);
  tb.natSyn(natSyn(7777, 31005)); // pending
  tb.allocateShadowPort(a);
  tb.allocateShadowPort(b);
  tb.holdUnbound(fromOriginal(31009, 1), 0);
  t.doesNotThrow(() => tb.checkInvariants(2));
  // The same state under a lower connection limit is a violation: the check really checks.
  t.throws(() => tb.checkInvariants(1), {
    name: "InvariantError",
    message: /more connections than the limit/,
  });
  // An index that names a connection which no longer claims the port is stale.
  a.natPort = 31999;
  t.throws(() => tb.checkInvariants(2), { message: /NAT port 31000 names a stale entry/ });
  a.natPort = 31000;
  b.port = 29999;
  t.throws(() => tb.checkInvariants(2), { message: /shadow port 20001 names a stale entry/ });
});
