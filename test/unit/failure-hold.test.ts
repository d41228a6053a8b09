// PlannedHold (src/replica/failure/hold.ts): a planned pause of the original. Nothing seen while
// it lasts is the original's failure; when it ends the stall clocks restart (at the release time,
// or at the deadline of a hold nobody released); it is bounded by MAX_HOLD_MS.
import t from "tap";
import { MAX_HOLD_MS, PlannedHold } from "../../src/replica/failure/hold.js";

function hold(): { hold: PlannedHold; restarts: number[] } {
  const restarts: number[] = [];
  return { hold: new PlannedHold((now) => restarts.push(now)), restarts };
}

t.test("begin() holds until now + ms; extend only lengthens", async (t) => {
  const { hold: h, restarts } = hold();
  t.equal(h.until, undefined, "no hold");
  t.notOk(h.update(0), "update() without a hold: none on");
  h.begin(100, 1000);
  t.equal(h.until, 1100);
  t.ok(h.update(1050), "still on before its deadline");
  h.begin(300, 1050);
  t.equal(h.until, 1350, "a longer pause extends it");
  h.begin(10, 1100);
  t.equal(h.until, 1350, "a shorter one does not cut it short");
  t.same(restarts, [], "the stall clocks restart only when it ends");
  // The extended hold still starts where the first one did.
  h.release(1200);
  t.ok(h.heldAt(1000, 5000), "covers from the first begin()");
  t.notOk(h.heldAt(999, 5000));
});

t.test("a hold is bounded by MAX_HOLD_MS; a negative one is empty", async (t) => {
  const { hold: h, restarts } = hold();
  h.begin(1e9, 0);
  t.equal(h.until, MAX_HOLD_MS, "a hold that is never released ends by itself");
  h.begin(2 * MAX_HOLD_MS, 5000);
  t.equal(h.until, 5000 + MAX_HOLD_MS, "each extension is bounded too");

  const { hold: empty, restarts: r2 } = hold();
  empty.begin(-5, 100);
  t.equal(empty.until, 100, "a negative pause is no pause");
  t.notOk(empty.update(100), "over at once");
  t.same(r2, [100]);
  t.same(restarts, []);
});

t.test("release() ends the hold and restarts the stall clocks at the release time", async (t) => {
  const { hold: h, restarts } = hold();
  h.release(10);
  t.same(restarts, [], "nothing to release: the stall clocks are not touched");
  h.begin(100, 1000);
  h.release(1040);
  t.same(restarts, [1040], "restarted at the release time, not the deadline");
  t.equal(h.until, undefined);
  t.notOk(h.update(1050));
  t.same(restarts, [1040], "an ended hold does not end again");
  t.ok(h.heldAt(1039, 2000), "the hold covered up to the release");
  t.notOk(h.heldAt(1040, 2000), "not from the release on");
});

t.test("update() ends an expired hold at its deadline", async (t) => {
  const { hold: h, restarts } = hold();
  h.begin(100, 1000);
  t.ok(h.update(1099));
  t.same(restarts, []);
  // The tick comes late (the engine was busy): the stall clocks restart at the deadline, where
  // the pause really ended, not at the late tick.
  t.notOk(h.update(1500));
  t.same(restarts, [1100]);
  t.equal(h.until, undefined);
});

t.test("heldAt: inside the current hold, the previous one, and nowhere else", async (t) => {
  const { hold: h } = hold();
  t.notOk(h.heldAt(0, 0), "never held");
  h.begin(100, 1000);
  t.ok(h.heldAt(1000, 1010), "at its start");
  t.ok(h.heldAt(1099, 1010), "up to its deadline");
  // While the pause lasts, nothing about the original is a verdict, whenever it was asked.
  t.ok(h.heldAt(500, 1010), "before it, but the original is on hold now");
  t.notOk(h.heldAt(1200, 1100), "past the deadline, and no longer on hold now");

  h.update(1100);
  t.ok(h.heldAt(1050, 2000), "the previous hold is remembered");
  t.notOk(h.heldAt(999, 2000), "not before it");
  t.notOk(h.heldAt(1100, 2000), "not at or after its deadline");

  h.begin(50, 3000);
  t.ok(h.heldAt(3010, 3020), "the new hold");
  h.release(3020);
  t.ok(h.heldAt(3010, 4000), "the new one is now the previous one");
  t.notOk(h.heldAt(1050, 4000), "only the last one is remembered");
});
