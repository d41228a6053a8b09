// The appliance's durable state in Redis: the replica set, the roles (which backend is the
// original) and the failover history, so that everything an operator sees survives a restart.
// Every change is one MULTI/EXEC (all of it or nothing) and bumps a generation counter; the first
// start seeds the state from the configuration with a Lua script (seeded once, atomically, even if
// two appliances race). Writes go out in order on one connection; while Redis is unreachable they
// wait in the client's queue and go out when it is back (the data plane never waits for them).
import { Redis, type ChainableCommander, type RedisOptions } from "ioredis";
import type { Logger } from "pino";

export interface ReplicaRecord {
  id: string;
  address: string;
  addedAt: string;
}

export interface OriginalRecord {
  address: string;
  /** The replica id it had before it was promoted; null for the configured original. */
  id: string | null;
  since: string;
}

export type HistoryKind =
  | "switchover"
  | "failover"
  | "automatic-failover"
  | "replica-failed"
  | "replica-added"
  | "replica-removed"
  /** A former original answered again after its replacement: a false failover (or a failure
   * that healed); the capacity is lost until it is resynchronised (never re-admitted as is). */
  | "former-original-alive";

export interface HistoryEntry {
  at: string;
  kind: HistoryKind;
  /** The replica concerned (promoted, failed, added or removed). */
  replica: string;
  address?: string;
  /** Promotions: the original before and after. */
  from?: string;
  to?: string;
  spliced?: number;
  reset?: number;
  dropped?: number;
  /** From failure (or switchover request) to promotion, ms. */
  stallMs?: number;
  reason?: string;
  /** Failovers: what confirmed the failure (the decision rule's evidence, docs/ARCHITECTURE.md
   * "Decision rule"): "probe refused", "probe unanswered", "hang budget", "health check failed"... */
  confirmedBy?: string;
}

export interface StoredState {
  original: OriginalRecord;
  replicas: ReplicaRecord[];
  history: HistoryEntry[];
  generation: number;
}

