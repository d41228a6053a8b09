// The appliance's data plane at run time: installs the kernel path and the replication rules,
// captures, feeds the engine, injects what it produces, and runs its timers. Started and stopped
// as a unit; stop() (also on SIGINT/SIGTERM) removes everything it added to the system.
import { createServer, type Server } from "node:net";
import { probeCopies, type ProbeHandle } from "./probe.js";
import { rm } from "node:fs/promises";
import { setPriority } from "node:os";
import type { Logger } from "pino";
import { run, runStatus } from "../sys/command.js";
import { formatIPv4, parseIPv4 } from "../wire/ipv4.js";
import { ReplicationEngine } from "../replica/engine.js";
import { defaultConfig, type EngineEvent, type EngineOutput, type EngineStats } from "../replica/types.js";
import { Capture, captureFilters, type CaptureCounters, type CaptureSink } from "./capture.js";
import { Injector } from "./inject.js";
import {
  installKernelPath,
  readCounters,
  removeKernelPath,
  type KernelPathConfig,
  type RuleCounter,
} from "./nft.js";
import { ChannelBalancer, type ChannelBalanceStats } from "./channel-balance.js";
import type { ProxyConfig } from "./config.js";

/**
 * The engine's clock (ms): CLOCK_MONOTONIC, the clock capture times are on (native/pcap-pipe.c
 * converts the kernel's real-time stamps), so the engine can subtract one from the other.
 */
