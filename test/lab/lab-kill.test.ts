// lab kill in every mode does what it says, to the target only.
import t from "tap";
import { CLI, cli, inNs, withLab } from "../helpers.js";
import { isAlive, pidsInNamespace, processState, processTree } from "../../src/sys/process.js";
import { readState } from "../../src/lab/lab.js";

t.test("process, freeze, link and host failures", async (t) => {
  const state = await withLab(t, "kill", 5, "echo");
  const topo = state.topology;
  const name = topo.name;
  const echo = (addr: string) =>
    inNs(topo.client.namespace, [
      process.execPath,
      CLI,
      "ping",
      "--host",
      addr,
      "--port",
      "7000",
      "--count",
      "3",
      "--timeout-ms",
      "700",
    ]);
  const [r1, r2, r3, r4, r5] = topo.replicas;

  // process: SIGKILL of the service; the host still answers, with RST.
  const r1Pid = state.services["replica1"]!.pid;
  const k1 = await cli(["lab", "kill", "--name", name, "replica1", "--mode", "process"]);
  t.equal(k1.code, 0, k1.stderr);
  t.match(JSON.parse(k1.stdout), { target: "replica1", mode: "process", pids: [r1Pid], injectedAt: Number });
  t.notOk(isAlive(r1Pid), "replica1's service is dead");
  t.match((await echo(r1!.address)).stderr, /ECONNREFUSED/, "replica1 refuses connections");
  t.equal(
    (await inNs(topo.appliance.namespace, ["ping", "-c1", "-W1", r1!.address])).code,
    0,
    "replica1 host still up",
  );

  // freeze: SIGSTOP; the kernel still completes handshakes but nothing is echoed.
  const r2Pids = processTree(state.services["replica2"]!.pid);
  t.equal((await cli(["lab", "kill", "--name", name, "replica2", "--mode", "freeze"])).code, 0);
  t.ok(
    r2Pids.every((p) => processState(p) === "T"),
    "replica2's service is stopped",
  );
  t.match((await echo(r2!.address)).stderr, /no echo within 700 ms/, "frozen service answers nothing");

  // link: the backend's only link goes down.
  t.equal((await cli(["lab", "kill", "--name", name, "replica3", "--mode", "link"])).code, 0);
  const link = await inNs(r3!.namespace, ["ip", "-j", "link", "show", "eth0"]);
  t.match(link.stdout, /"operstate":"DOWN"/);
  t.not(
    (await inNs(topo.appliance.namespace, ["ping", "-c1", "-W0.3", r3!.address])).code,
    0,
    "replica3 unreachable",
  );
  t.ok(isAlive(state.services["replica3"]!.pid), "replica3's process still runs");

  // host: every process killed and the link deleted.
  t.equal((await cli(["lab", "kill", "--name", name, "replica4", "--mode", "host"])).code, 0);
  t.same(pidsInNamespace(r4!.namespace), [], "no process left on replica4");
  const links = await inNs(r4!.namespace, ["ip", "-j", "link", "show"]);
  t.same(
    (JSON.parse(links.stdout) as Array<{ ifname: string }>).map((l) => l.ifname),
    ["lo"],
    "only lo left",
  );
  const lanPorts = await inNs(topo.lan.namespace, ["ip", "-j", "link", "show"]);
  t.notMatch(lanPorts.stdout, /p-replica4/, "the LAN lost replica4's port");

  // The untouched replica and the path through the VIP are unaffected.
  t.equal((await echo(r5!.address)).code, 0, "replica5 still serves");
  t.equal((await echo(topo.appliance.vip)).code, 0, "VIP still serves");

  // The original's process: the VIP now refuses.
  t.equal((await cli(["lab", "kill", "--name", name, "original", "--mode", "process"])).code, 0);
  t.match(
    (await echo(topo.appliance.vip)).stderr,
    /ECONNREFUSED/,
    "VIP refuses once the original's service is dead",
  );

  const recorded = (await readState(name))!.faults.map((f) => `${f.target}:${f.mode}`);
  t.same(recorded, [
    "replica1:process",
    "replica2:freeze",
    "replica3:link",
    "replica4:host",
    "original:process",
  ]);

  // Killing a dead service again is a clear error that changes nothing.
  const again = await cli(["lab", "kill", "--name", name, "replica1", "--mode", "process"]);
  t.equal(again.code, 1);
  t.match(again.stderr, /not running/);
  t.equal((await readState(name))!.faults.length, 5);
});
