// The proxy owns its kernel state: it installs its table and the replication address, and takes
// both away when it stops; a CLI run with a broken config starts nothing; without replicas it
// still runs the data plane (the unreplicated baseline).
import t from "tap";
import { CLI, cli, inNs, sleep, withLab } from "../helpers.js";
import { queryStats } from "../../src/proxy/stats-client.js";
import { isAlive } from "../../src/sys/process.js";

t.test("proxy installs and removes its kernel state", async (t) => {
  const state = await withLab(t, "plife", 1, "echo");
  const ns = state.topology.appliance.namespace;
  const repl = state.topology.appliance.replicationAddress;
  const table = await inNs(ns, ["nft", "list", "table", "ip", "tcp_replicator"]);
  t.match(table.stdout, /original-close-held/, "the original's FIN/RST are held");
  t.match(table.stdout, /replica-replies-to-engine/);
  t.match(table.stdout, /hook prerouting priority mangle/, "the guard runs before DNAT");
  t.match(table.stdout, /ct state new tcp flags != syn \/ fin,syn,rst,ack .*midstream-pickup/);
  t.match(table.stdout, /ct state invalid .*invalid-to-vip/);
  t.match(table.stdout, /meta mark 0x00007472 counter packets \d+ bytes \d+ notrack/);
  t.match(
    (await inNs(ns, ["ip", "-4", "addr", "show", "be0"])).stdout,
    new RegExp(`${repl.replace(/\./g, "\\.")}/32`),
  );
  t.equal((await inNs(ns, ["sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal"])).stdout.trim(), "1");

  process.kill(state.proxy!.pid, "SIGTERM");
  for (let i = 0; i < 100 && isAlive(state.proxy!.pid); i++) await sleep(50);
  t.notOk(isAlive(state.proxy!.pid), "the proxy exited on SIGTERM");
  const after = await inNs(ns, ["nft", "list", "tables"]);
  t.notMatch(after.stdout, /tcp_replicator/, "its table is gone");
  t.notMatch(
    (await inNs(ns, ["ip", "-4", "addr", "show", "be0"])).stdout,
    new RegExp(`${repl.replace(/\./g, "\\.")}/`),
    "the replication address is gone",
  );
});

t.test("a broken config is refused before anything starts", async (t) => {
  const r = await cli(["proxy", "--vip", "10.0.0.1", "--port", "99999"]);
  t.equal(r.code, 2);
  t.match(r.stderr, /port: expected an integer from 1 to 65535|original: expected an IPv4 address/);
  const r2 = await cli(["proxy", "--config", "/nonexistent.json"]);
  t.equal(r2.code, 2);
  t.match(r2.stderr, /cannot read config/);
});

t.test("without replicas the data plane runs: connections are tracked, timed and closed", async (t) => {
  const state = await withLab(t, "pzero", 0, "echo", false, { proxy: true });
  t.ok(state.proxy, "the proxy runs with 0 replicas when asked");
  const topo = state.topology;
  const ping = await inNs(
    topo.client.namespace,
    [
      process.execPath,
      CLI,
      "ping",
      "--host",
      topo.appliance.vip,
      "--port",
      String(topo.port),
      "--count",
      "200",
    ],
    30_000,
  );
  t.equal(ping.code, 0, `ping through the VIP: ${ping.stderr}`);
  let stats = await queryStats(state.proxy!.statsSocket);
  for (let i = 0; i < 40 && stats.engine.connections.closed === 0; i++) {
    await sleep(50); // the last ACK of the close may still be on its way through the capture
    stats = await queryStats(state.proxy!.statsSocket);
  }
  t.ok(stats.engine.packets.client > 200, `client segments captured (${stats.engine.packets.client})`);
  t.equal(stats.engine.connections.closed, 1, "the connection closed through the engine (its FIN released)");
  t.ok(
    stats.engine.rtt.degradation.unreplicated.count > 0,
    "client RTT measured as the unreplicated baseline",
  );
  t.equal(stats.engine.rtt.degradation.replicated.count, 0, "nothing replicated");
  t.ok(stats.engine.rtt.original.handshake.total.count >= 1, "the original's handshake timed");
  // Ping-pong: the client's request and the original's answer time the original's path twice over,
  // by sequence/ACK and by the timestamp the answer echoes; both estimators must roughly agree.
  const o = stats.engine.rtt.original;
  t.ok(o.timestamp.total.count > 0, `timestamp echoes timed the original (${o.timestamp.total.count})`);
  t.ok(stats.engine.rtt.client.timestamp.total.count > 0, "and the client");
  const ratio = o.timestamp.total.p50Us! / o.data.total.p50Us!;
  t.ok(
    ratio > 0.2 && ratio < 5,
    `the estimators agree: p50 ${o.timestamp.total.p50Us} vs ${o.data.total.p50Us} µs`,
  );
});
