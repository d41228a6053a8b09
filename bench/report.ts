// What every benchmark records with its numbers: the machine, and the results as JSON + Markdown
// under bench/results/, named by benchmark and date.
import { mkdir, writeFile } from "node:fs/promises";
import { cpus, release, totalmem } from "node:os";
import { join } from "node:path";

export interface Machine {
  cpus: number;
  model: string;
  memoryGiB: number;
  kernel: string;
  node: string;
}

export function machine(): Machine {
  return {
    cpus: cpus().length,
    model: cpus()[0]?.model ?? "unknown",
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
  };
}

export function machineLine(m: Machine): string {
  return `Machine: ${m.cpus} × ${m.model}, ${m.memoryGiB} GiB, Linux ${m.kernel}, Node ${m.node}.`;
}

/** Writes `<name>-<date>.json` and `.md` into `dir`. */
export async function writeResults(
  dir: string,
  name: string,
  date: string,
  json: unknown,
  md: string,
): Promise<void> {
  await mkdir(dir, { recursive: true });
  const stamp = date.replace(/[:.]/g, "-");
  await writeFile(join(dir, `${name}-${stamp}.json`), JSON.stringify(json, null, 2) + "\n");
  await writeFile(join(dir, `${name}-${stamp}.md`), md);
}
