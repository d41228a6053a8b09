// Configuration, outputs and statistics of the replication engine.
import type { TcpSegment } from "../wire/tcp.js";
import type { RttStats } from "./rtt.js";

export interface EngineLimits {
  /** Client bytes held for one connection (not yet acknowledged by every live shadow), and
   * original reply bytes held for comparison on one connection. */
  perConnectionBytes: number;
  /** Bytes held on behalf of one replica across all its shadow conversations. */
  perReplicaBytes: number;
  /** Bytes held by the whole engine. */
  globalBytes: number;
  /** Out-of-order bytes kept per stream before refusing more. */
  outOfOrderBytes: number;
  /** Connections tracked at once (half-open included); SYNs beyond are not replicated. */
  maxConnections: number;
}

export interface EngineConfig {
  /** Service address and port clients connect to (the VIP). */
  vip: number;
  port: number;
  /** The original's address; it serves on `port` too. */
  original: number;
  /** Source address of the kernel path's SNAT: what the original sees as its peer. */
  snatAddress: number;
  /** Source address of the shadow conversations to replicas. */
  replicationAddress: number;
  limits: EngineLimits;
  /** Retransmission timer toward replicas (RFC 6298 with these bounds). */
  rto: { initialMs: number; minMs: number; maxMs: number };
  /** SYNs to a replica before its shadow is given up (it does not answer). */
  maxSynRetries: number;
  /** How long the original's FIN/RST is held waiting for the replicas to close at the same offset. */
  finHoldMs: number;
  /** Half-open connections (SYN seen, handshake not completed) are forgotten after this. */
  synTimeoutMs: number;
  /** A suspected capture gap is confirmed after this long even if the other channel is silent. */
  gapConfirmMs: number;
  /** ...or once that channel delivered packets captured this much later than the suspicion.
   * More than a sender's minimum RTO (200 ms on Linux): a first copy the capture never handed
   * over is often followed by its retransmission, which fills the hole (measured under load with
   * 5 replicas: 20 connections at once were declared lost at 200 ms, the bytes came ~190 ms on). */
  gapSlackMs: number;
  /** Failure detection of the original and of replicas (DESIGN-BRIEF section 2, "Failover"). */
  failure: {
    /** The original closed (FIN/RST) while replicas caught up to the same offset did not, for
     * this long: a probe confirms (or, without probes, it is a failure). The same wait applies
     * to a replica that closed where the original did not. */
    closeMismatchMs: number;
    /** Floor of the stall suspicion: replicas answered (or acknowledged) what the original has
     * not, and the original sent nothing at all, for max(floor, mean + 4 × deviation of how far
     * the original normally trails its replicas). A suspicion asks for a probe; a probe nobody
     * answers is a failure. */
    stallSuspectMs: number;
    /** The hang budget: a stall no probe confirms (replicas answered or acknowledged what the
     * original has not, its kernel still answers: the application is slow or hung) is a failure
     * only after this long (or more, when the original is seen to trail its replicas by more:
     * mean + 8 × deviation). With a health check, the check is asked at the budget and decides.
     * A GC pause, a page-fault storm or steal time shorter than this never fails over. */
    hangBudgetMs: number;
    /** After a promotion, another one within this window needs confirmed evidence (a probe
     * refused or unanswered, a failed health check): a new original hanging for a moment under
     * the splice's load is not thrown away by the budget alone. */
    hysteresisMs: number;
    /** The edge runs an application health check when a probe asks for one (probe output
     * `checkMs`): its deadline (ms); undefined: no health check, probes only connect. */
    healthCheckMs: number | undefined;
    /** Floor of the probe timeout; the timeout is max(floor, 4 × the path's RTT bound). */
    probeTimeoutMs: number;
    /** Every backend (original and replicas) is also probed this often without any evidence, so
     * a failure is found even when no client is talking (0: off). Such probes get 4 × the probe
     * timeout: with nothing else pointing at a failure, a slow answer is not one. */
    probeIntervalMs: number;
    /** A replica whose retransmission timer fired this many times in a row without an ACK is
     * probed. */
    replicaProbeBackoffs: number;
    /** Promote the best replica as soon as a failure is detected. */
    autoFailover: boolean;
    /** The I/O edge answers "probe" outputs (probeResult()); without, suspicions wait for the
     * full stall thresholds and a close alone is a failure at once. */
    probes: boolean;
  };
  /** Differences between reply streams that are not divergences. */
  compare: {
    /** A difference inside an HTTP Date header's value (the replica answered in the next
     * second) is counted, not a divergence (src/replica/reply-mask.ts). */
    httpDate: boolean;
  };
  /** Closed connections linger this long to absorb retransmissions, then are freed. */
  lingerMs: number;
  /** Source ports for shadow conversations. */
  portRange: [number, number];
  /** Largest IP packet the engine sends. */
  mtu: number;
}

