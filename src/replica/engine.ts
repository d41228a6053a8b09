// The replication engine: a pure state machine driven by (captured segment, now) and (tick, now).
// It never does I/O; what it wants sent comes out of drain() as EngineOutput values, so it can be
// unit-tested, simulated with a fake network and clock (src/sim), and replayed from a pcap.
//
// What it sees (classified by address in onSegment):
//   client   → VIP:port            the client's segments, as the client sent them
//   snat     → original:port, SYN  the kernel path's NATed SYN: tells which port the original sees
//   original → snat:natPort        the original's segments (its FIN/RST are held by the kernel)
//   replica  → replication:port    the replicas' segments in the shadow conversations
//
// Sequence spaces: client sequence numbers pass unchanged into every shadow conversation; each
// replica picks its own ISN, so everything about the server side is handled as stream offsets
// (bytes since the SYN) and converted to and from each party's sequence numbers at the edges.
//
// This file is the coordinator: it routes each segment and timer to the parts that own the
// state (docs/ARCHITECTURE.md "Replication engine" names them all):
//   connection-table.ts  connections, NAT and shadow ports, segments waiting for their binding
//   shadow-sender.ts     the client's stand-in toward each replica (window, RTO, retransmission)
//   reply-verifier.ts    replies compared with the original's, tolerances (reply-mask.ts)
//   close-hold.ts        the original's FIN/RST held until the replicas close alike
//   capture-gaps.ts      bytes acknowledged but never captured
//   failure/             evidence, probes, verdicts, planned holds, election
//   splice.ts            promotion: connections continue on the promoted replica
//   buffers.ts, limits.ts  what is held, and its bounds
//   lifecycle.ts         shadow status, closing and deleting
//   passive-rtt.ts       RTT of every path (observability)
import { seqAdd, seqDiff } from "../wire/seq.js";
import { ACK, FIN, RST, SYN, findOption, type TcpSegment } from "../wire/tcp.js";
import { formatIPv4 } from "../wire/ipv4.js";
import { assert } from "./assert.js";
import { Buffers } from "./buffers.js";
import { CaptureClock } from "./capture-clock.js";
import { CaptureGaps } from "./capture-gaps.js";
import { CloseHold } from "./close-hold.js";
import { ConnectionTable, connectionKey, type ClientEnd } from "./connection-table.js";
import { ReplicatedConnection } from "./connection.js";
import { FailureDetector } from "./failure/detector.js";
import { originalAnswered, type Verdict } from "./failure/evidence.js";
import { Lifecycle } from "./lifecycle.js";
import { Limits } from "./limits.js";
import { copyOptions, toOffset } from "./offsets.js";
import { Outbox } from "./outbox.js";
import { PassiveRtt } from "./passive-rtt.js";
import { HTTP_DATE_TOLERANCE } from "./reply-mask.js";
import { ReplicaSet } from "./replica-set.js";
import { ReplyVerifier, type ReplyTolerance } from "./reply-verifier.js";
import { RttTracker, type RttSeries } from "./rtt.js";
import { ShadowConversation } from "./shadow.js";
import { ShadowSender } from "./shadow-sender.js";
import { Splicer, type SpliceReport } from "./splice.js";
import type { Confirmation, EngineConfig, EngineOutput, EngineStats, ReplicaInfo } from "./types.js";

export { printable, toOffset, toSeq } from "./offsets.js";
export { ReplicatedConnection } from "./connection.js";

/** How long a closed connection waits for replicas that have every byte to close it too. */
export const SHADOW_CLOSE_MS = 60_000;

/** Replaced originals whose kernel path SYNs are recognised (onStaleNatSyn), at most. */
const MAX_REPLACED = 16;

/** How far (bytes) a segment of the original may be from where its connection is. */
const FOREIGN_WINDOW = 64 * 1024 * 1024;

export class ReplicationEngine {
  private readonly outbox = new Outbox();
  private readonly clock = new CaptureClock();
  private readonly table: ConnectionTable;
  private readonly replicas = new ReplicaSet();
  private readonly buffers: Buffers;
  private readonly sender: ShadowSender;
  private readonly lifecycle: Lifecycle;
  private readonly verifier: ReplyVerifier;
  private readonly closeHold: CloseHold;
  private readonly gaps: CaptureGaps;
  private readonly limits: Limits;
  private readonly splicer: Splicer;
  private readonly detector: FailureDetector;
  /** Passive RTT histograms of every path (observability; detection uses its own estimators). */
  private readonly rtt = new RttTracker();
  private readonly passiveRtt: PassiveRtt;
  /** Connections with sends due at the next flush(). */
  private readonly dirty = new Set<ReplicatedConnection>();
  /** The latest engine time seen (stats() reads windowed histograms against it). */
  private lastNow = 0;
  private promotions = 0;
  /** The current original (it changes when a replica is promoted). */
  private original: number;
  /** Originals replaced by a promotion, newest last (at most MAX_REPLACED; see onStaleNatSyn). */
  private readonly replaced: number[] = [];

  private readonly counters = {
    client: 0,
    original: 0,
    natSyn: 0,
    replica: 0,
    notFromOriginal: 0,
    opened: 0,
    notReplicated: 0,
    halfOpenExpired: 0,
    closesPassedThrough: 0,
    orphansReset: 0,
    raceReset: 0,
    clientBytes: 0,
    originalBytes: 0,
  };
  private readonly rejected: Record<string, number> = {};

