// What the control plane needs from the data plane, as an interface: the real one is the proxy
// (proxy-data-plane.ts); tests drive a real engine without I/O through the same interface.
import type { ReplicatedConnection } from "../replica/connection.js";
import { canSplice } from "../replica/splice.js";
import type { EngineEvent, EngineStats } from "../replica/types.js";
import type { ProxyStats } from "../proxy/proxy.js";
import type { ProbeAnswer } from "../proxy/probe.js";
import type { RttSource } from "./metrics.js";

export interface PromotionReport {
  spliced: number;
  reset: number;
  dropped: number;
}

/** Called from the data plane's drain loop: must return at once. `at`: wall clock, ms. */
export type EngineEventListener = (event: EngineEvent, at: number) => void;

export interface DataPlane {
  readonly service: { vip: string; port: number };
  /** Addresses the appliance uses itself (never a replica's). */
  readonly ownAddresses: readonly string[];
  /** The current original's address. */
  original(): string;
  /** Former originals: nothing reaches them any more (a replica cannot take such an address). */
  fenced(): readonly string[];
  engineStats(): EngineStats;
  /** Everything, kernel and capture counters included (slower: for scrapes). */
  stats(): Promise<Pick<ProxyStats, "engine" | "capture" | "injector">>;
  connections(): Iterable<ReplicatedConnection>;
  /** The engine's choice of a replica to promote. */
  bestReplica(): string | undefined;
  /** Every replica id the engine knows, promoted ones included. */
  replicaIds(): string[];
  addReplica(id: string, address: string): void;
  /** Gives it no new shadow conversations; the open ones continue. */
  drainReplica(id: string): void;
  removeReplica(id: string): void;
  /** A planned pause of the original for up to `ms` (a fork): not a failure until released. */
  holdOriginal(ms: number): () => void;
  /** Promotes now; engine events (the "promoted" one) are delivered before this resolves. */
  promote(id: string): Promise<PromotionReport>;
  /** Probes a backend's service port (and health check) from the appliance. */
  probe(address: string, timeoutMs: number): Promise<ProbeAnswer>;
  subscribe(listener: EngineEventListener): () => void;
  /** RTT histograms for exposition, when the data plane keeps them. */
  readonly rtt?: RttSource;
}

/** What a promotion of one replica would do to the open connections right now. */
export interface PromotionOutlook {
  /** Connections it would splice (continue on the replica, byte-exact). */
  carriable: number;
  /** Open connections it would reset (diverged, lagging, opened before the replica joined...). */
  blocking: number;
  /** Connections still in their handshake (dropped by a promotion; their clients retry). */
  halfOpen: number;
}

/**
 * Could `conn` continue on replica `id`, byte-exact? The engine's own rule (src/replica/splice.ts,
 * applied by promote()); a test checks that this prediction matches what promote() then does.
 */
export const carriable = canSplice;

export function promotionOutlook(conns: Iterable<ReplicatedConnection>, id: string): PromotionOutlook {
  const o: PromotionOutlook = { carriable: 0, blocking: 0, halfOpen: 0 };
  for (const c of conns) {
    if (c.phase === "syn") o.halfOpen++;
    else if (c.phase === "open") {
      if (carriable(c, id)) o.carriable++;
      else o.blocking++;
    }
  }
  return o;
}

/**
 * Shadow conversations a drain of replica `id` still waits for: live ones, unless their client
 * connection is finished and the replica acknowledged all of it (FIN included). What is left of
 * those is the replica's own close, which lingers with the connection (seconds) and which the
 * removal's RST ends harmlessly.
 */
export function drainPending(conns: Iterable<ReplicatedConnection>, id: string): number {
  let n = 0;
  for (const c of conns) {
    const s = c.shadows.get(id);
    if (s?.live && !(c.phase === "closed" && s.finAcked)) n++;
  }
  return n;
}

/** Open connections whose shadow on each replica is diverged or lagging now. */
export function shadowTrouble(
  conns: Iterable<ReplicatedConnection>,
): Map<string, { diverged: number; lagging: number }> {
  const out = new Map<string, { diverged: number; lagging: number }>();
  for (const c of conns) {
    if (c.phase !== "open") continue;
    for (const [id, s] of c.shadows) {
      if (s.status !== "diverged" && s.status !== "lagging") continue;
      let t = out.get(id);
      if (!t) out.set(id, (t = { diverged: 0, lagging: 0 }));
      t[s.status]++;
    }
  }
  return out;
}
