// Streaming latency histograms with a fixed memory footprint: RTT samples of every path (client,
// original, each replica) are counted into log-linear buckets, so percentiles stay within a few
// per cent of the truth at any rate and over any run time, without keeping samples. Pure: the
// windowed variant takes the caller's clock.

/** Sub-buckets per power of two: each bucket spans 1/16 of an octave (≈ 4.4 %), so a percentile
 * read from a bucket's geometric middle is within ≈ 2.2 % of the sample it stands for. */
const SUB_BUCKETS = 16;
/** Octaves above 1 µs: up to 2^27 µs ≈ 134 s. Larger samples land in the last bucket. */
const OCTAVES = 27;
const BUCKETS = 1 + OCTAVES * SUB_BUCKETS;

export interface HistogramSummary {
  count: number;
  meanUs: number | null;
  stdDevUs: number | null;
  minUs: number | null;
  maxUs: number | null;
  p50Us: number | null;
  p90Us: number | null;
  p99Us: number | null;
}

/** Lower edge (µs) of bucket `i`; bucket 0 holds everything below 1 µs. */
function lowerEdge(i: number): number {
  if (i === 0) return 0;
  return 2 ** ((i - 1) / SUB_BUCKETS);
}

function bucketOf(us: number): number {
  if (!(us >= 1)) return 0;
  const i = 1 + Math.floor(Math.log2(us) * SUB_BUCKETS);
  return Math.min(i, BUCKETS - 1);
}

export class RttHistogram {
  private readonly counts = new Float64Array(BUCKETS);
  private n = 0;
  private mean = 0;
  /** Welford's running sum of squared deviations: stable where sum-of-squares cancels. */
  private m2 = 0;
  private min = Infinity;
  private max = -Infinity;
  private total = 0;

  /** Counts one sample (µs). Non-finite or negative samples are refused: they are bugs upstream. */
  add(us: number): void {
    if (!Number.isFinite(us) || us < 0) throw new RangeError(`RTT sample out of range: ${us}`);
    this.counts[bucketOf(us)]! += 1;
    this.n++;
    this.total += us;
    const d = us - this.mean;
    this.mean += d / this.n;
    this.m2 += d * (us - this.mean);
    if (us < this.min) this.min = us;
    if (us > this.max) this.max = us;
  }

  /** Adds another histogram's samples to this one (Chan et al.'s parallel variance formula). */
  merge(o: RttHistogram): void {
    if (o.n === 0) return;
    for (let i = 0; i < BUCKETS; i++) this.counts[i]! += o.counts[i]!;
    const n = this.n + o.n;
    const d = o.mean - this.mean;
    this.m2 += o.m2 + (d * d * this.n * o.n) / n;
    this.mean += (d * o.n) / n;
    this.n = n;
    this.total += o.total;
    this.min = Math.min(this.min, o.min);
    this.max = Math.max(this.max, o.max);
  }

  get count(): number {
    return this.n;
  }

  get sumUs(): number {
    return this.total;
  }

  /** The q-quantile (0..1), from the bucket's geometric middle, clamped to the seen range. */
  quantile(q: number): number | null {
    if (this.n === 0) return null;
    const rank = Math.max(1, Math.ceil(q * this.n));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i]!;
      if (seen >= rank) {
        const lo = lowerEdge(i);
        const hi = i === BUCKETS - 1 ? this.max : lowerEdge(i + 1);
        const mid = i === 0 ? hi / 2 : Math.sqrt(lo * hi);
        return Math.min(this.max, Math.max(this.min, mid));
      }
    }
    return this.max;
  }

  summary(): HistogramSummary {
    const empty = this.n === 0;
    return {
      count: this.n,
      meanUs: empty ? null : this.mean,
      stdDevUs: empty ? null : this.n > 1 ? Math.sqrt(this.m2 / (this.n - 1)) : 0,
      minUs: empty ? null : this.min,
      maxUs: empty ? null : this.max,
      p50Us: this.quantile(0.5),
      p90Us: this.quantile(0.9),
      p99Us: this.quantile(0.99),
    };
  }

  /**
   * Cumulative counts at the given upper bounds (µs, ascending), as Prometheus histograms want
   * them: a bucket counts toward a bound when its whole range lies at or below it, so a count
   * is never overstated.
   */
  cumulative(bounds: readonly number[]): number[] {
    const out: number[] = [];
    let i = 0;
    let seen = 0;
    for (const b of bounds) {
      while (i < BUCKETS - 1 && lowerEdge(i + 1) <= b) seen += this.counts[i++]!;
      out.push(seen);
    }
    return out;
  }
}

export interface WindowedSummary {
  /** Everything since the start. */
  total: HistogramSummary;
  /** The last `windowMs` (live views: a change shows within seconds, not diluted by hours). */
  recent: HistogramSummary;
}

/**
 * A cumulative histogram plus a recent window made of `slices` histograms of `sliceMs` each,
 * rotated by the caller's clock: memory stays fixed (slices + 1 histograms).
 */
export class WindowedHistogram {
  readonly total = new RttHistogram();
  private readonly ring: RttHistogram[];
  private readonly startedAt: number[];
  private head = 0;

  constructor(
    private readonly sliceMs = 1000,
    slices = 10,
  ) {
    if (!(sliceMs > 0) || !Number.isInteger(slices) || slices < 1)
      throw new RangeError("a window needs sliceMs > 0 and at least one slice");
    this.ring = Array.from({ length: slices }, () => new RttHistogram());
    this.startedAt = new Array<number>(slices).fill(-Infinity);
  }

  get windowMs(): number {
    return this.sliceMs * this.ring.length;
  }

  add(us: number, now: number): void {
    this.rotate(now);
    this.total.add(us);
    this.ring[this.head]!.add(us);
  }

  /** The samples of the last windowMs (slices older than that are left out). */
  recent(now: number): RttHistogram {
    this.rotate(now);
    const h = new RttHistogram();
    for (let i = 0; i < this.ring.length; i++)
      if (now - this.startedAt[i]! < this.windowMs) h.merge(this.ring[i]!);
    return h;
  }

  summary(now: number): WindowedSummary {
    return { total: this.total.summary(), recent: this.recent(now).summary() };
  }

  private rotate(now: number): void {
    if (now - this.startedAt[this.head]! < this.sliceMs) return;
    this.head = (this.head + 1) % this.ring.length;
    this.ring[this.head] = new RttHistogram();
    this.startedAt[this.head] = now;
  }
}
