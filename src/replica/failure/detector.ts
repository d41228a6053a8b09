// Failure detection: evidence → probe → verdict → election (docs/ARCHITECTURE.md "Failure
// detection and failover"). The parts: evidence against the original per connection
// (evidence.ts), evidence against replicas (here: a replica that closed or reset alone, or stopped
// acknowledging), probes and their answers (probes.ts), verdicts that wait for the capture
// channels, planned holds of the original (hold.ts), and the election (election.ts). Verdicts
// about the original lead to a promotion (or a signal to the operator); about a replica, to its
// removal.
import type { TcpSegment } from "../../wire/tcp.js";
import type { CaptureClock, Seen } from "../capture-clock.js";
import type { ConnectionTable } from "../connection-table.js";
import type { ReplicatedConnection } from "../connection.js";
import type { Outbox } from "../outbox.js";
import type { ReplicaSet } from "../replica-set.js";
import type { ShadowConversation } from "../shadow.js";
import type { Confirmation, EngineConfig, FormerOriginal } from "../types.js";
import { formatIPv4 } from "../../wire/ipv4.js";
import { Election } from "./election.js";
import { CLOSE_ALONE, OriginalEvidence, STALL_PROBE_INTERVAL_MS, type Verdict } from "./evidence.js";
import { PlannedHold } from "./hold.js";
import { CANDIDATE, PERIODIC, ProbeBook } from "./probes.js";
import { confirmation, decide, EVIDENCE_PROBE_COPIES, REFUSALS } from "./rule.js";
/** A dead probe answer waits at most this long for the capture channels. */
export const CATCH_UP_MS = 5;
/** The second, patient try of a periodic replica probe that went unanswered (see probeResult). */
const PATIENT_REPLICA_PROBE_FACTOR = 4;
// Covers one SYN retransmission (1 s): a lost SYN or a neighbour still resolving is not a death.
const PATIENT_REPLICA_PROBE_MIN_MS = 1500;
/** A replaced original is probed this often, for FORMER_WATCH_MS after its replacement: does it
 * answer again (a false failover, or a failure that healed)? */
export const FORMER_PROBE_INTERVAL_MS = 500;
export const FORMER_WATCH_MS = 60_000;
/** Former originals remembered at once (the oldest is forgotten). */
export const MAX_FORMER_ORIGINALS = 16;
const FORMER = "former ";

/** Evidence that a replica itself failed, waiting to be confirmed by a probe. */
interface ReplicaSuspect {
  since: number;
  /** The latest evidence (an alive answer to a probe sent before it does not clear it). */
  lastAt: number;
  kind: "fin" | "rst" | "stall";
  reason: string;
  conn?: ReplicatedConnection;
}

/** What detection needs the engine to do. */
export interface FailureActions {
  /** Promote replica `id` (the election's choice). */
  promote: (
    id: string,
    now: number,
    captureWaitMs: number,
    confirmedBy: Confirmation | "switchover",
    reason: string,
  ) => void;
  /** The original is fenced ahead of a promotion that waits for the capture. */
  fence: () => void;
  /** Remove replica `id` (it failed): its shadows reset, its state freed. */
  removeReplica: (id: string) => void;
  /** Send a spliced connection's held FIN on to the client. */
  releaseSplicedFin: (conn: ReplicatedConnection, s: ShadowConversation) => void;
}

export class FailureDetector {
  readonly probes: ProbeBook;
  readonly election: Election;
  private readonly evidence: OriginalEvidence;
  private readonly hold: PlannedHold;
  private readonly suspects = new Map<string, ReplicaSuspect>();
  /** When each replica was last probed because of evidence (rate limit). */
  private readonly lastEvidenceProbeAt = new Map<string, number>();
  replicasFailed = 0;
  /** When the last promotion happened (hysteresis). */
  private lastPromotionAt = -Infinity;
  /** A withheld verdict was reported in this window already (one event per window). */
  private withheldUntil = -Infinity;
  withheld = 0;
  falseFailovers = 0;
  /** Replaced originals, watched for an answer (oldest first). */
  readonly formers: Array<FormerOriginal & { addr: number }> = [];

