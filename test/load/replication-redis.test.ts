// Case study 1 of the thesis, with a real Redis: work through the VIP, then the same dataset on
// the original and every replica (DEBUG DIGEST), and nothing lost or dropped on the way.
import t from "tap";
import { readFile } from "node:fs/promises";
import { inNs, waitReplicationIdle, withLab } from "../helpers.js";
import { backends } from "../../src/lab/topology.js";

const EMPTY = "0".repeat(40);

t.test("redis-benchmark through the VIP leaves identical datasets on 2 replicas", async (t) => {
  const state = await withLab(t, "rrep", 2, "redis");
  const topo = state.topology;
  // 4 commands x 25 000 requests = 100 000 requests, 50 connections, 100 000 random keys.
  const bench = await inNs(
    topo.client.namespace,
    [
      "redis-benchmark",
      "-h",
      topo.appliance.vip,
      "-p",
      "6379",
      "-n",
      "25000",
      "-c",
      "50",
      "-r",
      "100000",
      "-t",
      "set,incr,lpush,hset",
      "-q",
    ],
    300_000,
  );
  t.equal(bench.code, 0, bench.stderr);
  t.match(bench.stdout, /HSET: [\d.]+ requests per second/);
  const stats = await waitReplicationIdle(state.proxy!.statsSocket);
  const digests = await Promise.all(
    backends(topo).map((b) => inNs(b.namespace, ["redis-cli", "DEBUG", "DIGEST"])),
  );
  const values = digests.map((d) => d.stdout.trim());
  t.not(values[0], EMPTY, "the original holds data");
  t.match(values[0]!, /^[0-9a-f]{40}$/);
  t.same(values, [values[0], values[0], values[0]], `identical digests: ${values.join(" ")}`);
  const e = stats.engine;
  const log = await readFile(state.proxy!.log, "utf8");
  const warnings = log
    .split("\n")
    .filter((l) => l.includes('"level":40'))
    .slice(0, 5);
  t.equal(
    e.captureGaps,
    0,
    `no capture gaps; capture ${JSON.stringify(stats.capture)}; ${warnings.join(" ")}`,
  );
  t.equal(
    stats.capture.client.kernelDropped + stats.capture.backend.kernelDropped,
    0,
    "no packet dropped by the kernel",
  );
  t.same(e.rejected, {}, "no packet rejected");
  t.ok(e.connections.opened >= 50, `${e.connections.opened} connections replicated`);
  for (const r of e.replicas) {
    t.equal(r.lagging, 0, `${r.id} never lagging`);
    t.equal(r.bytesAcked, e.clientBytes, `${r.id} acknowledged every client byte (${e.clientBytes})`);
    t.equal(r.replyBytes, e.originalBytes, `${r.id} replied as many bytes as the original`);
  }
});
