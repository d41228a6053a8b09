// A planned pause of the original (a fork copies its disk while it is paused): nothing seen in
// [from, until) counts as its failure, and stall clocks restart when it ends, so a stall must
// then last its full threshold again. Bounded: a hold that is never released ends by itself.

/** Longest planned pause of the original the engine accepts (a fork copies a few MB). */
export const MAX_HOLD_MS = 10_000;

export class PlannedHold {
  private hold: { from: number; until: number } | undefined;
  private ended: { from: number; until: number } | undefined;

  /** @param restartStallClocks called with the end of a hold (evidence.ts). */
  constructor(private readonly restartStallClocks: (now: number) => void) {}

  /** The original is about to be paused on purpose for up to `ms`. */
  begin(ms: number, now: number): void {
    const until = now + Math.min(Math.max(0, ms), MAX_HOLD_MS);
    this.hold = { from: this.hold?.from ?? now, until: Math.max(until, this.hold?.until ?? -Infinity) };
  }

  /** The planned pause is over (the original was resumed). */
  release(now: number): void {
    if (!this.hold) return;
    this.hold.until = Math.min(this.hold.until, now);
    this.end(now);
  }

  /** Ends a hold whose deadline passed; returns whether one is still on. */
  update(now: number): boolean {
    if (this.hold && now >= this.hold.until) this.end(this.hold.until);
    return this.hold !== undefined;
  }

  get until(): number | undefined {
    return this.hold?.until;
  }

  /** Whether the original was on hold at `t` (or is now). */
  heldAt(t: number, now: number): boolean {
    for (const h of [this.hold, this.ended])
      if (h && ((t >= h.from && t < h.until) || (h === this.hold && now < h.until))) return true;
    return false;
  }

  private end(now: number): void {
    this.ended = this.hold;
    this.hold = undefined;
    this.restartStallClocks(now);
  }
}
