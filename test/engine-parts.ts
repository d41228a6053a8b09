// Scaffolding shared by the unit tests of the replication engine's parts (shadow-sender, buffers,
// lifecycle, close-hold, capture-gaps, reply-verifier, splice, failure/...): the addresses of one
// service and its replicas, hand-made segments, the default configuration, connections and
// shadows in a chosen state, and EngineParts, the parts wired together as src/replica/engine.ts's
// constructor wires them (without the coordinator), for a test to add the part it is about.
// Not a test file itself (tap runs *.test.js only).
import { Buffers } from "../src/replica/buffers.js";
import { CaptureClock } from "../src/replica/capture-clock.js";
import { ConnectionTable, connectionKey } from "../src/replica/connection-table.js";
import { ReplicatedConnection } from "../src/replica/connection.js";
import { Lifecycle } from "../src/replica/lifecycle.js";
import { toSeq } from "../src/replica/offsets.js";
import { Outbox } from "../src/replica/outbox.js";
import { ReplicaSet } from "../src/replica/replica-set.js";
import { RttTracker } from "../src/replica/rtt.js";
import { ShadowConversation } from "../src/replica/shadow.js";
import { ShadowSender } from "../src/replica/shadow-sender.js";
import {
  DEFAULT_LIMITS,
  defaultConfig,
  type EngineConfig,
  type EngineEvent,
  type EngineOutput,
} from "../src/replica/types.js";
import { parseIPv4 } from "../src/wire/ipv4.js";
import { ACK, SYN, type TcpOption, type TcpSegment } from "../src/wire/tcp.js";

// ------------------------------------------------------------------ addresses

const ip = parseIPv4;
/** The service's virtual address, where clients connect. */
export const VIP = ip("10.0.0.100");
export const CLIENT = ip("10.0.0.2");
export const ORIGINAL = ip("10.0.1.10");
/** The kernel path's source address toward the original. */
export const SNAT = ip("10.0.1.1");
/** The engine's address in the shadow conversations. */
export const REPL = ip("10.0.1.2");
export const R1 = ip("10.0.1.11");
export const R2 = ip("10.0.1.12");
export const R3 = ip("10.0.1.13");
/** Each replica's address by id. */
export const REPLICA_ADDRESSES: Readonly<Record<string, number>> = { r1: R1, r2: R2, r3: R3 };
/** The service port. */
export const PORT = 7000;
/** The client's port of the first connection. */
export const CPORT = 40000;
export const CLIENT_ISN = 1000;
export const ORIGINAL_ISN = 5000;
/** The replicas' ISN, unless a test says otherwise. */
export const REPLICA_ISN = 9000;
/** The id of the connection from CLIENT:CPORT. */
export const CONN_ID = "10.0.0.2:40000";

// ------------------------------------------------------------------ segments and bytes

/** A TCP segment: the addresses given, an ACK with neutral defaults for everything else. */
export function seg(
  p: Partial<TcpSegment> & Pick<TcpSegment, "src" | "dst" | "srcPort" | "dstPort">,
): TcpSegment {
  return {
    tos: 0,
    id: 0,
    dontFragment: true,
    ttl: 64,
    ipOptions: new Uint8Array(),
    seq: 0,
    ack: 0,
    flags: ACK,
    window: 1000,
    urgent: 0,
    options: [],
    payload: new Uint8Array(),
    ...p,
  };
}

/** The client's SYN from CLIENT:`port` with ISN `isn` (`over`: its window, options, ...). */
export function clientSyn(port = CPORT, isn = CLIENT_ISN, over: Partial<TcpSegment> = {}): TcpSegment {
  return seg({ src: CLIENT, dst: VIP, srcPort: port, dstPort: PORT, seq: isn, flags: SYN, ...over });
}

/** A segment of the service (VIP:PORT) to the client's `port`, as the kernel path delivers the
 * original's: a close, a refusal, ... */
export function fromService(port: number, over: Partial<TcpSegment> = {}): TcpSegment {
  return seg({ src: VIP, dst: CLIENT, srcPort: PORT, dstPort: port, ...over });
}

export const bytes = (s: string) => new TextEncoder().encode(s);
export const text = (b: Uint8Array) => new TextDecoder().decode(b);

// ------------------------------------------------------------------ configuration

/** The engine's default configuration for these addresses, with `over` on top. */
export function engineConfig(over: Partial<EngineConfig> = {}): EngineConfig {
  return {
    ...defaultConfig({
      vip: VIP,
      port: PORT,
      original: ORIGINAL,
      snatAddress: SNAT,
      replicationAddress: REPL,
    }),
    ...over,
  };
}

