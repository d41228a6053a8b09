// FailureDetector (src/replica/failure/detector.ts), what a probe's answer means: alive explains
// older evidence; one silent periodic probe of a replica is asked again patiently and removes
// nothing; a refusal removes a replica; a dead answer about the original waits for the capture
// channels (or CATCH_UP_MS) before the failure is signalled; during a planned hold it is no verdict.
import t from "tap";
import { CATCH_UP_MS, FailureDetector } from "../../src/replica/failure/detector.js";
import type { Verdict } from "../../src/replica/failure/evidence.js";
import { CANDIDATE, PERIODIC } from "../../src/replica/failure/probes.js";
import type { ShadowConversation } from "../../src/replica/shadow.js";
import type { EngineConfig, EngineEvent, EngineOutput } from "../../src/replica/types.js";
import { ACK, RST } from "../../src/wire/tcp.js";
import {
  CPORT,
  EngineParts,
  ORIGINAL,
  R1,
  capturePacket,
  earliest,
  failureConfig,
  fromService,
  openConnection,
  openShadow,
} from "../engine-parts.js";

type ProbeOutput = Extract<EngineOutput, { type: "probe" }>;

/** The detector with the engine's parts around it; the actions do what the engine's do. */
class World extends EngineParts {
  readonly detector: FailureDetector;
  readonly removed: string[] = [];
  readonly promotions: Array<[string, number]> = [];
  fences = 0;
  original = ORIGINAL;
  /** Every event seen so far (drain() collects them). */
  readonly seen: EngineEvent[] = [];

  constructor(failure: Partial<EngineConfig["failure"]> = {}, replicas = ["r1"]) {
    super({ config: { failure: failureConfig({ probes: true, ...failure }) }, replicas });
    this.detector = new FailureDetector(
      this.cfg,
      this.clock,
      this.table,
      this.replicas,
      this.outbox,
      () => this.original,
      {
        fence: () => this.fences++,
        promote: (id, now, _wait, confirmedBy, reason) => {
          // As ReplicationEngine.promote does (the splice aside).
          this.promotions.push([id, now]);
          this.replicas.promote(id);
          this.detector.promoted(this.original, now, confirmedBy, reason);
          this.original = this.replicas.get(id)!.info.address;
        },
        removeReplica: (id) => {
          // As ReplicationEngine.removeReplica does (the shadows aside).
          this.removed.push(id);
          this.detector.replicaRemoved(id);
          this.replicas.remove(id);
        },
        releaseSplicedFin: () => undefined,
      },
    );
  }

  drain(): { probes: ProbeOutput[]; events: EngineEvent[] } {
    const probes: ProbeOutput[] = [];
    const events: EngineEvent[] = [];
    for (const o of this.outbox.drain()) {
      if (o.type === "probe") probes.push(o);
      else if (o.type === "event") events.push(o.event);
    }
    this.seen.push(...events);
    return { probes, events };
  }

  endTick(now: number, suspect?: Verdict): number | undefined {
    return earliest((want) =>
      this.detector.endTick(now, this.detector.holding(now), undefined, suspect, want),
    ).next;
  }

  settle(now: number): number | undefined {
    return earliest((want) => this.detector.settle(now, want)).next;
  }

  /** A captured packet on `channel`, captured at `ms` (µs on the capture clock). */
  captured(channel: string, ms: number, now = ms): void {
    capturePacket(this.clock, channel, ms * 1000, now);
  }

  /** Evidence against the original, as a tick's inspection would report it. */
  suspectOriginal(
    now: number,
    reason = "the original closed a connection its replicas keep open",
  ): ProbeOutput {
    this.endTick(now, { verdict: "suspect", reason, conn: openConnection(), afterMs: 2 });
    const p = this.drain().probes.find((x) => x.target === "original");
    if (!p) throw new Error("the original was not probed");
    return p;
  }

  shadow(id: string): ShadowConversation {
    return openShadow(id);
  }

  failures(): EngineEvent[] {
    return this.seen.filter((e) => e.type === "original-failure");
  }
}

