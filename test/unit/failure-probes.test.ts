// ProbeBook (src/replica/failure/probes.ts): the probes asked of the I/O edge and not answered
// yet, when each target was last probed and last found alive, and dead answers waiting for the
// capture channels. Mechanism only: what the answers mean is detector.ts's business.
import t from "tap";
import { CANDIDATE, PERIODIC, ProbeBook, type PendingProbe } from "../../src/replica/failure/probes.js";
import { Outbox } from "../../src/replica/outbox.js";
import type { EngineOutput } from "../../src/replica/types.js";
import { ORIGINAL, R1, R2 } from "../engine-parts.js";

type ProbeOutput = Extract<EngineOutput, { type: "probe" }>;

function book(): { outbox: Outbox; probes: ProbeBook } {
  const outbox = new Outbox();
  return { outbox, probes: new ProbeBook(outbox) };
}

/** The probe outputs drained from the outbox (ProbeBook emits nothing else: anything else throws). */
function asked(outbox: Outbox): ProbeOutput[] {
  return outbox.drain().map((o) => {
    if (o.type !== "probe") throw new Error(`unexpected output ${o.type}`);
    return o;
  });
}

function deadVerdict(probe: PendingProbe): ProbeBook["deadVerdicts"][number] {
  return { probe, why: "ECONNREFUSED", sentUs: undefined, receivedAt: probe.sentAt + 1 };
}

t.test("request emits a probe output naming the target, its address and a whole-ms deadline", async (t) => {
  const { outbox, probes } = book();
  probes.request("original", ORIGINAL, "the original closed alone", 100, 5.2);
  const out = outbox.drain();
  t.same(
    out,
    [
      {
        type: "probe",
        id: 1,
        target: "original",
        address: ORIGINAL,
        // The I/O edge works in whole ms: a fractional deadline is rounded up, never down.
        timeoutMs: 6,
        reason: "the original closed alone",
        periodic: false,
      },
    ],
    "one probe output, exactly as asked",
  );
  t.equal(probes.counters.sent, 1);
  t.equal(probes.lastProbe("original"), 100, "when the target was last probed");
  t.equal(probes.lastProbe("r1"), -Infinity, "never probed");

  probes.request("r1", R1, `replica r1: ${PERIODIC}`, 101, 20);
  t.match(
    asked(outbox),
    [{ id: 2, target: "r1", address: R1, timeoutMs: 20, periodic: true }],
    "another target gets its own probe and id; a periodic reason is flagged periodic",
  );
  probes.request("r2", R2, "replica r2 stopped acknowledging", 102, 7, true);
  t.match(
    asked(outbox),
    [{ id: 3, target: "r2", periodic: true }],
    "a patient retry is flagged for the edge like a periodic probe (the health check gets longer)",
  );
});

t.test("a target with a probe under way is not asked twice", async (t) => {
  const { outbox, probes } = book();
  probes.request("original", ORIGINAL, "evidence one", 10, 5);
  t.equal(asked(outbox).length, 1);
  probes.request("original", ORIGINAL, "evidence two", 12, 5);
  t.same(asked(outbox), [], "a second evidence probe waits for the first");
  probes.request("original", ORIGINAL, PERIODIC, 13, 20);
  t.same(asked(outbox), [], "a periodic probe waits for an evidence one");
  t.equal(probes.counters.sent, 1, "nothing counted as sent");
  t.equal(probes.lastProbe("original"), 10, "the last probe time is the one really sent");
});

t.test("an evidence probe does not wait for a periodic one", async (t) => {
  const { outbox, probes } = book();
  probes.request("r1", R1, `replica r1: ${PERIODIC}`, 0, 80);
  t.equal(asked(outbox).length, 1);
  probes.request("r1", R1, `replica r1: ${PERIODIC}`, 1, 80);
  t.same(asked(outbox), [], "a second periodic probe waits for the first");
  // Evidence cannot wait for a periodic probe's 4 × longer deadline.
  probes.request("r1", R1, "replica r1 reset a connection", 2, 5);
  t.match(asked(outbox), [{ id: 2, target: "r1", timeoutMs: 5, periodic: false }]);
  probes.request("r1", R1, "replica r1 closed a connection", 3, 5);
  t.same(asked(outbox), [], "but evidence waits for evidence");
  t.equal(probes.counters.sent, 2);
  t.equal(probes.lastProbe("r1"), 2);
});

t.test("take() hands a pending probe over once", async (t) => {
  const { outbox, probes } = book();
  probes.request("original", ORIGINAL, "why", 40, 4.5, true);
  const [p] = asked(outbox);
  t.same(
    probes.take(p!.id),
    { target: "original", sentAt: 40, reason: "why", periodic: false, patient: true, timeoutMs: 4.5 },
    "the pending probe as asked (its deadline unrounded)",
  );
  t.equal(probes.take(p!.id), undefined, "answered already");
  t.equal(probes.take(999), undefined, "never asked");
  probes.request("original", ORIGINAL, "why again", 50, 5);
  t.equal(asked(outbox).length, 1, "once taken, the target can be asked again");
});

