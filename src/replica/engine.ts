// The replication engine: a pure state machine driven by (captured segment, now) and (tick, now).
// It never does I/O; what it wants sent comes out of drain() as EngineOutput values, so it can be
// unit-tested, simulated with a fake network and clock, and replayed from a pcap.
//
// What it sees (classified by address, see classify()):
//   client   → VIP:port            the client's segments, as the client sent them
//   snat     → original:port, SYN  the kernel path's NATed SYN: tells which port the original sees
//   original → snat:natPort        the original's segments (its FIN/RST are held by the kernel)
//   replica  → replication:port    the replicas' segments in the shadow conversations
//
// Sequence spaces: client sequence numbers pass unchanged into every shadow conversation; each
// replica picks its own ISN, so everything about the server side is handled as stream offsets
// (bytes since the SYN) and converted to and from each party's sequence numbers at the edges.
import { seqAdd, seqDiff } from "../wire/seq.js";
import { ACK, FIN, PSH, RST, SYN, findOption, type TcpOption, type TcpSegment } from "../wire/tcp.js";
import { formatIPv4 } from "../wire/ipv4.js";
import { ByteStream } from "./byte-stream.js";
import { ShadowConversation } from "./shadow.js";
import { DelayEstimator } from "./estimator.js";
import { EchoTimer, RttTracker, SegmentTimer, type RttSeries } from "./rtt.js";
import { HTTP_DATE_CONTEXT, httpDateDifference } from "./reply-mask.js";
import type {
  EngineConfig,
  EngineEvent,
  EngineOutput,
  EngineStats,
  ReplicaInfo,
  ReplicaStats,
} from "./types.js";

const TWO32 = 4294967296;
const CLOSE_ALONE = "the original closed a connection its replicas keep open";
/** Stall suspicions probe the original at most this often (closes and dead answers are not
 * limited): an original that often trails its replicas costs at most 50 connections a second. */
const STALL_PROBE_INTERVAL_MS = 20;
const PERIODIC = "periodic probe";
const CANDIDATE = "candidate for promotion";
/** How far (bytes) a segment of the original may be from where its connection is. */
const FOREIGN_WINDOW = 64 * 1024 * 1024;
/** Probe answers that are certain: the target's kernel said nothing listens. */
const REFUSALS = new Set(["ECONNREFUSED", "ECONNRESET"]);
/** Refusals held at once; beyond, they go to their clients unheld. */
const MAX_HELD_REFUSALS = 1024;
/** A held refusal goes out after this long whatever happens (the probe was lost). */
const REFUSAL_HOLD_MS = 1000;
/** A dead probe answer waits at most this long for the capture channels. */
const CATCH_UP_MS = 5;
/** The original's segments held until the NATed SYN naming their port is handled, at most. */
const MAX_UNBOUND = 16_384;
/** Longest planned pause of the original the engine accepts (a fork copies a few MB). */
const MAX_HOLD_MS = 10_000;
/** The second, patient try of a periodic replica probe that went unanswered (see probeResult). */
const PATIENT_REPLICA_PROBE_FACTOR = 4;
// Covers one SYN retransmission (1 s): a lost SYN or a neighbour still resolving is not a death.
const PATIENT_REPLICA_PROBE_MIN_MS = 1500;

/** Bytes of each side a divergence event shows, from the first difference. */
const DIVERGENCE_EXCERPT = 16;

/** Bytes as text an operator can read in a log line: printable ASCII as is, the rest as \xNN. */
export function printable(b: Uint8Array): string {
  let out = "";
  for (const c of b)
    out +=
      c >= 0x20 && c < 0x7f && c !== 0x5c ? String.fromCharCode(c) : `\\x${c.toString(16).padStart(2, "0")}`;
  return out;
}

/** Does this segment call for an answer from its receiver (timestamp-echo timing)? */
function answerable(seg: TcpSegment): boolean {
  return seg.payload.length > 0 || (seg.flags & (SYN | FIN)) !== 0;
}

/** Stream offset of `seq` for a stream whose first data byte is isn+1, nearest to `ref`. */
export function toOffset(seq: number, isn: number, ref: number): number {
  const refSeq = (isn + 1 + (ref % TWO32)) % TWO32;
  return ref + seqDiff(seq, refSeq);
}

export function toSeq(offset: number, isn: number): number {
  return ((isn + 1 + (offset % TWO32)) % TWO32) >>> 0;
}

function copyOptions(options: readonly TcpOption[]): TcpOption[] {
  return options.map((o) => (o.kind === "unknown" ? { ...o, data: Uint8Array.from(o.data) } : { ...o }));
}

type Phase = "syn" | "open" | "closed";

interface HeldClose {
  kind: "fin" | "rst";
  /** The original's segment in the client's addressing, ready to release. */
  segment: TcpSegment;
  since: number;
  released: boolean;
}

export class ReplicatedConnection {
  phase: Phase = "syn";
  readonly client: ByteStream;
  clientFinOffset: number | undefined;
  clientRst = false;
  /** Original reply stream units the client acknowledged (data bytes, +1 for the FIN). */
  clientAckOffset = 0;
  lastClientWindow: number;
  lastClientTsval: number | undefined;
  readonly clientSynOptions: TcpOption[];
  readonly clientSynWindow: number;

  natPort: number | undefined;
  originalIsn: number | undefined;
  readonly original: ByteStream;
  originalFinOffset: number | undefined;
  originalAckOffset = 0;
  held: HeldClose | undefined;

  // --- the original's side as the client knows it (needed to splice a replica in) ---
  originalWscale = 0;
  originalMss = 536;
  lastOriginalTsval: number | undefined;

  // --- after a promotion: the shadow that now serves the client ---
  spliced: ShadowConversation | undefined;
  /** Added to the replica's TSval so the client sees it continue the original's (PAWS). */
  tsOffset = 0;
  /** Reply offset up to which bytes were sent to the client (data units; FIN not included). */
  sentToClient = 0;
  spliceFinSent = false;
  /** When the spliced replica's FIN arrived: held while other replicas keep the connection open
   * (the new original may be dying), like the first original's close. */
  spliceFinSince: number | undefined;
  spliceFinReleased = false;
  /** Client-space ACK (offset) last sent to the client on the replica's behalf. */
  ackToClient = -1;
  /** When the kernel path's SYN to the original was seen (handshake RTT to the original). */
  natSynAt: { at: number; captureUs: number | undefined } | undefined;
  /** When the original's SYN-ACK went toward the client (µs; handshake RTT to the client), null
   * once it was retransmitted (which copy the client's ACK answers is unknown). */
  synAckAtUs: number | null | undefined;
  /** The client's ACK of the SYN-ACK when it was handled first (the capture channels are not
   * ordered with each other): timed once the SYN-ACK arrives. */
  handshakeAckAtUs: number | undefined;
  /** The original's data timed until the client acknowledges it (client-path RTT). */
  readonly rttToClient = new SegmentTimer();
  /** The client's data timed until the original acknowledges it (original-path RTT). */
  readonly rttToOriginal = new SegmentTimer();
  /** The original's TSvals until the client echoes them (client-path RTT, timestamp kind). */
  readonly echoToClient = new EchoTimer();
  /** The client's TSvals until the original echoes them (original-path RTT, timestamp kind). */
  readonly echoToOriginal = new EchoTimer();
  /** Since when a replica has answered bytes the original has not (failure detection). */
  replyAheadSince: number | undefined;
  /** Since when client bytes a replica acknowledged await the original's acknowledgement. */
  ackBehindSince: number | undefined;
  /** Since when client bytes await the original's acknowledgement (replicas or not). */
  unackedSince: number | undefined;
  /** Reset toward the client, waiting for its challenge ACK if the first RST missed (RFC 5961). */
  resetting = false;

  readonly shadows = new Map<string, ShadowConversation>();
  /** Replicas that joined after this connection opened: never promoted for it. */
  readonly notPromotable = new Set<string>();
  port: number | undefined;
  captureGap = false;
  /** Acknowledged-but-not-captured suspicions awaiting confirmation, per direction: the oldest
   * unresolved one, and the newest acknowledgement beyond it (watched once the oldest resolves). */
  readonly gapSuspects: Partial<
    Record<"client" | "original", GapSuspect & { next?: GapSuspect | undefined }>
  > = {};
  closedAt: number | undefined;
  /** Bytes this connection's own streams accounted for in the engine's totals. */
  accounted = 0;

  constructor(
    readonly key: number,
    readonly clientAddr: number,
    readonly clientPort: number,
    readonly clientIsn: number,
    syn: TcpSegment,
    readonly createdAt: number,
    maxOutOfOrder: number,
  ) {
    this.client = new ByteStream(0, maxOutOfOrder);
    this.original = new ByteStream(0, maxOutOfOrder);
    this.clientSynOptions = copyOptions(syn.options);
    this.clientSynWindow = syn.window;
    this.lastClientWindow = syn.window;
    this.lastClientTsval = findOption(syn.options, "timestamp")?.tsval;
  }

  get id(): string {
    return `${formatIPv4(this.clientAddr)}:${this.clientPort}`;
  }

  /** Client bytes still to deliver end at the FIN (or at what has arrived). */
  get clientFinReady(): boolean {
    return this.clientFinOffset !== undefined && this.client.end === this.clientFinOffset;
  }

  clientOffered(kind: TcpOption["kind"]): boolean {
    return this.clientSynOptions.some((o) => o.kind === kind);
  }
}

interface ReplicaCounters {
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
  buffered: number;
  rttSamples: number;
  lastSrttMs: number | undefined;
  /** Promoted to original: it serves its spliced connections and gets no new shadows. */
  promoted: boolean;
  /** Evidence that the replica itself failed, waiting to be confirmed by a probe. */
  suspect:
    | {
        since: number;
        /** The latest evidence (an alive answer to a probe sent before it does not clear it). */
        lastAt: number;
        kind: "fin" | "rst" | "stall";
        reason: string;
        conn?: ReplicatedConnection;
      }
    | undefined;
  /** When this replica was last probed because of evidence (rate limit). */
  lastEvidenceProbeAt: number;
}

/** Bytes acknowledged beyond what was captured: a capture gap unless the capture catches up. */
interface GapSuspect {
  /** Stream offset acknowledged. */
  offset: number;
  /** Capture time (µs) of the acknowledgement. */
  atUs: number;
  /** Engine time it was first seen. */
  since: number;
}

/** A probe asked of the I/O edge, not answered yet. */
interface PendingProbe {
  target: string;
  timeoutMs: number;
  /** Asked without evidence: an evidence-based probe does not wait for it. */
  periodic: boolean;
  /** Already the second, patient try after silence: its silence is a verdict. */
  patient: boolean;
  sentAt: number;
  reason: string;
}

type Verdict =
  | { verdict: "failed" | "suspect"; reason: string; conn: ReplicatedConnection; afterMs: number }
  | { verdict: "none" };

export class ReplicationEngine {
  private readonly conns = new Map<number, ReplicatedConnection>();
  private readonly byNatPort = new Map<number, ReplicatedConnection>();
  private readonly byShadowPort = new Map<number, ReplicatedConnection>();
  /** Original's segments for a NAT port not bound yet (channel skew), by port. */
  private readonly unbound = new Map<number, Array<{ seg: TcpSegment; at: number }>>();
  private unboundCount = 0;
  /** NATed SYNs seen before the client's SYN: client ISN -> NAT port. */
  private readonly pendingNat = new Map<number, number>();
  /** `counters.unmatched` by reason (a handful of fixed keys). */
  private readonly unmatchedBy: Record<string, number> = {};
  private readonly replicas = new Map<string, ReplicaCounters>();
  /** Capture time of the segment being handled (undefined: one ordered stream). */
  private captureUs: number | undefined;
  /** Engine time of the last packet handled per capture channel. */
  private readonly channelSeenAt = new Map<string, number>();
  /** Latest capture time seen per capture channel. */
  private readonly watermarkUs = new Map<string, number>();
  /** Which channel carries the client's and the original's segments. */
  private readonly channelOf: { client?: string; original?: string } = {};
  /** Connections with sends due at the next flush(). */
  private readonly dirty = new Set<ReplicatedConnection>();
  private out: EngineOutput[] = [];
  private ipId = 0;
  private nextPort: number;
  private totalBuffered = 0;
  private failuresDetected = 0;
  private promotions = 0;
  /** When the current original last sent anything (engine clock and capture clock). */
  private lastFromOriginal: { at: number; captureUs: number | undefined } | undefined;
  /** ...and when it last sent payload bytes. */
  private lastDataFromOriginal: { at: number; captureUs: number | undefined } | undefined;
  /** Probes asked of the I/O edge and not answered yet, by id. */
  private readonly probes = new Map<number, PendingProbe>();
  private nextProbeId = 1;
  private readonly probeCounters = { sent: 0, alive: 0, dead: 0, unknown: 0 };
  /** Per target ("original" or replica id): when the last probe answered alive was sent. Evidence
   * older than that is explained (the target was alive after it) and is not probed again. */
  private readonly aliveAt = new Map<string, number>();
  /** Candidates silent to their election probe: not promoted while a patient second probe decides
   * whether they are dead (silence alone, on a busy machine, does not remove a replica). */
  private readonly passedOver = new Set<string>();
  /** How long the original trails its fastest replica when it answers later than one. */
  private originalLag = new DelayEstimator();
  /** Handshake RTT from the appliance to the original. */
  private originalRtt = new DelayEstimator();
  /** Passive RTT histograms of every path (observability; detection uses its own estimators). */
  private readonly rtt = new RttTracker();
  /** The latest engine time seen (stats() reads windowed histograms against it). */
  private lastNow = 0;
  private replicasFailed = 0;
  private lastStallProbeAt = -Infinity;
  /** The original failed; the best replica is being asked whether it is alive (runElection). */
  private election: { since: number; reason: string } | undefined;
  /** The original's refusals of new connections, waiting for a probe's verdict. */
  private heldRefusals: Array<{ segment: TcpSegment; at: number }> = [];
  private refusalsDropped = 0;
  /** Dead probe answers waiting for the capture channels to catch up (see settleVerdicts). */
  private readonly deadVerdicts: Array<{
    probe: PendingProbe;
    why: string;
    sentUs: number | undefined;
    receivedAt: number;
  }> = [];
  /** When each target was last probed (periodic probes count from there). */
  private readonly lastProbeAt = new Map<string, number>();
  /** A failure of the current original was signalled already. */
  private failureSignaled = false;
  /** A planned pause of the original (a fork copies its disk while it is paused): nothing seen
   * in [from, until) counts as its failure. */
  private hold: { from: number; until: number } | undefined;
  private holdEnded: { from: number; until: number } | undefined;
  /** Stall clocks never start before this (the end of the last hold). */
  private stallClockFloor = -Infinity;

