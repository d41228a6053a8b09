// Failover stall: from the failure injection to the next byte the client receives, with the
// client in a ping-pong conversation through the VIP the whole time. Each trial is a fresh lab
// (redis by default, or our echo server) so trials are independent; modes and replica counts are
// interleaved.
//
//   node dist/bench/failover.js [--trials 30] [--modes process,freeze,link,host] [--replicas 1,2,3]
//                               [--service redis|echo] [--vm]
//
// --vm: the backends are QEMU machines through libvirt (`lab up --vm`, echo only): process kills
// the original's QEMU, host destroys it through libvirt, freeze pauses it, link downs its tap.
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { machine, machineLine, writeResults } from "./report.js";
import { labDown, labKill, labUp, type FaultMode } from "../src/lab/lab.js";
import { runStatus } from "../src/sys/command.js";
import { summarize, type Summary } from "../src/sys/stats.js";
import { queryStats } from "../src/proxy/stats-client.js";
import { DEFAULT_HANG_BUDGET_MS } from "../src/replica/types.js";

const CLIENT = fileURLToPath(new URL("./stall-client.js", import.meta.url));
/** Thesis Table 5.6: redirect to the new original after detection, ms, by replica count. */
const THESIS: Record<number, number> = { 1: 5.05, 2: 5.07, 3: 5.64 };

export interface Trial {
  /** Failure injection → first byte the client received after the promotion. */
  stallMs: number;
  /** The interruption the client saw: that byte minus the previous one (or the injection). */
  gapMs: number;
  /** What the proxy logged: why it failed over and when (ms after the injection). */
  reason: string;
  /** What confirmed it (the decision rule's evidence). */
  confirmedBy: string;
  detectedMs: number;
  promotedMs: number;
}

/** The proxy's own account of the failover, from its log (pino: one JSON object per line). */
async function proxyAccount(log: string) {
  const lines = (await readFile(log, "utf8")).split("\n").filter((l) => l.startsWith("{"));
  const events = lines.map(
    (l) => JSON.parse(l) as { time: number; msg: string; reason?: string; at?: number; confirmedBy?: string },
  );
  // The data path's own detection, or an external signal (the hypervisor's, with machines).
  const failure =
    events.find((e) => e.msg === "original-failure") ??
    events.find((e) => e.msg === "external failure signal: promoting");
  const promoted = events.find((e) => e.msg === "promoted");
  return {
    reason: failure?.reason ?? "(none logged)",
    confirmedBy: failure?.confirmedBy ?? "external",
    detectedAt: failure?.time,
    promotedAt: promoted?.at,
  };
}

export type Service = "redis" | "echo";

