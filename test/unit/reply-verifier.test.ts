// The reply verifier: each replica's reply bytes compared with the original's at the same offsets,
// as either side arrives; the first difference no tolerance excuses marks the shadow diverged.
import t from "tap";
import fc from "fast-check";
import { assertProperty } from "../property.js";
import { printable } from "../../src/replica/offsets.js";
import { HTTP_DATE_TOLERANCE } from "../../src/replica/reply-mask.js";
import type { ShadowConversation } from "../../src/replica/shadow.js";
import { DIVERGENCE_EXCERPT, ReplyVerifier, type ReplyTolerance } from "../../src/replica/reply-verifier.js";
import { CONN_ID, EngineParts, ORIGINAL_ISN, clientSyn, openShadows } from "../engine-parts.js";

/** The parts a ReplyVerifier works with, wired as engine.ts does (Buffers keep the tolerances'
 * context), and one open connection with an open, healthy shadow on r1. */
function setup(tolerances: readonly ReplyTolerance[] = [], keepContext?: number) {
  const parts = new EngineParts({
    keepContext: keepContext ?? Math.max(0, ...tolerances.map((x) => x.context)),
    replicas: ["r1"],
  });
  const verifier = new ReplyVerifier(tolerances, parts.replicas, parts.buffers, parts.lifecycle);
  const conn = parts.addOpen(clientSyn(), ORIGINAL_ISN);
  const [s] = openShadows(conn, ["r1"]) as [ShadowConversation];
  const record = parts.replicas.get("r1")!;
  const events = () => parts.events();
  /** Bytes of the original at `off`, then a comparison (as the engine does on each segment). */
  const original = (off: number, data: string | Uint8Array) => {
    conn.original.write(off, typeof data === "string" ? Buffer.from(data, "latin1") : data);
    verifier.compare(conn, s);
  };
  /** Reply bytes of the replica at `off`, then a comparison. */
  const reply = (off: number, data: string | Uint8Array) => {
    s.reply.write(off, typeof data === "string" ? Buffer.from(data, "latin1") : data);
    verifier.compare(conn, s);
  };
  return { conn, s, record, verifier, events, original, reply };
}

t.test("equal bytes are compared and counted", async (t) => {
  const x = setup();
  x.original(0, "hello world");
  t.equal(x.s.compared, 0, "nothing of the replica yet");
  x.reply(0, "hello world");
  t.equal(x.s.compared, 11);
  t.equal(x.s.comparedBytes, 11);
  t.equal(x.record.comparedBytes, 11, "counted for the replica too");
  t.equal(x.s.status, "healthy");
  t.same(x.events(), []);
  t.equal(x.s.toleratedBytes, 0);
});

t.test("the first real difference marks the shadow diverged at its offset, with an excerpt", async (t) => {
  const x = setup();
  x.original(0, "GET ");
  x.reply(0, "GET ");
  t.equal(x.s.compared, 4);
  x.original(4, "/index.html\x00 OK");
  x.reply(4, "/indeX.html\x00 OK");
  t.equal(x.s.status, "diverged");
  t.same(x.events(), [
    {
      type: "diverged",
      conn: CONN_ID,
      replica: "r1",
      offset: 9,
      reason: "reply bytes differ",
      original: "x.html\\x00 OK",
      replicaBytes: "X.html\\x00 OK",
    },
  ]);
  t.equal(x.s.compared, 4, "compared stays where the agreement ended");
  t.equal(x.record.comparedBytes, 4);
  t.equal(x.record.diverged, 1);
  // A diverged shadow is compared no more.
  x.original(19, "more");
  x.reply(19, "more");
  t.equal(x.s.compared, 4);
  t.same(x.events(), []);
});

t.test("the excerpt shows at most DIVERGENCE_EXCERPT bytes of each side", async (t) => {
  const x = setup();
  const a = "a".repeat(40);
  const b = "b".repeat(40);
  x.original(0, "=" + a);
  x.reply(0, "=" + b);
  const e = x.events()[0];
  t.match(e, { type: "diverged", offset: 1 });
  t.equal(e?.type === "diverged" ? e.original : undefined, "a".repeat(DIVERGENCE_EXCERPT));
  t.equal(e?.type === "diverged" ? e.replicaBytes : undefined, "b".repeat(DIVERGENCE_EXCERPT));
});