  private readonly counters = {
    client: 0,
    original: 0,
    natSyn: 0,
    replica: 0,
    unmatched: 0,
    notFromOriginal: 0,
    opened: 0,
    closed: 0,
    notReplicated: 0,
    halfOpenExpired: 0,
    clientBytes: 0,
    originalBytes: 0,
    captureGaps: 0,
    closeHoldTimeouts: 0,
    closesReleased: 0,
  };
  private readonly rejected: Record<string, number> = {};
  /** Replicas being drained (drainReplica): no shadow for new connections. */
  private readonly draining = new Set<string>();

  /** The current original (it changes when a replica is promoted). */
  private original: number;

  constructor(readonly config: EngineConfig) {
    this.nextPort = config.portRange[0];
    this.original = config.original;
  }

  get originalAddress(): number {
    return this.original;
  }

  // ------------------------------------------------------------------ public interface

  /** Outputs produced since the last drain, in order. */
  drain(): EngineOutput[] {
    const o = this.out;
    this.out = [];
    return o;
  }

  /** Counts a packet the I/O edge could not parse. */
  reject(reason: string): void {
    this.rejected[reason] = (this.rejected[reason] ?? 0) + 1;
  }

  addReplica(info: ReplicaInfo): void {
    if (this.replicas.has(info.id)) throw new Error(`replica ${info.id} exists already`);
    for (const r of this.replicas.values()) {
      if (r.info.address === info.address)
        throw new Error(`replica address ${formatIPv4(info.address)} is ${r.info.id}'s`);
    }
    this.replicas.set(info.id, {
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
      promoted: false,
      suspect: undefined,
      lastEvidenceProbeAt: -Infinity,
    });
    // Connections already open started before this replica had their bytes: it gets only new ones.
    for (const c of this.conns.values()) c.notPromotable.add(info.id);
    this.event({ type: "replica-added", replica: info.id });
  }

  removeReplica(id: string): void {
    if (!this.replicas.has(id)) throw new Error(`no replica ${id}`);
    for (const [k, p] of this.probes) if (p.target === id) this.probes.delete(k);
    this.aliveAt.delete(id);
    this.passedOver.delete(id);
    this.lastProbeAt.delete(id);
    for (const c of this.conns.values()) {
      const s = c.shadows.get(id);
      if (!s) continue;
      if (s.live) this.sendRst(c, s);
      this.closeShadow(c, s);
      this.account(c);
      c.shadows.delete(id);
    }
    this.replicas.delete(id);
    this.draining.delete(id);
    this.rtt.removeReplica(id);
    this.event({ type: "replica-removed", replica: id });
  }

  /**
   * Drains replica `id` before its removal: connections opened from now on get no shadow on it;
   * the open ones continue (and it stays promotable for them) until they close or it is removed.
   */
  drainReplica(id: string): void {
    if (!this.replicas.has(id)) throw new Error(`no replica ${id}`);
    this.draining.add(id);
  }

  replicaIds(): string[] {
    return [...this.replicas.keys()];
  }

  connection(clientAddr: number, clientPort: number): ReplicatedConnection | undefined {
    return this.conns.get(clientAddr * 65536 + clientPort);
  }

  connections(): IterableIterator<ReplicatedConnection> {
    return this.conns.values();
  }

  /**
   * Sends what the segments since the last flush made due: client bytes to each replica (as few,
   * as large segments as the window allows) and owed ACKs. The I/O edge calls it after each batch
   * of captured segments, so the more segments arrive together, the fewer go out: when the engine
   * falls behind, it batches more instead of falling further behind.
   */
  flush(now: number): void {
    for (const conn of this.dirty) {
      if (conn.spliced) this.forwardToClient(conn, conn.spliced, undefined, 0);
      for (const s of conn.shadows.values()) {
        if (s.state !== "open") continue;
        const before = s.segmentsSent;
        this.trySend(conn, s, now);
        const sentData = s.segmentsSent !== before;
        if (s.ackOwed || (!sentData && this.ackFor(conn, s) > s.rcvAcked)) this.sendAck(conn, s);
        s.ackOwed = false;
        if (s.sndWnd === 0 && s.sndNxt < conn.client.end && s.rtoDeadline === undefined) {
          s.rtoDeadline = now + s.rtoMs; // persist timer: probe the zero window
        }
      }
    }
    this.dirty.clear();
  }

  /**
   * One captured segment. `capture` tells its channel and capture time when segments come from
   * several capture channels (each in order, but not ordered with each other).
   */
  onSegment(seg: TcpSegment, now: number, capture?: { channel: string; timeUs: number }): void {
    const c = this.config;
    this.captureUs = capture?.timeUs;
    this.lastNow = now;
    if (capture) {
      const wm = this.watermarkUs.get(capture.channel);
      if (wm === undefined || capture.timeUs > wm) this.watermarkUs.set(capture.channel, capture.timeUs);
      this.channelSeenAt.set(capture.channel, now);
    }
    if (seg.dst === c.vip && seg.dstPort === c.port) {
      this.counters.client++;
      if (capture) this.channelOf.client = capture.channel;
      this.onClient(seg, now);
    } else if (seg.src === this.original && seg.srcPort === c.port && seg.dst === c.snatAddress) {
      this.counters.original++;
      if (capture) this.channelOf.original = capture.channel;
      this.onOriginal(seg, now);
    } else if (seg.dst === this.original && seg.dstPort === c.port && seg.src === c.snatAddress) {
      if ((seg.flags & (SYN | ACK)) === SYN) {
        this.counters.natSyn++;
        this.onNatSyn(seg, now);
      }
    } else if (seg.dst === c.snatAddress && seg.srcPort === c.port) {
      // A fenced former original (a dying kernel retransmitting its FIN, say) or a probe's answer:
      // nothing it sends may reach a client or count as the current original's activity.
      this.counters.notFromOriginal++;
    } else if (seg.dst === c.replicationAddress && seg.srcPort === c.port) {
      this.counters.replica++;
      this.onReplica(seg, now);
    } else {
      this.unmatched("foreign-flow");
    }
    this.captureUs = undefined;
  }

  /** Runs timers; returns the next time tick() has work, or undefined. */
  tick(now: number): number | undefined {
    this.lastNow = now;
    let next: number | undefined;
    const want = (t: number) => {
      if (next === undefined || t < next) next = t;
    };
    if (this.hold && now >= this.hold.until) this.endHold(this.hold.until);
    const holding = this.hold !== undefined;
    let failed: Verdict | undefined;
    let suspect: Verdict | undefined;
    if (this.unboundCount > 0) {
      this.expireUnbound(now);
      for (const list of this.unbound.values()) want(list[0]!.at + this.config.synTimeoutMs);
    }
    // Verdicts first: a promotion they cause changes what the connections below are measured
    // against (evidence gathered against the old original must not fail the new one over).
    this.settleVerdicts(now, want);
    for (const conn of [...this.conns.values()]) {
      if (conn.phase === "syn") {
        const expiry = conn.createdAt + this.config.synTimeoutMs;
        if (now >= expiry) {
          this.counters.halfOpenExpired++;
          this.deleteConnection(conn);
          continue;
        }
        want(expiry);
      }
      if (conn.gapSuspects.client || conn.gapSuspects.original) {
        const g = this.checkGaps(conn, now);
        if (g !== undefined) want(g);
      }
      {
        // Every connection, also after a signal: it releases held closes of spliced connections
        // and schedules its own next look. The first verdict counts.
        const f = this.detectFailure(conn, now, want);
        if (f.verdict === "failed") failed ??= f;
        else if (f.verdict === "suspect") suspect ??= f;
      }
      if (conn.held && !conn.held.released) {
        // A replica still sending toward its close is not a failure, only slower: the hold
        // expires finHoldMs after the last progress of any replica it waits for.
        let last = conn.held.since;
        for (const s of conn.shadows.values())
          if (s.comparing && s.lastProgressAt > last) last = s.lastProgressAt;
        const deadline = last + this.config.finHoldMs;
        if (now >= deadline) this.releaseClose(conn, now, true);
        else want(deadline);
      }
      for (const s of conn.shadows.values()) {
        if (s.rtoDeadline === undefined) continue;
        if (now >= s.rtoDeadline) this.onRto(conn, s, now);
        if (s.rtoDeadline !== undefined) want(s.rtoDeadline);
      }
      if (conn.phase === "closed" && conn.closedAt !== undefined) {
        const end = conn.closedAt + this.config.lingerMs;
        if (now >= end) {
          this.deleteConnection(conn);
          continue;
        }
        want(end);
      }
    }
    if (this.heldRefusals.length > 0) {
      this.releaseRefusals((r) => now - r.at >= REFUSAL_HOLD_MS);
      if (this.heldRefusals.length > 0) want(this.heldRefusals[0]!.at + REFUSAL_HOLD_MS);
    }
    this.checkReplicas(now, want);
    this.runElection(now);
    this.periodicProbes(now, want);
    if (this.failureSignaled) return next;
    if (holding) {
      want(this.hold!.until);
      return next;
    }
    if (failed?.verdict === "failed") {
      this.originalFailed(failed.reason, failed.conn.id, failed.afterMs, now);
    } else if (suspect?.verdict === "suspect") {
      if (!suspect.reason.startsWith(CLOSE_ALONE)) this.lastStallProbeAt = now;
      this.probeOriginal(suspect.reason, now);
    }
    return next;
  }

  /**
   * Evidence, seen on one connection, that the original failed: it closed alone (replicas caught
   * up to the same offset did not close), or it stopped answering what replicas answered, or it
   * stopped acknowledging client bytes the replicas acknowledged. "suspect": ask a probe (a dead
   * port or no answer confirms); "failed": no doubt left. Reports when to look again via `want`.
   */
  private detectFailure(conn: ReplicatedConnection, now: number, want: (t: number) => void): Verdict {
    if (conn.phase !== "open") return { verdict: "none" };
    const f = this.config.failure;
    if (conn.spliced) return this.detectSplicedClose(conn, conn.spliced, now, want);
    const healthy = [...conn.shadows.values()].filter((s) => s.comparing);
    if (healthy.length === 0) return { verdict: "none" };
    const aliveAt = this.aliveAt.get("original") ?? -Infinity;
    const held = conn.held;
    if (held && !held.released && held.since > aliveAt) {
      // A replica that received everything the original had received (the same client bytes,
      // FIN included) and answered everything it answered, but did not close: the original's
      // close was not the service's decision. Counted from when the replica was caught up, so a
      // replica that is merely late (engine lag) is never mistaken for a survivor.
      let since: number | undefined;
      for (const s of healthy) {
        const caughtUp =
          held.kind === "rst"
            ? !s.replicaRst && Math.max(0, s.sndUna) >= conn.originalAckOffset
            : s.replicaFinOffset === undefined &&
              s.compared >= (conn.originalFinOffset ?? Infinity) &&
              Math.max(0, s.sndUna) >= conn.originalAckOffset;
        if (caughtUp) {
          const t = Math.max(held.since, s.caughtUpAt);
          since = since === undefined ? t : Math.min(since, t);
        }
      }
      if (since !== undefined) {
        if (now - since >= f.closeMismatchMs) {
          const reason = `${CLOSE_ALONE} (${held.kind === "rst" ? "reset" : "closed"})`;
          return { verdict: f.probes ? "suspect" : "failed", reason, conn, afterMs: now - since };
        }
        want(since + f.closeMismatchMs);
      }
    }
    // Stalls only count while the original sends nothing at all, on any connection: a busy or
    // slow original keeps sending elsewhere; a frozen, unplugged or vanished one does not. A
    // frozen application's kernel still sends ACKs, so the long reply stall counts data only.
    const ahead = healthy.some((s) => s.reply.end > conn.original.end);
    if (ahead) conn.replyAheadSince ??= now;
    else conn.replyAheadSince = undefined;
    const behind =
      conn.client.end > conn.originalAckOffset &&
      healthy.some((s) => Math.max(0, s.sndUna) > conn.originalAckOffset);
    if (behind) conn.ackBehindSince ??= now;
    else conn.ackBehindSince = undefined;
    if (conn.client.end > conn.originalAckOffset) conn.unackedSince ??= now;
    else conn.unackedSince = undefined;
    const floor = this.stallClockFloor;
    if (conn.replyAheadSince !== undefined && conn.replyAheadSince < floor) conn.replyAheadSince = floor;
    if (conn.ackBehindSince !== undefined && conn.ackBehindSince < floor) conn.ackBehindSince = floor;
    if (conn.unackedSince !== undefined && conn.unackedSince < floor) conn.unackedSince = floor;
    const silentAny = this.silentMs(this.lastFromOriginal, now);
    const silentData = this.silentMs(this.lastDataFromOriginal, now);
    const suspectMs = this.stallSuspectMs();
    const stalls: Array<[number | undefined, number, number, string]> = [
      [
        conn.replyAheadSince,
        this.appStallMs(f.replyStallMs),
        silentData,
        "the original stopped answering what the replicas answer",
      ],
      [
        conn.ackBehindSince,
        this.appStallMs(f.ackStallMs),
        silentAny,
        "the original stopped acknowledging what the replicas acknowledge",
      ],
      // Only a suspicion (a probe decides): it needs no replica to have answered yet, so an
      // engine running behind its replicas does not delay the detection.
      [conn.unackedSince, Infinity, silentAny, "the original stopped acknowledging the client's bytes"],
    ];
    let suspicion: Verdict = { verdict: "none" };
    for (const [since, limit, silent, reason] of stalls) {
      if (since === undefined) continue;
      if (now - since >= limit && silent >= limit)
        return { verdict: "failed", reason, conn, afterMs: now - since };
      if (limit !== Infinity) want(Math.max(since + limit, now + Math.max(0, limit - silent)));
      // A suspicion the last probe already answered is not asked again; nor, to bound what probes
      // cost a slow original, more often than every STALL_PROBE_INTERVAL_MS.
      if (!f.probes || since <= aliveAt) continue;
      const allowed = this.lastStallProbeAt + STALL_PROBE_INTERVAL_MS;
      if (now - since >= suspectMs && silentAny >= suspectMs && now >= allowed) {
        if (suspicion.verdict === "none")
          suspicion = { verdict: "suspect", reason, conn, afterMs: now - since };
      } else {
        want(Math.max(since + suspectMs, now + Math.max(0, suspectMs - silentAny), allowed));
      }
    }
    return suspicion;
  }