export async function trial(
  mode: FaultMode,
  replicas: number,
  index: number,
  service: Service,
  vm: boolean,
): Promise<Trial> {
  const name = `fo${process.pid.toString(36)}${index}`;
  try {
    const lab = await labUp({ name, replicas, service, ...(vm ? { vm: {} } : {}) });
    const t = lab.topology;
    const client = runStatus(
      [
        "ip",
        "netns",
        "exec",
        t.client.namespace,
        process.execPath,
        CLIENT,
        t.appliance.vip,
        String(t.port),
        // Past the fault at 1 s by more than the hang budget: a freeze is found only then.
        String(2000 + DEFAULT_HANG_BUDGET_MS + 1000),
        service,
      ],
      { timeoutMs: 30_000 },
    );
    await new Promise((r) => setTimeout(r, 1000));
    const fault = await labKill(name, "original", mode);
    const r = await client;
    const out = JSON.parse(r.stdout) as { replies: number[]; error?: string };
    if (out.error) throw new Error(`${mode}/${replicas}: client saw ${out.error}`);
    const stats = await queryStats(lab.proxy!.statsSocket);
    if (stats.engine.failures.promotions !== 1)
      throw new Error(`${mode}/${replicas}: ${stats.engine.failures.promotions} promotions`);
    const account = await proxyAccount(lab.proxy!.log);
    if (account.promotedAt === undefined) throw new Error(`${mode}/${replicas}: no promotion logged`);
    // The first echo after the promotion is the first byte from the new original (the dying
    // original may still answer for a while after the injection: that is no interruption).
    const rs = out.replies;
    const k = rs.findIndex((x) => x > account.promotedAt!);
    if (k < 1) throw new Error(`${mode}/${replicas}: no byte after the promotion`);
    return {
      stallMs: rs[k]! - fault.injectedAt,
      gapMs: rs[k]! - Math.max(rs[k - 1]!, fault.injectedAt),
      reason: account.reason,
      confirmedBy: account.confirmedBy,
      detectedMs: (account.detectedAt ?? NaN) - fault.injectedAt,
      promotedMs: account.promotedAt - fault.injectedAt,
    };
  } finally {
    await labDown(name);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      trials: { type: "string", default: "30" },
      modes: { type: "string", default: "process,freeze,link,host" },
      replicas: { type: "string", default: "1,2,3" },
      out: { type: "string", default: "bench/results" },
      service: { type: "string", default: "redis" },
      vm: { type: "boolean", default: false },
    },
  });
  const trials = Number(values.trials);
  const vm = values.vm;
  const service = (vm ? "echo" : values.service) as Service;
  if (service !== "redis" && service !== "echo") throw new Error("--service: redis or echo");
  const modes = values.modes.split(",") as FaultMode[];
  const counts = values.replicas.split(",").map(Number);
  const samples = new Map<string, number[]>();
  const details = new Map<string, Trial[]>();
  const failures = new Map<string, string[]>();
  let index = 0;
  for (let k = 0; k < trials; k++) {
    for (const mode of modes) {
      for (const n of counts) {
        const key = `${mode}/${n}`;
        try {
          const r = await trial(mode, n, index++, service, vm);
          samples.set(key, [...(samples.get(key) ?? []), r.stallMs]);
          details.set(key, [...(details.get(key) ?? []), r]);
          process.stderr.write(
            `${key}: stall ${r.stallMs.toFixed(1)} ms (gap ${r.gapMs.toFixed(1)}), promoted +${r.promotedMs.toFixed(1)} ms: ${r.reason}\n`,
          );
        } catch (e) {
          failures.set(key, [...(failures.get(key) ?? []), (e as Error).message]);
        }
      }
    }
    process.stderr.write(`round ${k + 1}/${trials} done\n`);
  }
  const rows: Array<{
    mode: string;
    replicas: number;
    stallMs: Summary;
    gapMs: Summary;
    promotedMs: Summary;
    failedTrials: number;
    thesisMs: number;
  }> = [];
  for (const mode of modes) {
    for (const n of counts) {
      const key = `${mode}/${n}`;
      rows.push({
        mode,
        replicas: n,
        stallMs: summarize(samples.get(key) ?? []),
        gapMs: summarize((details.get(key) ?? []).map((d) => d.gapMs)),
        promotedMs: summarize((details.get(key) ?? []).map((d) => d.promotedMs)),
        failedTrials: failures.get(key)?.length ?? 0,
        thesisMs: THESIS[n] ?? NaN,
      });
    }
  }
  const m = machine();
  const command = `node dist/bench/failover.js --trials ${trials} --modes ${modes.join(",")} --replicas ${counts.join(",")} --service ${service}${vm ? " --vm" : ""}`;
  const date = new Date().toISOString();
  const md = [
    `# Failover stall${vm ? ", QEMU (TCG) machines through libvirt" : ""} (${date})`,
    "",
    machineLine(m),
    ...(vm
      ? [
          "Backends: QEMU machines under software emulation (no KVM here), original and replicas forked from it;",
          "data-path thresholds raised for TCG (VM_FAILURE_TUNING); the hypervisor's word (machine stopped) is the",
          "fast signal. Modes: process = the original's QEMU killed, host = libvirt destroy, freeze = libvirt",
          "suspend, link = its tap down.",
        ]
      : []),
    `Command: \`${command}\`. Stall = failure injection (\`lab kill original --mode M\`) → the first answer the`,
    "client receives after the promotion, i.e. the first byte from the new original (ping-pong through the VIP,",
    `one request in flight: ${service === "redis" ? "redis PING" : "64 B echo"}). Detection included. Gap = that answer minus the one before it (or`,
    "the injection): the interruption the client saw (a dying original may still answer for a while). Promoted =",
    "injection → promotion (proxy log). Thesis Table 5.6: redirect after detection, detection NOT included.",
    "",
    "| mode | replicas | trials ok | stall p50 (ms) | stall p99 (ms) | min–max (ms) | gap p50 (ms) | promoted p50 (ms) | thesis (ms) |",
    "|---|---|---|---|---|---|---|---|---|",
    ...rows.map(
      (r) =>
        `| ${r.mode} | ${r.replicas} | ${r.stallMs.count}/${r.stallMs.count + r.failedTrials} | ${r.stallMs.p50.toFixed(2)} | ${r.stallMs.p99.toFixed(2)} | ${r.stallMs.min.toFixed(2)}–${r.stallMs.max.toFixed(2)} | ${r.gapMs.p50.toFixed(2)} | ${r.promotedMs.p50.toFixed(2)} | ${r.thesisMs} |`,
    ),
    "",
    ...[...failures].flatMap(([k, v]) => v.map((msg) => `- failed trial ${k}: ${msg}`)),
    "",
  ].join("\n");
  const json = {
    date,
    command,
    machine: m,
    rows,
    samples: Object.fromEntries(samples),
    trials: Object.fromEntries(details),
    failures: Object.fromEntries(failures),
  };
  await writeResults(values.out, "failover", date, json, md);
  process.stdout.write(md);
}

// Run as a script (npm run bench -- failover); imported, it lends its trial (bench/detector.ts).
if (process.argv[1] === fileURLToPath(import.meta.url))
  main().catch((e: unknown) => {
    process.stderr.write(`bench failover: ${(e as Error).message}\n`);
    process.exitCode = 1;
  });
