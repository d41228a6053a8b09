// The control plane's core, without HTTP: the roles and the replica set as the operator sees them,
// kept in step with the data plane (whose engine events are the truth about promotions and
// failed replicas), persisted in the state store, published on the event hub. Operations check
// everything first and then act on the data plane synchronously, so no packet is handled between
// the check and the action; persistence follows in order and never holds the data plane.
import type { Logger } from "pino";
import type { EngineEvent } from "../replica/types.js";
import type { WindowedSummary } from "../replica/histogram.js";
import {
  drainPending,
  promotionOutlook,
  shadowTrouble,
  type DataPlane,
  type PromotionOutlook,
  type PromotionReport,
} from "./data-plane.js";
import type { EventHub } from "./events.js";
import type { Metrics } from "./metrics.js";
import type {
  HistoryEntry,
  HistoryKind,
  OriginalRecord,
  ReplicaRecord,
  StateStore,
  StoredState,
} from "./state.js";

/** A refusal with the HTTP status that says why (404 unknown, 409 conflict). */
export class ControlError extends Error {
  constructor(
    readonly statusCode: 404 | 409 | 503,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = "ControlError";
  }
}

/** Engine events operators follow on the event stream (the per-connection chatter stays out). */
const FORWARDED_EVENTS = [
  "promoted",
  "original-failure",
  "no-replica-left",
  "replica-failure",
  "replica-added",
  "replica-removed",
  "diverged",
  "lagging",
  "capture-gap",
  "failover-withheld",
  "former-original-alive",
] as const satisfies ReadonlyArray<EngineEvent["type"]>;
const FORWARDED = new Set<EngineEvent["type"]>(FORWARDED_EVENTS);

/** Every event type of the stream (GET /v1/events): the control plane's own and the engine's. */
export const STREAM_EVENTS: readonly string[] = [
  "roles",
  "history",
  "switchover",
  "replica-draining",
  "machine",
  ...FORWARDED_EVENTS,
];

export type Health = "healthy" | "degraded" | "suspect" | "down";

interface ProbeSeen {
  alive: boolean;
  at: string;
  reason: string;
}

interface ReplicaEntry extends ReplicaRecord {
  draining: { since: string; timeoutMs: number } | undefined;
}

interface PromotionIntent {
  kind: HistoryKind;
  /** performance.now() of the request: the stall is measured from it. */
  since: number;
  reason: string | undefined;
}

export interface ControlPlaneOptions {
  dataPlane: DataPlane;
  store: StateStore;
  hub: EventHub;
  metrics: Metrics;
  log: Logger;
  /** The state loaded (or seeded) at start; the data plane runs it already. */
  state: StoredState;
  historyLimit: number;
  /** How long an operation waits for Redis to acknowledge its change before answering anyway. */
  persistTimeoutMs?: number;
}

