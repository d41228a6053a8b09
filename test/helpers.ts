// Shared helpers for tests that drive real labs. Every lab gets a name unique to the test process,
// and is taken down in a teardown that runs whether the test passed or failed.
import { spawn } from "node:child_process";
import { copyFile, readFile, readdir, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import type { Test } from "tap";
import { run, runStatus } from "../src/sys/command.js";
import { labDir, labDown, labUp, runDir, type LabState, type LabUpOptions } from "../src/lab/lab.js";
import type { LabTopology, ServiceKind } from "../src/lab/topology.js";
import { queryStats } from "../src/proxy/stats-client.js";
import type { ProxyStats } from "../src/proxy/proxy.js";
import type { IncrLoopResult } from "./fixtures/incr-loop.js";

export const CLI = fileURLToPath(new URL("../src/cli/main.js", import.meta.url));

let counter = 0;
/** A lab name no other test process uses: the pid in base 36 plus a per-process counter. */
export function uniqueLabName(tag: string): string {
  counter++;
  return `t-${process.pid.toString(36)}-${counter}-${tag}`.slice(0, 31);
}

/**
 * A lab taken down whatever happens. Replication tests run it with automatic failover off so a
 * spurious failure signal cannot change what they measure (the signal is still counted in the
 * proxy's statistics); failover tests turn it on. `options` go to the proxy as they are (health
 * check, detection thresholds).
 */
export async function withLab(
  t: Test,
  tag: string,
  replicas: number,
  service: ServiceKind,
  autoFailover = false,
  options: Pick<LabUpOptions, "healthCheck" | "failure" | "proxy"> = {},
): Promise<LabState> {
  const name = uniqueLabName(tag);
  t.teardown(async () => {
    // A failed test's proxy log outlives the lab: it is the evidence of what the appliance did.
    if (!t.passing()) {
      const kept = join(tmpdir(), `${name}-proxy.log`);
      await copyFile(join(labDir(name), "proxy.log"), kept).then(
        () => console.error(`# ${t.name}: the proxy's log is kept in ${kept}`),
        () => undefined,
      );
    }
    await labDown(name);
  });
  return labUp({ name, replicas, service, autoFailover, ...options });
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function cli(
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
  timeoutMs = 60_000,
): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? 1, stdout, stderr });
    });
  });
}

/** Runs a command inside a namespace; resolves with its exit code and output. */
export function inNs(namespace: string, argv: string[], timeoutMs = 30_000) {
  return runStatus(["ip", "netns", "exec", namespace, ...argv], { timeoutMs });
}

export async function namespaces(): Promise<string[]> {
  const out = await run(["ip", "-j", "netns", "list"]);
  return (JSON.parse(out.trim() || "[]") as Array<{ name: string }>).map((n) => n.name);
}

export async function labNamespaces(name: string): Promise<string[]> {
  return (await namespaces()).filter((n) => n.startsWith(`tr-${name}-`));
}

export async function slotOwners(): Promise<string[]> {
  const dir = join(runDir(), "slots");
  const entries = await readdir(dir).catch(() => [] as string[]);
  return Promise.all(entries.map((e) => readFile(join(dir, e), "utf8").catch(() => "")));
}

export async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls the lab's proxy until it holds no connection and no byte (replication caught up). */
export async function waitReplicationIdle(statsSocket: string, timeoutMs = 120_000): Promise<ProxyStats> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await queryStats(statsSocket);
    if (s.engine.connections.active === 0 && s.engine.bufferedBytes === 0) return s;
    if (Date.now() > deadline) {
      throw new Error(`replication not idle after ${timeoutMs} ms: ${JSON.stringify(s.engine.connections)}`);
    }
    await sleep(200);
  }
}

/** Runs the project's CLI inside a namespace. */
export function cliIn(namespace: string, args: string[], timeoutMs = 300_000) {
  return inNs(namespace, [process.execPath, CLI, ...args], timeoutMs);
}

/** The lines a lab's proxy logged (pino JSON lines in its log file) that `keep` accepts. */
export async function proxyLogLines<T = Record<string, unknown>>(
  logPath: string,
  keep: (line: { type?: unknown; level?: unknown; msg?: unknown }) => boolean,
): Promise<T[]> {
  const text = await readFile(logPath, "utf8").catch(() => "");
  const lines: T[] = [];
  for (const line of text.split("\n")) {
    try {
      const o = JSON.parse(line) as { type?: unknown };
      if (keep(o)) lines.push(o as T);
    } catch {
      // not a JSON line (e.g. a crash message)
    }
  }
  return lines;
}

/** The engine events of one type that a lab's proxy logged. */
export function proxyLogEvents<T = Record<string, unknown>>(logPath: string, type: string): Promise<T[]> {
  return proxyLogLines<T>(logPath, (o) => o.type === type);
}

const INCR = fileURLToPath(new URL("./fixtures/incr-loop.js", import.meta.url));

/** `connections` INCR loops through the lab's VIP for `seconds`, run from the client namespace
 * (test/fixtures/incr-loop.ts); killed after `timeoutMs` (then they report nothing). */
export function incrLoops(
  topo: LabTopology,
  connections: number,
  seconds: number,
  prefix = "",
  timeoutMs = 60_000,
) {
  return inNs(
    topo.client.namespace,
    [process.execPath, INCR, topo.appliance.vip, String(connections), String(seconds), prefix],
    timeoutMs,
  );
}

/** Asserts that INCR loops exited 0, all `connections` reported, and none saw an error or a gap. */
export function checkIncrLoops(
  t: Test,
  r: { code: number; stdout: string; stderr: string },
  connections: number,
  what = "loops",
): IncrLoopResult[] {
  t.equal(r.code, 0, `${what} exited 0 ${r.stderr.trim()}`);
  let results: IncrLoopResult[] = [];
  try {
    results = JSON.parse(r.stdout) as IncrLoopResult[];
  } catch {
    t.fail(`${what} printed no report: ${JSON.stringify(r.stdout.slice(0, 200))}`);
  }
  t.equal(results.length, connections, `${what}: ${connections} loops reported`);
  for (const l of results) t.same(l.errors, [], `${l.key}: ${l.n} INCRs, no error, no gap`);
  return results;
}

/** A Redis dataset's DEBUG DIGEST, asked inside a backend's namespace. */
export async function redisDigest(namespace: string): Promise<string> {
  return (await inNs(namespace, ["redis-cli", "DEBUG", "DIGEST"])).stdout.trim();
}