  constructor(readonly config: EngineConfig) {
    this.original = config.original;
    const tolerances: ReplyTolerance[] = config.compare.httpDate ? [HTTP_DATE_TOLERANCE] : [];
    this.table = new ConnectionTable(config.portRange, config.synTimeoutMs);
    this.buffers = new Buffers(this.replicas, Math.max(0, ...tolerances.map((t) => t.context)));
    this.sender = new ShadowSender(config, this.outbox, this.replicas, this.clock, this.rtt);
    this.lifecycle = new Lifecycle(
      this.table,
      this.replicas,
      this.buffers,
      this.sender,
      this.outbox,
      this.dirty,
    );
    this.verifier = new ReplyVerifier(tolerances, this.replicas, this.buffers, this.lifecycle);
    this.closeHold = new CloseHold(config.finHoldMs, this.lifecycle, this.sender, this.outbox);
    this.gaps = new CaptureGaps(config, this.clock, this.lifecycle, this.sender, this.buffers, this.outbox);
    this.limits = new Limits(config.limits, this.table, this.replicas, this.buffers, this.lifecycle);
    this.splicer = new Splicer(config, this.table, this.lifecycle, this.outbox);
    this.detector = new FailureDetector(
      config,
      this.clock,
      this.table,
      this.replicas,
      this.outbox,
      () => this.original,
      {
        promote: (id, now, captureWaitMs, confirmedBy, reason) =>
          this.promote(id, now, captureWaitMs, confirmedBy, reason),
        fence: () => this.outbox.push({ type: "fence", address: this.original }),
        removeReplica: (id) => this.removeReplica(id),
        releaseSplicedFin: (conn, s) => this.splicer.forward(conn, s, undefined, 0),
      },
    );
    this.passiveRtt = new PassiveRtt(this.rtt, this.clock, () => this.replicas.size > 0);
  }

  get originalAddress(): number {
    return this.original;
  }

  // ------------------------------------------------------------------ public interface

  /** Outputs produced since the last drain, in order. */
  drain(): EngineOutput[] {
    return this.outbox.drain();
  }

  /** Counts a packet the I/O edge could not parse. */
  reject(reason: string): void {
    this.rejected[reason] = (this.rejected[reason] ?? 0) + 1;
  }

  addReplica(info: ReplicaInfo): void {
    this.replicas.add(info);
    // Connections already open started before this replica had their bytes: it gets only new ones.
    for (const c of this.table.values()) c.notPromotable.add(info.id);
    this.outbox.event({ type: "replica-added", replica: info.id });
  }

  removeReplica(id: string): void {
    if (!this.replicas.has(id)) throw new Error(`no replica ${id}`);
    this.detector.replicaRemoved(id);
    for (const c of this.table.values()) {
      const s = c.shadows.get(id);
      if (!s) continue;
      if (s.live) this.sender.sendRst(c, s);
      this.lifecycle.closeShadow(c, s);
      this.buffers.account(c);
      c.shadows.delete(id);
    }
    this.replicas.remove(id);
    this.rtt.removeReplica(id);
    this.outbox.event({ type: "replica-removed", replica: id });
  }

  /**
   * Drains replica `id` before its removal: connections opened from now on get no shadow on it;
   * the open ones continue (and it stays promotable for them) until they close or it is removed.
   */
  drainReplica(id: string): void {
    if (!this.replicas.has(id)) throw new Error(`no replica ${id}`);
    this.replicas.drain(id);
  }

  replicaIds(): string[] {
    return this.replicas.ids();
  }

  connection(clientAddr: number, clientPort: number): ReplicatedConnection | undefined {
    return this.table.get(connectionKey(clientAddr, clientPort));
  }

  connections(): IterableIterator<ReplicatedConnection> {
    return this.table.values();
  }

