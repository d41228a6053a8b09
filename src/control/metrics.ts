// Prometheus exposition (prom-client, a registry of our own). Counters the data plane keeps
// cumulatively (engine, capture, injector) are mirrored from one statistics snapshot per scrape;
// the failover stall is observed by the control plane when a promotion happens; RTT histograms
// come from whoever keeps them through a small interface (RttSource), so the metrics code does
// not depend on how the engine stores its histograms.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { ProxyStats } from "../proxy/proxy.js";

/** One cumulative RTT histogram, in µs as the engine measures. */
export interface RttHistogramExposition {
  path: string;
  replica?: string;
  /** What was timed (e.g. "handshake", "data"). */
  kind?: string;
  /** [upper bound µs, samples at or below it], ascending bounds; +Inf is `count`. */
  bucketsUs: Array<[number, number]>;
  sumUs: number;
  count: number;
}

export type RttSource = () => RttHistogramExposition[];

/** Upper bounds (µs) of the exposed RTT buckets: LAN paths (tens of µs) to WAN (tens of ms). */
export const RTT_BOUNDS_US: readonly number[] = [
  10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
];

/** Anything that can report cumulative counts at given bounds (src/replica/histogram.ts does). */
export interface CumulativeHistogram {
  cumulative(boundsUs: readonly number[]): number[];
  readonly sumUs: number;
  readonly count: number;
}

/** Adapts named histograms (e.g. the engine's RTT series) to the exposition interface. */
export function histogramExposition(
  series: ReadonlyArray<{ path: string; replica?: string; kind?: string; histogram: CumulativeHistogram }>,
  boundsUs: readonly number[] = RTT_BOUNDS_US,
): RttHistogramExposition[] {
  return series.map((s) => {
    const counts = s.histogram.cumulative(boundsUs);
    return {
      path: s.path,
      ...(s.replica !== undefined ? { replica: s.replica } : {}),
      ...(s.kind !== undefined ? { kind: s.kind } : {}),
      bucketsUs: boundsUs.map((b, i): [number, number] => [b, counts[i] ?? 0]),
      sumUs: s.histogram.sumUs,
      count: s.histogram.count,
    };
  });
}

/** `le` is the bucket label prom-client reserves: never a label name, always a bucket's label. */
type RttLabel = "path" | "replica" | "kind" | "le";

/** A histogram whose buckets are kept elsewhere: read from the source at every scrape. */
class ExternalRttHistogram extends Histogram<RttLabel> {
  constructor(
    private readonly metricName: string,
    private readonly helpText: string,
    private readonly source: RttSource,
  ) {
    super({
      name: metricName,
      help: helpText,
      labelNames: ["path", "replica", "kind"],
      buckets: [1],
      registers: [],
    });
  }

  override get(): ReturnType<Histogram<RttLabel>["get"]> {
    type Exposed = Awaited<ReturnType<Histogram<RttLabel>["get"]>>;
    const values: Exposed["values"] = [];
    const name = this.metricName;
    for (const h of this.source()) {
      const labels = {
        path: h.path,
        ...(h.replica !== undefined ? { replica: h.replica } : {}),
        ...(h.kind !== undefined ? { kind: h.kind } : {}),
      };
      for (const [le, n] of h.bucketsUs)
        values.push({ labels: { ...labels, le: le / 1e6 }, value: n, metricName: `${name}_bucket` });
      values.push({ labels: { ...labels, le: "+Inf" }, value: h.count, metricName: `${name}_bucket` });
      values.push({ labels, value: h.sumUs / 1e6, metricName: `${name}_sum` });
      values.push({ labels, value: h.count, metricName: `${name}_count` });
    }
    // Not super.get(): it reads prom-client's own (empty) buckets through getForPromString.
    const exposed: Exposed = {
      name,
      help: this.helpText,
      // prom-client's typings declare a numeric enum; its registry prints this string.
      type: "histogram" as unknown as Exposed["type"],
      values,
      aggregator: "sum",
      collect: () => undefined,
    };
    return Promise.resolve(exposed);
  }

  /** The registry renders text from this one when it exists (prom-client's fast path). */
  getForPromString(): ReturnType<Histogram<RttLabel>["get"]> {
    return this.get();
  }
}

/** What the control plane adds to the data plane's statistics. */
export interface ControlSnapshot {
  eventClients: number;
  eventClientsDropped: number;
  stateStoreUp: boolean;
  statePendingWrites: number;
  replicasDraining: number;
}

