// Prometheus exposition: RTT histograms plug in through RttSource (here histograms filled by
// hand), engine counters are mirrored from a statistics snapshot, the failover stall is observed.
import t from "tap";
import { RttHistogram } from "../../src/replica/histogram.js";
import { ReplicationEngine } from "../../src/replica/engine.js";
import { defaultConfig } from "../../src/replica/types.js";
import { parseIPv4 } from "../../src/wire/ipv4.js";
import {
  Metrics,
  RTT_BOUNDS_US,
  histogramExposition,
  type RttHistogramExposition,
} from "../../src/control/metrics.js";

/** The samples of one series of a text exposition: labels string -> value. */
function series(text: string, name: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (m && m[1] === name) out.set(m[2] ?? "", Number(m[3]));
  }
  return out;
}

const control = {
  eventClients: 2,
  eventClientsDropped: 1,
  stateStoreUp: true,
  statePendingWrites: 0,
  replicasDraining: 0,
};

function engineStats() {
  const e = new ReplicationEngine(
    defaultConfig({
      vip: parseIPv4("10.0.0.100"),
      port: 80,
      original: parseIPv4("10.0.1.10"),
      snatAddress: parseIPv4("10.0.1.1"),
      replicationAddress: parseIPv4("10.0.1.2"),
    }),
  );
  e.addReplica({ id: "r1", address: parseIPv4("10.0.1.11") });
  e.addReplica({ id: "r2", address: parseIPv4("10.0.1.12") });
  return e;
}

function snapshot(e: ReplicationEngine) {
  const cap = { records: 0, kernelDropped: 0, receivedByFilter: 0, running: true };
  return {
    engine: e.stats(),
    capture: { client: { ...cap, kernelDropped: 7 }, backend: { ...cap } },
    channelBalance: { pauses: 3, pausedMs: 1500 },
    injector: { sent: 0, errors: 2, lastError: null },
  };
}

/** A segment of a flow the engine does not follow (neither VIP, original nor replicas). */
function straySegment() {
  return {
    tos: 0,
    id: 1,
    dontFragment: true,
    ttl: 64,
    src: parseIPv4("10.9.9.9"),
    dst: parseIPv4("10.9.9.8"),
    ipOptions: new Uint8Array(0),
    srcPort: 1234,
    dstPort: 80,
    seq: 1,
    ack: 0,
    flags: 0x02,
    window: 1000,
    urgent: 0,
    options: [],
    payload: new Uint8Array(0),
  };
}

t.test(
  "RTT histograms from hand-filled histograms: cumulative buckets in seconds, +Inf, sum, count",
  async (t) => {
    const client = new RttHistogram();
    const replica = new RttHistogram();
    for (const us of [30, 45, 80, 150, 150, 900, 25_000]) client.add(us);
    for (let i = 0; i < 100; i++) replica.add(200 + i);
    let replicas = [{ path: "replica", replica: "r1", kind: "data", histogram: replica }];
    const m = new Metrics({
      rtt: () => histogramExposition([{ path: "client", kind: "data", histogram: client }, ...replicas]),
    });
    const text = await m.render();
    t.match(text, "# TYPE tcp_replicator_rtt_seconds histogram");
    const buckets = series(text, "tcp_replicator_rtt_seconds_bucket");
    const c = (le: string) => buckets.get(`{path="client",kind="data",le="${le}"}`);
    t.equal(c("0.00002"), 0);
    t.equal(c("0.00005"), 2, "30 and 45 µs are below 50 µs");
    t.equal(c("0.0001"), 3);
    t.equal(c("0.0002"), 5);
    t.equal(c("0.001"), 6);
    t.equal(c("0.02"), 6, "25 ms is above 20 ms");
    t.equal(c("0.05"), 7);
    t.equal(c("+Inf"), 7);
    const values = RTT_BOUNDS_US.map((b) => c(String(b / 1e6))!);
    t.same(
      values,
      [...values].sort((a, b) => a - b),
      "cumulative: never decreasing",
    );
    t.equal(series(text, "tcp_replicator_rtt_seconds_count").get('{path="client",kind="data"}'), 7);
    t.equal(
      series(text, "tcp_replicator_rtt_seconds_sum").get('{path="client",kind="data"}'),
      (30 + 45 + 80 + 150 + 150 + 900 + 25_000) / 1e6,
    );
    t.equal(buckets.get('{path="replica",replica="r1",kind="data",le="0.0002"}'), 0);
    t.equal(buckets.get('{path="replica",replica="r1",kind="data",le="0.0005"}'), 100);

    replicas = [];
    const after = series(await m.render(), "tcp_replicator_rtt_seconds_bucket");
    t.notOk(
      [...after.keys()].some((k) => k.includes('replica="r1"')),
      "a removed replica's series are gone at the next scrape",
    );
  },
);

