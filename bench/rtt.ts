// What replication costs the client, measured side by side in one run (issue 5), next to the
// thesis's Tables 5.3–5.5:
//   - client RTT (TCP ping-pong timed in C, plus the kernel's tcp_info RTT) and the server's own
//     view of its RTT toward the client (`ss -ti` on the original), through: a direct route, the
//     kernel NAT alone, HAProxy in TCP mode, and the appliance with 0, 1, 2, 3 replicas;
//   - the same with replicas behind a WAN delay line (the thesis's remote replicas);
//   - throughput: redis-benchmark and wrk through each path;
//   - the appliance's own passive RTT per path (what it reports to operators).
// Configurations are measured in interleaved rounds (the order rotates each round) and each
// figure is the median over rounds, so background noise on a shared machine hits all alike.
//
//   node dist/bench/main.js rtt [--rounds 15] [--count 1000] [--size 64] [--only lan,wan,throughput]
//     [--wan-delay-ms 11.5] [--throughput-rounds 5] [--out bench/results]
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { barChart, type Bar } from "./charts.js";
import { machine, machineLine, writeResults } from "./report.js";
import { delayLineStats, labDown, labUp, type LabState, type LabUpOptions } from "../src/lab/lab.js";
import { captureFilters, CAPTURE_NICE, PCAP_PIPE, SNAPLEN } from "../src/proxy/capture.js";
import { parseProxyConfig } from "../src/proxy/config.js";
import { queryStats } from "../src/proxy/stats-client.js";
import { parseIPv4 } from "../src/wire/ipv4.js";
import { run, runStatus } from "../src/sys/command.js";
import { summarize } from "../src/sys/stats.js";
import type { EngineStats } from "../src/replica/types.js";

const TCP_PING = fileURLToPath(new URL("../native/tcp-ping", import.meta.url));
/**
 * CPU placement, unless --no-pin: the client and the original on CPU 0, the appliance (proxy,
 * capture helpers, HAProxy) and the replicas on CPU 1 — on a real network they are different
 * machines. Unpinned on this 2-vCPU VM, where the scheduler puts the ping-pong (same CPU: 24 µs,
 * across CPUs: 45-60 µs) decides the result more than any configuration does.
 */
const CLIENT_CPU = 0;
const APPLIANCE_CPU = 1;
const HAPROXY_PORT = 16379;

/** Thesis Table 5.4 (client → server, LAN, ms) and 5.5 (server → client), by replica count. */
const THESIS_LAN_CLIENT: Record<number, number> = { 0: 0.02699, 1: 0.04889, 2: 0.04875, 3: 0.05071 };
const THESIS_LAN_SERVER: Record<number, number> = { 0: 6.90849, 1: 26.86444, 2: 32.29798, 3: 43.43767 };
/** Thesis Table 5.3 (WAN replicas; client → server and server → client, ms). */
const THESIS_WAN_CLIENT: Record<number, number> = { 0: 0.0332, 1: 0.0372, 2: 0.0387 };
const THESIS_WAN_SERVER: Record<number, number> = { 0: 0.0369, 1: 0.0366, 2: 0.03763 };

let pinning = true;

async function pin(pid: number, cpu: number): Promise<void> {
  if (!pinning) return;
  await run(["taskset", "-a", "-p", "-c", String(cpu), String(pid)]);
}

/** Places a lab's processes (see CLIENT_CPU). */
async function placeLab(lab: LabState): Promise<void> {
  for (const [role, svc] of Object.entries(lab.services))
    await pin(svc.pid, role === "original" ? CLIENT_CPU : APPLIANCE_CPU);
  if (lab.proxy) {
    await pin(lab.proxy.pid, APPLIANCE_CPU);
    const kids = await runStatus(["pgrep", "-P", String(lab.proxy.pid)]);
    for (const k of kids.stdout.split("\n").filter(Boolean)) await pin(Number(k), APPLIANCE_CPU);
  }
}

/** argv prefix that runs a client tool in the lab's client namespace, on the client's CPU. */
function inClient(lab: LabState): string[] {
  const ns = ["ip", "netns", "exec", lab.topology.client.namespace];
  return pinning ? [...ns, "taskset", "-c", String(CLIENT_CPU)] : ns;
}

