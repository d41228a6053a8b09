// Runs external programs (ip, nft, ethtool, ss) and turns their failures into errors that say
// which command failed and what it printed, so a broken lab step is never a silent partial state.
import { execFile, spawn } from "node:child_process";

export class CommandError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly code: number | null,
    readonly stderr: string,
  ) {
    super(
      `command failed (exit ${code ?? "signal"}): ${argv.join(" ")}${stderr ? `: ${stderr.trim()}` : ""}`,
    );
    this.name = "CommandError";
  }
}

export interface RunOptions {
  /** Written to the program's standard input. */
  input?: string;
  /** Kill the program after this many milliseconds (default 30 s). */
  timeoutMs?: number;
}

/** Runs argv[0] with the remaining arguments and resolves with its standard output. */
export function run(argv: readonly string[], opts: RunOptions = {}): Promise<string> {
  const [file, ...args] = argv;
  if (file === undefined) throw new Error("run: empty argv");
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      args,
      { timeout: opts.timeoutMs ?? 30_000, maxBuffer: 64 * 1024 * 1024, encoding: "utf8" },
      (err, stdout, stderr) => {
        if (err) {
          const code = typeof err.code === "number" ? err.code : null;
          reject(new CommandError(argv, code, stderr || err.message));
        } else {
          resolve(stdout);
        }
      },
    );
    // A program may exit without reading its input; that is its answer, not an EPIPE crash.
    child.stdin?.on("error", () => undefined);
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** Like run() but resolves with the exit code instead of rejecting on failure. */
export function runStatus(
  argv: readonly string[],
  opts: RunOptions = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const [file, ...args] = argv;
  if (file === undefined) throw new Error("runStatus: empty argv");
  return new Promise((resolve) => {
    const child = spawn(file, args, { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 30_000);
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    child.on("error", (e) => {
      clearTimeout(timer);
      resolve({ code: 127, stdout, stderr: stderr + e.message });
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
    child.stdin.on("error", () => undefined);
    child.stdin.end(opts.input ?? "");
  });
}