/** The default failure-detection configuration with `over` on top. */
export function failureConfig(over: Partial<EngineConfig["failure"]> = {}): EngineConfig["failure"] {
  return { ...engineConfig().failure, ...over };
}

// ------------------------------------------------------------------ connections and shadows

/** A half-open connection made from the client's SYN, as engine.ts makes it (in no table). */
export function connectionFrom(
  syn: TcpSegment = clientSyn(),
  at = 0,
  outOfOrderBytes = DEFAULT_LIMITS.outOfOrderBytes,
): ReplicatedConnection {
  return new ReplicatedConnection(
    connectionKey(syn.src, syn.srcPort),
    syn.src,
    syn.srcPort,
    syn.seq,
    syn,
    at,
    outOfOrderBytes,
  );
}

/** A connection whose handshake is done (in no table; the original's ISN as given). */
export function openConnection(
  syn: TcpSegment = clientSyn(),
  originalIsn: number | undefined = ORIGINAL_ISN,
): ReplicatedConnection {
  const conn = connectionFrom(syn);
  conn.phase = "open";
  conn.originalIsn = originalIsn;
  return conn;
}

/** A shadow on replica `id` whose handshake is done (the replica's ISN known, nothing sent),
 * healthy: the state tests that skip the handshake start from. */
export function openShadow(id: string, address = REPLICA_ADDRESSES[id]!): ShadowConversation {
  const s = new ShadowConversation(
    { id, address },
    engineConfig().rto.initialMs,
    DEFAULT_LIMITS.outOfOrderBytes,
  );
  s.state = "open";
  s.replicaIsn = REPLICA_ISN;
  s.sndUna = 0;
  return s;
}

/** An open shadow of `conn` on each replica of `ids`, in that order. */
export function openShadows(conn: ReplicatedConnection, ids: readonly string[]): ShadowConversation[] {
  return ids.map((id) => {
    const s = openShadow(id);
    conn.shadows.set(id, s);
    return s;
  });
}

// ------------------------------------------------------------------ outputs and timers

export type SendOutput = Extract<EngineOutput, { type: "send" }>;

export function eventsIn(out: readonly EngineOutput[]): EngineEvent[] {
  return out.flatMap((o) => (o.type === "event" ? [o.event] : []));
}

export function sendsIn(out: readonly EngineOutput[]): SendOutput[] {
  return out.flatMap((o) => (o.type === "send" ? [o] : []));
}

/** Collects every time a `want` callback is told, so a test sees the earliest and all of them. */
export function wants(): { want: (t: number) => void; times: number[] } {
  const times: number[] = [];
  return { want: (x) => times.push(x), times };
}

/** Runs `f` with a `want` callback: what `f` returned and the earliest time `want` was told. */
export function earliest<T>(f: (want: (t: number) => void) => T): { value: T; next: number | undefined } {
  let next: number | undefined;
  const value = f((x) => {
    if (next === undefined || x < next) next = x;
  });
  return { value, next };
}

/** One captured segment as the engine handles it: captured on `channel` at `us` (µs), handled at
 * `now`, carrying the client's or the original's segments (`who`), `handle` between begin and end. */
export function capturePacket(
  clock: CaptureClock,
  channel: string,
  us: number,
  now: number,
  who?: "client" | "original",
  handle?: () => void,
): void {
  const capture = { channel, timeUs: us };
  clock.begin(capture, now);
  if (who) clock.carries(who, capture);
  handle?.();
  clock.end();
}

// ------------------------------------------------------------------ the parts, wired

export interface PartsOptions {
  /** On top of the default configuration. */
  config?: Partial<EngineConfig>;
  /** What Buffers keep of the original's bytes before the compared offset (engine.ts: the largest
   * context of its reply tolerances). */
  keepContext?: number;
  /** The replicas in the set, by id (addresses from REPLICA_ADDRESSES). */
  replicas?: readonly string[];
}

/** The replica's answer to a shadow's SYN. */
export interface SynAck {
  isn?: number;
  window?: number;
  options?: TcpOption[];
}

/**
 * The engine's parts as src/replica/engine.ts's constructor wires them, without the coordinator:
 * outbox, capture clock, replica set, RTT tracker, connection table, buffers, shadow sender and
 * lifecycle. A test builds the part it is about from these fields (CloseHold, Limits, Splicer...).
 */
export class EngineParts {
  readonly cfg: EngineConfig;
  readonly outbox = new Outbox();
  readonly clock = new CaptureClock();
  readonly replicas = new ReplicaSet();
  readonly rtt = new RttTracker();
  readonly table: ConnectionTable;
  readonly buffers: Buffers;
  readonly sender: ShadowSender;
  /** Connections with sends due at the next flush. */
  readonly dirty = new Set<ReplicatedConnection>();
  readonly lifecycle: Lifecycle;
  /** The engine's time (ms) of what the test does next. */
  now = 1000;
  private nextPort = CPORT;