interface Path {
  key: string;
  label: string;
  lab: LabState;
  host: string;
  port: number;
  /** Replicas behind the appliance (undefined: no appliance on the path). */
  replicas?: number;
  /** HAProxy terminates TCP: the original's RTT is toward HAProxy, not the client. */
  terminates?: boolean;
}

interface RoundResult {
  p50: number;
  mean: number;
  stdDev: number;
  p99: number;
  /** The client kernel's smoothed RTT of the connection (µs). */
  clientSrtt: number;
  /** The original kernel's smoothed RTT of its side of the connection (µs). */
  serverSrtt: number | null;
}

/** One ping-pong run: tcp-ping in the client namespace; while it holds the connection open the
 * original's kernel is asked for its own RTT of that connection. */
async function pingOnce(p: Path, count: number, size: number): Promise<RoundResult> {
  const t = p.lab.topology;
  const [cmd, ...args] = [
    ...inClient(p.lab),
    TCP_PING,
    p.host,
    String(p.port),
    String(count),
    String(size),
    "redis",
    "50",
    "5000",
  ];
  const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stderr.on("data", (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number>((resolve) => child.on("close", (code) => resolve(code ?? 1)));
  const line = await new Promise<string>((resolve, reject) => {
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf("\n");
      if (nl >= 0) resolve(out.slice(0, nl));
    });
    void exited.then((code) => reject(new Error(`tcp-ping ${p.label} exited ${code}: ${err.trim()}`)));
  });
  let serverSrtt: number | null = null;
  try {
    serverSrtt = await serverRtt(t.original.namespace, t.port, count * size);
  } finally {
    child.stdin.end(); // tcp-ping closes its connection when its standard input closes
    await exited;
  }
  const r = JSON.parse(line) as {
    rttUs: { p50: number; mean: number; stdDev: number; p99: number };
    tcpInfo: { rttUs: number };
  };
  return { ...r.rttUs, clientSrtt: r.tcpInfo.rttUs, serverSrtt };
}

/** The smoothed RTT (µs) of the service's busiest established connection, from `ss -ti`. */
async function serverRtt(ns: string, port: number, minBytes: number): Promise<number | null> {
  const out = await run([
    "ip",
    "netns",
    "exec",
    ns,
    "ss",
    "-tinH",
    "state",
    "established",
    `( sport = :${port} )`,
  ]);
  let best: { bytes: number; rtt: number } | undefined;
  for (const m of out.matchAll(/rtt:([\d.]+)\/[\d.]+[\s\S]*?bytes_received:(\d+)/g)) {
    const bytes = Number(m[2]);
    if (bytes >= minBytes && (!best || bytes > best.bytes)) best = { bytes, rtt: Number(m[1]) * 1000 };
  }
  return best?.rtt ?? null;
}

/** HAProxy in TCP mode in the appliance namespace, forwarding to the original (the alternative
 * an operator would deploy instead of this appliance). */
/**
 * The appliance's two capture helpers, alone (same filters, snaplen, ring, coalescing and
 * priority as the proxy's; records go to /dev/null), in front of a lab's plain kernel NAT: this
 * path tells what passive capture costs the client by itself, apart from the engine.
 */