const wallNow = () => performance.timeOrigin + performance.now();
const iso = (ms = Date.now()) => new Date(ms).toISOString();
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class ControlPlane {
  private original: OriginalRecord;
  private readonly replicas = new Map<string, ReplicaEntry>();
  private readonly history: HistoryEntry[];
  private readonly lastProbe = new Map<string, ProbeSeen>();
  private intent: PromotionIntent | undefined;
  /** When the current original's failure was first evidenced (wall clock, ms). */
  private failureSince: number | undefined;
  private readonly failedReplicas = new Map<string, string>();
  /** The engine's reason for the failure being failed over (automatic failovers). */
  private failureReason: string | undefined;
  /** The write of the latest promotion the engine made (automatic ones included). */
  private lastPromotionWrite: Promise<boolean> = Promise.resolve(true);
  private readonly unsubscribe: () => void;
  private readonly persistTimeoutMs: number;

  constructor(private readonly o: ControlPlaneOptions) {
    this.original = o.state.original;
    for (const r of o.state.replicas) this.replicas.set(r.id, { ...r, draining: undefined });
    this.history = [...o.state.history];
    this.persistTimeoutMs = o.persistTimeoutMs ?? 5000;
    this.unsubscribe = o.dataPlane.subscribe((e, at) => this.onEngineEvent(e, at));
  }

  close(): void {
    this.unsubscribe();
  }

  // ------------------------------------------------------------------ views

  roles(): { original: OriginalRecord; replicas: Array<{ id: string; address: string; state: string }> } {
    return {
      original: { ...this.original },
      replicas: [...this.replicas.values()].map((r) => ({
        id: r.id,
        address: r.address,
        state: r.draining ? "draining" : "active",
      })),
    };
  }

  get drainingCount(): number {
    let n = 0;
    for (const r of this.replicas.values()) if (r.draining) n++;
    return n;
  }

  status() {
    const dp = this.o.dataPlane;
    const e = dp.engineStats();
    const trouble = shadowTrouble(dp.connections());
    let divergedConns = 0;
    let laggingConns = 0;
    for (const c of dp.connections()) {
      if (c.phase !== "open") continue;
      let d = false;
      let l = false;
      for (const s of c.shadows.values()) {
        if (s.status === "diverged") d = true;
        if (s.status === "lagging") l = true;
      }
      if (d) divergedConns++;
      if (l) laggingConns++;
    }
    const rtt = e.rtt as
      { windowMs: number; client: unknown; original: unknown; replicas: Record<string, unknown> } | undefined;
    const replicas = [...this.replicas.values()].map((r) => {
      const st = e.replicas.find((x) => x.id === r.id);
      const t = trouble.get(r.id) ?? { diverged: 0, lagging: 0 };
      return {
        id: r.id,
        address: r.address,
        addedAt: r.addedAt,
        state: r.draining ? ("draining" as const) : ("active" as const),
        ...(r.draining ? { drainingSince: r.draining.since } : {}),
        health: this.health(r.id, t.diverged + t.lagging),
        lastProbe: this.lastProbe.get(r.id) ?? null,
        connections: {
          shadowsActive: st?.shadowsActive ?? 0,
          diverged: t.diverged,
          lagging: t.lagging,
        },
        totals: {
          shadowsOpened: st?.shadowsOpened ?? 0,
          diverged: st?.diverged ?? 0,
          lagging: st?.lagging ?? 0,
          bytesSent: st?.bytesSent ?? 0,
          retransmits: st?.retransmits ?? 0,
        },
        bufferedBytes: st?.bufferedBytes ?? 0,
        rtt: {
          srttUs: st?.rttUs.srtt ?? null,
          ...((rtt?.replicas[r.id] as Record<string, WindowedSummary> | undefined) ?? {}),
        },
      };
    });
    return {
      service: {
        vip: dp.service.vip,
        port: dp.service.port,
        address: `${dp.service.vip}:${dp.service.port}`,
      },
      original: {
        ...this.original,
        health: this.health("original", 0),
        lastProbe: this.lastProbe.get("original") ?? null,
      },
      replicas,
      connections: {
        active: e.connections.active,
        opened: e.connections.opened,
        diverged: divergedConns,
        lagging: laggingConns,
      },
      rtt: rtt ? { windowMs: rtt.windowMs, client: rtt.client, original: rtt.original } : null,
      failures: {
        detected: e.failures.detected,
        promotions: e.failures.promotions,
        replicasLeft: e.failures.replicasLeft,
        hangBudgetMs: e.failures.thresholds.hangBudgetMs,
        withheld: e.failures.withheld,
        falseFailovers: e.failures.falseFailovers,
        /** Replaced originals: watched after a failover; "alive" ones are lost capacity (they
         * missed every write since; re-admitting one needs a resync). */
        formerOriginals: e.failures.formerOriginals,
      },
      failovers: this.history.filter((h) => h.from !== undefined),
      history: this.history.slice(-100),
      events: { clients: this.o.hub.clientCount, droppedClients: this.o.hub.dropped },
      state: {
        connected: this.o.store.isConnected,
        pendingWrites: this.o.store.pendingWrites,
      },
    };
  }

  private health(target: string, troubled: number): Health {
    const p = this.lastProbe.get(target);
    if (p && !p.alive) return p.reason === "no verdict" ? "suspect" : "down";
    return troubled > 0 ? "degraded" : "healthy";
  }

  // ------------------------------------------------------------------ operations

  async addReplica(id: string, address: string) {
    const dp = this.o.dataPlane;
    if (this.replicas.has(id)) throw new ControlError(409, `replica ${id} exists already`);
    if (dp.replicaIds().includes(id) || this.original.id === id)
      throw new ControlError(409, `id ${id} is taken (a promoted replica keeps its id)`);
    for (const r of this.replicas.values())
      if (r.address === address) throw new ControlError(409, `${address} is replica ${r.id}'s address`);
    if (address === dp.original()) throw new ControlError(409, `${address} is the original`);
    if (dp.ownAddresses.includes(address))
      throw new ControlError(409, `${address} is one of the appliance's own addresses`);
    if (dp.fenced().includes(address))
      throw new ControlError(
        409,
        `${address} is a former original, fenced: connections spliced away from it are still relayed (restart the appliance to let it rejoin)`,
      );
    try {
      dp.addReplica(id, address);
    } catch (e) {
      throw new ControlError(409, (e as Error).message);
    }
    const rec: ReplicaRecord = { id, address, addedAt: iso() };
    this.replicas.set(id, { ...rec, draining: undefined });
    const entry = this.record({ kind: "replica-added", replica: id, address });
    this.o.log.info({ replica: id, address }, "replica added");
    this.publishRoles();
    const persisted = await this.within(this.persisted(this.o.store.addReplica(rec, entry)));
    return { replica: { id, address, addedAt: rec.addedAt, state: "active" }, persisted };
  }

  /** Drains a replica (no new connections; open shadows may finish), then removes it. */
  async removeReplica(id: string, timeoutMs: number) {
    const dp = this.o.dataPlane;
    const r = this.replicas.get(id);
    if (!r) throw new ControlError(404, `no replica ${id}`);
    if (r.draining)
      throw new ControlError(409, `replica ${id} is being drained already (since ${r.draining.since})`);
    const log = this.o.log.child({ replica: id });
    const started = performance.now();
    r.draining = { since: iso(), timeoutMs };
    dp.drainReplica(id);
    log.info({ timeoutMs }, "draining replica");
    this.o.hub.publish("replica-draining", { replica: id, address: r.address, timeoutMs });
    this.publishRoles();
    let open = this.openShadows(id);
    while (open > 0 && performance.now() - started < timeoutMs && this.replicas.get(id) === r) {
      await sleep(Math.min(50, Math.max(1, timeoutMs - (performance.now() - started))));
      open = this.openShadows(id);
    }
    if (this.replicas.get(id) !== r) {
      const why =
        this.original.id === id ? "it was promoted" : (this.failedReplicas.get(id) ?? "it was removed");
      throw new ControlError(409, `replica ${id} left the replica set during its drain: ${why}`);
    }
    const waitedMs = Math.round(performance.now() - started);
    this.replicas.delete(id);
    const reason = open === 0 ? "drained" : `drain timeout: ${open} shadow conversations cut`;
    const entry = this.record({ kind: "replica-removed", replica: id, address: r.address, reason });
    dp.removeReplica(id);
    log.info({ waitedMs, cut: open }, "replica removed");
    this.publishRoles();
    const persisted = await this.within(this.persisted(this.o.store.removeReplica(id, entry)));
    return { id, address: r.address, drained: open === 0, shadowsCut: open, waitedMs, persisted };
  }

  /**
   * Planned promotion: the target (given, or the best active replica) must answer a probe, then
   * the switchover waits until every open connection can continue on it and no handshake is
   * under way, so none is lost; `force` promotes at the deadline anyway (resetting the rest).
   */
  async switchover(opts: { replica?: string | undefined; waitMs: number; force: boolean }) {
    const dp = this.o.dataPlane;
    const started = performance.now();
    const from = this.original.address;
    const target = opts.replica ?? this.pickTarget(false);
    if (target === undefined) throw new ControlError(409, "no active replica to switch over to");
    const r = this.checkTarget(target, false);
    const log = this.o.log.child({ replica: target });
    this.o.hub.publish("switchover", { phase: "requested", replica: target, from });
    const answer = await dp.probe(r.address, 1000);
    if (answer.alive !== true) {
      this.refused(target, `did not answer a probe (${answer.why})`);
      throw new ControlError(
        409,
        `replica ${target} did not answer a probe (${answer.why}): not promoting it`,
      );
    }
    let outlook: PromotionOutlook;
    for (;;) {
      if (this.original.address !== from) {
        this.refused(target, "the roles changed meanwhile");
        throw new ControlError(
          409,
          `the original changed during the switchover (now ${this.original.address})`,
        );
      }
      this.checkTarget(target, false);
      outlook = promotionOutlook(dp.connections(), target);
      if (outlook.blocking === 0 && outlook.halfOpen === 0) break;
      if (performance.now() - started >= opts.waitMs) {
        if (opts.force) break;
        const msg = `${outlook.blocking} open connections cannot continue on ${target} and ${outlook.halfOpen} are in their handshake after ${opts.waitMs} ms: not switching over (force: true resets them)`;
        this.refused(target, msg, outlook);
        throw new ControlError(409, msg, { ...outlook });
      }
      await sleep(1);
    }
    // From the check above to the engine's promotion nothing else runs: the outlook holds.
    const report = await this.promote(target, { kind: "switchover", since: started, reason: undefined });
    const waitedMs = Math.round(performance.now() - started);
    log.info({ ...report, waitedMs, predicted: outlook }, "switchover done");
    if (report.reset !== outlook.blocking)
      log.warn({ predicted: outlook, report }, "the switchover reset other connections than predicted");
    return {
      from,
      to: r.address,
      replica: target,
      ...report,
      waitedMs,
      persisted: await this.within(this.lastPromotionWrite),
    };
  }

  /** External failure signal: promote now (the given replica, or the best). */
  async failover(opts: { replica?: string | undefined; reason?: string | undefined }) {
    const started = performance.now();
    const from = this.original.address;
    const target = opts.replica ?? this.pickTarget(true);
    if (target === undefined) throw new ControlError(409, "no replica left to promote");
    const r = this.checkTarget(target, true);
    this.o.log.warn({ replica: target, reason: opts.reason }, "external failure signal: promoting");
    const report = await this.promote(target, { kind: "failover", since: started, reason: opts.reason });
    return {
      from,
      to: r.address,
      replica: target,
      ...report,
      persisted: await this.within(this.lastPromotionWrite),
    };
  }

  private async promote(target: string, intent: PromotionIntent): Promise<PromotionReport> {
    this.intent = intent;
    try {
      return await this.o.dataPlane.promote(target);
    } catch (e) {
      throw new ControlError(409, (e as Error).message);
    } finally {
      this.intent = undefined;
    }
  }

  private checkTarget(id: string, emergency: boolean): ReplicaEntry {
    const r = this.replicas.get(id);
    if (!r) {
      if (this.original.id === id) throw new ControlError(409, `${id} is the original already`);
      throw new ControlError(404, `no replica ${id}`);
    }
    if (r.draining && !emergency)
      throw new ControlError(409, `replica ${id} is being drained: not a switchover target`);
    return r;
  }

  /** Best active replica: the engine's choice if active, else the one that carries most. */
  private pickTarget(emergency: boolean): string | undefined {
    const dp = this.o.dataPlane;
    const active = [...this.replicas.values()].filter((r) => !r.draining).map((r) => r.id);
    const best = dp.bestReplica();
    if (best !== undefined && active.includes(best)) return best;
    const pool = active.length > 0 ? active : emergency ? [...this.replicas.keys()] : [];
    const srtt = new Map(dp.engineStats().replicas.map((r) => [r.id, r.rttUs.srtt ?? Infinity]));
    const conns = [...dp.connections()];
    const ranked = pool
      .filter((id) => this.lastProbe.get(id)?.alive !== false)
      .map((id) => ({ id, o: promotionOutlook(conns, id), rtt: srtt.get(id) ?? Infinity }))
      .sort((a, b) => b.o.carriable - a.o.carriable || a.o.blocking - b.o.blocking || a.rtt - b.rtt);
    return ranked[0]?.id;
  }

  private refused(replica: string, reason: string, outlook?: PromotionOutlook): void {
    this.o.log.warn({ replica, reason, ...outlook }, "switchover refused");
    this.o.hub.publish("switchover", { phase: "refused", replica, reason, ...outlook });
  }

  private openShadows(id: string): number {
    return drainPending(this.o.dataPlane.connections(), id);
  }

  // ------------------------------------------------------------------ engine events

  private onEngineEvent(e: EngineEvent, at: number): void {
    if (e.type === "probe-result") {
      this.lastProbe.set(e.target, { alive: e.alive, at: iso(at), reason: e.reason });
      return;
    }
    if (!FORWARDED.has(e.type)) return;
    // The engine's event first, then what the control plane makes of it (history, roles).
    this.o.hub.publish(e.type, { ...e, at: iso(at) });
    if (e.type === "original-failure") {
      this.failureSince ??= at - e.afterMs;
      this.failureReason ??= e.reason;
    } else if (e.type === "former-original-alive") this.onFormerAlive(e);
    else if (e.type === "replica-failure") this.failedReplicas.set(e.replica, e.reason);
    else if (e.type === "promoted") this.onPromoted(e, at);
    else if (e.type === "replica-removed") this.onReplicaRemoved(e.replica);
  }

  private onPromoted(e: Extract<EngineEvent, { type: "promoted" }>, at: number): void {
    const intent = this.intent;
    this.intent = undefined;
    const previous = this.original.address;
    const rec = this.replicas.get(e.replica);
    const address = rec?.address ?? this.o.dataPlane.original();
    const stallMs =
      intent !== undefined
        ? wallNow() - (performance.timeOrigin + intent.since)
        : this.failureSince !== undefined
          ? at - this.failureSince
          : undefined;
    this.failureSince = undefined;
    const reason = intent?.reason ?? (intent === undefined ? this.failureReason : undefined);
    this.failureReason = undefined;
    this.original = { address, id: e.replica, since: iso(at) };
    this.replicas.delete(e.replica);
    this.lastProbe.delete("original");
    const kind = intent?.kind ?? "automatic-failover";
    const entry = this.record({
      kind,
      replica: e.replica,
      from: previous,
      to: address,
      spliced: e.spliced,
      reset: e.reset,
      dropped: e.dropped,
      ...(stallMs !== undefined ? { stallMs: Math.round(stallMs * 1000) / 1000 } : {}),
      ...(reason !== undefined ? { reason } : {}),
      confirmedBy: intent?.kind === "failover" ? "external" : e.confirmedBy,
    });
    if (stallMs !== undefined) this.o.metrics.observeFailoverStall(kind, stallMs);
    this.o.log.warn({ replica: e.replica, from: previous, to: address, kind }, "roles changed");
    this.lastPromotionWrite = this.persisted(this.o.store.promote(this.original, entry));
    this.publishRoles();
  }

  /** A replaced original answers again: said in the history, never re-admitted as a replica (it
   * missed every write since its replacement; re-admitting it needs a resync). */
  private onFormerAlive(e: Extract<EngineEvent, { type: "former-original-alive" }>): void {
    const entry = this.record({
      kind: "former-original-alive",
      replica: "",
      address: e.address,
      confirmedBy: e.confirmedBy,
      reason: `${e.address} answered ${Math.round(e.afterMs)} ms after it was failed over (${e.confirmedBy}: ${e.reason}): capacity lost until it is resynchronised`,
    });
    this.o.log.warn(
      { address: e.address, afterMs: e.afterMs, confirmedBy: e.confirmedBy },
      "false failover: the former original is alive",
    );
    void this.persisted(this.o.store.record(entry));
  }

  /** The engine removed a replica on its own (it failed); API removals are gone already. */
  private onReplicaRemoved(id: string): void {
    const r = this.replicas.get(id);
    if (!r) return;
    this.replicas.delete(id);
    const reason = this.failedReplicas.get(id) ?? "removed by the engine";
    const entry = this.record({ kind: "replica-failed", replica: id, address: r.address, reason });
    this.o.log.error({ replica: id, reason }, "replica failed and was removed");
    void this.persisted(this.o.store.removeReplica(id, entry));
    this.publishRoles();
  }

  // ------------------------------------------------------------------ helpers

  private record(e: Omit<HistoryEntry, "at">): HistoryEntry {
    const entry: HistoryEntry = { at: iso(), ...e };
    this.history.push(entry);
    if (this.history.length > this.o.historyLimit)
      this.history.splice(0, this.history.length - this.o.historyLimit);
    this.o.hub.publish("history", { ...entry });
    return entry;
  }

  private publishRoles(): void {
    this.o.hub.publish("roles", this.roles());
  }

  /** Resolves true once Redis acknowledged the write, false if it failed (logged). */
  private persisted(write: Promise<void>): Promise<boolean> {
    return write.then(
      () => true,
      (e: unknown) => {
        this.o.log.error({ err: String(e) }, "state change not stored");
        return false;
      },
    );
  }

  /** An answer does not wait for a slow Redis longer than this: false, it is stored later. */
  private within(stored: Promise<boolean>, timeoutMs = this.persistTimeoutMs): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([
      stored,
      new Promise<boolean>((r) => {
        timer = setTimeout(() => {
          this.o.log.warn({ timeoutMs }, "state store slow: answering before the change is stored");
          r(false);
        }, timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
  }
}
