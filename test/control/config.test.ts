// The `serve` configuration: the proxy's fields plus `api`, validated before anything starts; the
// API refuses a non-loopback address without a token (exit code 2 from the CLI).
import t from "tap";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { DEFAULT_API_PORT, isLoopback, parseServeConfig } from "../../src/control/config.js";
import { cli } from "../helpers.js";
import { tempDir } from "./helpers.js";

const proxy = {
  vip: "10.0.0.100",
  port: 6379,
  original: "10.0.1.10",
  snatAddress: "10.0.1.1",
  replicationAddress: "10.0.1.2",
  replicas: [{ id: "r1", address: "10.0.1.11" }],
};
const TOKEN = "0123456789abcdef-token";

t.test("defaults: loopback, embedded Redis, a generated token", async (t) => {
  const c = parseServeConfig(proxy);
  t.equal(c.proxy.vip, "10.0.0.100", "the proxy's part is the proxy's config");
  t.same(c.api, {
    listen: "127.0.0.1",
    port: DEFAULT_API_PORT,
    token: undefined,
    redisUrl: undefined,
    redisPrefix: "tcp-replicator",
    runtimeDir: "/run/tcp-replicator/serve",
    dataDir: "/var/lib/tcp-replicator",
    logLevel: "info",
    drainTimeoutMs: 30_000,
    switchoverWaitMs: 2000,
    historyLimit: 1000,
  });
  const full = parseServeConfig({
    ...proxy,
    api: {
      listen: "10.0.0.1",
      port: 8443,
      token: TOKEN,
      redisUrl: "redis://:secret@10.0.0.5:6379/2",
      logLevel: "debug",
      drainTimeoutMs: 0,
    },
  });
  t.match(full.api, { listen: "10.0.0.1", port: 8443, token: TOKEN, logLevel: "debug", drainTimeoutMs: 0 });
  t.equal(
    parseServeConfig({ ...proxy, api: { redisUrl: "/run/redis/redis.sock" } }).api.redisUrl,
    "/run/redis/redis.sock",
  );
});

t.test("the token may come from the environment; a weak one is refused", async (t) => {
  t.equal(parseServeConfig(proxy, { TCP_REPLICATOR_API_TOKEN: TOKEN }).api.token, TOKEN);
  t.equal(
    parseServeConfig({ ...proxy, api: { token: TOKEN } }, { TCP_REPLICATOR_API_TOKEN: "x".repeat(20) }).api
      .token,
    TOKEN,
    "the configuration's wins",
  );
  t.throws(() => parseServeConfig({ ...proxy, api: { token: "short" } }), /api\.token: expected 16 to 256/);
  t.throws(() => parseServeConfig({ ...proxy, api: { token: "with a space inside it" } }), /printable ASCII/);
  t.throws(
    () => parseServeConfig(proxy, { TCP_REPLICATOR_API_TOKEN: "short" }),
    /TCP_REPLICATOR_API_TOKEN: expected/,
  );
});

t.test("a non-loopback API without a token is refused", async (t) => {
  t.ok(isLoopback("127.0.0.1") && isLoopback("127.8.9.10") && isLoopback("::1"));
  t.notOk(isLoopback("0.0.0.0") || isLoopback("10.0.0.1") || isLoopback("::"));
  for (const listen of ["0.0.0.0", "10.0.0.1", "::"])
    t.throws(
      () => parseServeConfig({ ...proxy, api: { listen } }),
      {
        name: "Error",
        message: new RegExp(
          `api\\.listen: ${listen.replace(/\./g, "\\.")} is not a loopback address.*without a token`,
        ),
      },
      listen,
    );
  t.equal(parseServeConfig({ ...proxy, api: { listen: "0.0.0.0", token: TOKEN } }).api.listen, "0.0.0.0");
});

t.test("bad fields are named", async (t) => {
  const bad: Array<[unknown, RegExp]> = [
    [{ nope: 1 }, /api: unknown field "nope"/],
    [{ port: 0 }, /api\.port: expected an integer from 1 to 65535/],
    [{ port: "80" }, /api\.port/],
    [{ listen: "localhost" }, /api\.listen: expected an IP address/],
    [{ redisUrl: "http://x" }, /api\.redisUrl: expected redis:\/\//],
    [{ redisUrl: "not a url" }, /api\.redisUrl: not a URL/],
    [{ runtimeDir: "relative" }, /api\.runtimeDir: expected an absolute path/],
    [{ runtimeDir: "/" + "x".repeat(100) }, /at most 90 characters/],
    [{ logLevel: "loud" }, /api\.logLevel: one of/],
    [{ redisPrefix: "a b" }, /api\.redisPrefix/],
    [{ switchoverWaitMs: 60_001 }, /api\.switchoverWaitMs/],
    [[], /api: expected an object/],
  ];
  for (const [api, msg] of bad) t.throws(() => parseServeConfig({ ...proxy, api }), msg, JSON.stringify(api));
  t.throws(
    () => parseServeConfig({ ...proxy, port: 70000 }),
    /port: expected an integer/,
    "the proxy's part too",
  );
  t.throws(() => parseServeConfig([]), /config: expected a JSON object/);
});

t.test("tcp-replicator serve exits 2 with the reason, before starting anything", async (t) => {
  const dir = await tempDir(t, "cfg");
  const file = join(dir, "serve.json");
  await writeFile(
    file,
    JSON.stringify({ ...proxy, api: { listen: "0.0.0.0", runtimeDir: join(dir, "run") } }),
  );
  const r = await cli(["serve", "--config", file], { ...process.env, TCP_REPLICATOR_API_TOKEN: "" });
  t.equal(r.code, 2, r.stderr);
  t.match(
    r.stderr,
    /api\.listen: 0\.0\.0\.0 is not a loopback address: refusing to serve the API there without a token/,
  );
  const missing = await cli(["serve"]);
  t.equal(missing.code, 2);
  t.match(missing.stderr, /serve: --config FILE is required/);
  await writeFile(file, "{ not json");
  const garbled = await cli(["serve", "--config", file]);
  t.equal(garbled.code, 2);
  t.match(garbled.stderr, /is not valid JSON/);
});