t.test("alive clears the suspicion of a replica whose evidence predates the probe", async (t) => {
  const w = new World({}, ["r1", "r2"]);
  w.replicas.get("r1")!.lastSrttMs = 1;
  w.replicas.get("r2")!.lastSrttMs = 5;
  t.equal(w.detector.election.bestReplica(), "r1", "control: r1 has the lower SRTT");
  w.detector.suspectReplica(w.shadow("r1"), 10, "stall", "stopped acknowledging");
  t.equal(w.detector.election.bestReplica(), "r2", "suspected: r2 is preferred");
  w.endTick(10);
  const [p] = w.drain().probes;
  t.match(p, { target: "r1", reason: "replica r1 stopped acknowledging", timeoutMs: 5 });
  w.detector.probeResult(p!.id, true, 12);
  t.match(w.drain().events, [{ type: "probe-result", target: "r1", alive: true, afterMs: 2 }]);
  t.equal(w.detector.election.bestReplica(), "r1", "explained: trusted again");
  t.equal(w.detector.probes.aliveSince("r1"), 10);
  w.endTick(100);
  t.same(w.drain().probes, [], "not probed again");
  t.same(w.removed, []);
});

t.test("evidence newer than the alive probe keeps the suspicion (re-armed)", async (t) => {
  const w = new World({}, ["r1", "r2"]);
  w.replicas.get("r1")!.lastSrttMs = 1;
  w.replicas.get("r2")!.lastSrttMs = 5;
  w.detector.suspectReplica(w.shadow("r1"), 10, "stall", "stopped acknowledging");
  w.endTick(10);
  const [p] = w.drain().probes;
  w.detector.suspectReplica(w.shadow("r1"), 11, "rst", "reset a connection"); // after the probe
  w.detector.probeResult(p!.id, true, 12);
  t.equal(w.detector.election.bestReplica(), "r2", "still suspected");
  w.endTick(30); // the evidence probe rate limit (20 ms since 10) has passed
  t.match(w.drain().probes, [{ target: "r1", reason: "replica r1 stopped acknowledging" }], "asked again");
});

t.test("a first silent periodic probe of a replica is asked again patiently; nothing removed", async (t) => {
  const w = new World({ probeIntervalMs: 500 });
  w.endTick(0);
  const first = w.drain().probes;
  t.same(
    first.map((p) => [p.target, p.reason, p.timeoutMs]),
    [
      ["original", PERIODIC, 20],
      ["r1", `replica r1: ${PERIODIC}`, 20],
    ],
    "periodic probes of every backend, 4 × the probe timeout",
  );
  const periodic = first[1]!;
  w.detector.probeResult(periodic.id, false, 20, "timeout");
  const { probes: again, events } = w.drain();
  t.match(events, [{ type: "probe-result", target: "r1", alive: false }]);
  t.equal(again.length, 1, "asked again at once");
  t.match(again[0], { target: "r1", address: R1, periodic: true });
  t.equal(again[0]!.reason, `replica r1: ${PERIODIC} unanswered`);
  // A lost SYN is retransmitted after 1 s: the patient deadline covers it.
  t.ok(again[0]!.timeoutMs >= 1500, `patient deadline ${again[0]!.timeoutMs} ms >= 1500`);
  t.same(w.removed, [], "silence once removes nothing");
  t.ok(w.replicas.has("r1"));
  t.same(w.detector.probes.counters, { sent: 3, alive: 0, dead: 0, unknown: 1 });

  // Silent again: now it is a verdict.
  w.detector.probeResult(again[0]!.id, false, 1600, "timeout");
  t.same(w.removed, ["r1"], "silent twice: removed");
  t.match(w.drain().events, [
    { type: "probe-result", target: "r1" },
    {
      type: "replica-failure",
      replica: "r1",
      reason: /periodic probe unanswered; probe of its service port: timeout/,
    },
    { type: "no-replica-left" },
  ]);
  t.equal(w.detector.replicasFailed, 1);
});

