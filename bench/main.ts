// `npm run bench -- NAME [options]`: runs one benchmark (its own script in this directory).
//   rtt       what replication costs: RTT per path (LAN, WAN), throughput (issue 5)
//   failover  failover stall per fault mode and replica count (issue 4)
//   detector  false failovers per hiccup and detection per real failure, side by side (issue 16)
//   sim       the deterministic simulator's long run: as many seeds as the time allows (issue 13)
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

const BENCHES: Record<string, string> = {
  rtt: "rtt.js",
  failover: "failover.js",
  detector: "detector.js",
  sim: "sim.js",
};

const [name, ...args] = process.argv.slice(2);
const script = name === undefined ? undefined : BENCHES[name];
if (!script) {
  process.stderr.write(`usage: npm run bench -- ${Object.keys(BENCHES).join("|")} [options]\n`);
  process.exit(2);
}
const child = spawn(process.execPath, [fileURLToPath(new URL(script, import.meta.url)), ...args], {
  stdio: "inherit",
});
child.on("close", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
