// The control API through fastify's inject(), over a real engine (driven by hand) and a real
// embedded Redis: what each route does to the roles, the replica set, the engine and the stored
// state, and that bad input changes nothing.
//
// Answers are JSON read field by field; a wrong shape fails the assertion that reads it.
/* eslint-disable @typescript-eslint/no-unsafe-member-access, @typescript-eslint/no-unsafe-assignment, @typescript-eslint/no-unsafe-call */
import t from "tap";
import {
  ClientConnection,
  ORIGINAL,
  R1,
  R2,
  R3,
  SNAT,
  TOKEN,
  VIP,
  sseClient,
  startHarness,
  tempDir,
  type Harness,
} from "./helpers.js";

async function stored(h: Harness) {
  const s = await h.appliance.store.load();
  if (!s) throw new Error("no stored state");
  return s;
}

t.test("status: service, roles, replicas with health, connections, RTT, history", async (t) => {
  const h = await startHarness(t, await tempDir(t, "status"));
  new ClientConnection(h.dp).open({ r1: R1, r2: R2 });
  const r = await h.call("GET", "/v1/status", undefined, null);
  t.equal(r.status, 200, "no token needed to read");
  const s = r.body;
  t.same(s.service, { vip: VIP, port: 6379, address: `${VIP}:6379` });
  t.match(s.original, { address: ORIGINAL, id: null, health: "healthy" });
  t.same(
    s.replicas.map((x: { id: string; address: string; state: string; health: string }) => [
      x.id,
      x.address,
      x.state,
      x.health,
    ]),
    [
      ["r1", R1, "active", "healthy"],
      ["r2", R2, "active", "healthy"],
    ],
  );
  t.equal(s.replicas[0].connections.shadowsActive, 1, "the open connection's shadow on r1");
  t.match(s.connections, { active: 1, diverged: 0, lagging: 0 });
  t.ok(s.rtt && typeof s.rtt.windowMs === "number", "RTT per path (engine histograms)");
  t.ok(s.rtt.client && s.rtt.original, "client and original paths");
  t.same(s.failovers, []);
  t.match(s.state, { connected: true, pendingWrites: 0 });
});

t.test("diverged and lagging connections are counted per replica and overall", async (t) => {
  const h = await startHarness(t, await tempDir(t, "div"));
  const c = new ClientConnection(h.dp).open({ r1: R1, r2: R2 });
  c.client("GET\r\n");
  c.original("hello");
  c.replica(R1, 0, "hello");
  c.replica(R2, 0, "HELLO");
  const s = (await h.call("GET", "/v1/status")).body;
  t.equal(s.connections.diverged, 1, "one connection has a diverged shadow");
  const r2 = s.replicas.find((x: { id: string }) => x.id === "r2");
  t.equal(r2.connections.diverged, 1);
  t.equal(r2.health, "degraded");
  t.equal(s.replicas.find((x: { id: string }) => x.id === "r1").connections.diverged, 0);
});

t.test("mutating routes need the bearer token; reading routes do not", async (t) => {
  const h = await startHarness(t, await tempDir(t, "auth"));
  const body = { id: "r3", address: R3 };
  const none = await h.call("POST", "/v1/replicas", body, null);
  t.equal(none.status, 401);
  t.match(none.headers["www-authenticate"], /^Bearer/);
  t.match(none.body.message, /bearer token/);
  t.equal((await h.call("POST", "/v1/replicas", body, "wrong-token-wrong-token")).status, 401);
  t.equal((await h.call("POST", "/v1/replicas", body, TOKEN.slice(0, -1))).status, 401, "a prefix is wrong");
  t.equal((await h.call("DELETE", "/v1/replicas/r1", undefined, null)).status, 401);
  t.equal((await h.call("POST", "/v1/switchover", {}, null)).status, 401);
  t.equal((await h.call("POST", "/v1/failover", {}, null)).status, 401);
  const s = (await h.call("GET", "/v1/status", undefined, null)).body;
  t.same(
    s.replicas.map((x: { id: string }) => x.id),
    ["r1", "r2"],
    "nothing changed",
  );
  t.equal(s.original.address, ORIGINAL);
  t.equal((await stored(h)).replicas.length, 2);
  t.equal((await h.call("GET", "/metrics", undefined, null)).status, 200);
  t.equal((await h.call("GET", "/openapi.json", undefined, null)).status, 200);
});

