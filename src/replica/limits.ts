// Limits. Every buffer the engine holds is bounded (EngineLimits): per connection (client bytes
// held for the slowest shadow, the original's bytes held for the slowest comparison, a replica's
// reply bytes), per replica and for the whole engine. At a limit the shadow furthest behind is
// given up: marked lagging (counted, an event), reset, its memory freed. The client's connection
// itself is never touched: the kernel path carries it whatever the engine does.
import { assert } from "./assert.js";
import type { Buffers } from "./buffers.js";
import type { ConnectionTable } from "./connection-table.js";
import type { ReplicatedConnection } from "./connection.js";
import type { Lifecycle } from "./lifecycle.js";
import type { ReplicaSet } from "./replica-set.js";
import type { ShadowConversation } from "./shadow.js";
import type { EngineLimits } from "./types.js";

export class Limits {
  constructor(
    private readonly limits: EngineLimits,
    private readonly table: ConnectionTable,
    private readonly replicas: ReplicaSet,
    private readonly buffers: Buffers,
    private readonly lifecycle: Lifecycle,
  ) {}

  /** Bounds every buffer: the shadows furthest behind are marked lagging and dropped. */
  enforce(conn: ReplicatedConnection): void {
    const L = this.limits;
    this.buffers.releaseClient(conn);
    // Without a comparing shadow nothing needs the original's bytes (found by the simulator: a
    // connection without replicas kept its whole reply stream, up to the per-connection limit).
    this.buffers.releaseOriginal(conn);
    // Per connection: client bytes held for the slowest shadow.
    while (conn.client.footprint > L.perConnectionBytes) {
      const slow = this.slowest(conn, (s) => -Math.max(0, s.sndUna));
      if (!slow) {
        conn.client.release(conn.client.end);
        break;
      }
      this.lifecycle.abandon(conn, slow, "client bytes beyond the per-connection limit");
    }
    // Per connection: original reply bytes held for the slowest comparison.
    while (conn.original.footprint > L.perConnectionBytes) {
      let slow: ShadowConversation | undefined;
      for (const s of conn.shadows.values())
        if (s.comparing && (!slow || s.compared < slow.compared)) slow = s;
      if (!slow) {
        conn.original.release(conn.original.end);
        break;
      }
      this.lifecycle.abandon(conn, slow, "reply comparison beyond the per-connection limit");
    }
    for (const s of conn.shadows.values()) {
      if (s.live && s.reply.footprint > L.perConnectionBytes)
        this.lifecycle.abandon(conn, s, "reply bytes beyond the per-connection limit");
    }
    this.buffers.account(conn);
    // Per replica and global.
    for (const r of this.replicas.values()) {
      while (r.buffered > L.perReplicaBytes) {
        const victim = this.largestShadow((s) => s.replica.id === r.info.id);
        if (!victim) break;
        this.lifecycle.abandon(victim.conn, victim.shadow, "beyond the per-replica limit");
        this.buffers.account(victim.conn);
      }
    }
    while (this.buffers.total > L.globalBytes) {
      // The original's bytes held for comparison are charged to no replica: when those are what
      // is over the limit, the slowest comparison of the connection holding the most goes.
      const victim = this.largestShadow(() => true) ?? this.slowestComparison();
      if (!victim) break;
      this.lifecycle.abandon(victim.conn, victim.shadow, "beyond the global limit");
      this.buffers.account(victim.conn);
    }
  }

  /** The comparing shadow furthest behind on the connection holding the most original bytes. */
  private slowestComparison(): { conn: ReplicatedConnection; shadow: ShadowConversation } | undefined {
    let best: { conn: ReplicatedConnection; shadow: ShadowConversation } | undefined;
    for (const conn of this.table.values()) {
      if (best && conn.original.footprint <= best.conn.original.footprint) continue;
      let slow: ShadowConversation | undefined;
      for (const s of conn.shadows.values())
        if (s.comparing && (!slow || s.compared < slow.compared)) slow = s;
      if (slow) best = { conn, shadow: slow };
    }
    return best;
  }

  private slowest(
    conn: ReplicatedConnection,
    score: (s: ShadowConversation) => number,
  ): ShadowConversation | undefined {
    let best: ShadowConversation | undefined;
    for (const s of conn.shadows.values()) if (s.live && (!best || score(s) > score(best))) best = s;
    return best;
  }

  private largestShadow(
    filter: (s: ShadowConversation) => boolean,
  ): { conn: ReplicatedConnection; shadow: ShadowConversation } | undefined {
    let best: { conn: ReplicatedConnection; shadow: ShadowConversation } | undefined;
    for (const conn of this.table.values()) {
      for (const s of conn.shadows.values()) {
        if (!s.live || !filter(s) || s.accountedReplica === 0) continue;
        if (!best || s.accountedReplica > best.shadow.accountedReplica) best = { conn, shadow: s };
      }
    }
    return best;
  }

  /** The limits hold after enforce(): per connection (O(shadows)). */
  check(conn: ReplicatedConnection): void {
    const L = this.limits;
    assert(
      conn.client.footprint <= L.perConnectionBytes,
      () => `limits: ${conn.id} holds ${conn.client.footprint} client bytes`,
    );
    assert(
      conn.original.footprint <= L.perConnectionBytes,
      () => `limits: ${conn.id} holds ${conn.original.footprint} original bytes`,
    );
    for (const s of conn.shadows.values())
      assert(
        !s.live || s.reply.footprint <= L.perConnectionBytes,
        () => `limits: ${conn.id} holds ${s.reply.footprint} reply bytes of ${s.replica.id}`,
      );
  }
}
