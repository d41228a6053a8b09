// Several labs coexist: distinct namespaces and subnets, each working, one going down leaves the
// other intact.
import t from "tap";
import { CLI, inNs, labNamespaces, uniqueLabName } from "../helpers.js";
import { labDown, labUp } from "../../src/lab/lab.js";

t.test("two labs at once", async (t) => {
  const a = uniqueLabName("para");
  const b = uniqueLabName("parb");
  t.teardown(async () => {
    await labDown(a);
    await labDown(b);
  });
  const [la, lb] = await Promise.all([
    labUp({ name: a, replicas: 1, service: "echo" }),
    labUp({ name: b, replicas: 2, service: "echo" }),
  ]);
  t.not(la.topology.slot, lb.topology.slot, "different slots");
  t.not(la.topology.clientSubnet, lb.topology.clientSubnet);
  t.not(la.topology.backendSubnet, lb.topology.backendSubnet);
  const ping = (lab: typeof la) =>
    inNs(lab.topology.client.namespace, [
      process.execPath,
      CLI,
      "ping",
      "--host",
      lab.topology.appliance.vip,
      "--port",
      "7000",
      "--count",
      "50",
    ]);
  const [pa, pb] = await Promise.all([ping(la), ping(lb)]);
  t.equal(pa.code, 0, pa.stderr);
  t.equal(pb.code, 0, pb.stderr);

  await labDown(a);
  t.same(await labNamespaces(a), []);
  t.equal((await labNamespaces(b)).length, 6, "lab b keeps its 6 namespaces");
  t.equal((await ping(lb)).code, 0, "lab b still works after lab a is gone");
});
