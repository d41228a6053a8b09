// A smoothed delay estimate (the estimator of RFC 6298, applied to any delay): failure-detection
// thresholds follow what the path really does instead of fixed guesses, and never drop below a
// configured floor.

export class DelayEstimator {
  meanMs: number | undefined;
  devMs = 0;
  samples = 0;

  add(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0) return;
    this.samples++;
    if (this.meanMs === undefined) {
      this.meanMs = ms;
      this.devMs = ms / 2;
      return;
    }
    this.devMs = 0.75 * this.devMs + 0.25 * Math.abs(this.meanMs - ms);
    this.meanMs = 0.875 * this.meanMs + 0.125 * ms;
  }

  /** mean + k × deviation, at least `floorMs` (the floor alone before the first sample). */
  bound(k: number, floorMs: number): number {
    if (this.meanMs === undefined) return floorMs;
    return Math.max(floorMs, this.meanMs + k * this.devMs);
  }
}