export const DEFAULT_LIMITS: EngineLimits = {
  perConnectionBytes: 8 * 1024 * 1024,
  perReplicaBytes: 256 * 1024 * 1024,
  globalBytes: 1024 * 1024 * 1024,
  outOfOrderBytes: 1024 * 1024,
  maxConnections: 65536,
};

/** Default hang budget (docs/ARCHITECTURE.md "Decision rule"; bench/results/detector-*). */
export const DEFAULT_HANG_BUDGET_MS = 1000;
/** Default window after a promotion in which only confirmed evidence fails over again. */
export const DEFAULT_HYSTERESIS_MS = 10_000;

export function defaultConfig(
  addresses: Pick<EngineConfig, "vip" | "port" | "original" | "snatAddress" | "replicationAddress">,
): EngineConfig {
  return {
    ...addresses,
    limits: { ...DEFAULT_LIMITS },
    rto: { initialMs: 200, minMs: 20, maxMs: 2000 },
    maxSynRetries: 6,
    finHoldMs: 2000,
    synTimeoutMs: 10_000,
    gapConfirmMs: 5000,
    gapSlackMs: 1000,
    failure: {
      closeMismatchMs: 2,
      stallSuspectMs: 3,
      hangBudgetMs: DEFAULT_HANG_BUDGET_MS,
      hysteresisMs: DEFAULT_HYSTERESIS_MS,
      healthCheckMs: undefined,
      probeTimeoutMs: 5,
      probeIntervalMs: 0,
      replicaProbeBackoffs: 2,
      autoFailover: false,
      probes: false,
    },
    compare: { httpDate: true },
    lingerMs: 2000,
    portRange: [20000, 60999],
    mtu: 1500,
  };
}

export interface ReplicaInfo {
  id: string;
  address: number;
}

/** What confirmed a verdict against the original (failure/rule.ts). */
export type Confirmation =
  | "probe refused"
  | "unreachable"
  | "probe unanswered"
  | "health check failed"
  | "hang budget"
  | "close alone"
  | "external";

/** Why a shadow conversation is no longer a faithful, promotable copy. */
export type ShadowStatus = "healthy" | "diverged" | "lagging" | "unverified";

export type EngineEvent =
  | { type: "connection-opened"; conn: string; replicas: string[] }
  | { type: "connection-closed"; conn: string }
  | {
      type: "diverged";
      conn: string;
      replica: string;
      offset: number;
      reason: string;
      /** Up to 16 bytes from `offset` on each side (JSON-safe, non-printable bytes as \xNN). */
      original?: string;
      replicaBytes?: string;
    }
  | { type: "lagging"; conn: string; replica: string; reason: string }
  | { type: "unverified"; conn: string; replica: string; reason: string }
  | { type: "close-released"; conn: string; kind: "fin" | "rst"; heldMs: number; matched: boolean }
  | { type: "capture-gap"; conn: string; direction: "client" | "original"; acked: number; captured: number }
  | {
      type: "promoted";
      replica: string;
      spliced: number;
      reset: number;
      dropped: number;
      /** How long the promotion waited for the capture to deliver acknowledged reply bytes. */
      captureWaitMs: number;
      /** What confirmed the failure it answers ("switchover": asked for, no failure). */
      confirmedBy: Confirmation | "switchover";
    }
  | {
      type: "original-failure";
      reason: string;
      conn: string;
      afterMs: number;
      /** What confirmed the verdict (the decision rule's evidence): "probe refused", "probe
       * unanswered", "health check failed", "hang budget", "close alone", "external". */
      confirmedBy: Confirmation;
    }
  /** A verdict the decision rule did not act on (hysteresis: too soon after a promotion). */
  | { type: "failover-withheld"; reason: string; conn: string; afterMs: number; why: string }
  /** A former original answers again after it was replaced: the failover lost its capacity
   * (a false failover when it never stopped); re-admitting it needs a resync. */
  | {
      type: "former-original-alive";
      address: string;
      /** Since its replacement. */
      afterMs: number;
      /** What the verdict against it was confirmed by. */
      confirmedBy: Confirmation | "switchover";
      reason: string;
    }
  | { type: "no-replica-left"; reason: string }
  | { type: "probe-result"; target: string; alive: boolean; reason: string; afterMs: number }
  | { type: "replica-failure"; replica: string; reason: string }
  | { type: "replica-added"; replica: string }
  | { type: "replica-removed"; replica: string }
  | { type: "switchover-abandoned"; replica: string; reason: string };

