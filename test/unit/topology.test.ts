import t from "tap";
import {
  LabUsageError,
  MAX_SLOTS,
  allNamespaces,
  backendForTarget,
  buildTopology,
  isLabNamespace,
  labSummary,
  namespaceForRole,
  validateLabName,
  validateReplicaCount,
  validateService,
  validateWanOptions,
  WAN_DEFAULTS,
} from "../../src/lab/topology.js";
import { delayLineArgv, wanProbeTuning } from "../../src/lab/lab.js";

t.test("topology of a lab with 3 replicas", async (t) => {
  const topo = buildTopology("demo", 3, 3, "redis");
  t.equal(topo.port, 6379);
  t.equal(topo.clientSubnet, "10.100.6.0/24");
  t.equal(topo.backendSubnet, "10.100.7.0/24");
  t.equal(topo.appliance.vip, "10.100.6.100");
  t.equal(topo.original.address, "10.100.7.10");
  t.same(
    topo.replicas.map((r) => r.address),
    ["10.100.7.11", "10.100.7.12", "10.100.7.13"],
  );
  t.same(
    topo.replicas.map((r) => r.namespace),
    ["tr-demo-replica1", "tr-demo-replica2", "tr-demo-replica3"],
  );
  t.equal(allNamespaces(topo).length, 7, "client, appliance, lan, original, 3 replicas");
  const s = labSummary(topo);
  t.same(Object.keys(s.namespaces).sort(), ["appliance", "client", "lan", "original", "replicas"]);
  t.equal(s.addresses.vip, topo.appliance.vip);
});

t.test("different slots never overlap", async (t) => {
  const seen = new Set<string>();
  for (let slot = 0; slot < MAX_SLOTS; slot++) {
    const topo = buildTopology("x", slot, 5, "echo");
    for (const subnet of [topo.clientSubnet, topo.backendSubnet]) {
      t.notOk(seen.has(subnet), `subnet ${subnet} used once`);
      seen.add(subnet);
    }
  }
  t.throws(() => buildTopology("x", MAX_SLOTS, 1, "echo"), RangeError);
  t.throws(() => buildTopology("x", -1, 1, "echo"), RangeError);
});

t.test("validation of user input", async (t) => {
  for (const bad of ["", "Upper", "-lead", "a_b", "x".repeat(32), "a b", "a/b"]) {
    t.throws(() => validateLabName(bad), LabUsageError, `name ${JSON.stringify(bad)} rejected`);
  }
  t.equal(validateLabName("lab-1"), "lab-1");
  for (const bad of ["6", "-1", "abc", "1.5", "", " 2"]) {
    t.throws(() => validateReplicaCount(bad), LabUsageError, `replicas ${JSON.stringify(bad)} rejected`);
  }
  t.equal(validateReplicaCount("0"), 0);
  t.equal(validateReplicaCount("5"), 5);
  t.throws(() => validateService("ftp"), /echo, redis, http/);
  t.equal(validateService("http"), "http");
});

t.test("roles and targets", async (t) => {
  const topo = buildTopology("r", 0, 2, "echo");
  t.equal(namespaceForRole(topo, "client"), "tr-r-client");
  t.equal(namespaceForRole(topo, "replica2"), "tr-r-replica2");
  t.throws(() => namespaceForRole(topo, "replica3"), /unknown role "replica3".*replica2/);
  t.equal(backendForTarget(topo, "original").address, "10.100.1.10");
  t.throws(() => backendForTarget(topo, "client"), /unknown target "client"/);
});

t.test("namespace ownership is exact", async (t) => {
  t.ok(isLabNamespace("a", "tr-a-client"));
  t.ok(isLabNamespace("a", "tr-a-replica12"));
  t.notOk(isLabNamespace("a", "tr-a-b-client"), "lab a does not own lab a-b's namespaces");
  t.notOk(isLabNamespace("a", "tr-ab-client"));
  t.notOk(isLabNamespace("a", "tr-a-replica0"));
  t.notOk(isLabNamespace("a", "other"));
});

t.test("WAN replicas: the last ones are remote, everything else keeps its address", async (t) => {
  const lanOnly = buildTopology("w", 2, 3, "echo");
  const topo = buildTopology("w", 2, 3, "echo", { replicas: 2, delayMs: 11.5, lossPct: 1 });
  t.same(topo.original, lanOnly.original, "the original is unchanged");
  t.same(topo.replicas[0], lanOnly.replicas[0], "the first replica stays on the LAN");
  t.same(topo.appliance, lanOnly.appliance);
  t.same(topo.client, lanOnly.client);
  t.same(topo.lan, lanOnly.lan);
  t.same(
    topo.replicas.map((r) => [r.role, r.site, r.address, r.gateway, r.namespace]),
    [
      ["replica1", "lan", "10.100.5.11", "10.100.5.1", "tr-w-replica1"],
      ["replica2", "wan", "10.101.2.12", "10.101.2.1", "tr-w-replica2"],
      ["replica3", "wan", "10.101.2.13", "10.101.2.1", "tr-w-replica3"],
    ],
  );
  t.match(topo.wan, {
    namespace: "tr-w-wan",
    lanAddress: "10.100.5.254",
    farAddress: "10.101.2.1",
    remoteSubnet: "10.101.2.0/24",
    params: { ...WAN_DEFAULTS, delayMs: 11.5, lossPct: 1 },
  });
  t.not(topo.wan!.toRemote.table, topo.wan!.fromRemote.table, "one policy table per direction");
  t.not(topo.wan!.toRemote.tun, topo.wan!.fromRemote.tun, "one TUN lane per direction");
  t.equal(allNamespaces(topo).length, 8, "client, appliance, lan, wan, original, 3 replicas");
  t.ok(allNamespaces(topo).includes("tr-w-wan"));
  t.equal(namespaceForRole(topo, "wan"), "tr-w-wan");
  t.ok(isLabNamespace("w", "tr-w-wan"), "down finds the router without a state file");
  const s = labSummary(topo);
  t.equal(s.namespaces.wan, "tr-w-wan");
  t.match(s.wan, { replicas: ["replica2", "replica3"], router: "10.100.5.254", delayMs: 11.5 });
  t.same(s.addresses.replicas, ["10.100.5.11", "10.101.2.12", "10.101.2.13"]);
});

