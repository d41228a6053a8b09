// Automatic failover for each way the original can fail (lab kill process|freeze|link|host):
// 50 connections each INCRementing its own counter through the VIP see a gap-free sequence and no
// error; afterwards the new original and the remaining replica hold the same dataset.
import t from "tap";
import type { IncrLoopResult } from "../fixtures/incr-loop.js";
import { fileURLToPath } from "node:url";
import { inNs, proxyLogEvents, sleep, waitReplicationIdle, withLab } from "../helpers.js";
import { labKill } from "../../src/lab/lab.js";
import { queryStats } from "../../src/proxy/stats-client.js";

const INCR = fileURLToPath(new URL("../fixtures/incr-loop.js", import.meta.url));

for (const mode of ["process", "freeze", "link", "host"] as const) {
  t.test(`original fails (${mode}) under 50 INCR loops`, async (t) => {
    const state = await withLab(t, `fk${mode.slice(0, 3)}`, 2, "redis", true);
    const topo = state.topology;
    const loops = inNs(
      topo.client.namespace,
      [process.execPath, INCR, topo.appliance.vip, "50", "4"],
      60_000,
    );
    await sleep(1500);
    await labKill(topo.name, "original", mode);
    const r = await loops;
    t.equal(r.code, 0, r.stderr);
    const results = JSON.parse(r.stdout) as IncrLoopResult[];
    for (const l of results) t.same(l.errors, [], `${l.key}: ${l.n} INCRs, no error, no gap`);
    const stats = await queryStats(state.proxy!.statsSocket);
    if (results.some((l) => l.errors.length > 0)) {
      // What the next reader of a red run needs: how the promotion went and what the capture lost.
      const promoted = await proxyLogEvents(state.proxy!.log, "promoted");
      t.comment(JSON.stringify({ promoted, captureGaps: stats.engine.captureGaps, capture: stats.capture }));
    }
    t.equal(stats.engine.failures.promotions, 1, "one promotion");
    t.not(
      stats.engine.failures.original,
      topo.original.address,
      `the new original is ${stats.engine.failures.original}`,
    );
    await waitReplicationIdle(state.proxy!.statsSocket, 60_000);
    const remaining = topo.replicas.filter((x) => x.address !== stats.engine.failures.original);
    const promoted = topo.replicas.find((x) => x.address === stats.engine.failures.original)!;
    const digest = async (ns: string) => (await inNs(ns, ["redis-cli", "DEBUG", "DIGEST"])).stdout.trim();
    const want = await digest(promoted.namespace);
    for (const x of remaining) t.equal(await digest(x.namespace), want, `${x.role} matches the new original`);
  });
}