t.test("the patient deadline of a slow replica is 4 × its own", async (t) => {
  const w = new World({ probeIntervalMs: 500 });
  w.replicas.get("r1")!.lastSrttMs = 200; // timeout 4 × max(5, 4 × 200) = 3200
  w.endTick(0);
  const p = w.drain().probes.find((x) => x.target === "r1")!;
  t.equal(p.timeoutMs, 3200);
  w.detector.probeResult(p.id, false, 3200, "timeout");
  t.equal(w.drain().probes[0]?.timeoutMs, 12_800);
});

t.test("a refusal (ECONNREFUSED) of a replica removes it at once", async (t) => {
  const w = new World({ probeIntervalMs: 500 }, ["r1", "r2"]);
  w.endTick(0);
  const p = w.drain().probes.find((x) => x.target === "r1")!;
  w.detector.probeResult(p.id, false, 1, "ECONNREFUSED");
  t.same(w.removed, ["r1"], "via actions.removeReplica");
  t.notOk(w.replicas.has("r1"));
  const { events, probes } = w.drain();
  t.match(events, [
    { type: "probe-result", target: "r1", alive: false },
    { type: "replica-failure", replica: "r1", reason: /ECONNREFUSED/ },
  ]);
  t.equal(events.length, 2, "r2 is left: no no-replica-left");
  t.same(probes, [], "no second try: the kernel said nothing listens");
  t.equal(w.detector.replicasFailed, 1);
  t.same(w.detector.probes.counters, { sent: 3, alive: 0, dead: 1, unknown: 0 });
});

t.test(
  "a dead answer about the original waits for every capture channel to pass its send time",
  async (t) => {
    const w = new World({ autoFailover: false });
    w.captured("client", 1000);
    w.captured("backend", 1000);
    const p = w.suspectOriginal(1000);
    t.equal(p.timeoutMs, 5);
    const sentUs = 1_000_500;
    w.detector.probeResult(p.id, false, 1003, "ECONNREFUSED", sentUs);
    t.same(w.failures(), [], "a channel may still carry something captured before the probe");
    t.equal(w.detector.probes.dying().has("original"), true);
    t.equal(w.settle(1003), 1004, "looked at again every ms");
    w.captured("client", 1001, 1004);
    w.settle(1004);
    w.drain();
    t.same(w.failures(), [], "one channel passed, the other has not");
    w.captured("backend", 1000.5, 1005); // exactly the send time: everything before it is in
    w.settle(1005);
    w.drain();
    t.match(w.failures(), [
      {
        type: "original-failure",
        reason:
          "the original closed a connection its replicas keep open; probe of its service port: ECONNREFUSED",
        conn: "",
        afterMs: 5,
      },
    ]);
    t.ok(w.detector.election.failureSignaled);
    t.equal(w.detector.probes.deadVerdicts.length, 0);
  },
);

t.test("a dead answer about the original acts after CATCH_UP_MS if a channel stays behind", async (t) => {
  const w = new World({ autoFailover: false });
  w.captured("client", 1000);
  w.captured("backend", 1000);
  const p = w.suspectOriginal(1000);
  w.detector.probeResult(p.id, false, 1002, "timeout", 1_001_000);
  t.equal(w.settle(1002 + CATCH_UP_MS - 1), 1002 + CATCH_UP_MS, "want: never past the deadline");
  w.drain();
  t.same(w.failures(), []);
  w.settle(1002 + CATCH_UP_MS);
  w.drain();
  t.match(w.failures(), [{ type: "original-failure", reason: /probe of its service port: timeout/ }]);
});

