// Summary statistics of a sample set (latencies in microseconds, byte counts, ...).

export interface Summary {
  count: number;
  mean: number;
  stdDev: number;
  min: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** Nearest-rank percentile of an ascending array; q in [0, 1]. */
export function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank]!;
}

export function summarize(samples: readonly number[]): Summary {
  const sorted = [...samples].sort((a, b) => a - b);
  const n = sorted.length;
  const mean = n === 0 ? NaN : sorted.reduce((a, b) => a + b, 0) / n;
  // Sample standard deviation, as the thesis's tables report.
  const variance = n < 2 ? 0 : sorted.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1);
  return {
    count: n,
    mean,
    stdDev: Math.sqrt(variance),
    min: n === 0 ? NaN : sorted[0]!,
    p50: percentile(sorted, 0.5),
    p90: percentile(sorted, 0.9),
    p99: percentile(sorted, 0.99),
    max: n === 0 ? NaN : sorted[n - 1]!,
  };
}
