// A bounded reassembly buffer for one direction of a TCP byte stream, addressed by stream offset
// (bytes since the SYN, not sequence numbers, so it never wraps). Bytes arrive in any order and
// possibly duplicated; the contiguous prefix [base, end) is readable; everything below `base` has
// been released. Out-of-order bytes are kept up to a limit; beyond it they are refused and counted.
// Stored bytes are always copies: callers may pass views into reused capture buffers.

interface Chunk {
  offset: number;
  data: Buffer;
}

export class ByteStream {
  /** Lowest offset still held. */
  private baseOffset: number;
  /** End of the contiguous prefix. */
  private endOffset: number;
  /** In-order chunks from index `head` on (released ones before it are dropped lazily). */
  private chunks: Chunk[] = [];
  private head = 0;
  /** Out-of-order chunks, sorted by offset, non-overlapping. */
  private readonly ooo: Chunk[] = [];
  private oooHeld = 0;
  /** Bytes refused because the out-of-order limit was reached. */
  oooRefused = 0;

  constructor(
    start: number,
    private readonly maxOutOfOrder: number,
  ) {
    this.baseOffset = start;
    this.endOffset = start;
  }

  get base(): number {
    return this.baseOffset;
  }
  get end(): number {
    return this.endOffset;
  }
  /** Bytes held in order (end - base). */
  get held(): number {
    return this.endOffset - this.baseOffset;
  }
  get outOfOrderHeld(): number {
    return this.oooHeld;
  }
  /** Highest offset seen, contiguous or not. */
  get highest(): number {
    const last = this.ooo[this.ooo.length - 1];
    return last ? Math.max(this.endOffset, last.offset + last.data.length) : this.endOffset;
  }

  /** Out-of-order ranges as [start, end) offsets, lowest first. */
  outOfOrderRanges(): Array<[number, number]> {
    return this.ooo.map((c) => [c.offset, c.offset + c.data.length]);
  }

  /**
   * Adds bytes at `offset`. Returns how many bytes the contiguous prefix grew by. Bytes below
   * `end` are duplicates and ignored (their equality is not this buffer's concern).
   */
  write(offset: number, data: Uint8Array): number {
    let off = offset;
    let bytes = data;
    if (off < this.endOffset) {
      const skip = this.endOffset - off;
      if (skip >= bytes.length) return 0;
      bytes = bytes.subarray(skip);
      off = this.endOffset;
    }
    if (bytes.length === 0) return 0;
    if (off > this.endOffset) {
      this.insertOutOfOrder(off, bytes);
      return 0;
    }
    const before = this.endOffset;
    this.chunks.push({ offset: off, data: Buffer.from(bytes) });
    this.endOffset = off + bytes.length;
    this.pullOutOfOrder();
    return this.endOffset - before;
  }

  private insertOutOfOrder(offset: number, data: Uint8Array): void {
    // Trim against existing out-of-order chunks so they never overlap.
    const end = offset + data.length;
    const pieces: Chunk[] = [];
    let cursor = offset;
    for (const c of this.ooo) {
      const cEnd = c.offset + c.data.length;
      if (cEnd <= cursor || c.offset >= end) continue;
      if (c.offset > cursor)
        pieces.push({ offset: cursor, data: Buffer.from(data.subarray(cursor - offset, c.offset - offset)) });
      cursor = Math.max(cursor, cEnd);
    }
    if (cursor < end)
      pieces.push({ offset: cursor, data: Buffer.from(data.subarray(cursor - offset, end - offset)) });
    for (const p of pieces) {
      if (this.oooHeld + p.data.length > this.maxOutOfOrder) {
        this.oooRefused += p.data.length;
        continue;
      }
      this.oooHeld += p.data.length;
      const at = this.ooo.findIndex((c) => c.offset > p.offset);
      if (at < 0) this.ooo.push(p);
      else this.ooo.splice(at, 0, p);
    }
  }

  private pullOutOfOrder(): void {
    while (this.ooo.length > 0 && this.ooo[0]!.offset <= this.endOffset) {
      const c = this.ooo.shift()!;
      this.oooHeld -= c.data.length;
      const cEnd = c.offset + c.data.length;
      if (cEnd <= this.endOffset) continue;
      const tail = c.data.subarray(this.endOffset - c.offset);
      this.chunks.push({ offset: this.endOffset, data: Buffer.from(tail) });
      this.endOffset = cEnd;
    }
  }

  /** Index of the chunk holding `offset` (binary search: streams hold thousands of chunks). */
  private chunkAt(offset: number): number {
    let lo = this.head;
    let hi = this.chunks.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.chunks[mid]!.offset <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /**
   * [from, to) of the contiguous prefix. Within one chunk it is a view (chunks are never
   * written again, so a view stays valid); across chunks, a copy.
   */
  read(from: number, to: number): Buffer {
    if (from < this.baseOffset || to > this.endOffset || from > to) {
      throw new RangeError(`read [${from}, ${to}) outside held [${this.baseOffset}, ${this.endOffset})`);
    }
    if (from === to) return Buffer.alloc(0);
    let i = this.chunkAt(from);
    const first = this.chunks[i]!;
    if (to <= first.offset + first.data.length) {
      return first.data.subarray(from - first.offset, to - first.offset);
    }
    const out = Buffer.allocUnsafe(to - from);
    let written = 0;
    for (; i < this.chunks.length && written < out.length; i++) {
      const c = this.chunks[i]!;
      const s = Math.max(from, c.offset);
      const e = Math.min(to, c.offset + c.data.length);
      if (e > s) {
        c.data.copy(out, written, s - c.offset, e - c.offset);
        written += e - s;
      }
    }
    return out;
  }

  /** Forgets everything below `offset` (clamped to the contiguous end). */
  release(offset: number): void {
    const upTo = Math.min(offset, this.endOffset);
    if (upTo <= this.baseOffset) return;
    while (this.head < this.chunks.length) {
      const c = this.chunks[this.head]!;
      const cEnd = c.offset + c.data.length;
      if (cEnd <= upTo) {
        this.head++;
        continue;
      }
      if (c.offset < upTo) this.chunks[this.head] = { offset: upTo, data: c.data.subarray(upTo - c.offset) };
      break;
    }
    // Drop released chunks now and then, so the array does not grow without bound.
    if (this.head > 64 && this.head * 2 > this.chunks.length) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
    this.baseOffset = upTo;
  }

  /** Drops everything held, out-of-order bytes included (the stream is over). */
  clear(): void {
    this.release(this.endOffset);
    this.ooo.length = 0;
    this.oooHeld = 0;
  }

  /** Total bytes held, in order and out of order. */
  get footprint(): number {
    return this.held + this.oooHeld;
  }
}
