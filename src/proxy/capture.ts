// libpcap capture (the `cap` package) of the segments the engine must see. One handle on the
// "any" device keeps the kernel's order across interfaces (the client's SYN on the client link is
// always delivered before its NATed copy on the backend link). Immediate mode is on (cap sets it),
// so segments arrive without batching delay.
import capModule from "cap";
import { parseLinkLayer, DLT_EN10MB, DLT_LINUX_SLL, DLT_RAW } from "../wire/link.js";
import { parseSegment, type TcpSegment } from "../wire/tcp.js";
import { formatIPv4 } from "../wire/ipv4.js";

const LINK_TYPES: Record<string, number> = { ETHERNET: DLT_EN10MB, LINKTYPE_LINUX_SLL: DLT_LINUX_SLL, RAW: DLT_RAW };

export interface CaptureFilterAddresses {
  vip: number;
  port: number;
  original: number;
  snatAddress: number;
  replicationAddress: number;
}

/** BPF: client→VIP, original→SNAT address, the NATed SYN toward the original, replicas→us. */
export function captureFilter(a: CaptureFilterAddresses): string {
  const ip = formatIPv4;
  return [
    `(dst host ${ip(a.vip)} and dst port ${a.port})`,
    `(src host ${ip(a.original)} and src port ${a.port} and dst host ${ip(a.snatAddress)})`,
    `(src host ${ip(a.snatAddress)} and dst host ${ip(a.original)} and dst port ${a.port} and tcp[tcpflags] & tcp-syn != 0)`,
    `(dst host ${ip(a.replicationAddress)} and src port ${a.port})`,
  ]
    .map((c) => `(tcp and ${c})`)
    .join(" or ");
}

export interface CaptureSink {
  segment(seg: TcpSegment): void;
  reject(reason: string): void;
}

export class Capture {
  private readonly cap = new capModule.Cap();
  private readonly buffer = Buffer.alloc(65536);
  readonly linkType: number;

  constructor(device: string, filter: string, bufferBytes: number, sink: CaptureSink) {
    const name = this.cap.open(device, filter, bufferBytes, this.buffer);
    const lt = LINK_TYPES[name];
    if (lt === undefined) {
      this.cap.close();
      throw new Error(`capture on ${device}: unsupported link type ${name}`);
    }
    this.linkType = lt;
    this.cap.on("packet", (nbytes: number, truncated: boolean) => {
      if (truncated) return sink.reject("capture-truncated");
      const frame = this.buffer.subarray(0, nbytes);
      const link = parseLinkLayer(this.linkType, frame);
      if (!link.ok) return sink.reject(link.reason);
      const r = parseSegment(frame.subarray(link.ipOffset));
      if (!r.ok) return sink.reject(r.reason);
      sink.segment(r.segment);
    });
  }

  close(): void {
    this.cap.close();
  }
}
