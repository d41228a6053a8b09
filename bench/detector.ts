// The failure detector judged by both columns (issue 16): how often it accuses a healthy
// original, and how fast it finds a real failure. One run, side by side on this machine:
//
//   hiccups    one namespace lab (2 replicas, redis, 20 INCR loops through the VIP); rounds, each
//              applying every hiccup once in a shuffled order at a random moment: the original's
//              service paused (SIGSTOP) for 10 .. 500 ms (and, past the hang budget, 1500 ms:
//              the boundary), the appliance's own process stopped, every CPU busy, a heavy
//              process started. A failover is counted (and the lab rebuilt) when one happens.
//   failures   the failover benchmark's trial (bench/failover.ts) per real failure mode: a fresh
//              lab, a ping-pong client, `lab kill original --mode M`: detection and stall.
//
//   node dist/bench/detector.js [--rounds 30] [--failure-trials 10] [--out bench/results]
import { spawn } from "node:child_process";
import { parseArgs } from "node:util";
import { machine, machineLine, writeResults } from "./report.js";
import { trial, type Trial } from "./failover.js";
import { labDown, labHiccup, labUp, type FaultMode, type HiccupKind, type LabState } from "../src/lab/lab.js";
import { queryStats } from "../src/proxy/stats-client.js";
import { summarize, type Summary } from "../src/sys/stats.js";
import { DEFAULT_HANG_BUDGET_MS } from "../src/replica/types.js";
import { fileURLToPath } from "node:url";

const INCR = fileURLToPath(new URL("../test/fixtures/incr-loop.js", import.meta.url));

const HICCUPS: Array<{ kind: HiccupKind; ms: number }> = [
  ...[10, 30, 60, 100, 200, 500].map((ms) => ({ kind: "pause" as const, ms })),
  { kind: "appliance", ms: 100 },
  { kind: "appliance", ms: 300 },
  { kind: "cpu", ms: 1000 },
  { kind: "heavy", ms: 1000 },
  // Past the budget: a hang the rule must act on (the other side of the trade-off).
  { kind: "pause", ms: 1500 },
];
const key = (h: { kind: string; ms: number }) => `${h.kind} ${h.ms} ms`;

interface HiccupRow {
  hiccup: string;
  trials: number;
  failovers: number;
  rate: number;
  lastedMs: Summary;
}

/** A fresh lab under load: 20 INCR loops through the VIP until `stop` (SIGKILL; `ip netns exec`
 * execs the loops' process, so the pid is theirs). */
async function loadedLab(name: string): Promise<{ lab: LabState; stop: () => Promise<void> }> {
  const lab = await labUp({ name, replicas: 2, service: "redis", autoFailover: true });
  const t = lab.topology;
  const child = spawn(
    "ip",
    ["netns", "exec", t.client.namespace, process.execPath, INCR, t.appliance.vip, "20", "86400"],
    { stdio: "ignore" },
  );
  const exited = new Promise((r) => child.once("exit", r));
  await new Promise((r) => setTimeout(r, 1000));
  return {
    lab,
    stop: async () => {
      child.kill("SIGKILL");
      await exited;
      await labDown(name);
    },
  };
}

