// Two failovers in a row: the original dies under 10 INCR loops, a replica takes over; 10 new
// connections (opened after the first failover) run on the new original, which dies too, and a
// second replica takes over. Every loop sees a gap-free sequence and no error; afterwards the
// final original holds every counter's last value and matches the last remaining replica.
//
// Three replicas: after two promotions one replica is left to compare the final original with.
import t from "tap";
import type { IncrLoopResult } from "../fixtures/incr-loop.js";
import { fileURLToPath } from "node:url";
import { inNs, proxyLogEvents, sleep, waitReplicationIdle, withLab } from "../helpers.js";
import { labKill } from "../../src/lab/lab.js";
import { queryStats } from "../../src/proxy/stats-client.js";
import type { BackendHost } from "../../src/lab/topology.js";

const INCR = fileURLToPath(new URL("../fixtures/incr-loop.js", import.meta.url));

t.test("two failovers in a row", async (t) => {
  const state = await withLab(t, "ftwice", 3, "redis", true);
  const topo = state.topology;
  const stats = () => queryStats(state.proxy!.statsSocket);
  const backendAt = (address: string): BackendHost | undefined =>
    topo.replicas.find((x) => x.address === address);

  const round = async (prefix: string, victim: string): Promise<IncrLoopResult[]> => {
    const loops = inNs(
      topo.client.namespace,
      [process.execPath, INCR, topo.appliance.vip, "10", "4", prefix],
      60_000,
    );
    await sleep(1500);
    await labKill(topo.name, victim, "process");
    const r = await loops;
    t.equal(r.code, 0, `${prefix}: loops exited 0 ${r.stderr.trim()}`);
    const results = JSON.parse(r.stdout) as IncrLoopResult[];
    t.equal(results.length, 10, `${prefix}: 10 loops reported`);
    for (const l of results) t.same(l.errors, [], `${l.key}: ${l.n} INCRs, no error, no gap`);
    return results;
  };

  // Phase 1: the lab's original dies.
  const phase1 = await round("p1", "original");
  const s1 = await stats();
  t.comment(`after the first failover: ${JSON.stringify(s1.engine.failures)}`);
  t.equal(s1.engine.failures.promotions, 1, "first failover: one promotion");
  const first = backendAt(s1.engine.failures.original);
  if (!first) {
    t.fail(`the new original ${s1.engine.failures.original} is not a lab replica`);
    return;
  }
  t.pass(`${first.role} is the original now`);

  // Phase 2: new connections, then the new original dies.
  const phase2 = await round("p2", first.role);
  const s2 = await stats();
  t.comment(`after the second failover: ${JSON.stringify(s2.engine.failures)}`);
  t.equal(s2.engine.failures.promotions, 2, "second failover: two promotions");
  const second = backendAt(s2.engine.failures.original);
  if (!second || second.role === first.role) {
    t.fail(`the final original ${s2.engine.failures.original} is not a live lab replica`);
    return;
  }
  t.pass(`${second.role} is the original now`);

  const promoted = await proxyLogEvents<{ replica: string; spliced: number; reset: number }>(
    state.proxy!.log,
    "promoted",
  );
  t.comment(`promoted: ${JSON.stringify(promoted)}`);
  t.same(
    promoted.map((p) => ({ replica: p.replica, spliced: p.spliced, reset: p.reset })),
    [
      { replica: first.role, spliced: 10, reset: 0 },
      { replica: second.role, spliced: 10, reset: 0 },
    ],
    "each failover spliced its 10 connections and reset none",
  );

  await waitReplicationIdle(state.proxy!.statsSocket, 60_000);
  const last = topo.replicas.find((x) => x !== first && x !== second)!;
  const digest = async (ns: string) => (await inNs(ns, ["redis-cli", "DEBUG", "DIGEST"])).stdout.trim();
  const want = await digest(second.namespace);
  t.match(want, /^[0-9a-f]{40}$/, "the final original answers DEBUG DIGEST");
  t.equal(await digest(last.namespace), want, `${last.role} matches the final original ${second.role}`);
  for (const l of [...phase1, ...phase2]) {
    const v = (await inNs(second.namespace, ["redis-cli", "GET", l.key])).stdout.trim();
    t.equal(Number(v), l.last, `${l.key} on the final original is the loop's last value`);
  }
});
