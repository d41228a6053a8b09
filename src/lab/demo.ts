// `npm run demo`: brings a lab up (an original and replicas behind the appliance), shows traffic
// flowing from the client through the VIP once a second, and takes the lab down on Ctrl-C (or after
// --duration seconds). Whatever happens, the lab is removed before the process exits.
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { runStatus } from "../sys/command.js";
import { readCounters } from "../proxy/nft.js";
import { labDown, labUp, readState } from "./lab.js";
import {
  labSummary,
  validateLabName,
  validateReplicaCount,
  validateService,
  type LabTopology,
} from "./topology.js";
import type { PingResult } from "./pingpong.js";
import { queryStats } from "../proxy/stats-client.js";

const CLI = fileURLToPath(new URL("../cli/main.js", import.meta.url));

function inClient(t: LabTopology, argv: string[]) {
  return runStatus(["ip", "netns", "exec", t.client.namespace, ...argv], { timeoutMs: 10_000 });
}

/** One round of client traffic through the VIP; returns a one-line description. */
async function trafficRound(t: LabTopology, round: number): Promise<string> {
  const vip = t.appliance.vip;
  switch (t.service) {
    case "echo": {
      const r = await inClient(t, [
        process.execPath,
        CLI,
        "ping",
        "--host",
        vip,
        "--port",
        String(t.port),
        "--count",
        "200",
      ]);
      if (r.code !== 0) return `echo FAILED: ${r.stderr.trim()}`;
      const p = JSON.parse(r.stdout) as PingResult;
      return `echo ${p.count} round trips of ${p.size} B, RTT p50 ${p.rttUs.p50.toFixed(0)} µs p99 ${p.rttUs.p99.toFixed(0)} µs`;
    }
    case "redis": {
      const r = await inClient(t, ["redis-cli", "-h", vip, "-p", String(t.port), "INCR", "demo:counter"]);
      return r.code === 0
        ? `redis INCR demo:counter -> ${r.stdout.trim()}`
        : `redis FAILED: ${r.stderr.trim()}`;
    }
    case "http": {
      const file = round % 2 === 0 ? "1M.bin" : "64K.bin";
      const r = await inClient(t, [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download} %{time_total}",
        `http://${vip}:${t.port}/${file}`,
      ]);
      const [code, size, time] = r.stdout.trim().split(" ");
      return r.code === 0
        ? `http GET /${file} -> ${code}, ${size} B in ${(Number(time) * 1000).toFixed(1)} ms`
        : `http FAILED (curl exit ${r.code})`;
    }
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      name: { type: "string", default: "demo" },
      replicas: { type: "string", default: "2" },
      service: { type: "string", default: "echo" },
      duration: { type: "string", default: "0" },
    },
    strict: true,
  });
  const name = validateLabName(values.name);
  const replicas = validateReplicaCount(values.replicas);
  const service = validateService(values.service);
  const duration = Number(values.duration);
  if (!Number.isFinite(duration) || duration < 0)
    throw new Error(`--duration ${values.duration}: seconds >= 0`);

  if (await readState(name)) {
    process.stdout.write(`removing the lab ${name} a previous run left behind\n`);
  }
  await labDown(name);

  let stopping = false;
  const stop = () => {
    stopping = true;
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);

  const state = await labUp({ name, replicas, service, api: true });
  const t = state.topology;
  try {
    const s = labSummary(t);
    process.stdout.write(
      `lab ${name} up: client ${s.addresses.client} -> VIP ${s.addresses.vip}:${s.port} -> original ${s.addresses.original}` +
        `, replicas ${s.addresses.replicas.join(", ") || "none"} (service ${service})\n` +
        `try: tcp-replicator lab exec --name ${name} client -- <command>; Ctrl-C stops the demo and removes the lab\n` +
        (state.api
          ? `dashboard: ${state.api.url}/ (switchover token ${state.api.token}); metrics: ${state.api.url}/metrics\n`
          : ""),
    );
    const started = Date.now();
    for (let round = 0; !stopping && (duration === 0 || Date.now() - started < duration * 1000); round++) {
      const line = await trafficRound(t, round);
      const counters = await readCounters(t.appliance.namespace).catch(() => []);
      const c2o = counters.find((c) => c.comment === "client-to-original");
      const o2c = counters.find((c) => c.comment === "original-to-client");
      const kernel = c2o && o2c ? ` | kernel path: ${c2o.packets} pkts in, ${o2c.packets} pkts out` : "";
      let replication = "";
      if (state.proxy) {
        const st = await queryStats(state.proxy.statsSocket).catch(() => undefined);
        if (st) {
          const e = st.engine;
          replication =
            ` | replicated ${e.clientBytes} B: ` +
            e.replicas
              .map((r) => `${r.id} acked ${r.bytesAcked} B, ${r.diverged} diverged, ${r.lagging} lagging`)
              .join("; ");
        }
      }
      process.stdout.write(
        `[${((Date.now() - started) / 1000).toFixed(1)}s] ${line}${kernel}${replication}\n`,
      );
      await new Promise((r) => setTimeout(r, 1000));
    }
  } finally {
    const report = await labDown(name);
    process.stdout.write(`lab ${name} down: removed ${report.namespacesRemoved.length} namespaces\n`);
  }
  return 0;
}

main().then(
  (code) => (process.exitCode = code),
  (e: unknown) => {
    process.stderr.write(`demo: ${(e as Error).message}\n`);
    process.exitCode = 1;
  },
);
