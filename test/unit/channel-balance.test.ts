// The capture channels are kept within maxSkewUs of each other in capture time: a channel ahead
// of one that is still delivering is paused, and resumed when that one catches up or goes quiet.
import t from "tap";
import { ChannelBalancer } from "../../src/proxy/channel-balance.js";

function setup() {
  let now = 0;
  const timers: Array<{ at: number; fn: () => void }> = [];
  const log: string[] = [];
  const b = new ChannelBalancer(
    50_000,
    5,
    () => now,
    (fn, ms) => {
      const timer = { at: now + ms, fn };
      timers.push(timer);
      return () => {
        const i = timers.indexOf(timer);
        if (i >= 0) timers.splice(i, 1);
      };
    },
  );
  const io = (name: string) => ({
    pause: () => log.push(`${name} paused`),
    resume: () => log.push(`${name} resumed`),
  });
  b.add("client", io("client"));
  b.add("backend", io("backend"));
  const advance = (ms: number) => {
    now += ms;
    for (const timer of timers.splice(0))
      if (timer.at <= now) timer.fn();
      else timers.push(timer);
  };
  return { b, log, advance };
}

t.test("within the skew nothing is paused", async (t) => {
  const { b, log } = setup();
  b.delivered("client", 1_000_000);
  b.delivered("backend", 1_040_000);
  b.delivered("client", 1_010_000);
  t.same(log, []);
  t.notOk(b.paused("backend"));
});

t.test("a channel ahead of an active one is paused until it catches up", async (t) => {
  const { b, log, advance } = setup();
  b.delivered("client", 1_000_000);
  b.delivered("backend", 1_060_000); // 60 ms ahead of a client channel that delivered just now
  t.same(log, ["backend paused"]);
  t.ok(b.paused("backend"));
  advance(1);
  b.delivered("client", 1_005_000); // still 55 ms behind
  t.ok(b.paused("backend"), "still behind: still paused");
  advance(1);
  b.delivered("client", 1_020_000); // 40 ms behind: within the skew
  t.same(log, ["backend paused", "backend resumed"]);
  t.equal(b.stats.pauses, 1);
  t.equal(b.stats.pausedMs, 2);
});

t.test("a quiet channel is not waited for", async (t) => {
  const { b, log, advance } = setup();
  b.delivered("client", 1_000_000);
  advance(6); // the client channel has nothing more to say
  b.delivered("backend", 2_000_000);
  t.same(log, [], "the client channel is idle: the backend goes on");
  b.delivered("client", 1_001_000);
  t.same(log, ["backend paused"], "it delivers again, far behind: the backend waits");
  advance(4);
  t.ok(b.paused("backend"), "4 ms of silence: maybe only a pause in its traffic");
  advance(1);
  t.same(log, ["backend paused", "backend resumed"], "5 ms of silence: resumed by the timer");
  t.equal(b.stats.pausedMs, 5);
});

t.test("two channels never wait for each other; close resumes everything", async (t) => {
  const { b, log } = setup();
  b.delivered("client", 1_000_000);
  b.delivered("backend", 1_100_000);
  b.delivered("client", 900_000); // an older record cannot move a watermark back
  t.same(log, ["backend paused"]);
  t.notOk(b.paused("client"), "the paused channel is nobody's reason to wait");
  b.close();
  t.same(log, ["backend paused", "backend resumed"]);
  t.throws(() => new ChannelBalancer(0, 5), /positive/);
});
