// The capture clock. Segments come from several capture channels (client side, backend side),
// each in order but not ordered with each other, each stamped with its capture time (µs, the
// engine's clock). Silence and "everything up to t has been seen" are judged per channel on
// these stamps, so the engine's own lag (it handles a segment late) never looks like silence
// of the host that sent it. Without capture times (one ordered stream, unit tests) the engine's
// clock stands in.

/** When something was seen: engine time (ms) and, with capture times, capture time (µs). */
export interface Seen {
  at: number;
  captureUs: number | undefined;
}

export class CaptureClock {
  /** Capture time of the segment being handled (undefined: one ordered stream). */
  private current: number | undefined;
  /** Engine time of the last packet handled per capture channel. */
  private readonly seenAt = new Map<string, number>();
  /** Latest capture time seen per capture channel. */
  private readonly watermarks = new Map<string, number>();
  /** Which channel carries the client's and the original's segments. */
  private readonly channelOf: { client?: string; original?: string } = {};

  /** A segment from `capture` is being handled at `now`. */
  begin(capture: { channel: string; timeUs: number } | undefined, now: number): void {
    this.current = capture?.timeUs;
    if (!capture) return;
    const wm = this.watermarks.get(capture.channel);
    if (wm === undefined || capture.timeUs > wm) this.watermarks.set(capture.channel, capture.timeUs);
    this.seenAt.set(capture.channel, now);
  }

  /** The segment being handled was the client's or the original's: its channel carries them. */
  carries(who: "client" | "original", capture: { channel: string } | undefined): void {
    if (capture) this.channelOf[who] = capture.channel;
  }

  end(): void {
    this.current = undefined;
  }

  /** Capture time (µs) of the segment being handled, if it has one. */
  get captureUs(): number | undefined {
    return this.current;
  }

  /** When the segment being handled was captured (µs), else the engine's time. */
  nowUs(now: number): number {
    return this.current ?? now * 1000;
  }

  /** A stamp of "now" for the segment being handled. */
  seen(now: number): Seen {
    return { at: now, captureUs: this.current };
  }

  /** The latest capture time of the channel carrying `who`'s segments (-Infinity: none yet). */
  watermarkOf(who: "client" | "original"): number {
    const channel = this.channelOf[who];
    return (channel === undefined ? undefined : this.watermarks.get(channel)) ?? -Infinity;
  }

  /** Has every channel delivered something captured at or after `us`? */
  passed(us: number): boolean {
    for (const wm of this.watermarks.values()) if (wm < us) return false;
    return true;
  }

  /**
   * How long the original has sent nothing since `last`. With capture times: measured on the
   * capture clock of the channel that carries the original (other packets captured later prove
   * the silence even when the engine itself lags); without: on the engine's clock.
   */
  silentMs(last: Seen | undefined, now: number): number {
    if (!last) return Infinity;
    const channel = this.channelOf.original;
    const wm = channel === undefined ? undefined : this.watermarks.get(channel);
    if (last.captureUs !== undefined && wm !== undefined) {
      // The capture clock proves silence while packets keep coming; when the channel itself goes
      // quiet (nothing left to process), real time passing is silence too.
      const idle = now - (this.seenAt.get(channel!) ?? now);
      return (wm - last.captureUs) / 1000 + idle;
    }
    return now - last.at;
  }
}
