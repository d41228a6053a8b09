// TCP sequence-number arithmetic modulo 2^32 (RFC 793 / RFC 1982 comparisons).

export const seqAdd = (a: number, n: number): number => (a + n) >>> 0;
/** b - a as a signed distance in (-2^31, 2^31]. */
export const seqDiff = (b: number, a: number): number => (b - a) | 0;
export const seqLt = (a: number, b: number): boolean => seqDiff(b, a) > 0;
export const seqLe = (a: number, b: number): boolean => seqDiff(b, a) >= 0;
export const seqGt = (a: number, b: number): boolean => seqDiff(a, b) > 0;
export const seqGe = (a: number, b: number): boolean => seqDiff(a, b) >= 0;
export const seqMax = (a: number, b: number): number => (seqGe(a, b) ? a : b);
export const seqMin = (a: number, b: number): number => (seqLe(a, b) ? a : b);
