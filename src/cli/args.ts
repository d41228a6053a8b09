// Argument and config-file helpers shared by the CLI's commands. A UsageError exits 2 with the
// usage text; it is thrown before anything is changed.
import { readFile } from "node:fs/promises";
import { parseArgs, type ParseArgsConfig } from "node:util";

export class UsageError extends Error {}

export function parse<T extends NonNullable<ParseArgsConfig["options"]>>(
  args: string[],
  options: T,
  positionals = 0,
) {
  let parsed;
  try {
    parsed = parseArgs({ args, options, strict: true, allowPositionals: positionals > 0 });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (parsed.positionals.length > positionals) {
    throw new UsageError(`unexpected argument ${JSON.stringify(parsed.positionals[positionals])}`);
  }
  return parsed;
}

export function print(obj: unknown): void {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

export async function readConfigFile(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    throw new UsageError(`cannot read config ${path}: ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new UsageError(`config ${path} is not valid JSON: ${(e as Error).message}`);
  }
}