  constructor(
    private readonly config: Pick<EngineConfig, "failure" | "finHoldMs">,
    private readonly clock: CaptureClock,
    private readonly table: ConnectionTable,
    private readonly replicas: ReplicaSet,
    private readonly outbox: Outbox,
    /** The current original's address. */
    private readonly original: () => number,
    private readonly actions: FailureActions,
  ) {
    this.probes = new ProbeBook(outbox);
    this.evidence = new OriginalEvidence(config.failure, config.finHoldMs, clock, actions.releaseSplicedFin);
    this.hold = new PlannedHold((now) => this.evidence.restartStallClocks(now));
    this.election = new Election(
      config.failure,
      table,
      replicas,
      this.probes,
      (id) => this.suspects.has(id),
      outbox,
      actions.promote,
      clock,
      actions.fence,
    );
  }

  // ---------------------------------------------------------------- what the engine saw

  /** The original sent a segment (`data`: with payload). */
  heardFromOriginal(data: boolean, seen: Seen): void {
    this.evidence.heard(data, seen);
  }

  /** A handshake RTT to the original (ms, capture clock). */
  originalHandshakeRtt(ms: number): void {
    this.evidence.handshakeRtt(ms);
  }

  /** The original caught up with a replica that had answered first, `ms` later. */
  originalTrailed(ms: number): void {
    this.evidence.trailed(Math.min(ms, this.config.failure.hangBudgetMs));
  }

  /** The original refused a connection: a probe decides whether the refusal goes to the client
   * (alive) or is dropped (its service died: the client's retry reaches the new original). */
  originalRefused(refusal: TcpSegment, now: number): void {
    if (this.election.holdRefusal(refusal, now)) this.probeOriginal("the original refused a connection", now);
    else this.outbox.send(refusal, "client");
  }

  suspectReplica(
    s: ShadowConversation,
    now: number,
    kind: "fin" | "rst" | "stall",
    reason: string,
    conn?: ReplicatedConnection,
  ): void {
    const r = this.replicas.get(s.replica.id);
    if (!r || r.promoted || !this.config.failure.probes) return;
    const sp = this.suspects.get(s.replica.id);
    if (sp) {
      sp.lastAt = now; // newer evidence: re-armed if the pending probe answers alive
      return;
    }
    this.suspects.set(s.replica.id, { since: now, lastAt: now, kind, reason, ...(conn ? { conn } : {}) });
  }

  // ---------------------------------------------------------------- timers

  /** Start of a tick: ends a planned hold that ran out; returns whether one is on. */
  holding(now: number): boolean {
    return this.hold.update(now);
  }

  /** Acts on dead probe answers once every capture channel has delivered what was captured
   * before the probe (or CATCH_UP_MS passed). */
  settle(now: number, want: (t: number) => void): void {
    const dead = this.probes.deadVerdicts;
    // Replicas first: a dying replica must be gone before the original's verdict elects one.
    const batch = dead
      .splice(0)
      .sort((a, b) => Number(a.probe.target === "original") - Number(b.probe.target === "original"));
    const generation = this.probes.originalGeneration;
    for (const v of batch) {
      const p = v.probe;
      // A promotion while settling: verdicts about the old original no longer apply (kept, one
      // would fail over the new, healthy original).
      if (p.target === "original" && this.probes.originalGeneration !== generation) continue;
      // A probe sent later answered alive: that newer answer wins (one lost SYN is not a death).
      if (this.probes.aliveSince(p.target) >= p.sentAt) continue;
      const caughtUp = v.sentUs === undefined || this.clock.passed(v.sentUs);
      const deadline = v.receivedAt + CATCH_UP_MS;
      if (!caughtUp && now < deadline) {
        dead.push(v);
        want(Math.min(deadline, now + 1));
        continue;
      }
      const reason = `${p.reason}; probe of its service port: ${v.why}`;
      if (p.target === "original" && this.hold.heldAt(p.sentAt, now)) {
        // The original was paused on purpose: its silence is no verdict.
        this.probes.counters.unknown++;
        continue;
      }
      if (p.target === "original") {
        if (!this.election.failureSignaled)
          this.election.originalFailed(
            reason,
            "",
            now - p.sentAt,
            now,
            confirmation(v.why, p.checkMs !== undefined),
            p.sentAt,
          );
      } else {
        this.replicaFailed(p.target, reason, now);
      }
    }
  }

