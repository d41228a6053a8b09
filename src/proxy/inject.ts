// Raw IPv4 socket (IPPROTO_RAW: we write the whole IP header) for the engine's output. Every
// packet carries a firewall mark so our own table can exempt it from conntrack (notrack): these
// segments belong to conversations the kernel must not track or NAT. The send queue is bounded;
// what does not fit is counted, and TCP retransmission (ours toward replicas) recovers it.
import raw from "raw-socket";
import { buildSegment, type TcpSegment } from "../wire/tcp.js";
import { formatIPv4 } from "../wire/ipv4.js";

const IPPROTO_RAW = 255;
const SO_MARK = 36;

export class Injector {
  private readonly socket = raw.createSocket({ addressFamily: raw.AddressFamily.IPv4, protocol: IPPROTO_RAW });
  private pending = 0;
  sent = 0;
  errors = 0;
  queueFull = 0;

  constructor(
    mark: number,
    private readonly maxQueue = 8192,
  ) {
    this.socket.setOption(raw.SocketLevel.SOL_SOCKET, SO_MARK, mark);
    this.socket.on("error", () => {
      this.errors++;
    });
  }

  send(segment: TcpSegment): void {
    if (this.pending >= this.maxQueue) {
      this.queueFull++;
      return;
    }
    const packet = buildSegment(segment);
    this.pending++;
    this.socket.send(packet, 0, packet.length, formatIPv4(segment.dst), null, (err) => {
      this.pending--;
      if (err) this.errors++;
      else this.sent++;
    });
  }

  get queued(): number {
    return this.pending;
  }

  close(): void {
    this.socket.close();
  }
}
