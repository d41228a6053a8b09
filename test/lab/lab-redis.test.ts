// The redis service: a real redis-server on every backend, reachable through the VIP and directly,
// with DEBUG DIGEST available inside each backend as the lab's consistency check.
import t from "tap";
import { inNs, withLab } from "../helpers.js";
import { backends } from "../../src/lab/topology.js";

const EMPTY_DIGEST = "0".repeat(40);

t.test("redis through the VIP and on every backend", async (t) => {
  // No replicas: this is about the service itself; replication has its own tests (test/load).
  const { topology: topo } = await withLab(t, "redis", 1, "redis");
  const vip = topo.appliance.vip;
  const cliArgs = (host: string, ...cmd: string[]) => ["redis-cli", "-h", host, "-p", "6379", ...cmd];

  const set = await inNs(topo.client.namespace, cliArgs(vip, "SET", "greeting", "hello"));
  t.equal(set.stdout.trim(), "OK", `SET through the VIP: ${set.stderr}`);
  const get = await inNs(topo.client.namespace, cliArgs(vip, "GET", "greeting"));
  t.equal(get.stdout.trim(), "hello");

  // Replicated: the replica holds the key too (once the engine delivered the SET).
  const digests = new Map<string, string>();
  for (const b of backends(topo)) {
    const d = await inNs(b.namespace, ["redis-cli", "DEBUG", "DIGEST"]);
    t.equal(d.code, 0, `DEBUG DIGEST on ${b.role}: ${d.stderr}`);
    t.match(d.stdout.trim(), /^[0-9a-f]{40}$/);
    digests.set(b.role, d.stdout.trim());
    const ping = await inNs(topo.client.namespace, cliArgs(b.address, "PING"));
    t.equal(ping.stdout.trim(), "PONG", `${b.role} reachable directly`);
  }
  t.not(digests.get("original"), EMPTY_DIGEST, "original holds the key");
  const again = await inNs(topo.replicas[0]!.namespace, ["redis-cli", "GET", "greeting"]);
  t.equal(again.stdout.trim(), "hello", "the replica received the SET through the engine");

  // No persistence: the service has no dump file to diverge on.
  const cfg = await inNs(topo.original.namespace, ["redis-cli", "CONFIG", "GET", "save"]);
  t.match(cfg.stdout, /save\n\n?$/);
  // DEBUG is refused from outside the backend (enable-debug-command local).
  const remote = await inNs(topo.client.namespace, cliArgs(topo.original.address, "DEBUG", "DIGEST"));
  t.match(remote.stdout + remote.stderr, /DEBUG command not allowed/);
});
