import t from "tap";
import { ConfigError, parseProxyConfig } from "../../src/proxy/config.js";

const good = {
  vip: "10.0.0.100",
  port: 8080,
  original: "10.0.1.10",
  snatAddress: "10.0.1.1",
  replicationAddress: "10.0.1.2",
  replicas: [{ id: "r1", address: "10.0.1.11" }],
};

t.test("a valid config gets defaults", async (t) => {
  const c = parseProxyConfig(good);
  t.equal(c.captureDevice, "any");
  t.equal(c.table, "tcp_replicator");
  t.equal(c.limits.perConnectionBytes, 8 * 1024 * 1024);
  t.equal(c.finHoldMs, 2000);
  t.equal(parseProxyConfig({ ...good, limits: { maxConnections: 5 } }).limits.maxConnections, 5);
  t.same(c.failure, {
    closeMismatchMs: 2,
    stallSuspectMs: 3,
    hangBudgetMs: 1000,
    hysteresisMs: 10_000,
    probeTimeoutMs: 5,
    probeIntervalMs: 500,
  });
  t.equal(c.healthCheck, undefined, "no health check unless configured");
  t.equal(c.tolerateHttpDate, true, "HTTP Date differences tolerated by default");
  t.equal(parseProxyConfig({ ...good, tolerateHttpDate: false }).tolerateHttpDate, false);
  const tuned = parseProxyConfig({
    ...good,
    failure: { stallSuspectMs: 10, probeIntervalMs: 0 },
    healthCheck: { send: "PING\r\n", expect: "+PONG" },
  });
  t.equal(tuned.failure.stallSuspectMs, 10);
  t.equal(tuned.failure.probeIntervalMs, 0, "periodic probes off");
  t.equal(tuned.failure.hangBudgetMs, 1000, "the rest keeps its default");
  t.same(tuned.healthCheck, { send: "PING\r\n", expect: "+PONG", timeoutMs: 10 });
});

t.test("bad configs are refused with the field's name", async (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [null, /JSON object/],
    [[], /JSON object/],
    [{ ...good, vip: "10.0.0.300" }, /^vip: expected an IPv4 address/],
    [{ ...good, port: 0 }, /^port: expected an integer from 1 to 65535/],
    [{ ...good, port: "80" }, /^port/],
    [{ ...good, colour: "blue" }, /unknown field "colour"/],
    [{ ...good, failure: { replyStallMs: 60 } }, /^failure.replyStallMs: replaced by failure.hangBudgetMs/],
    [{ ...good, failure: { ackStallMs: 100 } }, /^failure.ackStallMs: replaced by failure.hangBudgetMs/],
    [{ ...good, failure: { hangBudgetMs: 0 } }, /^hangBudgetMs: expected an integer from 1/],
    [{ ...good, replicas: {} }, /replicas: expected an array/],
    [{ ...good, replicas: [{ id: "r 1", address: "10.0.1.11" }] }, /replicas\[0\]\.id/],
    [
      { ...good, replicas: [{ id: "r1", address: "10.0.1.11", extra: 1 }] },
      /replicas\[0\]: unknown field "extra"/,
    ],
    [{ ...good, replicas: [good.replicas[0], { id: "r1", address: "10.0.1.12" }] }, /ids must be unique/],
    [
      { ...good, replicas: [good.replicas[0], { id: "r2", address: "10.0.1.11" }] },
      /addresses must be unique/,
    ],
    [{ ...good, replicationAddress: "10.0.1.10" }, /must all differ/],
    [{ ...good, limits: { perConnectionBytes: 10 } }, /perConnectionBytes/],
    [{ ...good, limits: { bogus: 1 } }, /limits: unknown field "bogus"/],
    [{ ...good, logLevel: "loud" }, /logLevel/],
    [{ ...good, tolerateHttpDate: "yes" }, /^tolerateHttpDate: expected true or false/],
    [{ ...good, table: "drop table" }, /table/],
    [{ ...good, failure: [] }, /failure: expected an object/],
    [{ ...good, failure: { stallSuspectMs: 0 } }, /stallSuspectMs: expected an integer from 1/],
    [{ ...good, failure: { probeTimeoutMs: 2.5 } }, /probeTimeoutMs/],
    [{ ...good, failure: { detectFast: true } }, /failure: unknown field "detectFast"/],
    [{ ...good, healthCheck: { send: "PING" } }, /expect: expected a string/],
    [{ ...good, healthCheck: { send: "", expect: "x" } }, /send: expected a string of 1/],
    [{ ...good, healthCheck: { send: "a", expect: "b", timeoutMs: 0 } }, /timeoutMs/],
    [{ ...good, healthCheck: { send: "a", expect: "ok ✓" } }, /expect: only characters U\+0000 to U\+00FF/],
    [
      { ...good, healthCheck: { send: "a", expect: "b", retries: 3 } },
      /healthCheck: unknown field "retries"/,
    ],
  ];
  for (const [raw, message] of cases) {
    t.throws(() => parseProxyConfig(raw), { name: "Error", message }, JSON.stringify(raw)?.slice(0, 80));
    try {
      parseProxyConfig(raw);
    } catch (e) {
      t.ok(e instanceof ConfigError, "a ConfigError");
    }
  }
});
