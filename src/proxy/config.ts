// The proxy's configuration: parsed from a JSON file and/or command-line flags, validated field by
// field. Anything unknown or malformed is a ConfigError naming the field; nothing starts with a
// config that is not fully valid.
import { isIPv4 } from "./nft.js";
import {
  DEFAULT_HANG_BUDGET_MS,
  DEFAULT_HYSTERESIS_MS,
  DEFAULT_LIMITS,
  type EngineLimits,
} from "../replica/types.js";
import type { HealthCheck } from "./probe.js";

export class ConfigError extends Error {}

export interface ProxyConfig {
  /** Address clients connect to (must be local to the appliance). */
  vip: string;
  port: number;
  original: string;
  /** The original's peer address (kernel SNAT); the appliance's address toward the backends. */
  snatAddress: string;
  /** Source address of the shadow conversations; added to the backend interface by the proxy. */
  replicationAddress: string;
  replicas: Array<{ id: string; address: string }>;
  captureDevice: string;
  captureBufferBytes: number;
  /** After each wake-up the capture helper waits this long before it sleeps on the ring again
   * (0: wake per packet). Per-packet wake-ups cost the forwarding path a cross-CPU wake-up each
   * (+20 µs per round trip measured in the lab); 100 µs of coalescing leaves +3 µs. */
  captureCoalesceUs: number;
  /** Firewall mark of the engine's raw packets. */
  mark: number;
  table: string;
  /** Unix socket answering with the proxy's statistics as JSON (optional). */
  statsSocket: string | undefined;
  limits: EngineLimits;
  finHoldMs: number;
  /** Promote the best replica as soon as the original is seen failing. */
  autoFailover: boolean;
  /** Detection thresholds (ms); see EngineConfig.failure. */
  failure: FailureTuning;
  /** Application-level probe: after the TCP handshake, send `send` and expect a reply starting
   * with `expect` within `timeoutMs`. Without it a probe only checks that the port accepts. */
  healthCheck: HealthCheck | undefined;
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  /** A replica's HTTP Date header a second off the original's is no divergence (default true). */
  tolerateHttpDate: boolean;
}

export interface FailureTuning {
  closeMismatchMs: number;
  stallSuspectMs: number;
  hangBudgetMs: number;
  hysteresisMs: number;
  probeTimeoutMs: number;
  probeIntervalMs: number;
}

/**
 * The shipped defaults. The suspicion (3 ms) and probe deadline (5 ms) floors are what a link or
 * host failure costs before the probe's verdict; both rise with the original's measured handshake
 * RTT and its spread (OriginalEvidence). 2 ms / 3 ms were measured too (link/host stall p50 9.0 /
 * 8.4 ms, 0 false failovers in 300 hiccups: bench/results/detector-2026-12-06T10-46-00-303Z.md)
 * but made CI's failover-newconns test (process kill under a connection storm) leave a client
 * unanswered about 1 run in 10; with 3 / 5, 12 of 12 passed. See docs/PROGRESS.md, session 10.
 */
export const FAILURE_DEFAULTS: FailureTuning = {
  closeMismatchMs: 2,
  stallSuspectMs: 3,
  hangBudgetMs: DEFAULT_HANG_BUDGET_MS,
  hysteresisMs: DEFAULT_HYSTERESIS_MS,
  probeTimeoutMs: 5,
  probeIntervalMs: 500,
};

const KNOWN = new Set([
  "failure",
  "healthCheck",
  "vip",
  "port",
  "original",
  "snatAddress",
  "replicationAddress",
  "replicas",
  "captureDevice",
  "captureBufferBytes",
  "captureCoalesceUs",
  "mark",
  "table",
  "statsSocket",
  "limits",
  "finHoldMs",
  "autoFailover",
  "logLevel",
  "tolerateHttpDate",
]);
const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

