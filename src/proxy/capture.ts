// Capture of the segments the engine must see, through libpcap: handles on the "any" device (one
// handle keeps the kernel's order across interfaces: the client's SYN on the client link comes
// before its NATed copy on the backend link), immediate mode, BPF filters, 128 MiB kernel rings.
// libpcap runs in a small helper process of ours (native/pcap-pipe.c) that streams pcap records
// over a pipe, one write per wake-up: a lone packet leaves at once, a burst costs one syscall.
//
// Why not the `cap` addon: under load it corrupts the heap ("malloc(): unsorted double linked list
// corrupted" with an empty handler, 20k requests/s, libpcap 1.10.3, Node 20). Why not tcpdump -U:
// one write per packet; at ~50k packets/s on two busy cores the ring overflowed. The helper also
// reports libpcap's drop counter every second, which we surface.
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { parseLinkLayer, DLT_LINUX_SLL } from "../wire/link.js";
import { PcapStreamReader } from "../wire/pcap.js";
import { parseSegment, type TcpSegment } from "../wire/tcp.js";
import { formatIPv4 } from "../wire/ipv4.js";

/**
 * Bytes kept per packet. Whole packets are needed (payloads are compared), and with offloads off
 * none exceeds the MTU. It must stay small: in immediate mode libpcap uses fixed-size ring slots
 * of this size, so a 256 KiB snaplen leaves a 32 MiB ring with ~128 slots and the kernel drops
 * packets at a few thousand per second; at 2 KiB the same ring holds ~16k packets. A longer
 * packet arrives truncated and is rejected (counted as "truncated").
 */
export const SNAPLEN = 2048;
export const CAPTURE_NICE = -15;
export const PCAP_PIPE = fileURLToPath(new URL("../../native/pcap-pipe", import.meta.url));

export interface CaptureFilterAddresses {
  vip: number;
  port: number;
  original: number;
  snatAddress: number;
  replicationAddress: number;
}

/**
 * Two capture channels, each in its own helper and pipe, so the small, latency-critical side
 * never queues behind the bulk (a 64 MiB download is ~45k segments from the original and as many
 * from each replica). The client channel carries the client's segments, the kernel path's NATed
 * SYN (it must follow the client's SYN) and the replicas' SYN-ACKs (the client's first bytes go
 * to a replica only once its SYN-ACK is in: queued behind bulk, a request would reach the replica
 * a second late and its HTTP Date header would differ). The backend channel carries the rest of
 * what the original and the replicas send. Each channel keeps its own order; the engine
 * reconciles the two by capture time.
 */
export function captureFilters(a: CaptureFilterAddresses): { client: string; backend: string } {
  const ip = formatIPv4;
  const syn = "tcp[tcpflags] & tcp-syn != 0";
  const fromReplica = `tcp and dst host ${ip(a.replicationAddress)} and src port ${a.port}`;
  // The original is named by its role (the kernel path's peer: the SNAT address), not by its
  // address: after a promotion the new original is matched without restarting the capture.
  return {
    client:
      `(tcp and dst host ${ip(a.vip)} and dst port ${a.port}) or ` +
      `(tcp and src host ${ip(a.snatAddress)} and dst port ${a.port} and ${syn}) or ` +
      `(${fromReplica} and ${syn})`,
    backend: `(tcp and dst host ${ip(a.snatAddress)} and src port ${a.port}) or (${fromReplica} and not ${syn})`,
  };
}

export interface CaptureSink {
  segment(seg: TcpSegment, capture: { channel: string; timeUs: number }): void;
  /** The end of a batch of records that arrived together. */
  batchEnd(): void;
  /** A batch of `channel` ended, its newest record captured at watermarkUs (channel balance). */
  delivered?(channel: string, watermarkUs: number): void;
  reject(reason: string): void;
}

export interface CaptureCounters {
  records: number;
  /** Packets the kernel dropped because the ring was full (libpcap's count, refreshed each second). */
  kernelDropped: number;
  receivedByFilter: number;
}

export class Capture {
  private readonly child: ChildProcess;
  private readonly reader = new PcapStreamReader();
  private stderr = "";
  readonly counters: CaptureCounters = { records: 0, kernelDropped: 0, receivedByFilter: 0 };
  private exited = false;

  private constructor(
    readonly channel: string,
    device: string,
    filter: string,
    bufferBytes: number,
    sink: CaptureSink,
    coalesceUs: number,
  ) {
    // The capture must not be starved by the services it watches (in the lab they share the CPUs;
    // on a real appliance they would not): it runs at a raised priority.
    this.child = spawn(
      "nice",
      [
        "-n",
        String(CAPTURE_NICE),
        PCAP_PIPE,
        device,
        String(SNAPLEN),
        String(bufferBytes),
        filter,
        String(coalesceUs),
      ],
      {
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    this.child.stdout!.on("data", (chunk: Buffer) => {
      let records;
      try {
        records = this.reader.push(chunk);
      } catch {
        sink.reject("capture-stream-corrupt");
        return;
      }
      let newest: number | undefined;
      for (const rec of records) {
        this.counters.records++;
        newest = rec.timeUs;
        const link = parseLinkLayer(this.reader.linkType ?? DLT_LINUX_SLL, rec.data);
        if (!link.ok) {
          sink.reject(link.reason);
          continue;
        }
        const r = parseSegment(rec.data.subarray(link.ipOffset));
        if (!r.ok) sink.reject(r.reason);
        else sink.segment(r.segment, { channel: this.channel, timeUs: rec.timeUs });
      }
      sink.batchEnd();
      if (newest !== undefined) sink.delivered?.(this.channel, newest);
    });
    this.child.stderr!.setEncoding("utf8").on("data", (d: string) => {
      this.stderr = (this.stderr + d).slice(-8192);
      const stats = /stats received (\d+) dropped (\d+)/g;
      let m;
      while ((m = stats.exec(this.stderr))) {
        this.counters.receivedByFilter = Number(m[1]);
        this.counters.kernelDropped = Number(m[2]);
      }
    });
    this.child.on("exit", () => {
      this.exited = true;
    });
  }

  /** Starts capturing; resolves once libpcap is listening (the helper said so). */
  static async start(
    channel: string,
    device: string,
    filter: string,
    bufferBytes: number,
    sink: CaptureSink,
    coalesceUs = 100,
  ): Promise<Capture> {
    const c = new Capture(channel, device, filter, bufferBytes, sink, coalesceUs);
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

  /** Stops reading the helper's records (it blocks, its kernel ring fills) until resume(). */
  pause(): void {
    this.child.stdout!.pause();
  }

  resume(): void {
    this.child.stdout!.resume();
  }

  get running(): boolean {
    return !this.exited;
  }

  /** libpcap's counters as the helper last reported them (once a second). */
  refreshCounters(): CaptureCounters {
    return { ...this.counters };
  }

  close(): void {
    if (!this.exited) this.child.kill("SIGTERM");
  }
}
