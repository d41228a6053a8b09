// Client RTT through the appliance, measured side by side in one run: direct to the original
// (routed by the appliance, no NAT), through the VIP with 0 replicas (kernel NAT only), and
// through the VIP with 1 and 3 replicas (kernel path + replication engine). Rounds are
// interleaved and each configuration's figure is the median over rounds of the per-round p50,
// so background noise on this shared machine hits every configuration alike.
//
//   node dist/bench/rtt.js [--rounds 10] [--count 500] [--size 64] [--out bench/results]
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { machine, machineLine, writeResults } from "./report.js";
import { labDown, labUp, type LabState } from "../src/lab/lab.js";
import { runStatus } from "../src/sys/command.js";
import { summarize } from "../src/sys/stats.js";
import type { PingResult } from "../src/lab/pingpong.js";

const CLI = fileURLToPath(new URL("../src/cli/main.js", import.meta.url));

interface Path {
  name: string;
  lab: LabState;
  host: string;
}

async function ping(p: Path, count: number, size: number): Promise<PingResult> {
  const r = await runStatus(
    [
      "ip",
      "netns",
      "exec",
      p.lab.topology.client.namespace,
      process.execPath,
      CLI,
      "ping",
      "--host",
      p.host,
      "--port",
      "7000",
      "--count",
      String(count),
      "--size",
      String(size),
    ],
    { timeoutMs: 120_000 },
  );
  if (r.code !== 0) throw new Error(`ping ${p.name}: ${r.stderr}`);
  return JSON.parse(r.stdout) as PingResult;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rounds: { type: "string", default: "10" },
      count: { type: "string", default: "500" },
      size: { type: "string", default: "64" },
      out: { type: "string", default: "bench/results" },
    },
  });
  const rounds = Number(values.rounds);
  const count = Number(values.count);
  const size = Number(values.size);
  const tag = `b${process.pid.toString(36)}`;
  const names = { r0: `${tag}-r0`, r1: `${tag}-r1`, r3: `${tag}-r3` };
  const labs: LabState[] = [];
  try {
    const l0 = await labUp({ name: names.r0, replicas: 0, service: "echo" });
    labs.push(l0);
    const l1 = await labUp({ name: names.r1, replicas: 1, service: "echo" });
    labs.push(l1);
    const l3 = await labUp({ name: names.r3, replicas: 3, service: "echo" });
    labs.push(l3);
    const paths: Path[] = [
      { name: "direct to the original (routed, no NAT)", lab: l0, host: l0.topology.original.address },
      { name: "VIP, 0 replicas (kernel NAT only)", lab: l0, host: l0.topology.appliance.vip },
      { name: "VIP, 1 replica", lab: l1, host: l1.topology.appliance.vip },
      { name: "VIP, 3 replicas", lab: l3, host: l3.topology.appliance.vip },
    ];
    // Warm-up: JIT, ARP caches, the engine's first connections.
    for (const p of paths) await ping(p, 200, size);
    const p50s = new Map<string, number[]>(paths.map((p) => [p.name, []]));
    const all = new Map<string, number[]>(paths.map((p) => [p.name, []]));
    for (let round = 0; round < rounds; round++) {
      // Rotate the order each round so no configuration always runs first.
      const order = paths.map((_, i) => paths[(i + round) % paths.length]!);
      for (const p of order) {
        const r = await ping(p, count, size);
        p50s.get(p.name)!.push(r.rttUs.p50);
        all.get(p.name)!.push(r.rttUs.mean);
      }
    }
    const base = summarize(p50s.get(paths[1]!.name)!).p50;
    const rows = paths.map((p) => {
      const s = summarize(p50s.get(p.name)!);
      return {
        path: p.name,
        medianP50Us: s.p50,
        minP50Us: s.min,
        maxP50Us: s.max,
        ratioToKernelNat: s.p50 / base,
        roundsP50Us: p50s.get(p.name)!,
      };
    });
    const m = machine();
    const command = `node dist/bench/rtt.js --rounds ${rounds} --count ${count} --size ${size}`;
    const result = { date: new Date().toISOString(), command, machine: m, rounds, count, size, rows };
    const md = [
      `# Client RTT through the appliance (${result.date})`,
      "",
      machineLine(m),
      `Command: \`${command}\`. TCP ping-pong of ${size} B messages, ${count} per round, ${rounds} interleaved rounds;`,
      "figure = median over rounds of each round's p50.",
      "",
      "| path | median p50 (µs) | min–max p50 (µs) | × kernel NAT |",
      "|---|---|---|---|",
      ...rows.map(
        (r) =>
          `| ${r.path} | ${r.medianP50Us.toFixed(1)} | ${r.minP50Us.toFixed(1)}–${r.maxP50Us.toFixed(1)} | ${r.ratioToKernelNat.toFixed(3)} |`,
      ),
      "",
    ].join("\n");
    await writeResults(values.out, "rtt", result.date, result, md);
    process.stdout.write(md);
  } finally {
    for (const l of labs) await labDown(l.topology.name);
    for (const n of Object.values(names)) await labDown(n);
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench rtt: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
