// Issue 16's hiccup suite, CI-sized (the full run, 30+ trials per pause length, is
// `npm run bench -- detector`): with 2 replicas and 20 INCR loops through the VIP, a healthy
// original's service paused for 10 to 500 ms, the appliance's own process stopped for 100 and
// 300 ms, every CPU busy and a heavy process started: nothing fails over, no loop sees an error,
// the replicas hold the original's dataset. Then a real freeze in the same lab: failed over once
// the hang budget ran out, not before.
import t from "tap";
import {
  checkIncrLoops,
  incrLoops,
  proxyLogEvents,
  redisDigest,
  sleep,
  waitReplicationIdle,
  withLab,
} from "../helpers.js";
import { labHiccup, labKill, type HiccupKind } from "../../src/lab/lab.js";
import { queryStats } from "../../src/proxy/stats-client.js";
import { DEFAULT_HANG_BUDGET_MS } from "../../src/replica/types.js";

const HICCUPS: Array<[HiccupKind, number]> = [
  ["pause", 10],
  ["pause", 30],
  ["pause", 60],
  ["appliance", 100],
  ["pause", 100],
  ["cpu", 800],
  ["pause", 200],
  ["appliance", 300],
  ["heavy", 800],
  ["pause", 500],
];

t.test("hiccups of a healthy original and of the appliance fail nothing over", async (t) => {
  const state = await withLab(t, "hic", 2, "redis", true);
  const topo = state.topology;
  const socket = state.proxy!.statsSocket;
  const loops = incrLoops(topo, 20, 12);
  await sleep(1000);
  // At moments drawn at random (the seed is printed: a red run names its schedule).
  const seed = Date.now() % 100_000;
  let x = seed;
  const rand = () => (x = (x * 48271) % 2147483647) / 2147483647;
  t.comment(`schedule seed ${seed}`);
  for (const [kind, ms] of HICCUPS) {
    const r = await labHiccup(topo.name, kind, ms);
    t.comment(`${kind} ${ms} ms (lasted ${r.lastedMs.toFixed(1)} ms)`);
    await sleep(200 + Math.floor(rand() * 600));
  }
  const results = checkIncrLoops(t, await loops, 20);
  t.ok(
    results.every((l) => l.n > 50),
    `the loops kept going through the hiccups (${Math.min(...results.map((l) => l.n))} INCRs at least)`,
  );
  const stats = await waitReplicationIdle(socket, 60_000);
  const f = stats.engine.failures;
  t.comment(`failures: ${JSON.stringify(f)}`);
  t.equal(f.detected, 0, "no failure of the original detected");
  t.equal(f.promotions, 0, "no failover");
  t.equal(f.replicasFailed, 0, "no replica removed");
  t.same(await proxyLogEvents(state.proxy!.log, "original-failure"), [], "nothing logged as a failure");
  const want = await redisDigest(topo.original.namespace);
  t.match(want, /^[0-9a-f]{40}$/);
  for (const r of topo.replicas)
    t.equal(await redisDigest(r.namespace), want, `${r.role} holds the original's dataset`);

  // A real freeze: the application never resumes. Failed over once the hang budget ran out.
  const more = incrLoops(topo, 4, 6, "after");
  await sleep(1000);
  const fault = await labKill(topo.name, "original", "freeze");
  checkIncrLoops(t, await more, 4, "loops across the freeze");
  const after = await queryStats(socket);
  t.equal(after.engine.failures.promotions, 1, "the frozen original was failed over");
  const [failure] = await proxyLogEvents<{ time: number; confirmedBy: string; reason: string }>(
    state.proxy!.log,
    "original-failure",
  );
  t.match(failure, { confirmedBy: "hang budget" }, "by the hang budget: its kernel kept answering probes");
  const afterMs = failure!.time - fault.injectedAt;
  t.comment(`freeze detected ${afterMs.toFixed(0)} ms after the fault (budget ${DEFAULT_HANG_BUDGET_MS} ms)`);
  t.ok(afterMs >= DEFAULT_HANG_BUDGET_MS - 50, "not before the budget ran out");
});