  /**
   * A spliced connection's new original (the promoted replica) closed it: its FIN waits while
   * another replica, caught up with the client's bytes, keeps the connection open, up to finHoldMs
   * after the last progress (then it goes out). Still open after closeMismatchMs: the current
   * original is suspected (probe). If it fails over, the connection is reset: never closed as if
   * the service had finished.
   */
  private detectSplicedClose(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    now: number,
    want: (t: number) => void,
  ): Verdict {
    const since = conn.spliceFinSince;
    if (since === undefined || conn.spliceFinSent || conn.spliceFinReleased) return { verdict: "none" };
    const other = this.survivor(conn, s);
    if (!other) {
      this.forwardToClient(conn, s, undefined, 0);
      return { verdict: "none" };
    }
    const release = Math.max(since, other.lastProgressAt) + this.config.finHoldMs;
    if (now >= release) {
      conn.spliceFinReleased = true;
      this.forwardToClient(conn, s, undefined, 0);
      return { verdict: "none" };
    }
    want(release);
    const f = this.config.failure;
    const caughtUp = Math.max(0, other.sndUna) >= Math.max(0, s.sndUna);
    if (!caughtUp || since <= (this.aliveAt.get("original") ?? -Infinity)) return { verdict: "none" };
    if (now - since < f.closeMismatchMs) {
      want(since + f.closeMismatchMs);
      return { verdict: "none" };
    }
    const reason = `${CLOSE_ALONE} (closed after a promotion)`;
    return { verdict: f.probes ? "suspect" : "failed", reason, conn, afterMs: now - since };
  }

  /** Another replica still holding `conn` open (the caught-up one first). */
  private survivor(conn: ReplicatedConnection, s: ShadowConversation): ShadowConversation | undefined {
    let found: ShadowConversation | undefined;
    for (const x of conn.shadows.values()) {
      if (x === s || !x.live || x.replicaRst || x.replicaFinOffset !== undefined) continue;
      if (Math.max(0, x.sndUna) >= Math.max(0, s.sndUna)) return x;
      found ??= x;
    }
    return found;
  }

  /** The stall suspicion threshold: derived from the RTT to the original (a probe confirms, so
   * a wrong suspicion only costs a connection attempt), bounded below. */
  private stallSuspectMs(): number {
    return Math.max(this.config.failure.stallSuspectMs, 2 * this.originalRtt.bound(4, 0));
  }

  /** A stall no probe confirmed (the kernel answers, the application does not): at least the
   * configured floor and well beyond how far the original has been seen to trail. */
  private appStallMs(floorMs: number): number {
    return this.originalLag.bound(8, floorMs);
  }

  /** How long a probe of the original may take: a few of its handshake RTTs, measured on the
   * capture clock (probe handshakes timed through the event loop carry the proxy's own lag, up to
   * 7 ms at start-up, and would slow detection for nothing). */
  private probeTimeoutMs(): number {
    return Math.max(this.config.failure.probeTimeoutMs, 4 * this.originalRtt.bound(4, 0));
  }

  /**
   * How long the original has sent nothing since `last`. With capture times: measured on the
   * capture clock of the channel that carries the original (other packets captured later prove
   * the silence even when the engine itself lags); without: on the engine's clock.
   */
  private silentMs(last: { at: number; captureUs: number | undefined } | undefined, now: number): number {
    if (!last) return Infinity;
    const channel = this.channelOf.original;
    const wm = channel === undefined ? undefined : this.watermarkUs.get(channel);
    if (last.captureUs !== undefined && wm !== undefined) {
      // The capture clock proves silence while packets keep coming; when the channel itself goes
      // quiet (nothing left to process), real time passing is silence too.
      const idle = now - (this.channelSeenAt.get(channel!) ?? now);
      return (wm - last.captureUs) / 1000 + idle;
    }
    return now - last.at;
  }

  /**
   * Evidence against the original: probe it, and at the same moment the replica that would
   * replace it. If the original is dead the candidate's answer is there already (no second round
   * trip before the promotion), and its packets move the backend capture channel past the probe's
   * send time, so the verdict need not wait for CATCH_UP_MS.
   */
  private probeOriginal(reason: string, now: number): void {
    this.requestProbe("original", this.original, reason, now, this.probeTimeoutMs());
    const best = this.bestReplica();
    const r = best === undefined ? undefined : this.replicas.get(best);
    if (!r || !this.config.failure.autoFailover) return;
    const timeout = Math.max(this.config.failure.probeTimeoutMs, 4 * (r.lastSrttMs ?? 0));
    this.requestProbe(r.info.id, r.info.address, `replica ${r.info.id}: ${CANDIDATE}`, now, timeout);
  }

  /** Probes every backend each probeIntervalMs, evidence or not (idle services fail too). */
  private periodicProbes(now: number, want: (t: number) => void): void {
    const f = this.config.failure;
    if (!f.probes || f.probeIntervalMs <= 0) return;
    const due = (target: string) => {
      const at = (this.lastProbeAt.get(target) ?? -Infinity) + f.probeIntervalMs;
      if (now >= at) return true;
      want(at);
      return false;
    };
    if (this.hold) want(this.hold.until);
    else if (!this.failureSignaled && due("original"))
      this.requestProbe("original", this.original, PERIODIC, now, 4 * this.probeTimeoutMs());
    for (const r of this.replicas.values()) {
      if (r.promoted || !due(r.info.id)) continue;
      const timeout = 4 * Math.max(f.probeTimeoutMs, 4 * (r.lastSrttMs ?? 0));
      this.requestProbe(r.info.id, r.info.address, `replica ${r.info.id}: ${PERIODIC}`, now, timeout);
    }
  }

  /** Asks the I/O edge to probe `target` unless a probe of it is under way already. */
  private requestProbe(
    target: string,
    address: number,
    reason: string,
    now: number,
    timeoutMs: number,
    patient = false,
  ): void {
    const periodic = reason.endsWith(PERIODIC);
    for (const p of this.probes.values()) {
      // Evidence does not wait for a periodic probe's longer deadline; anything else waits.
      if (p.target === target && (!p.periodic || periodic)) return;
    }
    this.lastProbeAt.set(target, now);
    const id = this.nextProbeId++;
    this.probes.set(id, { target, sentAt: now, reason, periodic, patient, timeoutMs });
    this.probeCounters.sent++;
    // `periodic` tells the edge to be patient with the health check (4 × its timeout).
    this.out.push({
      type: "probe",
      id,
      target,
      address,
      timeoutMs: Math.ceil(timeoutMs),
      reason,
      periodic: periodic || patient,
    });
  }

  /**
   * The answer to a "probe" output: did the target's service port accept a connection in time?
   * Alive: the evidence so far is explained (a normal close, a slow answer) and is not probed
   * again. Dead (refused, unreachable, no answer): the original fails over, a replica is removed.
   */
  probeResult(id: number, alive: boolean | undefined, now: number, why = "no answer", sentUs?: number): void {
    const p = this.probes.get(id);
    if (!p) return;
    this.probes.delete(id);
    if (alive === undefined) {
      // The probe could not be made (a local error: no port, no buffer): no verdict either way;
      // evidence that persists asks again.
      this.probeCounters.unknown++;
      return;
    }
    this.event({ type: "probe-result", target: p.target, alive, reason: p.reason, afterMs: now - p.sentAt });
    if (alive) {
      if (p.target === "original") this.releaseRefusals((r) => r.at <= p.sentAt);
      this.probeCounters.alive++;
      this.aliveAt.set(p.target, Math.max(this.aliveAt.get(p.target) ?? -Infinity, p.sentAt));
      this.passedOver.delete(p.target);
      const r = this.replicas.get(p.target);
      if (r?.suspect && r.suspect.since <= p.sentAt) {
        if (r.suspect.lastAt > p.sentAt) r.suspect = { ...r.suspect, since: r.suspect.lastAt };
        else r.suspect = undefined;
      }
      if (this.election) this.runElection(now);
      return;
    }
    const candidate = this.replicas.get(p.target);
    const isOriginal = p.target === "original";
    if (!REFUSALS.has(why) && !p.patient && (p.periodic || !isOriginal)) {
      // Only silence, and the first try: one lost SYN or SYN-ACK (a lossy link, a busy kernel)
      // must not remove a backend. Asked again at once; that answer decides. Only the original
      // with evidence against it is urgent (its clients stall); a replica's removal is not, and
      // a removed replica is not re-admitted by itself, so a replica gets a patient deadline that
      // covers one SYN retransmission (and a stall of the appliance longer than one deadline: a
      // loaded machine, a WAN replica whose deadline is its round trip plus 10 ms).
      this.probeCounters.unknown++;
      const address = isOriginal ? this.original : candidate?.info.address;
      const timeoutMs = isOriginal
        ? p.timeoutMs
        : Math.max(PATIENT_REPLICA_PROBE_FACTOR * p.timeoutMs, PATIENT_REPLICA_PROBE_MIN_MS);
      if (candidate && p.reason.endsWith(CANDIDATE)) {
        // A candidate silent within the election's short deadline is not promoted (a silently
        // dying replica must never be): it is passed over at once (the next best is asked).
        this.passedOver.add(p.target);
      }
      if (address !== undefined)
        this.requestProbe(p.target, address, `${p.reason} unanswered`, now, timeoutMs, true);
      if (candidate && p.reason.endsWith(CANDIDATE) && this.election) this.runElection(now);
      return;
    }
    this.probeCounters.dead++;
    // The answer came on its own path: segments captured before the probe may still be on their
    // way through the capture channels (a replica that reset every connection a moment earlier
    // must not be chosen for the promotion). The verdict waits until every channel delivered
    // something captured after the probe was sent (`sentUs`, wall clock like capture times):
    // channels are FIFO, so everything before it is in. The probe's own packets (its SYN on the
    // client channel, the answer on the backend one) make sure something comes.
    this.deadVerdicts.push({ probe: p, why, sentUs, receivedAt: now });
    this.settleVerdicts(now, () => undefined);
  }

  /** Acts on dead probe answers once every capture channel has delivered what was captured
   * before the probe (or CATCH_UP_MS passed). */
  private settleVerdicts(now: number, want: (t: number) => void): void {
    // Replicas first: a dying replica must be gone before the original's verdict elects one.
    this.deadVerdicts.sort(
      (a, b) => Number(a.probe.target === "original") - Number(b.probe.target === "original"),
    );
    const keep: typeof this.deadVerdicts = [];
    for (const v of this.deadVerdicts) {
      const p = v.probe;
      // A probe sent later answered alive: that newer answer wins (one lost SYN is not a death).
      if ((this.aliveAt.get(p.target) ?? -Infinity) >= p.sentAt) continue;
      let caughtUp = true;
      if (v.sentUs !== undefined)
        for (const wm of this.watermarkUs.values()) if (wm < v.sentUs) caughtUp = false;
      const deadline = v.receivedAt + CATCH_UP_MS;
      if (!caughtUp && now < deadline) {
        keep.push(v);
        want(Math.min(deadline, now + 1));
        continue;
      }
      const reason = `${p.reason}; probe of its service port: ${v.why}`;
      if (p.target === "original" && this.heldAt(p.sentAt, now)) {
        // The original was paused on purpose: its silence is no verdict.
        this.probeCounters.unknown++;
        continue;
      }
      if (p.target === "original") {
        if (!this.failureSignaled) this.originalFailed(reason, "", now - p.sentAt, now, p.sentAt);
      } else {
        this.replicaFailed(p.target, reason, now);
      }
    }
    this.deadVerdicts.length = 0;
    this.deadVerdicts.push(...keep);
  }

  /**
   * The original is about to be paused on purpose for up to `ms` (a fork of its disk): until
   * releaseHold() or the deadline, its silence is not a failure. Stall clocks restart when the
   * hold ends, so a stall must then last its full threshold again. Bounded: a hold that is never
   * released ends by itself.
   */
  holdOriginal(ms: number, now: number): void {
    const until = now + Math.min(Math.max(0, ms), MAX_HOLD_MS);
    this.hold = { from: this.hold?.from ?? now, until: Math.max(until, this.hold?.until ?? -Infinity) };
  }

  /** The planned pause is over (the original was resumed). */
  releaseHold(now: number): void {
    if (!this.hold) return;
    this.hold.until = Math.min(this.hold.until, now);
    this.endHold(now);
  }