async function hiccups(rounds: number, rng: () => number): Promise<HiccupRow[]> {
  const failovers = new Map<string, number>();
  const lasted = new Map<string, number[]>();
  let n = 0;
  const name = () => `det${process.pid.toString(36)}${n}`;
  let current = await loadedLab(name());
  let promotions = 0;
  try {
    for (let round = 0; round < rounds; round++) {
      const order = [...HICCUPS].sort(() => rng() - 0.5);
      for (const h of order) {
        await new Promise((r) => setTimeout(r, 300 + Math.floor(rng() * 700)));
        const r = await labHiccup(current.lab.topology.name, h.kind, h.ms);
        lasted.set(key(h), [...(lasted.get(key(h)) ?? []), r.lastedMs]);
        // Within the budget and the probes' deadlines after the hiccup ended.
        await new Promise((r) => setTimeout(r, 1500));
        const stats = await queryStats(current.lab.proxy!.statsSocket);
        if (stats.engine.failures.promotions > promotions) {
          failovers.set(key(h), (failovers.get(key(h)) ?? 0) + 1);
          process.stderr.write(`round ${round + 1}: ${key(h)} failed the original over; a fresh lab\n`);
          await current.stop();
          n++;
          current = await loadedLab(name());
          promotions = 0;
        }
      }
      process.stderr.write(`hiccups: round ${round + 1}/${rounds} done\n`);
    }
  } finally {
    await current.stop();
  }
  return HICCUPS.map((h) => {
    const samples = lasted.get(key(h)) ?? [];
    const f = failovers.get(key(h)) ?? 0;
    return {
      hiccup: key(h),
      trials: samples.length,
      failovers: f,
      rate: f / Math.max(1, samples.length),
      lastedMs: summarize(samples),
    };
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rounds: { type: "string", default: "30" },
      "failure-trials": { type: "string", default: "10" },
      modes: { type: "string", default: "process,link,host,freeze" },
      out: { type: "string", default: "bench/results" },
      seed: { type: "string", default: String(Date.now() % 1_000_000) },
    },
  });
  const rounds = Number(values.rounds);
  const failureTrials = Number(values["failure-trials"]);
  const modes = values.modes.split(",") as FaultMode[];
  let x = Number(values.seed) || 1;
  const rng = () => (x = (x * 48271) % 2147483647) / 2147483647;

  const hiccupRows = await hiccups(rounds, rng);
  const failures = new Map<string, Trial[]>();
  const failed = new Map<string, string[]>();
  let index = 0;
  for (let k = 0; k < failureTrials; k++) {
    for (const mode of modes) {
      try {
        const r = await trial(mode, 2, index++, "redis", false);
        failures.set(mode, [...(failures.get(mode) ?? []), r]);
        process.stderr.write(
          `${mode}: promoted +${r.promotedMs.toFixed(1)} ms, stall ${r.stallMs.toFixed(1)} ms: ${r.reason}\n`,
        );
      } catch (e) {
        failed.set(mode, [...(failed.get(mode) ?? []), (e as Error).message]);
      }
    }
  }
  const failureRows = modes.map((mode) => {
    const ts = failures.get(mode) ?? [];
    return {
      mode,
      trials: ts.length,
      failedTrials: failed.get(mode)?.length ?? 0,
      promotedMs: summarize(ts.map((t) => t.promotedMs)),
      stallMs: summarize(ts.map((t) => t.stallMs)),
      confirmedBy: [...new Set(ts.map((t) => t.confirmedBy))],
    };
  });

  const m = machine();
  const command = `node dist/bench/detector.js --rounds ${rounds} --failure-trials ${failureTrials} --modes ${modes.join(",")} --seed ${values.seed}`;
  const date = new Date().toISOString();
  const f2 = (v: number) => (Number.isFinite(v) ? v.toFixed(1) : "–");
  const md = [
    `# Failure detector: false failovers and detection, side by side (${date})`,
    "",
    machineLine(m),
    `Command: \`${command}\`. Defaults: hang budget ${DEFAULT_HANG_BUDGET_MS} ms, no health check.`,
    "",
    "## Hiccups of a healthy original (or of the appliance): failovers per trial",
    "",
    "One namespace lab, 2 replicas, redis, 20 INCR loops through the VIP; each round applies every hiccup",
    "once in a shuffled order, 0.3–1 s apart; a failover within 1.5 s of a hiccup is counted against it",
    "(and the lab rebuilt). pause = the original's redis-server SIGSTOPped then SIGCONTed; appliance =",
    "the appliance's own process stopped; cpu = a busy loop per CPU; heavy = a process faulting in",
    "512 MiB and burning a CPU. The last row is past the budget: a failover there is the rule working.",
    "",
    "| hiccup | trials | failovers | rate | lasted p50 (ms) | lasted max (ms) |",
    "|---|---|---|---|---|---|",
    ...hiccupRows.map(
      (r) =>
        `| ${r.hiccup} | ${r.trials} | ${r.failovers} | ${(100 * r.rate).toFixed(1)} % | ${f2(r.lastedMs.p50)} | ${f2(r.lastedMs.max)} |`,
    ),
    "",
    "## Real failures: detection (injection → promotion) and client stall",
    "",
    "The failover benchmark's trial (bench/failover.ts): a fresh lab per trial, 2 replicas, redis, a",
    "ping-pong client through the VIP; stall = injection → the first answer from the new original.",
    "",
    "| mode | trials ok | promoted p50 (ms) | promoted p99 (ms) | stall p50 (ms) | stall p99 (ms) | confirmed by |",
    "|---|---|---|---|---|---|---|",
    ...failureRows.map(
      (r) =>
        `| ${r.mode} | ${r.trials}/${r.trials + r.failedTrials} | ${f2(r.promotedMs.p50)} | ${f2(r.promotedMs.p99)} | ${f2(r.stallMs.p50)} | ${f2(r.stallMs.p99)} | ${r.confirmedBy.join(", ")} |`,
    ),
    "",
    ...[...failed].flatMap(([k, v]) => v.map((msg) => `- failed trial ${k}: ${msg}`)),
    "",
  ].join("\n");
  await writeResults(
    values.out,
    "detector",
    date,
    {
      date,
      command,
      machine: m,
      hiccups: hiccupRows,
      failures: failureRows,
      trials: Object.fromEntries(failures),
      failed: Object.fromEntries(failed),
    },
    md,
  );
  process.stdout.write(md);
}

main().catch((e: unknown) => {
  process.stderr.write(`bench detector: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
