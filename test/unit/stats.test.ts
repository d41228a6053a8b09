import t from "tap";
import { percentile, summarize } from "../../src/sys/stats.js";

t.test("percentiles are nearest-rank", async (t) => {
  const xs = Array.from({ length: 100 }, (_, i) => i + 1);
  t.equal(percentile(xs, 0.5), 50);
  t.equal(percentile(xs, 0.99), 99);
  t.equal(percentile(xs, 1), 100);
  t.equal(percentile(xs, 0), 1);
  t.ok(Number.isNaN(percentile([], 0.5)));
});

t.test("summary", async (t) => {
  const s = summarize([2, 4, 4, 4, 5, 5, 7, 9]);
  t.equal(s.count, 8);
  t.equal(s.mean, 5);
  t.equal(s.min, 2);
  t.equal(s.max, 9);
  t.ok(Math.abs(s.stdDev - 2.138) < 0.001, `sample std dev ${s.stdDev}`);
  t.equal(summarize([3]).stdDev, 0);
});