  /** The evidence against the original on one connection (also releases held closes of spliced
   * connections and schedules its own next look). */
  inspect(conn: ReplicatedConnection, now: number, want: (t: number) => void): Verdict {
    return this.evidence.inspect(
      conn,
      now,
      this.probes.aliveSince("original"),
      this.probes.checkedSince("original"),
      want,
    );
  }

  /**
   * End of a tick: held refusals that ran out, replica suspicions, the election, periodic probes,
   * and what this tick's evidence (`failed`, `suspect`: the first of each) calls for.
   */
  endTick(
    now: number,
    holding: boolean,
    failed: Verdict | undefined,
    suspect: Verdict | undefined,
    want: (t: number) => void,
  ): void {
    this.election.expireRefusals(now, want);
    this.checkReplicas(now, want);
    this.election.run(now, want);
    this.periodicProbes(now, want);
    this.watchFormers(now, want);
    if (this.election.failureSignaled) return;
    if (holding) {
      want(this.hold.until!);
      return;
    }
    if (failed?.verdict === "failed" && this.actOn(failed, now, want)) {
      // acted on (a failover, or a health check asked)
    } else if (suspect?.verdict === "suspect") {
      if (!suspect.reason.startsWith(CLOSE_ALONE)) this.evidence.lastStallProbeAt = now;
      this.probeOriginal(suspect.reason, now);
    }
  }

  /**
   * Unconfirmed evidence past its threshold: the decision rule (rule.ts) says whether it fails
   * over now, asks the health check first, or is withheld (hysteresis). True when acted on.
   */
  private actOn(
    failed: Extract<Verdict, { verdict: "failed" }>,
    now: number,
    want: (t: number) => void,
  ): boolean {
    const f = this.config.failure;
    const d = decide(failed.by, f, now, this.lastPromotionAt);
    if (d.act === "fail-over") {
      this.election.originalFailed(failed.reason, failed.conn.id, failed.afterMs, now, failed.by);
      return true;
    }
    if (d.act === "check") {
      const reason = `${failed.reason} for ${Math.round(failed.afterMs)} ms (hang budget): health check`;
      this.probes.request("original", this.original(), reason, now, this.evidence.probeTimeoutMs(), false, {
        checkMs: f.healthCheckMs,
      });
      return true;
    }
    if (now >= this.withheldUntil) {
      this.withheldUntil = d.until;
      this.withheld++;
      this.outbox.event({
        type: "failover-withheld",
        reason: failed.reason,
        conn: failed.conn.id,
        afterMs: failed.afterMs,
        why: d.why,
      });
    }
    want(d.until);
    return false;
  }

  // ---------------------------------------------------------------- probes

