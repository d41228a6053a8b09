// `npm run bench -- sim [--minutes M] [--seeds N] [--from F] [--workers W]`: the long run of the
// deterministic simulator (issue 13): as many seeds as the time allows (or N), from F, in W worker
// processes (one per core), chunk by chunk. Every violation is listed with its replay command;
// results in bench/results/sim-<date>.{json,md}.
import { spawn } from "node:child_process";
import { execFileSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { machine, machineLine, writeResults } from "./report.js";

interface Chunk {
  from: number;
  runs: number;
  failures: Array<{ seed: number; violation: string }>;
  steps: number;
  connections: number;
  promotions: number;
  falsePromotions: number;
  falseBy: Record<string, number>;
  simulatedSeconds: number;
  wallSeconds: number;
}

function usage(msg: string): never {
  process.stderr.write(
    `bench sim: ${msg}\nusage: npm run bench -- sim [--minutes M] [--seeds N] [--from F] [--workers W]\n`,
  );
  process.exit(2);
}

const args = process.argv.slice(2);
const opt = { minutes: 120, seeds: Infinity, from: 1, workers: 2, chunk: 200 };
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  const v = Number(args[++i]);
  if (!Number.isInteger(v) || v < 1) usage(`${a} wants a positive integer`);
  if (a === "--minutes") opt.minutes = v;
  else if (a === "--seeds") opt.seeds = v;
  else if (a === "--from") opt.from = v;
  else if (a === "--workers") opt.workers = v;
  else usage(`unknown argument ${a}`);
}

const SIM = fileURLToPath(new URL("../src/sim/main.js", import.meta.url));
const started = Date.now();
const deadline = started + opt.minutes * 60_000;
const last = opt.from + opt.seeds; // exclusive
let next = opt.from;
const chunks: Chunk[] = [];
const dir = await mkdtemp(join(tmpdir(), "trsim-"));

/** One worker: takes chunks of seeds until the time or the seeds run out. */
async function worker(): Promise<void> {
  while (Date.now() < deadline && next < last) {
    const from = next;
    const n = Math.min(opt.chunk, last - from);
    next += n;
    const out = join(dir, `${from}.json`);
    const minutesLeft = Math.max(1, Math.ceil((deadline - Date.now()) / 60_000));
    await new Promise<void>((resolve, reject) => {
      const child = spawn(
        process.execPath,
        [
          SIM,
          "--from",
          String(from),
          "--seeds",
          String(n),
          "--keep-going",
          "--minutes",
          String(minutesLeft),
          "--json",
          out,
        ],
        { stdio: ["ignore", "inherit", "inherit"] },
      );
      child.on("error", reject);
      child.on("close", (code) =>
        code === 0 || code === 1 ? resolve() : reject(new Error(`sim exited ${code}`)),
      );
    });
    chunks.push(JSON.parse(await readFile(out, "utf8")) as Chunk);
  }
}

await Promise.all(Array.from({ length: opt.workers }, () => worker()));
await rm(dir, { recursive: true, force: true });

const sum = (k: keyof Omit<Chunk, "failures" | "falseBy">) => chunks.reduce((a, c) => a + c[k], 0);
const falseBy: Record<string, number> = {};
for (const c of chunks) for (const [k, v] of Object.entries(c.falseBy)) falseBy[k] = (falseBy[k] ?? 0) + v;
const failures = chunks.flatMap((c) => c.failures).sort((a, b) => a.seed - b.seed);
const runs = sum("runs");
const wall = (Date.now() - started) / 1000;
const date = new Date().toISOString();
const commit = (() => {
  try {
    return execFileSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim();
  } catch {
    return "unknown";
  }
})();
const m = machine();
const json = {
  date,
  commit,
  machine: m,
  command: `npm run bench -- sim ${args.join(" ")}`.trim(),
  seeds: { from: opt.from, runs, highest: opt.from + runs - 1 },
  wallSeconds: wall,
  simulatedSeconds: sum("simulatedSeconds"),
  steps: sum("steps"),
  connections: sum("connections"),
  promotions: sum("promotions"),
  falsePromotions: sum("falsePromotions"),
  falseBy,
  failures,
};
const md = [
  `# Simulator long run (${date})`,
  "",
  machineLine(m),
  `Commit ${commit}. Command: \`${json.command}\` (${opt.workers} workers).`,
  "",
  `- seeds: ${runs} (chunks of ${opt.chunk} from ${opt.from}; a chunk's seeds run in order)`,
  `- wall time: ${(wall / 60).toFixed(1)} min; simulated: ${(json.simulatedSeconds / 3600).toFixed(1)} h; engine and network steps: ${json.steps}`,
  `- client connections: ${json.connections}; promotions: ${json.promotions}, of which ${json.falsePromotions} replaced an original that was serving (up, running, linked: a healthy server failed over), by what confirmed them: ${JSON.stringify(falseBy)}`,
  `- violations: ${failures.length}`,
  ...failures.map(
    (f) =>
      `  - seed ${f.seed}: ${f.violation.split("\n")[0]} — replay: \`npm run sim -- --seed ${f.seed} --trace\``,
  ),
  "",
].join("\n");
await writeResults(fileURLToPath(new URL("../../bench/results", import.meta.url)), "sim", date, json, md);
process.stdout.write(md);
process.exit(failures.length > 0 ? 1 : 0);
