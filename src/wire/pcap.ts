// The classic pcap file format (libpcap "savefile"), read incrementally: feed it chunks as they
// arrive (a pipe from a capture process, or a file) and it yields whole records. Pure: no I/O.

export const PCAP_MAGIC_US = 0xa1b2c3d4;
export const PCAP_MAGIC_NS = 0xa1b23c4d;

export interface PcapRecord {
  /** Capture time in microseconds since the epoch. */
  timeUs: number;
  /** Length on the wire (the record may hold less: caplen). */
  wireLength: number;
  data: Buffer;
}

export class PcapFormatError extends Error {}

export class PcapStreamReader {
  private pending: Buffer = Buffer.alloc(0);
  private littleEndian = true;
  private nanos = false;
  linkType: number | undefined;
  private readonly maxRecord: number;

  constructor(maxRecord = 262144) {
    this.maxRecord = maxRecord;
  }

  /** Appends a chunk and returns the records it completed. Throws PcapFormatError on garbage. */
  push(chunk: Buffer): PcapRecord[] {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const out: PcapRecord[] = [];
    let at = 0;
    const buf = this.pending;
    if (this.linkType === undefined) {
      if (buf.length < 24) return out;
      const le = buf.readUInt32LE(0);
      const be = buf.readUInt32BE(0);
      if (le === PCAP_MAGIC_US || le === PCAP_MAGIC_NS) this.littleEndian = true;
      else if (be === PCAP_MAGIC_US || be === PCAP_MAGIC_NS) this.littleEndian = false;
      else throw new PcapFormatError(`not a pcap stream (magic 0x${le.toString(16)})`);
      this.nanos = (this.littleEndian ? le : be) === PCAP_MAGIC_NS;
      this.linkType = (this.littleEndian ? buf.readUInt32LE(20) : buf.readUInt32BE(20)) & 0x0fffffff;
      at = 24;
    }
    const u32 = (o: number) => (this.littleEndian ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
    while (buf.length - at >= 16) {
      const caplen = u32(at + 8);
      if (caplen > this.maxRecord)
        throw new PcapFormatError(`record of ${caplen} bytes exceeds ${this.maxRecord}`);
      if (buf.length - at - 16 < caplen) break;
      const sec = u32(at);
      const frac = u32(at + 4);
      out.push({
        timeUs: sec * 1e6 + (this.nanos ? Math.floor(frac / 1000) : frac),
        wireLength: u32(at + 12),
        data: buf.subarray(at + 16, at + 16 + caplen),
      });
      at += 16 + caplen;
    }
    this.pending = at === buf.length ? Buffer.alloc(0) : Buffer.from(buf.subarray(at));
    return out;
  }
}

/** Writes a pcap header and records (for the pcap tracer and for tests). */
export function pcapHeader(linkType: number, snaplen = 262144): Buffer {
  const b = Buffer.alloc(24);
  b.writeUInt32LE(PCAP_MAGIC_US, 0);
  b.writeUInt16LE(2, 4);
  b.writeUInt16LE(4, 6);
  b.writeUInt32LE(snaplen, 16);
  b.writeUInt32LE(linkType, 20);
  return b;
}

export function pcapRecord(timeUs: number, data: Uint8Array): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32LE(Math.floor(timeUs / 1e6), 0);
  h.writeUInt32LE(Math.floor(timeUs % 1e6), 4);
  h.writeUInt32LE(data.length, 8);
  h.writeUInt32LE(data.length, 12);
  return Buffer.concat([h, data]);
}