export function engineNow(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

export interface ProxyStats {
  engine: EngineStats;
  capture: Record<"client" | "backend", CaptureCounters & { running: boolean }>;
  /** Channels paused for running ahead of the other (see channel-balance.ts). */
  channelBalance: ChannelBalanceStats;
  injector: { sent: number; errors: number; lastError: string | null };
  kernel: RuleCounter[];
  uptimeMs: number;
}

async function routeDevice(address: string): Promise<string> {
  const out = JSON.parse(await run(["ip", "-j", "route", "get", address])) as Array<{ dev?: string }>;
  const dev = out[0]?.dev;
  if (!dev) throw new Error(`no route to ${address}`);
  return dev;
}

export class Proxy {
  private captures: { client: Capture; backend: Capture } | undefined;
  private readonly balancer = new ChannelBalancer();
  private injector: Injector | undefined;
  private server: Server | undefined;
  private timer: NodeJS.Timeout | undefined;
  private tickQueued = false;
  private addedAddress: { address: string; dev: string } | undefined;
  private readonly started = performance.now();
  private currentOriginal: string;
  private readonly fenced = new Set<string>();
  private kernelUpdate: Promise<void> = Promise.resolve();
  private readonly probes = new Set<ProbeHandle>();
  /** Engine event subscribers (the control plane): called from the drain loop, must not block. */
  private readonly listeners = new Set<(event: EngineEvent, at: number) => void>();
  /** After stop(): no more ticks, probes or kernel changes. */
  private stopped = false;
  readonly engine: ReplicationEngine;

  private constructor(
    readonly config: ProxyConfig,
    private readonly log: Logger,
  ) {
    const base = defaultConfig({
      vip: parseIPv4(config.vip),
      port: config.port,
      original: parseIPv4(config.original),
      snatAddress: parseIPv4(config.snatAddress),
      replicationAddress: parseIPv4(config.replicationAddress),
    });
    this.engine = new ReplicationEngine({
      ...base,
      limits: config.limits,
      finHoldMs: config.finHoldMs,
      compare: { httpDate: config.tolerateHttpDate },
      failure: {
        ...base.failure,
        ...config.failure,
        healthCheckMs: config.healthCheck?.timeoutMs,
        autoFailover: config.autoFailover,
        probes: true,
      },
    });
    for (const r of config.replicas) this.engine.addReplica({ id: r.id, address: parseIPv4(r.address) });
    this.engine.drain();
    this.currentOriginal = config.original;
  }

  static async start(config: ProxyConfig, log: Logger): Promise<Proxy> {
    const p = new Proxy(config, log);
    try {
      await p.setUp();
    } catch (e) {
      await p.stop();
      throw e;
    }
    return p;
  }

  private async setUp(): Promise<void> {
    const c = this.config;
    // Like the capture, the engine must keep up with the services it replicates.
    try {
      setPriority(-10);
    } catch {
      this.log.warn("could not raise the proxy's scheduling priority");
    }
    await installKernelPath(undefined, this.kernelPathConfig());
    // Held FINs and engine-released segments are unknown to conntrack's window tracking; with
    // strict tracking the client's ACK of a released FIN would be INVALID, miss NAT and be
    // answered by our own RST. Liberal tracking only checks RSTs against the window.
    await run(["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_be_liberal=1", "net.ipv4.ip_forward=1"]);
    // Without replicas the data plane runs all the same: replicas can be added while it runs,
    // and the client path's RTT without replication is the baseline replication is judged by.
    if (c.replicas.length === 0) this.log.warn("no replicas configured: the service runs unreplicated");
    const dev = await routeDevice(c.replicas[0]?.address ?? this.currentOriginal);
    const r = await runStatus(["ip", "addr", "add", `${c.replicationAddress}/32`, "dev", dev]);
    if (r.code === 0) this.addedAddress = { address: c.replicationAddress, dev };
    else if (!/File exists/.test(r.stderr))
      throw new Error(`cannot add ${c.replicationAddress} to ${dev}: ${r.stderr.trim()}`);
    this.injector = new Injector(c.mark);
    const filters = captureFilters(this.engine.config);
    const sink: CaptureSink = {
      segment: (seg, capture) => this.engine.onSegment(seg, engineNow(), capture),
      batchEnd: () => {
        this.engine.flush(engineNow());
        this.flush();
      },
      reject: (reason) => this.engine.reject(reason),
      delivered: (channel, watermarkUs) => this.balancer.delivered(channel, watermarkUs),
    };
    const client = await Capture.start(
      "client",
      c.captureDevice,
      filters.client,
      c.captureBufferBytes,
      sink,
      c.captureCoalesceUs,
    );
    try {
      const backend = await Capture.start(
        "backend",
        c.captureDevice,
        filters.backend,
        c.captureBufferBytes,
        sink,
        c.captureCoalesceUs,
      );
      this.captures = { client, backend };
      this.balancer.add("client", client);
      this.balancer.add("backend", backend);
    } catch (e) {
      client.close();
      throw e;
    }
    if (c.statsSocket) await this.listenStats(c.statsSocket);
    this.log.info({ replicas: c.replicas, filters }, "replicating");
    this.flush(); // timers run from now on (periodic probes), not from the first captured packet
  }

  /** Sends what the engine produced and logs its events; schedules the engine's timers. */
  private flush(): void {
    if (this.stopped) return;
    this.drainOutputs();
    if (!this.tickQueued) {
      this.tickQueued = true;
      setImmediate(() => this.tick());
    }
  }

  private drainOutputs(): void {
    // Before the first send: a promotion's splice sends come out of the engine before its event.
    const drainedAt = performance.timeOrigin + performance.now();
    for (const o of this.engine.drain()) {
      if (o.type === "event" && this.listeners.size > 0) this.notify(o.event, drainedAt);
      if (o.type === "send") {
        this.injector?.send(o.segment);
      } else if (o.type === "probe") {
        this.probe(o, formatIPv4(o.address));
      } else if (o.type === "promote") {
        this.retarget(formatIPv4(o.original), formatIPv4(o.previous));
      } else if (o.type === "fence") {
        this.fence(formatIPv4(o.address));
      } else if (
        o.event.type === "diverged" ||
        o.event.type === "lagging" ||
        o.event.type === "capture-gap"
      ) {
        this.log.warn(o.event, o.event.type);
      } else if (
        o.event.type === "original-failure" ||
        o.event.type === "no-replica-left" ||
        o.event.type === "replica-failure"
      ) {
        this.log.error(o.event, o.event.type);
      } else if (o.event.type === "probe-result") {
        this.log.debug(o.event, o.event.type); // the probe itself logged why
      } else if (o.event.type === "promoted") {
        // Wall-clock time with sub-ms precision: benchmarks line it up with client-side times.
        this.log.info({ ...o.event, at: drainedAt }, o.event.type);
      } else if (o.event.type === "unverified") {
        this.log.info(o.event, o.event.type);
      } else {
        this.log.debug(o.event, o.event.type);
      }
    }
  }

  /** Probes a backend for the engine (see probe.ts) and hands it the verdict. */
  private probe(o: Extract<EngineOutput, { type: "probe" }>, address: string): void {
    const { id, target, timeoutMs, reason, checkMs } = o;
    // The engine waits for captures to pass the probe's send time: capture times are on the same
    // monotonic clock as engineNow() (native/pcap-pipe.c converts them).
    const sentUs = engineNow() * 1000;
    const req = {
      address,
      port: this.config.port,
      timeoutMs,
      // The engine says when the application's health check is asked, and its deadline.
      healthCheck:
        this.config.healthCheck && checkMs !== undefined
          ? { ...this.config.healthCheck, timeoutMs: checkMs }
          : undefined,
    };
    const handle = probeCopies(req, o.copies ?? 1, ({ alive, why, ms }) => {
      this.probes.delete(handle);
      if (this.stopped) return;
      if (alive) this.log.debug({ target, address, why, ms, reason }, "probe answered");
      else
        this.log.warn(
          { target, address, why, ms, reason },
          alive === false ? "probe failed" : "probe not made",
        );
      this.engine.probeResult(id, alive, engineNow(), why, sentUs);
      this.flush();
    });
    this.probes.add(handle);
  }

  /**
   * Nothing is forwarded to or from `address` any more, new connections included (their SYN
   * retransmission reaches the new original): ahead of a promotion that waits for the capture.
   */
  private fence(address: string): void {
    if (this.fenced.has(address)) return;
    this.fenced.add(address);
    this.kernelUpdate = this.kernelUpdate
      .then(() => installKernelPath(undefined, this.kernelPathConfig()))
      .then(
        () => this.log.info({ fenced: [...this.fenced] }, "original fenced ahead of its replacement"),
        (e: unknown) => this.log.error({ err: String(e) }, "fence failed"),
      );
  }

  /** New connections go to the new original; the old one is fenced (nothing to it or from it). */
  private retarget(original: string, previous: string): void {
    this.fenced.add(previous);
    this.fenced.delete(original);
    this.currentOriginal = original;
    this.kernelUpdate = this.kernelUpdate
      .then(() => installKernelPath(undefined, this.kernelPathConfig()))
      .then(() => this.forgetHalfOpen(previous))
      .then(
        (forgotten) =>
          this.log.info({ original, fenced: [...this.fenced], forgotten }, "kernel path retargeted"),
        (e: unknown) => this.log.error({ err: String(e) }, "kernel path retarget failed"),
      );
  }

  /**
   * Connections whose SYN went to the old original just before the fence and did not complete
   * keep their conntrack entry: every SYN retransmission would follow it to the fenced host and
   * the client would hang. That is SYN_SENT (no answer yet) and also SYN_RECV (the original's
   * SYN-ACK passed but was lost before the client: found by the simulator, seed 19, where the
   * client retried for two minutes), and CLOSE (the original refused the SYN just before it was
   * fenced: a SYN retransmission revives a CLOSE entry with its old NAT mapping, the reopen rule
   * of nf_conntrack_proto_tcp applying only to a close begun from the client's side; four
   * clients of the lab's failover-newconns test waited 5 s for nothing). Deleting those entries
   * (established connections are the
   * engine's, spliced or reset) sends the retransmission through DNAT to the new original.
   * Returns how many were deleted.
   */
  private async forgetHalfOpen(previous: string): Promise<number | null> {
    let total = 0;
    for (const state of ["SYN_SENT", "SYN_RECV", "CLOSE"]) {
      const argv = ["conntrack", "-D", "-p", "tcp", "--reply-src", previous, "--state", state];
      try {
        const r = await runStatus(argv);
        const m = /(\d+) flow entries have been deleted/.exec(r.stderr + r.stdout);
        if (!m) {
          this.log.warn(
            { output: (r.stderr || r.stdout).trim(), state },
            "conntrack -D failed: half-open connections may hang",
          );
          return null;
        }
        total += Number(m[1]);
      } catch (e) {
        this.log.warn({ err: String(e), state }, "conntrack -D failed: half-open connections may hang");
        return null;
      }
    }
    return total;
  }

  private kernelPathConfig(): KernelPathConfig {
    const c = this.config;
    return {
      vip: c.vip,
      port: c.port,
      original: this.currentOriginal,
      snatAddress: c.snatAddress,
      table: c.table,
      fenced: [...this.fenced],
      replication: { address: c.replicationAddress, mark: c.mark },
    };
  }

  /** Promotes a replica now (external failure signal or planned switchover). */
  async promote(replica: string): Promise<{ spliced: number; reset: number; dropped: number }> {
    // At once, or after the capture caught up (Engine.switchover): the "promoted" event says.
    const promoted = new Promise<{ spliced: number; reset: number; dropped: number }>((resolve, reject) => {
      const off = this.subscribe((e) => {
        if (e.type === "promoted" && e.replica === replica) {
          off();
          resolve({ spliced: e.spliced, reset: e.reset, dropped: e.dropped });
        } else if (e.type === "switchover-abandoned" && e.replica === replica) {
          off();
          reject(new Error(`promote ${replica}: ${e.reason}`));
        }
      });
      try {
        this.engine.switchover(replica, engineNow());
      } catch (err) {
        off();
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    });
    this.flush(); // sends, and schedules the engine's timers (the new original's probes)
    const report = await promoted;
    await this.kernelUpdate;
    return report;
  }

  /** Engine events as the drain loop hands them out (`at`: wall clock, ms), until the returned
   * function is called. A listener runs on the data plane's path: it must queue, never wait. */
  subscribe(listener: (event: EngineEvent, at: number) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private notify(event: EngineEvent, at: number): void {
    for (const l of this.listeners) {
      try {
        l(event, at);
      } catch (e) {
        this.log.error({ err: String(e), event: event.type }, "engine event listener failed");
      }
    }
  }

  /** Adds a replica while running: it gets the connections opened from now on. */
  addReplica(id: string, address: string): void {
    // A fenced former original still has conntrack flows of spliced connections pointing at it.
    if (this.fenced.has(address)) throw new Error(`${address} is a fenced former original`);
    if (address === this.currentOriginal) throw new Error(`${address} is the original`);
    this.engine.addReplica({ id, address: parseIPv4(address) });
    this.flush();
  }

  /**
   * The original is about to be paused on purpose for up to `ms` (a fork of its disk): its
   * silence is no failure until the returned function is called (or the time is up).
   */
  holdOriginal(ms: number): () => void {
    this.engine.holdOriginal(ms, engineNow());
    this.flush();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.engine.releaseHold(engineNow());
      this.flush(); // schedules the engine's timers from the restarted stall clocks
    };
  }

  /** Drains a replica: no shadow on it for connections opened from now on. */
  drainReplica(id: string): void {
    this.engine.drainReplica(id);
  }

  /** Removes a replica now: its shadow conversations are reset (toward it; clients see nothing). */
  removeReplica(id: string): void {
    this.engine.removeReplica(id);
    this.flush();
  }

  /** The current original's address. */
  get original(): string {
    return this.currentOriginal;
  }

  /** Former originals, fenced off since a replica was promoted in their place. */
  get fencedAddresses(): string[] {
    return [...this.fenced];
  }

  private tick(): void {
    this.tickQueued = false;
    if (this.stopped) return;
    const next = this.engine.tick(engineNow());
    this.engine.flush(engineNow());
    this.drainOutputs();
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (next !== undefined) {
      // Through setImmediate: after a pause of this process (GC, a blocked event loop, a stop)
      // the loop polls I/O once more first, so the capture backlog already waiting is handled
      // before the engine's timers judge anyone's silence (the appliance's own pause must not
      // count against the original).
      this.timer = setTimeout(
        () => {
          this.timer = undefined;
          this.flush();
        },
        Math.max(0, next - engineNow()),
      );
    }
  }

  private async listenStats(path: string): Promise<void> {
    await rm(path, { force: true });
    // One JSON request per connection: {"cmd":"stats"} (also the default for an empty request)
    // or {"cmd":"promote","replica":"ID"}; one JSON answer.
    this.server = createServer({ allowHalfOpen: true }, (sock) => {
      let req = "";
      sock.setEncoding("utf8");
      sock.on("error", () => sock.destroy());
      sock.on("data", (d: string) => {
        req += d;
        if (req.length > 4096) sock.destroy();
      });
      sock.on("end", () => {
        this.handleRequest(req).then(
          (answer) => sock.end(JSON.stringify(answer) + "\n"),
          (e: unknown) =>
            sock.end(JSON.stringify({ error: e instanceof Error ? e.message : String(e) }) + "\n"),
        );
      });
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once("error", reject);
      this.server!.listen(path, () => resolve());
    });
  }

  private async handleRequest(text: string): Promise<unknown> {
    let req: { cmd?: unknown; replica?: unknown } = {};
    if (text.trim() !== "") {
      try {
        req = JSON.parse(text) as typeof req;
      } catch {
        throw new Error("request is not valid JSON");
      }
    }
    if (req.cmd === undefined || req.cmd === "stats") return this.stats();
    if (req.cmd === "failover") {
      // External failure signal (operator, hypervisor): promote the best replica now.
      const best = this.engine.bestReplica();
      if (!best) throw new Error("no replica left to promote");
      return { replica: best, ...(await this.promote(best)) };
    }
    if (req.cmd === "promote") {
      if (typeof req.replica !== "string") throw new Error("promote: replica (string) required");
      return this.promote(req.replica);
    }
    throw new Error(`unknown cmd ${JSON.stringify(req.cmd)}`);
  }

  async stats(): Promise<ProxyStats> {
    const kernel = await readCounters(undefined, this.config.table).catch(() => []);
    const inj = this.injector;
    const counters = (cap: Capture | undefined) =>
      cap
        ? { ...cap.refreshCounters(), running: cap.running }
        : { records: 0, kernelDropped: 0, receivedByFilter: 0, running: false };
    const capture = { client: counters(this.captures?.client), backend: counters(this.captures?.backend) };
    return {
      engine: this.engine.stats(),
      capture,
      channelBalance: { ...this.balancer.stats },
      injector: { sent: inj?.sent ?? 0, errors: inj?.errors ?? 0, lastError: inj?.lastError ?? null },
      kernel,
      uptimeMs: Math.round(performance.now() - this.started),
    };
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    for (const p of this.probes) p.cancel();
    this.probes.clear();
    this.balancer.close();
    this.captures?.client.close();
    this.captures?.backend.close();
    this.captures = undefined;
    this.injector?.close();
    this.injector = undefined;
    if (this.server) {
      await new Promise<void>((r) => this.server!.close(() => r()));
      this.server = undefined;
      if (this.config.statsSocket) await rm(this.config.statsSocket, { force: true });
    }
    await removeKernelPath(undefined, this.config.table).catch(() => undefined);
    if (this.addedAddress) {
      await runStatus(["ip", "addr", "del", `${this.addedAddress.address}/32`, "dev", this.addedAddress.dev]);
      this.addedAddress = undefined;
    }
  }
}
