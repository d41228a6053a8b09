// The replicas the engine replicates to: who they are, what was sent to and compared with each
// (the counters behind ReplicaStats), which one was promoted, which are being drained. Each
// replica id and address appears once.
import { formatIPv4 } from "../wire/ipv4.js";
import { assert } from "./assert.js";
import type { ReplicaInfo, ReplicaStats } from "./types.js";

export interface ReplicaRecord {
  info: ReplicaInfo;
  shadowsOpened: number;
  bytesSent: number;
  bytesAcked: number;
  segmentsSent: number;
  retransmits: number;
  replyBytes: number;
  comparedBytes: number;
  toleratedBytes: number;
  diverged: number;
  lagging: number;
  unverified: number;
  /** Bytes held on its behalf (client backlog + reply bytes), kept by Buffers.account. */
  buffered: number;
  rttSamples: number;
  lastSrttMs: number | undefined;
  /** The smallest RTT sample of its shadows: the path's own delay, without queueing (a loaded
   * replica's SRTT carries its service's queue). */
  minRttMs: number | undefined;
  /** Promoted to original: it serves its spliced connections and gets no new shadows. */
  promoted: boolean;
}

export class ReplicaSet {
  private readonly records = new Map<string, ReplicaRecord>();
  /** Replicas being drained: no shadow for new connections. */
  private readonly draining = new Set<string>();

  /** Throws (and changes nothing) on a duplicate id or address. */
  add(info: ReplicaInfo): ReplicaRecord {
    if (this.records.has(info.id)) throw new Error(`replica ${info.id} exists already`);
    for (const r of this.records.values()) {
      if (r.info.address === info.address)
        throw new Error(`replica address ${formatIPv4(info.address)} is ${r.info.id}'s`);
    }
    const r: ReplicaRecord = {
      info,
      shadowsOpened: 0,
      bytesSent: 0,
      bytesAcked: 0,
      segmentsSent: 0,
      retransmits: 0,
      replyBytes: 0,
      comparedBytes: 0,
      toleratedBytes: 0,
      diverged: 0,
      lagging: 0,
      unverified: 0,
      buffered: 0,
      rttSamples: 0,
      lastSrttMs: undefined,
      minRttMs: undefined,
      promoted: false,
    };
    this.records.set(info.id, r);
    return r;
  }

  remove(id: string): void {
    this.records.delete(id);
    this.draining.delete(id);
  }

  get(id: string): ReplicaRecord | undefined {
    return this.records.get(id);
  }

  has(id: string): boolean {
    return this.records.has(id);
  }

  get size(): number {
    return this.records.size;
  }

  values(): IterableIterator<ReplicaRecord> {
    return this.records.values();
  }

  ids(): string[] {
    return [...this.records.keys()];
  }

  drain(id: string): void {
    this.draining.add(id);
  }

  /** Gets shadows of new connections: neither promoted nor being drained. */
  takesNewConnections(r: ReplicaRecord): boolean {
    return !r.promoted && !this.draining.has(r.info.id);
  }

  promote(id: string): void {
    const r = this.records.get(id);
    assert(r && !r.promoted, `promote: no replica ${id} to promote`);
    r.promoted = true;
  }

  /** Replicas that can still be promoted; 0 = the service runs unreplicated. */
  promotableCount(): number {
    let n = 0;
    for (const r of this.records.values()) if (!r.promoted) n++;
    return n;
  }

  stats(shadowsActive: (id: string) => number): ReplicaStats[] {
    return [...this.records.values()].map((r) => ({
      id: r.info.id,
      address: formatIPv4(r.info.address),
      shadowsActive: shadowsActive(r.info.id),
      shadowsOpened: r.shadowsOpened,
      bytesSent: r.bytesSent,
      bytesAcked: r.bytesAcked,
      segmentsSent: r.segmentsSent,
      retransmits: r.retransmits,
      replyBytes: r.replyBytes,
      comparedBytes: r.comparedBytes,
      toleratedBytes: r.toleratedBytes,
      diverged: r.diverged,
      lagging: r.lagging,
      unverified: r.unverified,
      bufferedBytes: r.buffered,
      rttUs: {
        samples: r.rttSamples,
        srtt: r.lastSrttMs === undefined ? null : Math.round(r.lastSrttMs * 1000),
      },
    }));
  }
}
