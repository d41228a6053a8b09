// Known, harmless differences between the original's and a replica's reply streams.
//
// HTTP's Date header (RFC 9110 section 6.6.1) carries the second the response was generated, in
// the fixed-width IMF-fixdate form ("Thu, 03 Dec 2026 06:12:16 GMT", 29 bytes). A replica that
// answers the same request a millisecond after the original sometimes lands in the next second:
// same length, a few different bytes. Marking such a connection diverged would make every
// long-lived Apache keep-alive connection unspliceable sooner or later, although the replica's
// state is the same. Only bytes inside the value of a line that begins with "Date: " qualify, and
// only printable ones in both streams, so a difference in length, line structure or anything
// else is still a divergence.

import type { ReplyTolerance } from "./reply-verifier.js";

const NAME = Buffer.from("date: ");
/** IMF-fixdate is always this long. */
const VALUE_LENGTH = 29;
/** Bytes before a difference that decide whether it is inside a Date value. */
export const HTTP_DATE_CONTEXT = NAME.length + VALUE_LENGTH;

function printable(b: number): boolean {
  return b >= 0x20 && b < 0x7f;
}

/**
 * Whether a difference at some offset (original byte `theirs`, replica byte `mine`) lies inside
 * an HTTP Date value. `before` holds the original's bytes right before that offset (up to
 * HTTP_DATE_CONTEXT of them, fewer when the stream's start or released bytes cut it short); the
 * line must begin inside it, after a newline.
 */
export function httpDateDifference(before: Buffer, theirs: number, mine: number): boolean {
  if (!printable(theirs) || !printable(mine)) return false;
  const nl = before.lastIndexOf(0x0a);
  if (nl < 0) return false;
  const line = before.subarray(nl + 1);
  if (line.length < NAME.length || line.length >= NAME.length + VALUE_LENGTH) return false;
  for (let i = 0; i < NAME.length; i++) {
    // ASCII lower-casing: header names are case-insensitive.
    const c = line[i]! >= 0x41 && line[i]! <= 0x5a ? line[i]! | 0x20 : line[i]!;
    if (c !== NAME[i]) return false;
  }
  for (let i = NAME.length; i < line.length; i++) if (!printable(line[i]!)) return false;
  return true;
}

/** The HTTP Date tolerance as a reply verifier policy (config `compare.httpDate`). */
export const HTTP_DATE_TOLERANCE: ReplyTolerance = {
  name: "http-date",
  context: HTTP_DATE_CONTEXT,
  excuses: httpDateDifference,
};
