// Test helpers for the control plane: a data plane made of a real replication engine without I/O
// (segments are fed by hand, sends are collected), a driver for client connections through it,
// and a control plane on a real embedded Redis in a private directory, removed after the test.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino, type Logger } from "pino";
import type { Test } from "tap";
import { ReplicationEngine, toSeq } from "../../src/replica/engine.js";
import { defaultConfig, type EngineConfig, type EngineOutput } from "../../src/replica/types.js";
import { formatIPv4, parseIPv4 } from "../../src/wire/ipv4.js";
import { ACK, RST, SYN, type TcpOption, type TcpSegment } from "../../src/wire/tcp.js";
import type { ProbeAnswer } from "../../src/proxy/probe.js";
import type { DataPlane, EngineEventListener, PromotionReport } from "../../src/control/data-plane.js";
import { parseApiConfig, type ServeConfig } from "../../src/control/config.js";
import { parseProxyConfig, type ProxyConfig } from "../../src/proxy/config.js";
import { histogramExposition } from "../../src/control/metrics.js";
import { startAppliance, type Appliance } from "../../src/control/serve.js";
import type { MachinesConfig } from "../../src/control/machines-config.js";

export const VIP = "10.9.0.100";
export const PORT = 6379;
export const ORIGINAL = "10.9.1.10";
export const SNAT = "10.9.1.1";
export const REPL = "10.9.1.2";
export const R1 = "10.9.1.11";
export const R2 = "10.9.1.12";
export const R3 = "10.9.1.13";
export const CLIENT = "10.9.0.2";
export const TOKEN = "test-token-0123456789abcdef";

export const quietLog: Logger = pino({ level: process.env.TCP_REPLICATOR_TEST_LOG ?? "silent" });