function ip(raw: Record<string, unknown>, key: string): string {
  const v = raw[key];
  if (typeof v !== "string" || !isIPv4(v))
    throw new ConfigError(`${key}: expected an IPv4 address, got ${JSON.stringify(v)}`);
  return v;
}

function int(raw: Record<string, unknown>, key: string, lo: number, hi: number, dflt?: number): number {
  const v = raw[key] ?? dflt;
  if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) {
    throw new ConfigError(`${key}: expected an integer from ${lo} to ${hi}, got ${JSON.stringify(raw[key])}`);
  }
  return v;
}

function object(
  raw: Record<string, unknown>,
  key: string,
  known: readonly string[],
): Record<string, unknown> {
  const v = raw[key] ?? {};
  if (typeof v !== "object" || v === null || Array.isArray(v))
    throw new ConfigError(`${key}: expected an object`);
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o))
    if (!known.includes(k)) throw new ConfigError(`${key}: unknown field ${JSON.stringify(k)}`);
  return o;
}

function text(raw: Record<string, unknown>, key: string, max: number): string {
  const v = raw[key];
  if (typeof v !== "string" || v.length === 0 || v.length > max)
    throw new ConfigError(`${key}: expected a string of 1 to ${max} characters`);
  // Sent and compared byte for byte (latin1): other characters would never match.
  if ([...v].some((ch) => ch.charCodeAt(0) > 0xff))
    throw new ConfigError(`${key}: only characters U+0000 to U+00FF`);
  return v;
}

function bool(raw: Record<string, unknown>, key: string): boolean {
  const v = raw[key];
  if (typeof v !== "boolean")
    throw new ConfigError(`${key}: expected true or false, got ${JSON.stringify(v)}`);
  return v;
}