  /**
   * Sends what the segments since the last flush made due: client bytes to each replica (as few,
   * as large segments as the window allows) and owed ACKs. The I/O edge calls it after each batch
   * of captured segments, so the more segments arrive together, the fewer go out: when the engine
   * falls behind, it batches more instead of falling further behind.
   */
  flush(now: number): void {
    for (const conn of this.dirty) {
      if (conn.spliced) this.splicer.forward(conn, conn.spliced, undefined, 0);
      for (const s of conn.shadows.values()) {
        this.sender.flush(conn, s, now);
        // An ACK just sent may have been the last word: a shadow whose FINs are both acknowledged
        // is over (else it waited, live, for a segment that never comes).
        this.lifecycle.maybeCloseShadow(conn, s);
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
    this.lastNow = now;
    this.clock.begin(capture, now);
    if (seg.dst === c.vip && seg.dstPort === c.port) {
      this.counters.client++;
      this.clock.carries("client", capture);
      this.onClient(seg, now);
    } else if (seg.src === this.original && seg.srcPort === c.port && seg.dst === c.snatAddress) {
      this.counters.original++;
      this.clock.carries("original", capture);
      this.onOriginal(seg, now);
    } else if (seg.dst === this.original && seg.dstPort === c.port && seg.src === c.snatAddress) {
      if ((seg.flags & (SYN | ACK)) === SYN) {
        this.counters.natSyn++;
        this.onNatSyn(seg, now);
      }
    } else if (
      seg.src === c.snatAddress &&
      seg.dstPort === c.port &&
      (seg.flags & (SYN | ACK)) === SYN &&
      this.replaced.includes(seg.dst)
    ) {
      this.onStaleNatSyn(seg);
    } else if (seg.dst === c.snatAddress && seg.srcPort === c.port) {
      // A fenced former original (a dying kernel retransmitting its FIN, say) or a probe's answer:
      // nothing it sends may reach a client or count as the current original's activity.
      this.counters.notFromOriginal++;
    } else if (seg.dst === c.replicationAddress && seg.srcPort === c.port) {
      this.counters.replica++;
      this.onReplica(seg, now);
    } else {
      this.table.unmatch("foreign-flow");
    }
    this.clock.end();
  }

  /** Runs timers; returns the next time tick() has work, or undefined. */
  tick(now: number): number | undefined {
    this.lastNow = now;
    let next: number | undefined;
    const want = (t: number) => {
      if (next === undefined || t < next) next = t;
    };
    const holding = this.detector.holding(now);
    let failed: Verdict | undefined;
    let suspect: Verdict | undefined;
    this.table.expireUnbound(now, want);
    this.splicer.resendOrphanResets(now, want);
    // Verdicts first: a promotion they cause changes what the connections below are measured
    // against (evidence gathered against the old original must not fail the new one over).
    this.detector.settle(now, want);
    for (const conn of [...this.table.values()]) {
      if (conn.phase === "syn") {
        const expiry = conn.createdAt + this.config.synTimeoutMs;
        if (now >= expiry) {
          this.counters.halfOpenExpired++;
          this.lifecycle.deleteConnection(conn);
          continue;
        }
        want(expiry);
      }
      if (conn.gapSuspects.client || conn.gapSuspects.original) {
        const g = this.gaps.check(conn, now);
        if (g !== undefined) want(g);
        // A gap confirmed now may leave nothing to wait for (seed 278).
        this.lifecycle.checkDone(conn, now);
      }
      {
        // Every connection, also after a signal: it releases held closes of spliced connections
        // and schedules its own next look. The first verdict counts.
        const f = this.detector.inspect(conn, now, want);
        if (f.verdict === "failed") failed ??= f;
        else if (f.verdict === "suspect") suspect ??= f;
      }
      this.closeHold.expire(conn, now, want);
      this.splicer.resendReset(conn, now, want);
      const sp = conn.spliced;
      if (sp && conn.phase === "open" && !this.splicer.timer(conn, now, want)) {
        // Its client stopped acknowledging what the engine retransmitted: it was reset.
        this.lifecycle.resetShadows(conn, now);
      } else if (sp && !sp.live && conn.phase === "open" && !conn.resetting && !endedNormally(sp)) {
        // The shadow that serves the client was given up (bytes lost to capture, a limit, its
        // replica stopped answering): nothing can continue the connection, so the client is told
        // at once instead of waiting on a stream that will never come.
        this.splicer.resetClient(conn);
        this.lifecycle.resetShadows(conn, now);
      }
      for (const s of conn.shadows.values()) {
        if (s.rtoDeadline === undefined) continue;
        if (now >= s.rtoDeadline) this.onRto(conn, s, now);
        if (s.rtoDeadline !== undefined) want(s.rtoDeadline);
      }
      const finAck = this.lifecycle.finAckWait(conn);
      if (finAck !== undefined) {
        this.lifecycle.checkDone(conn, now);
        // Past it, the server's side is what is missing: its segment will call checkDone.
        if (conn.phase === "open" && finAck > now) want(finAck);
      }
      if (conn.phase === "closed" && conn.closedAt !== undefined) {
        // A replica that has every byte but has not closed yet (its application is slow, or
        // paused) is waited for: a RST now would discard what it has not read, and its state
        // would silently differ (found by the simulator, seed 625). Bounded by SHADOW_CLOSE_MS.
        for (const s of conn.shadows.values()) {
          if (s.live) this.lifecycle.maybeCloseShadow(conn, s);
          if (s.live) this.lifecycle.resetAnswered(conn, s);
        }
        const finishing = [...conn.shadows.values()].some((s) => s.live && caughtUp(conn, s));
        const end = conn.closedAt + (finishing ? SHADOW_CLOSE_MS : this.config.lingerMs);
        if (now >= end) {
          this.lifecycle.deleteConnection(conn);
          continue;
        }
        want(finishing ? Math.min(end, now + this.config.lingerMs) : end);
      }
    }
    this.detector.endTick(now, holding, failed, suspect, want);
    return next;
  }

  /** The answer to a "probe" output (see FailureDetector.probeResult). */
  probeResult(id: number, alive: boolean | undefined, now: number, why = "no answer", sentUs?: number): void {
    this.detector.probeResult(id, alive, now, why, sentUs);
  }

  /**
   * The original is about to be paused on purpose for up to `ms` (a fork of its disk): until
   * releaseHold() or the deadline, its silence is not a failure. Stall clocks restart when the
   * hold ends, so a stall must then last its full threshold again. Bounded: a hold that is never
   * released ends by itself.
   */
  holdOriginal(ms: number, now: number): void {
    this.detector.holdOriginal(ms, now);
  }

  /** The planned pause is over (the original was resumed). */
  releaseHold(now: number): void {
    this.detector.releaseHold(now);
  }

  /**
   * The replica to promote: not promoted, not suspected of failing itself, the one that can carry
   * the most open connections on (healthy, faithful shadows, still open ones first), then the
   * lowest smoothed RTT.
   */
  bestReplica(): string | undefined {
    return this.detector.election.bestReplica();
  }

  /**
   * Makes replica `id` the original (see splice.ts): every open connection whose shadow on it is
   * a faithful copy is spliced, every other one reset toward the client. The kernel side (fence
   * the old original, point new connections at the new one) is the I/O edge's job: see the
   * "promote" output.
   */
  /**
   * A promotion of `id` asked for from outside (a planned switchover, an external failure
   * signal): at once if the capture has caught up, else the original is fenced first (a "fence"
   * output) and the promotion follows when it has, at most PROMOTION_CATCH_UP_MS later (the
   * "promoted" event says when). Throws, changing nothing, if `id` is no replica to promote.
   */
  switchover(id: string, now: number, reason = "switchover", external = false): void {
    const r = this.replicas.get(id);
    if (!r || r.promoted) throw new Error(`no replica ${id} to promote`);
    this.detector.election.switchover(id, reason, now, external ? "external" : "switchover");
  }

  /** Open connections the capture has not caught up with (see Election.captureBehind). */
  captureBehind(): number {
    return this.detector.election.captureBehind();
  }

  promote(
    id: string,
    now: number,
    captureWaitMs = 0,
    confirmedBy: Confirmation | "switchover" = "switchover",
    reason = "switchover",
  ): SpliceReport {
    const r = this.replicas.get(id);
    if (!r || r.promoted) throw new Error(`no replica ${id} to promote`);
    const old = this.original;
    const report = this.splicer.promote(id, now);
    this.replicas.promote(id);
    this.promotions++;
    this.detector.promoted(old, now, confirmedBy, reason, r.minRttMs);
    this.original = r.info.address;
    this.replaced.splice(
      0,
      this.replaced.length,
      ...this.replaced.filter((a) => a !== old && a !== this.original),
    );
    this.replaced.push(old);
    if (this.replaced.length > MAX_REPLACED) this.replaced.shift();
    for (const c of this.table.forgetNat()) {
      // A refused connection on the replaced original: fenced with it, nothing carries it on.
      // Reset where its client expects the next byte (a client waiting for data sends nothing).
      if (c.lastAck === undefined && c.sentEnd === undefined) continue;
      this.counters.orphansReset++;
      for (const at of new Set([c.lastAck, c.sentEnd]))
        if (at !== undefined) this.splicer.resetOrphan(this.resetTo(c.addr, c.port, at), now);
    }
    this.outbox.push({ type: "promote", replica: id, original: r.info.address, previous: old });
    this.outbox.event({ type: "promoted", replica: id, ...report, captureWaitMs, confirmedBy });
    if (this.replicas.promotableCount() === 0)
      this.outbox.event({
        type: "no-replica-left",
        reason: `${id} was the last replica: the service runs unreplicated`,
      });
    return report;
  }

  /** The cumulative RTT histograms of every path, for exposition (Prometheus). */
  rttSeries(): RttSeries[] {
    return this.rtt.series();
  }

  stats(now = this.lastNow): EngineStats {
    const k = this.counters;
    const replicas = this.replicas.stats((id) => {
      let active = 0;
      for (const c of this.table.values()) if (c.shadows.get(id)?.live) active++;
      return active;
    });
    let oooRefused = 0;
    for (const c of this.table.values()) {
      oooRefused += c.client.oooRefused + c.original.oooRefused;
      for (const s of c.shadows.values()) oooRefused += s.reply.oooRefused;
    }
    const election = this.detector.election;
    return {
      packets: {
        client: k.client,
        original: k.original,
        natSyn: k.natSyn,
        natInferred: this.table.natInferred,
        replica: k.replica,
        unmatched: this.table.unmatched,
        unmatchedBy: { ...this.table.unmatchedBy },
        notFromOriginal: k.notFromOriginal,
      },
      rejected: { ...this.rejected },
      connections: {
        active: this.table.size,
        opened: k.opened,
        closed: this.lifecycle.closed,
        finAckInferred: this.lifecycle.finAckInferred,
        notReplicated: k.notReplicated,
        halfOpenExpired: k.halfOpenExpired,
        closesPassedThrough: k.closesPassedThrough,
        orphansReset: k.orphansReset,
        promotionRaceReset: k.raceReset,
        passthroughEvicted: this.table.passthroughEvicted,
      },
      clientBytes: k.clientBytes,
      originalBytes: k.originalBytes,
      bufferedBytes: this.buffers.total,
      outOfOrderRefusedBytes: oooRefused,
      captureGaps: this.gaps.count,
      failures: {
        detected: election.failuresDetected,
        promotions: this.promotions,
        original: formatIPv4(this.original),
        replicasLeft: this.replicas.promotableCount(),
        replicasFailed: this.detector.replicasFailed,
        refusals: { held: election.refusalsHeld, dropped: election.refusalsDropped },
        probes: { ...this.detector.probes.counters },
        thresholds: this.detector.thresholds(),
        withheld: this.detector.withheld,
        falseFailovers: this.detector.falseFailovers,
        formerOriginals: this.detector.formers.map(({ addr: _addr, ...w }) => ({ ...w })),
      },
      closeHoldTimeouts: this.closeHold.timeouts,
      closesReleased: this.closeHold.released,
      replicas,
      rtt: this.rtt.stats(now),
    };
  }

  /**
   * Every invariant that spans the parts, checked over the whole engine (O(connections ×
   * replicas)): tests and the simulator call it after every step. Throws InvariantError.
   */
  checkInvariants(): void {
    const L = this.config.limits;
    this.table.checkInvariants(L.maxConnections);
    let total = 0;
    const perReplica = new Map<string, number>();
    for (const conn of this.table.values()) {
      total += conn.client.footprint + conn.original.footprint;
      for (const [id, s] of conn.shadows) {
        assert(this.replicas.has(id), () => `${conn.id} has a shadow on ${id}, not a replica`);
        if (s.live) total += s.reply.footprint;
        perReplica.set(id, (perReplica.get(id) ?? 0) + s.accountedReplica);
        if (s.state === "open") this.sender.check(conn, s);
        assert(
          s.compared <= Math.min(s.reply.end, conn.original.end) || !s.comparing,
          () => `${conn.id}/${id}: compared ${s.compared} beyond what both sent`,
        );
        assert(
          !s.live || s.reply.footprint <= L.perConnectionBytes,
          () => `${conn.id}/${id}: reply bytes beyond the per-connection limit`,
        );
        assert(
          !s.resetPending || (conn.clientRst && conn.phase === "closed"),
          () => `${conn.id}/${id}: a reset waits for its replica on a connection the client did not reset`,
        );
      }
      assert(
        conn.spliced === undefined || conn.shadows.get(conn.spliced.replica.id) === conn.spliced,
        () => `${conn.id}: spliced onto a shadow it does not hold`,
      );
    }
    assert(total === this.buffers.total, () => `buffers: accounted ${this.buffers.total}, held ${total}`);
    assert(
      total <= L.globalBytes,
      () => `limits: the engine holds ${total} bytes, global limit ${L.globalBytes}`,
    );
    for (const r of this.replicas.values())
      assert(
        r.buffered === (perReplica.get(r.info.id) ?? 0),
        () => `buffers: ${r.info.id} accounted ${r.buffered}, its shadows ${perReplica.get(r.info.id) ?? 0}`,
      );
  }

  // ------------------------------------------------------------------ client side

  private onClient(seg: TcpSegment, now: number): void {
    const key = connectionKey(seg.src, seg.srcPort);
    let conn = this.table.get(key);
    if (seg.flags & SYN && !(seg.flags & ACK)) {
      this.table.orphaned(seg.src, seg.srcPort, { rst: false, syn: true }); // a new connection
      // A retransmitted SYN (but one that follows a reset: the client is still trying).
      if (conn && conn.clientIsn === seg.seq && !conn.resetting) return;
      if (conn) this.lifecycle.abortConnection(conn); // the client reused its port: the old one is over
      if (this.table.size >= this.config.limits.maxConnections) {
        this.counters.notReplicated++;
        this.table.refuse(seg.seq, { addr: seg.src, port: seg.srcPort, isn: seg.seq });
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
      for (const w of this.table.add(conn)) this.onOriginal(w.seg, w.at);
      return;
    }
    if (!conn) {
      // A connection older than the engine, one it refused, or one whose SYN the capture lost:
      // the kernel path serves it alone (the last kind's closes are passed on, see adopt()).
      this.table.unmatch("client-unknown-connection");
      if (seg.flags & ACK) for (const w of this.table.adopt(seg)) this.onOriginal(w.seg, w.at);
      const refused = seg.flags & ACK ? this.table.passedThroughClient(seg.src, seg.srcPort) : undefined;
      if (refused) refused.lastAck = seg.ack;
      if (
        seg.flags & ACK &&
        !refused && // a new connection from that port, passed through (its SYN lost to capture)
        this.table.orphaned(seg.src, seg.srcPort, { rst: (seg.flags & RST) !== 0, syn: false })
      ) {
        // Refused, then fenced with its original: reset where the client expects the next byte.
        this.counters.orphansReset++;
        this.outbox.send(this.resetFor(seg), "client");
      }
      return;
    }
    if (conn.phase === "closed" && conn.clientRst) return;
    if (conn.resetting) {
      // Linux answers an inexact RST with a challenge ACK (RFC 5961) naming rcv_nxt: reset there.
      if (!(seg.flags & RST) && seg.flags & ACK)
        this.outbox.send(this.splicer.toClient(conn, seg.ack, RST | ACK), "client");
      return;
    }

    if (seg.flags & RST) {
      conn.clientRst = true;
      this.lifecycle.clientReset(conn, now);
      return;
    }

    const ts = findOption(seg.options, "timestamp");
    if (ts) {
      conn.lastClientTsval = ts.tsval;
      // The client echoes the newest TSval of the original it accepted (its TS.Recent): a floor
      // for what a splice must continue from, even when the capture missed the original's
      // segments (PAWS would drop a replica's older TSvals, and the connection would hang).
      if (!conn.spliced && !(seg.flags & SYN))
        conn.lastOriginalTsval = newerTsval(conn.lastOriginalTsval, ts.tsecr);
      else if (conn.spliced) this.splicer.clientEcho(conn, ts.tsecr);
      this.passiveRtt.clientTimestamps(conn, seg, ts, now);
    }
    const oldWindow = conn.lastClientWindow;
    conn.lastClientWindow = seg.window;

    if (seg.flags & ACK) {
      if (conn.originalIsn === undefined) conn.originalIsn = seqAdd(seg.ack, -1);
      if (conn.phase === "syn" && conn.onReplacedOriginal && conn.natPort === undefined) {
        this.counters.raceReset++;
        this.splicer.resetClient(conn);
        this.lifecycle.markClosed(conn, now);
        return;
      }
      if (conn.phase === "syn") {
        this.passiveRtt.clientHandshakeAck(conn, now);
        this.openShadows(conn, now);
      }
      const ackOff = toOffset(seg.ack, conn.originalIsn, conn.clientAckOffset);
      const ackedBefore = conn.clientAckOffset;
      if (ackOff > conn.clientAckOffset) conn.clientAckOffset = ackOff;
      if (conn.spliced)
        this.splicer.clientAcked(
          conn,
          ackedBefore,
          // A duplicate ACK carries no data, no FIN and the same window (RFC 5681).
          seg.payload.length === 0 && !(seg.flags & FIN) && seg.window === oldWindow,
          now,
        );
      this.passiveRtt.clientAck(conn, ackOff, now);
      const replyEnd = conn.original.end + (conn.originalFinOffset === conn.original.end ? 1 : 0);
      // After a splice the client acknowledges the new original's bytes, which we send ourselves.
      if (
        !conn.spliced &&
        conn.clientAckOffset > replyEnd &&
        !conn.captureGap &&
        conn.originalIsn !== undefined
      ) {
        // The client acknowledged reply bytes we never captured: they cannot be verified.
        this.gaps.suspect(conn, "original", conn.clientAckOffset, now);
      }
    }

    if (seg.payload.length > 0 || seg.flags & FIN) {
      const off = toOffset(seg.seq, conn.clientIsn, conn.client.end);
      this.passiveRtt.clientData(conn, off, seg.payload.length, now);
      const grew = conn.client.write(off, seg.payload);
      this.counters.clientBytes += grew;
      if (conn.client.end > conn.originalAckOffset) conn.unackedSince ??= now;
      if (seg.flags & FIN && conn.clientFinOffset === undefined)
        conn.clientFinOffset = off + seg.payload.length;
      if (seg.flags & FIN) conn.clientFinAt = now;
    }

    if (conn.spliced && !conn.resetting) {
      // The engine is the client's peer now: a segment that brings nothing new (a retransmission
      // after our ACK was lost, a zero-window probe) is answered with an ACK at once, as a TCP
      // receiver does; else the client waits forever (found by the simulator, seed 288).
      const end = toOffset(seg.seq, conn.clientIsn, conn.client.end) + seg.payload.length;
      const fin = seg.flags & FIN ? 1 : 0;
      if (
        end + fin <= conn.client.end + (conn.clientFinReady ? 1 : 0) &&
        (seg.payload.length > 0 || fin || end < conn.client.end)
      )
        this.splicer.ackClient(conn);
    }

    for (const s of conn.shadows.values()) {
      if (s.state === "open" && oldWindow !== seg.window && s.lastWindowSent < seg.window) s.ackOwed = true;
    }
    this.dirty.add(conn);
    this.gaps.check(conn, now);
    this.lifecycle.checkDone(conn, now);
    this.limits.enforce(conn);
  }

  private onNatSyn(seg: TcpSegment, now: number): void {
    const bound = this.table.natSyn(seg);
    if (!bound) return;
    bound.conn.natSynAt = this.clock.seen(now);
    for (const w of bound.replay) this.onOriginal(w.seg, w.at);
  }

  /**
   * The kernel path's SYN toward an original just replaced: the client's SYN came between the
   * promotion and the nft transaction that points new connections at the new original (a few
   * milliseconds). Its conntrack entry may stay on the fenced original for good (established
   * before the retarget), where nothing answers it: such a connection is reset at its handshake
   * (found by the simulator, seed 1242: a client waited for good on a fenced original). A
   * retransmitted SYN that reaches the new original binds it again (natSyn) and clears this.
   */
  private onStaleNatSyn(seg: TcpSegment): void {
    if (this.table.orphanRefused(seg.seq)) return;
    let tracked = false;
    for (const conn of this.table.values())
      if (conn.phase === "syn" && conn.clientIsn === seg.seq) {
        conn.onReplacedOriginal = true;
        tracked = true;
      }
    if (!tracked) this.table.staleSyn(seg.seq);
  }

  private openShadows(conn: ReplicatedConnection, now: number): void {
    conn.phase = "open";
    this.counters.opened++;
    const port = this.table.allocateShadowPort(conn);
    if (port === undefined) {
      this.counters.notReplicated++;
      this.outbox.event({ type: "connection-opened", conn: conn.id, replicas: [] });
      return;
    }
    for (const r of this.replicas.values()) {
      if (!this.replicas.takesNewConnections(r)) continue;
      const s = new ShadowConversation(r.info, this.config.rto.initialMs, this.config.limits.outOfOrderBytes);
      conn.shadows.set(r.info.id, s);
      r.shadowsOpened++;
      this.sender.sendSyn(conn, s, now);
    }
    this.outbox.event({ type: "connection-opened", conn: conn.id, replicas: [...conn.shadows.keys()] });
  }

  // ------------------------------------------------------------------ original side

  private onOriginal(seg: TcpSegment, now: number): void {
    let conn = this.table.byNat(seg.dstPort);
    // A SYN-ACK on a passed-through port is a new connection's (its NATed SYN not handled yet):
    // the port is no longer the old one's.
    if (!conn && seg.flags & SYN) this.table.synAckOn(seg.dstPort, seg.ack);
    const refused = conn ? undefined : this.table.passedThrough(seg.dstPort);
    if (refused) {
      // Where the original's stream has got to: a reset at a client's stale acknowledgement is out
      // of its window (bytes in flight) and dropped; at the end of what was sent it is exact or
      // draws a challenge ACK, which orphaned() answers exactly (simulator seed 1194: a
      // downloading client whose original was fenced waited for good).
      const end = (seg.seq + seg.payload.length + (seg.flags & (SYN | FIN) ? 1 : 0)) >>> 0;
      if (refused.sentEnd === undefined || ((end - refused.sentEnd) | 0) > 0) refused.sentEnd = end;
      // Not replicated (the table was full): its close goes on as the kernel path would send it.
      if (seg.flags & (FIN | RST)) {
        this.counters.closesPassedThrough++;
        this.outbox.send(this.clientView(refused, seg), "client");
      }
      return;
    }
    if (!conn) {
      const bound = this.table.bindByAck(seg);
      if (!bound) {
        // The NATed SYN that names this port travels on another capture channel and may not have
        // been handled yet: keep the segment a moment and replay it when the binding arrives.
        this.table.holdUnbound(seg, now);
        return;
      }
      for (const w of bound.replay) this.onOriginal(w.seg, w.at);
      conn = bound.conn;
    }
    if (this.foreign(conn, seg)) {
      this.counters.notFromOriginal++;
      return;
    }
    this.detector.heardFromOriginal(seg.payload.length > 0, this.clock.seen(now));
    const ots = findOption(seg.options, "timestamp");
    if (ots) conn.lastOriginalTsval = newerTsval(conn.lastOriginalTsval, ots.tsval);
    if (seg.flags & SYN) {
      if (seg.flags & ACK) {
        const ms = this.passiveRtt.originalSynAck(conn, now);
        // Detection's estimator keeps the samples it was tuned with (the SYN-ACK handled before
        // the client's ACK, see docs/PROGRESS.md); the histogram takes every handshake.
        if (ms !== undefined && conn.originalIsn === undefined) this.detector.originalHandshakeRtt(ms);
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
      this.detector.originalRefused(this.clientView(conn, seg), now);
      this.lifecycle.deleteConnection(conn);
      return;
    }
    if (conn.originalIsn === undefined) {
      this.table.unmatch("original-before-syn-ack");
      return;
    }
    const ts = conn.spliced ? undefined : findOption(seg.options, "timestamp");
    if (ts) this.passiveRtt.originalTimestamps(conn, seg, ts, now);
    let requestReceived = false;
    if (seg.flags & ACK) {
      const ackOff = toOffset(seg.ack, conn.clientIsn, conn.originalAckOffset);
      this.passiveRtt.originalAck(conn, ackOff, now);
      if (ackOff > conn.originalAckOffset) {
        conn.originalAckOffset = ackOff;
        // Progress: the stall clocks restart (a long upload always has bytes in flight, and one
        // alive probe must not silence its evidence for good).
        conn.unackedSince = conn.originalAckOffset >= conn.client.end ? undefined : now;
        if (conn.ackBehindSince !== undefined) conn.ackBehindSince = now;
        // The original has just received more of the request: its answer is only due from now
        // (found by the simulator, seed 801: a request lost twice on the original's link reached
        // it 3 s after the replica had answered, and the hang budget, counted from the replica's
        // answer, failed a healthy original over 0.5 s later). After the data below: an answer
        // in this segment is measured against the old start.
        requestReceived = true;
      }
      const clientEnd = conn.client.end + (conn.clientFinReady ? 1 : 0);
      if (conn.originalAckOffset > clientEnd && !conn.captureGap) {
        this.gaps.suspect(conn, "client", conn.originalAckOffset, now);
      }
    }
    const off = toOffset(seg.seq, conn.originalIsn, conn.original.end);
    if (seg.payload.length > 0) {
      this.passiveRtt.originalData(conn, off, seg.payload.length, now);
      this.counters.originalBytes += conn.original.write(off, seg.payload);
      for (const s of conn.shadows.values()) this.verifier.compare(conn, s);
      if (conn.replyAheadSince !== undefined) {
        let ahead = false;
        for (const s of conn.shadows.values())
          if (s.comparing && s.reply.end > Math.max(conn.original.end, originalAnswered(conn))) ahead = true;
        if (!ahead) {
          // The original caught up with a replica that had answered first: how far it trails
          // when it does raises the unconfirmed-stall threshold. One sample is at most the
          // floor: a long episode (a replica far ahead in a download) must not blow it up.
          this.detector.originalTrailed(now - conn.replyAheadSince);
          conn.replyAheadSince = undefined;
        } else {
          conn.replyAheadSince = now; // progress: the stall clock restarts
        }
      }
    }
    if (requestReceived && conn.replyAheadSince !== undefined) conn.replyAheadSince = now;
    if (seg.flags & (FIN | RST)) {
      const kind = seg.flags & RST ? "rst" : "fin";
      if (kind === "fin" && conn.originalFinOffset === undefined)
        conn.originalFinOffset = off + seg.payload.length;
      if (kind === "fin") conn.originalFinAt = now;
      this.closeHold.onOriginalClose(conn, kind, this.clientView(conn, seg), now);
    }
    this.gaps.check(conn, now);
    // The original's ACK of the client's FIN may be the last word (found by the simulator, seed
    // 2: such a connection stayed open, in the table, for good).
    this.lifecycle.checkDone(conn, now);
    this.limits.enforce(conn);
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

  /** A RST (no ACK) toward the sender of client segment `seg`, at the sequence it expects. */
  private resetFor(seg: TcpSegment): TcpSegment {
    return this.resetTo(seg.src, seg.srcPort, seg.ack);
  }

  private resetTo(addr: number, port: number, seq: number): TcpSegment {
    return {
      tos: 0,
      id: this.outbox.nextIpId(),
      dontFragment: true,
      ttl: 64,
      src: this.config.vip,
      dst: addr,
      ipOptions: new Uint8Array(0),
      srcPort: this.config.port,
      dstPort: port,
      seq,
      ack: 0,
      flags: RST,
      window: 0,
      urgent: 0,
      options: [],
      payload: new Uint8Array(0),
    };
  }

  /** The original's segment as the kernel path would have delivered it to the client. */
  private clientView(
    conn: { clientAddr: number; clientPort: number } | ClientEnd,
    seg: TcpSegment,
  ): TcpSegment {
    const to = "addr" in conn ? conn : { addr: conn.clientAddr, port: conn.clientPort };
    return {
      ...seg,
      ttl: Math.max(1, seg.ttl - 1),
      src: this.config.vip,
      srcPort: this.config.port,
      dst: to.addr,
      dstPort: to.port,
      options: copyOptions(seg.options),
      ipOptions: Uint8Array.from(seg.ipOptions),
      payload: Uint8Array.from(seg.payload),
    };
  }

  // ------------------------------------------------------------------ replica side

  private onReplica(seg: TcpSegment, now: number): void {
    const conn = this.table.byShadow(seg.dstPort);
    const s = conn && [...conn.shadows.values()].find((x) => x.replica.address === seg.src);
    if (!conn || !s) {
      this.table.unmatch("replica-unknown-shadow");
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
      if (s.state === "syn-sent") {
        this.sender.onSynAck(conn, s, seg, now);
        this.dirty.add(conn);
      } else this.sender.sendAck(conn, s); // our ACK of its SYN was lost
      return;
    }
    if (s.state !== "open" || s.replicaIsn === undefined) return;
    const ts = findOption(seg.options, "timestamp");
    if (ts && (s.tsRecent === undefined || seqDiff(ts.tsval, s.tsRecent) >= 0)) s.tsRecent = ts.tsval;
    if (ts) this.passiveRtt.replicaEcho(s, ts.tsecr, now);

    if (seg.flags & ACK) {
      const ack = this.sender.onAck(conn, s, seg, now);
      if (ack === "advanced") this.buffers.releaseClient(conn);
      if (ack !== "ignored") this.dirty.add(conn);
    }
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
      this.verifier.compare(conn, s);
    }
    if (seg.flags & FIN) {
      const finOff = off + seg.payload.length;
      if (s.replicaFinOffset === undefined) {
        s.replicaFinOffset = finOff;
        s.lastProgressAt = now;
        if (conn.spliced === s) conn.spliceFinSince = now;
        else if (!conn.held && conn.originalFinOffset === undefined)
          this.detector.suspectReplica(s, now, "fin", "closed a connection the original keeps open", conn);
      } else duplicate = true;
      this.closeHold.check(conn, now);
    }
    if (seg.payload.length === 0 && !(seg.flags & FIN) && off < s.reply.end) {
      // A window probe (or a keepalive): one below what was acknowledged. A receiver answers it
      // with an ACK carrying its window (RFC 9293 3.10.7.4). Spliced, the engine is the client's
      // sender too: the client's window update may have been lost, so it probes the client's
      // zero window in turn, at the replica's persist pace (found by the simulator, seed 1806: a
      // download stopped for good at a zero window nobody probed).
      s.ackOwed = true;
      this.dirty.add(conn);
      if (conn.spliced === s && conn.lastClientWindow === 0) this.splicer.probeClientWindow(conn);
    }
    if (seg.payload.length > 0 || seg.flags & FIN) {
      const ack = this.sender.ackFor(conn, s);
      // ACK when it advances; re-ACK duplicates (our ACK was lost); dup-ACK with SACK across a
      // hole so the replica retransmits it. Never ACK just to say "held by the client": that
      // would look like duplicate ACKs and trigger needless fast retransmits.
      if (ack > s.rcvAcked || duplicate || hole) {
        s.ackOwed = true;
        this.dirty.add(conn);
      }
    }
    // Failure-detection markers start when the evidence arrives, not at the next timer tick.
    if (s.comparing && s.reply.end > Math.max(conn.original.end, originalAnswered(conn)))
      conn.replyAheadSince ??= now;
    if (s.comparing && Math.max(0, s.sndUna) > conn.originalAckOffset) conn.ackBehindSince ??= now;
    if (conn.spliced === s)
      this.splicer.forward(
        conn,
        s,
        seg.payload.length > 0 ? off : undefined,
        seg.payload.length,
        (seg.flags & FIN) !== 0,
      );
    this.lifecycle.maybeCloseShadow(conn, s);
    this.lifecycle.resetAnswered(conn, s);
    this.lifecycle.checkDone(conn, now);
    this.limits.enforce(conn);
  }

  private onReplicaRst(conn: ReplicatedConnection, s: ShadowConversation, now: number): void {
    s.replicaRst = true;
    if (conn.spliced === s) {
      // The new original reset the connection: so does the client's view of it.
      this.splicer.resetClient(conn);
      this.lifecycle.closeShadow(conn, s);
      this.lifecycle.markClosed(conn, now);
      this.buffers.account(conn);
      return;
    }
    // A reset is expected when the original reset too, or after a close both made alike (a late
    // segment to a closed socket), whichever of the two resets is captured first.
    const expected =
      conn.held?.kind === "rst" ||
      (conn.held?.released === true &&
        s.replicaFinOffset !== undefined &&
        s.replicaFinOffset === conn.originalFinOffset);
    if (!expected)
      this.detector.suspectReplica(
        s,
        now,
        "rst",
        s.state === "syn-sent" ? "refused a connection" : "reset a connection the original keeps open",
      );
    if (!expected && s.status === "healthy") {
      const reason = s.state === "syn-sent" ? "refused the connection" : "reset the connection";
      this.lifecycle.setStatus(conn, s, s.state === "syn-sent" ? "lagging" : "diverged", reason, s.compared);
    }
    this.lifecycle.closeShadow(conn, s);
    this.closeHold.check(conn, now);
    this.lifecycle.checkDone(conn, now);
    this.buffers.account(conn);
  }

  /** The shadow's retransmission timer fired: the sender resends; the engine acts on what it
   * reports (a replica suspected of failing, a shadow given up). */
  private onRto(conn: ReplicatedConnection, s: ShadowConversation, now: number): void {
    const outcome = this.sender.onRto(conn, s, now);
    if (outcome.suspect) this.detector.suspectReplica(s, now, "stall", outcome.suspect);
    const g = outcome.giveUp;
    if (!g) return;
    this.lifecycle.setStatus(conn, s, "lagging", g.reason, g.offset);
    if (g.rst) this.sender.sendRst(conn, s);
    this.lifecycle.closeShadow(conn, s);
    this.buffers.account(conn);
  }
}

/** The later of two TSvals (modulo 2^32), either possibly unknown. */
function newerTsval(a: number | undefined, b: number): number {
  return a === undefined || seqDiff(b, a) > 0 ? b : a;
}

/** A shadow that ended with both FINs exchanged and acknowledged. */
function endedNormally(s: ShadowConversation): boolean {
  return s.finAcked && s.replicaFinOffset !== undefined && s.rcvAcked === s.replicaFinOffset + 1;
}

/** The replica acknowledged every byte of the client's stream (its FIN included). */
function caughtUp(conn: ReplicatedConnection, s: ShadowConversation): boolean {
  return Math.max(0, s.sndUna) >= conn.client.end + (conn.clientFinReady ? 1 : 0);
}