t.test("with autoFailover, the candidate probed with the original is promoted on the verdict", async (t) => {
  const w = new World({ autoFailover: true });
  w.captured("client", 1000);
  w.captured("backend", 1000);
  w.endTick(1000, {
    verdict: "suspect",
    reason: "the original stopped acknowledging the client's bytes",
    conn: openConnection(),
    afterMs: 3,
  });
  const { probes } = w.drain();
  t.same(
    probes.map((p) => [p.target, p.reason]),
    [
      ["original", "the original stopped acknowledging the client's bytes"],
      ["r1", `replica r1: ${CANDIDATE}`],
    ],
    "the original and, at the same moment, its successor",
  );
  w.detector.probeResult(probes[1]!.id, true, 1001);
  t.same(w.promotions, [], "an alive candidate alone promotes nothing");
  w.detector.probeResult(probes[0]!.id, false, 1002, "ECONNREFUSED", 1_000_000);
  t.same(w.promotions, [["r1", 1002]], "its answer was there already: promoted on the verdict");
});

t.test(
  "a silent probe of the original with evidence is a verdict; a periodic one is asked again",
  async (t) => {
    const w = new World({ probeIntervalMs: 500, autoFailover: false });
    w.endTick(0);
    const periodic = w.drain().probes.find((p) => p.target === "original")!;
    w.detector.probeResult(periodic.id, false, 20, "timeout");
    const again = w.drain().probes;
    t.match(
      again,
      [{ target: "original", reason: `${PERIODIC} unanswered`, timeoutMs: 1500, periodic: true }],
      "asked again patiently: no client waits on a periodic probe",
    );
    t.same(w.failures(), [], "one unanswered periodic probe is no failure");
    w.detector.probeResult(again[0]!.id, false, 40, "timeout");
    w.drain();
    t.equal(w.failures().length, 1, "silent twice: failed");

    const e = new World({ autoFailover: false });
    const p = e.suspectOriginal(0);
    e.detector.probeResult(p.id, false, 5, "timeout");
    e.drain();
    t.equal(e.failures().length, 1, "with evidence, silence within the deadline is a verdict at once");
  },
);

t.test("a dead answer about the original during a planned hold is no verdict", async (t) => {
  const w = new World({ autoFailover: false });
  const before = w.suspectOriginal(0); // asked just before the pause
  w.detector.holdOriginal(100, 1);
  w.detector.probeResult(before.id, false, 2, "ECONNREFUSED");
  w.drain();
  t.same(w.failures(), [], "the original is paused on purpose");
  t.equal(w.detector.probes.counters.unknown, 1, "counted as no verdict");
  t.notOk(w.detector.election.failureSignaled);
  t.equal(w.detector.probes.deadVerdicts.length, 0, "and forgotten");

  // A refusal during the hold is probed; its dead answer arrives after the release.
  w.detector.originalRefused(fromService(CPORT, { flags: RST | ACK }), 50);
  const during = w.drain().probes.find((p) => p.target === "original")!;
  t.ok(during, "probed during the hold");
  w.detector.releaseHold(60);
  w.detector.probeResult(during.id, false, 70, "ECONNREFUSED");
  w.drain();
  t.same(w.failures(), [], "asked while the original was paused: still no verdict");
  t.equal(w.detector.probes.counters.unknown, 2);

  // Control: asked after the hold, the same answer is a verdict.
  const after = w.suspectOriginal(80);
  w.detector.probeResult(after.id, false, 81, "ECONNREFUSED");
  w.drain();
  t.equal(w.failures().length, 1, "after the hold a dead answer is a failure");
});

t.test("no evidence probe of the original while it is on hold", async (t) => {
  const w = new World({ autoFailover: false, probeIntervalMs: 500 });
  w.detector.holdOriginal(100, 0);
  const next = w.endTick(10, {
    verdict: "suspect",
    reason: "the original stopped acknowledging the client's bytes",
    conn: openConnection(),
    afterMs: 3,
  });
  t.same(
    w.drain().probes.map((p) => p.target),
    ["r1"],
    "evidence and the periodic probe of the original wait; replicas are still probed",
  );
  t.equal(next, 100, "want: the end of the hold");
  w.endTick(100);
  t.same(
    w.drain().probes.map((p) => [p.target, p.reason]),
    [["original", PERIODIC]],
    "the periodic probe once the hold ended",
  );
});

// ---------------------------------------------------------------- the decision rule (issue 16)

