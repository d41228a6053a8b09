// Lifecycle of connections and their shadows: a shadow's status (healthy, or why it is no longer
// a faithful, promotable copy: diverged, lagging, unverified; each change counted and an event),
// closing shadows, closing and deleting connections. The other parts call these; none of them
// decides when, only how.
import type { ConnectionTable } from "./connection-table.js";
import type { ReplicatedConnection } from "./connection.js";
import type { Buffers } from "./buffers.js";
import type { Outbox } from "./outbox.js";
import type { ReplicaSet } from "./replica-set.js";
import type { ShadowConversation } from "./shadow.js";
import type { ShadowSender } from "./shadow-sender.js";

/**
 * How long after the last FIN of one side a connection whose only missing piece is the other
 * side's acknowledgement of that FIN is taken as over. That ACK is a bare segment sent once: the
 * capture can lose it, and nothing follows it (found by the simulator: seed 994, the original's
 * ACK of the client's FIN; seed 1553, the client's ACK of the original's FIN; the engine held
 * the connection for good). A peer whose FIN was really not acknowledged retransmits it within
 * its RTO (Linux: 200 ms at least, 1 s before an RTT sample), which restarts this wait.
 */
export const FIN_ACK_GRACE_MS = 3000;

export class Lifecycle {
  /** Connections that were open and were deleted. */
  closed = 0;
  /** Connections taken as over without seeing the original acknowledge the client's FIN. */
  finAckInferred = 0;

  constructor(
    private readonly table: ConnectionTable,
    private readonly replicas: ReplicaSet,
    private readonly buffers: Buffers,
    private readonly sender: ShadowSender,
    private readonly outbox: Outbox,
    /** The engine's set of connections with sends due at the next flush. */
    private readonly dirty: Set<ReplicatedConnection>,
  ) {}

  /**
   * The shadow is no longer a faithful copy. Lagging is the worst state and stays; unverified
   * never replaces another non-healthy state.
   */
  setStatus(
    conn: ReplicatedConnection,
    s: ShadowConversation,
    status: "diverged" | "lagging" | "unverified",
    reason: string,
    offset: number,
    excerpt?: { original: string; replicaBytes: string },
  ): void {
    if (s.status === status || (s.status !== "healthy" && status === "unverified")) return;
    if (s.status === "lagging") return; // the worst state; it stays
    s.status = status;
    s.reason = reason;
    const r = this.replicas.get(s.replica.id);
    const id = s.replica.id;
    if (status === "diverged") {
      if (r) r.diverged++;
      this.outbox.event({ type: "diverged", conn: conn.id, replica: id, offset, reason, ...excerpt });
    } else if (status === "lagging") {
      if (r) r.lagging++;
      this.outbox.event({ type: "lagging", conn: conn.id, replica: id, reason });
    } else {
      if (r) r.unverified++;
      this.outbox.event({ type: "unverified", conn: conn.id, replica: id, reason });
    }
    this.buffers.releaseOriginal(conn);
  }

  closeShadow(conn: ReplicatedConnection, s: ShadowConversation): void {
    s.state = "closed";
    s.rtoDeadline = undefined;
    s.reply.clear();
    this.buffers.releaseClient(conn);
    this.buffers.releaseOriginal(conn);
  }

  /** The shadow's conversation ended both ways (FINs sent and acknowledged): closed. */
  maybeCloseShadow(conn: ReplicatedConnection, s: ShadowConversation): void {
    if (s.finAcked && s.replicaFinOffset !== undefined && s.rcvAcked === s.replicaFinOffset + 1) {
      this.closeShadow(conn, s);
      this.buffers.account(conn);
    }
  }

  /** The shadow is given up: marked lagging (or as told), its replica reset, its state freed. */
  abandon(conn: ReplicatedConnection, s: ShadowConversation, reason: string): void {
    this.setStatus(conn, s, "lagging", reason, s.compared);
    this.sender.sendRst(conn, s);
    this.closeShadow(conn, s);
    this.buffers.releaseClient(conn);
    this.buffers.releaseOriginal(conn);
  }

  /**
   * Resets every shadow still talking to its replica and closes the connection. With `behind`:
   * a shadow whose replica has not yet received every byte the original acknowledged is marked
   * lagging first: its state will differ from the original's (found by the simulator, seed 306: a
   * client reset right after a short exchange, before its bytes reached the replica).
   */
  resetShadows(conn: ReplicatedConnection, now: number, behind?: string): void {
    for (const s of conn.shadows.values()) {
      if (behind !== undefined) this.markIfBehind(conn, s, behind);
      if (s.live) {
        this.sender.sendRst(conn, s);
        this.closeShadow(conn, s);
      }
    }
    this.markClosed(conn, now);
    this.buffers.account(conn);
  }

  /**
   * The client reset the connection. A replica that has not received every byte the original
   * acknowledged is marked lagging and reset; one that has every byte but has not answered what
   * the original answered keeps its shadow until it has (resetAnswered): a RST now would make its
   * kernel discard what its paused application has not read yet, and its state would silently
   * differ from the original's (simulator seed 49: a frozen replica, a client that reset after
   * its last answer).
   */
  clientReset(conn: ReplicatedConnection, now: number): void {
    for (const s of conn.shadows.values()) {
      this.markIfBehind(conn, s, "the client reset before the replica received what the original did");
      if (!s.live) continue;
      const received = Math.max(0, s.sndUna) >= conn.client.end;
      if (s.comparing && conn.spliced !== s && received && s.compared < conn.original.end) {
        s.resetPending = true;
        continue;
      }
      this.sender.sendRst(conn, s);
      this.closeShadow(conn, s);
    }
    this.markClosed(conn, now);
    this.buffers.account(conn);
  }