  constructor(o: PartsOptions = {}) {
    this.cfg = engineConfig(o.config);
    this.table = new ConnectionTable(this.cfg.portRange, this.cfg.synTimeoutMs);
    this.buffers = new Buffers(this.replicas, o.keepContext ?? 0);
    this.sender = new ShadowSender(this.cfg, this.outbox, this.replicas, this.clock, this.rtt);
    this.lifecycle = new Lifecycle(
      this.table,
      this.replicas,
      this.buffers,
      this.sender,
      this.outbox,
      this.dirty,
    );
    for (const id of o.replicas ?? []) this.replicas.add({ id, address: REPLICA_ADDRESSES[id]! });
  }

  /** A client port no connection of these parts used yet (CPORT first). */
  clientPort(): number {
    return this.nextPort++;
  }

  /** The client's SYN seen: a half-open connection in the table (from the next client port). */
  addHalfOpen(syn: TcpSegment = clientSyn(this.clientPort())): ReplicatedConnection {
    const conn = connectionFrom(syn, this.now, this.cfg.limits.outOfOrderBytes);
    this.table.add(conn);
    return conn;
  }

  /** ...and its handshake done: a shadow port allocated, phase "open" (no shadow yet). */
  addOpen(syn?: TcpSegment, originalIsn?: number): ReplicatedConnection {
    const conn = this.addHalfOpen(syn);
    this.table.allocateShadowPort(conn);
    conn.phase = "open";
    conn.originalIsn = originalIsn;
    return conn;
  }

  /** A shadow of `conn` on replica `id` (in the set), its SYN sent (engine.ts openShadows). */
  startShadow(conn: ReplicatedConnection, id: string): ShadowConversation {
    const s = new ShadowConversation(
      this.replicas.get(id)!.info,
      this.cfg.rto.initialMs,
      this.cfg.limits.outOfOrderBytes,
    );
    conn.shadows.set(id, s);
    this.sender.sendSyn(conn, s, this.now);
    return s;
  }

  /** A segment of `s`'s replica to the engine in the shadow conversation. */
  fromReplica(conn: ReplicatedConnection, s: ShadowConversation, over: Partial<TcpSegment>): TcpSegment {
    return seg({ src: s.replica.address, dst: REPL, srcPort: PORT, dstPort: conn.port!, ...over });
  }

  /** The replica's SYN-ACK to the shadow's SYN, taken in by the sender. */
  answerSyn(conn: ReplicatedConnection, s: ShadowConversation, o: SynAck = {}): void {
    const answer = this.fromReplica(conn, s, {
      seq: o.isn ?? REPLICA_ISN,
      ack: toSeq(0, conn.clientIsn),
      flags: SYN | ACK,
      window: o.window ?? 65535,
      options: o.options ?? [],
    });
    this.sender.onSynAck(conn, s, answer, this.now);
  }

  /** A shadow of `conn` on each replica of the set through a real handshake: the SYN, the
   * replica's SYN-ACK, the ACK it is owed; those in `synSent` are left waiting for the SYN-ACK. */
  handshake(conn: ReplicatedConnection, answer: SynAck = {}, synSent: readonly string[] = []): void {
    for (const r of this.replicas.values()) {
      const s = this.startShadow(conn, r.info.id);
      if (synSent.includes(r.info.id)) continue;
      this.answerSyn(conn, s, answer);
      this.sender.flush(conn, s, this.now);
    }
  }

  /** The replica acknowledges `acked` client-stream units with `window` (unscaled). */
  replicaAck(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    acked: number,
    window = 65535,
    over: Partial<TcpSegment> = {},
  ): "advanced" | "same" | "ignored" {
    const segment = this.fromReplica(conn, s, {
      seq: toSeq(s.reply.end, s.replicaIsn!),
      ack: toSeq(acked, conn.clientIsn),
      window,
      ...over,
    });
    return this.sender.onAck(conn, s, segment, this.now);
  }

  /** The events and segments the parts emitted since the last drain. */
  take(): { events: EngineEvent[]; segments: TcpSegment[] } {
    const out = this.outbox.drain();
    return { events: eventsIn(out), segments: sendsIn(out).map((o) => o.segment) };
  }

  /** The events emitted since the last drain (anything else is dropped). */
  events(): EngineEvent[] {
    return eventsIn(this.outbox.drain());
  }
}
