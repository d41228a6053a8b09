// Passive RTT of every path the appliance sees, from the segments it captures and sends:
//   client   — appliance ↔ client: the original's SYN-ACK or data leaving toward the client, to
//              the client's acknowledgement of it;
//   original — appliance ↔ original: the client's SYN or data entering, to the original's
//              acknowledgement of it;
//   replica  — appliance ↔ each replica: the engine's SYN or data to the replica, to its
//              acknowledgement.
// Three kinds per path: `handshake` (SYN → SYN-ACK, SYN-ACK → ACK: answered at once by the
// peer's kernel, the network's own figure), `data` (sequence/acknowledgement matching, one timed
// segment at a time, Karn's rule: never a retransmitted one; the peer's acknowledgement may wait
// for its application's answer or its delayed-ACK timer, as in any passive measurement) and
// `timestamp` (TCP timestamp echoes, RFC 7323: a second, independent estimator that also times
// retransmitted data and several segments per round trip). Times are µs on one clock (capture
// times, or the engine's clock in tests without capture).
import { RttHistogram, WindowedHistogram, type HistogramSummary, type WindowedSummary } from "./histogram.js";

export type RttKind = "handshake" | "data" | "timestamp";
export const RTT_KINDS: readonly RttKind[] = ["handshake", "data", "timestamp"];

export interface PathRtt {
  handshake: WindowedSummary;
  data: WindowedSummary;
  timestamp: WindowedSummary;
}

export interface RttStats {
  /** Width of the `recent` window of every summary. */
  windowMs: number;
  client: PathRtt;
  original: PathRtt;
  replicas: Record<string, PathRtt>;
  /**
   * What replication costs the client: client-path data RTT of connections that had shadows
   * against those that had none (replication off: no replica, or not replicated). Null until
   * both were seen.
   */
  degradation: {
    unreplicated: HistogramSummary;
    replicated: HistogramSummary;
    /** replicated p50 / unreplicated p50. */
    ratioP50: number | null;
  };
}

/** One histogram of RTT samples, named for exposition (Prometheus labels). */
export interface RttSeries {
  path: "client" | "original" | "replica";
  replica?: string;
  kind: RttKind;
  histogram: RttHistogram;
}

class PathHistograms {
  readonly handshake: WindowedHistogram;
  readonly data: WindowedHistogram;
  readonly timestamp: WindowedHistogram;
  constructor(sliceMs: number, slices: number) {
    this.handshake = new WindowedHistogram(sliceMs, slices);
    this.data = new WindowedHistogram(sliceMs, slices);
    this.timestamp = new WindowedHistogram(sliceMs, slices);
  }
  summary(now: number): PathRtt {
    return {
      handshake: this.handshake.summary(now),
      data: this.data.summary(now),
      timestamp: this.timestamp.summary(now),
    };
  }
}

export class RttTracker {
  private readonly client: PathHistograms;
  private readonly original: PathHistograms;
  private readonly replicas = new Map<string, PathHistograms>();
  private readonly unreplicated = new RttHistogram();
  private readonly replicated = new RttHistogram();

  constructor(
    private readonly sliceMs = 1000,
    private readonly slices = 10,
  ) {
    this.client = new PathHistograms(sliceMs, slices);
    this.original = new PathHistograms(sliceMs, slices);
  }

  /** A client-path sample; `replicated` says whether the connection had shadows (degradation). */
  clientSample(kind: RttKind, us: number, now: number, replicated: boolean): void {
    if (!(us >= 0)) return; // clock skew between capture channels: no sample rather than a bogus one
    this.client[kind].add(us, now);
    if (kind === "data") (replicated ? this.replicated : this.unreplicated).add(us);
  }

  originalSample(kind: RttKind, us: number, now: number): void {
    if (!(us >= 0)) return;
    this.original[kind].add(us, now);
  }

  replicaSample(id: string, kind: RttKind, us: number, now: number): void {
    if (!(us >= 0)) return;
    let h = this.replicas.get(id);
    if (!h) {
      h = new PathHistograms(this.sliceMs, this.slices);
      this.replicas.set(id, h);
    }
    h[kind].add(us, now);
  }

  /** A removed replica's histograms go with it (bounded memory whatever the churn). */
  removeReplica(id: string): void {
    this.replicas.delete(id);
  }

  stats(now: number): RttStats {
    const replicas: Record<string, PathRtt> = {};
    for (const [id, h] of this.replicas) replicas[id] = h.summary(now);
    const unreplicated = this.unreplicated.summary();
    const replicated = this.replicated.summary();
    return {
      windowMs: this.sliceMs * this.slices,
      client: this.client.summary(now),
      original: this.original.summary(now),
      replicas,
      degradation: {
        unreplicated,
        replicated,
        ratioP50:
          unreplicated.p50Us && replicated.p50Us !== null ? replicated.p50Us / unreplicated.p50Us : null,
      },
    };
  }

  /** Every cumulative histogram, for exposition. */
  series(): RttSeries[] {
    const out: RttSeries[] = [];
    for (const kind of RTT_KINDS) {
      out.push({ path: "client", kind, histogram: this.client[kind].total });
      out.push({ path: "original", kind, histogram: this.original[kind].total });
      for (const [id, h] of this.replicas)
        out.push({ path: "replica", replica: id, kind, histogram: h[kind].total });
    }
    return out;
  }
}

/**
 * Times one segment at a time in a byte stream (offsets, not sequence numbers), the way TCP
 * senders time their RTT: start on new data when nothing is being timed, sample when an
 * acknowledgement covers it, and give up when anything is sent again (Karn: the acknowledgement
 * could be for either copy, or released by the hole a retransmission filled).
 *
 * The data and its acknowledgement may come through different capture channels, handled in
 * either order: an acknowledgement of bytes not seen yet is kept (the first one only: it is the
 * one that answered them) and completes the sample when the data arrives, by capture times.
 */
