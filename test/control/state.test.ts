// The state store on a real embedded redis-server: private socket, atomic changes, durable across
// Redis restarts and crashes, supervised (a dead redis-server comes back and queued writes land),
// and nothing left behind.
import t from "tap";
import { mkdir, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { spawn } from "node:child_process";
import { EmbeddedRedis, pingSocket, redisConfig } from "../../src/control/embedded-redis.js";
import { StateStore, type HistoryEntry } from "../../src/control/state.js";
import { isAlive, waitUntilDead } from "../../src/sys/process.js";
import { quietLog, tempDir } from "./helpers.js";

async function redis(t: Parameters<typeof tempDir>[0], dir: string) {
  const r = await EmbeddedRedis.start({
    runtimeDir: join(dir, "run"),
    dataDir: join(dir, "data"),
    log: quietLog,
  });
  t.teardown(() => r.stop());
  return r;
}

async function store(t: Parameters<typeof tempDir>[0], target: string, historyLimit = 100) {
  const s = await StateStore.connect({
    target,
    prefix: "test",
    service: { vip: "10.0.0.100", port: 80 },
    historyLimit,
    log: quietLog,
  });
  t.teardown(() => s.close());
  return s;
}

const entry = (kind: HistoryEntry["kind"], replica: string): HistoryEntry => ({
  at: new Date().toISOString(),
  kind,
  replica,
});
const ORIGINAL = { address: "10.0.1.10", id: null, since: "2026-01-01T00:00:00.000Z" };

t.test("the embedded Redis: a private Unix socket, no TCP port, gone after stop", async (t) => {
  const dir = await tempDir(t, "emb");
  const r = await redis(t, dir);
  const pid = r.pid!;
  t.ok(isAlive(pid));
  const sock = await stat(r.socketPath);
  t.ok(sock.isSocket());
  t.equal((await stat(join(dir, "run"))).mode & 0o777, 0o700, "its directory is root's alone");
  const s = await store(t, r.socketPath);
  t.same(await s.redis.config("GET", "port"), ["port", "0"], "no TCP port at all");
  t.same(await s.redis.config("GET", "appendfsync"), ["appendfsync", "always"]);
  await s.close();
  await r.stop();
  t.notOk(isAlive(pid), "stopped");
  await t.rejects(stat(r.socketPath), "its socket is gone");
  await t.rejects(stat(join(dir, "run", "redis.pid")), "its pid file too");
});

t.test("seeded once; every change is one atomic step of the generation", async (t) => {
  const r = await redis(t, await tempDir(t, "atomic"));
  const s = await store(t, r.socketPath, 3);
  t.equal(await s.load(), undefined, "nothing before the seed");
  t.equal(
    await s.seed(ORIGINAL, [{ id: "r1", address: "10.0.1.11", addedAt: "2026-01-01T00:00:01.000Z" }]),
    true,
  );
  t.equal(
    await s.seed({ ...ORIGINAL, address: "10.0.9.9" }, []),
    false,
    "a second seed (another appliance racing) changes nothing",
  );
  const seeded = (await s.load())!;
  t.match(seeded, { original: ORIGINAL, generation: 1, history: [] });
  t.same(
    seeded.replicas.map((x) => x.id),
    ["r1"],
  );

  await s.addReplica(
    { id: "r2", address: "10.0.1.12", addedAt: "2026-01-01T00:00:02.000Z" },
    entry("replica-added", "r2"),
  );
  t.equal((await s.load())!.generation, 2);
  const promoted = { address: "10.0.1.11", id: "r1", since: new Date().toISOString() };
  await s.promote(promoted, { ...entry("failover", "r1"), from: ORIGINAL.address, to: promoted.address });
  const after = (await s.load())!;
  t.equal(after.generation, 3, "the promotion is one step: original, replica set and history together");
  t.same(after.original, promoted);
  t.same(
    after.replicas.map((x) => x.id),
    ["r2"],
  );
  t.same(
    after.history.map((h) => h.kind),
    ["replica-added", "failover"],
  );

  // A transaction that fails part-way leaves nothing behind: MULTI queues, EXEC runs all or none
  // (a command Redis refuses at queue time discards the whole transaction).
  const m = s.redis.multi().set("test:10.0.0.100:80:original", "garbage").call("NOSUCHCOMMAND");
  await t.rejects(m.exec(), /EXECABORT/);
  t.same((await s.load())!.original, promoted, "an aborted transaction changed nothing");

  for (const id of ["a", "b", "c"]) await s.removeReplica(id, entry("replica-removed", id));
  t.same(
    (await s.load())!.history.map((h) => h.replica),
    ["a", "b", "c"],
    "the history is trimmed to its limit in the same step",
  );
});

t.test("the state survives a restart of Redis (append-only file)", async (t) => {
  const dir = await tempDir(t, "durable");
  const r1 = await EmbeddedRedis.start({
    runtimeDir: join(dir, "run"),
    dataDir: join(dir, "data"),
    log: quietLog,
  });
  const s1 = await StateStore.connect({
    target: r1.socketPath,
    prefix: "test",
    service: { vip: "10.0.0.100", port: 80 },
    historyLimit: 10,
    log: quietLog,
  });
  await s1.seed(ORIGINAL, []);
  await s1.addReplica(
    { id: "r9", address: "10.0.1.19", addedAt: new Date().toISOString() },
    entry("replica-added", "r9"),
  );
  await s1.close();
  await r1.stop();
  const r2 = await redis(t, dir);
  const s2 = await store(t, r2.socketPath, 10);
  const back = (await s2.load())!;
  t.same(
    back.replicas.map((x) => x.id),
    ["r9"],
  );
  t.equal(back.generation, 2);
});

t.test("a redis-server that dies is restarted; a write made meanwhile lands", async (t) => {
  const dir = await tempDir(t, "super");
  const r = await redis(t, dir);
  const s = await store(t, r.socketPath);
  await s.seed(ORIGINAL, []);
  const first = r.pid!;
  process.kill(first, "SIGKILL");
  await waitUntilDead([first], 2000);
  const write = s.addReplica(
    { id: "late", address: "10.0.1.20", addedAt: new Date().toISOString() },
    entry("replica-added", "late"),
  );
  t.ok(s.pendingWrites >= 1, "the write waits for Redis");
  await write;
  t.equal(r.restarts, 1, "restarted once");
  t.not(r.pid, first);
  t.ok(s.isConnected, "the client reconnected");
  t.same(
    (await s.load())!.replicas.map((x) => x.id),
    ["late"],
    "the write went out after the restart, nothing lost before it",
  );
  t.equal((await s.load())!.generation, 2);
});

t.test("a redis-server left by a crashed appliance is ended before a new one starts", async (t) => {
  const dir = await tempDir(t, "stale");
  // Started from the appliance's own config, outside any supervision (as after a SIGKILL).
  await mkdir(join(dir, "run"), { mode: 0o700 });
  await mkdir(join(dir, "data"), { mode: 0o700 });
  await writeFile(join(dir, "run", "redis.conf"), redisConfig(join(dir, "run"), join(dir, "data")));
  const leftover = spawn("redis-server", [join(dir, "run", "redis.conf")], { stdio: "ignore" });
  const stalePid = leftover.pid!;
  t.teardown(() => {
    if (isAlive(stalePid)) process.kill(stalePid, "SIGKILL");
  });
  for (let i = 0; i < 200 && !(await pingSocket(join(dir, "run", "redis.sock"))); i++)
    await new Promise((r) => setTimeout(r, 20));
  t.ok(await pingSocket(join(dir, "run", "redis.sock")), "the leftover answers on the socket");
  const second = await redis(t, dir);
  t.notOk(isAlive(stalePid), "the leftover is gone");
  t.ok(isAlive(second.pid!));
  const s = await store(t, second.socketPath);
  t.equal(await s.redis.ping(), "PONG");
});

t.test("an unreachable Redis is a clear error within the deadline", async (t) => {
  const dir = await tempDir(t, "gone");
  const t0 = Date.now();
  await t.rejects(
    StateStore.connect({
      target: join(dir, "nothing.sock"),
      prefix: "test",
      service: { vip: "10.0.0.100", port: 80 },
      historyLimit: 10,
      log: quietLog,
      connectTimeoutMs: 300,
    }),
    /Redis at .*nothing\.sock did not answer within 300 ms/,
  );
  t.ok(Date.now() - t0 < 2000);
});
