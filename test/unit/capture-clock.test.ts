// The capture clock: per-channel watermarks of capture time, "has every channel passed t", and the
// original's silence measured on the capture clock (the engine's own lag is not the host's silence).
import t from "tap";
import { CaptureClock, type Seen } from "../../src/replica/capture-clock.js";
import { capturePacket as packet } from "../engine-parts.js";

const FRONT = "front"; // the client side's capture channel
const BACK = "back"; // the backend side's

/** A clock that has handled one segment of the original, captured on the back channel at 1 s and
 * handled at 100 ms; `last`: when the original was seen. */
function originalSeen(): { clock: CaptureClock; last: Seen } {
  const clock = new CaptureClock();
  let last: Seen | undefined;
  packet(clock, BACK, 1_000_000, 100, "original", () => (last = clock.seen(100)));
  return { clock, last: last! };
}

t.test("a channel's watermark only moves forward", async (t) => {
  const clock = new CaptureClock();
  t.equal(clock.watermarkOf("client"), -Infinity, "nothing seen: no watermark");
  packet(clock, FRONT, 5000, 1, "client");
  t.equal(clock.watermarkOf("client"), 5000);
  // Packets captured on different CPUs reach the ring slightly out of order.
  packet(clock, FRONT, 3000, 2);
  t.equal(clock.watermarkOf("client"), 5000, "an older capture time does not move it back");
  packet(clock, FRONT, 7000, 3);
  t.equal(clock.watermarkOf("client"), 7000);
  t.equal(clock.watermarkOf("original"), -Infinity, "the original's channel is not known yet");
  packet(clock, BACK, 1000, 4, "original");
  t.equal(clock.watermarkOf("original"), 1000, "each channel has its own");
  t.equal(clock.watermarkOf("client"), 7000);
});

t.test("the channel of a side is the one that last carried it", async (t) => {
  const clock = new CaptureClock();
  packet(clock, FRONT, 9000, 1, "client");
  packet(clock, BACK, 2000, 2);
  t.equal(clock.watermarkOf("client"), 9000);
  packet(clock, BACK, 2500, 3, "client");
  t.equal(clock.watermarkOf("client"), 2500, "read from the channel that carries it now");
  // carries() without capture times changes nothing.
  clock.carries("client", undefined);
  t.equal(clock.watermarkOf("client"), 2500);
});

t.test("passed(us) needs every channel to have delivered something captured at or after us", async (t) => {
  const clock = new CaptureClock();
  t.ok(clock.passed(123), "no channel: nothing to wait for");
  packet(clock, FRONT, 5000, 1);
  packet(clock, BACK, 3000, 1);
  t.ok(clock.passed(3000), "at the slower channel's watermark");
  t.notOk(clock.passed(3001), "the slower channel is behind");
  t.notOk(clock.passed(5000));
  packet(clock, BACK, 6000, 2);
  t.ok(clock.passed(5000), "both beyond now");
  t.notOk(clock.passed(5001), "the front channel is behind now");
  packet(clock, "third", 100, 3);
  t.notOk(clock.passed(5000), "a new channel must pass too");
});

t.test("captureUs, nowUs and seen() describe the segment being handled", async (t) => {
  const clock = new CaptureClock();
  clock.begin({ channel: FRONT, timeUs: 1_234_567 }, 50);
  t.equal(clock.captureUs, 1_234_567);
  t.equal(clock.nowUs(50), 1_234_567, "its capture time, not the engine's");
  t.same(clock.seen(50), { at: 50, captureUs: 1_234_567 });
  clock.end();
  t.equal(clock.captureUs, undefined, "between segments there is none");
  t.equal(clock.nowUs(50), 50_000, "the engine's time in µs stands in");
  t.same(clock.seen(60), { at: 60, captureUs: undefined });
  clock.begin({ channel: FRONT, timeUs: 9 }, 70);
  clock.begin(undefined, 71); // one ordered stream: no capture time carries over
  t.equal(clock.captureUs, undefined);
  t.equal(clock.nowUs(71), 71_000);
});

t.test("silentMs without capture times: the engine's clock", async (t) => {
  const clock = new CaptureClock();
  t.equal(clock.silentMs(undefined, 100), Infinity, "never heard: silent forever");
  t.equal(clock.silentMs({ at: 40, captureUs: undefined }, 100), 60);
  // A capture time but no channel known to carry the original: still the engine's clock.
  packet(clock, FRONT, 10_000_000, 90, "client");
  t.equal(clock.silentMs({ at: 40, captureUs: 1_000_000 }, 100), 60);
});

t.test("silentMs with capture times: the capture clock of the original's channel", async (t) => {
  const { clock, last } = originalSeen();
  // The engine lags: it handles the next backend packet 300 ms later, captured 250 ms later.
  packet(clock, BACK, 1_250_000, 400);
  t.equal(clock.silentMs(last, 400), 250, "the capture clock says 250 ms, not the engine's 300");
  // A later packet on another channel proves nothing about the original's channel.
  packet(clock, FRONT, 9_000_000, 400, "client");
  t.equal(clock.silentMs(last, 400), 250);
});

t.test("silentMs: an idle channel adds real time", async (t) => {
  const { clock, last } = originalSeen();
  t.equal(clock.silentMs(last, 100), 0);
  // Nothing arrives on the channel: the time since it last delivered counts as silence.
  t.equal(clock.silentMs(last, 180), 80);
  packet(clock, BACK, 1_200_000, 500);
  t.equal(clock.silentMs(last, 500), 200, "a packet resets the idle part to the capture clock");
  t.equal(clock.silentMs(last, 530), 230);
  // Packets on other channels do not make the original's channel less idle.
  packet(clock, FRONT, 5_000_000, 600);
  t.equal(clock.silentMs(last, 600), 300);
});
