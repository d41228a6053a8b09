import t from "tap";
import fc from "fast-check";
import { assertProperty } from "../property.js";
import { internetChecksum, updateChecksum16, updateChecksum32 } from "../../src/wire/checksum.js";
import { formatIPv4, parseIPv4 } from "../../src/wire/ipv4.js";
import { DLT_EN10MB, DLT_LINUX_SLL2, parseLinkLayer } from "../../src/wire/link.js";
import { seqAdd, seqDiff, seqGt, seqLt } from "../../src/wire/seq.js";
import {
  ACK,
  SYN,
  buildSegment,
  encodedOptionsLength,
  parseSegment,
  parseTcpOptions,
  segmentLength,
  type TcpOption,
  type TcpSegment,
} from "../../src/wire/tcp.js";

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const u16 = fc.integer({ min: 0, max: 0xffff });
const u8 = fc.integer({ min: 0, max: 0xff });

const option: fc.Arbitrary<TcpOption> = fc.oneof(
  fc.constant<TcpOption>({ kind: "nop" }),
  u16.map((value): TcpOption => ({ kind: "mss", value })),
  fc.integer({ min: 0, max: 14 }).map((shift): TcpOption => ({ kind: "wscale", shift })),
  fc.constant<TcpOption>({ kind: "sack-permitted" }),
  fc
    .array(fc.tuple(u32, u32), { minLength: 1, maxLength: 3 })
    .map((blocks): TcpOption => ({ kind: "sack", blocks })),
  fc.tuple(u32, u32).map(([tsval, tsecr]): TcpOption => ({ kind: "timestamp", tsval, tsecr })),
  fc
    .tuple(
      fc.integer({ min: 9, max: 255 }).filter((k) => k !== 0 && k !== 1),
      fc.uint8Array({ maxLength: 6 }),
    )
    .map(([type, data]): TcpOption => ({ kind: "unknown", type, data })),
);

/** Options that fit in 40 bytes, NOP-padded to a 4-byte multiple so they round-trip exactly. */
const options = fc.array(option, { maxLength: 6 }).map((opts) => {
  const out: TcpOption[] = [];
  for (const o of opts) if (encodedOptionsLength([...out, o]) <= 40) out.push(o);
  while (encodedOptionsLength(out) % 4 !== 0) out.push({ kind: "nop" });
  return out;
});

const segment: fc.Arbitrary<TcpSegment> = fc.record({
  tos: u8,
  id: u16,
  dontFragment: fc.boolean(),
  ttl: u8,
  src: u32,
  dst: u32,
  ipOptions: fc
    .integer({ min: 0, max: 10 })
    .chain((n) => fc.uint8Array({ minLength: n * 4, maxLength: n * 4 })),
  srcPort: u16,
  dstPort: u16,
  seq: u32,
  ack: u32,
  flags: fc.integer({ min: 0, max: 0x1ff }),
  window: u16,
  urgent: u16,
  options,
  payload: fc.uint8Array({ maxLength: 1500 }),
});

