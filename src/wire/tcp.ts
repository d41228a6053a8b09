// IPv4 + TCP segments: parse (any bytes give a segment or a typed rejection, never an exception)
// and build (checksums computed). The parsed payload is a view into the input buffer: no copy.
import { finishChecksum, internetChecksum, pseudoHeaderSum, sumWords } from "./checksum.js";
import { IPPROTO_TCP } from "./ipv4.js";

export const FIN = 0x01;
export const SYN = 0x02;
export const RST = 0x04;
export const PSH = 0x08;
export const ACK = 0x10;
export const URG = 0x20;
export const ECE = 0x40;
export const CWR = 0x80;
export const NS = 0x100;

export type TcpOption =
  | { kind: "eol" }
  | { kind: "nop" }
  | { kind: "mss"; value: number }
  | { kind: "wscale"; shift: number }
  | { kind: "sack-permitted" }
  | { kind: "sack"; blocks: Array<[number, number]> }
  | { kind: "timestamp"; tsval: number; tsecr: number }
  | { kind: "unknown"; type: number; data: Uint8Array };

export interface TcpSegment {
  // IPv4 header
  tos: number;
  id: number;
  dontFragment: boolean;
  ttl: number;
  src: number;
  dst: number;
  /** Raw IPv4 options, preserved as they came. */
  ipOptions: Uint8Array;
  // TCP header
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  /** FIN..CWR plus NS (0x100). */
  flags: number;
  window: number;
  urgent: number;
  options: TcpOption[];
  payload: Uint8Array;
}

export type RejectReason =
  | "truncated"
  | "not-ipv4"
  | "bad-ihl"
  | "bad-total-length"
  | "fragment"
  | "not-tcp"
  | "bad-ip-checksum"
  | "bad-data-offset"
  | "bad-tcp-options"
  | "bad-tcp-checksum";

export type ParseResult = { ok: true; segment: TcpSegment } | { ok: false; reason: RejectReason };

export interface ParseOptions {
  /** Verify IP and TCP checksums (default true). Off for locally generated packets captured
   * before the NIC (or veth) filled in a partial checksum. */
  verifyChecksums?: boolean;
}

const u16 = (b: Uint8Array, o: number) => (b[o]! << 8) | b[o + 1]!;
const u32 = (b: Uint8Array, o: number) =>
  ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;

/** Parses TCP options; undefined when an option's length runs past the end or is invalid. */
export function parseTcpOptions(b: Uint8Array): TcpOption[] | undefined {
  const out: TcpOption[] = [];
  let i = 0;
  while (i < b.length) {
    const kind = b[i]!;
    if (kind === 0) {
      out.push({ kind: "eol" });
      break; // the rest is padding
    }
    if (kind === 1) {
      out.push({ kind: "nop" });
      i++;
      continue;
    }
    if (i + 1 >= b.length) return undefined;
    const len = b[i + 1]!;
    if (len < 2 || i + len > b.length) return undefined;
    const body = b.subarray(i + 2, i + len);
    switch (kind) {
      case 2:
        if (len !== 4) return undefined;
        out.push({ kind: "mss", value: u16(body, 0) });
        break;
      case 3:
        if (len !== 3) return undefined;
        out.push({ kind: "wscale", shift: body[0]! });
        break;
      case 4:
        if (len !== 2) return undefined;
        out.push({ kind: "sack-permitted" });
        break;
      case 5: {
        if ((len - 2) % 8 !== 0 || len === 2) return undefined;
        const blocks: Array<[number, number]> = [];
        for (let j = 0; j < body.length; j += 8) blocks.push([u32(body, j), u32(body, j + 4)]);
        out.push({ kind: "sack", blocks });
        break;
      }
      case 8:
        if (len !== 10) return undefined;
        out.push({ kind: "timestamp", tsval: u32(body, 0), tsecr: u32(body, 4) });
        break;
      default:
        out.push({ kind: "unknown", type: kind, data: body });
    }
    i += len;
  }
  return out;
}

