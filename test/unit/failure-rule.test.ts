// The decision rule (src/replica/failure/rule.ts): what each kind of evidence must be confirmed
// by before a failover, the hysteresis after a promotion, and what a dead probe answer confirms.
import t from "tap";
import { confirmation, decide, EVIDENCE_PROBE_COPIES } from "../../src/replica/failure/rule.js";
import type { Confirmation } from "../../src/replica/types.js";

const f = { hysteresisMs: 10_000, healthCheckMs: undefined, probes: true };

t.test("confirmed evidence fails over at once, also within the hysteresis window", async (t) => {
  for (const by of [
    "probe refused",
    "unreachable",
    "probe unanswered",
    "health check failed",
    "external",
    "close alone",
  ] as Confirmation[]) {
    t.same(decide(by, f, 100, -Infinity), { act: "fail-over" }, by);
    t.same(decide(by, f, 100, 50), { act: "fail-over" }, `${by}, 50 ms after a promotion`);
  }
});

t.test("the hang budget alone: fails over, except within the window after a promotion", async (t) => {
  t.same(decide("hang budget", f, 20_000, -Infinity), { act: "fail-over" });
  t.same(decide("hang budget", f, 20_000, 10_000), { act: "fail-over" }, "the window just ended");
  t.match(decide("hang budget", f, 15_000, 10_000), {
    act: "withhold",
    until: 20_000,
    why: /5000 ms after a promotion \(hysteresis 10000 ms\)/,
  });
  t.same(decide("hang budget", { ...f, hysteresisMs: 0 }, 10_000, 10_000), { act: "fail-over" }, "no window");
});

t.test(
  "the hang budget with a health check asks it, in the window too; without probes it cannot",
  async (t) => {
    const hc = { ...f, healthCheckMs: 100 };
    t.same(decide("hang budget", hc, 20_000, -Infinity), { act: "check" });
    t.same(decide("hang budget", hc, 15_000, 10_000), { act: "check" }, "its failure is confirmed evidence");
    t.same(decide("hang budget", { ...hc, probes: false }, 20_000, -Infinity), { act: "fail-over" });
  },
);

t.test("what a dead probe answer confirms", async (t) => {
  t.equal(confirmation("ECONNREFUSED", false), "probe refused");
  t.equal(confirmation("ECONNRESET", true), "probe refused");
  t.equal(confirmation("EHOSTUNREACH", false), "unreachable");
  t.equal(confirmation("no answer to the handshake", false), "probe unanswered");
  t.equal(confirmation("no answer to the handshake", true), "probe unanswered", "the check never ran");
  t.equal(confirmation("no answer to the health check", true), "health check failed");
  t.equal(confirmation("wrong answer to the health check", true), "health check failed");
  t.ok(EVIDENCE_PROBE_COPIES >= 2, "more than one handshake before silence is a death");
});
