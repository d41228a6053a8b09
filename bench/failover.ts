// Failover stall: from the failure injection to the next byte the client receives, with the
// client in a ping-pong conversation through the VIP the whole time. Each trial is a fresh lab
// (echo service) so trials are independent; modes and replica counts are interleaved.
//
//   node dist/bench/failover.js [--trials 30] [--modes process,freeze,link,host] [--replicas 1,2,3]
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { machine, machineLine, writeResults } from "./report.js";
import { labDown, labKill, labUp, type FaultMode } from "../src/lab/lab.js";
import { runStatus } from "../src/sys/command.js";
import { summarize, type Summary } from "../src/sys/stats.js";
import { queryStats } from "../src/proxy/stats-client.js";

const CLIENT = fileURLToPath(new URL("./stall-client.js", import.meta.url));
/** Thesis Table 5.6: redirect to the new original after detection, ms, by replica count. */
const THESIS: Record<number, number> = { 1: 5.05, 2: 5.07, 3: 5.64 };

async function trial(mode: FaultMode, replicas: number, index: number): Promise<number> {
  const name = `fo${process.pid.toString(36)}${index}`;
  try {
    const lab = await labUp({ name, replicas, service: "echo" });
    const t = lab.topology;
    const client = runStatus(
      ["ip", "netns", "exec", t.client.namespace, process.execPath, CLIENT, t.appliance.vip, "7000", "2500"],
      { timeoutMs: 30_000 },
    );
    await new Promise((r) => setTimeout(r, 1000));
    const fault = await labKill(name, "original", mode);
    const r = await client;
    const out = JSON.parse(r.stdout) as { replies: number[]; error?: string };
    if (out.error) throw new Error(`${mode}/${replicas}: client saw ${out.error}`);
    // The interruption the client sees: the largest gap between consecutive echoes that ends
    // after the injection (a reply already on its way from the dying original may still land
    // right after it). Its end is the first byte from the new original.
    const rs = out.replies;
    let next: number | undefined;
    let widest = -1;
    for (let k = 1; k < rs.length; k++) {
      if (rs[k]! <= fault.injectedAt || rs[k]! > fault.injectedAt + 1500) continue;
      const gap = rs[k]! - Math.max(rs[k - 1]!, fault.injectedAt);
      if (gap > widest) {
        widest = gap;
        next = rs[k];
      }
    }
    if (next === undefined) throw new Error(`${mode}/${replicas}: no byte after the failure`);
    const stats = await queryStats(lab.proxy!.statsSocket);
    if (stats.engine.failures.promotions !== 1)
      throw new Error(`${mode}/${replicas}: ${stats.engine.failures.promotions} promotions`);
    return next - fault.injectedAt;
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
    },
  });
  const trials = Number(values.trials);
  const modes = values.modes.split(",") as FaultMode[];
  const counts = values.replicas.split(",").map(Number);
  const samples = new Map<string, number[]>();
  const failures = new Map<string, string[]>();
  let index = 0;
  for (let k = 0; k < trials; k++) {
    for (const mode of modes) {
      for (const n of counts) {
        const key = `${mode}/${n}`;
        try {
          const ms = await trial(mode, n, index++);
          samples.set(key, [...(samples.get(key) ?? []), ms]);
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
        failedTrials: failures.get(key)?.length ?? 0,
        thesisMs: THESIS[n] ?? NaN,
      });
    }
  }
  const m = machine();
  const command = `node dist/bench/failover.js --trials ${trials} --modes ${modes.join(",")} --replicas ${counts.join(",")}`;
  const date = new Date().toISOString();
  const md = [
    `# Failover stall (${date})`,
    "",
    machineLine(m),
    `Command: \`${command}\`. Stall = failure injection (\`lab kill original --mode M\`) → end of the widest`,
    "gap between echoes after it, i.e. the first byte from the new original (64 B ping-pong through the VIP,",
    "one message in flight). Detection included.",
    "Thesis Table 5.6: redirect after detection, detection NOT included.",
    "",
    "| mode | replicas | trials ok | p50 (ms) | p99 (ms) | min–max (ms) | thesis (ms) |",
    "|---|---|---|---|---|---|---|",
    ...rows.map(
      (r) =>
        `| ${r.mode} | ${r.replicas} | ${r.stallMs.count}/${r.stallMs.count + r.failedTrials} | ${r.stallMs.p50.toFixed(2)} | ${r.stallMs.p99.toFixed(2)} | ${r.stallMs.min.toFixed(2)}–${r.stallMs.max.toFixed(2)} | ${r.thesisMs} |`,
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
    failures: Object.fromEntries(failures),
  };
  await writeResults(values.out, "failover", date, json, md);
  process.stdout.write(md);
}

main().catch((e: unknown) => {
  process.stderr.write(`bench failover: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
