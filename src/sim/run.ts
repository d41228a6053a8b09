// One simulation run: a world drawn from a seed (replicas, links, capture, limits, clients and
// their scripts, faults), run on simulated time with the real engine, checked after every step.
// The same seed gives the same run on any machine: `npm run sim -- --seed S` replays it.
//
// What is checked (a violation ends the run and names the seed):
//   engine       engine.checkInvariants() after every engine call (parts' invariants, buffers
//                and their accounting, limits, table consistency)
//   replicas     every byte a replica's service reads is the client's byte at that offset
//   client       every byte a client receives is the byte the service produces at that offset
//                (the original, or after a splice the promoted replica; both must agree)
//   closes       no FIN or RST reaches a client through the kernel path (only the engine
//                releases them); a FIN before the end of the reply stream only when no replica
//                could have carried the connection on, or that was counted
//   counted      at the end: for every connection that completed, each replica it was
//                replicated to received exactly the client's stream, or the engine said why
//                not (lagging, diverged, unverified, the replica removed)
//   liveness     at the end, while the engine's original serves, no connection hangs
//   no wolf      no failover of an original whose only trouble was pauses of its application
//                shorter than the hang budget, on a loss-free link (issue 16): neither its pause
//                nor the appliance's own stalls (engine, capture) may count against it
import { formatIPv4, parseIPv4 } from "../wire/ipv4.js";
import { FIN, RST, type TcpSegment } from "../wire/tcp.js";
import { FAILURE_DEFAULTS } from "../proxy/config.js";
import { InvariantError } from "../replica/assert.js";
import { defaultConfig, DEFAULT_LIMITS, type EngineConfig } from "../replica/types.js";
import { Appliance, type CaptureTuning } from "./appliance.js";
import {
  startClient,
  Service,
  type ClientConn,
  type ClientScript,
  type Request,
  type ServerConn,
} from "./apps.js";
import { TcpHost } from "./host.js";
import { CLEAN, LinkDirection, type LinkQuality } from "./net.js";
import { Rng } from "./rng.js";
import { Scheduler } from "./scheduler.js";

const VIP = parseIPv4("10.0.0.100");
const CLIENTS = [parseIPv4("10.0.0.2"), parseIPv4("10.0.0.3")];
const SNAT = parseIPv4("10.0.1.1");
const REPL = parseIPv4("10.0.1.2");
const ORIGINAL = parseIPv4("10.0.1.10");
const PORT = 7000;

export type FaultKind = "process" | "host" | "freeze" | "link";

export type Fault =
  | { at: number; kind: FaultKind; target: string; durationMs?: number }
  | { at: number; kind: "promote"; target: string }
  | { at: number; kind: "capture-stall"; channel: "client" | "backend"; durationMs: number }
  | { at: number; kind: "engine-stall"; durationMs: number };

export interface Scenario {
  seed: number;
  replicas: number;
  links: Record<string, LinkQuality>;
  capture: CaptureTuning;
  limits: EngineConfig["limits"];
  divergent: { replica: string; from: number } | undefined;
  clients: Array<{ at: number; host: number; script: ClientScript }>;
  faults: Fault[];
  service: { readChunk: number; readPauseUs: number; rcvBuf: number; sndBuf: number };
}

export interface RunResult {
  seed: number;
  ok: boolean;
  violation: string | undefined;
  /** Simulated time at the end, ms. */
  simMs: number;
  steps: number;
  connections: number;
  outcomes: Record<string, number>;
  faults: string[];
  promotions: number;
  /** Promotions while the original they replaced was serving (up, running, linked): failovers
   * of a healthy server (issue 16 measures and lowers these). */
  falsePromotions: number;
  /** For each: what confirmed the verdict, and its reason. */
  falseReasons: string[];
  counted: { diverged: number; lagging: number; unverified: number; captureGaps: number };
  clientBytes: number;
  /** What the simulated kernel path dropped, by reason (its nft rule's comment). */
  kernelDropped: Record<string, number>;
  /** Recent engine events before a violation (for the replay's reader). */
  trace: string[];
}