/** A stall past the hang budget, as a tick's inspection reports it. */
const hang = (afterMs = 1000): Extract<Verdict, { verdict: "failed" }> => ({
  verdict: "failed",
  reason: "the original stopped answering what the replicas answer",
  conn: openConnection(),
  afterMs,
  by: "hang budget",
});

function failedTick(w: World, now: number, failed: Verdict): number | undefined {
  return earliest((want) => w.detector.endTick(now, w.detector.holding(now), failed, undefined, want)).next;
}

/** Promotes r1 on a refused probe at `now` (a confirmed failover). */
function failOver(w: World, now: number): void {
  w.captured("client", now);
  w.captured("backend", now);
  w.endTick(now, { verdict: "suspect", reason: "test", conn: openConnection(), afterMs: 3 });
  const asked = w.drain().probes;
  const original = asked.find((x) => x.target === "original")!;
  const candidate = asked.find((x) => x.reason.endsWith(CANDIDATE))!;
  w.detector.probeResult(candidate.id, true, now);
  w.detector.probeResult(original.id, false, now, "ECONNREFUSED", now * 1000);
}

t.test("evidence probes of the original are three parallel handshakes, without a health check", async (t) => {
  const w = new World({ healthCheckMs: 50 });
  const p = w.suspectOriginal(10);
  t.match(p, { target: "original", copies: 3 }, "one lost SYN is no death");
  t.equal(p.checkMs, undefined, "a paused application must not be confirmed dead by a short check");
});

t.test(
  "a stall past the hang budget fails over without a health check, confirmed by 'hang budget'",
  async (t) => {
    const w = new World({ autoFailover: false });
    failedTick(w, 2000, hang());
    w.drain();
    t.match(w.failures(), [{ type: "original-failure", confirmedBy: "hang budget", afterMs: 1000 }]);
  },
);

t.test(
  "with a health check, the hang budget asks it: answered, no failure; silent, a failover",
  async (t) => {
    const w = new World({ autoFailover: false, healthCheckMs: 50 });
    failedTick(w, 2000, hang());
    const [check] = w.drain().probes;
    t.match(check, { target: "original", checkMs: 50, reason: /\(hang budget\): health check$/ });
    t.equal(w.failures().length, 0, "not before the check answers");
    failedTick(w, 2010, hang(1010));
    t.same(w.drain().probes, [], "one check at a time");
    w.detector.probeResult(check!.id, true, 2020, "health check answered");
    t.equal(w.detector.probes.checkedSince("original"), 2000, "the stall is explained up to the check");
    t.equal(w.failures().length, 0, "the application answers: a slow request, not a hung service");

    const silent = new World({ autoFailover: false, healthCheckMs: 50 });
    silent.captured("client", 2000);
    silent.captured("backend", 2000);
    failedTick(silent, 2000, hang());
    const [c2] = silent.drain().probes;
    silent.detector.probeResult(c2!.id, false, 2050, "no answer to the health check", 2_000_000);
    silent.drain();
    t.match(silent.failures(), [
      {
        type: "original-failure",
        confirmedBy: "health check failed",
        reason: /health check; probe of its service port: no answer to the health check$/,
      },
    ]);
  },
);

t.test("hysteresis: a stall alone does not fail the new original over within the window", async (t) => {
  const w = new World({ autoFailover: true, hysteresisMs: 10_000 }, ["r1", "r2"]);
  failOver(w, 1000);
  t.equal(w.promotions.length, 1, "the first failover (a refused probe)");
  const next = failedTick(w, 3000, hang());
  const { events } = w.drain();
  t.match(
    events.filter((e) => e.type === "failover-withheld"),
    [{ type: "failover-withheld", why: /2000 ms after a promotion \(hysteresis 10000 ms\)/ }],
  );
  t.equal(w.detector.withheld, 1);
  t.equal(w.promotions.length, 1, "withheld");
  t.ok(next !== undefined && next <= 11_000, "looks again when the window ends");
  failedTick(w, 5000, hang(3000));
  t.equal(w.detector.withheld, 1, "one event per window");
  failedTick(w, 11_000, hang(9000));
  w.drain();
  t.equal(w.promotions.length, 1, "after the window the verdict goes to the election (r2 probed first)");
  t.match(w.failures().at(-1), { confirmedBy: "hang budget" });

  // Confirmed evidence within the window still fails over.
  const c = new World({ autoFailover: true, hysteresisMs: 10_000 }, ["r1", "r2"]);
  failOver(c, 1000);
  failOver(c, 1500);
  t.equal(c.promotions.length, 2, "a refused probe 500 ms after a promotion is acted on");
  t.equal(c.detector.withheld, 0);
});

