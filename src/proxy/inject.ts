// Raw IPv4 socket (IPPROTO_RAW: we write the whole IP header) for the engine's output. Every
// packet carries a firewall mark so our own table can exempt it from conntrack (notrack): these
// segments belong to conversations the kernel must not track or NAT.
//
// Sends are synchronous sendto() calls on the non-blocking socket (the package's own queue sends
// one packet per poll wake-up, far too slow for a data plane). A send the kernel refuses (full
// socket buffer) is counted; TCP retransmission (ours toward replicas) recovers it.
import raw from "raw-socket";
import { buildSegment, type TcpSegment } from "../wire/tcp.js";
import { formatIPv4 } from "../wire/ipv4.js";

const IPPROTO_RAW = 255;
const SO_SNDBUF = 7;
const SO_MARK = 36;

export class Injector {
  private readonly socket = raw.createSocket({
    addressFamily: raw.AddressFamily.IPv4,
    protocol: IPPROTO_RAW,
  });
  sent = 0;
  errors = 0;
  lastError: string | undefined;
  private readonly onSent = () => {
    this.sent++;
  };

  constructor(mark: number) {
    this.socket.setOption(raw.SocketLevel.SOL_SOCKET, SO_MARK, mark);
    this.socket.setOption(raw.SocketLevel.SOL_SOCKET, SO_SNDBUF, 8 << 20);
    this.socket.on("error", (e: Error) => {
      this.errors++;
      this.lastError = e.message;
    });
  }

  send(segment: TcpSegment): void {
    const packet = buildSegment(segment);
    try {
      this.socket.wrap.send(packet, 0, packet.length, formatIPv4(segment.dst), this.onSent);
    } catch (e) {
      this.errors++;
      this.lastError = (e as Error).message;
    }
  }

  close(): void {
    this.socket.close();
  }
}