  /** Whether the original was on hold at `t` (or is now). */
  private heldAt(t: number, now: number): boolean {
    for (const h of [this.hold, this.holdEnded])
      if (h && ((t >= h.from && t < h.until) || (h === this.hold && now < h.until))) return true;
    return false;
  }

  private endHold(now: number): void {
    this.holdEnded = this.hold;
    this.hold = undefined;
    this.restartStallClocks(now);
  }

  /** Stalls are counted from now on at the earliest. */
  private restartStallClocks(now: number): void {
    this.stallClockFloor = now;
  }

  /** Held refusals go to their clients (those `which` selects). */
  private releaseRefusals(which: (r: { at: number }) => boolean): void {
    const keep: typeof this.heldRefusals = [];
    for (const r of this.heldRefusals) {
      if (which(r)) this.out.push({ type: "send", segment: r.segment, to: "client" });
      else keep.push(r);
    }
    this.heldRefusals = keep;
  }

  /** One signal per original: it is either promoted away now, or left to the operator. */
  private originalFailed(reason: string, conn: string, afterMs: number, now: number, since = now): void {
    this.failureSignaled = true;
    this.failuresDetected++;
    this.event({ type: "original-failure", reason, conn, afterMs });
    if (!this.config.failure.autoFailover) {
      this.releaseRefusals(() => true); // nobody takes over: the refusals are the truth
      return;
    }
    // The refused clients retry their SYN and reach the new original (or, with no replica left,
    // the same refusal again, then delivered).
    this.refusalsDropped += this.heldRefusals.length;
    this.heldRefusals = [];
    this.election = { since, reason };
    this.runElection(now);
  }

  /**
   * Promotes the best replica once it proved alive after the failure (it may have died with the
   * original without a sign yet: a host or link gone silently): probed first, promoted on the
   * answer; a dead one is removed and the next best asked. Without probes: at once.
   */
  private runElection(now: number): void {
    const e = this.election;
    if (!e) return;
    const best = this.bestReplica();
    if (!best) {
      this.election = undefined;
      this.event({
        type: "no-replica-left",
        reason: `the original failed (${e.reason}) and no replica is left`,
      });
      return;
    }
    if (!this.config.failure.probes || (this.aliveAt.get(best) ?? -Infinity) >= e.since) {
      this.election = undefined;
      this.promote(best, now);
      return;
    }
    const r = this.replicas.get(best)!;
    const timeout = Math.max(this.config.failure.probeTimeoutMs, 4 * (r.lastSrttMs ?? 0));
    this.requestProbe(best, r.info.address, `replica ${best}: ${CANDIDATE}`, now, timeout);
  }

  /** Replica suspicions (it closed or reset alone, or stopped acknowledging) become probes. */
  private checkReplicas(now: number, want: (t: number) => void): void {
    const f = this.config.failure;
    for (const r of this.replicas.values()) {
      const sp = r.suspect;
      if (r.promoted || !sp) continue;
      const c = sp.conn;
      if (
        sp.kind === "fin" &&
        c &&
        (c.held !== undefined ||
          c.originalFinOffset !== undefined ||
          c.phase !== "open" ||
          this.conns.get(c.key) !== c)
      ) {
        r.suspect = undefined; // the original closed too (a normal close), or it is gone
        continue;
      }
      if (sp.kind === "fin" && c) {
        // A replica ahead of a slower original closes first: alone only once the original has
        // sent everything the replica sent before its FIN.
        const finAt = c.shadows.get(r.info.id)?.replicaFinOffset ?? 0;
        if (c.original.end < finAt) {
          sp.since = now;
          want(now + f.closeMismatchMs);
          continue;
        }
      }
      if (sp.since <= (this.aliveAt.get(r.info.id) ?? -Infinity)) {
        r.suspect = undefined;
        continue;
      }
      const due = sp.since + (sp.kind === "stall" ? 0 : f.closeMismatchMs);
      if (now < due) {
        want(due);
        continue;
      }
      if (f.probes) {
        const allowed = r.lastEvidenceProbeAt + STALL_PROBE_INTERVAL_MS;
        if (now < allowed) {
          want(allowed);
          continue;
        }
        r.lastEvidenceProbeAt = now;
        const timeout = Math.max(f.probeTimeoutMs, 4 * (r.lastSrttMs ?? 0));
        this.requestProbe(r.info.id, r.info.address, `replica ${r.info.id} ${sp.reason}`, now, timeout);
      }
    }
  }

  private suspectReplica(
    s: ShadowConversation,
    now: number,
    kind: "fin" | "rst" | "stall",
    reason: string,
    conn?: ReplicatedConnection,
  ): void {
    const r = this.replicas.get(s.replica.id);
    if (!r || r.promoted || !this.config.failure.probes) return;
    if (r.suspect) {
      r.suspect.lastAt = now; // newer evidence: re-armed if the pending probe answers alive
      return;
    }
    r.suspect = { since: now, lastAt: now, kind, reason, ...(conn ? { conn } : {}) };
  }

  /** A replica is dead: it is removed (its shadows reset, its state freed); the others go on. */
  private replicaFailed(id: string, reason: string, now: number): void {
    const r = this.replicas.get(id);
    if (!r || r.promoted) return;
    this.replicasFailed++;
    this.event({ type: "replica-failure", replica: id, reason });
    this.removeReplica(id);
    if (this.election) this.runElection(now);
    else if (this.promotableCount() === 0)
      this.event({ type: "no-replica-left", reason: `replica ${id} failed: the service runs unreplicated` });
  }

  private promotableCount(): number {
    let n = 0;
    for (const r of this.replicas.values()) if (!r.promoted) n++;
    return n;
  }

  /** Could connection `conn` continue on replica `id`'s shadow, byte-exact? */
  private canSplice(conn: ReplicatedConnection, id: string): boolean {
    const s = conn.shadows.get(id);
    return (
      s !== undefined &&
      s.state === "open" &&
      s.status === "healthy" &&
      !s.replicaRst &&
      // A replica that closed where the original did not is dying too (or wrong): not spliced.
      (s.replicaFinOffset === undefined || s.replicaFinOffset === conn.originalFinOffset) &&
      !conn.notPromotable.has(id) &&
      conn.originalIsn !== undefined &&
      s.replicaIsn !== undefined &&
      !conn.captureGap
    );
  }

  /**
   * The replica to promote: not promoted, not suspected of failing itself, the one that can carry
   * the most open connections on (healthy, faithful shadows, still open ones first), then the
   * lowest smoothed RTT.
   */
  bestReplica(): string | undefined {
    const dying = new Set(this.deadVerdicts.map((v) => v.probe.target));
    const doubted = new Set<string>();
    for (const p of this.probes.values())
      if (!p.periodic && !p.reason.endsWith(CANDIDATE)) doubted.add(p.target);
    let best: { r: ReplicaCounters; trusted: number; score: number } | undefined;
    for (const r of this.replicas.values()) {
      if (r.promoted || dying.has(r.info.id)) continue;
      // Suspected, or asked because of evidence: only when nothing better is left; passed over
      // in an election (silent to its probe): last of all.
      const trusted = this.passedOver.has(r.info.id) ? 0 : !r.suspect && !doubted.has(r.info.id) ? 2 : 1;
      // A shadow still open counts more than one that closed with the original: when the
      // original failed, a replica that closed at the same moment is likely failing with it.
      let score = 0;
      for (const c of this.conns.values()) {
        if (c.phase !== "open" || !this.canSplice(c, r.info.id)) continue;
        score += c.shadows.get(r.info.id)!.replicaFinOffset === undefined ? 2 : 1;
      }
      const better =
        !best ||
        trusted > best.trusted ||
        (trusted === best.trusted &&
          (score > best.score ||
            (score === best.score && (r.lastSrttMs ?? Infinity) < (best.r.lastSrttMs ?? Infinity))));
      if (better) best = { r, trusted, score };
    }
    return best?.r.info.id;
  }

  /** When the segment being handled was captured (µs), else the engine's time. */
  private nowUs(now: number): number {
    return this.captureUs ?? now * 1000;
  }

  /** The cumulative RTT histograms of every path, for exposition (Prometheus). */
  rttSeries(): RttSeries[] {
    return this.rtt.series();
  }

  stats(now = this.lastNow): EngineStats {
    const k = this.counters;
    const replicas: ReplicaStats[] = [...this.replicas.values()].map((r) => {
      let active = 0;
      for (const c of this.conns.values()) if (c.shadows.get(r.info.id)?.live) active++;
      return {
        id: r.info.id,
        address: formatIPv4(r.info.address),
        shadowsActive: active,
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
      };
    });
    let oooRefused = 0;
    for (const c of this.conns.values()) {
      oooRefused += c.client.oooRefused + c.original.oooRefused;
      for (const s of c.shadows.values()) oooRefused += s.reply.oooRefused;
    }
    return {
      packets: {
        client: k.client,
        original: k.original,
        natSyn: k.natSyn,
        replica: k.replica,
        unmatched: k.unmatched,
        unmatchedBy: { ...this.unmatchedBy },
        notFromOriginal: k.notFromOriginal,
      },
      rejected: { ...this.rejected },
      connections: {
        active: this.conns.size,
        opened: k.opened,
        closed: k.closed,
        notReplicated: k.notReplicated,
        halfOpenExpired: k.halfOpenExpired,
      },
      clientBytes: k.clientBytes,
      originalBytes: k.originalBytes,
      bufferedBytes: this.totalBuffered,
      outOfOrderRefusedBytes: oooRefused,
      captureGaps: k.captureGaps,
      failures: {
        detected: this.failuresDetected,
        promotions: this.promotions,
        original: formatIPv4(this.original),
        replicasLeft: this.promotableCount(),
        replicasFailed: this.replicasFailed,
        refusals: { held: this.heldRefusals.length, dropped: this.refusalsDropped },
        probes: { ...this.probeCounters },
        thresholds: {
          stallSuspectMs: this.stallSuspectMs(),
          replyStallMs: this.appStallMs(this.config.failure.replyStallMs),
          probeTimeoutMs: this.probeTimeoutMs(),
        },
      },
      closeHoldTimeouts: k.closeHoldTimeouts,
      closesReleased: k.closesReleased,
      replicas,
      rtt: this.rtt.stats(now),
    };
  }

  // ------------------------------------------------------------------ client side

  private onClient(seg: TcpSegment, now: number): void {
    const key = seg.src * 65536 + seg.srcPort;
    let conn = this.conns.get(key);
    if (seg.flags & SYN && !(seg.flags & ACK)) {
      if (conn && conn.clientIsn === seg.seq) return; // retransmitted SYN
      if (conn) this.abortConnection(conn); // the client reused its port: the old one is over
      if (this.conns.size >= this.config.limits.maxConnections) {
        this.counters.notReplicated++;
        return;
      }
      conn = new ReplicatedConnection(
        key,
        seg.src,
        seg.srcPort,
        seg.seq,
        seg,
        now,
        this.config.limits.outOfOrderBytes,
      );
      this.conns.set(key, conn);
      const nat = this.pendingNat.get(seg.seq);
      if (nat !== undefined) {
        this.pendingNat.delete(seg.seq);
        this.bindNat(conn, nat);
      }
      return;
    }
    if (!conn) {
      // A connection older than the engine (or one it refused): the kernel path serves it alone.
      this.unmatched("client-unknown-connection");
      return;
    }
    if (conn.phase === "closed" && conn.clientRst) return;
    if (conn.resetting) {
      // Linux answers an inexact RST with a challenge ACK (RFC 5961) naming rcv_nxt: reset there.
      if (!(seg.flags & RST) && seg.flags & ACK)
        this.out.push({ type: "send", segment: this.toClient(conn, seg.ack, RST | ACK), to: "client" });
      return;
    }

    if (seg.flags & RST) {
      conn.clientRst = true;
      this.resetShadows(conn, now);
      return;
    }

    const ts = findOption(seg.options, "timestamp");
    if (ts) {
      conn.lastClientTsval = ts.tsval;
      // After a splice the client echoes our translated TSvals and the original is gone.
      if (!conn.spliced) {
        const at = this.nowUs(now);
        const back = conn.echoToClient.echoed(ts.tsecr, at);
        if (back !== undefined) this.rtt.clientSample("timestamp", back, now, conn.shadows.size > 0);
        const early = conn.echoToOriginal.sent(ts.tsval, at, answerable(seg));
        if (early !== undefined) this.rtt.originalSample("timestamp", early, now);
      }
    }
    const oldWindow = conn.lastClientWindow;
    conn.lastClientWindow = seg.window;

    if (seg.flags & ACK) {
      if (conn.originalIsn === undefined) conn.originalIsn = seqAdd(seg.ack, -1);
      if (conn.phase === "syn") {
        if (typeof conn.synAckAtUs === "number")
          this.rtt.clientSample("handshake", this.nowUs(now) - conn.synAckAtUs, now, this.replicas.size > 0);
        else if (conn.synAckAtUs === undefined && this.captureUs !== undefined)
          conn.handshakeAckAtUs = this.captureUs;
        conn.synAckAtUs = null;
        this.openShadows(conn, now);
      }
      const ackOff = toOffset(seg.ack, conn.originalIsn, conn.clientAckOffset);
      if (ackOff > conn.clientAckOffset) conn.clientAckOffset = ackOff;
      const rtt = conn.rttToClient.acked(ackOff, this.nowUs(now));
      if (rtt !== undefined) this.rtt.clientSample("data", rtt, now, conn.shadows.size > 0);
      const replyEnd = conn.original.end + (conn.originalFinOffset === conn.original.end ? 1 : 0);
      // After a splice the client acknowledges the new original's bytes, which we send ourselves.
      if (
        !conn.spliced &&
        conn.clientAckOffset > replyEnd &&
        !conn.captureGap &&
        conn.originalIsn !== undefined
      ) {
        // The client acknowledged reply bytes we never captured: they cannot be verified.
        this.suspectGap(conn, "original", conn.clientAckOffset, now);
      }
    }

    if (seg.payload.length > 0 || seg.flags & FIN) {
      const off = toOffset(seg.seq, conn.clientIsn, conn.client.end);
      const early = conn.rttToOriginal.sent(off, off + seg.payload.length, this.nowUs(now));
      if (early !== undefined) this.rtt.originalSample("data", early, now);
      const grew = conn.client.write(off, seg.payload);
      this.counters.clientBytes += grew;
      if (conn.client.end > conn.originalAckOffset) conn.unackedSince ??= now;
      if (seg.flags & FIN && conn.clientFinOffset === undefined)
        conn.clientFinOffset = off + seg.payload.length;
    }

    for (const s of conn.shadows.values()) {
      if (s.state === "open" && oldWindow !== seg.window && s.lastWindowSent < seg.window) s.ackOwed = true;
    }
    this.dirty.add(conn);
    this.checkGaps(conn, now);
    this.checkDone(conn, now);
    this.enforceLimits(conn);
  }