t.test("any source shape plugs in: exposition straight from a function", async (t) => {
  const fixed: RttHistogramExposition[] = [
    {
      path: "original",
      bucketsUs: [
        [100, 4],
        [1000, 9],
      ],
      sumUs: 2500,
      count: 10,
    },
  ];
  const text = await new Metrics({ rtt: () => fixed }).render();
  const b = series(text, "tcp_replicator_rtt_seconds_bucket");
  t.same(
    [...b.entries()],
    [
      ['{path="original",le="0.0001"}', 4],
      ['{path="original",le="0.001"}', 9],
      ['{path="original",le="+Inf"}', 10],
    ],
  );
  t.equal(series(text, "tcp_replicator_rtt_seconds_sum").get('{path="original"}'), 0.0025);
});

t.test("engine counters are mirrored per scrape; removed replicas leave no stale series", async (t) => {
  const e = engineStats();
  e.reject("truncated");
  e.reject("truncated");
  e.reject("bad-checksum");
  e.onSegment(straySegment(), 1);
  const m = new Metrics();
  m.update(snapshot(e), control);
  let text = await m.render();
  const drops = series(text, "tcp_replicator_drops_total");
  t.equal(drops.get('{where="parse",reason="truncated"}'), 2);
  t.equal(drops.get('{where="parse",reason="bad-checksum"}'), 1);
  t.equal(drops.get('{where="capture",reason="client"}'), 7, "libpcap's drops");
  t.equal(drops.get('{where="inject",reason="error"}'), 2);
  t.equal(drops.get('{where="unmatched",reason="foreign-flow"}'), 1, "unmatched segments by reason");
  t.equal(series(text, "tcp_replicator_capture_channel_pauses_total").get(""), 3);
  t.equal(series(text, "tcp_replicator_capture_channel_paused_seconds_total").get(""), 1.5);
  t.equal(series(text, "tcp_replicator_replicas_promotable").get(""), 2);
  t.same([...series(text, "tcp_replicator_divergences_total").keys()], ['{replica="r1"}', '{replica="r2"}']);
  t.equal(series(text, "tcp_replicator_event_stream_clients").get(""), 2);
  t.equal(series(text, "tcp_replicator_event_stream_dropped_clients_total").get(""), 1);
  t.equal(series(text, "tcp_replicator_state_store_up").get(""), 1);
  t.match(text, "# TYPE tcp_replicator_packets_total counter");

  e.removeReplica("r2");
  e.reject("truncated");
  m.update(snapshot(e), { ...control, stateStoreUp: false });
  text = await m.render();
  t.equal(
    series(text, "tcp_replicator_drops_total").get('{where="parse",reason="truncated"}'),
    3,
    "not added twice",
  );
  t.same([...series(text, "tcp_replicator_divergences_total").keys()], ['{replica="r1"}']);
  t.equal(series(text, "tcp_replicator_state_store_up").get(""), 0);
});

t.test("failover stall histogram per kind", async (t) => {
  const m = new Metrics();
  m.observeFailoverStall("automatic-failover", 8.5);
  m.observeFailoverStall("automatic-failover", 30);
  m.observeFailoverStall("switchover", 2);
  const text = await m.render();
  const b = series(text, "tcp_replicator_failover_stall_seconds_bucket");
  t.equal(b.get('{le="0.01",kind="automatic-failover"}'), 1);
  t.equal(b.get('{le="0.05",kind="automatic-failover"}'), 2);
  t.equal(b.get('{le="0.0025",kind="switchover"}'), 1);
  t.equal(
    series(text, "tcp_replicator_failover_stall_seconds_sum").get('{kind="automatic-failover"}'),
    0.0385,
  );
});
