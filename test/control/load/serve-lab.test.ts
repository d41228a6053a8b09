// End to end: `tcp-replicator serve` in a lab appliance, fronting real redis-servers, its state in
// its own embedded Redis. A replica is added through the API, a switchover through the API runs
// under 20 INCR loops and every connection survives it (no gap, no error), the event stream and
// the metrics tell what happened; after a restart of the appliance the roles, the replica set and
// the history are back and the service continues on the new original.
//
// API answers are JSON read field by field; a wrong shape fails the assertion that reads it.
/* eslint-disable @typescript-eslint/no-unsafe-member-access, @typescript-eslint/no-unsafe-assignment, @typescript-eslint/no-unsafe-call */
import t from "tap";
import { spawn, type ChildProcess } from "node:child_process";
import { open, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { CLI, checkIncrLoops, inNs, incrLoops, sleep, withLab } from "../../helpers.js";
import { pidsInNamespace } from "../../../src/sys/process.js";
import { tempDir, type Json } from "../helpers.js";

const TOKEN = "lab-e2e-token-0123456789";
const API = "http://127.0.0.1:9480";

t.test("serve in a lab: add a replica, switch over under load, restart, state back", async (t) => {
  const state = await withLab(t, "serve", 2, "redis");
  const topo = state.topology;
  const ns = topo.appliance.namespace;
  const [replica1, replica2] = topo.replicas;
  const dir = await tempDir(t, "lab");

  // The lab started its plain proxy; the appliance becomes `serve` instead (same data plane).
  const proxyConfig = JSON.parse(await readFile(state.proxy!.config, "utf8")) as Record<string, unknown>;
  process.kill(state.proxy!.pid, "SIGTERM");
  for (let i = 0; i < 200 && pidsInNamespace(ns).length > 0; i++) await sleep(25);
  t.same(pidsInNamespace(ns), [], "the lab's proxy stopped");
  const config = join(dir, "serve.json");
  await writeFile(
    config,
    JSON.stringify({
      ...proxyConfig,
      replicas: [{ id: replica1!.role, address: replica1!.address }],
      statsSocket: join(dir, "proxy.sock"),
      autoFailover: false,
      api: { port: 9480, token: TOKEN, runtimeDir: join(dir, "run"), dataDir: join(dir, "data") },
    }),
  );
  const logPath = join(dir, "serve.log");

  let serve: ChildProcess | undefined;
  const start = async () => {
    const log = await open(logPath, "a");
    const child = spawn("ip", ["netns", "exec", ns, process.execPath, CLI, "serve", "--config", config], {
      stdio: ["ignore", log.fd, log.fd],
    });
    await log.close();
    serve = child;
    for (let i = 0; i < 300; i++) {
      if (child.exitCode !== null) break;
      if ((await api("GET", "/v1/status")).status === 200) return child;
      await sleep(50);
    }
    throw new Error(`serve did not come up: ${(await readFile(logPath, "utf8")).slice(-3000)}`);
  };
  const stop = async () => {
    const child = serve!;
    const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
    child.kill("SIGTERM");
    return exited;
  };
  t.teardown(async () => {
    if (serve && serve.exitCode === null) serve.kill("SIGKILL");
    if (!t.passing())
      console.error(`# serve log:\n${(await readFile(logPath, "utf8").catch(() => "")).slice(-5000)}`);
  });
  const api = async (method: string, path: string, body?: unknown) => {
    const argv = [
      "curl",
      "-sS",
      "-m",
      "20",
      "-X",
      method,
      "-w",
      "\n%{http_code}",
      "-H",
      `authorization: Bearer ${TOKEN}`,
    ];
    if (body !== undefined) argv.push("-H", "content-type: application/json", "--data", JSON.stringify(body));
    const r = await inNs(ns, [...argv, API + path]);
    const i = r.stdout.lastIndexOf("\n");
    const text = r.stdout.slice(0, i);
    let parsed: Json = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // metrics: text
    }
    return { status: Number(r.stdout.slice(i + 1)) || 0, body: parsed };
  };

  await start();
  let s = (await api("GET", "/v1/status")).body;
  t.match(s.original, { address: topo.original.address, id: null });
  t.same(
    s.replicas.map((r: { id: string }) => r.id),
    ["replica1"],
  );
  const events = spawn("ip", ["netns", "exec", ns, "curl", "-sN", `${API}/v1/events`]);
  let stream = "";
  events.stdout.setEncoding("utf8").on("data", (d: string) => (stream += d));
  t.teardown(() => events.kill("SIGKILL"));
  for (let i = 0; i < 100 && !stream.includes("event: roles"); i++) await sleep(20);
  t.match(stream, /^event: roles\n/, "the event stream is connected (its greeting came)");

  const added = await api("POST", "/v1/replicas", { id: "replica2", address: replica2!.address });
  t.equal(added.status, 201, JSON.stringify(added.body));

  const loops = incrLoops(topo, 20, 4);
  await sleep(1500);
  const sw = await api("POST", "/v1/switchover", { replica: "replica1", waitMs: 2000 });
  t.equal(sw.status, 200, JSON.stringify(sw.body));
  t.match(sw.body, {
    from: topo.original.address,
    to: replica1!.address,
    spliced: 20,
    reset: 0,
    persisted: true,
  });
  const results = checkIncrLoops(t, await loops, 20, "20 INCR loops across the switchover");
  const total = results.reduce((n, l) => n + l.n, 0);
  t.ok(total > 500, `${total} INCRs in 4 s`);
  const fresh = await inNs(topo.client.namespace, [
    "redis-cli",
    "-h",
    topo.appliance.vip,
    "INCR",
    "counter:0",
  ]);
  t.equal(Number(fresh.stdout.trim()), results[0]!.last + 1, "a new connection continues the same dataset");

  for (
    let i = 0;
    i < 40 &&
    !/event: roles\ndata: \{"type":"roles","original":\{"address":"[\d.]+","id":"replica1"/.test(stream);
    i++
  )
    await sleep(50);
  t.match(stream, /event: replica-added\ndata: \{"type":"replica-added","replica":"replica2"/);
  t.match(stream, /event: promoted\ndata: \{"type":"promoted","replica":"replica1","spliced":20/);
  t.match(stream, /event: roles\ndata: \{"type":"roles","original":\{"address":"[\d.]+","id":"replica1"/);

  const metrics = (await api("GET", "/metrics")).body as string;
  t.match(metrics, /^tcp_replicator_failovers_total 1$/m);
  t.match(metrics, /^tcp_replicator_failover_stall_seconds_count\{kind="switchover"\} 1$/m);
  t.match(
    metrics,
    /^tcp_replicator_rtt_seconds_count\{path="replica",replica="replica2",kind="handshake"\} [1-9]\d*$/m,
  );
  t.match(metrics, /^tcp_replicator_packets_total\{source="client"\} [1-9]\d*$/m);

  t.equal(await stop(), 0, "serve exits 0 on SIGTERM");
  t.same(pidsInNamespace(ns), [], "nothing left running in the appliance (its redis-server stopped too)");
  const tables = await inNs(ns, ["nft", "list", "tables"]);
  t.notMatch(tables.stdout, /tcp_replicator/, "its kernel path is gone");

  await start();
  s = (await api("GET", "/v1/status")).body;
  t.match(s.original, { address: replica1!.address, id: "replica1" }, "the new original, from Redis");
  t.same(
    s.replicas.map((r: { id: string; address: string }) => [r.id, r.address]),
    [["replica2", replica2!.address]],
    "the replica added through the API",
  );
  t.match(s.failovers, [{ kind: "switchover", replica: "replica1", spliced: 20, reset: 0 }], "the history");
  const after = await inNs(topo.client.namespace, [
    "redis-cli",
    "-h",
    topo.appliance.vip,
    "INCR",
    "counter:0",
  ]);
  t.equal(
    Number(after.stdout.trim()),
    results[0]!.last + 2,
    "the VIP leads to the new original after the restart",
  );
  const removed = await api("DELETE", "/v1/replicas/replica2?timeoutMs=5000");
  t.equal(removed.status, 200, JSON.stringify(removed.body));
  t.match(removed.body, { id: "replica2", drained: true, shadowsCut: 0 });
  t.ok(
    removed.body.waitedMs < 1000,
    `nothing to wait for once the connections finished (${removed.body.waitedMs} ms)`,
  );
  t.equal(await stop(), 0);
});