/** Excuses a digit for a digit, when the original's bytes right before end with "=" (needs 1). */
class DigitsAfterEquals implements ReplyTolerance {
  readonly name = "digits";
  readonly context = 3;
  readonly seen: string[] = [];
  excuses(before: Buffer, theirs: number, mine: number): boolean {
    this.seen.push(before.toString("latin1"));
    const digit = (c: number) => c >= 0x30 && c <= 0x39;
    return digit(theirs) && digit(mine) && before.includes(0x3d);
  }
}

t.test("a tolerance excuses exactly the bytes it says, and they are counted", async (t) => {
  const tol = new DigitsAfterEquals();
  const x = setup([tol]);
  x.original(0, "id=123;n=4");
  x.reply(0, "id=987;n=5");
  t.equal(x.s.status, "healthy", "digit differences after '=' are excused");
  t.equal(x.s.compared, 10);
  t.equal(x.s.comparedBytes, 10, "excused bytes are compared bytes too");
  t.equal(x.s.toleratedBytes, 4);
  t.equal(x.record.toleratedBytes, 4);
  t.same(
    tol.seen,
    ["id=", "d=1", "=12", ";n="],
    "it sees the original's bytes right before each difference, as many as its context",
  );
  // A digit with no '=' in the context it sees is not excused: the first such one diverges.
  x.original(10, ";ab5x");
  x.reply(10, ";ab7y");
  t.equal(x.s.status, "diverged");
  t.same(tol.seen.slice(4), [";ab"]);
  t.match(x.events(), [{ type: "diverged", offset: 13, original: "5x", replicaBytes: "7y" }]);
  t.equal(x.s.compared, 10);
  t.equal(x.s.toleratedBytes, 4, "the difference it refused is not counted as tolerated");
});

t.test("a tolerance's look back is cut at the stream's start", async (t) => {
  const tol = new DigitsAfterEquals();
  const x = setup([tol]);
  x.original(0, "=1");
  x.reply(0, "=2");
  t.same(tol.seen, ["="], "one byte before offset 1, not three");
  t.equal(x.s.status, "healthy");
  x.original(2, "3");
  x.reply(2, "4");
  t.same(tol.seen, ["=", "=1"]);
  t.equal(x.s.toleratedBytes, 2);
});

const HEAD = "HTTP/1.1 200 OK\r\nServer: x\r\nDate: Thu, 03 Dec 2026 06:12:1";

t.test("HTTP_DATE_TOLERANCE through the verifier: a Date value may differ, nothing else", async (t) => {
  const x = setup([HTTP_DATE_TOLERANCE]);
  x.original(0, HEAD + "6 GMT\r\nContent-Length: 2\r\n\r\nok");
  x.reply(0, HEAD + "7 GMT\r\nContent-Length: 2\r\n\r\nok");
  t.equal(x.s.status, "healthy");
  t.equal(x.s.toleratedBytes, 1);
  t.equal(x.record.toleratedBytes, 1);
  t.equal(x.s.compared, HEAD.length + 30);
  // The body is not a Date value.
  const end = x.s.compared;
  x.original(end, "OK");
  x.reply(end, "NO");
  t.equal(x.s.status, "diverged");
  t.match(x.events(), [{ type: "diverged", offset: end }]);
});

t.test("a Date value split across segments is still excused: its line's start is kept", async (t) => {
  const x = setup([HTTP_DATE_TOLERANCE]);
  // Both sides agree up to the second's last digit, which arrives in the next segments.
  x.original(0, HEAD);
  x.reply(0, HEAD);
  t.equal(x.s.compared, HEAD.length);
  t.ok(x.conn.original.base > 0, "compared bytes were released (all but the context)");
  x.original(HEAD.length, "6 GMT\r\n");
  x.reply(HEAD.length, "7 GMT\r\n");
  t.equal(x.s.status, "healthy");
  t.equal(x.s.toleratedBytes, 1);

  // The same split without the context kept: the look back finds no line start.
  const y = setup([HTTP_DATE_TOLERANCE], 0);
  y.original(0, HEAD);
  y.reply(0, HEAD);
  y.original(HEAD.length, "6 GMT\r\n");
  y.reply(HEAD.length, "7 GMT\r\n");
  t.equal(y.s.status, "diverged", "the context is what makes the split case work");
});