export function parseSegment(b: Uint8Array, opts: ParseOptions = {}): ParseResult {
  const verify = opts.verifyChecksums ?? true;
  if (b.length < 20) return { ok: false, reason: "truncated" };
  if (b[0]! >> 4 !== 4) return { ok: false, reason: "not-ipv4" };
  const ihl = (b[0]! & 0x0f) * 4;
  if (ihl < 20) return { ok: false, reason: "bad-ihl" };
  if (b.length < ihl) return { ok: false, reason: "truncated" };
  const total = u16(b, 2);
  if (total < ihl) return { ok: false, reason: "bad-total-length" };
  // Link layers may pad short frames: trust the IP total length, but never past the buffer.
  if (total > b.length) return { ok: false, reason: "truncated" };
  const fragField = u16(b, 6);
  if ((fragField & 0x2000) !== 0 || (fragField & 0x1fff) !== 0) return { ok: false, reason: "fragment" };
  if (b[9] !== IPPROTO_TCP) return { ok: false, reason: "not-tcp" };
  if (verify && internetChecksum(b, 0, ihl) !== 0) return { ok: false, reason: "bad-ip-checksum" };
  const tcpLen = total - ihl;
  if (tcpLen < 20) return { ok: false, reason: "truncated" };
  const t = b.subarray(ihl, total);
  const doff = (t[12]! >> 4) * 4;
  if (doff < 20 || doff > tcpLen) return { ok: false, reason: "bad-data-offset" };
  const src = u32(b, 12);
  const dst = u32(b, 16);
  if (
    verify &&
    finishChecksum(sumWords(t, 0, tcpLen, pseudoHeaderSum(src, dst, IPPROTO_TCP, tcpLen))) !== 0
  ) {
    return { ok: false, reason: "bad-tcp-checksum" };
  }
  const options = parseTcpOptions(t.subarray(20, doff));
  if (!options) return { ok: false, reason: "bad-tcp-options" };
  return {
    ok: true,
    segment: {
      tos: b[1]!,
      id: u16(b, 4),
      dontFragment: (fragField & 0x4000) !== 0,
      ttl: b[8]!,
      src,
      dst,
      ipOptions: b.subarray(20, ihl),
      srcPort: u16(t, 0),
      dstPort: u16(t, 2),
      seq: u32(t, 4),
      ack: u32(t, 8),
      flags: ((t[12]! & 0x01) << 8) | t[13]!,
      window: u16(t, 14),
      urgent: u16(t, 18),
      options,
      payload: t.subarray(doff, tcpLen),
    },
  };
}

function optionLength(o: TcpOption): number {
  switch (o.kind) {
    case "eol":
    case "nop":
      return 1;
    case "mss":
      return 4;
    case "wscale":
      return 3;
    case "sack-permitted":
      return 2;
    case "sack":
      return 2 + 8 * o.blocks.length;
    case "timestamp":
      return 10;
    case "unknown":
      return 2 + o.data.length;
  }
}

export function encodedOptionsLength(options: readonly TcpOption[]): number {
  return options.reduce((n, o) => n + optionLength(o), 0);
}

function writeOptions(buf: Buffer, at: number, options: readonly TcpOption[]): void {
  let i = at;
  for (const o of options) {
    switch (o.kind) {
      case "eol":
        buf[i++] = 0;
        break;
      case "nop":
        buf[i++] = 1;
        break;
      case "mss":
        buf[i] = 2;
        buf[i + 1] = 4;
        buf.writeUInt16BE(o.value, i + 2);
        i += 4;
        break;
      case "wscale":
        buf[i] = 3;
        buf[i + 1] = 3;
        buf[i + 2] = o.shift;
        i += 3;
        break;
      case "sack-permitted":
        buf[i] = 4;
        buf[i + 1] = 2;
        i += 2;
        break;
      case "sack":
        buf[i] = 5;
        buf[i + 1] = 2 + 8 * o.blocks.length;
        i += 2;
        for (const [l, r] of o.blocks) {
          buf.writeUInt32BE(l >>> 0, i);
          buf.writeUInt32BE(r >>> 0, i + 4);
          i += 8;
        }
        break;
      case "timestamp":
        buf[i] = 8;
        buf[i + 1] = 10;
        buf.writeUInt32BE(o.tsval >>> 0, i + 2);
        buf.writeUInt32BE(o.tsecr >>> 0, i + 6);
        i += 10;
        break;
      case "unknown":
        buf[i] = o.type;
        buf[i + 1] = 2 + o.data.length;
        buf.set(o.data, i + 2);
        i += 2 + o.data.length;
        break;
    }
  }
}