/** Draws a world from `seed`. */
export function scenario(seed: number): Scenario {
  const rng = new Rng(seed);
  const replicas = rng.int(1, 3);
  const names = ["original", ...Array.from({ length: replicas }, (_, i) => `replica${i + 1}`)];
  const links: Record<string, LinkQuality> = {};
  const lossy = () => (rng.chance(0.3) ? rng.pick([0.001, 0.01, 0.03, 0.08]) : 0);
  links.client = {
    ...CLEAN,
    delayUs: rng.int(50, 2000),
    loss: lossy(),
    duplicate: rng.chance(0.1) ? 0.01 : 0,
    reorder: rng.chance(0.1) ? 0.02 : 0,
  };
  for (const n of names) {
    const wan = n !== "original" && rng.chance(0.2);
    links[n] = {
      delayUs: wan ? rng.int(2000, 30_000) : rng.int(30, 400),
      jitterUs: wan ? rng.int(100, 3000) : rng.int(5, 100),
      loss: lossy(),
      duplicate: rng.chance(0.1) ? 0.01 : 0,
      reorder: rng.chance(0.15) ? rng.pick([0.01, 0.05]) : 0,
    };
  }
  const capture: CaptureTuning = {
    batchUs: rng.chance(0.2) ? [200, rng.int(2000, 20_000)] : [20, rng.int(100, 1000)],
    drop: rng.chance(0.1) ? rng.pick([0.0005, 0.002, 0.01]) : 0,
  };
  const small = rng.chance(0.15);
  const limits = small
    ? {
        ...DEFAULT_LIMITS,
        perConnectionBytes: rng.pick([32 * 1024, 256 * 1024]),
        perReplicaBytes: rng.pick([256 * 1024, 1024 * 1024]),
        globalBytes: rng.pick([512 * 1024, 4 * 1024 * 1024]),
        outOfOrderBytes: 64 * 1024,
        maxConnections: rng.int(2, 16),
      }
    : { ...DEFAULT_LIMITS };
  const clients: Scenario["clients"] = [];
  const nConns = rng.int(1, 10);
  for (let i = 0; i < nConns; i++) {
    const requests: Request[] = [];
    const nReq = rng.int(1, 8);
    for (let j = 0; j < nReq; j++) {
      if (rng.chance(0.6))
        requests.push({ op: "GET", n: rng.chance(0.2) ? rng.int(10_000, 300_000) : rng.int(0, 4000) });
      else {
        const data = Buffer.alloc(rng.chance(0.2) ? rng.int(10_000, 200_000) : rng.int(0, 3000));
        for (let k = 0; k < data.length; k++) data[k] = rng.u32() & 0xff;
        requests.push({ op: "PUT", data });
      }
    }
    const ending = rng.chance(0.6) ? "quit" : rng.chance(0.75) ? "fin" : "abort";
    if (ending === "quit") requests.push({ op: "QUIT" });
    clients.push({
      at: rng.int(0, 3000) * 1000,
      host: rng.pick(CLIENTS),
      script: {
        requests,
        ending,
        pipeline: rng.int(1, 4),
        readChunk: rng.chance(0.2) ? rng.int(100, 4000) : 1 << 20,
        readPauseUs: rng.chance(0.2) ? rng.int(100, 20_000) : 0,
      },
    });
  }
  // A stream of short connections (a connect loop) in some runs: some of them open while the
  // original fails, before and after the promotion (found a conntrack state the failover left
  // pointing at the fenced original: the lab's failover-newconns test).
  if (rng.chance(0.25)) {
    const n = rng.int(20, 60);
    for (let i = 0; i < n; i++)
      clients.push({
        at: rng.int(0, 3500) * 1000,
        host: rng.pick(CLIENTS),
        script: {
          requests: [{ op: "GET", n: rng.int(1, 200) }, { op: "QUIT" }],
          ending: "quit",
          pipeline: 2,
          readChunk: 1 << 20,
          readPauseUs: 0,
        },
      });
  }
  // Request loops in some runs (the lab's INCR loops): long connections that always have a small
  // request in flight, so the original's death finds bytes it never read (Linux resets those
  // connections) and the clients keep talking across the failover. Drawn from a stream of their
  // own so that the rest of each seed's world stays what it was.
  const loops = new Rng(seed ^ 0x6c6f6f70);
  if (loops.chance(0.25)) {
    const n = loops.int(5, 20);
    for (let i = 0; i < n; i++)
      clients.push({
        at: loops.int(0, 1000) * 1000,
        host: loops.pick(CLIENTS),
        script: {
          requests: Array.from({ length: loops.int(30, 200) }, () =>
            loops.chance(0.5)
              ? { op: "GET" as const, n: loops.int(1, 40) }
              : { op: "PUT" as const, data: Buffer.alloc(loops.int(1, 40), i) },
          ),
          ending: "quit",
          pipeline: 1,
          readChunk: 1 << 20,
          readPauseUs: loops.chance(0.5) ? loops.int(100, 20_000) : 0,
        },
      });
    // ... and the last request of each goes before a QUIT.
    for (const c of clients.slice(-n)) c.script.requests.push({ op: "QUIT" });
  }
  const faults: Fault[] = [];
  const nFaults = rng.chance(0.25) ? 0 : rng.int(1, 3);
  for (let i = 0; i < nFaults; i++) {
    const at = rng.int(100, 3500) * 1000;
    const pick = rng.float();
    const target = rng.chance(0.6) ? "original" : rng.pick(names.slice(1));
    if (pick < 0.55) {
      const kind = rng.pick(["process", "host", "freeze", "link"] as const);
      const f: Fault = { at, kind, target };
      if (kind === "freeze" || kind === "link")
        f.durationMs = rng.chance(0.5) ? rng.pick([10, 30, 60, 100, 200, 1000]) : rng.int(1, 5000);
      faults.push(f);
      // Two at once: another backend at the same moment.
      if (rng.chance(0.2) && names.length > 2) {
        const other = rng.pick(names.filter((n) => n !== target));
        faults.push({
          at,
          kind: rng.pick(["process", "host", "freeze", "link"] as const),
          target: other,
          durationMs: rng.int(10, 2000),
        });
      }
    } else if (pick < 0.7) {
      faults.push({ at, kind: "promote", target: rng.pick(names.slice(1)) });
    } else if (pick < 0.85) {
      faults.push({
        at,
        kind: "capture-stall",
        channel: rng.pick(["client", "backend"] as const),
        durationMs: rng.int(1, 300),
      });
    } else {
      faults.push({ at, kind: "engine-stall", durationMs: rng.int(1, 200) });
    }
  }
  const divergent = rng.chance(0.1) ? { replica: rng.pick(names.slice(1)), from: rng.int(0, 4) } : undefined;
  const service = {
    readChunk: rng.chance(0.2) ? rng.int(500, 8000) : 1 << 20,
    readPauseUs: rng.chance(0.2) ? rng.int(100, 10_000) : 0,
    rcvBuf: rng.pick([16 * 1024, 64 * 1024, 128 * 1024, 256 * 1024]),
    sndBuf: rng.pick([16 * 1024, 64 * 1024, 256 * 1024]),
  };
  return { seed, replicas, links, capture, limits, divergent, clients, faults, service };
}

