// The `serve` configuration: the proxy's configuration (same format as `proxy --config`) plus an
// `api` section for the control plane. Validated field by field like the proxy's; anything unknown
// or malformed is a ConfigError naming the field, and nothing starts.
import { isIP } from "node:net";
import { ConfigError, parseProxyConfig, type ProxyConfig } from "../proxy/config.js";
import { parseMachinesConfig, type MachinesConfig } from "./machines-config.js";

export type LogLevel = ProxyConfig["logLevel"];
const LOG_LEVELS: readonly LogLevel[] = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

export const DEFAULT_API_PORT = 9480;
/** Where the appliance's embedded Redis keeps its socket and pid file (recreated at boot). */
export const DEFAULT_RUNTIME_DIR = "/run/tcp-replicator/serve";
/** Where the embedded Redis keeps its append-only file: it must survive a reboot. */
export const DEFAULT_DATA_DIR = "/var/lib/tcp-replicator";
export const TOKEN_ENV = "TCP_REPLICATOR_API_TOKEN";

export interface ApiConfig {
  /** Address the API listens on (loopback unless the operator says otherwise). */
  listen: string;
  port: number;
  /** Bearer token of the mutating routes; undefined: one is generated at start (loopback only). */
  token: string | undefined;
  /** An operator-run Redis (redis://, rediss:// or a Unix socket path); undefined: embedded. */
  redisUrl: string | undefined;
  /** Key prefix in Redis: one Redis can hold the state of several appliances. */
  redisPrefix: string;
  runtimeDir: string;
  dataDir: string;
  logLevel: LogLevel;
  /** How long DELETE /v1/replicas/:id waits for the replica's open shadows to finish by default. */
  drainTimeoutMs: number;
  /** How long a switchover waits by default for every open connection to be carriable. */
  switchoverWaitMs: number;
  /** Entries of the failover history kept (older ones are trimmed, atomically with the push). */
  historyLimit: number;
}

export interface ServeConfig {
  proxy: ProxyConfig;
  api: ApiConfig;
  /** Machines provisioned through libvirt, and the replica count kept (optional). */
  machines?: MachinesConfig | undefined;
}

const API_FIELDS = [
  "listen",
  "port",
  "token",
  "redisUrl",
  "redisPrefix",
  "runtimeDir",
  "dataDir",
  "logLevel",
  "drainTimeoutMs",
  "switchoverWaitMs",
  "historyLimit",
];

/** 127.0.0.0/8 and ::1: reachable from this machine only. */
export function isLoopback(address: string): boolean {
  if (isIP(address) === 4) return address.startsWith("127.");
  return address === "::1";
}

function int(o: Record<string, unknown>, key: string, lo: number, hi: number, dflt: number): number {
  const v = o[key] ?? dflt;
  if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi)
    throw new ConfigError(
      `api.${key}: expected an integer from ${lo} to ${hi}, got ${JSON.stringify(o[key])}`,
    );
  return v;
}

function str(o: Record<string, unknown>, key: string): string | undefined {
  const v = o[key];
  if (v === undefined) return undefined;
  if (typeof v !== "string" || v.length === 0)
    throw new ConfigError(`api.${key}: expected a non-empty string`);
  return v;
}

function absolutePath(o: Record<string, unknown>, key: string, dflt: string, max: number): string {
  const v = str(o, key) ?? dflt;
  if (!v.startsWith("/") || v.length > max)
    throw new ConfigError(`api.${key}: expected an absolute path of at most ${max} characters`);
  return v;
}

/** A token an attacker cannot guess: long, and printable so it fits in a header unchanged. */
export function checkToken(token: string, where: string): string {
  if (!/^[\x21-\x7e]{16,256}$/.test(token))
    throw new ConfigError(`${where}: expected 16 to 256 printable ASCII characters without spaces`);
  return token;
}

function redisUrl(o: Record<string, unknown>): string | undefined {
  const v = str(o, "redisUrl");
  if (v === undefined || v.startsWith("/")) return v;
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    throw new ConfigError(`api.redisUrl: not a URL: ${JSON.stringify(v)}`);
  }
  if (u.protocol !== "redis:" && u.protocol !== "rediss:")
    throw new ConfigError("api.redisUrl: expected redis://, rediss:// or an absolute Unix socket path");
  return v;
}

export function parseApiConfig(raw: unknown, env: NodeJS.ProcessEnv = {}): ApiConfig {
  if (raw === undefined) raw = {};
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new ConfigError("api: expected an object");
  const o = raw as Record<string, unknown>;
  for (const k of Object.keys(o))
    if (!API_FIELDS.includes(k)) throw new ConfigError(`api: unknown field ${JSON.stringify(k)}`);
  const listen = str(o, "listen") ?? "127.0.0.1";
  if (isIP(listen) === 0)
    throw new ConfigError(`api.listen: expected an IP address, got ${JSON.stringify(listen)}`);
  const fromConfig = str(o, "token");
  const fromEnv = env[TOKEN_ENV] === "" ? undefined : env[TOKEN_ENV];
  const token =
    fromConfig !== undefined
      ? checkToken(fromConfig, "api.token")
      : fromEnv !== undefined
        ? checkToken(fromEnv, TOKEN_ENV)
        : undefined;
  // Anyone who can reach a non-loopback address could promote, add or remove replicas.
  if (!isLoopback(listen) && token === undefined)
    throw new ConfigError(
      `api.listen: ${listen} is not a loopback address: refusing to serve the API there without a token (set api.token or ${TOKEN_ENV})`,
    );
  const prefix = str(o, "redisPrefix") ?? "tcp-replicator";
  if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(prefix))
    throw new ConfigError("api.redisPrefix: 1 to 64 letters, digits, '_', '.', ':', '-'");
  const logLevel = (o.logLevel ?? "info") as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) throw new ConfigError(`api.logLevel: one of ${LOG_LEVELS.join(", ")}`);
  return {
    listen,
    port: int(o, "port", 1, 65535, DEFAULT_API_PORT),
    token,
    redisUrl: redisUrl(o),
    redisPrefix: prefix,
    // The embedded Redis's socket lives there: a Unix socket path has at most 107 bytes.
    runtimeDir: absolutePath(o, "runtimeDir", DEFAULT_RUNTIME_DIR, 90),
    dataDir: absolutePath(o, "dataDir", DEFAULT_DATA_DIR, 200),
    logLevel,
    drainTimeoutMs: int(o, "drainTimeoutMs", 0, 3_600_000, 30_000),
    switchoverWaitMs: int(o, "switchoverWaitMs", 0, 60_000, 2000),
    historyLimit: int(o, "historyLimit", 1, 100_000, 1000),
  };
}

/** The proxy's fields as `proxy --config` takes them, plus `api` and `machines` (relative paths
 * in it are relative to `baseDir`, the configuration file's directory). */
export function parseServeConfig(raw: unknown, env: NodeJS.ProcessEnv = {}, baseDir?: string): ServeConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new ConfigError("config: expected a JSON object");
  const { api, machines, ...proxyRaw } = raw as Record<string, unknown>;
  const proxy = parseProxyConfig(proxyRaw);
  return {
    proxy,
    api: parseApiConfig(api, env),
    machines: machines === undefined ? undefined : parseMachinesConfig(machines, proxy.port, baseDir),
  };
}