export type EngineOutput =
  /** A segment to emit (raw socket); its destination is in the segment. */
  | { type: "send"; segment: TcpSegment; to: "replica" | "client" }
  | { type: "event"; event: EngineEvent }
  /** The kernel must now fence `previous` and send new connections to `original`. */
  | { type: "promote"; replica: string; original: number; previous: number }
  /** Stop forwarding to and from `address` (the original, ahead of a promotion). */
  | { type: "fence"; address: number }
  /** Check whether `address`:port still accepts connections within `timeoutMs`; answer
   * probeResult(id, ...). `target` is "original" or a replica id. */
  | {
      type: "probe";
      id: number;
      target: string;
      address: number;
      timeoutMs: number;
      reason: string;
      /** Asked without evidence (the edge's log level). */
      periodic: boolean;
      /** Parallel handshakes (default 1), answered once: alive or refused if one was, silent
       * only if every one was (a single lost SYN is no death: failure/rule.ts). */
      copies?: number;
      /** After the handshake, run the application health check with this deadline (ms). */
      checkMs?: number;
    };

export interface ReplicaStats {
  id: string;
  address: string;
  shadowsActive: number;
  shadowsOpened: number;
  bytesSent: number;
  bytesAcked: number;
  segmentsSent: number;
  retransmits: number;
  replyBytes: number;
  comparedBytes: number;
  /** Reply bytes that differed from the original's inside an HTTP Date value (excused). */
  toleratedBytes: number;
  diverged: number;
  lagging: number;
  unverified: number;
  bufferedBytes: number;
  rttUs: { samples: number; srtt: number | null };
}

export interface EngineStats {
  packets: {
    client: number;
    original: number;
    natSyn: number;
    /** NAT ports learnt from the original's acknowledgements (their NATed SYN lost to capture). */
    natInferred: number;
    replica: number;
    unmatched: number;
    /** `unmatched` by reason: foreign-flow, client-unknown-connection, original-unbound-full,
     * original-unbound-expired, original-before-syn-ack, replica-unknown-shadow. */
    unmatchedBy: Record<string, number>;
    /** Segments to the SNAT address from another host than the current original (ignored): a
     * fenced former original (its dying kernel retransmitting a FIN), probe answers. */
    notFromOriginal: number;
  };
  rejected: Record<string, number>;
  connections: {
    active: number;
    opened: number;
    closed: number;
    /** Closed without seeing the original acknowledge the client's FIN (lost to capture). */
    finAckInferred: number;
    notReplicated: number;
    halfOpenExpired: number;
    /** FIN/RST of connections not replicated (the table was full) passed on to their clients. */
    closesPassedThrough: number;
    /** Not-replicated connections forgotten at MAX_PASSTHROUGH: their closes stay held. */
    passthroughEvicted: number;
    /** Not-replicated connections on a replaced original, reset toward their client. */
    orphansReset: number;
    /** Connections opened while a promotion's kernel update was under way, whose kernel path
     * went to the replaced original: reset toward their client at their handshake. */
    promotionRaceReset: number;
  };
  clientBytes: number;
  originalBytes: number;
  bufferedBytes: number;
  outOfOrderRefusedBytes: number;
  captureGaps: number;
  failures: {
    detected: number;
    promotions: number;
    original: string;
    /** Replicas that can still be promoted; 0 = the service runs unreplicated. */
    replicasLeft: number;
    replicasFailed: number;
    /** The original's refusals of new connections waiting for a probe, and those dropped because
     * it failed over (their clients retry and reach the new original). */
    refusals: { held: number; dropped: number };
    probes: { sent: number; alive: number; dead: number; unknown: number };
    /** Current adaptive thresholds (ms). */
    thresholds: { stallSuspectMs: number; hangBudgetMs: number; probeTimeoutMs: number };
    /** Verdicts not acted on (hysteresis), and former originals found alive after their
     * replacement (false failovers, or a failure that healed: capacity lost until resynced). */
    withheld: number;
    falseFailovers: number;
    /** Former originals watched after their replacement (at most MAX_FORMER_ORIGINALS). */
    formerOriginals: FormerOriginal[];
  };
  closeHoldTimeouts: number;
  closesReleased: number;
  replicas: ReplicaStats[];
  /** Passive RTT per path (µs): totals since start and the recent window. */
  rtt: RttStats;
}

/** A replaced original, probed for a while after its replacement. */
export interface FormerOriginal {
  address: string;
  replacedAt: number;
  confirmedBy: Confirmation | "switchover";
  reason: string;
  /** watching: probed, no answer yet; alive: it answered (needs a resync to serve again);
   * gone: the watch ended without an answer. */
  state: "watching" | "alive" | "gone";
  /** When it answered alive (ms after its replacement). */
  aliveAfterMs?: number;
}
