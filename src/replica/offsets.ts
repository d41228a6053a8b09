// Stream offsets and sequence numbers. Everything the engine keeps about a byte stream is an
// offset (bytes since the SYN, which never wraps); sequence numbers exist only at the edges, each
// party's with its own ISN.
import { seqDiff } from "../wire/seq.js";
import type { TcpOption } from "../wire/tcp.js";

const TWO32 = 4294967296;

/** Stream offset of `seq` for a stream whose first data byte is isn+1, nearest to `ref`. */
export function toOffset(seq: number, isn: number, ref: number): number {
  const refSeq = (isn + 1 + (ref % TWO32)) % TWO32;
  return ref + seqDiff(seq, refSeq);
}

export function toSeq(offset: number, isn: number): number {
  return ((isn + 1 + (offset % TWO32)) % TWO32) >>> 0;
}

/** Options copied out of a captured segment (its buffers are reused by the capture). */
export function copyOptions(options: readonly TcpOption[]): TcpOption[] {
  return options.map((o) => (o.kind === "unknown" ? { ...o, data: Uint8Array.from(o.data) } : { ...o }));
}

/** Bytes as text an operator can read in a log line: printable ASCII as is, the rest as \xNN. */
export function printable(b: Uint8Array): string {
  let out = "";
  for (const c of b)
    out +=
      c >= 0x20 && c < 0x7f && c !== 0x5c ? String.fromCharCode(c) : `\\x${c.toString(16).padStart(2, "0")}`;
  return out;
}
