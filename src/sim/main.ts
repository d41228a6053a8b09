// `npm run sim -- [--seeds N] [--from F] [--seed S] [--trace] [--minutes M] [--json FILE]`
// Runs the deterministic simulator: seeds F .. F+N-1 (default 1..100), or one seed with its
// trace. Stops at the first violation and prints the command that replays it. Exit 1 on a
// violation, 2 on bad arguments.
import { writeFileSync } from "node:fs";
import { runSeed, type RunResult } from "./run.js";

function usage(msg: string): never {
  process.stderr.write(
    `sim: ${msg}\nusage: npm run sim -- [--seeds N] [--from F] [--seed S] [--trace] [--minutes M] [--json FILE]\n`,
  );
  process.exit(2);
}

const args = process.argv.slice(2);
const opt: {
  seeds: number;
  from: number;
  seed?: number;
  trace: boolean;
  minutes?: number;
  json?: string;
  keepGoing: boolean;
} = {
  seeds: 100,
  from: 1,
  trace: false,
  keepGoing: false,
};
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  const num = (): number => {
    const v = Number(args[++i]);
    if (!Number.isInteger(v) || v < 0) usage(`${a} wants a non-negative integer`);
    return v;
  };
  if (a === "--seeds") opt.seeds = num();
  else if (a === "--from") opt.from = num();
  else if (a === "--seed") opt.seed = num();
  else if (a === "--minutes") opt.minutes = num();
  else if (a === "--trace") opt.trace = true;
  else if (a === "--keep-going") opt.keepGoing = true;
  else if (a === "--json") opt.json = args[++i] ?? usage("--json wants a file");
  else usage(`unknown argument ${a}`);
}

function show(r: RunResult): void {
  const outcomes = Object.entries(r.outcomes)
    .map(([k, v]) => `${v} ${k}`)
    .join(", ");
  process.stdout.write(
    `seed ${r.seed}: ${r.ok ? "ok" : "VIOLATION"} ${r.simMs.toFixed(0)} ms simulated, ${r.steps} steps, ${r.connections} connections (${outcomes}), ${r.promotions} promotions, faults: ${r.faults.join("; ") || "none"}\n`,
  );
  if (!r.ok) {
    process.stdout.write(`  ${r.violation}\n`);
    for (const t of r.trace) process.stdout.write(`  | ${t}\n`);
    process.stdout.write(`replay: npm run sim -- --seed ${r.seed} --trace\n`);
  }
}

if (opt.seed !== undefined) {
  const r = runSeed(opt.seed, opt.trace ? { trace: (l) => process.stdout.write(`${l}\n`) } : {});
  show(r);
  process.exit(r.ok ? 0 : 1);
}

const started = Date.now();
const deadline = opt.minutes === undefined ? Infinity : started + opt.minutes * 60_000;
const failures: RunResult[] = [];
let runs = 0;
let steps = 0;
let simMs = 0;
let promotions = 0;
let falsePromotions = 0;
/** False promotions by what confirmed them (the decision rule's evidence). */
const falseBy: Record<string, number> = {};
let connections = 0;
for (let s = opt.from; s < opt.from + opt.seeds && Date.now() < deadline; s++) {
  const r = runSeed(s);
  runs++;
  steps += r.steps;
  simMs += r.simMs;
  promotions += r.promotions;
  falsePromotions += r.falsePromotions;
  for (const why of r.falseReasons) {
    const by = why.split(":")[0]!;
    falseBy[by] = (falseBy[by] ?? 0) + 1;
  }
  connections += r.connections;
  if (!r.ok) {
    show(r);
    failures.push(r);
    if (!opt.keepGoing) break;
  }
}
const secs = (Date.now() - started) / 1000;
const summary = {
  from: opt.from,
  runs,
  failures: failures.map((f) => ({ seed: f.seed, violation: f.violation })),
  steps,
  connections,
  promotions,
  falsePromotions,
  falseBy,
  simulatedSeconds: simMs / 1000,
  wallSeconds: secs,
};
process.stdout.write(
  `sim: ${runs} seeds from ${opt.from} in ${secs.toFixed(1)} s (${(simMs / 1000).toFixed(0)} s simulated, ${steps} steps, ${connections} connections, ${promotions} promotions, ${falsePromotions} of them of a serving original${falsePromotions > 0 ? ` ${JSON.stringify(falseBy)}` : ""}): ${failures.length} violation(s)\n`,
);
if (opt.json) writeFileSync(opt.json, JSON.stringify(summary, null, 2) + "\n");
process.exit(failures.length > 0 ? 1 : 0);