  /**
   * Evidence against the original: probe it, and at the same moment the replica that would
   * replace it. If the original is dead the candidate's answer is there already (no second round
   * trip before the promotion), and its packets move the backend capture channel past the probe's
   * send time, so the verdict need not wait for CATCH_UP_MS.
   */
  private probeOriginal(reason: string, now: number): void {
    this.probes.request("original", this.original(), reason, now, this.evidence.probeTimeoutMs(), false, {
      copies: EVIDENCE_PROBE_COPIES,
    });
    const best = this.election.bestReplica();
    const r = best === undefined ? undefined : this.replicas.get(best);
    if (!r || !this.config.failure.autoFailover) return;
    const timeout = Math.max(this.config.failure.probeTimeoutMs, 4 * (r.lastSrttMs ?? 0));
    this.probes.request(
      r.info.id,
      r.info.address,
      `replica ${r.info.id}: ${CANDIDATE}`,
      now,
      timeout,
      false,
      {
        checkMs: this.config.failure.healthCheckMs,
      },
    );
  }

  /** Probes every backend each probeIntervalMs, evidence or not (idle services fail too). */
  private periodicProbes(now: number, want: (t: number) => void): void {
    const f = this.config.failure;
    if (!f.probes || f.probeIntervalMs <= 0) return;
    const due = (target: string) => {
      const at = this.probes.lastProbe(target) + f.probeIntervalMs;
      if (now >= at) return true;
      want(at);
      return false;
    };
    // With nothing else pointing at a failure a slow answer is not one: the handshake gets 4 ×
    // its timeout, the health check 4 × its own, and the original's never less than the hang
    // budget (an idle service's pause is a stall like any other).
    const check = f.healthCheckMs === undefined ? undefined : 4 * f.healthCheckMs;
    if (this.hold.until !== undefined) want(this.hold.until);
    else if (!this.election.failureSignaled && due("original"))
      this.probes.request(
        "original",
        this.original(),
        PERIODIC,
        now,
        4 * this.evidence.probeTimeoutMs(),
        false,
        {
          checkMs: check === undefined ? undefined : Math.max(check, this.evidence.hangBudgetMs()),
        },
      );
    for (const r of this.replicas.values()) {
      if (r.promoted || !due(r.info.id)) continue;
      const timeout = 4 * Math.max(f.probeTimeoutMs, 4 * (r.lastSrttMs ?? 0));
      this.probes.request(
        r.info.id,
        r.info.address,
        `replica ${r.info.id}: ${PERIODIC}`,
        now,
        timeout,
        false,
        {
          checkMs: check,
        },
      );
    }
  }

  /** Probes each former original still watched; a watch that ran out ends as "gone". */
  private watchFormers(now: number, want: (t: number) => void): void {
    if (!this.config.failure.probes) return;
    for (const w of this.formers) {
      if (w.state !== "watching") continue;
      if (now - w.replacedAt >= FORMER_WATCH_MS) {
        w.state = "gone";
        continue;
      }
      const target = FORMER + w.address;
      const at = this.probes.lastProbe(target) + FORMER_PROBE_INTERVAL_MS;
      if (now < at) {
        want(Math.min(at, w.replacedAt + FORMER_WATCH_MS));
        continue;
      }
      const f = this.config.failure;
      this.probes.request(
        target,
        w.addr,
        `${FORMER}original ${w.address}: alive again?`,
        now,
        4 * f.probeTimeoutMs,
        false,
        {
          checkMs: f.healthCheckMs,
        },
      );
      want(now + FORMER_PROBE_INTERVAL_MS);
    }
  }