  private onNatSyn(seg: TcpSegment, now: number): void {
    for (const conn of this.conns.values()) {
      // Unanswered, it may be bound already: after a failover the client's retransmitted SYN
      // goes to the new original, maybe from another NAT port. The latest binding wins.
      if (conn.phase === "syn" && conn.clientIsn === seg.seq && conn.originalIsn === undefined) {
        if (conn.natPort !== undefined && this.byNatPort.get(conn.natPort) === conn)
          this.byNatPort.delete(conn.natPort);
        conn.natSynAt = { at: now, captureUs: this.captureUs };
        this.bindNat(conn, seg.srcPort);
        return;
      }
    }
    // Bounded; the oldest entry goes first. SYNs from the appliance's own address that are not the
    // kernel path's (its probes) land here too and must not push out a real binding all at once.
    if (this.pendingNat.size >= 1024) this.pendingNat.delete(this.pendingNat.keys().next().value!);
    this.pendingNat.set(seg.seq, seg.srcPort);
  }

  private bindNat(conn: ReplicatedConnection, port: number): void {
    const old = this.byNatPort.get(port);
    if (old && old !== conn) old.natPort = undefined;
    conn.natPort = port;
    this.byNatPort.set(port, conn);
    const waiting = this.unbound.get(port);
    if (waiting) {
      this.unbound.delete(port);
      this.unboundCount -= waiting.length;
      for (const w of waiting) this.onOriginal(w.seg, w.at);
    }
  }

  /** A segment that belongs to no conversation the engine follows, counted by why. */
  private unmatched(reason: string, n = 1): void {
    this.counters.unmatched += n;
    this.unmatchedBy[reason] = (this.unmatchedBy[reason] ?? 0) + n;
  }

  /** Bounded: at most MAX_UNBOUND segments over all ports, each kept at most synTimeoutMs. */
  private holdUnbound(seg: TcpSegment, now: number): void {
    if (this.unboundCount >= MAX_UNBOUND) {
      this.unmatched("original-unbound-full");
      return;
    }
    const list = this.unbound.get(seg.dstPort) ?? [];
    list.push({
      seg: { ...seg, payload: Uint8Array.from(seg.payload), options: copyOptions(seg.options) },
      at: now,
    });
    this.unbound.set(seg.dstPort, list);
    this.unboundCount++;
  }

  private expireUnbound(now: number): void {
    for (const [port, list] of this.unbound) {
      if (now - list[0]!.at >= this.config.synTimeoutMs) {
        this.unbound.delete(port);
        this.unboundCount -= list.length;
        this.unmatched("original-unbound-expired", list.length);
      }
    }
  }

  private openShadows(conn: ReplicatedConnection, now: number): void {
    conn.phase = "open";
    this.counters.opened++;
    const port = this.allocatePort();
    if (port === undefined) {
      this.counters.notReplicated++;
      this.event({ type: "connection-opened", conn: conn.id, replicas: [] });
      return;
    }
    conn.port = port;
    this.byShadowPort.set(port, conn);
    for (const r of this.replicas.values()) {
      if (r.promoted || this.draining.has(r.info.id)) continue;
      const s = new ShadowConversation(r.info, this.config.rto.initialMs, this.config.limits.outOfOrderBytes);
      conn.shadows.set(r.info.id, s);
      r.shadowsOpened++;
      this.sendSyn(conn, s, now);
    }
    this.event({ type: "connection-opened", conn: conn.id, replicas: [...conn.shadows.keys()] });
  }

  private allocatePort(): number | undefined {
    const [lo, hi] = this.config.portRange;
    const span = hi - lo + 1;
    for (let i = 0; i < span; i++) {
      const p = this.nextPort;
      this.nextPort = p >= hi ? lo : p + 1;
      if (!this.byShadowPort.has(p)) return p;
    }
    return undefined;
  }

  // ------------------------------------------------------------------ original side

  private onOriginal(seg: TcpSegment, now: number): void {
    const conn = this.byNatPort.get(seg.dstPort);
    if (!conn) {
      // The NATed SYN that names this port travels on another capture channel and may not have
      // been handled yet: keep the segment a moment and replay it when the binding arrives.
      this.holdUnbound(seg, now);
      return;
    }
    if (this.foreign(conn, seg)) {
      this.counters.notFromOriginal++;
      return;
    }
    this.lastFromOriginal = { at: now, captureUs: this.captureUs };
    if (seg.payload.length > 0) this.lastDataFromOriginal = this.lastFromOriginal;
    const ots = findOption(seg.options, "timestamp");
    if (ots) conn.lastOriginalTsval = ots.tsval;
    if (seg.flags & SYN) {
      if (seg.flags & ACK) {
        const syn = conn.natSynAt;
        if (syn) {
          conn.natSynAt = undefined;
          const ms =
            syn.captureUs !== undefined && this.captureUs !== undefined
              ? (this.captureUs - syn.captureUs) / 1000
              : now - syn.at;
          // Detection's estimator keeps the samples it was tuned with (the SYN-ACK handled before
          // the client's ACK, see docs/PROGRESS.md); the histogram takes every handshake.
          if (conn.originalIsn === undefined) this.originalRtt.add(ms);
          this.rtt.originalSample("handshake", ms * 1000, now);
        }
        if (conn.handshakeAckAtUs !== undefined && conn.synAckAtUs === null) {
          // The client's ACK was handled first (another capture channel): timed now.
          this.rtt.clientSample(
            "handshake",
            conn.handshakeAckAtUs - this.nowUs(now),
            now,
            this.replicas.size > 0,
          );
          conn.handshakeAckAtUs = undefined;
        } else {
          conn.synAckAtUs = conn.synAckAtUs === undefined ? this.nowUs(now) : null;
        }
        if (conn.originalIsn === undefined) conn.originalIsn = seg.seq;
        const ws = findOption(seg.options, "wscale");
        conn.originalWscale = ws && conn.clientOffered("wscale") ? Math.min(14, ws.shift) : 0;
        conn.originalMss = findOption(seg.options, "mss")?.value ?? 536;
      }
      return;
    }
    if (seg.flags & RST && conn.phase === "syn") {
      // The original refused the connection: nothing listens on the service port. That is the
      // service failing unless a probe finds the port open: the refusal waits for the verdict.
      // Alive: it goes to the client as the kernel path would have delivered it. Dead: it is
      // dropped; the client's SYN retransmission finds the new original.
      const refusal = this.clientView(conn, seg);
      if (
        this.config.failure.probes &&
        !this.failureSignaled &&
        this.heldRefusals.length < MAX_HELD_REFUSALS
      ) {
        this.heldRefusals.push({ segment: refusal, at: now });
        const reason = "the original refused a connection";
        this.probeOriginal(reason, now);
      } else {
        this.out.push({ type: "send", segment: refusal, to: "client" });
      }
      this.deleteConnection(conn);
      return;
    }
    if (conn.originalIsn === undefined) {
      this.unmatched("original-before-syn-ack");
      return;
    }
    const ts = conn.spliced ? undefined : findOption(seg.options, "timestamp");
    if (ts) {
      const at = this.nowUs(now);
      const back = conn.echoToOriginal.echoed(ts.tsecr, at);
      if (back !== undefined) this.rtt.originalSample("timestamp", back, now);
      const early = conn.echoToClient.sent(ts.tsval, at, answerable(seg));
      if (early !== undefined) this.rtt.clientSample("timestamp", early, now, conn.shadows.size > 0);
    }
    if (seg.flags & ACK) {
      const ackOff = toOffset(seg.ack, conn.clientIsn, conn.originalAckOffset);
      const rtt = conn.rttToOriginal.acked(ackOff, this.nowUs(now));
      if (rtt !== undefined) this.rtt.originalSample("data", rtt, now);
      if (ackOff > conn.originalAckOffset) {
        conn.originalAckOffset = ackOff;
        // Progress: the stall clocks restart (a long upload always has bytes in flight, and one
        // alive probe must not silence its evidence for good).
        conn.unackedSince = conn.originalAckOffset >= conn.client.end ? undefined : now;
        if (conn.ackBehindSince !== undefined) conn.ackBehindSince = now;
      }
      const clientEnd = conn.client.end + (conn.clientFinReady ? 1 : 0);
      if (conn.originalAckOffset > clientEnd && !conn.captureGap) {
        this.suspectGap(conn, "client", conn.originalAckOffset, now);
      }
    }
    const off = toOffset(seg.seq, conn.originalIsn, conn.original.end);
    if (seg.payload.length > 0) {
      const early = conn.rttToClient.sent(off, off + seg.payload.length, this.nowUs(now));
      if (early !== undefined) this.rtt.clientSample("data", early, now, conn.shadows.size > 0);
      this.counters.originalBytes += conn.original.write(off, seg.payload);
      for (const s of conn.shadows.values()) this.compare(conn, s);
      if (conn.replyAheadSince !== undefined) {
        let ahead = false;
        for (const s of conn.shadows.values())
          if (s.comparing && s.reply.end > conn.original.end) ahead = true;
        if (!ahead) {
          // The original caught up with a replica that had answered first: how far it trails
          // when it does raises the unconfirmed-stall threshold. One sample is at most the
          // floor: a long episode (a replica far ahead in a download) must not blow it up.
          this.originalLag.add(Math.min(now - conn.replyAheadSince, this.config.failure.replyStallMs));
          conn.replyAheadSince = undefined;
        } else {
          conn.replyAheadSince = now; // progress: the stall clock restarts
        }
      }
    }
    if (seg.flags & (FIN | RST)) {
      const kind = seg.flags & RST ? "rst" : "fin";
      if (kind === "fin" && conn.originalFinOffset === undefined)
        conn.originalFinOffset = off + seg.payload.length;
      const view = this.clientView(conn, seg);
      if (conn.held?.released) {
        // A retransmission of what was released already (the client's ACK was lost): pass it on.
        this.out.push({ type: "send", segment: view, to: "client" });
      } else if (!conn.held || (kind === "rst" && conn.held.kind === "fin")) {
        conn.held = { kind, segment: view, since: conn.held?.since ?? now, released: false };
      }
      this.checkRelease(conn, now);
    }
    this.checkGaps(conn, now);
    this.enforceLimits(conn);
  }

  /**
   * A segment to the SNAT address from the original's port that is not this connection's: the
   * appliance's own probes come from the same address, with local ports that may equal a NAT port
   * (the original's answers to a probe then name a client connection's port). A SYN-ACK or a
   * refusal must acknowledge the client's SYN; other segments must fall near the connection's
   * sequence and acknowledgement offsets (capture skew is far below FOREIGN_WINDOW).
   */
  private foreign(conn: ReplicatedConnection, seg: TcpSegment): boolean {
    const acksClientSyn = (seg.flags & ACK) !== 0 && seg.ack === seqAdd(conn.clientIsn, 1);
    if (seg.flags & SYN) return !acksClientSyn;
    // Before its SYN-ACK only a refusal can be the original's (it acknowledges the client's SYN).
    // After it (even while the client's handshake is not seen yet: capture skew) the offsets decide.
    if (conn.originalIsn === undefined)
      return (seg.flags & RST) !== 0 && (seg.flags & ACK) !== 0 && !acksClientSyn;
    const near = (x: number, lo: number, hi: number) => x >= lo - FOREIGN_WINDOW && x <= hi + FOREIGN_WINDOW;
    if (seg.flags & ACK) {
      const ackOff = toOffset(seg.ack, conn.clientIsn, conn.originalAckOffset);
      if (!near(ackOff, conn.originalAckOffset, conn.client.end + 1)) return true;
    }
    const off = toOffset(seg.seq, conn.originalIsn, conn.original.end);
    return !near(off, conn.original.end, conn.original.end);
  }

  /** The original's segment as the kernel path would have delivered it to the client. */
  private clientView(conn: ReplicatedConnection, seg: TcpSegment): TcpSegment {
    return {
      ...seg,
      ttl: Math.max(1, seg.ttl - 1),
      src: this.config.vip,
      srcPort: this.config.port,
      dst: conn.clientAddr,
      dstPort: conn.clientPort,
      options: copyOptions(seg.options),
      ipOptions: Uint8Array.from(seg.ipOptions),
      payload: Uint8Array.from(seg.payload),
    };
  }

  /**
   * The original's FIN/RST reaches the client only once every replica still comparing closed the
   * same way at the same offset (a normal close), or when the hold time runs out.
   */
  private checkRelease(conn: ReplicatedConnection, now: number): void {
    const held = conn.held;
    if (!held || held.released) return;
    let waiting = false;
    for (const s of conn.shadows.values()) {
      if (!s.comparing && !(held.kind === "rst" && s.replicaRst)) continue;
      if (held.kind === "rst") {
        if (!s.replicaRst) waiting = true;
        continue;
      }
      if (s.replicaRst) {
        this.setStatus(conn, s, "diverged", "replica reset where the original closed", s.compared);
      } else if (s.replicaFinOffset === undefined) {
        waiting = true;
      } else if (s.replicaFinOffset !== conn.originalFinOffset) {
        this.setStatus(
          conn,
          s,
          "diverged",
          `closed at offset ${s.replicaFinOffset}, original at ${conn.originalFinOffset}`,
          Math.min(s.replicaFinOffset, conn.originalFinOffset ?? 0),
        );
      }
    }
    if (!waiting) this.releaseClose(conn, now, false);
  }