t.test("bad input gets a 4xx naming the problem and changes nothing", async (t) => {
  const h = await startHarness(t, await tempDir(t, "bad"));
  const before = await stored(h);
  const cases: Array<[string, "GET" | "POST" | "DELETE", string, unknown, number, RegExp]> = [
    ["malformed JSON", "POST", "/v1/replicas", '{"id": "r3", "address": ', 400, /JSON/i],
    [
      "unknown field",
      "POST",
      "/v1/replicas",
      { id: "r3", address: R3, weight: 2 },
      400,
      /body: unknown field "weight"/,
    ],
    [
      "wrong type",
      "POST",
      "/v1/replicas",
      { id: 3, address: R3 },
      400,
      /body\.id: expected string \(a replica id/,
    ],
    [
      "not an address",
      "POST",
      "/v1/replicas",
      { id: "r3", address: "10.9.1.300" },
      400,
      /body\.address: expected an IPv4 address/,
    ],
    ["missing field", "POST", "/v1/replicas", { id: "r3" }, 400, /body: missing field "address"/],
    ["bad id", "POST", "/v1/replicas", { id: "-r3", address: R3 }, 400, /body\.id: expected a replica id/],
    ["not an object", "POST", "/v1/replicas", [1, 2], 400, /body: expected object/],
    ["duplicate id", "POST", "/v1/replicas", { id: "r1", address: R3 }, 409, /replica r1 exists already/],
    ["duplicate address", "POST", "/v1/replicas", { id: "r3", address: R1 }, 409, /is replica r1's address/],
    [
      "the original's address",
      "POST",
      "/v1/replicas",
      { id: "r3", address: ORIGINAL },
      409,
      /is the original/,
    ],
    ["the appliance's address", "POST", "/v1/replicas", { id: "r3", address: SNAT }, 409, /appliance's own/],
    ["unknown replica", "DELETE", "/v1/replicas/r9", undefined, 404, /no replica r9/],
    [
      "bad id in the path",
      "DELETE",
      "/v1/replicas/r%201",
      undefined,
      400,
      /params\.id: expected a replica id/,
    ],
    [
      "timeout not a number",
      "DELETE",
      "/v1/replicas/r1?timeoutMs=soon",
      undefined,
      400,
      /querystring\.timeoutMs/,
    ],
    ["timeout out of range", "DELETE", "/v1/replicas/r1?timeoutMs=3600001", undefined, 400, /0 to 3600000/],
    ["unknown query field", "DELETE", "/v1/replicas/r1?force=1", undefined, 400, /unknown field "force"/],
    ["switchover: unknown replica", "POST", "/v1/switchover", { replica: "r9" }, 404, /no replica r9/],
    [
      "switchover: wait out of range",
      "POST",
      "/v1/switchover",
      { waitMs: 60_001 },
      400,
      /body\.waitMs: must be <= 60000/,
    ],
    [
      "switchover: negative wait",
      "POST",
      "/v1/switchover",
      { waitMs: -1 },
      400,
      /body\.waitMs: must be >= 0/,
    ],
    [
      "switchover: wait as a string",
      "POST",
      "/v1/switchover",
      { waitMs: "5" },
      400,
      /body\.waitMs: expected integer/,
    ],
    [
      "switchover: fractional wait",
      "POST",
      "/v1/switchover",
      { waitMs: 1.5 },
      400,
      /body\.waitMs: expected integer/,
    ],
    [
      "switchover: force not a boolean",
      "POST",
      "/v1/switchover",
      { force: "yes" },
      400,
      /body\.force: expected/,
    ],
    [
      "switchover: the original",
      "POST",
      "/v1/switchover",
      { replica: "r1", extra: true },
      400,
      /unknown field "extra"/,
    ],
    [
      "failover: empty reason",
      "POST",
      "/v1/failover",
      { reason: "" },
      400,
      /body\.reason: expected 1 to 200 characters/,
    ],
    [
      "failover: long reason",
      "POST",
      "/v1/failover",
      { reason: "x".repeat(201) },
      400,
      /1 to 200 characters/,
    ],
    ["failover: unknown replica", "POST", "/v1/failover", { replica: "r9" }, 404, /no replica r9/],
    ["unknown route", "GET", "/v1/nothing", undefined, 404, /not found/],
  ];
  for (const [what, method, path, body, status, message] of cases) {
    const r = await h.call(method, path, body);
    t.equal(r.status, status, `${what}: ${status}`);
    t.match(r.body.message, message, `${what}: ${r.body.message}`);
  }
  const wrongType = await h.appliance.app.inject({
    method: "POST",
    url: "/v1/replicas",
    headers: { authorization: `Bearer ${TOKEN}`, "content-type": "text/plain" },
    payload: "r3 10.9.1.13",
  });
  t.equal(wrongType.statusCode, 415, "not JSON: 415");
  const big = await h.call("POST", "/v1/replicas", { id: "r3", address: R3, pad: "x".repeat(70_000) });
  t.equal(big.status, 413, "a body beyond 64 KiB: 413");

  const after = await stored(h);
  t.same(after, before, "the stored state is unchanged (generation included)");
  t.same(h.dp.replicaIds(), ["r1", "r2"], "the engine's replica set is unchanged");
  t.equal(h.dp.original(), ORIGINAL, "the original is unchanged");
  t.same(h.dp.probed, [], "no switchover went as far as probing");
});

t.test("a replica is added, then drained away (no new connection, open ones finish)", async (t) => {
  const h = await startHarness(t, await tempDir(t, "repl"));
  const added = await h.call("POST", "/v1/replicas", { id: "r3", address: R3 });
  t.equal(added.status, 201);
  t.match(added.body, { replica: { id: "r3", address: R3, state: "active" }, persisted: true });
  t.same(h.dp.replicaIds(), ["r1", "r2", "r3"], "the engine replicates to it");
  const s1 = await stored(h);
  t.same(
    s1.replicas.map((r) => [r.id, r.address]),
    [
      ["r1", R1],
      ["r2", R2],
      ["r3", R3],
    ],
    "stored",
  );
  t.match(s1.history.at(-1), { kind: "replica-added", replica: "r3", address: R3 });

  const c1 = new ClientConnection(h.dp).open({ r1: R1, r2: R2, r3: R3 });
  t.ok(c1.hasShadowOn(R3), "a new connection is replicated to r3");
  const removal = h.call("DELETE", "/v1/replicas/r3?timeoutMs=5000");
  await new Promise((r) => setTimeout(r, 50));
  const during = (await h.call("GET", "/v1/status")).body;
  t.match(
    during.replicas.find((x: { id: string }) => x.id === "r3"),
    { state: "draining" },
    "draining while its shadow is open",
  );
  const c2 = new ClientConnection(h.dp).open({ r1: R1, r2: R2 });
  t.notOk(c2.hasShadowOn(R3), "a connection opened during the drain gets no shadow on r3");
  t.ok(c2.hasShadowOn(R1), "...but on the others");
  const conflict = await h.call("DELETE", "/v1/replicas/r3");
  t.equal(conflict.status, 409, "a second drain of the same replica is refused");
  const sw = await h.call("POST", "/v1/switchover", { replica: "r3" });
  t.equal(sw.status, 409, "a draining replica is no switchover target");
  t.match(sw.body.message, /being drained/);
  c1.reset();
  const done = await removal;
  t.equal(done.status, 200);
  t.match(done.body, { id: "r3", drained: true, shadowsCut: 0, persisted: true });
  t.ok(done.body.waitedMs >= 50, `waited for the open shadow (${done.body.waitedMs} ms)`);
  t.same(h.dp.replicaIds(), ["r1", "r2"]);

  const cut = await h.call("DELETE", "/v1/replicas/r2?timeoutMs=30");
  t.equal(cut.status, 200);
  t.match(cut.body, { id: "r2", drained: false, shadowsCut: 1 }, "c2's shadow on r2 cut at the timeout");
  t.ok(cut.body.waitedMs >= 30);
  const s2 = await stored(h);
  t.same(
    s2.replicas.map((r) => r.id),
    ["r1"],
  );
  t.match(s2.history.slice(-2), [
    { kind: "replica-removed", replica: "r3", reason: "drained" },
    { kind: "replica-removed", replica: "r2", reason: /drain timeout: 1 shadow/ },
  ]);
  const st = (await h.call("GET", "/v1/status")).body;
  t.same(
    st.replicas.map((x: { id: string }) => x.id),
    ["r1"],
  );
  t.ok(
    [...h.dp.connections()].some((c) => c.clientPort === c2.port && c.phase === "open"),
    "the client's connection c2 is untouched",
  );
});

t.test(
  "switchover: every open connection continues; refused (nothing changed) when one cannot",
  async (t) => {
    const h = await startHarness(t, await tempDir(t, "sw"));
    const conns = [1, 2, 3].map(() => new ClientConnection(h.dp).open({ r1: R1, r2: R2 }));
    conns[0]!.client("PING\r\n");
    conns[0]!.original("+PONG\r\n");
    conns[0]!.replica(R1, 0, "+PONG\r\n");
    const sw = await h.call("POST", "/v1/switchover", { replica: "r1" });
    t.equal(sw.status, 200, JSON.stringify(sw.body));
    t.match(sw.body, {
      from: ORIGINAL,
      to: R1,
      replica: "r1",
      spliced: 3,
      reset: 0,
      dropped: 0,
      persisted: true,
    });
    t.same(h.dp.probed, [R1], "the target was probed first");
    const st = (await h.call("GET", "/v1/status")).body;
    t.match(st.original, { address: R1, id: "r1" });
    t.same(
      st.replicas.map((x: { id: string }) => x.id),
      ["r2"],
    );
    t.equal(st.failovers.length, 1);
    t.match(st.failovers[0], { kind: "switchover", replica: "r1", from: ORIGINAL, to: R1, spliced: 3 });
    const s = await stored(h);
    t.match(s.original, { address: R1, id: "r1" });
    t.same(
      s.replicas.map((r) => r.id),
      ["r2"],
    );

    // r3 joins after the connections opened: they cannot continue on it.
    t.equal((await h.call("POST", "/v1/replicas", { id: "r3", address: R3 })).status, 201);
    const before = await stored(h);
    const refused = await h.call("POST", "/v1/switchover", { replica: "r3", waitMs: 20 });
    t.equal(refused.status, 409);
    t.match(refused.body.message, /3 open connections cannot continue on r3/);
    t.match(refused.body, { blocking: 3, carriable: 0 });
    t.same(await stored(h), before, "refused: the stored state is unchanged");
    t.equal(h.dp.original(), R1, "and the data plane's original too");

    h.dp.probeAnswers.set(R2, { alive: false, why: "ECONNREFUSED", ms: 0.2 });
    const dead = await h.call("POST", "/v1/switchover", { replica: "r2" });
    t.equal(dead.status, 409);
    t.match(dead.body.message, /r2 did not answer a probe \(ECONNREFUSED\)/);
    t.same(await stored(h), before);

    const forced = await h.call("POST", "/v1/switchover", { replica: "r3", waitMs: 0, force: true });
    t.equal(forced.status, 200);
    t.match(
      forced.body,
      { to: R3, spliced: 0, reset: 3 },
      "forced: the connections that cannot continue are reset",
    );
    t.equal(
      (await h.call("POST", "/v1/switchover", { replica: "r1" })).status,
      404,
      "r1 is a replica no more",
    );
    const last = await stored(h);
    t.match(last.original, { address: R3, id: "r3" });
    t.same(
      last.history.filter((e) => e.from !== undefined).map((e) => [e.kind, e.replica]),
      [
        ["switchover", "r1"],
        ["switchover", "r3"],
      ],
    );
    const refusedAdd = await h.call("POST", "/v1/replicas", { id: "old", address: ORIGINAL });
    t.equal(refusedAdd.status, 409, "a fenced former original cannot rejoin while the appliance runs");
    t.match(refusedAdd.body.message, /fenced/);
  },
);

t.test("switchover without a target picks the replica every connection can continue on", async (t) => {
  const h = await startHarness(t, await tempDir(t, "swbest"));
  t.equal((await h.call("POST", "/v1/replicas", { id: "r3", address: R3 })).status, 201);
  new ClientConnection(h.dp).open({ r1: R1, r2: R2, r3: R3 });
  const c = new ClientConnection(h.dp).open({ r1: R1, r2: R2, r3: R3 });
  c.client("GET\r\n");
  c.original("abc");
  c.replica(R1, 0, "xyz"); // r1 diverged on this connection
  const sw = await h.call("POST", "/v1/switchover", {});
  t.equal(sw.status, 200, JSON.stringify(sw.body));
  t.not(sw.body.replica, "r1", "not the replica with a diverged connection");
  t.match(sw.body, { spliced: 2, reset: 0 });
});

t.test("a half-open connection holds a switchover back until its handshake completes", async (t) => {
  const h = await startHarness(t, await tempDir(t, "swhalf"));
  new ClientConnection(h.dp).open({ r1: R1, r2: R2 });
  const c = new ClientConnection(h.dp).syn();
  const sw = h.call("POST", "/v1/switchover", { replica: "r2", waitMs: 5000 });
  await new Promise((r) => setTimeout(r, 30));
  t.equal(h.dp.original(), ORIGINAL, "waiting: not promoted while a handshake is under way");
  c.open({ r1: R1, r2: R2 }); // its SYN again (a retransmission), then the rest of the handshake
  const done = await sw;
  t.equal(done.status, 200, JSON.stringify(done.body));
  t.match(done.body, { spliced: 2, reset: 0, dropped: 0 }, "both connections continue");
  // The handler's clock starts a little after ours (routing, auth), so it reads a bit under the
  // 30 ms the handshake was held back; a switchover that did not wait reads ~0.
  t.ok(done.body.waitedMs >= 10, `waited for the handshake (${done.body.waitedMs} ms)`);
});

t.test("external failover promotes at once; automatic failovers are recorded too", async (t) => {
  const h = await startHarness(t, await tempDir(t, "fo"), { engine: { autoFailover: true } });
  new ClientConnection(h.dp).open({ r1: R1, r2: R2 });
  const fo = await h.call("POST", "/v1/failover", { reason: "hypervisor: VM stopped" });
  t.equal(fo.status, 200, JSON.stringify(fo.body));
  t.match(fo.body, { from: ORIGINAL, spliced: 1, reset: 0, persisted: true });
  t.same(h.dp.probed, [], "an external failure signal does not wait for a probe");
  const first = fo.body.replica as string;
  const other = first === "r1" ? "r2" : "r1";
  const otherAddress = other === "r1" ? R1 : R2;
  t.match((await stored(h)).history.at(-1), { kind: "failover", reason: "hypervisor: VM stopped" });

  // The engine detects the new original's failure by itself: it closes a connection alone.
  const c = new ClientConnection(h.dp).open({ [other]: otherAddress });
  c.client("x");
  c.replica(otherAddress, 0, "");
  c.originalRst();
  for (let i = 0; i < 50 && h.dp.original() !== otherAddress; i++) h.dp.tick(5);
  t.equal(h.dp.original(), otherAddress, "the engine promoted the other replica");
  await new Promise((r) => setTimeout(r, 20));
  const st = (await h.call("GET", "/v1/status")).body;
  t.match(st.original, { address: otherAddress, id: other });
  t.same(st.replicas, [], "no replica left");
  t.match(st.failovers.at(-1), { kind: "automatic-failover", replica: other });
  t.type(st.failovers.at(-1).stallMs, "number", "the stall from the failure's first evidence");
  const s = await stored(h);
  t.match(s.original, { address: otherAddress, id: other });
  t.same(s.replicas, []);
  const none = await h.call("POST", "/v1/failover", {});
  t.equal(none.status, 409);
  t.match(none.body.message, /no replica left/);
});

t.test("the OpenAPI document describes every route with its schema", async (t) => {
  const h = await startHarness(t, await tempDir(t, "oas"));
  const doc = (await h.call("GET", "/openapi.json")).body;
  t.equal(doc.openapi, "3.0.3");
  for (const [path, method] of [
    ["/v1/status", "get"],
    ["/v1/replicas", "post"],
    ["/v1/replicas/{id}", "delete"],
    ["/v1/switchover", "post"],
    ["/v1/failover", "post"],
    ["/v1/events", "get"],
    ["/metrics", "get"],
  ] as const)
    t.ok(doc.paths[path]?.[method], `${method.toUpperCase()} ${path}`);
  t.notOk(doc.paths["/openapi.json"], "the document itself is not listed");
  const add = doc.paths["/v1/replicas"].post;
  const schema = add.requestBody.content["application/json"].schema;
  t.equal(schema.additionalProperties, false);
  t.same(schema.required, ["id", "address"]);
  t.same(add.security, [{ bearer: [] }]);
  t.match(doc.components.securitySchemes.bearer, { type: "http", scheme: "bearer" });
  t.same(doc.paths["/v1/switchover"].post.requestBody.content["application/json"].schema.properties.waitMs, {
    type: "integer",
    minimum: 0,
    maximum: 60000,
    description: "how long to wait for every open connection to be carriable (ms)",
  });
});

t.test("metrics: engine counters, failovers and their stall, RTT histograms", async (t) => {
  const h = await startHarness(t, await tempDir(t, "metrics"));
  const c = new ClientConnection(h.dp).open({ r1: R1, r2: R2 });
  c.client("PING\r\n");
  t.equal((await h.call("POST", "/v1/switchover", { replica: "r2" })).status, 200);
  const r = await h.call("GET", "/metrics");
  t.equal(r.status, 200);
  t.match(r.headers["content-type"], /^text\/plain; version=0\.0\.4/);
  const text = r.body as string;
  const value = (line: string) => {
    const m = new RegExp(`^${line.replace(/[{}"[\]]/g, "\\$&")} (\\S+)$`, "m").exec(text);
    return m ? Number(m[1]) : undefined;
  };
  t.equal(value('tcp_replicator_packets_total{source="client"}'), h.dp.engineStats().packets.client);
  t.equal(value("tcp_replicator_failovers_total"), 1);
  t.equal(value('tcp_replicator_failover_stall_seconds_count{kind="switchover"}'), 1);
  t.equal(
    value('tcp_replicator_replica_bytes_sent_total{replica="r1"}'),
    h.dp.engineStats().replicas[0]!.bytesSent,
  );
  t.equal(value("tcp_replicator_state_store_up"), 1);
  t.match(text, /^# TYPE tcp_replicator_rtt_seconds histogram$/m);
  t.match(text, /^tcp_replicator_rtt_seconds_bucket\{path="client",kind="handshake",le="\+Inf"\} \d+$/m);
  t.match(text, /^process_cpu_seconds_total /m, "process metrics");
});

t.test("event stream: roles first, then what happens, replayed from Last-Event-ID", async (t) => {
  const h = await startHarness(t, await tempDir(t, "sse"));
  const es = await sseClient(h.url + "/v1/events");
  t.teardown(es.close);
  t.equal(es.status, 200);
  t.match(es.contentType, /^text\/event-stream/);
  const hello = await es.next("roles");
  t.match(hello.data, { original: { address: ORIGINAL }, replicas: [{ id: "r1" }, { id: "r2" }] });
  t.equal(hello.id, undefined, "the greeting has no id (it is not replayed)");
  t.equal((await h.call("POST", "/v1/replicas", { id: "r3", address: R3 })).status, 201);
  const added = await es.next("replica-added");
  t.equal(added.data.replica, "r3");
  new ClientConnection(h.dp).open({ r1: R1, r2: R2, r3: R3 });
  t.equal((await h.call("POST", "/v1/switchover", { replica: "r2" })).status, 200);
  const promoted = await es.next("promoted");
  t.match(promoted.data, { replica: "r2", spliced: 1 });
  const requested = await es.next("switchover");
  t.match(requested.data, { phase: "requested", replica: "r2" });
  const history = await es.next("history", es.events.indexOf(promoted));
  t.match(history.data, { kind: "switchover", replica: "r2" });
  const roles = es.events.filter((e) => e.type === "roles").at(-1)!;
  t.match(roles.data.original, { address: R2, id: "r2" });

  const replay = await sseClient(h.url + "/v1/events", added.id);
  t.teardown(replay.close);
  const again = await replay.next("promoted");
  t.equal(again.id, promoted.id, "events after Last-Event-ID are replayed with their ids");
  t.notOk(
    replay.events.some((e) => e.type === "replica-added"),
    "nothing up to Last-Event-ID",
  );
  t.equal((await h.call("GET", "/v1/status")).body.events.clients, 2);
});

t.test("a failover says what confirmed it; a former original alive again is lost capacity", async (t) => {
  const h = await startHarness(t, await tempDir(t, "falsefo"), {
    engine: { autoFailover: true, probes: true },
  });
  // The original closes a connection its replica keeps open: a probe decides.
  const c = new ClientConnection(h.dp).open({ r1: R1 });
  c.client("x");
  c.replica(R1, 0, "");
  c.originalRst();
  h.dp.tick(5);
  h.dp.answerProbe("r1", true, "connected");
  h.dp.answerProbe("original", false, "ECONNREFUSED");
  t.equal(h.dp.original(), R1, "failed over to r1");
  await new Promise((r) => setTimeout(r, 20));
  let st = (await h.call("GET", "/v1/status")).body;
  t.match(st.failovers.at(-1), {
    kind: "automatic-failover",
    replica: "r1",
    confirmedBy: "probe refused",
    reason: /closed a connection its replicas keep open.*ECONNREFUSED/,
  });
  t.match(st.failures, {
    hangBudgetMs: 1000,
    falseFailovers: 0,
    formerOriginals: [{ address: ORIGINAL, state: "watching", confirmedBy: "probe refused" }],
  });
  // The replaced original answers again (its service was restarted, or it never died).
  h.dp.tick(500);
  h.dp.answerProbe(`former ${ORIGINAL}`, true, "connected");
  await new Promise((r) => setTimeout(r, 20));
  st = (await h.call("GET", "/v1/status")).body;
  t.match(st.failures, { falseFailovers: 1, formerOriginals: [{ address: ORIGINAL, state: "alive" }] });
  t.match(st.history.at(-1), {
    kind: "former-original-alive",
    address: ORIGINAL,
    confirmedBy: "probe refused",
    reason: /capacity lost until it is resynchronised/,
  });
  t.notOk(
    st.replicas.some((r: { address: string }) => r.address === ORIGINAL),
    "not re-admitted as a replica",
  );
  t.match((await stored(h)).history.at(-1), { kind: "former-original-alive", address: ORIGINAL });
  const metrics = await h.call("GET", "/metrics");
  t.match(metrics.body as string, /tcp_replicator_false_failovers_total 1/);
  t.match(metrics.body as string, /tcp_replicator_failovers_withheld_total 0/);
});
