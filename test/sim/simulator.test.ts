// The deterministic simulator in CI: a fixed set of seeds (the same every run, so a green commit
// stays green) plus every seed that once found a bug, each checked after every step (src/sim).
// A failure prints the one command that replays it. Then the simulator's own checks are shown to
// bite: with a bug planted in the engine, it reports a violation.
import t from "tap";
import { runSeed } from "../../src/sim/run.js";
import { Outbox } from "../../src/replica/outbox.js";
import { Limits } from "../../src/replica/limits.js";
import { CloseHold } from "../../src/replica/close-hold.js";
import { OriginalEvidence } from "../../src/replica/failure/evidence.js";
import type { TcpSegment } from "../../src/wire/tcp.js";

/** Seeds 1..CI_SEEDS run on every CI run (~40 s on the 2-core machine, alone). */
const CI_SEEDS = 48;
/** Seeds that found a bug when it was there (docs/PROGRESS.md, session 7). */
const FOUND = [
  2, 8, 19, 21, 22, 49, 56, 114, 119, 122, 127, 211, 212, 241, 278, 287, 288, 306, 332, 440, 616, 625, 730,
  801, 913, 938, 945, 993, 994, 1194, 1242, 1553, 1806, 1817, 2049,
];

t.test(
  `simulator: seeds 1..${CI_SEEDS} and the seeds that once found bugs hold every invariant`,
  async (t) => {
    const seeds = [
      ...Array.from({ length: CI_SEEDS }, (_, i) => i + 1),
      ...FOUND.filter((s) => s > CI_SEEDS),
    ];
    let connections = 0;
    let promotions = 0;
    for (const seed of seeds) {
      const r = runSeed(seed);
      connections += r.connections;
      promotions += r.promotions;
      if (!r.ok) t.fail(`seed ${seed}: ${r.violation}\nreplay: npm run sim -- --seed ${seed} --trace`);
    }
    // The runs exercised what they are meant to (a generator that drew nothing would pass too).
    t.ok(connections > seeds.length * 2, `${connections} client connections simulated`);
    t.ok(promotions > seeds.length / 4, `${promotions} promotions simulated`);
  },
);

/** Runs seeds from 1 until one reports a violation (the planted bug), at most `max`. */
function firstViolation(max: number): { seed: number; violation: string } | undefined {
  for (let seed = 1; seed <= max; seed++) {
    const r = runSeed(seed, { maxSimMs: 30_000 });
    if (!r.ok) return { seed, violation: r.violation ?? "" };
  }
  return undefined;
}

/** Replaces `obj[key]` for the duration of `body`. */
async function planted<T extends object, K extends keyof T>(
  obj: T,
  key: K,
  value: T[K],
  body: () => void,
): Promise<void> {
  const orig = obj[key];
  obj[key] = value;
  try {
    body();
  } finally {
    obj[key] = orig;
  }
}

/** The engine's outbox with one byte of the first payload toward `to` flipped per run. */
function corrupting(
  to: "replica" | "client",
): (this: Outbox, segment: TcpSegment, dest: "replica" | "client") => void {
  // eslint-disable-next-line @typescript-eslint/unbound-method -- called with its own `this` below
  const orig = Outbox.prototype.send;
  return function (this: Outbox, segment, dest) {
    if (dest === to && segment.payload.length > 0 && !corrupted.has(this)) {
      corrupted.add(this);
      segment = { ...segment, payload: Uint8Array.from(segment.payload, (b, i) => (i === 0 ? b ^ 0x01 : b)) };
    }
    orig.call(this, segment, dest);
  };
}
const corrupted = new WeakSet<Outbox>();

t.test("the simulator catches a replica sent a byte the client did not send", async (t) => {
  await planted(Outbox.prototype, "send", corrupting("replica"), () => {
    const v = firstViolation(30);
    t.ok(v, "a violation is reported");
    t.match(v?.violation, /read bytes .* that the client did not send there/, v?.violation ?? "");
  });
});

t.test("the simulator catches a client sent a byte the service did not produce", async (t) => {
  await planted(Outbox.prototype, "send", corrupting("client"), () => {
    const v = firstViolation(60);
    t.ok(v, "a violation is reported");
    t.match(v?.violation, /received bytes .* produce/, v?.violation ?? "");
  });
});

t.test("the simulator catches a buffer beyond its limit", async (t) => {
  await planted(
    Limits.prototype,
    "enforce",
    function () {},
    () => {
      const v = firstViolation(60);
      t.ok(v, "a violation is reported");
      t.match(v?.violation, /limit|buffers/, v?.violation ?? "");
    },
  );
});

t.test("the simulator catches a close released while the replicas keep the connection open", async (t) => {
  // eslint-disable-next-line @typescript-eslint/unbound-method -- called with its own `this` below
  const orig = CloseHold.prototype.onOriginalClose;
  await planted(
    CloseHold.prototype,
    "onOriginalClose",
    function (this: CloseHold, conn, kind, view, now) {
      // Release at once, as if every replica had closed alike: a crashed original's FIN reaches the
      // client as a normal end.
      orig.call(this, conn, kind, view, now);
      if (conn.held && !conn.held.released) {
        conn.held.released = true;
        (this as unknown as { outbox: { send(s: TcpSegment, to: string): void } }).outbox.send(
          view,
          "client",
        );
      }
    },
    () => {
      const v = firstViolation(120);
      t.ok(v, "a violation is reported");
      t.match(v?.violation, /FIN|did not finish|nothing said so/, v?.violation ?? "");
    },
  );
});

t.test("the simulator catches a healthy original failed over for a short pause (issue 16)", async (t) => {
  // The rule before issue 16: an unconfirmed stall failed over after 60 ms.
  await planted(
    OriginalEvidence.prototype,
    "hangBudgetMs",
    () => 60,
    () => {
      const v = firstViolation(60);
      t.ok(v, "a violation is reported");
      t.match(v?.violation, /failed over .* though its only trouble was pauses shorter than the hang budget/);
    },
  );
});
