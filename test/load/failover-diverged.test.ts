// A connection whose replica stream diverged is never spliced: when the original dies, the
// appliance resets it (the client sees a reset or an end of stream, never a reply from a replica
// that answered differently), while a faithful connection next to it continues on the promoted
// replica without a gap. A killed process closes A itself (its FIN reaches the client: EOF is
// fine); an unplugged original says nothing, so the appliance must reset A.
import t from "tap";
import { fileURLToPath } from "node:url";
import { inNs, proxyLogEvents, sleep, withLab } from "../helpers.js";
import { labKill } from "../../src/lab/lab.js";
import { queryStats } from "../../src/proxy/stats-client.js";

const PAIR = fileURLToPath(new URL("../fixtures/diverged-pair.js", import.meta.url));

interface Ending {
  how: "reset" | "eof" | "error" | "open" | "stuck";
  detail: string;
  at: number;
}
interface Pair {
  a: { replies: number; wrong: string[]; lastReplyAt: number; ending: Ending };
  b: { n: number; last: number; lastReplyAt: number; errors: string[]; ending: Ending };
}

for (const mode of ["process", "link"] as const) {
  t.test(`a connection whose replica stream diverged is reset, never spliced (${mode})`, async (t) => {
    const state = await withLab(t, `fdiv${mode.slice(0, 3)}`, 1, "redis", true);
    const topo = state.topology;
    const replica = topo.replicas[0]!;
    const key = "diverging-key";
    const onOriginal = "value-on-the-original";
    const onReplica = "value-on-the-replica!"; // same length: the replies differ in content only
    // Written on each backend directly, bypassing the appliance.
    const set = async (ns: string, value: string) =>
      (await inNs(ns, ["redis-cli", "SET", key, value])).stdout.trim();
    t.equal(await set(topo.original.namespace, onOriginal), "OK", "key set on the original");
    t.equal(await set(replica.namespace, onReplica), "OK", "key set differently on the replica");
    t.equal(
      (await queryStats(state.proxy!.statsSocket)).engine.replicas[0]!.diverged,
      0,
      "nothing diverged yet",
    );

    const pair = inNs(
      topo.client.namespace,
      [process.execPath, PAIR, topo.appliance.vip, "6", key, onOriginal, "pair-b-counter"],
      60_000,
    );
    await sleep(1500);
    const before = await queryStats(state.proxy!.statsSocket);
    t.ok(
      before.engine.replicas[0]!.diverged >= 1,
      `A's shadow diverged (${before.engine.replicas[0]!.diverged})`,
    );
    t.equal(before.engine.failures.promotions, 0, "a divergence alone is no failover");
    t.equal(before.engine.connections.active, 2, "both connections are replicated");

    const fault = await labKill(topo.name, "original", mode);
    const r = await pair;
    const stats = await queryStats(state.proxy!.statsSocket);
    t.comment(`failures: ${JSON.stringify(stats.engine.failures)}`);
    t.equal(r.code, 0, `fixture exited 0: ${r.stderr.trim()}`);
    const { a, b } = JSON.parse(r.stdout) as Pair;
    t.comment(`A: ${JSON.stringify(a)}`);
    t.comment(`B: ${JSON.stringify({ ...b, errors: b.errors.slice(0, 10) })}`);

    t.ok(a.replies > 10, `A read the key ${a.replies} times`);
    t.same(a.wrong, [], "every reply A received was the original's value");
    if (mode === "process") {
      t.ok(
        a.ending.how === "reset" || a.ending.how === "eof",
        `A was reset or closed (${a.ending.how}: ${a.ending.detail})`,
      );
    } else {
      t.equal(a.ending.how, "reset", `the appliance reset A (${a.ending.how}: ${a.ending.detail})`);
    }
    // Compared with when the injection began: `ip link set down` can return after the failover
    // already reset A (CI run of session 7: A reset 2 ms before the command had returned).
    t.ok(a.ending.at >= fault.startedAt, "A ended only after the original died");

    t.same(b.errors, [], `B: ${b.n} INCRs, no error, no gap`);
    t.ok(b.lastReplyAt > fault.injectedAt + 1000, "B kept going after the failover");
    const got = (await inNs(replica.namespace, ["redis-cli", "GET", "pair-b-counter"])).stdout.trim();
    t.equal(Number(got), b.last, "B's counter on the new original is the last value B saw");

    t.equal(stats.engine.failures.promotions, 1, "one promotion");
    t.equal(stats.engine.failures.original, replica.address, "the replica is the new original");
    const promoted = await proxyLogEvents<{ spliced: number; reset: number; dropped: number }>(
      state.proxy!.log,
      "promoted",
    );
    t.comment(`promoted: ${JSON.stringify(promoted)}`);
    t.equal(promoted.length, 1, "one promotion logged");
    t.equal(promoted[0]?.spliced, 1, "exactly one connection (B) spliced: A was not");
    if (mode === "link") t.equal(promoted[0]?.reset, 1, "A was reset by the promotion");
  });
}