t.test("a replaced original is watched: alive again is a false failover, reported once", async (t) => {
  const w = new World({ autoFailover: true }, ["r1", "r2"]);
  failOver(w, 1000);
  t.match(w.detector.formers, [{ address: "10.0.1.10", state: "watching", confirmedBy: "probe refused" }]);
  w.endTick(1001);
  const [first] = w.drain().probes.filter((p) => p.target.startsWith("former"));
  t.match(first, { target: "former 10.0.1.10", address: ORIGINAL });
  w.detector.probeResult(first!.id, false, 1005, "ECONNREFUSED");
  t.equal(w.detector.formers[0]!.state, "watching", "refused: still dead");
  t.equal(w.promotions.length, 1, "a former original's answer is no verdict about anyone");
  w.endTick(1300);
  t.same(
    w.drain().probes.filter((p) => p.target.startsWith("former")),
    [],
    "every 500 ms",
  );
  w.endTick(1505);
  const [second] = w.drain().probes.filter((p) => p.target.startsWith("former"));
  w.detector.probeResult(second!.id, true, 1506);
  const { events } = w.drain();
  t.match(events, [
    { type: "former-original-alive", address: "10.0.1.10", confirmedBy: "probe refused", afterMs: 506 },
  ]);
  t.equal(w.detector.falseFailovers, 1);
  t.match(w.detector.formers[0], { state: "alive", aliveAfterMs: 506 });
  w.endTick(2100);
  t.same(
    w.drain().probes.filter((p) => p.target.startsWith("former")),
    [],
    "no longer probed",
  );

  const gone = new World({ autoFailover: true }, ["r1", "r2"]);
  failOver(gone, 1000);
  gone.endTick(1000 + 60_000);
  t.equal(gone.detector.formers[0]!.state, "gone", "the watch ends after a minute");
});

t.test("a switchover's former original is not watched; at most 16 are remembered", async (t) => {
  const w = new World({ autoFailover: true }, ["r1"]);
  w.detector.promoted(ORIGINAL, 10, "switchover", "switchover");
  t.same(w.detector.formers, []);
  for (let i = 0; i < 20; i++) w.detector.promoted(ORIGINAL + 100 + i, 20 + i, "probe refused", "test");
  t.equal(w.detector.formers.length, 16);
  t.equal(w.detector.formers[0]!.addr, ORIGINAL + 104, "the oldest forgotten");
});

t.test("the new original's probe deadline starts from its round trip as a replica", async (t) => {
  const w = new World({ autoFailover: true });
  t.equal(w.detector.thresholds().probeTimeoutMs, 5);
  w.detector.promoted(ORIGINAL, 10, "probe refused", "test", 16);
  t.ok(
    w.detector.thresholds().probeTimeoutMs >= 64,
    `4 × its 16 ms RTT (${w.detector.thresholds().probeTimeoutMs} ms), not the LAN floor`,
  );
});

t.test(
  "a suspected original that answers before any verdict is neither fenced nor failed over",
  async (t) => {
    const w = new World({ autoFailover: true }, ["r1"]);
    const p = w.suspectOriginal(10, "the original stopped answering what the replicas answer");
    for (const c of w.drain().probes) w.detector.probeResult(c.id, true, 11);
    w.detector.probeResult(p.id, true, 12, "connected");
    w.endTick(50);
    w.drain();
    t.equal(w.fences, 0, "not fenced");
    t.same(w.promotions, []);
    t.same(w.failures(), []);
  },
);
