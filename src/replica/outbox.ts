// What the engine wants done, in the order it decided it: segments to send, events, probes to
// make, promotions for the kernel path. The I/O edge takes it all with drain(). Also the one IP
// identification counter of everything the engine sends.
import type { TcpSegment } from "../wire/tcp.js";
import type { EngineEvent, EngineOutput } from "./types.js";

export class Outbox {
  private out: EngineOutput[] = [];
  private ipId = 0;

  drain(): EngineOutput[] {
    const o = this.out;
    this.out = [];
    return o;
  }

  send(segment: TcpSegment, to: "replica" | "client"): void {
    this.out.push({ type: "send", segment, to });
  }

  event(event: EngineEvent): void {
    this.out.push({ type: "event", event });
  }

  push(output: EngineOutput): void {
    this.out.push(output);
  }

  /** The next IP identification field. */
  nextIpId(): number {
    this.ipId = (this.ipId + 1) & 0xffff;
    return this.ipId;
  }
}