/** Typed arrays (Buffer views included) as plain arrays, so deep equality means byte equality. */
function plain(v: unknown): unknown {
  if (v instanceof Uint8Array) return { bytes: Array.from(v) };
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

t.test("RFC 1071 example checksum", async (t) => {
  const bytes = Uint8Array.from([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
  t.equal(internetChecksum(bytes), ~0xddf2 & 0xffff);
  t.equal(internetChecksum(Uint8Array.from([0x01])), ~0x0100 & 0xffff, "odd length pads with zero");
});

t.test("parse(build(x)) = x", async (t) => {
  assertProperty(
    "parse(build(x)) = x",
    fc.property(segment, (s) => {
      const r = parseSegment(buildSegment(s));
      if (!r.ok) throw new Error(`rejected: ${r.reason}`);
      t.same(plain(r.segment), plain(s));
      return true;
    }),
    { numRuns: 500 },
  );
});

const REASONS = new Set([
  "truncated",
  "not-ipv4",
  "bad-ihl",
  "bad-total-length",
  "fragment",
  "not-tcp",
  "bad-ip-checksum",
  "bad-data-offset",
  "bad-tcp-options",
  "bad-tcp-checksum",
]);

t.test("random bytes never throw, and give a packet or a known reason", async (t) => {
  let rejected = 0;
  assertProperty(
    "random bytes never throw, and give a packet or a known reason",
    fc.property(fc.uint8Array({ maxLength: 200 }), fc.boolean(), (bytes, verify) => {
      const r = parseSegment(bytes, { verifyChecksums: verify });
      if (!r.ok) {
        rejected++;
        return REASONS.has(r.reason);
      }
      return true;
    }),
    { numRuns: 3000 },
  );
  t.ok(rejected > 0, "random input is rejected");
  // Random bytes with a plausible IPv4/TCP prefix reach the deeper checks too.
  assertProperty(
    "random bytes never throw, and give a packet or a known reason (2)",
    fc.property(segment, fc.nat(), u8, (s, pos, value) => {
      const b = buildSegment(s);
      b[pos % b.length] = value;
      const r = parseSegment(b, { verifyChecksums: false });
      return r.ok || REASONS.has(r.reason);
    }),
    { numRuns: 2000 },
  );
});

t.test("a flipped bit anywhere is caught by a checksum or a header check", async (t) => {
  assertProperty(
    "a flipped bit anywhere is caught by a checksum or a header check",
    fc.property(segment, fc.nat(), fc.integer({ min: 0, max: 7 }), (s, pos, bit) => {
      const b = buildSegment(s);
      const at = pos % b.length;
      b[at] = b[at]! ^ (1 << bit);
      return !parseSegment(b).ok;
    }),
    { numRuns: 1000 },
  );
  t.pass("every single-bit error rejected");
});

t.test("incremental checksum update equals a full recomputation", async (t) => {
  assertProperty(
    "incremental checksum update equals a full recomputation",
    fc.property(segment, u32, u32, (s, newDst, newAck) => {
      const b = buildSegment(s);
      const ihl = (b[0]! & 0x0f) * 4;
      // Rewrite the destination and ACK number in place as the engine's fast path would.
      const ipCs = updateChecksum32(b.readUInt16BE(10), s.dst, newDst);
      let tcpCs = updateChecksum32(b.readUInt16BE(ihl + 16), s.dst, newDst);
      tcpCs = updateChecksum32(tcpCs, s.ack, newAck);
      b.writeUInt32BE(newDst, 16);
      b.writeUInt16BE(ipCs, 10);
      b.writeUInt32BE(newAck, ihl + 8);
      b.writeUInt16BE(tcpCs, ihl + 16);
      const full = buildSegment({ ...s, dst: newDst, ack: newAck });
      return b.equals(full);
    }),
    { numRuns: 1000 },
  );
  assertProperty(
    "incremental checksum update equals a full recomputation (2)",
    fc.property(
      fc.uint8Array({ minLength: 2, maxLength: 64 }).filter((a) => a.length % 2 === 0),
      fc.nat(),
      u16,
      (bytes, i, word) => {
        const at = (i % (bytes.length / 2)) * 2;
        const before = internetChecksum(bytes);
        const old = (bytes[at]! << 8) | bytes[at + 1]!;
        const copy = Uint8Array.from(bytes);
        copy[at] = word >> 8;
        copy[at + 1] = word & 0xff;
        // 0x0000 and 0xffff are the same one's-complement value; RFC 1624 eqn. 3 may give either.
        const inc = updateChecksum16(before, old, word);
        const full = internetChecksum(copy);
        return inc === full || (inc ^ full) === 0xffff;
      },
    ),
    { numRuns: 2000 },
  );
  t.pass();
});

t.test("options", async (t) => {
  t.same(
    parseTcpOptions(Uint8Array.from([1, 1, 0, 9, 9, 9])),
    [{ kind: "nop" }, { kind: "nop" }, { kind: "eol" }],
    "EOL ends options; padding ignored",
  );
  t.equal(parseTcpOptions(Uint8Array.from([2, 4, 5])), undefined, "MSS running past the end");
  t.equal(parseTcpOptions(Uint8Array.from([2, 3, 5, 0])), undefined, "MSS with a wrong length");
  t.equal(parseTcpOptions(Uint8Array.from([30, 1])), undefined, "length below 2");
  t.equal(parseTcpOptions(Uint8Array.from([5, 6, 0, 0, 0, 0])), undefined, "SACK with a partial block");
  const unknown = parseTcpOptions(Uint8Array.from([254, 4, 0xf9, 0x89]));
  t.same(
    unknown?.map((o) => o.kind),
    ["unknown"],
    "experimental option preserved",
  );
  const base: TcpSegment = {
    tos: 0,
    id: 1,
    dontFragment: true,
    ttl: 64,
    src: parseIPv4("10.0.0.1"),
    dst: parseIPv4("10.0.0.2"),
    ipOptions: new Uint8Array(),
    srcPort: 1,
    dstPort: 2,
    seq: 0xfffffffe,
    ack: 0,
    flags: SYN,
    window: 65535,
    urgent: 0,
    options: [
      { kind: "mss", value: 1460 },
      { kind: "sack-permitted" },
      { kind: "timestamp", tsval: 1, tsecr: 0 },
      { kind: "nop" },
      { kind: "wscale", shift: 7 },
    ],
    payload: new Uint8Array(),
  };
  const b = buildSegment(base);
  t.equal(b.length, 40 + 20, "options padded to 20 bytes");
  t.equal(segmentLength(base), 1);
  t.equal(segmentLength({ ...base, flags: ACK, payload: new Uint8Array(10) }), 10);
  t.throws(
    () => buildSegment({ ...base, options: Array(41).fill({ kind: "nop" }) as TcpOption[] }),
    /exceed 40/,
  );
});

t.test("rejections", async (t) => {
  const base = buildSegment({
    tos: 0,
    id: 1,
    dontFragment: false,
    ttl: 64,
    src: 1,
    dst: 2,
    ipOptions: new Uint8Array(),
    srcPort: 1,
    dstPort: 2,
    seq: 1,
    ack: 0,
    flags: ACK,
    window: 1,
    urgent: 0,
    options: [],
    payload: Uint8Array.from([1, 2, 3]),
  });
  const mod = (f: (b: Buffer) => void) => {
    const b = Buffer.from(base);
    f(b);
    return parseSegment(b);
  };
  t.same(parseSegment(base.subarray(0, 10)), { ok: false, reason: "truncated" });
  t.same(
    mod((b) => (b[0] = 0x65)),
    { ok: false, reason: "not-ipv4" },
  );
  t.same(
    mod((b) => (b[0] = 0x44)),
    { ok: false, reason: "bad-ihl" },
  );
  t.same(
    mod((b) => b.writeUInt16BE(2000, 2)),
    { ok: false, reason: "truncated" },
  );
  t.same(
    mod((b) => b.writeUInt16BE(0x2000, 6)),
    { ok: false, reason: "fragment" },
  );
  t.same(
    mod((b) => (b[9] = 17)),
    { ok: false, reason: "not-tcp" },
  );
  t.same(
    mod((b) => (b[8] = 1)),
    { ok: false, reason: "bad-ip-checksum" },
  );
  t.same(
    mod((b) => (b[40] = 0xff - b[40]!)),
    { ok: false, reason: "bad-tcp-checksum" },
  );
  const padded = Buffer.concat([base, Buffer.alloc(6)]);
  t.ok(parseSegment(padded).ok, "Ethernet padding after the IP packet is ignored");
});

t.test("sequence arithmetic wraps", async (t) => {
  t.equal(seqAdd(0xffffffff, 2), 1);
  t.equal(seqDiff(1, 0xffffffff), 2);
  t.ok(seqLt(0xfffffff0, 5));
  t.ok(seqGt(5, 0xfffffff0));
  t.equal(formatIPv4(parseIPv4("10.100.1.254")), "10.100.1.254");
  t.throws(() => parseIPv4("1.2.3.256"));
  t.throws(() => parseIPv4("01.2.3.4"));
});

t.test("link layers", async (t) => {
  const eth = new Uint8Array(34);
  eth[12] = 0x08;
  t.same(parseLinkLayer(DLT_EN10MB, eth), {
    ok: true,
    ipOffset: 14,
    outgoing: undefined,
    ifindex: undefined,
  });
  eth[12] = 0x86;
  eth[13] = 0xdd;
  t.same(parseLinkLayer(DLT_EN10MB, eth), { ok: false, reason: "not-ipv4-link" });
  const vlan = new Uint8Array(40);
  vlan.set([0x81, 0x00, 0, 5, 0x08, 0x00], 12);
  t.equal((parseLinkLayer(DLT_EN10MB, vlan) as { ipOffset: number }).ipOffset, 18);
  const sll2 = new Uint8Array(40);
  sll2.set([0x08, 0x00, 0, 0, 0, 0, 0, 7, 0, 1, 4], 0);
  t.same(parseLinkLayer(DLT_LINUX_SLL2, sll2), { ok: true, ipOffset: 20, outgoing: true, ifindex: 7 });
  t.same(parseLinkLayer(DLT_LINUX_SLL2, sll2.subarray(0, 10)), { ok: false, reason: "truncated-link" });
  t.same(parseLinkLayer(999, sll2), { ok: false, reason: "unsupported-link-type" });
});