  private releaseClose(conn: ReplicatedConnection, now: number, timedOut: boolean): void {
    const held = conn.held;
    if (!held || held.released) return;
    if (timedOut) {
      this.counters.closeHoldTimeouts++;
      for (const s of conn.shadows.values()) {
        if (s.comparing)
          this.setStatus(
            conn,
            s,
            "diverged",
            `did not ${held.kind === "fin" ? "close" : "reset"} with the original`,
            s.compared,
          );
      }
    }
    held.released = true;
    this.counters.closesReleased++;
    this.out.push({ type: "send", segment: held.segment, to: "client" });
    this.event({
      type: "close-released",
      conn: conn.id,
      kind: held.kind,
      heldMs: now - held.since,
      matched: !timedOut,
    });
    if (held.kind === "rst") {
      for (const s of conn.shadows.values()) {
        if (s.live) {
          this.sendRst(conn, s);
          this.closeShadow(conn, s);
        }
      }
      this.markClosed(conn, now);
    }
    this.checkDone(conn, now);
  }

  // ------------------------------------------------------------------ replica side

  private onReplica(seg: TcpSegment, now: number): void {
    const conn = this.byShadowPort.get(seg.dstPort);
    const s = conn && [...conn.shadows.values()].find((x) => x.replica.address === seg.src);
    if (!conn || !s) {
      this.unmatched("replica-unknown-shadow");
      return;
    }
    const r = this.replicas.get(s.replica.id)!;
    if (seg.flags & RST) {
      if (s.state === "syn-sent" || (seg.flags & ACK && s.replicaIsn !== undefined))
        this.onReplicaRst(conn, s, now);
      return;
    }
    if (s.state === "closed") {
      // Late retransmission after the shadow ended: answer like a closed socket would not; ignore.
      return;
    }
    if (seg.flags & SYN) {
      if (!(seg.flags & ACK) || seg.ack !== seqAdd(conn.clientIsn, 1)) return;
      if (s.state === "syn-sent") this.onReplicaSynAck(conn, s, seg, now);
      else this.sendAck(conn, s); // our ACK of its SYN was lost
      return;
    }
    if (s.state !== "open" || s.replicaIsn === undefined) return;
    const ts = findOption(seg.options, "timestamp");
    if (ts && (s.tsRecent === undefined || seqDiff(ts.tsval, s.tsRecent) >= 0)) s.tsRecent = ts.tsval;
    if (ts) {
      const rtt = s.echoTimer.echoed(ts.tsecr, this.nowUs(now));
      if (rtt !== undefined) this.rtt.replicaSample(s.replica.id, "timestamp", rtt, now);
    }

    if (seg.flags & ACK) this.onReplicaAck(conn, s, seg, now, r);
    s.lastWindow = seg.window;

    const off = toOffset(seg.seq, s.replicaIsn, s.reply.end);
    let duplicate = false;
    let hole = false;
    if (seg.payload.length > 0) {
      const grew = s.reply.write(off, seg.payload);
      if (grew > 0) s.lastProgressAt = now;
      s.replyBytes += grew;
      r.replyBytes += grew;
      duplicate = off + seg.payload.length <= s.reply.end && grew === 0;
      hole = s.reply.outOfOrderHeld > 0;
      this.compare(conn, s);
    }
    if (seg.flags & FIN) {
      const finOff = off + seg.payload.length;
      if (s.replicaFinOffset === undefined) {
        s.replicaFinOffset = finOff;
        s.lastProgressAt = now;
        if (conn.spliced === s) conn.spliceFinSince = now;
        else if (!conn.held && conn.originalFinOffset === undefined)
          this.suspectReplica(s, now, "fin", "closed a connection the original keeps open", conn);
      } else duplicate = true;
      this.checkRelease(conn, now);
    }
    if (seg.payload.length > 0 || seg.flags & FIN) {
      const ack = this.ackFor(conn, s);
      // ACK when it advances; re-ACK duplicates (our ACK was lost); dup-ACK with SACK across a
      // hole so the replica retransmits it. Never ACK just to say "held by the client": that
      // would look like duplicate ACKs and trigger needless fast retransmits.
      if (ack > s.rcvAcked || duplicate || hole) {
        s.ackOwed = true;
        this.dirty.add(conn);
      }
    }
    // Failure-detection markers start when the evidence arrives, not at the next timer tick.
    if (s.comparing && s.reply.end > conn.original.end) conn.replyAheadSince ??= now;
    if (s.comparing && Math.max(0, s.sndUna) > conn.originalAckOffset) conn.ackBehindSince ??= now;
    if (conn.spliced === s)
      this.forwardToClient(conn, s, seg.payload.length > 0 ? off : undefined, seg.payload.length);
    this.maybeCloseShadow(conn, s);
    this.checkDone(conn, now);
    this.enforceLimits(conn);
  }

  private onReplicaSynAck(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    seg: TcpSegment,
    now: number,
  ): void {
    s.replicaIsn = seg.seq;
    s.state = "open";
    s.sndUna = 0;
    s.synTries = 0;
    s.backoffs = 0;
    s.rtoDeadline = undefined;
    if (s.rttProbe) {
      this.rttSample(s, now - s.rttProbe.at);
      this.rtt.replicaSample(s.replica.id, "handshake", this.nowUs(now) - s.rttProbe.at * 1000, now);
      s.rttProbe = undefined;
    }
    const ws = findOption(seg.options, "wscale");
    s.wscale = ws && conn.clientOffered("wscale") ? Math.min(14, ws.shift) : 0;
    s.sackOk = !!findOption(seg.options, "sack-permitted") && conn.clientOffered("sack-permitted");
    const ts = findOption(seg.options, "timestamp");
    s.tsOk = !!ts && conn.clientOffered("timestamp");
    if (ts) s.tsRecent = ts.tsval;
    const mss = findOption(seg.options, "mss")?.value ?? 536;
    s.maxPayload = Math.max(1, Math.min(mss, this.config.mtu - 40) - (s.tsOk ? 12 : 0));
    s.sndWnd = seg.window; // never scaled in a SYN
    s.ackOwed = true;
    this.dirty.add(conn);
    void now;
  }

  private onReplicaAck(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    seg: TcpSegment,
    now: number,
    r: ReplicaCounters,
  ): void {
    const ackOff = toOffset(seg.ack, conn.clientIsn, Math.max(0, s.sndUna));
    const maxAckable = s.sndNxt + (s.finSent ? 1 : 0);
    if (ackOff > maxAckable) return; // acknowledges what we never sent: ignore
    const oldWnd = s.sndWnd;
    s.sndWnd = seg.window << s.wscale;
    if (ackOff > s.sndUna) {
      const acked = Math.min(ackOff, conn.clientFinOffset ?? Infinity) - Math.max(0, s.sndUna);
      r.bytesAcked += Math.max(0, acked);
      s.sndUna = ackOff;
      s.caughtUpAt = now;
      if (s.finSent && conn.clientFinOffset !== undefined && ackOff === conn.clientFinOffset + 1)
        s.finAcked = true;
      if (s.rttProbe && ackOff >= s.rttProbe.end) {
        // The retransmission timer runs on the engine's clock (it includes the engine's own
        // lag, which is what the timer has to cover); the histogram wants the path's RTT: the
        // acknowledgement's capture time, on the same clock as the engine's.
        this.rttSample(s, now - s.rttProbe.at);
        this.rtt.replicaSample(s.replica.id, "data", this.nowUs(now) - s.rttProbe.at * 1000, now);
        s.rttProbe = undefined;
      }
      s.dupAcks = 0;
      s.backoffs = 0;
      if (s.recoverPoint !== undefined && ackOff < s.recoverPoint) {
        this.retransmitOne(conn, s, now); // partial ACK: the next hole is lost too
      } else {
        s.recoverPoint = undefined;
      }
      s.rtoDeadline = this.outstanding(conn, s) ? now + s.rtoMs : undefined;
      this.releaseClient(conn);
    } else if (
      ackOff === s.sndUna &&
      seg.payload.length === 0 &&
      !(seg.flags & FIN) &&
      s.sndWnd === oldWnd &&
      this.outstanding(conn, s)
    ) {
      s.dupAcks++;
      if (s.dupAcks === 3 && s.recoverPoint === undefined) {
        s.recoverPoint = s.sndNxt;
        this.retransmitOne(conn, s, now);
      }
    }
    this.dirty.add(conn);
  }

  private onReplicaRst(conn: ReplicatedConnection, s: ShadowConversation, now: number): void {
    s.replicaRst = true;
    if (conn.spliced === s) {
      // The new original reset the connection: so does the client's view of it.
      this.resetClient(conn);
      this.closeShadow(conn, s);
      this.markClosed(conn, now);
      this.account(conn);
      return;
    }
    const expected = conn.held?.kind === "rst";
    if (!expected)
      this.suspectReplica(
        s,
        now,
        "rst",
        s.state === "syn-sent" ? "refused a connection" : "reset a connection the original keeps open",
      );
    if (!expected && s.status === "healthy") {
      const reason = s.state === "syn-sent" ? "refused the connection" : "reset the connection";
      this.setStatus(conn, s, s.state === "syn-sent" ? "lagging" : "diverged", reason, s.compared);
    }
    this.closeShadow(conn, s);
    this.checkRelease(conn, now);
    this.checkDone(conn, now);
    this.account(conn);
  }

  // ------------------------------------------------------------------ sending toward a replica

  private outstanding(conn: ReplicatedConnection, s: ShadowConversation): boolean {
    return (
      s.sndNxt > s.sndUna || (s.finSent && !s.finAcked) || (s.sndWnd === 0 && s.sndNxt < conn.client.end)
    );
  }

  /** Reply units we may acknowledge to the replica: what the client acknowledged, clamped to what
   * the replica has really sent (contiguous, plus its FIN). */
  private ackFor(conn: ReplicatedConnection, s: ShadowConversation): number {
    const received =
      s.reply.end + (s.replicaFinOffset !== undefined && s.replicaFinOffset === s.reply.end ? 1 : 0);
    return Math.max(s.rcvAcked, Math.min(conn.clientAckOffset, received));
  }

  private segmentTo(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    seq: number,
    flags: number,
    payload: Uint8Array,
    extraOptions: TcpOption[] = [],
  ): TcpSegment {
    const options: TcpOption[] = [];
    if (s.tsOk && conn.lastClientTsval !== undefined) {
      options.push(
        { kind: "nop" },
        { kind: "nop" },
        { kind: "timestamp", tsval: conn.lastClientTsval, tsecr: s.tsRecent ?? 0 },
      );
    }
    options.push(...extraOptions);
    let ack = 0;
    if (s.replicaIsn !== undefined) {
      const a = this.ackFor(conn, s);
      s.rcvAcked = a;
      ack = toSeq(a, s.replicaIsn);
      flags |= ACK;
    }
    s.lastWindowSent = conn.lastClientWindow;
    return this.towardReplica(conn, s, { seq, ack, flags, window: conn.lastClientWindow, options, payload });
  }

  /** A segment of the shadow conversation, from the replication address to the replica. */
  private towardReplica(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    f: Pick<TcpSegment, "seq" | "ack" | "flags" | "window" | "options" | "payload">,
  ): TcpSegment {
    this.ipId = (this.ipId + 1) & 0xffff;
    return {
      tos: 0,
      id: this.ipId,
      dontFragment: true,
      ttl: 64,
      src: this.config.replicationAddress,
      dst: s.replica.address,
      ipOptions: new Uint8Array(0),
      srcPort: conn.port!,
      dstPort: this.config.port,
      urgent: 0,
      ...f,
    };
  }

  private emit(s: ShadowConversation, segment: TcpSegment): void {
    const r = this.replicas.get(s.replica.id);
    s.segmentsSent++;
    if (r) r.segmentsSent++;
    this.out.push({ type: "send", segment, to: "replica" });
  }

  private sendSyn(conn: ReplicatedConnection, s: ShadowConversation, now: number): void {
    s.synTries++;
    s.rttProbe = s.synTries === 1 ? { end: 0, at: now } : undefined;
    // The client's own SYN options: the replica negotiates exactly what the original did.
    const seg = this.towardReplica(conn, s, {
      seq: conn.clientIsn,
      ack: 0,
      flags: SYN,
      window: conn.clientSynWindow,
      options: copyOptions(conn.clientSynOptions),
      payload: new Uint8Array(0),
    });
    this.emit(s, seg);
    s.rtoDeadline = now + s.rtoMs;
  }

  private sendAck(conn: ReplicatedConnection, s: ShadowConversation): void {
    const sack: TcpOption[] = [];
    if (s.sackOk && s.replicaIsn !== undefined) {
      const ranges = s.reply.outOfOrderRanges().slice(0, s.tsOk ? 3 : 4);
      if (ranges.length > 0) {
        const isn = s.replicaIsn;
        sack.push(
          { kind: "nop" },
          { kind: "nop" },
          { kind: "sack", blocks: ranges.map(([a, b]) => [toSeq(a, isn), toSeq(b, isn)]) },
        );
      }
    }
    const seq = toSeq(s.sndNxt + (s.finSent ? 1 : 0), conn.clientIsn);
    this.emit(s, this.segmentTo(conn, s, seq, 0, new Uint8Array(0), sack));
  }