const STALL_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class Metrics {
  readonly registry = new Registry();
  private readonly counters: Record<string, Counter<string>> = {};
  private readonly gauges: Record<string, Gauge<string>> = {};
  private readonly stall: Histogram<"kind">;

  constructor(opts: { rtt?: RttSource; processMetrics?: boolean } = {}) {
    const r = [this.registry];
    const counter = (key: string, name: string, help: string, labelNames: string[] = []) =>
      (this.counters[key] = new Counter({ name: `tcp_replicator_${name}`, help, labelNames, registers: r }));
    const gauge = (key: string, name: string, help: string, labelNames: string[] = []) =>
      (this.gauges[key] = new Gauge({ name: `tcp_replicator_${name}`, help, labelNames, registers: r }));
    counter("packets", "packets_total", "Segments the engine handled, by source", ["source"]);
    counter("bytes", "bytes_total", "Stream bytes the engine received, by stream", ["stream"]);
    counter(
      "drops",
      "drops_total",
      "Packets lost to the appliance: parse rejections, kernel capture drops, injection errors",
      ["where", "reason"],
    );
    counter("oooRefused", "out_of_order_refused_bytes_total", "Out-of-order bytes refused (limits)");
    counter("divergences", "divergences_total", "Shadow conversations marked diverged", ["replica"]);
    counter("lagging", "lagging_total", "Shadow conversations marked lagging (limits)", ["replica"]);
    counter("replicaSent", "replica_bytes_sent_total", "Client bytes sent to each replica", ["replica"]);
    counter("replicaReply", "replica_reply_bytes_total", "Reply bytes received from each replica", [
      "replica",
    ]);
    counter("replicaCompared", "replica_compared_bytes_total", "Reply bytes compared with the original's", [
      "replica",
    ]);
    counter(
      "replicaTolerated",
      "replica_tolerated_bytes_total",
      "Reply bytes that differed from the original's inside an HTTP Date value (not a divergence)",
      ["replica"],
    );
    counter("retransmits", "replica_retransmits_total", "Segments retransmitted to each replica", [
      "replica",
    ]);
    counter("opened", "connections_opened_total", "Client connections opened");
    counter("closed", "connections_closed_total", "Client connections closed");
    counter("failovers", "failovers_total", "Promotions of a replica (any cause) since start");
    counter("failures", "failures_detected_total", "Failures of the original detected");
    counter(
      "falseFailovers",
      "false_failovers_total",
      "Former originals that answered again after their replacement (capacity lost until resynced)",
    );
    counter("withheld", "failovers_withheld_total", "Unconfirmed verdicts not acted on (hysteresis)");
    counter("captureGaps", "capture_gaps_total", "Connections with bytes the capture missed");
    counter(
      "channelPauses",
      "capture_channel_pauses_total",
      "Capture channels paused for running ahead of the other (the engine was behind)",
    );
    counter("channelPaused", "capture_channel_paused_seconds_total", "Time capture channels spent paused");
    counter("eventDropped", "event_stream_dropped_clients_total", "Event stream clients dropped as too slow");
    gauge("active", "connections_active", "Connections the engine tracks");
    gauge("buffered", "buffered_bytes", "Bytes the engine holds");
    gauge("replicaBuffered", "replica_buffered_bytes", "Bytes held for each replica (its lag)", ["replica"]);
    gauge("shadows", "replica_shadows_active", "Open shadow conversations per replica", ["replica"]);
    gauge("srtt", "replica_srtt_seconds", "Smoothed RTT to each replica (retransmission timer)", ["replica"]);
    gauge("promotable", "replicas_promotable", "Replicas that can still be promoted");
    gauge("eventClients", "event_stream_clients", "Connected event stream clients");
    gauge("storeUp", "state_store_up", "1 when the state store (Redis) is connected");
    gauge("pendingWrites", "state_pending_writes", "State changes not yet acknowledged by Redis");
    gauge("draining", "replicas_draining", "Replicas being drained before removal");
    this.stall = new Histogram({
      name: "tcp_replicator_failover_stall_seconds",
      help: "From the failure (or the switchover request) to the promotion",
      labelNames: ["kind"],
      buckets: STALL_BUCKETS,
      registers: r,
    });
    if (opts.rtt)
      this.registry.registerMetric(
        new ExternalRttHistogram(
          "tcp_replicator_rtt_seconds",
          "Passive round-trip times per path (client, original, each replica)",
          opts.rtt,
        ),
      );
    if (opts.processMetrics) collectDefaultMetrics({ register: this.registry });
  }

  observeFailoverStall(kind: string, ms: number): void {
    this.stall.observe({ kind }, ms / 1000);
  }

  /** Mirrors one statistics snapshot into the registry (call before rendering). */
  update(
    stats: Pick<ProxyStats, "engine" | "capture" | "injector"> & Partial<Pick<ProxyStats, "channelBalance">>,
    control: ControlSnapshot,
  ): void {
    const e = stats.engine;
    const set = (key: string, pairs: Array<[Record<string, string>, number]>) => {
      const c = this.counters[key]!;
      c.reset();
      for (const [labels, v] of pairs) c.inc(labels, Math.max(0, v));
    };
    const one = (key: string, v: number) => set(key, [[{}, v]]);
    const gauge = (key: string, pairs: Array<[Record<string, string>, number]>) => {
      const g = this.gauges[key]!;
      g.reset();
      for (const [labels, v] of pairs) g.set(labels, v);
    };
    const perReplica = (f: (r: ProxyStats["engine"]["replicas"][number]) => number) =>
      e.replicas.map((r): [Record<string, string>, number] => [{ replica: r.id }, f(r)]);
    const p = e.packets;
    set("packets", [
      [{ source: "client" }, p.client],
      [{ source: "original" }, p.original],
      [{ source: "nat_syn" }, p.natSyn],
      [{ source: "nat_inferred" }, p.natInferred],
      [{ source: "replica" }, p.replica],
      [{ source: "unmatched" }, p.unmatched],
      [{ source: "not_from_original" }, p.notFromOriginal],
    ]);
    set("bytes", [
      [{ stream: "client" }, e.clientBytes],
      [{ stream: "original" }, e.originalBytes],
    ]);
    set("drops", [
      ...Object.entries(e.rejected).map(([reason, n]): [Record<string, string>, number] => [
        { where: "parse", reason },
        n,
      ]),
      [{ where: "capture", reason: "client" }, stats.capture.client.kernelDropped],
      [{ where: "capture", reason: "backend" }, stats.capture.backend.kernelDropped],
      [{ where: "inject", reason: "error" }, stats.injector.errors],
      ...Object.entries(e.packets.unmatchedBy).map(([reason, n]): [Record<string, string>, number] => [
        { where: "unmatched", reason },
        n,
      ]),
    ]);
    one("channelPauses", stats.channelBalance?.pauses ?? 0);
    one("channelPaused", (stats.channelBalance?.pausedMs ?? 0) / 1000);
    one("oooRefused", e.outOfOrderRefusedBytes);
    set(
      "divergences",
      perReplica((r) => r.diverged),
    );
    set(
      "lagging",
      perReplica((r) => r.lagging),
    );
    set(
      "replicaSent",
      perReplica((r) => r.bytesSent),
    );
    set(
      "replicaReply",
      perReplica((r) => r.replyBytes),
    );
    set(
      "replicaCompared",
      perReplica((r) => r.comparedBytes),
    );
    set(
      "replicaTolerated",
      perReplica((r) => r.toleratedBytes),
    );
    set(
      "retransmits",
      perReplica((r) => r.retransmits),
    );
    one("opened", e.connections.opened);
    one("closed", e.connections.closed);
    one("failovers", e.failures.promotions);
    one("failures", e.failures.detected);
    one("falseFailovers", e.failures.falseFailovers);
    one("withheld", e.failures.withheld);
    one("captureGaps", e.captureGaps);
    one("eventDropped", control.eventClientsDropped);
    gauge("active", [[{}, e.connections.active]]);
    gauge("buffered", [[{}, e.bufferedBytes]]);
    gauge(
      "replicaBuffered",
      perReplica((r) => r.bufferedBytes),
    );
    gauge(
      "shadows",
      perReplica((r) => r.shadowsActive),
    );
    gauge(
      "srtt",
      e.replicas.flatMap((r): Array<[Record<string, string>, number]> =>
        r.rttUs.srtt === null ? [] : [[{ replica: r.id }, r.rttUs.srtt / 1e6]],
      ),
    );
    gauge("promotable", [[{}, e.failures.replicasLeft]]);
    gauge("eventClients", [[{}, control.eventClients]]);
    gauge("storeUp", [[{}, control.stateStoreUp ? 1 : 0]]);
    gauge("pendingWrites", [[{}, control.statePendingWrites]]);
    gauge("draining", [[{}, control.replicasDraining]]);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }
}
