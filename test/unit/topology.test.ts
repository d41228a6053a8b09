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
} from "../../src/lab/topology.js";

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