t.test("markAlive keeps the latest send time of an alive probe", async (t) => {
  const { probes } = book();
  t.equal(probes.aliveSince("r1"), -Infinity, "never found alive");
  probes.markAlive("r1", 10);
  t.equal(probes.aliveSince("r1"), 10);
  // Answers can arrive out of order: an older probe answered late must not move it back.
  probes.markAlive("r1", 5);
  t.equal(probes.aliveSince("r1"), 10, "an older answer does not move it back");
  probes.markAlive("r1", 20);
  t.equal(probes.aliveSince("r1"), 20);
  t.equal(probes.aliveSince("original"), -Infinity, "per target");
});

t.test("forget() removes everything about one target and nothing else", async (t) => {
  const { outbox, probes } = book();
  probes.request("r1", R1, "replica r1 reset a connection", 1, 5);
  probes.request("r2", R2, "replica r2 reset a connection", 2, 5);
  asked(outbox);
  probes.markAlive("r1", 1);
  probes.markAlive("r2", 2);
  probes.passedOver.add("r1");
  probes.passedOver.add("r2");

  probes.forget("r1");
  t.equal(probes.aliveSince("r1"), -Infinity);
  t.equal(probes.lastProbe("r1"), -Infinity);
  t.notOk(probes.passedOver.has("r1"));
  t.notOk(probes.doubted().has("r1"), "its pending probe is gone");
  probes.request("r1", R1, "replica r1 (re-added) reset a connection", 3, 5);
  t.equal(asked(outbox).length, 1, "nothing pending blocks a new probe");

  t.equal(probes.aliveSince("r2"), 2, "the other target's state stays");
  t.equal(probes.lastProbe("r2"), 2);
  t.ok(probes.passedOver.has("r2"));
  probes.request("r2", R2, "replica r2 closed a connection", 4, 5);
  t.same(asked(outbox), [], "the other target's probe is still pending");
});

t.test("forgetOriginal() drops what was asked or known about the old original", async (t) => {
  const { outbox, probes } = book();
  probes.request("original", ORIGINAL, "evidence", 1, 5);
  probes.request("r1", R1, "replica r1 reset a connection", 1, 5);
  const [po, pr] = asked(outbox);
  const original = probes.take(po!.id)!;
  probes.deadVerdicts.push(deadVerdict(original));
  // A replica's verdict sits between two of the original's: only those two go.
  const replica = { ...original, target: "r2" };
  probes.deadVerdicts.push(deadVerdict(replica));
  probes.deadVerdicts.push(deadVerdict({ ...original, sentAt: 3 }));
  probes.request("original", ORIGINAL, "more evidence", 5, 5);
  t.equal(asked(outbox).length, 1, "a second probe of the original is pending");
  probes.markAlive("original", 4);
  probes.markAlive("r1", 4);

  probes.forgetOriginal();
  t.same(
    probes.deadVerdicts.map((v) => v.probe.target),
    ["r2"],
    "the original's dead verdicts are gone, the replica's stays",
  );
  t.equal(probes.aliveSince("original"), -Infinity);
  t.equal(probes.lastProbe("original"), -Infinity);
  t.notOk(probes.doubted().has("original"), "its pending probe is gone");
  probes.request("original", ORIGINAL, "evidence against the new original", 6, 5);
  t.equal(asked(outbox).length, 1, "the new original can be probed at once");

  t.equal(probes.aliveSince("r1"), 4, "replicas are not touched");
  t.ok(probes.doubted().has("r1"));
  t.ok(probes.take(pr!.id), "the replica's probe is still pending");
});

t.test("dying() and doubted()", async (t) => {
  const { outbox, probes } = book();
  t.same([...probes.dying()], []);
  t.same([...probes.doubted()], []);
  probes.request("original", ORIGINAL, PERIODIC, 0, 20);
  probes.request("r1", R1, `replica r1: ${PERIODIC}`, 0, 20);
  probes.request("r2", R2, `replica r2: ${CANDIDATE}`, 0, 5);
  asked(outbox);
  t.same([...probes.doubted()], [], "periodic and candidate probes doubt nobody");
  probes.request("r1", R1, "replica r1 refused a connection", 1, 5);
  probes.request("original", ORIGINAL, "the original closed alone", 1, 5);
  const [ev] = asked(outbox);
  t.same([...probes.doubted()].sort(), ["original", "r1"], "targets probed because of evidence");

  const p = probes.take(ev!.id)!;
  t.notOk(probes.doubted().has("r1"), "an answered probe doubts no more");
  probes.deadVerdicts.push(deadVerdict(p));
  probes.deadVerdicts.push(deadVerdict({ ...p, sentAt: 2 }));
  t.same([...probes.dying()], ["r1"], "targets with a dead answer awaiting its verdict, once each");
});
