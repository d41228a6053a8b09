// The backend probe against real local sockets: a listening port is alive, a closed one dead at
// once, a health check must be answered right and in time, a cancelled probe never answers.
import t, { type Test } from "tap";
import { createServer, type Server, type Socket } from "node:net";
import { probe, probeCopies, type ProbeAnswer, type ProbeRequest } from "../../src/proxy/probe.js";

function ask(req: ProbeRequest): Promise<ProbeAnswer> {
  return new Promise((resolve) => probe(req, resolve));
}

/** A server on 127.0.0.1 with a handler per connection; its port; closed after the test. */
async function server(t: Test, onConn: (s: Socket) => void): Promise<number> {
  const sockets = new Set<Socket>();
  const srv: Server = createServer((s) => {
    sockets.add(s);
    s.on("error", () => undefined);
    onConn(s);
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    srv.close();
  });
  return (srv.address() as { port: number }).port;
}

t.test("TCP only: a listening port is alive, a closed one dead at once", async (t) => {
  const port = await server(t, () => undefined);
  const alive = await ask({ address: "127.0.0.1", port, timeoutMs: 1000 });
  t.match(alive, { alive: true, why: "connected" });
  // A port nothing listens on: take one, then close it.
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const free = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  const dead = await ask({ address: "127.0.0.1", port: free, timeoutMs: 1000 });
  t.match(dead, { alive: false, why: "ECONNREFUSED" });
  t.ok(dead.ms < 500, `refused in ${dead.ms.toFixed(2)} ms, not at the deadline`);
});

t.test("health check: the application must answer right and in time", async (t) => {
  const echo = await server(t, (s) => s.pipe(s));
  const silent = await server(t, () => undefined);
  const wrong = await server(t, (s) => s.end("-ERR no\r\n"));
  const check = { send: "PING\r\n", expect: "PING", timeoutMs: 50 };
  // The healthy answer gets a generous deadline: on a loaded CI machine this process can be off
  // the CPU for longer than 50 ms between the echo's two hops.
  const patient = { ...check, timeoutMs: 2000 };
  t.match(await ask({ address: "127.0.0.1", port: echo, timeoutMs: 1000, healthCheck: patient }), {
    alive: true,
    why: "health check answered",
  });
  const quiet = await ask({ address: "127.0.0.1", port: silent, timeoutMs: 1000, healthCheck: check });
  t.match(quiet, { alive: false, why: "no answer to the health check" });
  // libuv arms timers from the loop's cached clock, which may lag performance.now() by ~1 ms.
  t.ok(quiet.ms >= 49, `after its own timeout (${quiet.ms.toFixed(1)} ms)`);
  t.match(await ask({ address: "127.0.0.1", port: wrong, timeoutMs: 1000, healthCheck: check }), {
    alive: false,
    why: /wrong answer|closed during/,
  });
});

t.test("a cancelled probe never answers", async (t) => {
  const port = await server(t, () => undefined);
  let answered = false;
  const h = probe(
    { address: "127.0.0.1", port, timeoutMs: 20, healthCheck: { send: "x", expect: "y", timeoutMs: 20 } },
    () => (answered = true),
  );
  h.cancel();
  await new Promise((r) => setTimeout(r, 100));
  t.notOk(answered);
});

t.test("parallel copies answer once: alive or refused if one was, silent only if all were", async (t) => {
  const copies = (req: ProbeRequest, n: number) =>
    new Promise<{ a: ProbeAnswer; answers: () => number }>((resolve) => {
      let answers = 0;
      probeCopies(req, n, (a) => {
        answers++;
        resolve({ a, answers: () => answers });
      });
    });
  const check = { send: "PING\r\n", expect: "PING", timeoutMs: 100 };
  // Only the connection with the given index (0-based, in accept order) is answered: a lost SYN
  // or a stalled answer on one copy must not decide while another copy can still say "alive".
  const answersOnly = async (which: number) => {
    let n = 0;
    return server(t, (s) => {
      if (n++ === which) s.pipe(s);
    });
  };
  for (const which of [0, 1]) {
    const port = await answersOnly(which);
    const { a, answers } = await copies(
      { address: "127.0.0.1", port, timeoutMs: 1000, healthCheck: check },
      2,
    );
    t.match(a, { alive: true, why: "health check answered" }, `copy ${which} answered: alive`);
    await new Promise((r) => setTimeout(r, 150));
    t.equal(answers(), 1, "one answer");
  }
  const silent = await server(t, () => undefined);
  const quiet = await copies({ address: "127.0.0.1", port: silent, timeoutMs: 1000, healthCheck: check }, 2);
  t.match(quiet.a, { alive: false, why: "no answer to the health check" }, "both silent: dead");
  await new Promise((r) => setTimeout(r, 150));
  t.equal(quiet.answers(), 1, "one answer");
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const free = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  const refused = await copies({ address: "127.0.0.1", port: free, timeoutMs: 1000 }, 3);
  t.match(refused.a, { alive: false, why: "ECONNREFUSED" }, "a refusal decides");
});