export class BuildError extends Error {}

/** Serializes a segment to an IPv4 packet with both checksums computed. */
export function buildSegment(s: TcpSegment): Buffer {
  if (s.ipOptions.length % 4 !== 0 || s.ipOptions.length > 40)
    throw new BuildError("IPv4 options must be 0..40 bytes, a multiple of 4");
  const optLen = encodedOptionsLength(s.options);
  if (optLen > 40) throw new BuildError(`TCP options of ${optLen} bytes exceed 40`);
  const paddedOpt = (optLen + 3) & ~3;
  const ihl = 20 + s.ipOptions.length;
  const doff = 20 + paddedOpt;
  const total = ihl + doff + s.payload.length;
  if (total > 0xffff) throw new BuildError(`packet of ${total} bytes exceeds 65535`);
  const buf = Buffer.alloc(total);
  buf[0] = 0x40 | (ihl / 4);
  buf[1] = s.tos;
  buf.writeUInt16BE(total, 2);
  buf.writeUInt16BE(s.id & 0xffff, 4);
  buf.writeUInt16BE(s.dontFragment ? 0x4000 : 0, 6);
  buf[8] = s.ttl;
  buf[9] = IPPROTO_TCP;
  buf.writeUInt32BE(s.src >>> 0, 12);
  buf.writeUInt32BE(s.dst >>> 0, 16);
  buf.set(s.ipOptions, 20);
  buf.writeUInt16BE(internetChecksum(buf, 0, ihl), 10);
  const t = ihl;
  buf.writeUInt16BE(s.srcPort, t);
  buf.writeUInt16BE(s.dstPort, t + 2);
  buf.writeUInt32BE(s.seq >>> 0, t + 4);
  buf.writeUInt32BE(s.ack >>> 0, t + 8);
  buf[t + 12] = ((doff / 4) << 4) | ((s.flags >> 8) & 0x01);
  buf[t + 13] = s.flags & 0xff;
  buf.writeUInt16BE(s.window, t + 14);
  buf.writeUInt16BE(s.urgent, t + 18);
  writeOptions(buf, t + 20, s.options);
  buf.set(s.payload, t + doff);
  const tcpLen = total - ihl;
  buf.writeUInt16BE(
    finishChecksum(sumWords(buf, t, total, pseudoHeaderSum(s.src, s.dst, IPPROTO_TCP, tcpLen))),
    t + 16,
  );
  return buf;
}

// Small accessors so the engine never digs through option lists by hand.
export function findOption<K extends TcpOption["kind"]>(
  options: readonly TcpOption[],
  kind: K,
): Extract<TcpOption, { kind: K }> | undefined {
  return options.find((o) => o.kind === kind) as Extract<TcpOption, { kind: K }> | undefined;
}

export const hasFlag = (s: { flags: number }, f: number): boolean => (s.flags & f) !== 0;

/** Sequence space a segment occupies: payload plus one for SYN and one for FIN. */
export function segmentLength(s: TcpSegment): number {
  return s.payload.length + (s.flags & SYN ? 1 : 0) + (s.flags & FIN ? 1 : 0);
}

export function describeFlags(flags: number): string {
  const names: Array<[number, string]> = [
    [SYN, "S"],
    [FIN, "F"],
    [RST, "R"],
    [PSH, "P"],
    [ACK, "."],
    [URG, "U"],
    [ECE, "E"],
    [CWR, "W"],
  ];
  return names.map(([f, n]) => (flags & f ? n : "")).join("");
}
