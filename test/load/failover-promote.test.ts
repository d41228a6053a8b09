// Promotion on an external signal with live connections: every open connection continues on the
// promoted replica without a gap or an error, the old original is fenced, the remaining replica
// keeps replicating, and new connections reach the new original.
import t from "tap";
import type { IncrLoopResult } from "../fixtures/incr-loop.js";
import { fileURLToPath } from "node:url";
import { CLI, inNs, sleep, waitReplicationIdle, withLab } from "../helpers.js";
import { request } from "../../src/proxy/stats-client.js";

const INCR = fileURLToPath(new URL("../fixtures/incr-loop.js", import.meta.url));

t.test("promote a replica under 20 INCR loops: no gap, no error", async (t) => {
  const state = await withLab(t, "promo", 2, "redis");
  const topo = state.topology;
  const loops = inNs(topo.client.namespace, [process.execPath, INCR, topo.appliance.vip, "20", "4"], 60_000);
  await sleep(1500);
  const report = await request<{ spliced: number; reset: number }>(state.proxy!.statsSocket, {
    cmd: "promote",
    replica: "replica1",
  });
  t.equal(report.spliced, 20, "all 20 connections spliced onto replica1");
  t.equal(report.reset, 0);
  const r = await loops;
  t.equal(r.code, 0, r.stderr);
  const results = JSON.parse(r.stdout) as IncrLoopResult[];
  for (const l of results) {
    t.same(l.errors, [], `${l.key}: no error, no gap (${l.n} INCRs)`);
  }
  const total = results.reduce((n, l) => n + l.n, 0);
  t.ok(total > 1000, `${total} INCRs in 4 s`);

  // A new connection goes to the new original.
  const fresh = await inNs(topo.client.namespace, [
    "redis-cli",
    "-h",
    topo.appliance.vip,
    "INCR",
    "counter:0",
  ]);
  t.equal(Number(fresh.stdout.trim()), results[0]!.last + 1, "a new connection continues the same dataset");
  await waitReplicationIdle(state.proxy!.statsSocket, 60_000);
  const digest = async (ns: string) => (await inNs(ns, ["redis-cli", "DEBUG", "DIGEST"])).stdout.trim();
  const [orig, r1, r2] = await Promise.all([topo.original, ...topo.replicas].map((b) => digest(b.namespace)));
  t.equal(r1, r2, "the remaining replica matches the new original");
  t.not(orig, r1, "the fenced old original stopped receiving");
  const oldCount = Number(
    (await inNs(topo.original.namespace, ["redis-cli", "GET", "counter:0"])).stdout.trim(),
  );
  t.ok(oldCount < results[0]!.last, `old original stopped at ${oldCount} < ${results[0]!.last}`);
  const table = await inNs(topo.appliance.namespace, ["nft", "list", "table", "ip", "tcp_replicator"]);
  t.match(
    table.stdout,
    new RegExp(`dnat to ${topo.replicas[0]!.address.replace(/\./g, "\\.")}:6379`),
    "VIP now points at replica1",
  );
  t.match(table.stdout, /fenced/);
});

t.test("an echo conversation spanning a promotion gets every byte right", async (t) => {
  const state = await withLab(t, "promoe", 1, "echo");
  const topo = state.topology;
  const ping = inNs(
    topo.client.namespace,
    [
      process.execPath,
      CLI,
      "ping",
      "--host",
      topo.appliance.vip,
      "--port",
      "7000",
      "--count",
      "150",
      "--size",
      "2000",
      "--interval-ms",
      "20",
      "--timeout-ms",
      "3000",
    ],
    60_000,
  );
  await sleep(1000);
  await request(state.proxy!.statsSocket, { cmd: "promote", replica: "replica1" });
  const r = await ping;
  t.equal(r.code, 0, `every echo verified across the promotion: ${r.stderr}`);
  t.match(r.stdout, /"count":150/);
});