const SEED = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('INCR', KEYS[3])
return 1
`;

export interface StateStoreOptions {
  /** redis://, rediss:// URL or a Unix socket path. */
  target: string;
  /** Keys are `${prefix}:${vip}:${port}:...`: one Redis can hold several appliances' states. */
  prefix: string;
  service: { vip: string; port: number };
  historyLimit: number;
  log: Logger;
  connectTimeoutMs?: number;
}

export class StateStore {
  private readonly keys: {
    original: string;
    replicas: string;
    history: string;
    generation: string;
  };
  private pending = 0;
  private connected = false;

  private constructor(
    readonly redis: Redis,
    private readonly opts: StateStoreOptions,
  ) {
    const p = `${opts.prefix}:${opts.service.vip}:${opts.service.port}:`;
    this.keys = {
      original: `${p}original`,
      replicas: `${p}replicas`,
      history: `${p}history`,
      generation: `${p}generation`,
    };
  }

  /** Connects; rejects with a clear message when Redis does not answer in time. */
  static async connect(opts: StateStoreOptions): Promise<StateStore> {
    const common: RedisOptions = {
      // Writes wait for a reconnection instead of failing: ordering is kept and nothing is lost
      // while an embedded redis-server is being restarted.
      maxRetriesPerRequest: null,
      enableOfflineQueue: true,
      retryStrategy: (times) => Math.min(50 * 2 ** times, 2000),
      connectionName: "tcp-replicator",
    };
    const redis = opts.target.startsWith("/")
      ? new Redis({ ...common, path: opts.target })
      : new Redis(opts.target, common);
    const store = new StateStore(redis, opts);
    const log = opts.log;
    redis.on("ready", () => {
      if (!store.connected) log.info({ redis: describe(opts.target) }, "state store connected");
      store.connected = true;
    });
    redis.on("error", (e: Error) => {
      if (store.connected) log.warn({ err: e.message }, "state store connection lost");
      store.connected = false;
    });
    redis.on("end", () => (store.connected = false));
    const timeoutMs = opts.connectTimeoutMs ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        redis.ping(),
        new Promise((_, reject) => {
          timer = setTimeout(
            () =>
              reject(new Error(`Redis at ${describe(opts.target)} did not answer within ${timeoutMs} ms`)),
            timeoutMs,
          );
        }),
      ]);
    } catch (e) {
      redis.disconnect();
      throw e;
    } finally {
      clearTimeout(timer);
    }
    return store;
  }

  get isConnected(): boolean {
    return this.connected;
  }

  /** Writes sent and not yet acknowledged by Redis (waiting for it to come back, usually). */
  get pendingWrites(): number {
    return this.pending;
  }

  /** The whole state as one consistent snapshot, or undefined before the first seed. */
  async load(): Promise<StoredState | undefined> {
    const k = this.keys;
    const res = await this.redis
      .multi()
      .get(k.original)
      .hgetall(k.replicas)
      .lrange(k.history, 0, -1)
      .get(k.generation)
      .exec();
    if (!res) throw new Error("state load aborted");
    for (const [err] of res) if (err) throw err;
    const [original, replicas, history, generation] = res.map(([, v]) => v) as [
      string | null,
      Record<string, string>,
      string[],
      string | null,
    ];
    if (original === null) return undefined;
    return {
      original: JSON.parse(original) as OriginalRecord,
      replicas: Object.entries(replicas)
        .map(([id, v]) => ({ id, ...(JSON.parse(v) as Omit<ReplicaRecord, "id">) }))
        .sort((a, b) => a.addedAt.localeCompare(b.addedAt) || a.id.localeCompare(b.id)),
      history: history.map((h) => JSON.parse(h) as HistoryEntry),
      generation: Number(generation ?? 0),
    };
  }

  /** Stores the initial state unless one exists already; true when this call stored it. */
  async seed(original: OriginalRecord, replicas: ReplicaRecord[]): Promise<boolean> {
    const k = this.keys;
    const args = [JSON.stringify(original)];
    for (const r of replicas) args.push(r.id, JSON.stringify({ address: r.address, addedAt: r.addedAt }));
    const stored = await this.redis.eval(SEED, 3, k.original, k.replicas, k.generation, ...args);
    return stored === 1;
  }

  addReplica(r: ReplicaRecord, entry: HistoryEntry): Promise<void> {
    return this.change((m) => {
      m.hset(this.keys.replicas, r.id, JSON.stringify({ address: r.address, addedAt: r.addedAt }));
      this.push(m, entry);
    });
  }

  removeReplica(id: string, entry: HistoryEntry): Promise<void> {
    return this.change((m) => {
      m.hdel(this.keys.replicas, id);
      this.push(m, entry);
    });
  }

  /** A promotion: the new original, the replica it was leaves the set, the history grows. */
  promote(original: OriginalRecord, entry: HistoryEntry): Promise<void> {
    return this.change((m) => {
      m.set(this.keys.original, JSON.stringify(original));
      if (original.id !== null) m.hdel(this.keys.replicas, original.id);
      this.push(m, entry);
    });
  }

  /** A history entry that changes no role (a former original found alive). */
  record(entry: HistoryEntry): Promise<void> {
    return this.change((m) => this.push(m, entry));
  }

  private push(m: ChainableCommander, entry: HistoryEntry): void {
    m.rpush(this.keys.history, JSON.stringify(entry));
    m.ltrim(this.keys.history, -this.opts.historyLimit, -1);
  }

  private async change(build: (m: ChainableCommander) => void): Promise<void> {
    const m = this.redis.multi();
    build(m);
    m.incr(this.keys.generation);
    this.pending++;
    try {
      const res = await m.exec();
      if (!res) throw new Error("state change aborted");
      for (const [err] of res) if (err) throw err;
    } finally {
      this.pending--;
    }
  }

  async close(): Promise<void> {
    if (this.pending > 0)
      this.opts.log.warn({ pending: this.pending }, "closing the state store with writes not acknowledged");
    // QUIT would wait in the offline queue for a Redis that is gone.
    if (this.redis.status !== "ready") return this.redis.disconnect();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.redis.quit().catch(() => undefined),
      new Promise((r) => (timer = setTimeout(r, 2000))),
    ]);
    clearTimeout(timer);
    this.redis.disconnect();
  }
}

/** A Redis target for logs and errors, without its password. */
export function describe(target: string): string {
  if (target.startsWith("/")) return target;
  try {
    const u = new URL(target);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(invalid URL)";
  }
}