  private sendRst(conn: ReplicatedConnection, s: ShadowConversation): void {
    if (conn.port === undefined) return;
    const seq =
      s.state === "syn-sent"
        ? seqAdd(conn.clientIsn, 1)
        : toSeq(s.sndNxt + (s.finSent ? 1 : 0), conn.clientIsn);
    const seg = this.segmentTo(conn, s, seq, RST, new Uint8Array(0));
    this.emit(s, seg);
  }

  /** Sends client bytes the replica has not been sent yet, within its window; then the FIN. */
  private trySend(conn: ReplicatedConnection, s: ShadowConversation, now: number): void {
    if (s.state !== "open") return;
    const r = this.replicas.get(s.replica.id);
    const limit = Math.max(0, s.sndUna) + s.sndWnd;
    const end = conn.client.end;
    while (s.sndNxt < end && s.sndNxt < limit) {
      const len = Math.min(s.maxPayload, end - s.sndNxt, limit - s.sndNxt);
      const payload = conn.client.read(s.sndNxt, s.sndNxt + len);
      const last = s.sndNxt + len === end;
      this.emit(s, this.segmentTo(conn, s, toSeq(s.sndNxt, conn.clientIsn), last ? PSH : 0, payload));
      this.echoSent(conn, s, now);
      if (!s.rttProbe) s.rttProbe = { end: s.sndNxt + len, at: now };
      s.sndNxt += len;
      s.bytesSent += len;
      if (r) r.bytesSent += len;
      if (s.rtoDeadline === undefined) s.rtoDeadline = now + s.rtoMs;
    }
    if (conn.clientFinReady && s.sndNxt === conn.clientFinOffset && !s.finSent) {
      s.finSent = true;
      this.emit(s, this.segmentTo(conn, s, toSeq(s.sndNxt, conn.clientIsn), FIN, new Uint8Array(0)));
      this.echoSent(conn, s, now);
      if (s.rtoDeadline === undefined) s.rtoDeadline = now + s.rtoMs;
    }
  }

  private retransmitOne(conn: ReplicatedConnection, s: ShadowConversation, now: number): void {
    const r = this.replicas.get(s.replica.id);
    const from = Math.max(0, s.sndUna);
    const to = Math.min(s.sndNxt, conn.client.end, from + s.maxPayload);
    s.rttProbe = undefined; // Karn: no RTT samples from retransmitted data
    this.echoResent(conn, s);
    s.retransmits++;
    if (r) r.retransmits++;
    if (to > from) {
      this.emit(s, this.segmentTo(conn, s, toSeq(from, conn.clientIsn), PSH, conn.client.read(from, to)));
    } else if (s.finSent && !s.finAcked && conn.clientFinOffset !== undefined) {
      this.emit(
        s,
        this.segmentTo(conn, s, toSeq(conn.clientFinOffset, conn.clientIsn), FIN, new Uint8Array(0)),
      );
    }
    s.rtoDeadline = now + s.rtoMs;
  }

  private onRto(conn: ReplicatedConnection, s: ShadowConversation, now: number): void {
    s.rtoDeadline = undefined;
    if (s.state === "syn-sent") {
      if (s.synTries > this.config.maxSynRetries) {
        this.setStatus(conn, s, "lagging", "did not answer the SYN", 0);
        this.closeShadow(conn, s);
        this.account(conn);
        return;
      }
      s.rtoMs = Math.min(this.config.rto.maxMs, s.rtoMs * 2);
      if (s.synTries > this.config.failure.replicaProbeBackoffs)
        this.suspectReplica(s, now, "stall", "does not answer SYNs");
      this.sendSyn(conn, s, now);
      return;
    }
    if (s.state !== "open" || !this.outstanding(conn, s)) return;
    s.backoffs++;
    s.rtoMs = Math.min(this.config.rto.maxMs, s.rtoMs * 2);
    if (s.backoffs >= this.config.failure.replicaProbeBackoffs)
      this.suspectReplica(s, now, "stall", "stopped acknowledging");
    if (s.backoffs > 12) {
      this.setStatus(conn, s, "lagging", "stopped acknowledging", s.compared);
      this.sendRst(conn, s);
      this.closeShadow(conn, s);
      this.account(conn);
      return;
    }
    if (s.sndWnd === 0 && s.sndNxt >= Math.max(0, s.sndUna)) {
      // Zero-window probe: an ACK one below what it expects draws an ACK with its window.
      this.emit(
        s,
        this.segmentTo(conn, s, toSeq(Math.max(0, s.sndUna) - 1, conn.clientIsn), 0, new Uint8Array(0)),
      );
      s.rtoDeadline = now + s.rtoMs;
      return;
    }
    // Go back to the first unacknowledged byte (RFC 6298 5.4) and resend what the window allows.
    s.recoverPoint = undefined;
    s.dupAcks = 0;
    s.rttProbe = undefined;
    this.echoResent(conn, s);
    s.retransmits++;
    const r = this.replicas.get(s.replica.id);
    if (r) r.retransmits++;
    s.sndNxt = Math.max(0, s.sndUna);
    if (s.finSent && !s.finAcked) s.finSent = false;
    this.trySend(conn, s, now);
    if (s.rtoDeadline === undefined && this.outstanding(conn, s)) s.rtoDeadline = now + s.rtoMs;
  }

  /** Times the replica's echo of the TSval (the client's, relayed) on a segment just sent. */
  private echoSent(conn: ReplicatedConnection, s: ShadowConversation, now: number): void {
    if (s.tsOk && conn.lastClientTsval !== undefined)
      s.echoTimer.sent(conn.lastClientTsval, now * 1000, true);
  }

  /** A retransmission carries the client's TSval again, maybe the one a timing waits for: which
   * copy the echo answers is then unknown, so that timing ends without a sample. */
  private echoResent(conn: ReplicatedConnection, s: ShadowConversation): void {
    if (conn.lastClientTsval !== undefined) s.echoTimer.forget(conn.lastClientTsval);
  }

  private rttSample(s: ShadowConversation, ms: number): void {
    s.rttSample(ms, this.config.rto.minMs, this.config.rto.maxMs);
    const r = this.replicas.get(s.replica.id);
    if (r) {
      r.rttSamples++;
      r.lastSrttMs = s.srttMs;
    }
  }

  // ------------------------------------------------------------------ comparison, status, limits

  /** Compares the replica's reply bytes with the original's at the same offsets. */
  private compare(conn: ReplicatedConnection, s: ShadowConversation): void {
    if (s.comparing) {
      const upto = Math.min(s.reply.end, conn.original.end);
      if (upto > s.compared) {
        const mine = s.reply.read(s.compared, upto);
        const theirs = conn.original.read(s.compared, upto);
        const differs = mine.equals(theirs) ? -1 : this.firstRealDifference(conn, s, mine, theirs);
        if (differs >= 0) {
          const at = s.compared + differs;
          const excerpt = {
            original: printable(conn.original.read(at, Math.min(upto, at + DIVERGENCE_EXCERPT))),
            replicaBytes: printable(s.reply.read(at, Math.min(upto, at + DIVERGENCE_EXCERPT))),
          };
          this.setStatus(conn, s, "diverged", "reply bytes differ", at, excerpt);
        } else {
          const r = this.replicas.get(s.replica.id);
          if (r) r.comparedBytes += upto - s.compared;
          s.comparedBytes += upto - s.compared;
          s.compared = upto;
        }
      }
    }
    this.releaseReply(conn, s);
    this.releaseOriginal(conn);
  }

  /** Index of the first difference between equally long reply ranges starting at s.compared
   * that no tolerance excuses (-1: none); excused ones are counted. */
  private firstRealDifference(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    mine: Buffer,
    theirs: Buffer,
  ): number {
    for (let i = 0; i < mine.length; i++) {
      if (mine[i] === theirs[i]) continue;
      if (!this.config.compare.httpDate) return i;
      const at = s.compared + i;
      const from = Math.max(conn.original.base, at - HTTP_DATE_CONTEXT);
      if (!httpDateDifference(conn.original.read(from, at), theirs[i]!, mine[i]!)) return i;
      s.toleratedBytes++;
      const r = this.replicas.get(s.replica.id);
      if (r) r.toleratedBytes++;
    }
    return -1;
  }

  /** Reply bytes are kept until compared (or no longer compared) and acknowledged to the replica,
   * so a later splice can send the client what it misses at once. */
  private releaseReply(conn: ReplicatedConnection, s: ShadowConversation): void {
    const upTo = s.comparing ? Math.min(s.compared, s.rcvAcked) : s.rcvAcked;
    s.reply.release(upTo);
    void conn;
  }

  private releaseOriginal(conn: ReplicatedConnection): void {
    let min = conn.original.end;
    for (const s of conn.shadows.values()) if (s.comparing) min = Math.min(min, s.compared);
    // A few compared bytes stay: a Date value split across segments needs its line's start.
    conn.original.release(this.config.compare.httpDate ? min - HTTP_DATE_CONTEXT : min);
  }

  private releaseClient(conn: ReplicatedConnection): void {
    let min = conn.client.end;
    for (const s of conn.shadows.values()) if (s.live) min = Math.min(min, Math.max(0, s.sndUna));
    conn.client.release(min);
  }

  private setStatus(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    status: "diverged" | "lagging" | "unverified",
    reason: string,
    offset: number,
    excerpt?: { original: string; replicaBytes: string },
  ): void {
    if (s.status === status || (s.status !== "healthy" && status === "unverified")) return;
    if (s.status === "lagging") return; // the worst state; it stays
    s.status = status;
    s.reason = reason;
    const r = this.replicas.get(s.replica.id);
    const id = s.replica.id;
    if (status === "diverged") {
      if (r) r.diverged++;
      this.event({ type: "diverged", conn: conn.id, replica: id, offset, reason, ...excerpt });
    } else if (status === "lagging") {
      if (r) r.lagging++;
      this.event({ type: "lagging", conn: conn.id, replica: id, reason });
    } else {
      if (r) r.unverified++;
      this.event({ type: "unverified", conn: conn.id, replica: id, reason });
    }
    this.releaseOriginal(conn);
  }

  /**
   * Something was acknowledged that we have not captured. With several capture channels (client
   * side, backend side) the other channel may simply be behind, so this is only a suspicion until
   * that channel has delivered packets captured after the acknowledgement (or gapConfirmMs passed)
   * and the bytes are still missing. With no capture times (one ordered stream), it is a gap now.
   */
  private suspectGap(
    conn: ReplicatedConnection,
    direction: "client" | "original",
    acked: number,
    now: number,
  ): void {
    if (conn.captureGap) return;
    if (this.captureUs === undefined) {
      this.captureGapDetected(conn, direction, acked, this.capturedUpTo(conn, direction));
      return;
    }
    const cur = conn.gapSuspects[direction];
    const suspect = { offset: acked, atUs: this.captureUs, since: now };
    // Each suspicion keeps its own capture time and start: an acknowledgement that runs ahead
    // of its channel again and again (the other channel is behind, under load) must not inherit
    // the first one's age, or a steady skew would confirm a gap that is not there.
    if (!cur) conn.gapSuspects[direction] = suspect;
    else if (acked > (cur.next?.offset ?? cur.offset)) cur.next = suspect;
  }

  private capturedUpTo(conn: ReplicatedConnection, direction: "client" | "original"): number {
    return direction === "client"
      ? conn.client.end + (conn.clientFinReady ? 1 : 0)
      : conn.original.end + (conn.originalFinOffset === conn.original.end ? 1 : 0);
  }

  /** Clears suspicions the bytes arrived for; confirms the others. Returns the next deadline. */
  private checkGaps(conn: ReplicatedConnection, now: number): number | undefined {
    let next: number | undefined;
    for (const direction of ["client", "original"] as const) {
      const have = this.capturedUpTo(conn, direction);
      let s = conn.gapSuspects[direction];
      // Resolved: the newest acknowledgement beyond it is watched now, if it is still ahead.
      while (s && (have >= s.offset || conn.captureGap)) s = conn.captureGap ? undefined : s.next;
      conn.gapSuspects[direction] = s;
      if (!s) continue;
      const channel = this.channelOf[direction];
      const watermark = (channel === undefined ? undefined : this.watermarkUs.get(channel)) ?? -Infinity;
      // Slack: packets captured on different CPUs can reach one ring slightly out of time order.
      if (watermark >= s.atUs + this.config.gapSlackMs * 1000 || now - s.since >= this.config.gapConfirmMs) {
        conn.gapSuspects[direction] = undefined;
        this.captureGapDetected(conn, direction, s.offset, have);
      } else {
        const d = s.since + this.config.gapConfirmMs;
        if (next === undefined || d < next) next = d;
      }
    }
    return next;
  }

  private captureGapDetected(
    conn: ReplicatedConnection,
    direction: "client" | "original",
    acked: number,
    captured: number,
  ): void {
    conn.captureGap = true;
    this.counters.captureGaps++;
    this.event({ type: "capture-gap", conn: conn.id, direction, acked, captured });
    for (const s of conn.shadows.values()) {
      if (!s.live) continue;
      if (direction === "client") {
        // Client bytes the replicas can never get: their state would silently differ.
        this.setStatus(conn, s, "lagging", "client bytes lost to capture", s.compared);
        this.sendRst(conn, s);
        this.closeShadow(conn, s);
      } else {
        this.setStatus(conn, s, "unverified", "original's reply bytes lost to capture", s.compared);
      }
    }
    this.account(conn);
  }