t.test("comparison proceeds as either side arrives in pieces", async (t) => {
  const x = setup();
  x.original(0, "abcdefghij");
  x.reply(0, "abc");
  t.equal(x.s.compared, 3);
  x.reply(5, "fg"); // out of order: not contiguous yet
  t.equal(x.s.compared, 3, "only the contiguous prefix is compared");
  x.reply(3, "de");
  t.equal(x.s.compared, 7);
  x.reply(7, "hijklm");
  t.equal(x.s.compared, 10, "no further than the original");
  x.original(10, "k");
  t.equal(x.s.compared, 11, "the original's arrival moves it too");
  x.original(11, "lm");
  t.equal(x.s.compared, 13);
  t.equal(x.s.comparedBytes, 13);
  t.equal(x.s.status, "healthy");
  x.original(13, "n");
  x.reply(13, "N");
  t.match(x.events(), [{ type: "diverged", offset: 13 }]);
});

/** A byte string made of pieces at random cut points. */
function pieces(bytes: Uint8Array, cuts: number[]): Array<[number, Uint8Array]> {
  const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const bounds = [0, ...at.filter((c) => c > 0 && c < bytes.length), bytes.length];
  const out: Array<[number, Uint8Array]> = [];
  for (let i = 0; i + 1 < bounds.length; i++) {
    const from = bounds[i]!;
    out.push([from, bytes.subarray(from, bounds[i + 1])]);
  }
  return out;
}

t.test(
  "property: diverged iff the streams differ below the shorter one's end, at the first such offset",
  async (t) => {
    // A common prefix makes long agreements likely; a small alphabet in the tails makes equal tails
    // and late first differences likely; full bytes cover non-printable excerpts.
    const tail = fc.oneof(
      fc.uint8Array({ maxLength: 20 }),
      fc.array(fc.integer({ min: 0x61, max: 0x62 }), { maxLength: 20 }).map((a) => Uint8Array.from(a)),
    );
    let agreed = 0;
    let differed = 0;
    const prop = fc.property(
      fc.uint8Array({ maxLength: 30 }),
      tail,
      tail,
      fc.array(fc.nat(), { maxLength: 8 }),
      fc.array(fc.nat(), { maxLength: 8 }),
      fc.array(fc.boolean(), { maxLength: 20 }),
      (prefix, ta, tb, cutsA, cutsB, order) => {
        const a = Uint8Array.from([...prefix, ...ta]);
        const b = Uint8Array.from([...prefix, ...tb]);
        const x = setup();
        const pa = pieces(a, cutsA);
        const pb = pieces(b, cutsB);
        // Interleave the two sides' pieces as `order` says, then whatever is left.
        let i = 0;
        let j = 0;
        for (const originalFirst of order) {
          if (originalFirst && i < pa.length) x.original(...pa[i++]!);
          else if (j < pb.length) x.reply(...pb[j++]!);
        }
        while (i < pa.length) x.original(...pa[i++]!);
        while (j < pb.length) x.reply(...pb[j++]!);

        const n = Math.min(a.length, b.length);
        let first = -1;
        for (let k = 0; k < n; k++)
          if (a[k] !== b[k]) {
            first = k;
            break;
          }
        const diverged = x.events().filter((e) => e.type === "diverged");
        if (first < 0) agreed++;
        else differed++;
        if (first < 0) {
          return (
            diverged.length === 0 &&
            x.s.status === "healthy" &&
            x.s.compared === n &&
            x.s.comparedBytes === n &&
            x.record.comparedBytes === n
          );
        }
        const e = diverged[0];
        return (
          diverged.length === 1 &&
          e?.type === "diverged" &&
          e.offset === first &&
          x.s.status === "diverged" &&
          x.s.compared <= first &&
          x.s.comparedBytes === x.s.compared &&
          e.original!.startsWith(printable(a.subarray(first, first + 1))) &&
          e.replicaBytes!.startsWith(printable(b.subarray(first, first + 1)))
        );
      },
    );
    t.doesNotThrow(() =>
      assertProperty("reply verifier: diverged iff the streams differ, at the first differing offset", prop, {
        numRuns: 500,
      }),
    );
    // Not vacuous: the generator makes both outcomes common (counted over the runs, shrinking none).
    t.ok(agreed >= 50, `${agreed} runs with no difference`);
    t.ok(differed >= 50, `${differed} runs with a difference`);
  },
);