  /**
   * The answer to a "probe" output: did the target's service port accept a connection in time?
   * Alive: the evidence so far is explained (a normal close, a slow answer) and is not probed
   * again. Dead (refused, unreachable, no answer): the original fails over, a replica is removed.
   */
  probeResult(id: number, alive: boolean | undefined, now: number, why = "no answer", sentUs?: number): void {
    const p = this.probes.take(id);
    if (!p) return;
    if (p.target.startsWith(FORMER)) {
      this.formerAnswered(p.target.slice(FORMER.length), alive === true, now);
      return;
    }
    if (alive === undefined) {
      // The probe could not be made (a local error: no port, no buffer): no verdict either way;
      // evidence that persists asks again.
      this.probes.counters.unknown++;
      return;
    }
    this.outbox.event({
      type: "probe-result",
      target: p.target,
      alive,
      reason: p.reason,
      afterMs: now - p.sentAt,
    });
    if (alive) {
      if (p.target === "original") this.election.releaseRefusals((r) => r.at <= p.sentAt);
      this.probes.counters.alive++;
      this.probes.markAlive(p.target, p.sentAt);
      if (p.checkMs !== undefined) this.probes.markChecked(p.target, p.sentAt);
      this.probes.passedOver.delete(p.target);
      const sp = this.suspects.get(p.target);
      if (sp && sp.since <= p.sentAt) {
        if (sp.lastAt > p.sentAt) this.suspects.set(p.target, { ...sp, since: sp.lastAt });
        else this.suspects.delete(p.target);
      }
      if (this.election.running) this.election.run(now);
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
      this.probes.counters.unknown++;
      const address = isOriginal ? this.original() : candidate?.info.address;
      // The original's periodic probe is no more urgent than a replica's (no client is waiting on
      // it), and its deadline may be the LAN floor on a path it never measured (simulator seed
      // 616: a WAN replica switched over, its first periodic probes timed out twice at 20 ms).
      const timeoutMs = Math.max(PATIENT_REPLICA_PROBE_FACTOR * p.timeoutMs, PATIENT_REPLICA_PROBE_MIN_MS);
      if (candidate && p.reason.endsWith(CANDIDATE)) {
        // A candidate silent within the election's short deadline is not promoted (a silently
        // dying replica must never be): it is passed over at once (the next best is asked).
        this.probes.passedOver.add(p.target);
      }
      if (address !== undefined)
        this.probes.request(p.target, address, `${p.reason} unanswered`, now, timeoutMs, true, {
          checkMs: p.checkMs,
        });
      if (candidate && p.reason.endsWith(CANDIDATE) && this.election.running) this.election.run(now);
      return;
    }
    this.probes.counters.dead++;
    // The answer came on its own path: segments captured before the probe may still be on their
    // way through the capture channels (a replica that reset every connection a moment earlier
    // must not be chosen for the promotion). The verdict waits until every channel delivered
    // something captured after the probe was sent (`sentUs`, wall clock like capture times):
    // channels are FIFO, so everything before it is in. The probe's own packets (its SYN on the
    // client channel, the answer on the backend one) make sure something comes.
    this.probes.deadVerdicts.push({ probe: p, why, sentUs, receivedAt: now });
    this.settle(now, () => undefined);
  }

  // ---------------------------------------------------------------- replicas