class Violation extends Error {}

/** Runs one seed to its end (or its first violation). */
export function runSeed(
  seed: number,
  opts: {
    maxSimMs?: number;
    trace?: (line: string) => void;
    /** Every packet as it arrives at the end of a link (debugging a replay). */
    packets?: (link: string, at: number, seg: TcpSegment) => void;
  } = {},
): RunResult {
  const sc = scenario(seed);
  const sched = new Scheduler();
  const rng = new Rng(seed ^ 0x5eed);
  const maxUs = (opts.maxSimMs ?? 120_000) * 1000;
  const base = defaultConfig({
    vip: VIP,
    port: PORT,
    original: ORIGINAL,
    snatAddress: SNAT,
    replicationAddress: REPL,
  });
  const config: EngineConfig = {
    ...base,
    limits: sc.limits,
    // The appliance's shipped detection floors (src/proxy/config.ts), not the engine's defaults.
    failure: {
      ...base.failure,
      stallSuspectMs: FAILURE_DEFAULTS.stallSuspectMs,
      probeTimeoutMs: FAILURE_DEFAULTS.probeTimeoutMs,
      probeIntervalMs: FAILURE_DEFAULTS.probeIntervalMs,
      autoFailover: true,
      probes: true,
    },
  };
  const names = ["original", ...Array.from({ length: sc.replicas }, (_, i) => `replica${i + 1}`)];
  const address = new Map(names.map((n, i) => [n, ORIGINAL + i]));
  const hosts = new Map<string, TcpHost>();
  const links = new Map<string, { up: LinkDirection; down: LinkDirection }>();
  const byAddress = new Map<number, string>();

  const route = (seg: TcpSegment) => {
    const name = byAddress.get(seg.dst);
    if (name === undefined) return; // nobody there
    links.get(name)!.down.send(seg);
  };
  const mkLink = (
    name: string,
    q: LinkQuality,
    toAppliance: (s: TcpSegment) => void,
    toHost: (s: TcpSegment) => void,
  ) => {
    const tap = (link: string, f: (s: TcpSegment) => void) =>
      opts.packets
        ? (s: TcpSegment) => {
            opts.packets!(link, sched.now / 1000, s);
            f(s);
          }
        : f;
    links.set(name, {
      up: new LinkDirection(`${name}→appliance`, q, sched, rng.fork(), tap(`${name}→appliance`, toAppliance)),
      down: new LinkDirection(`appliance→${name}`, q, sched, rng.fork(), tap(`appliance→${name}`, toHost)),
    });
  };
  const sockOpts = (rcvBuf: number, sndBuf: number) => ({
    rcvBuf,
    sndBuf,
    offer: { sack: true, timestamps: true, wscale: true },
  });
  for (const [i, c] of CLIENTS.entries()) {
    const name = `client${i + 1}`;
    const h = new TcpHost(
      name,
      c,
      sched,
      rng.fork(),
      (s) => links.get(name)!.up.send(s),
      sockOpts(256 * 1024, 256 * 1024),
    );
    hosts.set(name, h);
    byAddress.set(c, name);
    mkLink(
      name,
      sc.links.client!,
      (s) => appliance.fromClient(s),
      (s) => h.input(s),
    );
  }
  const services = new Map<string, Service>();
  for (const n of names) {
    const a = address.get(n)!;
    const h = new TcpHost(
      n,
      a,
      sched,
      rng.fork(),
      (s) => links.get(n)!.up.send(s),
      sockOpts(sc.service.rcvBuf, sc.service.sndBuf),
    );
    hosts.set(n, h);
    byAddress.set(a, n);
    mkLink(
      n,
      sc.links[n]!,
      (s) => appliance.fromBackend(s),
      (s) => h.input(s),
    );
    services.set(
      n,
      new Service(h, PORT, {
        readChunk: sc.service.readChunk,
        readPauseUs: sc.service.readPauseUs,
        divergeFrom: sc.divergent?.replica === n ? sc.divergent.from : undefined,
      }),
    );
  }
  const appliance = new Appliance(config, sched, rng.fork(), sc.capture, route);
  for (const n of names.slice(1)) appliance.addReplica(n, address.get(n)!);

  // ---------------------------------------------------------------- checks
  let violation: string | undefined;
  const fail = (what: string) => {
    throw new Violation(what);
  };
  appliance.afterEngine = () => {
    try {
      appliance.engine.checkInvariants();
    } catch (e) {
      if (e instanceof InvariantError) fail(`engine invariant: ${e.message}`);
      throw e;
    }
  };
  const conns: ClientConn[] = [];
  const byIsn = new Map<number, ClientConn>();
  const byId = new Map<string, ClientConn>();
  appliance.onClientSegment = (seg, via) => {
    if (via === "kernel" && seg.flags & (FIN | RST))
      fail(
        `a ${seg.flags & FIN ? "FIN" : "RST"} reached ${formatIPv4(seg.dst)}:${seg.dstPort} through the kernel path`,
      );
  };
  /** A replica's (or the original's) service read `bytes` at `at` of a client's stream. */
  const serverRead = (svc: string, c: ServerConn, bytes: Buffer) => {
    const client = byIsn.get(c.sock.irs);
    if (!client) return; // a probe (it sends nothing) or an unknown peer
    const at = c.readBytes - bytes.length;
    const want = streamSlice(client.sent, at, bytes.length);
    if (!want.equals(bytes))
      fail(
        `${svc} read bytes [${at}, ${at + bytes.length}) of ${client.id} that the client did not send there`,
      );
  };
  for (const [n, svc] of services) svc.onRead = (c, b) => serverRead(n, c, b);
  /** What a backend's service produced on the client connection `c` (SNAT: through the
   * kernel path; REPL: a shadow of the engine). */
  const produced = (c: ClientConn, peer: number, host?: string): ServerConn | undefined => {
    let best: ServerConn | undefined;
    for (const [n, svc] of services) {
      if (host !== undefined && n !== host) continue;
      for (const s of svc.conns)
        if (
          s.sock.irs === c.sock.iss &&
          s.sock.remoteAddress === peer &&
          (!best || s.wroteBytes > best.wroteBytes)
        )
          best = s;
    }
    return best;
  };
  const onByte = (c: ClientConn, at: number, bytes: Buffer) => {
    // Offsets the original produced must carry its bytes; beyond, a promoted replica's.
    const orig = produced(c, SNAT);
    const origEnd = Math.min(at + bytes.length, orig?.wroteBytes ?? 0);
    if (origEnd > at && !streamSlice(orig!.wrote, at, origEnd - at).equals(bytes.subarray(0, origEnd - at)))
      fail(
        `${c.id} received bytes in [${at}, ${origEnd}) that its original (${orig!.host}) did not produce there`,
      );
    if (origEnd >= at + bytes.length) return;
    const from = Math.max(at, origEnd);
    const rest = bytes.subarray(from - at);
    for (const e of appliance.events) {
      if (e.event.type !== "promoted") continue;
      const s = produced(c, REPL, e.event.replica);
      if (s && s.wroteBytes >= from + rest.length && streamSlice(s.wrote, from, rest.length).equals(rest))
        return;
    }
    fail(
      `${c.id} received bytes in [${from}, ${at + bytes.length}) that neither its original nor a promoted replica produced there`,
    );
  };

  // ---------------------------------------------------------------- load and faults
  let ended = 0;
  for (const cl of sc.clients) {
    sched.at(cl.at, () => {
      const hostName = byAddress.get(cl.host)!;
      const c = startClient(hosts.get(hostName)!, VIP, PORT, cl.script, onByte, (c) => {
        ended++;
        if (c.outcome === "premature-fin") checkPrematureFin(c);
      });
      conns.push(c);
      byIsn.set(c.sock.iss, c);
      byId.set(c.id, c);
    });
  }
  const serving = (n: string) => hosts.get(n)!.serving && links.get(n)!.up.up;
  /** The engine's events about client connection `c`: its id, from its start until the same
   * client port's next connection started (simulator seed 49: a port reused after a connection
   * the engine did not replicate took the next one's events for its own). */
  const eventsFor = (c: ClientConn) => {
    const next = Math.min(
      ...conns.filter((o) => o.id === c.id && o.startedAt > c.startedAt).map((o) => o.startedAt),
    );
    return appliance.events
      .filter((e) => "conn" in e.event && e.event.conn === c.id && e.at >= c.startedAt && e.at < next)
      .map((e) => e.event);
  };
  const removed = (r: string) =>
    appliance.events.some(
      (e) =>
        (e.event.type === "replica-removed" || e.event.type === "replica-failure") && e.event.replica === r,
    );
  const openedWith = (c: ClientConn): string[] => {
    const o = eventsFor(c).find((e) => e.type === "connection-opened");
    return o && o.type === "connection-opened" ? o.replicas : [];
  };
  const counted = (c: ClientConn, r: string) =>
    removed(r) ||
    eventsFor(c).some(
      (e) => (e.type === "lagging" || e.type === "diverged" || e.type === "unverified") && e.replica === r,
    );
  function checkPrematureFin(c: ClientConn): void {
    // The service closed before its reply ended (its process died): acceptable only when no
    // replica could have carried the connection on, or when the engine said why it did not.
    for (const r of openedWith(c)) {
      if (!counted(c, r) && serving(r) && !promotedTo(r))
        fail(
          `${c.id} got a FIN at ${c.received} of ${c.expectedBytes} bytes while ${r} held a faithful copy`,
        );
    }
  }
  const promotedTo = (r: string) =>
    appliance.events.some((e) => e.event.type === "promoted" && e.event.replica === r);

  // The kernel path's original before each promotion: was it serving when it was replaced?
  let falsePromotions = 0;
  const falseReasons: string[] = [];
  let lastFailure: { reason: string; confirmedBy: string } | undefined;
  let currentOriginal = "original";
  /** Faults that struck each backend so far (the "no wolf" check). */
  const struck = new Map<string, Fault[]>();
  const budget = config.failure.hangBudgetMs;
  /** The original's only trouble so far: pauses shorter than the budget, on a loss-free link. */
  const onlyShortPauses = (n: string) =>
    sc.links[n]!.loss === 0 &&
    (struck.get(n) ?? []).every((f) => f.kind === "freeze" && (f.durationMs ?? Infinity) < budget);
  // A promotion asked for (a fault of kind "promote") is no failover; it may come a little
  // later, once the capture caught up.
  let switchoverTo: string | undefined;
  appliance.onEvent = (e) => {
    if (e.type === "switchover-abandoned" && e.replica === switchoverTo) switchoverTo = undefined;
    if (e.type === "original-failure") lastFailure = e;
    if (e.type !== "promoted") return;
    if (e.replica !== switchoverTo) {
      const why = `${lastFailure?.confirmedBy}: ${lastFailure?.reason}`;
      if (serving(currentOriginal)) {
        falsePromotions++;
        falseReasons.push(why);
      }
      if (onlyShortPauses(currentOriginal) && hosts.get(currentOriginal)!.up)
        fail(
          `${currentOriginal} was failed over (${why}) though its only trouble was pauses shorter than the hang budget (${budget} ms)`,
        );
    }
    if (e.replica === switchoverTo) switchoverTo = undefined;
    currentOriginal = e.replica;
  };
  const faultLog: string[] = [];
  for (const f of sc.faults) {
    sched.at(f.at, () => {
      faultLog.push(describe(f));
      if ("target" in f && f.kind !== "promote") struck.set(f.target, [...(struck.get(f.target) ?? []), f]);
      opts.trace?.(`${(sched.now / 1000).toFixed(3)} ms FAULT ${describe(f)}`);
      if (f.kind === "promote") {
        // A switchover forced on a replica still in the set (not removed, not promoted).
        if (appliance.engine.replicaIds().includes(f.target) && !promotedTo(f.target)) {
          switchoverTo = f.target;
          appliance.promote(f.target);
        }
        return;
      }
      if (f.kind === "capture-stall") {
        appliance.channelStall[f.channel] = sched.now + f.durationMs * 1000;
        return;
      }
      if (f.kind === "engine-stall") {
        appliance.engineStallUntil = sched.now + f.durationMs * 1000;
        return;
      }
      const h = hosts.get(f.target)!;
      const l = links.get(f.target)!;
      if (f.kind === "process") h.crashProcess();
      else if (f.kind === "host") h.crashHost();
      else if (f.kind === "freeze") {
        h.freeze();
        if (f.durationMs !== undefined) sched.after(f.durationMs * 1000, () => h.thaw());
      } else {
        l.up.up = false;
        l.down.up = false;
        if (f.durationMs !== undefined)
          sched.after(f.durationMs * 1000, () => {
            l.up.up = true;
            l.down.up = true;
          });
      }
    });
  }
  if (opts.trace) {
    let seen = 0;
    const traceEvents = () => {
      for (; seen < appliance.events.length; seen++) {
        const e = appliance.events[seen]!;
        opts.trace!(`${e.at.toFixed(3)} ms ${JSON.stringify(e.event)}`);
      }
    };
    const orig = appliance.afterEngine;
    appliance.afterEngine = () => {
      orig();
      traceEvents();
    };
  }

  // ---------------------------------------------------------------- run
  const lastStart = Math.max(0, ...sc.clients.map((c) => c.at));
  let endedAt = 0;
  try {
    // Until every client finished and the engine let go of every connection (its lingering ends
    // and the replicas closed theirs), then a moment more; or the time limit.
    let quietUntil: number | undefined;
    sched.run(maxUs, () => {
      if (violation) return true;
      if (sched.now > lastStart && ended === sc.clients.length) {
        const settled =
          appliance.engine.connections().next().done === true || sched.now > endedAt + 90_000_000;
        if (!settled) return false;
        quietUntil ??= sched.now + 1_000_000;
        return sched.now >= quietUntil;
      }
      endedAt = sched.now;
      return false;
    });
    endChecks();
  } catch (e) {
    if (!(e instanceof Violation)) {
      violation = `exception: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`;
    } else violation = e.message;
  }

  function endChecks(): void {
    // The engine let go of every connection that ended on both sides: its lingering ends, and a
    // replica that cannot finish one is waited for SHADOW_CLOSE_MS at most (the run goes on 90 s
    // past the last client for that). One whose client or server still holds it open (a RST
    // lost on a link leaves a half-open connection, on the original as on the engine) may stay.
    const gone = (state: string) => state === "CLOSED" || state === "TIME_WAIT";
    if (ended === sc.clients.length) {
      for (const conn of appliance.engine.connections()) {
        const client = conns.find((c) => c.sock.iss === conn.clientIsn);
        const servers = [...services.values()].flatMap((svc) =>
          svc.conns.filter((x) => x.sock.irs === conn.clientIsn && hosts.get(x.host)!.up),
        );
        if (client && gone(client.sock.state) && servers.every((x) => gone(x.sock.state))) {
          const shadows = [...conn.shadows.values()].map((x) => `${x.replica.id} ${x.state}/${x.status}`);
          fail(
            `the engine still holds ${conn.id} (${conn.phase}; shadows: ${shadows.join(", ") || "none"}), over on both sides`,
          );
        }
      }
    }
    const original = appliance.engine.originalAddress;
    const originalName = byAddress.get(original)!;
    for (const c of conns) {
      // Liveness: with a serving original, nothing hangs.
      if (c.outcome === undefined && serving(originalName) && names.every((n) => !faultActive(n)))
        fail(
          `${c.id} did not finish (received ${c.received} of ${c.expectedBytes}; ${c.sock.state}, ${c.sock.pawsDropped} PAWS drops, ${c.sock.unacceptable} out of window); engine: ${engineView(c)}`,
        );
      if (c.outcome !== "complete") continue;
      for (const r of openedWith(c)) {
        const sc2 = services.get(r)!.conns.find((s) => s.sock.irs === c.sock.iss);
        const complete =
          sc2 !== undefined &&
          sc2.readBytes === c.sentBytes &&
          (!c.finSent || sc2.ended || c.requests.at(-1)?.op === "QUIT");
        if (!complete && !counted(c, r))
          fail(`${r} read ${sc2?.readBytes ?? 0} of ${c.sentBytes} bytes of ${c.id}, and nothing said so`);
      }
    }
  }
  /** The engine's view of a client connection, for a violation's message. */
  function engineView(c: ClientConn): string {
    const e = appliance.engine.connection(c.sock.host.address, c.sock.localPort);
    if (!e) return "not tracked";
    const sh = [...e.shadows.entries()].map(
      ([id, s]) =>
        `${id}${e.spliced === s ? "*" : ""} ${s.state}/${s.status} sndUna=${s.sndUna} sndNxt=${s.sndNxt} reply=${s.reply.end} base=${s.reply.base} rcvAcked=${s.rcvAcked} fin=${s.replicaFinOffset} compared=${s.compared}`,
    );
    return `${e.phase} client=${e.client.end} fin=${e.clientFinOffset} original=${e.original.end} ofin=${e.originalFinOffset} clientAck=${e.clientAckOffset} sentToClient=${e.sentToClient} spliceFinSent=${e.spliceFinSent} [${sh.join("; ")}]`;
  }
  function faultActive(n: string): boolean {
    const h = hosts.get(n)!;
    return !h.up || h.processDead;
  }

  const outcomes: Record<string, number> = {};
  for (const c of conns) outcomes[c.outcome ?? "open"] = (outcomes[c.outcome ?? "open"] ?? 0) + 1;
  const st = appliance.engine.stats();
  const sum = (k: "diverged" | "lagging" | "unverified") => st.replicas.reduce((a, r) => a + r[k], 0);
  const trace = violation
    ? appliance.events.slice(-30).map((e) => `${e.at.toFixed(3)} ms ${JSON.stringify(e.event)}`)
    : [];
  return {
    seed,
    ok: violation === undefined,
    violation,
    simMs: sched.now / 1000,
    steps: sched.steps,
    connections: conns.length,
    outcomes,
    faults: faultLog,
    promotions: st.failures.promotions,
    falsePromotions,
    falseReasons,
    counted: {
      diverged: sum("diverged"),
      lagging: sum("lagging"),
      unverified: sum("unverified"),
      captureGaps: st.captureGaps,
    },
    clientBytes: conns.reduce((a, c) => a + c.sentBytes, 0),
    kernelDropped: { ...appliance.stats.kernelDropped },
    trace,
  };
}

/** `len` bytes of a stream kept as chunks, from offset `at`. */
function streamSlice(chunks: Buffer[], at: number, len: number): Buffer {
  const out: Buffer[] = [];
  let pos = 0;
  let need = len;
  for (const c of chunks) {
    if (need <= 0) break;
    const end = pos + c.length;
    if (end > at) {
      const from = Math.max(0, at - pos);
      const take = Math.min(c.length - from, need);
      out.push(c.subarray(from, from + take));
      need -= take;
    }
    pos = end;
  }
  return Buffer.concat(out);
}

function describe(f: Fault): string {
  if (f.kind === "promote") return `promote ${f.target} at ${f.at / 1000} ms`;
  if (f.kind === "capture-stall")
    return `capture ${f.channel} stalls ${f.durationMs} ms at ${f.at / 1000} ms`;
  if (f.kind === "engine-stall") return `engine stalls ${f.durationMs} ms at ${f.at / 1000} ms`;
  return `${f.target} ${f.kind}${f.durationMs !== undefined ? ` ${f.durationMs} ms` : ""} at ${f.at / 1000} ms`;
}
