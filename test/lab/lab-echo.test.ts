// lab up through the CLI: the printed JSON, the echo service on every backend and through the VIP,
// the kernel path's SNAT, offloads off, and a lab down that leaves nothing behind.
import t from "tap";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { CLI, cli, exists, inNs, labNamespaces, slotOwners, uniqueLabName } from "../helpers.js";
import { labDown, labDir, readState } from "../../src/lab/lab.js";
import { isAlive } from "../../src/sys/process.js";
import type { PingResult } from "../../src/lab/pingpong.js";

interface Summary {
  name: string;
  namespaces: { client: string; appliance: string; original: string; replicas: string[] };
  addresses: { vip: string; client: string; original: string; replicas: string[]; appliance: string };
  port: number;
}

t.test("lab up/exec/down with the echo service and 2 replicas", async (t) => {
  const name = uniqueLabName("echo");
  t.teardown(() => labDown(name));
  const up = await cli(["lab", "up", "--name", name]);
  t.equal(up.code, 0, `lab up succeeded: ${up.stderr}`);
  const lines = up.stdout.trim().split("\n");
  t.equal(lines.length, 1, "exactly one line on stdout");
  const s = JSON.parse(lines[0]!) as Summary;
  t.equal(s.name, name);
  t.equal(s.port, 7000, "echo listens on 7000");
  t.equal(s.namespaces.replicas.length, 2, "2 replicas by default");
  t.equal(s.addresses.replicas.length, 2);
  t.same(
    (await labNamespaces(name)).sort(),
    [
      s.namespaces.appliance,
      s.namespaces.client,
      `tr-${name}-lan`,
      s.namespaces.original,
      ...s.namespaces.replicas,
    ].sort(),
  );

  // Through the VIP: echo bytes verified round by round by the ping tool itself.
  const ping = await cli([
    "lab",
    "exec",
    "--name",
    name,
    "client",
    "--",
    process.execPath,
    CLI,
    "ping",
    "--host",
    s.addresses.vip,
    "--port",
    "7000",
    "--count",
    "200",
    "--size",
    "1000",
  ]);
  t.equal(ping.code, 0, `ping through the VIP: ${ping.stderr}`);
  const p = JSON.parse(ping.stdout) as PingResult;
  t.equal(p.rttUs.count, 200);
  t.equal(p.bytesEchoed, 200_000);

  // Directly to every backend (routed by the appliance, no NAT).
  for (const addr of [s.addresses.original, ...s.addresses.replicas]) {
    const r = await inNs(s.namespaces.client, [
      process.execPath,
      CLI,
      "ping",
      "--host",
      addr,
      "--port",
      "7000",
      "--count",
      "20",
    ]);
    t.equal(r.code, 0, `echo on ${addr} reachable: ${r.stderr}`);
  }

  // The original sees the appliance's backend address as its peer (zero-config SNAT).
  const holder = inNs(s.namespaces.client, [
    process.execPath,
    CLI,
    "ping",
    "--host",
    s.addresses.vip,
    "--port",
    "7000",
    "--count",
    "30",
    "--interval-ms",
    "50",
  ]);
  let peers = "";
  for (let i = 0; i < 40 && !peers.includes(":7000"); i++) {
    await new Promise((r) => setTimeout(r, 25));
    peers = (await inNs(s.namespaces.original, ["ss", "-Htn", "state", "established"])).stdout;
  }
  t.match(
    peers,
    new RegExp(
      `${s.addresses.original.replace(/\./g, "\\.")}:7000\\s+${s.addresses.appliance.replace(/\./g, "\\.")}:\\d+`,
    ),
    "original's peer is the appliance",
  );
  t.notMatch(peers, s.addresses.client, "original never sees the client's address");
  t.equal((await holder).code, 0);

  // Offloads are off on the appliance's links.
  for (const dev of ["cli0", "be0"]) {
    const k = (await inNs(s.namespaces.appliance, ["ethtool", "-k", dev])).stdout;
    t.match(k, /generic-receive-offload: off/, `${dev} GRO off`);
    t.match(k, /tcp-segmentation-offload: off/, `${dev} TSO off`);
    t.match(k, /generic-segmentation-offload: off/, `${dev} GSO off`);
    t.match(k, /tx-checksumming: off/, `${dev} transmit checksum offload off`);
  }
  const nft = await inNs(s.namespaces.appliance, ["nft", "list", "table", "ip", "tcp_replicator"]);
  t.equal(nft.code, 0, "the project's own nft table exists in the appliance");

  // exec passes the command's exit code through.
  t.equal((await cli(["lab", "exec", "--name", name, "original", "--", "sh", "-c", "exit 7"])).code, 7);

  const state = await readState(name);
  const pids = Object.values(state!.services).map((x) => x.pid);
  t.equal(pids.length, 3);
  t.ok(pids.every(isAlive), "services running");

  const down = await cli(["lab", "down", "--name", name]);
  t.equal(down.code, 0, down.stderr);
  t.same(await labNamespaces(name), [], "no namespaces left");
  t.ok(
    pids.every((p) => !isAlive(p)),
    "no service processes left",
  );
  t.notOk(await exists(labDir(name)), "no state files left");
  t.notOk((await slotOwners()).includes(name), "slot released");
  const labs = await readdir(join(labDir(name), "..")).catch(() => [] as string[]);
  t.notOk(labs.includes(name));
  const again = await cli(["lab", "down", "--name", name]);
  t.equal(again.code, 0, "lab down is idempotent");
});
