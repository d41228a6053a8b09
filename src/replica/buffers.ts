// What the engine holds in memory, and when it may let go. Client bytes are held until every live
// shadow's replica acknowledged them; the original's reply bytes until every comparing shadow
// compared them (minus a little context a tolerance needs); a replica's reply bytes until compared
// and acknowledged to it (a splice may still need them). Account() keeps the engine's and each
// replica's totals, which the limits (limits.ts) are checked against. Every release accounts at
// once: a total that lags what is really held would let memory pass its limit unnoticed.
import { assert } from "./assert.js";
import type { ReplicatedConnection } from "./connection.js";
import type { ReplicaSet } from "./replica-set.js";
import type { ShadowConversation } from "./shadow.js";

export class Buffers {
  /** Bytes held by the whole engine. */
  total = 0;

  constructor(
    private readonly replicas: ReplicaSet,
    /** Compared bytes of the original kept for a tolerance's look back (reply-verifier.ts). */
    private readonly keepContext: number,
  ) {}

  /** Client bytes every live shadow's replica acknowledged are released. */
  releaseClient(conn: ReplicatedConnection): void {
    let min = conn.client.end;
    for (const s of conn.shadows.values()) if (s.live) min = Math.min(min, Math.max(0, s.sndUna));
    conn.client.release(min);
    this.account(conn);
  }

  /** The original's bytes every comparing shadow compared are released (but the context). */
  releaseOriginal(conn: ReplicatedConnection): void {
    // Before the client's handshake completes the shadows do not exist yet, and they will compare
    // from the first byte (the original's reply can be captured before the client's ACK).
    if (conn.phase === "syn") return;
    let min = conn.original.end;
    for (const s of conn.shadows.values()) if (s.comparing) min = Math.min(min, s.compared);
    // A few compared bytes stay: a Date value split across segments needs its line's start.
    conn.original.release(min - this.keepContext);
    this.account(conn);
  }

  /** Reply bytes are kept until compared (or no longer compared) and acknowledged to the replica,
   * so a later splice can send the client what it misses at once. */
  releaseReply(s: ShadowConversation): void {
    const upTo = s.comparing ? Math.min(s.compared, s.rcvAcked) : s.rcvAcked;
    s.reply.release(upTo);
  }

  /** Recomputes what this connection holds and updates the engine's and replicas' totals.
   * Client and original bytes are shared by the shadows and counted once globally; each replica
   * is charged the client bytes still held for it plus its own reply bytes. */
  account(conn: ReplicatedConnection): void {
    const own = conn.client.footprint + conn.original.footprint;
    this.total += own - conn.accounted;
    conn.accounted = own;
    for (const s of conn.shadows.values()) {
      const global = s.live ? s.reply.footprint : 0;
      this.total += global - s.accountedGlobal;
      s.accountedGlobal = global;
      const mine = s.live ? s.clientBacklog(conn.client.end) + s.reply.footprint : 0;
      const r = this.replicas.get(s.replica.id);
      if (r) r.buffered += mine - s.accountedReplica;
      s.accountedReplica = mine;
    }
    assert(this.total >= 0, () => `buffers: total ${this.total} below zero after ${conn.id}`);
  }
}
