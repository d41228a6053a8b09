// The appliance as a whole (state store, data plane, control plane, API) across restarts: the
// replica set, the roles and the failover history come back from Redis; the configuration only
// seeds the first start; stopping leaves no process behind.
import t from "tap";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { isAlive } from "../../src/sys/process.js";
import { parseApiConfig } from "../../src/control/config.js";
import { startAppliance } from "../../src/control/serve.js";
import { EmbeddedRedis } from "../../src/control/embedded-redis.js";
import {
  ClientConnection,
  EngineDataPlane,
  ORIGINAL,
  R1,
  R2,
  R3,
  proxyConfig,
  quietLog,
  startHarness,
  tempDir,
} from "./helpers.js";

t.test("replica set, roles and failover history survive a restart", async (t) => {
  const dir = await tempDir(t, "restart");
  const first = await startHarness(t, dir, { stopOnTeardown: false });
  try {
    t.equal((await first.call("POST", "/v1/replicas", { id: "r3", address: R3 })).status, 201);
    new ClientConnection(first.dp).open({ r1: R1, r2: R2, r3: R3 });
    const fo = await first.call("POST", "/v1/failover", { replica: "r2", reason: "maintenance test" });
    t.equal(fo.status, 200);
    t.equal(first.dp.original(), R2);
  } finally {
    const redisPid = first.appliance.embeddedRedis!.pid!;
    await first.appliance.stop();
    t.notOk(isAlive(redisPid), "the embedded redis-server stopped with the appliance");
  }

  // Started again from the same configuration (which still names the old original and r1, r2).
  const second = await startHarness(t, dir);
  const started = second.dp;
  t.equal(started.original(), R2, "the data plane starts with the stored original, not the configured one");
  t.same(started.replicaIds(), ["r1", "r3"], "and the stored replica set");
  const s = (await second.call("GET", "/v1/status")).body as {
    original: { address: string; id: string };
    replicas: Array<{ id: string }>;
    failovers: Array<{ kind: string; replica: string; from: string; to: string; reason: string }>;
    history: Array<{ kind: string }>;
  };
  t.match(s.original, { address: R2, id: "r2" });
  t.same(
    s.replicas.map((r) => r.id),
    ["r1", "r3"],
  );
  t.match(s.failovers, [
    { kind: "failover", replica: "r2", from: ORIGINAL, to: R2, reason: "maintenance test" },
  ]);
  t.same(
    s.history.map((h) => h.kind),
    ["replica-added", "failover"],
  );
  // It goes on from there: a switchover back to r1, stored on top of the restored history.
  new ClientConnection(second.dp).open({ r1: R1, r3: R3 });
  t.equal((await second.call("POST", "/v1/switchover", { replica: "r1" })).status, 200);
  t.same(
    (await second.appliance.store.load())!.history.map((h) => h.kind),
    ["replica-added", "failover", "switchover"],
  );
});

t.test("without a configured token one is generated, readable by root alone", async (t) => {
  const dir = await tempDir(t, "token");
  const api = parseApiConfig({
    runtimeDir: join(dir, "run"),
    dataDir: join(dir, "data"),
    logLevel: "silent",
  });
  const a = await startAppliance(
    { proxy: proxyConfig(), api: { ...api, port: 0 } },
    quietLog,
    async (pc) => ({
      dataPlane: new EngineDataPlane(pc),
      stop: async () => undefined,
    }),
  );
  t.teardown(() => a.stop());
  t.equal(a.tokenFile, join(dir, "run", "api-token"));
  t.equal((await readFile(a.tokenFile!, "utf8")).trim(), a.token);
  t.equal((await stat(a.tokenFile!)).mode & 0o777, 0o600);
  t.ok(a.token.length >= 32);
  const res = await fetch(`${a.url}/v1/failover`, {
    method: "POST",
    headers: { authorization: `Bearer ${a.token}`, "content-type": "application/json" },
    body: JSON.stringify({ replica: "r1" }),
  });
  t.equal(res.status, 200, "the generated token opens the mutating routes (over real HTTP)");
  t.match(a.url, /^http:\/\/127\.0\.0\.1:\d+$/, "on loopback");
});

t.test("a start that fails part-way stops what it started", async (t) => {
  const dir = await tempDir(t, "fail");
  const api = parseApiConfig({
    runtimeDir: join(dir, "run"),
    dataDir: join(dir, "data"),
    logLevel: "silent",
  });
  let redisSocketSeen = false;
  await t.rejects(
    startAppliance({ proxy: proxyConfig(), api: { ...api, port: 0 } }, quietLog, async () => {
      redisSocketSeen = await stat(join(dir, "run", "redis.sock")).then(
        () => true,
        () => false,
      );
      throw new Error("no capture device");
    }),
    /no capture device/,
  );
  t.ok(redisSocketSeen, "Redis was running when the data plane failed");
  await t.rejects(stat(join(dir, "run", "redis.sock")), "and is stopped since");
});

t.test("with api.redisUrl the operator's Redis holds the state and none is started", async (t) => {
  const dir = await tempDir(t, "ext");
  const operators = await EmbeddedRedis.start({
    runtimeDir: join(dir, "theirs"),
    dataDir: join(dir, "theirs-data"),
    log: quietLog,
  });
  t.teardown(() => operators.stop());
  const h = await startHarness(t, dir, { api: { redisUrl: operators.socketPath, redisPrefix: "site-a" } });
  t.equal(h.appliance.embeddedRedis, undefined, "no redis-server of its own");
  await t.rejects(stat(join(dir, "run", "redis.sock")), "nothing in its runtime directory");
  t.equal((await h.call("POST", "/v1/replicas", { id: "r3", address: R3 })).status, 201);
  const keys = await h.appliance.store.redis.keys("site-a:*");
  t.same(keys.sort(), [
    "site-a:10.9.0.100:6379:generation",
    "site-a:10.9.0.100:6379:history",
    "site-a:10.9.0.100:6379:original",
    "site-a:10.9.0.100:6379:replicas",
  ]);
  t.same(await h.appliance.store.redis.hkeys("site-a:10.9.0.100:6379:replicas"), ["r1", "r2", "r3"]);
});