  /** Bounds every buffer: the shadows furthest behind are marked lagging and dropped. */
  private enforceLimits(conn: ReplicatedConnection): void {
    const L = this.config.limits;
    this.releaseClient(conn);
    // Per connection: client bytes held for the slowest shadow.
    while (conn.client.footprint > L.perConnectionBytes) {
      const slow = this.slowest(conn, (s) => -Math.max(0, s.sndUna));
      if (!slow) {
        conn.client.release(conn.client.end);
        break;
      }
      this.abandon(conn, slow, "client bytes beyond the per-connection limit");
    }
    // Per connection: original reply bytes held for the slowest comparison.
    while (conn.original.footprint > L.perConnectionBytes) {
      let slow: ShadowConversation | undefined;
      for (const s of conn.shadows.values())
        if (s.comparing && (!slow || s.compared < slow.compared)) slow = s;
      if (!slow) {
        conn.original.release(conn.original.end);
        break;
      }
      this.abandon(conn, slow, "reply comparison beyond the per-connection limit");
    }
    for (const s of conn.shadows.values()) {
      if (s.live && s.reply.footprint > L.perConnectionBytes)
        this.abandon(conn, s, "reply bytes beyond the per-connection limit");
    }
    this.account(conn);
    // Per replica and global.
    for (const r of this.replicas.values()) {
      while (r.buffered > L.perReplicaBytes) {
        const victim = this.largestShadow((s) => s.replica.id === r.info.id);
        if (!victim) break;
        this.abandon(victim.conn, victim.shadow, "beyond the per-replica limit");
        this.account(victim.conn);
      }
    }
    while (this.totalBuffered > L.globalBytes) {
      const victim = this.largestShadow(() => true);
      if (!victim) break;
      this.abandon(victim.conn, victim.shadow, "beyond the global limit");
      this.account(victim.conn);
    }
  }

  private slowest(
    conn: ReplicatedConnection,
    score: (s: ShadowConversation) => number,
  ): ShadowConversation | undefined {
    let best: ShadowConversation | undefined;
    for (const s of conn.shadows.values()) if (s.live && (!best || score(s) > score(best))) best = s;
    return best;
  }

  private largestShadow(
    filter: (s: ShadowConversation) => boolean,
  ): { conn: ReplicatedConnection; shadow: ShadowConversation } | undefined {
    let best: { conn: ReplicatedConnection; shadow: ShadowConversation } | undefined;
    for (const conn of this.conns.values()) {
      for (const s of conn.shadows.values()) {
        if (!s.live || !filter(s) || s.accountedReplica === 0) continue;
        if (!best || s.accountedReplica > best.shadow.accountedReplica) best = { conn, shadow: s };
      }
    }
    return best;
  }

  private abandon(conn: ReplicatedConnection, s: ShadowConversation, reason: string): void {
    this.setStatus(conn, s, "lagging", reason, s.compared);
    this.sendRst(conn, s);
    this.closeShadow(conn, s);
    this.releaseClient(conn);
    this.releaseOriginal(conn);
  }

  /** Recomputes what this connection holds and updates the engine's and replicas' totals.
   * Client and original bytes are shared by the shadows and counted once globally; each replica
   * is charged the client bytes still held for it plus its own reply bytes. */
  private account(conn: ReplicatedConnection): void {
    const own = conn.client.footprint + conn.original.footprint;
    this.totalBuffered += own - conn.accounted;
    conn.accounted = own;
    for (const s of conn.shadows.values()) {
      const global = s.live ? s.reply.footprint : 0;
      this.totalBuffered += global - s.accountedGlobal;
      s.accountedGlobal = global;
      const mine = s.live ? s.clientBacklog(conn.client.end) + s.reply.footprint : 0;
      const r = this.replicas.get(s.replica.id);
      if (r) r.buffered += mine - s.accountedReplica;
      s.accountedReplica = mine;
    }
  }

  // ------------------------------------------------------------------ promotion and splice

  /**
   * Makes replica `id` the original. Every open connection whose shadow on that replica is a
   * faithful copy (healthy, opened with the connection) is spliced: from now on the replica's
   * bytes go to the client, translated into the original's sequence, timestamp and window space,
   * starting with what the client has not acknowledged yet (sent at once, not after the replica's
   * retransmission timer). Every other connection is reset toward the client, never spliced: a
   * diverged or lagging copy would hand the client corrupted bytes. The kernel side (fence the old
   * original, point new connections at the new one) is the I/O edge's job: see the "promote" output.
   */
  promote(id: string, now: number): { spliced: number; reset: number; dropped: number } {
    const r = this.replicas.get(id);
    if (!r || r.promoted) throw new Error(`no replica ${id} to promote`);
    const old = this.original;
    const report = { spliced: 0, reset: 0, dropped: 0 };
    for (const conn of [...this.conns.values()]) {
      if (conn.phase !== "open") {
        this.deleteConnection(conn);
        report.dropped++;
        continue;
      }
      const s = conn.shadows.get(id);
      if (s && this.canSplice(conn, id)) {
        this.splice(conn, s, now);
        report.spliced++;
      } else {
        this.resetClient(conn);
        this.resetShadows(conn, now);
        report.reset++;
      }
    }
    r.promoted = true;
    this.election = undefined;
    this.promotions++;
    this.failureSignaled = false;
    for (const [k, p] of this.probes) if (p.target === "original") this.probes.delete(k);
    for (let i = this.deadVerdicts.length - 1; i >= 0; i--)
      if (this.deadVerdicts[i]!.probe.target === "original") this.deadVerdicts.splice(i, 1);
    this.aliveAt.delete("original");
    this.lastProbeAt.delete("original");
    this.originalLag = new DelayEstimator();
    this.originalRtt = new DelayEstimator();
    this.lastFromOriginal = undefined;
    this.lastDataFromOriginal = undefined;
    this.original = r.info.address;
    this.pendingNat.clear();
    this.out.push({ type: "promote", replica: id, original: r.info.address, previous: old });
    this.event({ type: "promoted", replica: id, ...report });
    if (this.promotableCount() === 0)
      this.event({
        type: "no-replica-left",
        reason: `${id} was the last replica: the service runs unreplicated`,
      });
    return report;
  }

  private splice(conn: ReplicatedConnection, s: ShadowConversation, now: number): void {
    conn.spliced = s;
    // Its FIN came before the promotion (with the original's): held like one arriving later.
    if (s.replicaFinOffset !== undefined) conn.spliceFinSince ??= now;
    conn.sentToClient = Math.max(
      conn.clientAckOffset -
        (conn.originalFinOffset !== undefined && conn.clientAckOffset > conn.originalFinOffset ? 1 : 0),
      0,
    );
    if (conn.lastOriginalTsval !== undefined && s.tsRecent !== undefined) {
      conn.tsOffset = (conn.lastOriginalTsval + 1 - s.tsRecent) >>> 0;
    }
    // The old original's close, if any was held, is moot: the replica decides now.
    if (conn.held && !conn.held.released) conn.held.released = true;
    for (const x of conn.shadows.values()) {
      if (x !== s && x.live) this.setStatus(conn, x, "unverified", "its original was replaced", x.compared);
    }
    this.forwardToClient(conn, s, undefined, 0);
  }

  /** A segment from the VIP to the client in the original's sequence space. */
  private toClient(
    conn: ReplicatedConnection,
    seq: number,
    flags: number,
    payload: Uint8Array = new Uint8Array(0),
  ): TcpSegment {
    const s = conn.spliced;
    const options: TcpOption[] = [];
    if (s?.tsOk && s.tsRecent !== undefined) {
      options.push(
        { kind: "nop" },
        { kind: "nop" },
        {
          kind: "timestamp",
          tsval: (s.tsRecent + conn.tsOffset) >>> 0,
          tsecr: conn.lastClientTsval ?? 0,
        },
      );
    }
    const ack = s ? toSeq(Math.max(0, s.sndUna), conn.clientIsn) : toSeq(conn.client.end, conn.clientIsn);
    const window = s
      ? Math.min(0xffff, Math.floor((s.lastWindow * 2 ** s.wscale) / 2 ** conn.originalWscale))
      : 0;
    this.ipId = (this.ipId + 1) & 0xffff;
    return {
      tos: 0,
      id: this.ipId,
      dontFragment: true,
      ttl: 64,
      src: this.config.vip,
      dst: conn.clientAddr,
      ipOptions: new Uint8Array(0),
      srcPort: this.config.port,
      dstPort: conn.clientPort,
      seq,
      ack,
      flags: flags & RST && !(flags & ACK) ? flags : flags | ACK,
      window,
      urgent: 0,
      options,
      payload,
    };
  }

  /**
   * Sends the client the spliced replica's bytes it has not been sent, its FIN, and an ACK when
   * the replica acknowledged more of the client's bytes. Bytes at offsets the original had sent
   * go out only once compared equal; `resend` re-sends a range the replica retransmitted (the
   * client missed it).
   */
  private forwardToClient(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    resend: number | undefined,
    resendLength: number,
  ): void {
    const isn = conn.originalIsn!;
    if (s.status === "diverged") {
      this.resetClient(conn);
      return;
    }
    const verified = s.compared >= conn.original.end ? s.reply.end : s.compared;
    const maxPayload = Math.max(1, Math.min(conn.originalMss, this.config.mtu - 40) - (s.tsOk ? 12 : 0));
    const send = (from: number, to: number) => {
      for (let off = from; off < to; off += maxPayload) {
        const end = Math.min(to, off + maxPayload);
        this.out.push({
          type: "send",
          segment: this.toClient(conn, toSeq(off, isn), end === to ? PSH : 0, s.reply.read(off, end)),
          to: "client",
        });
      }
    };
    if (resend !== undefined && resend < conn.sentToClient) {
      const from = Math.max(resend, s.reply.base, conn.clientAckOffset);
      const to = Math.min(resend + resendLength, conn.sentToClient);
      if (to > from) send(from, to);
    }
    const from = Math.max(conn.sentToClient, s.reply.base);
    if (verified > from) {
      send(from, verified);
      conn.sentToClient = verified;
    }
    let acked = false;
    if (
      s.replicaFinOffset !== undefined &&
      conn.sentToClient === s.replicaFinOffset &&
      !conn.spliceFinSent &&
      (conn.spliceFinReleased || this.survivor(conn, s) === undefined)
    ) {
      conn.spliceFinSent = true;
      this.out.push({
        type: "send",
        segment: this.toClient(conn, toSeq(s.replicaFinOffset, isn), FIN),
        to: "client",
      });
      acked = true;
    }
    if (!acked && Math.max(0, s.sndUna) > conn.ackToClient && verified <= from) {
      this.out.push({
        type: "send",
        segment: this.toClient(conn, toSeq(conn.sentToClient, isn), 0),
        to: "client",
      });
    }
    conn.ackToClient = Math.max(conn.ackToClient, Math.max(0, s.sndUna));
  }

  /** Resets the client's connection: at what it acknowledged and at what it may have received. */
  private resetClient(conn: ReplicatedConnection): void {
    if (conn.originalIsn === undefined) return;
    conn.resetting = true;
    const at = new Set([conn.clientAckOffset, conn.original.end, conn.sentToClient]);
    for (const off of at)
      this.out.push({
        type: "send",
        segment: this.toClient(conn, toSeq(off, conn.originalIsn), RST),
        to: "client",
      });
  }

  // ------------------------------------------------------------------ lifecycle

  private closeShadow(conn: ReplicatedConnection, s: ShadowConversation): void {
    s.state = "closed";
    s.rtoDeadline = undefined;
    s.reply.clear();
    this.releaseClient(conn);
    this.releaseOriginal(conn);
  }

  private maybeCloseShadow(conn: ReplicatedConnection, s: ShadowConversation): void {
    if (s.finAcked && s.replicaFinOffset !== undefined && s.rcvAcked === s.replicaFinOffset + 1) {
      this.closeShadow(conn, s);
      this.account(conn);
    }
  }

  /** Resets every shadow still talking to its replica and closes the connection. */
  private resetShadows(conn: ReplicatedConnection, now: number): void {
    for (const s of conn.shadows.values()) {
      if (s.live) {
        this.sendRst(conn, s);
        this.closeShadow(conn, s);
      }
    }
    this.markClosed(conn, now);
    this.account(conn);
  }

  private markClosed(conn: ReplicatedConnection, now: number): void {
    if (conn.phase === "closed") return;
    conn.phase = "closed";
    conn.closedAt = now;
  }

  /** Both directions finished: the client's FIN went through and the original's close was
   * released and acknowledged by the client. */
  private checkDone(conn: ReplicatedConnection, now: number): void {
    if (conn.phase !== "open") return;
    const sp = conn.spliced;
    // Who acknowledges the client's FIN: the original, or after a splice the promoted replica.
    const serverAck = sp ? Math.max(0, sp.sndUna) : conn.originalAckOffset;
    const clientDone = conn.clientFinOffset !== undefined && serverAck >= conn.clientFinOffset + 1;
    const serverDone = sp
      ? sp.replicaFinOffset !== undefined && conn.clientAckOffset >= sp.replicaFinOffset + 1
      : conn.held?.released === true &&
        (conn.held.kind === "rst" ||
          (conn.originalFinOffset !== undefined && conn.clientAckOffset >= conn.originalFinOffset + 1));
    if (clientDone && serverDone) this.markClosed(conn, now);
  }

  private abortConnection(conn: ReplicatedConnection): void {
    for (const s of conn.shadows.values()) if (s.live) this.sendRst(conn, s);
    this.deleteConnection(conn);
  }

  private deleteConnection(conn: ReplicatedConnection): void {
    for (const s of conn.shadows.values()) {
      if (s.live) {
        this.sendRst(conn, s);
        this.closeShadow(conn, s);
      }
    }
    conn.client.clear();
    conn.original.clear();
    this.account(conn);
    this.conns.delete(conn.key);
    this.dirty.delete(conn);
    if (conn.natPort !== undefined && this.byNatPort.get(conn.natPort) === conn)
      this.byNatPort.delete(conn.natPort);
    if (conn.port !== undefined && this.byShadowPort.get(conn.port) === conn)
      this.byShadowPort.delete(conn.port);
    if (conn.phase !== "syn") this.counters.closed++;
    if (conn.phase !== "syn") this.event({ type: "connection-closed", conn: conn.id });
  }

  private event(event: EngineEvent): void {
    this.out.push({ type: "event", event });
  }
}
