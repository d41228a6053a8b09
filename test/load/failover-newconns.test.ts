// Connections opened while the original fails: 4 workers open one new connection after another
// (connect, PING, +PONG, close, 10 ms pause: ~300 connections a second, each replicated to 2
// replicas) through the VIP; the original is killed mid-run. A SYN that
// reached the dying original just before the fence must not hang on a stale conntrack entry
// (link) nor be refused by the dead service (process): every connection gets its +PONG, from the
// old original or the new one.
import t from "tap";
import { fileURLToPath } from "node:url";
import { inNs, sleep, withLab } from "../helpers.js";
import { labKill } from "../../src/lab/lab.js";
import { queryStats } from "../../src/proxy/stats-client.js";

const LOOP = fileURLToPath(new URL("../fixtures/connect-loop.js", import.meta.url));

for (const mode of ["process", "link"] as const) {
  t.test(`new connections across a failover (${mode}) all work`, async (t) => {
    const state = await withLab(t, `fnc${mode.slice(0, 3)}`, 2, "redis", true);
    const topo = state.topology;
    const loop = inNs(
      topo.client.namespace,
      [process.execPath, LOOP, topo.appliance.vip, "6379", "5", "4", "10"],
      60_000,
    );
    await sleep(1500);
    await labKill(topo.name, "original", mode);
    const r = await loop;
    t.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { ok: number; errors: string[]; slowestMs: number };
    t.same(out.errors, [], `${out.ok} connections, slowest ${out.slowestMs} ms, no error`);
    t.ok(out.ok > 100, `${out.ok} connections made`);
    const stats = await queryStats(state.proxy!.statsSocket);
    t.equal(stats.engine.failures.promotions, 1, "one promotion");
    t.comment(`refusals: ${JSON.stringify(stats.engine.failures.refusals)}`);
  });
}
