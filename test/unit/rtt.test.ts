// The RTT histograms and the segment timer: percentiles within the bucket resolution of the
// exact ones, moments exact, windows that forget, Karn's rule.
import t from "tap";
import fc from "fast-check";
import { assertProperty } from "../property.js";
import { RttHistogram, WindowedHistogram } from "../../src/replica/histogram.js";
import { ECHO_TIMINGS, EchoTimer, SegmentTimer } from "../../src/replica/rtt.js";

const samples = fc.array(fc.double({ min: 0, max: 5e7, noNaN: true }), { minLength: 1, maxLength: 400 });

/** The nearest-rank quantile, what the histogram approximates. */
function exactQuantile(xs: number[], q: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.max(1, Math.ceil(q * sorted.length)) - 1]!;
}

t.test("quantiles are within 2.2 % of the exact nearest-rank ones (1 µs absolute below 1 µs)", async (t) => {
  t.doesNotThrow(
    () =>
      assertProperty(
        "quantiles are within 2.2 % of the exact nearest-rank ones (1 µs absolute below 1 µs)",
        fc.property(samples, fc.constantFrom(0.5, 0.9, 0.99), (xs, q) => {
          const h = new RttHistogram();
          for (const x of xs) h.add(x);
          const got = h.quantile(q)!;
          const want = exactQuantile(xs, q);
          return Math.abs(got - want) <= Math.max(1, want * 0.022);
        }),
        { numRuns: 500 },
      ),
    "holds for random samples",
  );
});

t.test("count, mean, standard deviation, min and max are exact", async (t) => {
  t.doesNotThrow(
    () =>
      assertProperty(
        "count, mean, standard deviation, min and max are exact",
        fc.property(samples, (xs) => {
          const h = new RttHistogram();
          for (const x of xs) h.add(x);
          const s = h.summary();
          const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
          const sd =
            xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1)) : 0;
          const close = (a: number | null, b: number) =>
            a !== null && Math.abs(a - b) <= 1e-6 * Math.max(1, Math.abs(b));
          return (
            s.count === xs.length &&
            close(s.meanUs, mean) &&
            close(s.stdDevUs, sd) &&
            s.minUs === Math.min(...xs) &&
            s.maxUs === Math.max(...xs)
          );
        }),
      ),
    "holds for random samples",
  );
});

t.test("merging equals adding every sample to one histogram", async (t) => {
  t.doesNotThrow(
    () =>
      assertProperty(
        "merging equals adding every sample to one histogram",
        fc.property(samples, samples, (a, b) => {
          const ha = new RttHistogram();
          const hb = new RttHistogram();
          const all = new RttHistogram();
          for (const x of a) {
            ha.add(x);
            all.add(x);
          }
          for (const x of b) {
            hb.add(x);
            all.add(x);
          }
          ha.merge(hb);
          const x = ha.summary();
          const y = all.summary();
          return (
            x.count === y.count &&
            x.p50Us === y.p50Us &&
            x.p99Us === y.p99Us &&
            Math.abs(x.meanUs! - y.meanUs!) <= 1e-6 * Math.max(1, y.meanUs!) &&
            Math.abs(x.stdDevUs! - y.stdDevUs!) <= 1e-6 * Math.max(1, y.stdDevUs!)
          );
        }),
      ),
    "holds for random samples",
  );
});

t.test("cumulative counts never overstate and never decrease", async (t) => {
  const bounds = [10, 50, 100, 250, 500, 1000, 5000, 25_000, 100_000, 1e6];
  t.doesNotThrow(
    () =>
      assertProperty(
        "cumulative counts never overstate and never decrease",
        fc.property(samples, (xs) => {
          const h = new RttHistogram();
          for (const x of xs) h.add(x);
          const got = h.cumulative(bounds);
          return got.every(
            (c, i) => c <= xs.filter((x) => x <= bounds[i]!).length && (i === 0 || c >= got[i - 1]!),
          );
        }),
      ),
    "holds for random samples",
  );
  const h = new RttHistogram();
  for (const x of [3, 40, 40, 900]) h.add(x);
  t.same(h.cumulative([2, 32, 64, 1024, 1e9]), [0, 1, 3, 4, 4], "bucket edges at powers of two are exact");
});

t.test("bad samples are refused and change nothing", async (t) => {
  const h = new RttHistogram();
  h.add(5);
  for (const bad of [-1, NaN, Infinity]) t.throws(() => h.add(bad), RangeError, `refuses ${bad}`);
  t.equal(h.count, 1, "still one sample");
  t.equal(new RttHistogram().summary().p50Us, null, "an empty histogram has no percentiles");
  t.throws(() => new WindowedHistogram(0, 10), RangeError, "a window needs a slice length");
});

t.test("the recent window forgets slices older than the window; the total keeps everything", async (t) => {
  const w = new WindowedHistogram(1000, 5); // 5 s window
  for (let s = 0; s < 20; s++) w.add(100 + s, s * 1000);
  const r = w.recent(19_500);
  t.equal(r.count, 5, "the last five seconds");
  t.equal(r.summary().minUs, 115, "oldest sample in the window");
  t.equal(w.total.count, 20);
  t.equal(w.recent(100_000).count, 0, "long idle: nothing recent");
});

