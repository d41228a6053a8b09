// 1 GiB through the VIP over several connections: every replica receives every byte and echoes
// every byte back identically. The client is paced at 10 MB/s, a rate this 2-core lab machine
// replicates to two replicas without falling behind: unpaced, the kernel path carries ~70 MB/s
// while the user-space engine sustains ~10-16 MB/s per replica for echo traffic (every byte goes
// to each replica and comes back); see docs/PROGRESS.md.
import t from "tap";
import { cliIn, waitReplicationIdle, withLab } from "../helpers.js";
import type { BlastResult } from "../../src/lab/blast.js";

t.test("1 GiB echoed through the VIP reaches every replica", async (t) => {
  const state = await withLab(t, "erep", 2, "echo");
  const topo = state.topology;
  const perConnection = 256 * 1024 * 1024;
  const r = await cliIn(
    topo.client.namespace,
    [
      "blast",
      "--host",
      topo.appliance.vip,
      "--port",
      "7000",
      "--connections",
      "4",
      "--bytes",
      String(perConnection),
      "--rate-mbps",
      "10",
    ],
    600_000,
  );
  t.equal(r.code, 0, r.stderr);
  const b = JSON.parse(r.stdout) as BlastResult;
  t.equal(b.totalBytes, 4 * perConnection, "1 GiB echoed back to the client, hashes equal");
  const stats = await waitReplicationIdle(state.proxy!.statsSocket);
  const e = stats.engine;
  t.equal(e.clientBytes, 4 * perConnection, "the engine saw every client byte");
  for (const rep of e.replicas) {
    t.equal(rep.bytesAcked, e.clientBytes, `${rep.id} acknowledged every byte`);
    t.equal(rep.comparedBytes, e.clientBytes, `${rep.id} echoed every byte, identical to the original`);
    t.equal(rep.lagging + rep.diverged, 0, `${rep.id} healthy throughout`);
  }
  // Both passive RTT estimators see every path of real Linux TCP traffic.
  const paths = { client: e.rtt.client, original: e.rtt.original, ...e.rtt.replicas };
  t.same(Object.keys(paths).sort(), ["client", "original", "replica1", "replica2"]);
  for (const [name, p] of Object.entries(paths)) {
    t.ok(p.data.total.count > 0, `${name}: ${p.data.total.count} seq/ACK samples`);
    t.ok(p.timestamp.total.count > 0, `${name}: ${p.timestamp.total.count} timestamp-echo samples`);
  }
});
