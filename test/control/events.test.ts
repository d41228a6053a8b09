// The event hub: publishing never waits for a client; a client that cannot keep up is dropped
// and counted while the others get everything; reconnecting clients are replayed what they missed.
import t from "tap";
import { Writable } from "node:stream";
import { EventHub } from "../../src/control/events.js";

/** A stream sink that keeps what it received; `stalled` ones never finish a write. */
function sink(opts: { stalled?: boolean; highWaterMark?: number } = {}) {
  const chunks: string[] = [];
  const w = new Writable({
    highWaterMark: opts.highWaterMark ?? 16 * 1024,
    decodeStrings: false,
    write(chunk: string | Buffer, _enc, cb) {
      chunks.push(String(chunk));
      if (!opts.stalled) cb();
    },
  });
  return { w, chunks, text: () => chunks.join("") };
}

const ids = (text: string) => [...text.matchAll(/^id: (\d+)$/gm)].map((m) => Number(m[1]));

t.test("every client gets every event, in order, as SSE", async (t) => {
  const hub = new EventHub({ heartbeatMs: 0 });
  t.teardown(() => hub.close());
  const a = sink();
  const b = sink();
  hub.attach(a.w);
  hub.attach(b.w);
  hub.publish("promoted", { replica: "r1", spliced: 3 });
  hub.publish("roles", { original: { address: "10.0.0.1" } });
  t.match(a.text(), /^retry: 2000\n\n/);
  t.match(
    a.text(),
    'id: 1\nevent: promoted\ndata: {"type":"promoted","replica":"r1","spliced":3}\n\nid: 2\nevent: roles\n',
  );
  t.equal(a.text(), b.text());
  t.equal(hub.clientCount, 2);
  a.w.destroy();
  await new Promise((r) => setImmediate(r));
  t.equal(hub.clientCount, 1, "a closed client is forgotten");
});

t.test("a slow client is dropped and counted; the others get everything; publish never waits", async (t) => {
  const hub = new EventHub({ heartbeatMs: 0, maxQueued: 50 });
  t.teardown(() => hub.close());
  const fast = sink();
  const slow = sink({ stalled: true, highWaterMark: 1024 });
  hub.attach(fast.w);
  hub.attach(slow.w);
  const payload = { conn: "10.0.0.2:40000", replica: "r2", reason: "x".repeat(200) };
  let worstMs = 0;
  for (let i = 0; i < 2000; i++) {
    const t0 = performance.now();
    hub.publish("diverged", payload);
    worstMs = Math.max(worstMs, performance.now() - t0);
  }
  t.equal(hub.dropped, 1, "the stalled client was dropped");
  t.ok(slow.w.destroyed, "and disconnected");
  t.equal(hub.clientCount, 1);
  const received = ids(fast.text());
  t.equal(received.length, 2000, "the fast client got every event");
  t.same(received.slice(0, 3), [1, 2, 3]);
  t.ok(
    slow.text().length < 1024 + 300,
    `the stalled client's socket got no more than its buffer (${slow.text().length} bytes)`,
  );
  t.ok(worstMs < 20, `each publish returned at once (worst ${worstMs.toFixed(2)} ms)`);
});

t.test("a client that is only briefly slow catches up without loss", async (t) => {
  const hub = new EventHub({ heartbeatMs: 0, maxQueued: 100 });
  t.teardown(() => hub.close());
  const held: Array<() => void> = [];
  const chunks: string[] = [];
  const w = new Writable({
    highWaterMark: 256,
    decodeStrings: false,
    write(chunk: string | Buffer, _enc, cb) {
      chunks.push(String(chunk));
      held.push(cb);
    },
  });
  hub.attach(w);
  for (let i = 0; i < 60; i++) hub.publish("lagging", { conn: `c${i}`, reason: "y".repeat(40) });
  t.equal(hub.dropped, 0, "within its queue bound");
  while (held.length > 0) {
    held.shift()!();
    await new Promise((r) => setImmediate(r));
  }
  t.same(
    ids(chunks.join("")),
    Array.from({ length: 60 }, (_, i) => i + 1),
    "every event, in order",
  );
});

t.test("Last-Event-ID replays what is still in the ring; clients are bounded", async (t) => {
  const hub = new EventHub({ heartbeatMs: 0, replay: 5, maxClients: 2 });
  t.teardown(() => hub.close());
  for (let i = 0; i < 8; i++) hub.publish("history", { n: i });
  const late = sink();
  hub.attach(late.w, 5);
  t.same(ids(late.text()), [6, 7, 8], "events after id 5");
  const old = sink();
  hub.attach(old.w, 1);
  t.same(ids(old.text()), [4, 5, 6, 7, 8], "as far back as the ring goes");
  t.throws(() => hub.attach(sink().w), /2 event stream clients already/);
});

t.test("heartbeats keep idle streams open", async (t) => {
  const hub = new EventHub({ heartbeatMs: 20 });
  t.teardown(() => hub.close());
  const s = sink();
  hub.attach(s.w);
  await new Promise((r) => setTimeout(r, 70));
  t.ok((s.text().match(/^: keep-alive$/gm) ?? []).length >= 2);
});
