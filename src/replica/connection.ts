// One client connection as the engine follows it: the client's and the original's byte streams
// (as offsets), what each side acknowledged, the original's held close, the shadows (one per
// replica) and, after a promotion, the one that now serves the client. Plain state: the parts of
// the engine (src/replica/*.ts, see docs/ARCHITECTURE.md "Replication engine") act on it.
import { findOption, type TcpOption, type TcpSegment } from "../wire/tcp.js";
import { formatIPv4 } from "../wire/ipv4.js";
import { ByteStream } from "./byte-stream.js";
import { copyOptions } from "./offsets.js";
import type { Seen } from "./capture-clock.js";
import type { ShadowConversation } from "./shadow.js";
import { EchoTimer, SegmentTimer } from "./rtt.js";

export type Phase = "syn" | "open" | "closed";

export interface HeldClose {
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
  /** When the client's FIN (or its latest retransmission) was captured. */
  clientFinAt: number | undefined;
  /** When the original's FIN (or its latest retransmission) was captured. */
  originalFinAt: number | undefined;
  clientRst = false;
  /** Its kernel path's SYN went to an original just replaced (see Engine.onStaleNatSyn). */
  onReplacedOriginal = false;
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
  /** The engine's own retransmission toward the client of a spliced connection (splice.ts):
   * when it fires next, how often it fired in a row, duplicate ACKs seen. */
  spliceRtoAt: number | undefined;
  spliceBackoffs = 0;
  spliceDupAcks = 0;
  /** The window field last sent to the client of a spliced connection (a change is sent). */
  windowToClient = -1;
  /** When the kernel path's SYN to the original was seen (handshake RTT to the original). */
  natSynAt: Seen | undefined;
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
  /** The reset sent again (a lost RST leaves an idle client waiting forever): how often, next. */
  resetsResent = 0;
  resetAgainAt: number | undefined;

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

/** Bytes acknowledged beyond what was captured: a capture gap unless the capture catches up. */
export interface GapSuspect {
  /** Stream offset acknowledged. */
  offset: number;
  /** Capture time (µs) of the acknowledgement. */
  atUs: number;
  /** Engine time it was first seen. */
  since: number;
}