  /** A shadow waiting to be reset (clientReset) whose replica has answered what the original
   * did, or stopped being compared: reset now. */
  resetAnswered(conn: ReplicatedConnection, s: ShadowConversation): void {
    if (!s.resetPending || !s.live) return;
    if (s.comparing && s.compared < conn.original.end) return;
    s.resetPending = false;
    this.sender.sendRst(conn, s);
    this.closeShadow(conn, s);
    this.buffers.account(conn);
  }

  markClosed(conn: ReplicatedConnection, now: number): void {
    if (conn.phase === "closed") return;
    conn.phase = "closed";
    conn.closedAt = now;
  }

  /** Both directions finished: the client's FIN went through and the original's close was
   * released and acknowledged by the client. */
  checkDone(conn: ReplicatedConnection, now: number): void {
    if (conn.phase !== "open") return;
    const sp = conn.spliced;
    // Who acknowledges the client's FIN: the original, or after a splice the promoted replica.
    const serverAck = sp ? Math.max(0, sp.sndUna) : conn.originalAckOffset;
    const clientDone = conn.clientFinOffset !== undefined && serverAck >= conn.clientFinOffset + 1;
    const serverDone = sp
      ? sp.replicaFinOffset !== undefined && conn.clientAckOffset >= sp.replicaFinOffset + 1
      : conn.held?.released === true &&
        (conn.held.kind === "rst" ||
          (conn.originalFinOffset !== undefined && conn.clientAckOffset >= conn.originalFinOffset + 1));
    // After a confirmed capture gap with no shadow left, the client's side cannot be followed any
    // more (its FIN may be among what the capture lost): the server's side being done is the end
    // of what the engine can do (found by the simulator, seed 56: such a connection stayed open
    // in the table for good). Later closes still reach the client (deleteConnection).
    const untrackable = conn.captureGap && ![...conn.shadows.values()].some((s) => s.live);
    if ((clientDone || untrackable) && serverDone) return this.markClosed(conn, now);
    const wait = this.finAckWait(conn);
    if (wait !== undefined && now >= wait) {
      this.finAckInferred++;
      this.markClosed(conn, now);
    }
  }

  /**
   * When an open connection that lacks only the acknowledgement of a FIN (FIN_ACK_GRACE_MS), one
   * side's or both, is over; undefined if it waits for anything else.
   */
  finAckWait(conn: ReplicatedConnection): number | undefined {
    if (conn.phase !== "open" || conn.spliced) return undefined;
    const held = conn.held;
    const serverFin = held?.released === true && held.kind === "fin" && conn.originalFinOffset !== undefined;
    const serverDone = serverFin && conn.clientAckOffset >= conn.originalFinOffset! + 1;
    const serverAckLost = serverFin && conn.clientAckOffset === conn.originalFinOffset;
    const clientFin = conn.clientFinReady && conn.clientFinOffset !== undefined;
    const clientDone = clientFin && conn.originalAckOffset >= conn.clientFinOffset! + 1;
    const clientAckLost = clientFin && conn.originalAckOffset === conn.clientFinOffset;
    const untrackable = conn.captureGap && ![...conn.shadows.values()].some((s) => s.live);
    if (!(serverDone || serverAckLost) || !(clientDone || clientAckLost || untrackable)) return undefined;
    if (!serverAckLost && !clientAckLost) return undefined;
    // A side's FIN time unknown (never captured): nothing to count from.
    const since = Math.max(
      serverAckLost ? (conn.originalFinAt ?? Infinity) : 0,
      clientAckLost ? (conn.clientFinAt ?? Infinity) : 0,
    );
    return since === Infinity ? undefined : since + FIN_ACK_GRACE_MS;
  }

  /** The client reused its port: the old connection is over. */
  abortConnection(conn: ReplicatedConnection): void {
    for (const s of conn.shadows.values()) if (s.live) this.sender.sendRst(conn, s);
    this.deleteConnection(conn);
  }

  /** Marks `s` lagging when its replica has not received what the original acknowledged. */
  private markIfBehind(conn: ReplicatedConnection, s: ShadowConversation, reason: string): void {
    if (!s.live || conn.spliced === s || (!s.comparing && s.status !== "unverified")) return;
    if (Math.max(0, s.sndUna) < conn.originalAckOffset)
      this.setStatus(conn, s, "lagging", reason, s.compared);
  }

  deleteConnection(conn: ReplicatedConnection): void {
    for (const s of conn.shadows.values()) {
      this.markIfBehind(conn, s, "the connection ended before the replica received what the original did");
      // Closed for a minute and still not closed by the replica: its RST may discard bytes its
      // application has not read yet; said so.
      if (s.live && conn.phase === "closed" && conn.spliced !== s && s.comparing)
        this.setStatus(
          conn,
          s,
          "lagging",
          s.resetPending
            ? "the client reset and the replica did not answer what the original did"
            : "its replica did not close the connection after the original",
          s.compared,
        );
      if (s.live) {
        this.sender.sendRst(conn, s);
        this.closeShadow(conn, s);
      }
    }
    conn.client.clear();
    conn.original.clear();
    this.buffers.account(conn);
    this.table.delete(conn);
    // The kernel still holds the original's FIN/RST for it: a late one (a reset answering a
    // client that writes after the close) must still reach the client.
    if (conn.natPort !== undefined && conn.phase !== "syn")
      this.table.remember(conn.natPort, {
        addr: conn.clientAddr,
        port: conn.clientPort,
        isn: conn.clientIsn,
      });
    this.dirty.delete(conn);
    if (conn.phase !== "syn") this.closed++;
    if (conn.phase !== "syn") this.outbox.event({ type: "connection-closed", conn: conn.id });
  }
}
