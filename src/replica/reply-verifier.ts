// The reply verifier: each replica's reply bytes are compared with the original's at the same
// stream offsets as both arrive. The first difference that no tolerance excuses marks the shadow
// diverged (with an excerpt of both sides for the operator); it is then never promoted for that
// connection. Tolerances are policies (ReplyTolerance): each names a kind of harmless difference
// and how much of the original before it it needs to see. Compared bytes are counted per replica.
import type { Buffers } from "./buffers.js";
import type { ReplicatedConnection } from "./connection.js";
import type { Lifecycle } from "./lifecycle.js";
import { printable } from "./offsets.js";
import type { ReplicaSet } from "./replica-set.js";
import type { ShadowConversation } from "./shadow.js";

/** A kind of difference between reply streams that is not a divergence (a policy). */
export interface ReplyTolerance {
  readonly name: string;
  /** Bytes of the original right before a difference that excuses() needs to see. */
  readonly context: number;
  /** Does it excuse the original's byte `theirs` differing from the replica's `mine`, given the
   * original's bytes `before` it (fewer than `context` at the stream's start)? */
  excuses(before: Buffer, theirs: number, mine: number): boolean;
}

/** Bytes of each side a divergence event shows, from the first difference. */
export const DIVERGENCE_EXCERPT = 16;

export class ReplyVerifier {
  /** Compared bytes of the original the tolerances need kept (Buffers.releaseOriginal). */
  readonly context: number;

  constructor(
    private readonly tolerances: readonly ReplyTolerance[],
    private readonly replicas: ReplicaSet,
    private readonly buffers: Buffers,
    private readonly lifecycle: Lifecycle,
  ) {
    this.context = Math.max(0, ...tolerances.map((t) => t.context));
  }

  /** Compares the replica's reply bytes with the original's at the same offsets. */
  compare(conn: ReplicatedConnection, s: ShadowConversation): void {
    if (s.comparing && s.compared < conn.original.base) {
      // The original's bytes were released before this shadow could compare them (its reply
      // passed the per-connection limit before the client's handshake was captured: found by the
      // simulator, seed 938): its copy can no longer be checked.
      this.lifecycle.setStatus(
        conn,
        s,
        "unverified",
        "the original's bytes went before they could be compared",
        s.compared,
      );
    }
    if (s.comparing) {
      const upto = Math.min(s.reply.end, conn.original.end);
      if (upto > s.compared) {
        const mine = s.reply.read(s.compared, upto);
        const theirs = conn.original.read(s.compared, upto);
        const differs = mine.equals(theirs) ? -1 : this.firstRealDifference(conn, s, mine, theirs);
        if (differs >= 0) {
          const at = s.compared + differs;
          const excerpt = {
            original: printable(conn.original.read(at, Math.min(upto, at + DIVERGENCE_EXCERPT))),
            replicaBytes: printable(s.reply.read(at, Math.min(upto, at + DIVERGENCE_EXCERPT))),
          };
          this.lifecycle.setStatus(conn, s, "diverged", "reply bytes differ", at, excerpt);
        } else {
          const r = this.replicas.get(s.replica.id);
          if (r) r.comparedBytes += upto - s.compared;
          s.comparedBytes += upto - s.compared;
          s.compared = upto;
        }
      }
    }
    this.buffers.releaseReply(s);
    this.buffers.releaseOriginal(conn);
  }

  /** Index of the first difference between equally long reply ranges starting at s.compared
   * that no tolerance excuses (-1: none); excused ones are counted. */
  private firstRealDifference(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    mine: Buffer,
    theirs: Buffer,
  ): number {
    for (let i = 0; i < mine.length; i++) {
      if (mine[i] === theirs[i]) continue;
      const at = s.compared + i;
      const excused = this.tolerances.some((t) => {
        const from = Math.max(conn.original.base, at - t.context);
        return t.excuses(conn.original.read(from, at), theirs[i]!, mine[i]!);
      });
      if (!excused) return i;
      s.toleratedBytes++;
      const r = this.replicas.get(s.replica.id);
      if (r) r.toleratedBytes++;
    }
    return -1;
  }
}
