// Case study 2: Apache. Concurrent downloads of every file through the VIP; each replica serves
// the same bytes at the same offsets (no divergence), byte counts equal per replica.
import t from "tap";
import { inNs, sleep, waitReplicationIdle, withLab } from "../helpers.js";
import { WWW_FILES, expectedSha256 } from "../../src/lab/www.js";
import { runStatus } from "../../src/sys/command.js";

t.test("concurrent downloads of every file, replicas byte-identical", async (t) => {
  const state = await withLab(t, "hrep", 2, "http");
  const topo = state.topology;
  const script = WWW_FILES.map(
    (f) => `(curl -sf http://${topo.appliance.vip}:8080/${f.name} | sha256sum | sed 's/ .*/ ${f.name}/') &`,
  ).join("\n");
  const r = await inNs(topo.client.namespace, ["sh", "-c", `${script}\nwait`], 300_000);
  t.equal(r.code, 0, r.stderr);
  const got = new Map(
    r.stdout
      .trim()
      .split("\n")
      .map((l) => l.split(" ") as [string, string])
      .map(([hash, name]) => [name, hash]),
  );
  for (const f of WWW_FILES)
    t.equal(got.get(f.name), expectedSha256(f.name), `${f.name} reached the client intact`);

  const stats = await waitReplicationIdle(state.proxy!.statsSocket);
  const e = stats.engine;
  const total = WWW_FILES.reduce((n, f) => n + f.size, 0);
  t.ok(e.originalBytes > total, `the original sent ${e.originalBytes} bytes (bodies: ${total})`);
  for (const r of e.replicas) {
    t.equal(r.diverged, 0, `${r.id}: no divergence`);
    t.equal(r.lagging, 0, `${r.id}: never lagging`);
    t.equal(r.replyBytes, e.originalBytes, `${r.id} sent as many bytes as the original`);
    t.equal(r.comparedBytes, e.originalBytes, `${r.id}: every byte compared`);
  }
  t.equal(e.captureGaps, 0);
  t.equal(e.closeHoldTimeouts, 0, "every close matched");
});

t.test(
  "a replica answering in a later second: its HTTP Date is tolerated and counted, the connection stays faithful",
  async (t) => {
    const state = await withLab(t, "hdate", 1, "http");
    const topo = state.topology;
    const replica = topo.replicas[0]!;
    // Freeze the replica's Apache for over a second while a request is served: its answer carries
    // a later Date than the original's, all other bytes equal.
    // Signalled from the root namespace: a shell inside the replica's would stop itself too.
    const stop = async (sig: string) => {
      const r = await runStatus(["sh", "-c", `kill -${sig} $(ip netns pids ${replica.namespace})`]);
      t.equal(r.code, 0, `SIG${sig} to the replica's processes ${r.stderr}`);
    };
    await stop("STOP");
    const thaw = sleep(1300).then(() => stop("CONT"));
    const r = await inNs(topo.client.namespace, [
      "curl",
      "-sf",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      `http://${topo.appliance.vip}:8080/1K.bin`,
    ]);
    await thaw;
    t.equal(r.stdout, "200", "the client got its answer from the original at once");
    const stats = await waitReplicationIdle(state.proxy!.statsSocket);
    const rep = stats.engine.replicas[0]!;
    t.equal(rep.diverged, 0, "no divergence");
    t.ok(rep.toleratedBytes >= 1, `Date bytes tolerated: ${rep.toleratedBytes}`);
    t.equal(rep.comparedBytes, stats.engine.originalBytes, "every reply byte compared");
  },
);
