// Keeps the capture channels within a bounded distance of each other in capture time.
//
// Each channel (client side, backend side) is in capture order, but nothing orders them with each
// other: the engine handles whichever pipe has data. When the engine cannot keep up (a loaded
// machine, a burst of new connections), the backlog splits unevenly and one channel can run
// hundreds of milliseconds ahead of the other: measured 320 ms in the lab under redis-benchmark
// with 2 replicas. The engine then holds the ahead channel's segments until the other side
// catches up (the original's answers wait for the NATed SYN that names their port), and a bounded
// hold overflows: reply bytes lost to capture, connections that can no longer be verified.
//
// So a channel that runs more than `maxSkewUs` ahead of another channel that is still delivering
// is paused (its helper blocks on the pipe, its kernel ring absorbs the backlog) until the other
// catches up. A channel that delivered nothing for `idleMs` is not waited for: it may simply have
// no traffic, and a quiet channel must not stop the other. Without load the channels stay within
// a few milliseconds and nothing is ever paused.

export interface BalancedChannel {
  pause(): void;
  resume(): void;
}

export interface ChannelBalanceStats {
  /** How often a channel was paused for running ahead. */
  pauses: number;
  /** Total time (ms) channels spent paused. */
  pausedMs: number;
}

interface ChannelState {
  io: BalancedChannel;
  /** Capture time (µs) of its newest record. */
  watermarkUs: number | undefined;
  /** When (ms, balancer clock) it last delivered records. */
  lastDataAt: number;
  pausedAt: number | undefined;
}

export class ChannelBalancer {
  private readonly channels = new Map<string, ChannelState>();
  /** Cancels the pending re-check, if any. */
  private cancelTimer: (() => void) | undefined;
  readonly stats: ChannelBalanceStats = { pauses: 0, pausedMs: 0 };

  constructor(
    private readonly maxSkewUs = 50_000,
    private readonly idleMs = 5,
    private readonly now: () => number = () => performance.now(),
    /** Runs fn after ms; returns what cancels it. */
    private readonly schedule: (fn: () => void, ms: number) => () => void = (fn, ms) => {
      const timer = setTimeout(fn, ms);
      return () => clearTimeout(timer);
    },
  ) {
    if (!(maxSkewUs > 0) || !(idleMs > 0)) throw new Error("maxSkewUs and idleMs must be positive");
  }

  add(name: string, io: BalancedChannel): void {
    this.channels.set(name, { io, watermarkUs: undefined, lastDataAt: this.now(), pausedAt: undefined });
  }

  /** `name` delivered records, the newest captured at `watermarkUs`. */
  delivered(name: string, watermarkUs: number): void {
    const c = this.channels.get(name);
    if (!c) return;
    if (c.watermarkUs === undefined || watermarkUs > c.watermarkUs) c.watermarkUs = watermarkUs;
    c.lastDataAt = this.now();
    this.rebalance();
  }

  /** Is `name` paused now (for tests and stats)? */
  paused(name: string): boolean {
    return this.channels.get(name)?.pausedAt !== undefined;
  }

  /** Resumes everything for good (the captures are closing). */
  close(): void {
    this.cancelTimer?.();
    this.cancelTimer = undefined;
    for (const c of this.channels.values()) this.resume(c);
  }

  private rebalance(): void {
    const now = this.now();
    let recheck = false;
    for (const c of this.channels.values()) {
      const behind = this.laggingActive(c, now);
      if (behind && c.pausedAt === undefined) {
        c.pausedAt = now;
        this.stats.pauses++;
        c.io.pause();
      } else if (!behind && c.pausedAt !== undefined) {
        this.resume(c);
      }
      if (c.pausedAt !== undefined) recheck = true;
    }
    // The channel waited for may go quiet: look again once it has been silent idleMs.
    this.cancelTimer?.();
    this.cancelTimer = recheck ? this.schedule(() => this.rebalance(), this.idleMs) : undefined;
  }

  /** Is another channel that is still delivering more than maxSkewUs behind `c`? */
  private laggingActive(c: ChannelState, now: number): boolean {
    if (c.watermarkUs === undefined) return false;
    for (const o of this.channels.values()) {
      if (o === c || o.pausedAt !== undefined) continue;
      const active = now - o.lastDataAt < this.idleMs;
      if (active && o.watermarkUs !== undefined && c.watermarkUs - o.watermarkUs > this.maxSkewUs)
        return true;
    }
    return false;
  }

  private resume(c: ChannelState): void {
    if (c.pausedAt === undefined) return;
    this.stats.pausedMs += this.now() - c.pausedAt;
    c.pausedAt = undefined;
    c.io.resume();
  }
}
