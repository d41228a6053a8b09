// Capture of the segments the engine must see, through libpcap as packaged in tcpdump: one handle
// on the "any" device (it keeps the kernel's order across interfaces: the client's SYN on the
// client link always comes before its NATed copy on the backend link), immediate mode, a BPF
// filter, a 32 MiB kernel ring, and the records streamed to us as pcap over a pipe.
//
// Why not the `cap` addon: under load it corrupts the heap ("malloc(): unsorted double linked list
// corrupted" with an empty handler, 20k requests/s, libpcap 1.10.3, Node 20), and with a small
// ring it silently loses packets. tcpdump is libpcap too, isolated in its own process, and it
// reports the kernel's drop count, which we surface.
import { spawn, type ChildProcess } from "node:child_process";
import { parseLinkLayer, DLT_LINUX_SLL } from "../wire/link.js";
import { PcapStreamReader } from "../wire/pcap.js";
import { parseSegment, type TcpSegment } from "../wire/tcp.js";
import { formatIPv4 } from "../wire/ipv4.js";

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
  segment(seg: TcpSegment, timeUs: number): void;
  reject(reason: string): void;
}

export interface CaptureCounters {
  records: number;
  /** Packets the kernel dropped because the ring was full (tcpdump's count, refreshed on stats()). */
  kernelDropped: number;
  receivedByFilter: number;
}

export class Capture {
  private readonly child: ChildProcess;
  private readonly reader = new PcapStreamReader();
  private stderr = "";
  readonly counters: CaptureCounters = { records: 0, kernelDropped: 0, receivedByFilter: 0 };
  private exited = false;

  private constructor(device: string, filter: string, bufferKiB: number, sink: CaptureSink) {
    this.child = spawn(
      "tcpdump",
      ["-i", device, "-y", "LINUX_SLL", "-nn", "-U", "-w", "-", "-s", "262144", "-B", String(bufferKiB), "--immediate-mode", filter],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    this.child.stdout!.on("data", (chunk: Buffer) => {
      let records;
      try {
        records = this.reader.push(chunk);
      } catch {
        sink.reject("capture-stream-corrupt");
        return;
      }
      for (const rec of records) {
        this.counters.records++;
        const link = parseLinkLayer(this.reader.linkType ?? DLT_LINUX_SLL, rec.data);
        if (!link.ok) {
          sink.reject(link.reason);
          continue;
        }
        const r = parseSegment(rec.data.subarray(link.ipOffset));
        if (!r.ok) sink.reject(r.reason);
        else sink.segment(r.segment, rec.timeUs);
      }
    });
    this.child.stderr!.setEncoding("utf8").on("data", (d: string) => {
      this.stderr = (this.stderr + d).slice(-8192);
      const dropped = /(\d+) packets? dropped by kernel/g;
      let m;
      while ((m = dropped.exec(this.stderr))) this.counters.kernelDropped = Number(m[1]);
      const received = /(\d+) packets? received by filter/g;
      while ((m = received.exec(this.stderr))) this.counters.receivedByFilter = Number(m[1]);
    });
    this.child.on("exit", () => {
      this.exited = true;
    });
  }

  /** Starts capturing; resolves once libpcap is listening (tcpdump said so). */
  static async start(device: string, filter: string, bufferBytes: number, sink: CaptureSink): Promise<Capture> {
    const c = new Capture(device, filter, Math.max(64, Math.floor(bufferBytes / 1024)), sink);
    const deadline = Date.now() + 10_000;
    while (!/listening on/.test(c.stderr)) {
      if (c.exited) throw new Error(`capture failed to start: ${c.stderr.trim()}`);
      if (Date.now() > deadline) {
        c.close();
        throw new Error("capture did not start within 10 s");
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    return c;
  }

  get running(): boolean {
    return !this.exited;
  }

  /** Asks tcpdump for its counters (SIGUSR1) and gives them a moment to arrive. */
  async refreshCounters(): Promise<CaptureCounters> {
    if (!this.exited) {
      this.child.kill("SIGUSR1");
      await new Promise((r) => setTimeout(r, 20));
    }
    return { ...this.counters };
  }

  close(): void {
    if (!this.exited) this.child.kill("SIGTERM");
  }
}