  /** Replica suspicions (it closed or reset alone, or stopped acknowledging) become probes. */
  private checkReplicas(now: number, want: (t: number) => void): void {
    const f = this.config.failure;
    for (const r of this.replicas.values()) {
      const sp = this.suspects.get(r.info.id);
      if (r.promoted || !sp) continue;
      const c = sp.conn;
      if (
        sp.kind === "fin" &&
        c &&
        (c.held !== undefined ||
          c.originalFinOffset !== undefined ||
          c.phase !== "open" ||
          !this.table.holds(c))
      ) {
        this.suspects.delete(r.info.id); // the original closed too (a normal close), or it is gone
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
      if (sp.since <= this.probes.aliveSince(r.info.id)) {
        this.suspects.delete(r.info.id);
        continue;
      }
      const due = sp.since + (sp.kind === "stall" ? 0 : f.closeMismatchMs);
      if (now < due) {
        want(due);
        continue;
      }
      if (f.probes) {
        const allowed = (this.lastEvidenceProbeAt.get(r.info.id) ?? -Infinity) + STALL_PROBE_INTERVAL_MS;
        if (now < allowed) {
          want(allowed);
          continue;
        }
        this.lastEvidenceProbeAt.set(r.info.id, now);
        const timeout = Math.max(f.probeTimeoutMs, 4 * (r.lastSrttMs ?? 0));
        this.probes.request(r.info.id, r.info.address, `replica ${r.info.id} ${sp.reason}`, now, timeout);
      }
    }
  }

  /** A replica is dead: it is removed (its shadows reset, its state freed); the others go on. */
  private replicaFailed(id: string, reason: string, now: number): void {
    const r = this.replicas.get(id);
    if (!r || r.promoted) return;
    this.replicasFailed++;
    this.outbox.event({ type: "replica-failure", replica: id, reason });
    this.actions.removeReplica(id);
    if (this.election.running) this.election.run(now);
    else if (this.replicas.promotableCount() === 0)
      this.outbox.event({
        type: "no-replica-left",
        reason: `replica ${id} failed: the service runs unreplicated`,
      });
  }

  /** Replica `id` is gone: nothing about it is pending or remembered. */
  replicaRemoved(id: string): void {
    this.probes.forget(id);
    this.suspects.delete(id);
    this.lastEvidenceProbeAt.delete(id);
  }

  /**
   * A replica was promoted in place of the original at `previous`: what was known about the old
   * original no longer applies; after a failover it is watched (does it answer again?).
   */
  promoted(
    previous: number,
    now: number,
    confirmedBy: Confirmation | "switchover",
    reason: string,
    rttMs?: number,
  ): void {
    this.election.promoted();
    this.probes.forgetOriginal();
    this.evidence.reset();
    // The new original's round trip is known from its time as a replica: its first probes must
    // not get the LAN floor's deadline (simulator seed 22: a WAN replica promoted, 32 ms away,
    // then failed over in turn because every probe "timed out" after 20 ms). Its smallest RTT
    // sample, not its SRTT: under load that carries the service's queue (CI: a 123 ms SRTT made
    // the new original's probe deadline 1.5 s).
    if (rttMs !== undefined) this.evidence.handshakeRtt(rttMs);
    this.lastPromotionAt = now;
    const address = formatIPv4(previous);
    const i = this.formers.findIndex((w) => w.addr === previous);
    if (i >= 0) this.formers.splice(i, 1);
    this.probes.forget(FORMER + address);
    // A switchover leaves a healthy original by design: nothing to find out.
    if (confirmedBy === "switchover") return;
    if (this.formers.length >= MAX_FORMER_ORIGINALS) this.formers.shift();
    this.formers.push({ addr: previous, address, replacedAt: now, confirmedBy, reason, state: "watching" });
  }

  /** A former original's probe answered: alive is a false failover (or a failure that healed). */
  private formerAnswered(address: string, alive: boolean, now: number): void {
    const w = this.formers.find((x) => x.address === address);
    if (!w || w.state !== "watching" || !alive) return;
    w.state = "alive";
    w.aliveAfterMs = now - w.replacedAt;
    this.falseFailovers++;
    this.outbox.event({
      type: "former-original-alive",
      address,
      afterMs: w.aliveAfterMs,
      confirmedBy: w.confirmedBy,
      reason: w.reason,
    });
  }

  /** The original at `address` is a replica again or gone for good: no longer watched. */
  forgetFormer(address: number): void {
    const i = this.formers.findIndex((w) => w.addr === address);
    if (i >= 0) this.formers.splice(i, 1);
    this.probes.forget(FORMER + formatIPv4(address));
  }

  // ---------------------------------------------------------------- planned holds

  holdOriginal(ms: number, now: number): void {
    this.hold.begin(ms, now);
  }

  releaseHold(now: number): void {
    this.hold.release(now);
  }

  // ---------------------------------------------------------------- statistics

  thresholds(): { stallSuspectMs: number; hangBudgetMs: number; probeTimeoutMs: number } {
    return {
      stallSuspectMs: this.evidence.stallSuspectMs(),
      hangBudgetMs: this.evidence.hangBudgetMs(),
      probeTimeoutMs: this.evidence.probeTimeoutMs(),
    };
  }
}