t.test("without WAN replicas nothing WAN appears", async (t) => {
  for (const topo of [buildTopology("n", 0, 2, "echo"), buildTopology("n", 0, 2, "echo", { replicas: 0 })]) {
    t.notOk("wan" in topo, "no router");
    t.ok(
      topo.replicas.every((r) => r.site === "lan"),
      "every replica local",
    );
    const s = labSummary(topo);
    t.notOk("wan" in s);
    t.notOk("wan" in s.namespaces);
    t.throws(() => namespaceForRole(topo, "wan"), /unknown role "wan"/);
  }
  t.notOk(isLabNamespace("n", "tr-n-wan2"));
});

t.test("WAN options are validated", async (t) => {
  t.equal(validateWanOptions(undefined, 2), undefined);
  t.equal(validateWanOptions({ replicas: 0, delayMs: 5 }, 2), undefined, "0 remote replicas: no WAN");
  t.same(validateWanOptions({ replicas: "2", delayMs: "11.5", jitterMs: "0.5" }, 2), {
    replicas: 2,
    params: { ...WAN_DEFAULTS, delayMs: 11.5, jitterMs: 0.5 },
  });
  const bad: Array<[Parameters<typeof validateWanOptions>[0], RegExp]> = [
    [{ replicas: 3 }, /WAN replica count 3: must be an integer from 0 to 2/],
    [{ replicas: 1.5 }, /WAN replica count/],
    [{ replicas: 1, delayMs: -1 }, /WAN delay \(ms\) -1/],
    [{ replicas: 1, delayMs: 10_001 }, /WAN delay/],
    [{ replicas: 1, delayMs: "abc" }, /WAN delay \(ms\) "abc"/],
    [{ replicas: 1, delayMs: "" }, /WAN delay/],
    [{ replicas: 1, jitterMs: Number.NaN }, /WAN jitter/],
    [{ replicas: 1, lossPct: 100 }, /WAN loss \(%\) 100: must be a number from 0 below 100/],
    [{ replicas: 1, jitterDistribution: "pareto" }, /uniform, normal/],
    [{ replicas: 1, queueLimitPackets: 0 }, /WAN queue limit \(packets\)/],
    [{ replicas: 1, queueLimitBytes: 10.5 }, /WAN queue limit \(bytes\)/],
  ];
  for (const [opts, why] of bad) t.throws(() => validateWanOptions(opts, 2), why, JSON.stringify(opts));
  t.throws(() => buildTopology("x", 0, 1, "echo", { replicas: 2 }), LabUsageError);
});

t.test("the WAN's delay line and the appliance's probe deadline follow the parameters", async (t) => {
  const topo = buildTopology("d", 1, 1, "echo", { replicas: 1, delayMs: 11, jitterMs: 1, lossPct: 2 });
  const argv = delayLineArgv(topo.wan!, "/x/stats.json");
  t.match(argv[0], /native\/delay-line$/);
  const opt = (name: string) => argv[argv.indexOf(name) + 1];
  t.equal(opt("--delay-ms"), "11");
  t.equal(opt("--jitter-ms"), "1");
  t.equal(opt("--jitter-dist"), "uniform");
  t.equal(opt("--loss-pct"), "2");
  t.equal(opt("--limit-packets"), String(WAN_DEFAULTS.queueLimitPackets));
  t.equal(opt("--stats-file"), "/x/stats.json");
  t.same(
    argv.flatMap((a, i) => (a === "--tun" ? [argv[i + 1]] : [])),
    ["dl-out", "dl-in"],
    "two lanes, one per direction",
  );
  t.same(wanProbeTuning(undefined), {}, "LAN labs keep the appliance's defaults");
  t.same(wanProbeTuning({ ...WAN_DEFAULTS, delayMs: 11 }), { probeTimeoutMs: 32 }, "2 × 11 + 10");
  t.same(
    wanProbeTuning({ ...WAN_DEFAULTS, delayMs: 10, jitterMs: 1, jitterDistribution: "normal" }),
    { probeTimeoutMs: 38 },
    "normal jitter reaches 4 σ",
  );
  t.same(wanProbeTuning({ ...WAN_DEFAULTS, delayMs: 0 }), { probeTimeoutMs: 10 });
  t.same(
    wanProbeTuning({ ...WAN_DEFAULTS, delayMs: 5, lossPct: 20 }),
    { probeTimeoutMs: 3100 },
    "lossy: the kernel's SYN retransmissions fit",
  );
});