export function parseProxyConfig(raw: unknown): ProxyConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new ConfigError("config: expected a JSON object");
  const r = raw as Record<string, unknown>;
  for (const k of Object.keys(r))
    if (!KNOWN.has(k)) throw new ConfigError(`unknown field ${JSON.stringify(k)}`);
  const replicasRaw = r.replicas ?? [];
  if (!Array.isArray(replicasRaw)) throw new ConfigError("replicas: expected an array");
  const replicas = replicasRaw.map((x: unknown, i) => {
    if (typeof x !== "object" || x === null) throw new ConfigError(`replicas[${i}]: expected {id, address}`);
    const o = x as Record<string, unknown>;
    for (const k of Object.keys(o))
      if (k !== "id" && k !== "address")
        throw new ConfigError(`replicas[${i}]: unknown field ${JSON.stringify(k)}`);
    if (typeof o.id !== "string" || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(o.id)) {
      throw new ConfigError(`replicas[${i}].id: expected a name of letters, digits, '.', '_', '-'`);
    }
    return { id: o.id, address: ip(o, "address") };
  });
  const ids = new Set(replicas.map((x) => x.id));
  if (ids.size !== replicas.length) throw new ConfigError("replicas: ids must be unique");
  const addrs = new Set(replicas.map((x) => x.address));
  if (addrs.size !== replicas.length) throw new ConfigError("replicas: addresses must be unique");

  const limitsRaw = r.limits ?? {};
  if (typeof limitsRaw !== "object" || limitsRaw === null)
    throw new ConfigError("limits: expected an object");
  const lr = limitsRaw as Record<string, unknown>;
  for (const k of Object.keys(lr))
    if (!(k in DEFAULT_LIMITS)) throw new ConfigError(`limits: unknown field ${JSON.stringify(k)}`);
  const limits: EngineLimits = {
    perConnectionBytes: int(lr, "perConnectionBytes", 4096, 2 ** 40, DEFAULT_LIMITS.perConnectionBytes),
    perReplicaBytes: int(lr, "perReplicaBytes", 4096, 2 ** 40, DEFAULT_LIMITS.perReplicaBytes),
    globalBytes: int(lr, "globalBytes", 4096, 2 ** 40, DEFAULT_LIMITS.globalBytes),
    outOfOrderBytes: int(lr, "outOfOrderBytes", 0, 2 ** 40, DEFAULT_LIMITS.outOfOrderBytes),
    maxConnections: int(lr, "maxConnections", 1, 10_000_000, DEFAULT_LIMITS.maxConnections),
  };

  for (const old of ["replyStallMs", "ackStallMs"])
    if (typeof r.failure === "object" && r.failure !== null && old in r.failure)
      throw new ConfigError(
        `failure.${old}: replaced by failure.hangBudgetMs (one budget for any stall no probe confirms)`,
      );
  const fr = object(r, "failure", Object.keys(FAILURE_DEFAULTS));
  const failure: FailureTuning = {
    closeMismatchMs: int(fr, "closeMismatchMs", 0, 60_000, FAILURE_DEFAULTS.closeMismatchMs),
    stallSuspectMs: int(fr, "stallSuspectMs", 1, 60_000, FAILURE_DEFAULTS.stallSuspectMs),
    hangBudgetMs: int(fr, "hangBudgetMs", 1, 600_000, FAILURE_DEFAULTS.hangBudgetMs),
    hysteresisMs: int(fr, "hysteresisMs", 0, 3_600_000, FAILURE_DEFAULTS.hysteresisMs),
    probeTimeoutMs: int(fr, "probeTimeoutMs", 1, 60_000, FAILURE_DEFAULTS.probeTimeoutMs),
    probeIntervalMs: int(fr, "probeIntervalMs", 0, 3_600_000, FAILURE_DEFAULTS.probeIntervalMs),
  };
  let healthCheck: HealthCheck | undefined;
  if (r.healthCheck !== undefined) {
    const h = object(r, "healthCheck", ["send", "expect", "timeoutMs"]);
    healthCheck = {
      send: text(h, "send", 4096),
      expect: text(h, "expect", 4096),
      timeoutMs: int(h, "timeoutMs", 1, 60_000, 10),
    };
  }

  const cfg: ProxyConfig = {
    vip: ip(r, "vip"),
    port: int(r, "port", 1, 65535),
    original: ip(r, "original"),
    snatAddress: ip(r, "snatAddress"),
    replicationAddress: ip(r, "replicationAddress"),
    replicas,
    captureDevice: typeof r.captureDevice === "string" ? r.captureDevice : "any",
    captureBufferBytes: int(r, "captureBufferBytes", 1 << 16, 1 << 30, 128 << 20),
    captureCoalesceUs: int(r, "captureCoalesceUs", 0, 10_000, 100),
    mark: int(r, "mark", 1, 0xffffffff, 0x7472),
    table: typeof r.table === "string" ? r.table : "tcp_replicator",
    statsSocket: typeof r.statsSocket === "string" ? r.statsSocket : undefined,
    limits,
    finHoldMs: int(r, "finHoldMs", 1, 600_000, 2000),
    autoFailover: r.autoFailover === undefined ? true : bool(r, "autoFailover"),
    failure,
    healthCheck,
    logLevel: (r.logLevel ?? "info") as ProxyConfig["logLevel"],
    tolerateHttpDate: r.tolerateHttpDate === undefined ? true : bool(r, "tolerateHttpDate"),
  };
  if (!(LOG_LEVELS as readonly string[]).includes(cfg.logLevel))
    throw new ConfigError(`logLevel: one of ${LOG_LEVELS.join(", ")}`);
  if (!/^[a-z_][a-z0-9_]{0,30}$/.test(cfg.table))
    throw new ConfigError(`table: bad nftables table name ${JSON.stringify(cfg.table)}`);
  const roles = [
    cfg.vip,
    cfg.original,
    cfg.snatAddress,
    cfg.replicationAddress,
    ...replicas.map((x) => x.address),
  ];
  if (new Set(roles).size !== roles.length) {
    throw new ConfigError(
      "vip, original, snatAddress, replicationAddress and replica addresses must all differ",
    );
  }
  return cfg;
}