export class SegmentTimer {
  private timedEnd: number | undefined;
  private timedAt = 0;
  /** Highest offset sent so far: anything starting below it is a retransmission. */
  private highest = 0;
  private early: { offset: number; atUs: number } | undefined;
  /** Highest offset any acknowledgement has covered, early ones included. */
  private ackedHighest = 0;

  /** Data [start, end) sent at atUs; returns a sample when its acknowledgement came first. */
  sent(start: number, end: number, atUs: number): number | undefined {
    if (end <= start) return undefined;
    let sample: number | undefined;
    if (start < this.highest) {
      // Any retransmission ends the timing, not only one of the timed bytes: filling a hole
      // below them releases a cumulative acknowledgement that was waiting for it (BSD's rule).
      this.timedEnd = undefined;
    } else if (this.timedEnd === undefined) {
      if (this.early && this.early.offset >= end && this.early.atUs >= atUs) {
        sample = this.early.atUs - atUs;
      } else if (this.ackedHighest < end) {
        // Bytes an acknowledgement already covered (a later early one, not kept) cannot be timed:
        // starting a timer on them would only end at the next acknowledgement, one round late.
        this.timedEnd = end;
        this.timedAt = atUs;
      }
    }
    if (end > this.highest) this.highest = end;
    if (this.early && this.early.offset <= this.highest) this.early = undefined;
    return sample;
  }

  /** The RTT sample (µs) this acknowledgement completes, if any. */
  acked(offset: number, atUs: number): number | undefined {
    if (offset > this.ackedHighest) this.ackedHighest = offset;
    if (offset > this.highest && !this.early) this.early = { offset, atUs };
    if (this.timedEnd === undefined || offset < this.timedEnd) return undefined;
    this.timedEnd = undefined;
    return atUs - this.timedAt;
  }
}

/** Timings under way at once per direction (one per timestamp tick); beyond, the oldest goes. */
export const ECHO_TIMINGS = 16;

/** a - b for 32-bit TCP timestamps (RFC 7323 compares them like sequence numbers). */
function tsDiff(a: number, b: number): number {
  return (a - b) | 0;
}

/**
 * Times round trips by TCP timestamp echoes (RFC 7323), one direction of one connection: the first
 * segment carrying a new TSval starts a timing, the first segment from the other side echoing it
 * in TSecr ends it. Unlike sequence/acknowledgement matching, a retransmission is no ambiguity
 * (the echo names the copy it answers) and several timings run at once (one per timestamp tick:
 * Linux ticks every millisecond).
 *
 * Only a segment that calls for an answer (payload, SYN or FIN) starts a timing: a pure ACK's
 * TSval is echoed only when the peer next has something to send, which would time its
 * application, not the path. A receiver delaying its ACK echoes the earliest TSval it acknowledges
 * (RFC 7323 §4.3), so a delayed ACK's wait is in the sample, as in the sender's own estimate.
 * Echoes of older TSvals than a matched one can no longer be first echoes: they are dropped.
 *
 * The segment and its echo may come through different capture channels: an echo of a TSval not
 * seen yet is kept (the first one) and completes the timing when that TSval arrives.
 */
export class EchoTimer {
  private readonly pending: Array<{ tsval: number; atUs: number }> = [];
  /** Newest TSval seen on a segment that calls for an answer. */
  private newest: number | undefined;
  private early: { tsecr: number; atUs: number } | undefined;

  /** A segment carrying `tsval` was sent at atUs; returns a sample when its echo came first. */
  sent(tsval: number, atUs: number, answerable: boolean): number | undefined {
    if (!answerable) return undefined;
    if (this.newest !== undefined && tsDiff(tsval, this.newest) <= 0) return undefined; // not new
    this.newest = tsval;
    if (this.early) {
      const e = this.early;
      const d = tsDiff(e.tsecr, tsval);
      if (d === 0 && e.atUs >= atUs) {
        this.early = undefined;
        return e.atUs - atUs;
      }
      if (d <= 0) this.early = undefined; // an echo of something older than what is sent now
    }
    if (this.pending.length >= ECHO_TIMINGS) this.pending.shift();
    this.pending.push({ tsval, atUs });
    return undefined;
  }

  /**
   * A segment carrying `tsval` was sent again (a sender that stamps copies with a value it reused,
   * like the engine relaying the client's TSval): which copy an echo answers is unknown now.
   */
  forget(tsval: number): void {
    const i = this.pending.findIndex((p) => p.tsval === tsval);
    if (i >= 0) this.pending.splice(i, 1);
  }

  /** The RTT sample (µs) a segment from the other side echoing `tsecr` at atUs completes, if any. */
  echoed(tsecr: number, atUs: number): number | undefined {
    let i = 0;
    while (i < this.pending.length && tsDiff(this.pending[i]!.tsval, tsecr) < 0) i++;
    const hit = i < this.pending.length && this.pending[i]!.tsval === tsecr;
    if (!hit) {
      // Nothing this new was sent yet as far as this channel knows: the segment may be late.
      if (this.newest === undefined || tsDiff(tsecr, this.newest) > 0) this.early ??= { tsecr, atUs };
      this.pending.splice(0, i);
      return undefined;
    }
    const { atUs: sentAt } = this.pending[i]!;
    this.pending.splice(0, i + 1);
    return atUs >= sentAt ? atUs - sentAt : undefined;
  }
}
