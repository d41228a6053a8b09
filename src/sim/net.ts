// Links between a host and the appliance, one per direction: delay with jitter, loss,
// duplication, reordering (a packet held back longer than the ones after it), and a link that is
// down. Every packet crosses as bytes (the wire codec builds and parses it, checksums included),
// so what the engine emits must be encodable.
import { buildSegment, parseSegment, type TcpSegment } from "../wire/tcp.js";
import type { Rng } from "./rng.js";
import type { Scheduler } from "./scheduler.js";

export interface LinkQuality {
  /** One-way delay, µs. */
  delayUs: number;
  jitterUs: number;
  loss: number;
  duplicate: number;
  /** Probability that a packet is held back (reordered behind later ones). */
  reorder: number;
}

export const CLEAN: LinkQuality = { delayUs: 100, jitterUs: 20, loss: 0, duplicate: 0, reorder: 0 };

export class LinkDirection {
  up = true;
  sent = 0;
  lost = 0;
  /** Earliest delivery time of the next packet without reordering (FIFO otherwise). */
  private lastAt = 0;

  constructor(
    readonly name: string,
    public quality: LinkQuality,
    private readonly sched: Scheduler,
    private readonly rng: Rng,
    private readonly deliver: (seg: TcpSegment) => void,
  ) {}

  send(seg: TcpSegment): void {
    this.sent++;
    const bytes = buildSegment(seg);
    if (!this.up || this.rng.chance(this.quality.loss)) {
      this.lost++;
      return;
    }
    const copies = this.rng.chance(this.quality.duplicate) ? 2 : 1;
    for (let i = 0; i < copies; i++) {
      const q = this.quality;
      let at = this.sched.now + q.delayUs + this.rng.float() * q.jitterUs;
      if (this.rng.chance(q.reorder)) at += q.delayUs + this.rng.float() * 4 * (q.delayUs + q.jitterUs);
      else at = Math.max(at, this.lastAt);
      if (at > this.lastAt) this.lastAt = at;
      const copy = Uint8Array.from(bytes);
      this.sched.at(at, () => {
        if (!this.up) return; // lost on a link that went down while in flight
        const r = parseSegment(copy, { verifyChecksums: true });
        if (!r.ok) throw new Error(`${this.name}: a packet did not parse: ${r.reason}`);
        this.deliver(r.segment);
      });
    }
  }
}