function seg(p: Partial<TcpSegment> & Pick<TcpSegment, "src" | "dst" | "srcPort" | "dstPort">): TcpSegment {
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

const SYN_OPTIONS: TcpOption[] = [
  { kind: "mss", value: 1460 },
  { kind: "sack-permitted" },
  { kind: "timestamp", tsval: 777, tsecr: 0 },
  { kind: "nop" },
  { kind: "wscale", shift: 7 },
];

/** A data plane that is a real engine with a hand-driven clock and network. */
export class EngineDataPlane implements DataPlane {
  readonly engine: ReplicationEngine;
  readonly service = { vip: VIP, port: PORT };
  readonly ownAddresses = [VIP, SNAT, REPL];
  readonly rtt = () => histogramExposition(this.engine.rttSeries());
  now = 1000;
  /** What the engine sent (to replicas or clients), oldest first. */
  readonly sent: TcpSegment[] = [];
  private readonly listeners = new Set<EngineEventListener>();
  private readonly fencedSet = new Set<string>();
  /** The answer probes get, by address (alive by default). */
  probeAnswers = new Map<string, ProbeAnswer>();
  probed: string[] = [];
  /** The engine's own probe requests (with probes on), not answered yet: see answerProbe. */
  asked: Array<Extract<EngineOutput, { type: "probe" }>> = [];

  constructor(config: ProxyConfig, engineOverrides: Partial<EngineConfig["failure"]> = {}) {
    const base = defaultConfig({
      vip: parseIPv4(config.vip),
      port: config.port,
      original: parseIPv4(config.original),
      snatAddress: parseIPv4(config.snatAddress),
      replicationAddress: parseIPv4(config.replicationAddress),
    });
    this.engine = new ReplicationEngine({ ...base, failure: { ...base.failure, ...engineOverrides } });
    for (const r of config.replicas) this.engine.addReplica({ id: r.id, address: parseIPv4(r.address) });
    this.engine.drain();
  }

  /** Hands the engine's outputs out as the proxy does: sends collected, events to listeners. */
  drain(): void {
    for (const o of this.engine.drain()) {
      if (o.type === "send") this.sent.push(o.segment);
      else if (o.type === "event") for (const l of this.listeners) l(o.event, Date.now());
      else if (o.type === "promote") this.fencedSet.add(formatIPv4(o.previous));
      else if (o.type === "probe") this.asked.push(o);
    }
  }

  /** Answers the engine's pending probe of `target` as the edge would. */
  answerProbe(target: string, alive: boolean, why: string): void {
    const i = this.asked.findIndex((p) => p.target === target);
    if (i < 0) throw new Error(`no probe of ${target} asked (${this.asked.map((p) => p.target).join(", ")})`);
    const [p] = this.asked.splice(i, 1);
    this.engine.probeResult(p!.id, alive, this.now, why, this.now * 1000);
    this.engine.flush(this.now);
    this.drain();
  }

  feed(s: TcpSegment): void {
    this.engine.onSegment(s, this.now);
    this.engine.flush(this.now);
    this.drain();
  }

  tick(ms: number): void {
    this.now += ms;
    this.engine.tick(this.now);
    this.engine.flush(this.now);
    this.drain();
  }

  original(): string {
    return formatIPv4(this.engine.originalAddress);
  }
  fenced(): readonly string[] {
    return [...this.fencedSet];
  }
  engineStats() {
    return this.engine.stats(this.now);
  }
  async stats() {
    const capture = { records: 0, kernelDropped: 0, receivedByFilter: 0, running: true };
    return {
      engine: this.engineStats(),
      capture: { client: { ...capture }, backend: { ...capture } },
      injector: { sent: this.sent.length, errors: 0, lastError: null },
    };
  }
  connections() {
    return this.engine.connections();
  }
  bestReplica() {
    return this.engine.bestReplica();
  }
  replicaIds() {
    return this.engine.replicaIds();
  }
  addReplica(id: string, address: string): void {
    if (this.fencedSet.has(address)) throw new Error(`${address} is a fenced former original`);
    this.engine.addReplica({ id, address: parseIPv4(address) });
    this.drain();
  }
  drainReplica(id: string): void {
    this.engine.drainReplica(id);
  }
  /** Holds asked for (ms) and released, in order. */
  readonly holds: Array<{ ms: number; released: boolean }> = [];
  holdOriginal(ms: number): () => void {
    const h = { ms, released: false };
    this.holds.push(h);
    this.engine.holdOriginal(ms, this.now);
    return () => {
      h.released = true;
      this.engine.releaseHold(this.now);
      this.drain();
    };
  }
  removeReplica(id: string): void {
    this.engine.removeReplica(id);
    this.drain();
  }
  async promote(id: string): Promise<PromotionReport> {
    const report = this.engine.promote(id, this.now);
    this.drain();
    return report;
  }
  async probe(address: string): Promise<ProbeAnswer> {
    this.probed.push(address);
    return this.probeAnswers.get(address) ?? { alive: true, why: "connected", ms: 0.1 };
  }
  subscribe(listener: EngineEventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

let nextClientPort = 40000;

/** One client connection through the engine, driven segment by segment. */
export class ClientConnection {
  readonly port = nextClientPort++;
  readonly clientIsn = 1000 + this.port;
  readonly originalIsn = 5000 + this.port;
  private readonly shadowPorts = new Map<string, number>();
  private clientSent = 0;
  private originalSent = 0;

  constructor(private readonly dp: EngineDataPlane) {}

  /** Client SYN only: a half-open connection. */
  syn(): this {
    this.dp.feed(
      seg({
        src: parseIPv4(CLIENT),
        dst: parseIPv4(VIP),
        srcPort: this.port,
        dstPort: PORT,
        seq: this.clientIsn,
        flags: SYN,
        window: 64240,
        options: SYN_OPTIONS,
      }),
    );
    return this;
  }

  /** The whole handshake through the kernel path, then each replica's shadow handshake. */
  open(replicas: Record<string, string> = {}): this {
    this.syn();
    const original = parseIPv4(this.dp.original());
    this.dp.feed(
      seg({
        src: parseIPv4(SNAT),
        dst: original,
        srcPort: this.port,
        dstPort: PORT,
        seq: this.clientIsn,
        flags: SYN,
      }),
    );
    this.dp.feed(
      seg({
        src: original,
        dst: parseIPv4(SNAT),
        srcPort: PORT,
        dstPort: this.port,
        seq: this.originalIsn,
        ack: (this.clientIsn + 1) >>> 0,
        flags: SYN | ACK,
      }),
    );
    const before = this.dp.sent.length;
    this.client("");
    for (const s of this.dp.sent.slice(before))
      if (s.flags & SYN) this.shadowPorts.set(formatIPv4(s.dst), s.srcPort);
    for (const address of Object.values(replicas)) this.replicaSynAck(address);
    return this;
  }

  replicaSynAck(address: string): void {
    const port = this.shadowPorts.get(address);
    if (port === undefined) throw new Error(`no shadow SYN to ${address} on connection ${this.port}`);
    this.dp.feed(
      seg({
        src: parseIPv4(address),
        dst: parseIPv4(REPL),
        srcPort: PORT,
        dstPort: port,
        seq: 90000,
        ack: (this.clientIsn + 1) >>> 0,
        flags: SYN | ACK,
        window: 65535,
        options: [{ kind: "mss", value: 1460 }, { kind: "sack-permitted" }, { kind: "wscale", shift: 0 }],
      }),
    );
  }

  hasShadowOn(address: string): boolean {
    return this.shadowPorts.has(address);
  }

  client(data: string): void {
    const s = seg({
      src: parseIPv4(CLIENT),
      dst: parseIPv4(VIP),
      srcPort: this.port,
      dstPort: PORT,
      seq: toSeq(this.clientSent, this.clientIsn),
      ack: toSeq(this.originalSent, this.originalIsn),
      payload: new TextEncoder().encode(data),
    });
    this.clientSent += data.length;
    this.dp.feed(s);
  }

  original(data: string): void {
    const original = parseIPv4(this.dp.original());
    this.dp.feed(
      seg({
        src: original,
        dst: parseIPv4(SNAT),
        srcPort: PORT,
        dstPort: this.port,
        seq: toSeq(this.originalSent, this.originalIsn),
        ack: toSeq(this.clientSent, this.clientIsn),
        payload: new TextEncoder().encode(data),
      }),
    );
    this.originalSent += data.length;
  }

  /** The replica answers `data` at reply offset `offset` (acknowledging all client bytes). */
  replica(address: string, offset: number, data: string): void {
    this.dp.feed(
      seg({
        src: parseIPv4(address),
        dst: parseIPv4(REPL),
        srcPort: PORT,
        dstPort: this.shadowPorts.get(address)!,
        seq: toSeq(offset, 90000),
        ack: toSeq(this.clientSent, this.clientIsn),
        payload: new TextEncoder().encode(data),
      }),
    );
  }

  /** The original resets the connection (a dying service's kernel does that). */
  originalRst(): void {
    this.dp.feed(
      seg({
        src: parseIPv4(this.dp.original()),
        dst: parseIPv4(SNAT),
        srcPort: PORT,
        dstPort: this.port,
        seq: toSeq(this.originalSent, this.originalIsn),
        ack: toSeq(this.clientSent, this.clientIsn),
        flags: RST | ACK,
        window: 0,
      }),
    );
  }

  /** The client resets its connection: the engine ends it and its shadows. */
  reset(): void {
    this.dp.feed(
      seg({
        src: parseIPv4(CLIENT),
        dst: parseIPv4(VIP),
        srcPort: this.port,
        dstPort: PORT,
        seq: toSeq(this.clientSent, this.clientIsn),
        flags: RST,
      }),
    );
  }
}

export function proxyConfig(replicas: Record<string, string> = { r1: R1, r2: R2 }): ProxyConfig {
  return parseProxyConfig({
    vip: VIP,
    port: PORT,
    original: ORIGINAL,
    snatAddress: SNAT,
    replicationAddress: REPL,
    replicas: Object.entries(replicas).map(([id, address]) => ({ id, address })),
  });
}

/** A private directory removed after the test (the embedded Redis's runtime and data dirs). */
export async function tempDir(t: Test, tag: string): Promise<string> {
  // Short: the Redis socket path inside must stay below 108 bytes.
  const dir = await mkdtemp(join(tmpdir(), `trc-${tag}-`));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

// Answers are checked field by field in the tests.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Json = any;

export interface Harness {
  appliance: Appliance;
  dp: EngineDataPlane;
  url: string;
  /** Calls the API through fastify's inject() (JSON in, JSON out), with the token unless told
   * otherwise; a string body is sent as it is (malformed JSON tests). */
  call(
    method: "GET" | "POST" | "DELETE",
    path: string,
    body?: unknown,
    token?: string | null,
  ): Promise<{ status: number; body: Json; headers: Record<string, unknown> }>;
}

/**
 * A control plane on a real embedded Redis (in `dir`, which may be shared by consecutive
 * appliances to test restarts) over an engine-only data plane, listening on an ephemeral port.
 */
export async function startHarness(
  t: Test,
  dir: string,
  opts: {
    replicas?: Record<string, string>;
    engine?: Partial<EngineConfig["failure"]>;
    api?: Record<string, unknown>;
    stopOnTeardown?: boolean;
    machines?: MachinesConfig;
  } = {},
): Promise<Harness> {
  const proxy = proxyConfig(opts.replicas);
  const api = parseApiConfig({
    token: TOKEN,
    runtimeDir: join(dir, "run"),
    dataDir: join(dir, "data"),
    logLevel: "silent",
    ...opts.api,
  });
  // Port 0 (any free port): below the range the configuration accepts from operators.
  const cfg: ServeConfig = { proxy, api: { ...api, port: 0 }, machines: opts.machines };
  let dp: EngineDataPlane | undefined;
  const appliance = await startAppliance(cfg, quietLog, async (pc) => {
    dp = new EngineDataPlane(pc, opts.engine);
    return { dataPlane: dp, stop: async () => undefined };
  });
  if (opts.stopOnTeardown !== false) t.teardown(() => appliance.stop());
  const call: Harness["call"] = async (method, path, body, token = TOKEN) => {
    const headers: Record<string, string> = {};
    if (token !== null) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const res = await appliance.app.inject({
      method,
      url: path,
      headers,
      ...(body !== undefined ? { payload: typeof body === "string" ? body : JSON.stringify(body) } : {}),
    });
    let parsed: unknown = res.body;
    try {
      parsed = JSON.parse(res.body) as unknown;
    } catch {
      // not JSON (metrics)
    }
    // eslint-disable-next-line @typescript-eslint/no-unsafe-assignment -- Json: read by the tests
    return { status: res.statusCode, body: parsed as Json, headers: res.headers };
  };
  return { appliance, dp: dp!, url: appliance.url, call };
}

export interface SseEvent {
  id: number | undefined;
  type: string;
  data: Json;
}

/** A Server-Sent Events client over real HTTP that collects events and waits for them. */
export async function sseClient(url: string, lastEventId?: number) {
  const abort = new AbortController();
  const res = await fetch(url, {
    signal: abort.signal,
    headers: lastEventId !== undefined ? { "last-event-id": String(lastEventId) } : {},
  });
  const events: SseEvent[] = [];
  const waiters: Array<() => void> = [];
  let ended = false;
  void (async () => {
    const decoder = new TextDecoder();
    let buf = "";
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += decoder.decode(chunk, { stream: true });
        let i: number;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const fields: Record<string, string> = {};
          for (const line of block.split("\n")) {
            const m = /^([a-z]+): ?(.*)$/.exec(line);
            if (m) fields[m[1]!] = m[2]!;
          }
          if (fields.event === undefined || fields.data === undefined) continue;
          events.push({
            id: fields.id === undefined ? undefined : Number(fields.id),
            type: fields.event,
            // eslint-disable-next-line @typescript-eslint/no-unsafe-assignment -- Json: read by the tests
            data: JSON.parse(fields.data),
          });
          for (const w of waiters.splice(0)) w();
        }
      }
    } catch {
      // aborted
    }
    ended = true;
    for (const w of waiters.splice(0)) w();
  })();
  return {
    status: res.status,
    contentType: res.headers.get("content-type"),
    events,
    get ended() {
      return ended;
    },
    /** The first event of `type` after index `from` (waits up to timeoutMs). */
    async next(type: string, from = 0, timeoutMs = 3000): Promise<SseEvent> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const e = events.slice(from).find((x) => x.type === type);
        if (e) return e;
        if (ended || Date.now() > deadline)
          throw new Error(`no ${type} event (got ${events.map((x) => x.type).join(", ")})`);
        await new Promise<void>((r) => {
          const timer = setTimeout(r, Math.max(1, deadline - Date.now()));
          waiters.push(() => {
            clearTimeout(timer);
            r();
          });
        });
      }
    },
    close: () => abort.abort(),
  };
}