t.test("segment timer: one segment at a time, Karn's rule", async (t) => {
  const timer = new SegmentTimer();
  timer.sent(0, 100, 1000);
  timer.sent(100, 200, 1010); // not timed: one at a time
  t.equal(timer.acked(50, 1100), undefined, "a partial acknowledgement completes nothing");
  t.equal(timer.acked(100, 1200), 200, "the timed segment's acknowledgement");
  t.equal(timer.acked(200, 1300), undefined, "the untimed one gives no sample");
  timer.sent(200, 300, 2000);
  timer.sent(200, 300, 2500); // sent again
  t.equal(timer.acked(300, 2600), undefined, "retransmitted: no sample");
  timer.sent(300, 400, 3000);
  t.equal(timer.acked(400, 3100), 100, "new data is timed again");
  timer.sent(400, 500, 3200);
  timer.sent(350, 380, 3201); // filling an older hole may release the acknowledgement
  t.equal(timer.acked(500, 3300), undefined, "any retransmission ends the timing");
  timer.sent(400, 400, 4000);
  t.equal(timer.acked(400, 4100), undefined, "an empty segment is not timed");
});

t.test("segment timer: an acknowledgement handled before its data (another channel)", async (t) => {
  const timer = new SegmentTimer();
  t.equal(timer.acked(100, 1030), undefined, "acknowledges bytes not seen yet: kept");
  t.equal(timer.acked(200, 1090), undefined, "a later one is not the answer to the first bytes");
  t.equal(timer.sent(0, 100, 1000), 30, "the data arrives: timed by capture times");
  t.equal(timer.sent(100, 200, 1060), undefined, "only the first early acknowledgement is kept");
  timer.sent(200, 300, 2000);
  t.equal(timer.acked(300, 2025), 25, "in order again: timed as usual");
  t.equal(timer.acked(500, 1500), undefined);
  t.equal(
    timer.sent(300, 400, 2100),
    undefined,
    "an early acknowledgement older than the data is no answer to it",
  );
});

t.test("echo timer: the first answerable segment of a TSval, its first echo", async (t) => {
  const timer = new EchoTimer();
  t.equal(timer.sent(10, 1000, false), undefined);
  t.equal(timer.echoed(10, 1500), undefined, "a pure ACK's TSval is not timed (its echo waits for the peer)");
  timer.sent(11, 2000, true);
  timer.sent(11, 2010, true); // same tick: not a new timing
  t.equal(timer.echoed(11, 2100), 100, "timed from the first segment with that TSval");
  t.equal(timer.echoed(11, 2200), undefined, "only the first echo");
  timer.sent(12, 3000, true);
  timer.sent(13, 3001, true);
  timer.sent(14, 3002, true);
  t.equal(timer.echoed(13, 3050), 49, "a delayed ACK echoes the earliest TSval it acknowledges");
  t.equal(timer.echoed(12, 3060), undefined, "an older one can no longer be a first echo");
  t.equal(timer.echoed(14, 3070), 68, "a newer one still can");
  timer.sent(20, 4000, true);
  timer.forget(20); // sent again with the same TSval
  t.equal(timer.echoed(20, 4100), undefined, "which copy was echoed is unknown: no sample");
  timer.sent(1, 6000, true);
  t.equal(timer.echoed(1, 6100), undefined, "a TSval older than one timed is not new");
  const wrapping = new EchoTimer();
  wrapping.sent(0xffffffff, 5000, true);
  wrapping.sent(2, 5001, true); // the 32-bit clock wrapped
  t.equal(wrapping.echoed(0xffffffff, 5010), 10, "before the wrap");
  t.equal(wrapping.echoed(2, 5020), 19, "after it");
});

t.test("echo timer: an echo handled before its segment (another channel)", async (t) => {
  const timer = new EchoTimer();
  timer.sent(5, 900, true);
  t.equal(timer.echoed(7, 1040), undefined, "echoes a TSval not seen yet: kept");
  t.equal(timer.echoed(8, 1090), undefined, "only the first early echo is kept");
  t.equal(timer.sent(7, 1000, true), 40, "the segment arrives: timed by capture times");
  t.equal(timer.echoed(9, 1200), undefined);
  t.equal(timer.sent(10, 1300, true), undefined, "an early echo of an older TSval is dropped");
  t.equal(timer.echoed(10, 1320), 20, "and timing goes on as usual");
});

t.test("echo timer: bounded, and every sample is a real elapsed time", async (t) => {
  const timer = new EchoTimer();
  for (let i = 0; i < 3 * ECHO_TIMINGS; i++) timer.sent(100 + i, 1000 + i, true);
  t.equal(timer.echoed(100, 2000), undefined, "the oldest timings went beyond the limit");
  t.equal(
    timer.echoed(100 + 2 * ECHO_TIMINGS, 2000),
    2000 - (1000 + 2 * ECHO_TIMINGS),
    `the newest ${ECHO_TIMINGS} are kept`,
  );
  // Any interleaving of sends and echoes: a sample is always echo time - send time of that very
  // TSval's first answerable segment, never negative, and each TSval gives at most one.
  assertProperty(
    "echo timer: bounded, and every sample is a real elapsed time",
    fc.property(
      fc.array(
        fc.record({ echo: fc.boolean(), ts: fc.integer({ min: 0, max: 40 }), answerable: fc.boolean() }),
        { maxLength: 200 },
      ),
      (ops) => {
        const timer = new EchoTimer();
        const firstSent = new Map<number, number>();
        const sampled = new Set<number>();
        let now = 0;
        for (const op of ops) {
          now += 7;
          if (op.echo) {
            const us = timer.echoed(op.ts, now);
            if (us === undefined) continue;
            if (sampled.has(op.ts) || !firstSent.has(op.ts)) return false;
            if (us !== now - firstSent.get(op.ts)! || us < 0) return false;
            sampled.add(op.ts);
          } else {
            const early = timer.sent(op.ts, now, op.answerable);
            if (op.answerable && !firstSent.has(op.ts)) firstSent.set(op.ts, now);
            if (early !== undefined) return false; // echoes here always come after their segment
          }
        }
        return true;
      },
    ),
  );
});