async function startCaptureOnly(lab: LabState): Promise<{ stop: () => Promise<void> }> {
  const t = lab.topology;
  const filters = captureFilters({
    vip: parseIPv4(t.appliance.vip),
    port: t.port,
    original: parseIPv4(t.original.address),
    snatAddress: parseIPv4(t.appliance.backendAddress),
    replicationAddress: parseIPv4(t.appliance.replicationAddress),
  });
  const defaults = parseProxyConfig({
    vip: t.appliance.vip,
    port: t.port,
    original: t.original.address,
    snatAddress: t.appliance.backendAddress,
    replicationAddress: t.appliance.replicationAddress,
    replicas: [],
  });
  const children = [filters.client, filters.backend].map((f) =>
    spawn(
      "ip",
      [
        "netns",
        "exec",
        t.appliance.namespace,
        "nice",
        "-n",
        String(CAPTURE_NICE),
        PCAP_PIPE,
        defaults.captureDevice,
        String(SNAPLEN),
        String(defaults.captureBufferBytes),
        f,
        String(defaults.captureCoalesceUs),
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    ),
  );
  const stop = async () => {
    for (const c of children) {
      if (c.exitCode === null && c.signalCode === null) {
        c.kill("SIGTERM");
        await new Promise((r) => c.once("close", r));
      }
    }
  };
  try {
    for (const c of children) {
      let err = "";
      await new Promise<void>((resolve, reject) => {
        c.stderr.on("data", (d: Buffer) => {
          err += d.toString();
          if (/listening on/.test(err)) resolve();
        });
        c.once("close", () => reject(new Error(`capture helper exited: ${err.trim()}`)));
      });
      if (c.pid !== undefined) await pin(c.pid, APPLIANCE_CPU);
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return { stop };
}

async function startHaproxy(lab: LabState): Promise<{ stop: () => Promise<void> }> {
  const t = lab.topology;
  const dir = await mkdtemp(join(tmpdir(), "tr-haproxy-"));
  const cfg = join(dir, "haproxy.cfg");
  await writeFile(
    cfg,
    [
      "global",
      "  maxconn 4096",
      "defaults",
      "  mode tcp",
      "  timeout connect 5s",
      "  timeout client 1m",
      "  timeout server 1m",
      "frontend vip",
      `  bind ${t.appliance.clientAddress}:${HAPROXY_PORT}`,
      "  default_backend original",
      "backend original",
      `  server original ${t.original.address}:${t.port}`,
      "",
    ].join("\n"),
  );
  const child = spawn("ip", ["netns", "exec", t.appliance.namespace, "haproxy", "-f", cfg, "-db"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let err = "";
  child.stderr.on("data", (d: Buffer) => (err += d.toString()));
  if (child.pid !== undefined) await pin(child.pid, APPLIANCE_CPU).catch(() => undefined);
  const stop = async () => {
    if (child.exitCode === null) {
      child.kill("SIGTERM");
      await new Promise((r) => child.once("close", r));
    }
    await rm(dir, { recursive: true, force: true });
  };
  // Ready when it accepts a connection.
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`haproxy exited: ${err.trim()}`);
    }
    const r = await runStatus([
      "ip",
      "netns",
      "exec",
      t.client.namespace,
      "redis-cli",
      "-h",
      t.appliance.clientAddress,
      "-p",
      String(HAPROXY_PORT),
      "PING",
    ]);
    if (r.stdout.trim() === "PONG") return { stop };
    await new Promise((r) => setTimeout(r, 50));
  }
  await stop();
  throw new Error(`haproxy did not answer: ${err.trim()}`);
}

interface PathSummary {
  key: string;
  label: string;
  replicas: number | null;
  p50Us: number;
  minP50Us: number;
  maxP50Us: number;
  meanUs: number;
  stdDevUs: number;
  p99Us: number;
  clientSrttUs: number;
  serverSrttUs: number | null;
  rounds: RoundResult[];
}

function median(xs: number[]): number {
  return summarize(xs).p50;
}

async function measureRtt(
  paths: Path[],
  rounds: number,
  count: number,
  size: number,
): Promise<PathSummary[]> {
  for (const p of paths) await pingOnce(p, 200, size); // warm-up: ARP, caches, the engine's first connections
  const results = new Map<string, RoundResult[]>(paths.map((p) => [p.key, []]));
  for (let round = 0; round < rounds; round++) {
    const order = paths.map((_, i) => paths[(i + round) % paths.length]!);
    for (const p of order) results.get(p.key)!.push(await pingOnce(p, count, size));
    process.stderr.write(`rtt round ${round + 1}/${rounds}\n`);
  }
  return paths.map((p) => {
    const rs = results.get(p.key)!;
    const p50 = summarize(rs.map((r) => r.p50));
    const servers = rs.map((r) => r.serverSrtt).filter((x): x is number => x !== null);
    return {
      key: p.key,
      label: p.label,
      replicas: p.replicas ?? null,
      p50Us: p50.p50,
      minP50Us: p50.min,
      maxP50Us: p50.max,
      meanUs: median(rs.map((r) => r.mean)),
      stdDevUs: median(rs.map((r) => r.stdDev)),
      p99Us: median(rs.map((r) => r.p99)),
      clientSrttUs: median(rs.map((r) => r.clientSrtt)),
      serverSrttUs: servers.length > 0 && !p.terminates ? median(servers) : null,
      rounds: rs,
    };
  });
}

interface ThroughputRow {
  key: string;
  label: string;
  redisSetRps: number;
  redisGetRps: number;
  httpRps: number | null;
}

async function redisBench(lab: LabState, host: string, port: number, requests: number) {
  const out = await run(
    [
      ...inClient(lab),
      "redis-benchmark",
      "-h",
      host,
      "-p",
      String(port),
      "-c",
      "50",
      "-n",
      String(requests),
      "-t",
      "set,get",
      "--csv",
    ],
    { timeoutMs: 300_000 },
  );
  const rps = (test: string) => {
    const m = new RegExp(`^"${test}","([\\d.]+)"`, "m").exec(out);
    if (!m) throw new Error(`redis-benchmark: no ${test} figure in ${out.slice(0, 400)}`);
    return Number(m[1]);
  };
  return { set: rps("SET"), get: rps("GET") };
}

async function httpBench(lab: LabState, host: string, port: number, seconds: number): Promise<number> {
  const out = await run(
    [...inClient(lab), "wrk", "-t", "2", "-c", "32", "-d", `${seconds}s`, `http://${host}:${port}/1K.bin`],
    { timeoutMs: 120_000 },
  );
  const m = /Requests\/sec:\s+([\d.]+)/.exec(out);
  if (!m) throw new Error(`wrk: no Requests/sec in ${out.slice(0, 400)}`);
  if (/Non-2xx/.test(out)) throw new Error(`wrk: errors: ${out}`);
  return Number(m[1]);
}

async function engineStats(lab: LabState): Promise<EngineStats | null> {
  if (!lab.proxy) return null;
  return (await queryStats(lab.proxy.statsSocket)).engine;
}

/** Every replica of the lab is still replicated to: a measurement after the appliance removed a
 * replica (a false failure verdict, say) would pass fewer replicas off as more. */
async function replicasHealthy(lab: LabState, when: string): Promise<void> {
  const e = await engineStats(lab);
  if (!e) return;
  const want = lab.topology.replicas.length;
  const f = e.failures;
  if (f.replicasFailed > 0 || f.replicasLeft !== want || f.promotions > 0) {
    // The appliance's warnings say why (they go with the lab when it is taken down).
    const log = lab.proxy ? await readFile(lab.proxy.log, "utf8").catch(() => "") : "";
    const why = log
      .split("\n")
      .filter((l) => /"level":[4-6]\d/.test(l))
      .slice(-8)
      .join("\n");
    const wan = lab.delayLine
      ? JSON.stringify(await delayLineStats(lab.topology.name).catch((e: unknown) => String(e)))
      : "";
    throw new Error(
      `${wan}\n${when}: ${f.replicasLeft} of ${want} replicas left, ${f.replicasFailed} failed, ${f.promotions} promotions: the measurement would be wrong\n${why}`,
    );
  }
}

const pct = (x: number, base: number) => `${x >= base ? "+" : ""}${(((x - base) / base) * 100).toFixed(1)} %`;
const us = (x: number | null) => (x === null || !Number.isFinite(x) ? "—" : x.toFixed(1));

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rounds: { type: "string", default: "15" },
      count: { type: "string", default: "1000" },
      size: { type: "string", default: "64" },
      only: { type: "string", default: "lan,wan,throughput" },
      "wan-delay-ms": { type: "string", default: "11.5" },
      "throughput-rounds": { type: "string", default: "5" },
      out: { type: "string", default: "bench/results" },
      "no-pin": { type: "boolean", default: false },
    },
  });
  pinning = !values["no-pin"];
  const rounds = Number(values.rounds);
  const count = Number(values.count);
  const size = Number(values.size);
  const only = new Set(values.only.split(","));
  const tpRounds = Number(values["throughput-rounds"]);
  const tag = `b${process.pid.toString(36)}`;
  const labNames: string[] = [];
  const stops: Array<() => Promise<void>> = [];
  const up = async (suffix: string, o: Omit<LabUpOptions, "name">) => {
    const name = `${tag}-${suffix}`;
    labNames.push(name);
    const lab = await labUp({ name, ...o });
    await placeLab(lab);
    await replicasHealthy(lab, `lab ${name} after start`);
    return lab;
  };
  const date = new Date().toISOString();
  const m = machine();
  const command = `npm run bench -- rtt ${process.argv.slice(2).join(" ")}`.trim();
  const md: string[] = [
    `# What replication costs: RTT and throughput (${date})`,
    "",
    machineLine(m),
    `Command: \`${command}\`.`,
    pinning
      ? `CPU placement: client and original on CPU ${CLIENT_CPU}; appliance (proxy, capture helpers, HAProxy) and replicas on CPU ${APPLIANCE_CPU} (different machines on a real network; see bench/rtt.ts).`
      : "CPU placement: left to the scheduler (--no-pin).",
    "",
  ];
  const charts: Array<{ name: string; svg: string }> = [];
  const result: Record<string, unknown> = { date, command, machine: m, rounds, count, size };
  try {
    if (only.has("lan") || only.has("throughput")) {
      const k = await up("k", { replicas: 0, service: "redis" });
      const kc = await up("kc", { replicas: 0, service: "redis" });
      const captureOnly = await startCaptureOnly(kc);
      stops.push(captureOnly.stop);
      const a: LabState[] = [];
      for (const n of [0, 1, 2, 3]) a.push(await up(`a${n}`, { replicas: n, service: "redis", proxy: true }));
      const haproxy = await startHaproxy(k);
      stops.push(haproxy.stop);
      const paths: Path[] = [
        {
          key: "direct",
          label: "direct route (no NAT)",
          lab: k,
          host: k.topology.original.address,
          port: 6379,
        },
        { key: "nat", label: "kernel NAT alone", lab: k, host: k.topology.appliance.vip, port: 6379 },
        {
          key: "natcap",
          label: "kernel NAT + capture helpers (no engine)",
          lab: kc,
          host: kc.topology.appliance.vip,
          port: 6379,
        },
        {
          key: "haproxy",
          label: "HAProxy (TCP mode)",
          lab: k,
          host: k.topology.appliance.clientAddress,
          port: HAPROXY_PORT,
          terminates: true,
        },
        ...a.map((lab, n) => ({
          key: `a${n}`,
          label: `appliance, ${n} replica${n === 1 ? "" : "s"}`,
          lab,
          host: lab.topology.appliance.vip,
          port: 6379,
          replicas: n,
        })),
      ];

      if (only.has("lan")) {
        const rows = await measureRtt(paths, rounds, count, size);
        const by = (key: string) => rows.find((r) => r.key === key)!;
        const base0 = by("a0");
        const nat = by("nat");
        for (const lab of a) await replicasHealthy(lab, `lab ${lab.topology.name} after the LAN rounds`);
        const engines = await Promise.all(a.map(engineStats));
        result.lan = { rows, engines: engines.map((e) => e?.rtt ?? null) };
        md.push(
          "## Client RTT on the LAN (client → server; thesis Table 5.4)",
          "",
          `TCP ping-pong through each path: redis ECHO of ${size} B, ${count} round trips per round timed in C (CLOCK_MONOTONIC), ${rounds} interleaved rounds; figures are medians over rounds. Degradation is against the appliance with 0 replicas, like the thesis's.`,
          "",
          "| path | p50 (µs) | min–max p50 over rounds | mean (µs) | std dev (µs) | p99 (µs) | tcp_info RTT (µs) | degradation (mean) | degradation (p50) | × kernel NAT (p50) | thesis mean (µs) | thesis degradation |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|",
          ...rows.map((r) => {
            const thesis = r.replicas !== null ? THESIS_LAN_CLIENT[r.replicas] : undefined;
            const thesisDeg =
              r.replicas !== null && r.replicas > 0 && thesis !== undefined
                ? pct(thesis, THESIS_LAN_CLIENT[0]!)
                : "—";
            return `| ${r.label} | ${us(r.p50Us)} | ${us(r.minP50Us)}–${us(r.maxP50Us)} | ${us(r.meanUs)} | ${us(r.stdDevUs)} | ${us(r.p99Us)} | ${us(r.clientSrttUs)} | ${r.replicas ? pct(r.meanUs, base0.meanUs) : "—"} | ${r.replicas ? pct(r.p50Us, base0.p50Us) : "—"} | ${(r.p50Us / nat.p50Us).toFixed(3)} | ${thesis !== undefined ? (thesis * 1000).toFixed(1) : "—"} | ${thesisDeg} |`;
          }),
          "",
          "## Server → client (the original's own RTT of the connection; thesis Table 5.5)",
          "",
          "The original's kernel's smoothed RTT (`ss -ti` on the original while the connection is open), median over rounds. HAProxy terminates TCP: the original's peer is HAProxy, so its figure is not the client's path.",
          "",
          "| path | server-side RTT (µs) | degradation | thesis mean (µs) | thesis degradation |",
          "|---|---|---|---|---|",
          ...rows.map((r) => {
            const thesis = r.replicas !== null ? THESIS_LAN_SERVER[r.replicas] : undefined;
            return `| ${r.label} | ${us(r.serverSrttUs)} | ${r.replicas && r.serverSrttUs !== null && base0.serverSrttUs !== null ? pct(r.serverSrttUs, base0.serverSrttUs) : "—"} | ${thesis !== undefined ? (thesis * 1000).toFixed(1) : "—"} | ${r.replicas && thesis !== undefined ? pct(thesis, THESIS_LAN_SERVER[0]!) : "—"} |`;
          }),
          "",
          "## What the appliance measured itself (passive, per path; µs, p50 / mean of data round trips)",
          "",
          "Client path: the original's data leaving toward the client until the client's acknowledgement; original: the client's data until the original's acknowledgement (often its answer); replica *n*: the engine's copy until the replica's acknowledgement (thesis Table 5.4's PSC-RVM*n*: 6238–13682 µs).",
          "",
          "| appliance | client | original | replicas |",
          "|---|---|---|---|",
          ...engines.map((e, n) => {
            if (!e) return `| ${n} replicas | — | — | — |`;
            const f = (x: { p50Us: number | null; meanUs: number | null }) =>
              `${us(x.p50Us)} / ${us(x.meanUs)}`;
            const reps = Object.entries(e.rtt.replicas)
              .map(([id, v]) => `${id} ${f(v.data.total)}`)
              .join("; ");
            return `| ${n} replica${n === 1 ? "" : "s"} | ${f(e.rtt.client.data.total)} | ${f(e.rtt.original.data.total)} | ${reps || "—"} |`;
          }),
          "",
        );
        const a3 = by("a3");
        md.push(
          "### Targets",
          "",
          `- client RTT p50 with 3 replicas ≤ 1.10 × with 0 replicas: **${(a3.p50Us / base0.p50Us).toFixed(3)} ×** (thesis: ${(THESIS_LAN_CLIENT[3]! / THESIS_LAN_CLIENT[0]!).toFixed(2)} ×, means) — ${a3.p50Us / base0.p50Us <= 1.1 ? "met" : "missed"}`,
          `- appliance with 0 replicas ≤ 1.10 × kernel NAT alone (p50): **${(base0.p50Us / nat.p50Us).toFixed(3)} ×** — ${base0.p50Us / nat.p50Us <= 1.1 ? "met" : "missed"}`,
          `  - where the appliance's ${us(base0.p50Us - nat.p50Us)} µs over kernel NAT go: the capture helpers alone (same filters, on a plain kernel NAT) add ${us(by("natcap").p50Us - nat.p50Us)} µs; the engine, its nft rules and the rest ${us(base0.p50Us - by("natcap").p50Us)} µs.`,
          "",
        );
        charts.push({
          name: "client-rtt",
          svg: await barChart({
            title: "Client RTT p50 by path (median over rounds; rule: min–max)",
            unit: "µs",
            bars: rows.map((r) => ({ label: r.label, value: r.p50Us, lo: r.minP50Us, hi: r.maxP50Us })),
          }),
        });
      }

      if (only.has("throughput")) {
        const requests = 50_000;
        const tpPaths = paths;
        const http: LabState[] = [];
        const hk = await up("hk", { replicas: 0, service: "http" });
        for (const n of [0, 1, 2, 3])
          http.push(await up(`h${n}`, { replicas: n, service: "http", proxy: true }));
        const httpHost: Record<string, { lab: LabState; host: string } | undefined> = {
          direct: { lab: hk, host: hk.topology.original.address },
          nat: { lab: hk, host: hk.topology.appliance.vip },
          ...Object.fromEntries(http.map((lab, n) => [`a${n}`, { lab, host: lab.topology.appliance.vip }])),
        };
        const samples = new Map<string, { set: number[]; get: number[]; http: number[] }>(
          tpPaths.map((p) => [p.key, { set: [], get: [], http: [] }]),
        );
        for (let round = 0; round < tpRounds; round++) {
          const order = tpPaths.map((_, i) => tpPaths[(i + round) % tpPaths.length]!);
          for (const p of order) {
            const r = await redisBench(p.lab, p.host, p.port, requests);
            const s = samples.get(p.key)!;
            s.set.push(r.set);
            s.get.push(r.get);
            const h = httpHost[p.key];
            if (h) s.http.push(await httpBench(h.lab, h.host, 8080, 3));
          }
          process.stderr.write(`throughput round ${round + 1}/${tpRounds}\n`);
        }
        const rows: ThroughputRow[] = tpPaths.map((p) => {
          const s = samples.get(p.key)!;
          return {
            key: p.key,
            label: p.label,
            redisSetRps: median(s.set),
            redisGetRps: median(s.get),
            httpRps: s.http.length > 0 ? median(s.http) : null,
          };
        });
        const base = rows.find((r) => r.key === "a0")!;
        const two = rows.find((r) => r.key === "a2")!;
        result.throughput = { requests, rounds: tpRounds, rows, samples: Object.fromEntries(samples) };
        const ratio = (x: number | null, b: number | null) => (x !== null && b ? (x / b).toFixed(3) : "—");
        md.push(
          "## Throughput",
          "",
          `redis-benchmark (50 connections, ${requests} requests per test, SET and GET) and wrk (2 threads, 32 connections, 3 s, GET /1K.bin from Apache) from the client namespace; ${tpRounds} interleaved rounds, medians. HAProxy was not put in front of the http labs.`,
          "",
          "| path | redis SET (req/s) | × 0 replicas | redis GET (req/s) | × 0 replicas | HTTP (req/s) | × 0 replicas |",
          "|---|---|---|---|---|---|---|",
          ...rows.map(
            (r) =>
              `| ${r.label} | ${r.redisSetRps.toFixed(0)} | ${ratio(r.redisSetRps, base.redisSetRps)} | ${r.redisGetRps.toFixed(0)} | ${ratio(r.redisGetRps, base.redisGetRps)} | ${r.httpRps === null ? "—" : r.httpRps.toFixed(0)} | ${ratio(r.httpRps, base.httpRps)} |`,
          ),
          "",
          `Target: throughput with 2 replicas ≥ 0.8 × with 0 replicas: redis SET **${ratio(two.redisSetRps, base.redisSetRps)}**, GET **${ratio(two.redisGetRps, base.redisGetRps)}**, HTTP **${ratio(two.httpRps, base.httpRps)}**.`,
          "",
        );
        const bars: Bar[] = [];
        for (const r of rows) {
          bars.push({ label: r.label, group: "redis SET", value: r.redisSetRps });
          bars.push({ label: r.label, group: "redis GET", value: r.redisGetRps });
          if (r.httpRps !== null) bars.push({ label: r.label, group: "HTTP GET 1 KiB", value: r.httpRps });
        }
        charts.push({
          name: "throughput",
          svg: await barChart({ title: "Throughput by path (median)", unit: "requests/s", bars }),
        });
      }
    }
    if (only.has("wan")) {
      // The thesis's WAN case: every replica remote (22-24 ms away), the client on the LAN.
      const wanDelayMs = Number(values["wan-delay-ms"]);
      const base = await up("w0", { replicas: 0, service: "redis", proxy: true });
      const wl: LabState[] = [base];
      for (const n of [1, 2])
        wl.push(
          await up(`w${n}`, { replicas: n, service: "redis", wan: { replicas: n, delayMs: wanDelayMs } }),
        );
      const paths: Path[] = wl.map((lab, n) => ({
        key: `w${n}`,
        label: n === 0 ? "appliance, 0 replicas" : `appliance, ${n} remote replica${n === 1 ? "" : "s"}`,
        lab,
        host: lab.topology.appliance.vip,
        port: 6379,
        replicas: n,
      }));
      const rows = await measureRtt(paths, rounds, count, size);
      for (const lab of wl) await replicasHealthy(lab, `lab ${lab.topology.name} after the WAN rounds`);
      const engines = await Promise.all(wl.map(engineStats));
      const b0 = rows[0]!;
      result.wan = { delayMsOneWay: wanDelayMs, rows, engines: engines.map((e) => e?.rtt ?? null) };
      md.push(
        `## Client RTT with WAN replicas (thesis Table 5.3)`,
        "",
        `Replicas behind the lab's delay line, ${wanDelayMs} ms each way (replica RTT ≈ ${(2 * wanDelayMs).toFixed(0)} ms, the thesis's 22–24 ms); the client and the original on the LAN. Same ping-pong as above, ${rounds} interleaved rounds, medians.`,
        "",
        "| path | p50 (µs) | min–max p50 | mean (µs) | std dev (µs) | p99 (µs) | degradation (mean) | degradation (p50) | server-side RTT (µs) | replica RTT the appliance measured (p50, ms) | thesis client→server (µs) | thesis degradation |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ...rows.map((r, n) => {
          const e = engines[n];
          const reps = e
            ? Object.entries(e.rtt.replicas)
                .map(
                  ([id, v]) =>
                    `${id} ${v.data.total.p50Us === null ? "—" : (v.data.total.p50Us / 1000).toFixed(1)}`,
                )
                .join("; ")
            : "";
          const thesis = THESIS_WAN_CLIENT[n];
          return `| ${r.label} | ${us(r.p50Us)} | ${us(r.minP50Us)}–${us(r.maxP50Us)} | ${us(r.meanUs)} | ${us(r.stdDevUs)} | ${us(r.p99Us)} | ${n ? pct(r.meanUs, b0.meanUs) : "—"} | ${n ? pct(r.p50Us, b0.p50Us) : "—"} | ${us(r.serverSrttUs)} | ${reps || "—"} | ${thesis !== undefined ? (thesis * 1000).toFixed(1) : "—"} | ${n && thesis !== undefined ? pct(thesis, THESIS_WAN_CLIENT[0]!) : "—"} |`;
        }),
        "",
        `Thesis server → client with WAN replicas (Table 5.3): ${[0, 1, 2].map((n) => `${n}: ${(THESIS_WAN_SERVER[n]! * 1000).toFixed(1)} µs`).join(", ")}.`,
        "",
      );
      charts.push({
        name: "wan-rtt",
        svg: await barChart({
          title: `Client RTT p50 with replicas ${2 * wanDelayMs} ms away (rule: min–max over rounds)`,
          unit: "µs",
          bars: rows.map((r) => ({ label: r.label, value: r.p50Us, lo: r.minP50Us, hi: r.maxP50Us })),
        }),
      });
    }

    const stamp = date.replace(/[:.]/g, "-");
    for (const c of charts) {
      md.push(`![${c.name}](rtt-${stamp}-${c.name}.svg)`, "");
      await writeFile(join(values.out, `rtt-${stamp}-${c.name}.svg`), c.svg).catch(async () => {
        await run(["mkdir", "-p", values.out]);
        await writeFile(join(values.out, `rtt-${stamp}-${c.name}.svg`), c.svg);
      });
    }
    const text = md.join("\n");
    await writeResults(values.out, "rtt", date, result, text);
    process.stdout.write(text);
  } finally {
    for (const s of stops) await s().catch(() => undefined);
    for (const n of labNames) await labDown(n).catch(() => undefined);
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench rtt: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
