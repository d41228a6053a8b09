#!/usr/bin/env node
// The `tcp-replicator` command. Usage errors exit 2 with a message and change nothing; runtime
// failures exit 1. Machine-readable results (lab up/down/kill/list) go to stdout as JSON, logs to
// stderr, so scripts can parse stdout directly.
import { UsageError, parse, print, readConfigFile } from "./args.js";
import { VM_USAGE, vmCommand } from "./vm.js";
import { validateUri } from "../control/hypervisor.js";
import { labDown, labExec, labKill, labUp, listLabs, readState, validateFaultMode } from "../lab/lab.js";
import {
  LabUsageError,
  labSummary,
  validateLabName,
  validateReplicaCount,
  validateService,
  validateWanOptions,
  type WanOptions,
} from "../lab/topology.js";
import { PingOptionError, pingPong, validatePingOptions } from "../lab/pingpong.js";
import { blast } from "../lab/blast.js";
import { isIPv4 } from "../proxy/nft.js";
import { readFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { pino } from "pino";
import { ConfigError, parseProxyConfig } from "../proxy/config.js";
import { Proxy } from "../proxy/proxy.js";
import { queryStats, request } from "../proxy/stats-client.js";
import { parseServeConfig } from "../control/config.js";
import { ProxyDataPlane } from "../control/proxy-data-plane.js";
import { startAppliance } from "../control/serve.js";

const USAGE = `usage:
  tcp-replicator lab up [--name NAME] [--replicas N] [--service echo|redis|http] [--manual-failover] [--no-api]
                        # the appliance runs \`serve\`: "api" (dashboard, REST) and "token" in the JSON
                        [--wan-replicas N [--wan-delay-ms D] [--wan-jitter-ms J] [--wan-jitter-dist uniform|normal]
                         [--wan-loss-pct L] [--wan-queue-packets N] [--wan-queue-bytes B]]
                        # the last N replicas behind a delay line: +D ms each way (default 11)
                        [--vm [--vm-uri URI] [--vm-image DIR]]
                        # original and replicas are QEMU machines (libvirt, default qemu:///system)
                        # running the VM image's echo; the appliance forks and keeps the replicas
  tcp-replicator lab down --name NAME
  tcp-replicator lab exec --name NAME ROLE -- CMD [ARG...]
  tcp-replicator lab kill --name NAME TARGET --mode process|freeze|link|host
  tcp-replicator lab list
  tcp-replicator lab status --name NAME
  tcp-replicator lab promote --name NAME REPLICA               # external failure signal: promote now
  tcp-replicator lab stats --name NAME                      # the appliance's replication statistics
  tcp-replicator proxy --config FILE | --vip IP --port P --original IP --snat IP
                       --replication-address IP [--replica ID=IP ...] [--stats-socket PATH] [--log-level L]
  tcp-replicator serve --config FILE          # the appliance with its control API (proxy config + "api")
  tcp-replicator blast --host HOST --port PORT [--connections N] [--bytes PER_CONNECTION] [--rate-mbps MB/s]
  tcp-replicator ping --host HOST --port PORT [--count N] [--size BYTES] [--interval-ms MS] [--timeout-ms MS]
${VM_USAGE}`;

function requireRoot(): void {
  if (process.getuid?.() !== 0) throw new UsageError("the lab needs root (network namespaces, nftables)");
}

function requireName(name: string | undefined): string {
  if (name === undefined) throw new UsageError("--name NAME is required");
  return validateLabName(name);
}

async function labCommand(sub: string | undefined, rest: string[]): Promise<number> {
  switch (sub) {
    case "up": {
      const { values } = parse(rest, {
        name: { type: "string", default: "lab" },
        replicas: { type: "string", default: "2" },
        service: { type: "string", default: "echo" },
        "manual-failover": { type: "boolean", default: false },
        "no-api": { type: "boolean", default: false },
        "wan-replicas": { type: "string" },
        "wan-delay-ms": { type: "string" },
        "wan-jitter-ms": { type: "string" },
        "wan-jitter-dist": { type: "string" },
        "wan-loss-pct": { type: "string" },
        "wan-queue-packets": { type: "string" },
        "wan-queue-bytes": { type: "string" },
        vm: { type: "boolean", default: false },
        "vm-uri": { type: "string" },
        "vm-image": { type: "string" },
      });
      // Validate everything before touching the system.
      const name = validateLabName(values.name);
      const replicas = validateReplicaCount(values.replicas);
      const service = validateService(values.service);
      const wanFlags = Object.keys(values).filter((k) => k.startsWith("wan-") && k !== "wan-replicas");
      if (values["wan-replicas"] === undefined && wanFlags.length > 0) {
        throw new UsageError(`--${wanFlags[0]} needs --wan-replicas N (how many replicas are remote)`);
      }
      const wanRaw =
        values["wan-replicas"] === undefined
          ? undefined
          : {
              replicas: values["wan-replicas"],
              delayMs: values["wan-delay-ms"],
              jitterMs: values["wan-jitter-ms"],
              jitterDistribution: values["wan-jitter-dist"],
              lossPct: values["wan-loss-pct"],
              queueLimitPackets: values["wan-queue-packets"],
              queueLimitBytes: values["wan-queue-bytes"],
            };
      const wanChecked = validateWanOptions(wanRaw, replicas);
      const wan: WanOptions | undefined = wanChecked && {
        replicas: wanChecked.replicas,
        ...wanChecked.params,
      };
      if (!values.vm && (values["vm-uri"] !== undefined || values["vm-image"] !== undefined))
        throw new UsageError("--vm-uri and --vm-image go with --vm");
      if (values["vm-uri"] !== undefined) {
        try {
          validateUri(values["vm-uri"]);
        } catch (e) {
          throw new UsageError((e as Error).message);
        }
      }
      requireRoot();
      const state = await labUp({
        name,
        replicas,
        service,
        autoFailover: !values["manual-failover"],
        api: !values["no-api"],
        ...(wan ? { wan } : {}),
        ...(values.vm
          ? {
              vm: {
                ...(values["vm-uri"] !== undefined ? { uri: values["vm-uri"] } : {}),
                ...(values["vm-image"] !== undefined ? { image: resolve(values["vm-image"]) } : {}),
              },
            }
          : {}),
      });
      print({
        ...labSummary(state.topology),
        ...(state.api ? { api: state.api.url, token: state.api.token } : {}),
      });
      return 0;
    }
    case "down": {
      const { values } = parse(rest, { name: { type: "string" } });
      const name = requireName(values.name);
      requireRoot();
      print(await labDown(name));
      return 0;
    }
    case "exec": {
      const sep = rest.indexOf("--");
      if (sep < 0) throw new UsageError("lab exec: put the command after --");
      const { values, positionals } = parse(rest.slice(0, sep), { name: { type: "string" } }, 1);
      const name = requireName(values.name);
      const role = positionals[0];
      if (role === undefined)
        throw new UsageError("lab exec: ROLE is required (client, appliance, original, replicaK)");
      requireRoot();
      return labExec(name, role, rest.slice(sep + 1));
    }
    case "kill": {
      const { values, positionals } = parse(rest, { name: { type: "string" }, mode: { type: "string" } }, 1);
      const name = requireName(values.name);
      const target = positionals[0];
      if (target === undefined) throw new UsageError("lab kill: TARGET is required (original, replicaK)");
      if (values.mode === undefined) throw new UsageError("lab kill: --mode is required");
      const mode = validateFaultMode(values.mode);
      requireRoot();
      print(await labKill(name, target, mode));
      return 0;
    }
    case "list": {
      parse(rest, {});
      print(await listLabs());
      return 0;
    }
    case "status": {
      const { values } = parse(rest, { name: { type: "string" } });
      const name = requireName(values.name);
      const state = await readState(name);
      if (!state) throw new UsageError(`no lab named ${JSON.stringify(name)}`);
      print({
        ...labSummary(state.topology),
        ...(state.api ? { api: state.api.url, token: state.api.token } : {}),
        services: state.services,
        faults: state.faults,
      });
      return 0;
    }
    case "promote": {
      const { values, positionals } = parse(rest, { name: { type: "string" } }, 1);
      const name = requireName(values.name);
      const replica = positionals[0];
      if (replica === undefined) throw new UsageError("lab promote: REPLICA is required (replicaK)");
      const state = await readState(name);
      if (!state) throw new UsageError(`no lab named ${JSON.stringify(name)}`);
      if (!state.proxy) throw new UsageError(`lab ${name} runs no replication (0 replicas)`);
      print(await request(state.proxy.statsSocket, { cmd: "promote", replica }));
      return 0;
    }
    case "stats": {
      const { values } = parse(rest, { name: { type: "string" } });
      const name = requireName(values.name);
      const state = await readState(name);
      if (!state) throw new UsageError(`no lab named ${JSON.stringify(name)}`);
      if (!state.proxy) throw new UsageError(`lab ${name} runs no replication (0 replicas)`);
      print(await queryStats(state.proxy.statsSocket));
      return 0;
    }
    default:
      throw new UsageError(
        sub === undefined ? "lab: subcommand required" : `lab: unknown subcommand ${JSON.stringify(sub)}`,
      );
  }
}

async function proxyCommand(rest: string[]): Promise<number> {
  const { values } = parse(rest, {
    config: { type: "string" },
    vip: { type: "string" },
    port: { type: "string" },
    original: { type: "string" },
    snat: { type: "string" },
    "replication-address": { type: "string" },
    replica: { type: "string", multiple: true },
    "stats-socket": { type: "string" },
    "log-level": { type: "string" },
  });
  let raw: Record<string, unknown> = {};
  if (values.config !== undefined) {
    let text: string;
    try {
      text = await readFile(values.config, "utf8");
    } catch (e) {
      throw new UsageError(`cannot read config ${values.config}: ${(e as Error).message}`);
    }
    try {
      raw = JSON.parse(text) as Record<string, unknown>;
    } catch (e) {
      throw new UsageError(`config ${values.config} is not valid JSON: ${(e as Error).message}`);
    }
  }
  const set = (key: string, v: unknown) => {
    if (v !== undefined) raw[key] = v;
  };
  set("vip", values.vip);
  set("port", values.port === undefined ? undefined : Number(values.port));
  set("original", values.original);
  set("snatAddress", values.snat);
  set("replicationAddress", values["replication-address"]);
  set("statsSocket", values["stats-socket"]);
  set("logLevel", values["log-level"]);
  if (values.replica) {
    raw.replicas = values.replica.map((r) => {
      const [id, address] = r.split("=");
      if (!id || !address) throw new UsageError(`--replica ${r}: expected ID=IP`);
      return { id, address };
    });
  }
  const config = parseProxyConfig(raw);
  requireRoot();
  const log = pino({ level: config.logLevel, base: { component: "proxy" } }, pino.destination(2));
  const proxy = await Proxy.start(config, log);
  log.info({ vip: config.vip, port: config.port, original: config.original }, "proxy started");
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  await proxy.stop();
  log.info("proxy stopped");
  return 0;
}

async function serveCommand(rest: string[]): Promise<number> {
  const { values } = parse(rest, { config: { type: "string" } });
  if (values.config === undefined) throw new UsageError("serve: --config FILE is required");
  const config = parseServeConfig(
    await readConfigFile(values.config),
    process.env,
    dirname(resolve(values.config)),
  );
  requireRoot();
  const log = pino({ level: config.api.logLevel, base: { pid: process.pid } }, pino.destination(2));
  // Caught from here on: a signal during start-up stops what started instead of killing it.
  const signalled = new Promise<string>((resolve) => {
    process.once("SIGINT", () => resolve("SIGINT"));
    process.once("SIGTERM", () => resolve("SIGTERM"));
  });
  const appliance = await startAppliance(config, log, async (proxyConfig) => {
    const proxy = await Proxy.start(
      proxyConfig,
      log.child({ component: "proxy" }, { level: proxyConfig.logLevel }),
    );
    return { dataPlane: new ProxyDataPlane(proxy), stop: () => proxy.stop() };
  });
  log.info({ signal: await signalled }, "stopping");
  await appliance.stop();
  log.info("stopped");
  return 0;
}

async function blastCommand(rest: string[]): Promise<number> {
  const { values } = parse(rest, {
    host: { type: "string" },
    port: { type: "string" },
    connections: { type: "string", default: "4" },
    bytes: { type: "string", default: String(64 << 20) },
    "rate-mbps": { type: "string", default: "0" },
  });
  if (values.host === undefined || !isIPv4(values.host))
    throw new UsageError("--host: an IPv4 address is required");
  const port = Number(values.port);
  const connections = Number(values.connections);
  const bytes = Number(values.bytes);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError("--port: 1..65535");
  if (!Number.isInteger(connections) || connections < 1 || connections > 1000)
    throw new UsageError("--connections: 1..1000");
  if (!Number.isInteger(bytes) || bytes < 1) throw new UsageError("--bytes: a positive integer");
  const rate = Number(values["rate-mbps"]);
  if (!Number.isFinite(rate) || rate < 0)
    throw new UsageError("--rate-mbps: megabytes per second, 0 for unpaced");
  print(await blast(values.host, port, connections, bytes, rate * 1e6));
  return 0;
}

async function pingCommand(rest: string[]): Promise<number> {
  const { values } = parse(rest, {
    host: { type: "string" },
    port: { type: "string" },
    count: { type: "string", default: "1000" },
    size: { type: "string", default: "64" },
    "interval-ms": { type: "string", default: "0" },
    "timeout-ms": { type: "string", default: "5000" },
  });
  const opts = validatePingOptions({
    host: values.host,
    port: values.port,
    count: values.count,
    size: values.size,
    intervalMs: values["interval-ms"],
    timeoutMs: values["timeout-ms"],
  });
  print(await pingPong(opts));
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, sub, ...rest] = argv;
  try {
    switch (cmd) {
      case "lab":
        return await labCommand(sub, rest);
      case "proxy":
        return await proxyCommand(sub === undefined ? [] : [sub, ...rest]);
      case "vm":
        return await vmCommand(sub, rest);
      case "serve":
        return await serveCommand(sub === undefined ? [] : [sub, ...rest]);
      case "blast":
        return await blastCommand(sub === undefined ? [] : [sub, ...rest]);
      case "ping":
        return await pingCommand(sub === undefined ? [] : [sub, ...rest]);
      case "help":
      case "--help":
      case "-h":
        process.stdout.write(USAGE);
        return 0;
      default:
        throw new UsageError(
          cmd === undefined ? "command required" : `unknown command ${JSON.stringify(cmd)}`,
        );
    }
  } catch (e) {
    if (
      e instanceof UsageError ||
      e instanceof LabUsageError ||
      e instanceof PingOptionError ||
      e instanceof ConfigError
    ) {
      process.stderr.write(`tcp-replicator: error: ${e.message}\n${e instanceof UsageError ? USAGE : ""}`);
      return 2;
    }
    process.stderr.write(`tcp-replicator: ${(e as Error).message}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`tcp-replicator: internal error: ${String(e)}\n`);
    process.exitCode = 1;
  },
);
