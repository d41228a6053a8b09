// Property tests that a run can repeat. Every property gets a fixed seed derived from its name,
// so the same commit gives the same runs (CI never draws a new counterexample by luck); the seed
// and the shrink path of a failure are printed with the one command that replays it.
//   FC_SEED=<n> [FC_PATH=<path>]   replay one run
//   FC_SEED=random                 explore new seeds (printed on failure like any other)
import fc from "fast-check";

/** FNV-1a of the property's name: a stable default seed. */
function nameSeed(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h | 0;
}

function seedFor(name: string): number {
  const env = process.env.FC_SEED;
  if (env === undefined || env === "") return nameSeed(name);
  if (env === "random") return (Math.random() * 2 ** 31) | 0;
  const n = Number(env);
  if (!Number.isInteger(n)) throw new Error(`FC_SEED=${env}: an integer or "random"`);
  return n;
}

/** Replays need the test file; the caller's stack names it. */
function callerFile(): string {
  const line = new Error().stack?.split("\n").find((l) => /\.test\.[jt]s/.test(l)) ?? "";
  const m = /(?:file:\/\/)?(\/[^:)]+\.test\.[jt]s)/.exec(line);
  return m?.[1] ?? "<test file>";
}

/** Runs `property` under `name`'s seed; throws with seed, path and replay command on failure. */
export function assertProperty<Ts>(
  name: string,
  property: fc.IProperty<Ts>,
  params: Omit<fc.Parameters<Ts>, "seed" | "path"> = {},
): void {
  const seed = seedFor(name);
  const path = process.env.FC_PATH || undefined;
  const details = fc.check(property, { ...params, seed, ...(path ? { path } : {}) });
  if (!details.failed) return;
  const file = callerFile();
  const replay =
    `FC_SEED=${details.seed}` +
    (details.counterexamplePath ? ` FC_PATH='${details.counterexamplePath}'` : "") +
    ` node ${file} --test-name-pattern='${name.replace(/'/g, "'\\''")}'`;
  throw new Error(`${fc.defaultReportMessage(details) ?? "property failed"}\nreplay: ${replay}`);
}
