// The lab: real Linux network stacks in network namespaces on one machine.
//
//   client ──cli0── appliance ──be0── [lan: br0] ──eth0── original, replica1..N
//   10.100.(2k).0/24            10.100.(2k+1).0/24
//
// The appliance routes between the client subnet and the backend LAN and owns the VIP; the kernel
// path (nftables DNAT/SNAT in our own table) forwards VIP:port to the original. Every lab gets its
// own slot k, hence its own subnets and namespace names, so several labs (parallel tests) coexist.
// Everything a lab creates is recorded in its state directory; `down` also cleans without it.
//
// With WAN replicas (`wan` option), the last replicas sit behind a router namespace whose user-space
// delay line (native/delay-line.c) delays, jitters and drops every packet in each direction:
//
//   appliance ──be0── [lan: br0] ──lan0── wan router ──far0── [lan: br1] ──eth0── remote replicas
//                                          └ dl-out / dl-in: TUN lanes of the delay line
//   10.100.(2k+1).0/24 (router .254)                  10.101.k.0/24 (router .1)
import { mkdir, open, readFile, readdir, rm, stat, unlink, writeFile } from "node:fs/promises";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cpus } from "node:os";
import { join } from "node:path";
import { run, runStatus } from "../sys/command.js";
import {
  isAlive,
  pidsInNamespace,
  processState,
  processTree,
  signalAll,
  waitUntilDead,
} from "../sys/process.js";
import { installKernelPath } from "../proxy/nft.js";
import {
  buildVmBridge,
  destroyVmMachines,
  provisionVmOriginal,
  removeVmBridge,
  vmKill,
  vmMachinesRaw,
  vmSite,
  type VmOptions,
} from "./vm-site.js";
import type { FailureTuning } from "../proxy/config.js";
import { spawnInNamespace, startService, type RunningService } from "./services.js";
import { queryStats } from "../proxy/stats-client.js";
import { fileURLToPath } from "node:url";
import {
  LabUsageError,
  MAX_SLOTS,
  allNamespaces,
  backendForTarget,
  backends,
  buildTopology,
  isLabNamespace,
  namespaceForRole,
  validateLabName,
  validateReplicaCount,
  validateService,
  validateWanOptions,
  type LabTopology,
  type WanOptions,
  type WanParams,
  type WanRouter,
} from "./topology.js";
import { writeWwwTree } from "./www.js";

export const FAULT_MODES = ["process", "freeze", "link", "host"] as const;
export type FaultMode = (typeof FAULT_MODES)[number];

export interface LabState {
  version: 1;
  topology: LabTopology;
  /** Main pid of the service on each backend role. */
  services: Record<string, { pid: number; dir: string }>;
  faults: Array<{ target: string; mode: FaultMode; at: string }>;
  /** The appliance's replication proxy (absent with 0 replicas unless asked: kernel path only). */
  proxy?: { pid: number; statsSocket: string; config: string; log: string };
  /** The appliance's control API (`serve` instead of the bare proxy; see LabUpOptions.api): its
   * base URL on the management link, reachable from the root namespace, and its bearer token. */
  api?: { url: string; token: string };
  /** The WAN router's delay line (only with remote replicas). */
  delayLine?: DelayLineProcess;
  /** Virtual-machine backends: the machine the lab provisioned as the first original. */
  machines?: { original: string };
  createdAt: string;
}

export interface DelayLineProcess {
  pid: number;
  argv: string[];
  /** Where SIGUSR1 makes it write its counters (see `delayLineStats`). */
  statsFile: string;
  log: string;
}

const CLI_PATH = fileURLToPath(new URL("../cli/main.js", import.meta.url));
export const DELAY_LINE = fileURLToPath(new URL("../../native/delay-line", import.meta.url));

export function runDir(): string {
  return process.env.TCP_REPLICATOR_RUN_DIR ?? "/run/tcp-replicator";
}
const labsDir = () => join(runDir(), "labs");
const slotsDir = () => join(runDir(), "slots");
export const labDir = (name: string) => join(labsDir(), name);
const statePath = (name: string) => join(labDir(name), "state.json");

export class LabNotFoundError extends LabUsageError {
  constructor(name: string) {
    super(`no lab named ${JSON.stringify(name)} (see 'tcp-replicator lab list')`);
    this.name = "LabNotFoundError";
  }
}

export async function readState(name: string): Promise<LabState | undefined> {
  try {
    return JSON.parse(await readFile(statePath(name), "utf8")) as LabState;
  } catch {
    return undefined;
  }
}

async function loadState(name: string): Promise<LabState> {
  validateLabName(name);
  const s = await readState(name);
  if (!s) throw new LabNotFoundError(name);
  return s;
}

async function saveState(state: LabState): Promise<void> {
  // A private temporary name: two commands on one lab (two kills at once) must not take each
  // other's file away before the rename.
  const tmp = `${statePath(state.topology.name)}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  // Owner-only: it may hold the lab's API token.
  await writeFile(tmp, JSON.stringify(state, null, 2), { mode: 0o600 });
  await run(["mv", "-f", tmp, statePath(state.topology.name)]);
}

export async function listLabs(): Promise<string[]> {
  try {
    return (await readdir(labsDir())).sort();
  } catch {
    return [];
  }
}

async function listNamespaces(): Promise<string[]> {
  const out = await run(["ip", "-j", "netns", "list"]).catch(() => "[]");
  const parsed = JSON.parse(out.trim() || "[]") as Array<{ name: string }>;
  return parsed.map((n) => n.name);
}

/** Claims the lowest free slot for `name`; a slot whose owner lab no longer exists is stale. */
async function allocateSlot(name: string): Promise<number> {
  await mkdir(slotsDir(), { recursive: true });
  for (let k = 0; k < MAX_SLOTS; k++) {
    const path = join(slotsDir(), String(k));
    try {
      const fh = await open(path, "wx");
      await fh.writeFile(name);
      await fh.close();
      return k;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      const owner = (await readFile(path, "utf8").catch(() => "")).trim();
      // Labs create their directory before claiming a slot, so no directory means a crashed owner.
      const ownerExists =
        owner !== "" &&
        (await readdir(labDir(owner))
          .then(() => true)
          .catch(() => false));
      if (!ownerExists) {
        await unlink(path).catch(() => undefined);
        k--; // try the freed slot again
      }
    }
  }
  throw new Error(`no free lab slot: ${MAX_SLOTS} labs exist already`);
}

async function releaseSlots(name: string): Promise<void> {
  let entries: string[] = [];
  try {
    entries = await readdir(slotsDir());
  } catch {
    return;
  }
  for (const e of entries) {
    const path = join(slotsDir(), e);
    const owner = (await readFile(path, "utf8").catch(() => "")).trim();
    if (owner === name) await unlink(path).catch(() => undefined);
  }
}

/** Runs several `ip` commands in one namespace with one fork. */
async function ipBatch(namespace: string, commands: string[]): Promise<void> {
  await run(["ip", "-n", namespace, "-batch", "-"], { input: commands.join("\n") + "\n" });
}

async function sysctl(namespace: string, settings: Record<string, string>): Promise<void> {
  await run([
    "ip",
    "netns",
    "exec",
    namespace,
    "sysctl",
    "-q",
    "-w",
    ...Object.entries(settings).map(([k, v]) => `${k}=${v}`),
  ]);
}

/**
 * GRO would hand captures super-segments larger than the MTU, and TSO/GSO would put them on the
 * wire between namespaces; a real wire carries MTU-sized frames, so the lab turns them off on
 * every link (the appliance's links must have them off in real deployments too). Transmit
 * checksum offload is off as well: across veth a partial checksum is never filled in, and the
 * engine verifies the checksums of what it captures.
 */
const OFFLOADS_OFF = ["gro", "off", "gso", "off", "tso", "off", "tx", "off"];

async function offloadsOff(namespace: string, ifaces: string[]): Promise<void> {
  for (const dev of ifaces) {
    await run(["ip", "netns", "exec", namespace, "ethtool", "-K", dev, ...OFFLOADS_OFF]);
  }
}

async function buildNetwork(t: LabTopology, withApi: boolean): Promise<void> {
  for (const ns of allNamespaces(t)) {
    await run(["ip", "netns", "add", ns]);
    // IPv6 off: no router solicitations or DAD probes in captures; the lab is IPv4.
    await sysctl(ns, { "net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1" });
  }
  const lan = t.lan.namespace;
  const appl = t.appliance.namespace;
  const wan = t.wan;
  await ipBatch(lan, [
    `link add ${t.lan.bridge} type bridge`,
    `link set ${t.lan.bridge} up`,
    ...(wan ? [`link add ${wan.farBridge} type bridge`, `link set ${wan.farBridge} up`] : []),
    "link set lo up",
  ]);
  // Links are created inside their namespaces directly: nothing ever appears in the root namespace.
  await ipBatch(t.client.namespace, [
    `link add ${t.client.iface} type veth peer name ${t.appliance.clientIface} netns ${appl}`,
    "link set lo up",
    `addr add ${t.client.address}/24 dev ${t.client.iface}`,
    `link set ${t.client.iface} up`,
    `route add default via ${t.appliance.clientAddress}`,
  ]);
  await ipBatch(appl, [
    `link add ${t.appliance.backendIface} type veth peer name ${t.lan.appliancePort} netns ${lan}`,
    "link set lo up",
    `addr add ${t.appliance.clientAddress}/24 dev ${t.appliance.clientIface}`,
    `addr add ${t.appliance.vip}/32 dev ${t.appliance.clientIface}`,
    `link set ${t.appliance.clientIface} up`,
    `addr add ${t.appliance.backendAddress}/24 dev ${t.appliance.backendIface}`,
    `link set ${t.appliance.backendIface} up`,
    ...(wan ? [`route add ${wan.remoteSubnet} via ${wan.lanAddress} dev ${t.appliance.backendIface}`] : []),
  ]);
  if (withApi) await buildManagementLink(t);
  for (const b of backends(t)) {
    await ipBatch(b.namespace, [
      `link add ${b.iface} type veth peer name ${b.lanPort} netns ${lan}`,
      "link set lo up",
      `addr add ${b.address}/24 dev ${b.iface}`,
      `link set ${b.iface} up`,
      `route add default via ${b.gateway}`,
    ]);
  }
  if (wan) await buildWanRouter(t, wan);
  const bridgeOf = (b: (typeof t.replicas)[number]) =>
    b.site === "wan" && wan ? wan.farBridge : t.lan.bridge;
  const ports: Array<[string, string]> = [
    [t.lan.appliancePort, t.lan.bridge],
    ...(wan
      ? ([
          [wan.lanPort, t.lan.bridge],
          [wan.farPort, wan.farBridge],
        ] as Array<[string, string]>)
      : []),
    ...backends(t).map((b): [string, string] => [b.lanPort, bridgeOf(b)]),
  ];
  await ipBatch(
    lan,
    ports.flatMap(([p, bridge]) => [`link set ${p} master ${bridge}`, `link set ${p} up`]),
  );
  await sysctl(appl, { "net.ipv4.ip_forward": "1" });
  await offloadsOff(t.client.namespace, [t.client.iface]);
  await offloadsOff(appl, [t.appliance.clientIface, t.appliance.backendIface]);
  await offloadsOff(
    lan,
    ports.map(([p]) => p),
  );
  if (wan) await offloadsOff(wan.namespace, [wan.lanIface, wan.farIface]);
  for (const b of backends(t)) await offloadsOff(b.namespace, [b.iface]);
}

/**
 * The one link a lab puts in the root namespace, and only when it runs the control API: the
 * operator's browser and curl live there. It is created from the appliance's side with its peer
 * sent to this process's namespace in the same command, so it vanishes with the appliance
 * namespace (`lab down`, or a crash cleaned up later) and is never left half-made.
 */
async function buildManagementLink(t: LabTopology): Promise<void> {
  const m = t.appliance.mgmt;
  await ipBatch(t.appliance.namespace, [
    `link add ${m.iface} type veth peer name ${m.hostIface} netns ${process.pid}`,
    `addr add ${m.address}/24 dev ${m.iface}`,
    `link set ${m.iface} up`,
  ]);
  await run(["ip", "-batch", "-"], {
    input: `addr add ${m.hostAddress}/24 dev ${m.hostIface}\nlink set ${m.hostIface} up\n`,
  });
}

/**
 * The WAN router's links, addresses and policy routing. Its TUN lanes appear only when the delay
 * line starts (`startDelayLine`), which also routes the lanes' tables into them. The router's
 * own traffic (the readiness pings) follows the main table and skips the delay line.
 */
async function buildWanRouter(t: LabTopology, wan: WanRouter): Promise<void> {
  const lan = t.lan.namespace;
  await ipBatch(wan.namespace, [
    `link add ${wan.lanIface} type veth peer name ${wan.lanPort} netns ${lan}`,
    `link add ${wan.farIface} type veth peer name ${wan.farPort} netns ${lan}`,
    "link set lo up",
    `addr add ${wan.lanAddress}/24 dev ${wan.lanIface}`,
    `link set ${wan.lanIface} up`,
    `addr add ${wan.farAddress}/24 dev ${wan.farIface}`,
    `link set ${wan.farIface} up`,
    // Clients reach remote replicas directly too (as LAN backends): their answers go back via the appliance.
    `route add default via ${t.appliance.backendAddress}`,
    `rule add pref 100 iif ${wan.lanIface} lookup ${wan.toRemote.table}`,
    `rule add pref 101 iif ${wan.farIface} lookup ${wan.fromRemote.table}`,
  ]);
  // A packet the delay line writes back arrives on its TUN although the main table routes its
  // source out of a veth: strict (or loose, for the LAN's own addresses) reverse-path filtering
  // would drop it. `default` covers the TUNs, created later.
  await sysctl(wan.namespace, {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    [`net.ipv4.conf.${wan.lanIface}.rp_filter`]: "0",
    [`net.ipv4.conf.${wan.farIface}.rp_filter`]: "0",
  });
}

/** The delay line's command line for a router's parameters (both lanes alike). */
export function delayLineArgv(wan: WanRouter, statsFile: string): string[] {
  const p = wan.params;
  return [
    DELAY_LINE,
    "--delay-ms",
    String(p.delayMs),
    "--jitter-ms",
    String(p.jitterMs),
    "--jitter-dist",
    p.jitterDistribution,
    "--loss-pct",
    String(p.lossPct),
    "--limit-packets",
    String(p.queueLimitPackets),
    "--limit-bytes",
    String(p.queueLimitBytes),
    // An idle CPU wakes ~100 µs late from a long sleep (measured, docs/ARCHITECTURE.md); spinning
    // the last 200 µs before a release hides that, within 5 % of one CPU at most.
    "--spin-us",
    "200",
    "--spin-budget-pct",
    "5",
    // The lab shares 2 CPUs with the appliance and the services: without it, a release waits for
    // a busy CPU's running task (measured: p90 2.7 ms late while the VIP carried traffic).
    "--realtime",
    "--stats-file",
    statsFile,
    "--tun",
    wan.toRemote.tun,
    "--tun",
    wan.fromRemote.tun,
  ];
}

/** Starts the router's delay line and routes its lanes' tables into its TUN devices. */
async function startDelayLine(t: LabTopology): Promise<DelayLineProcess> {
  const wan = t.wan!;
  const dir = labDir(t.name);
  const statsFile = join(dir, "delay-line.json");
  const log = join(dir, "delay-line.log");
  const argv = delayLineArgv(wan, statsFile);
  // A predecessor's last report must not pass for this process's first (delayLineStats).
  await rm(statsFile, { force: true });
  // The log is appended to across restarts (labWanUpdate): only this process's lines count.
  const from = await stat(log).then(
    (s) => s.size,
    () => 0,
  );
  const pid = await spawnInNamespace(wan.namespace, argv, log);
  const tuns = [wan.toRemote.tun, wan.fromRemote.tun];
  const deadline = Date.now() + 10_000;
  for (;;) {
    const text = (await readFile(log).catch(() => Buffer.alloc(0))).subarray(from).toString("utf8");
    // The process writes its ready line once every TUN is created and up.
    if (/delay-line: ready/.test(text)) break;
    if (!isAlive(pid)) throw new Error(`the delay line exited during start: ${text.trim().slice(-2000)}`);
    if (Date.now() > deadline) throw new Error("the delay line did not create its TUN devices within 10 s");
    await new Promise((r) => setTimeout(r, 10));
  }
  await ipBatch(wan.namespace, [
    `route replace default dev ${wan.toRemote.tun} table ${wan.toRemote.table}`,
    `route replace default dev ${wan.fromRemote.tun} table ${wan.fromRemote.table}`,
  ]);
  await waitQdiscs(wan.namespace, tuns);
  return { pid, argv, statsFile, log };
}

/**
 * A TUN reports no carrier state (operstate UNKNOWN); what matters is that linkwatch attached its
 * qdisc, before which every packet routed into it is dropped.
 */
async function waitQdiscs(namespace: string, ifaces: string[]): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const links = JSON.parse(await run(["ip", "-j", "-n", namespace, "link", "show"])) as Array<{
      ifname: string;
      qdisc?: string;
    }>;
    const pending = ifaces.filter((i) => {
      const l = links.find((x) => x.ifname === i);
      return !l || l.qdisc === undefined || l.qdisc === "noop";
    });
    if (pending.length === 0) return;
    if (Date.now() > deadline)
      throw new Error(`no qdisc on ${pending.join(", ")} in ${namespace} after 10 s`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * A link that was just set up drops every frame until the kernel's linkwatch work attaches its
 * qdisc, which can take up to a second; a lab handed out before that loses the first SYN and the
 * first connection stalls for the 1 s SYN retransmission. So wait until every link is operationally
 * up, then prove each path with one ping (which also leaves the ARP caches warm).
 */
async function waitNetworkReady(t: LabTopology, withApi: boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  const tuns: string[] = t.wan ? [t.wan.toRemote.tun, t.wan.fromRemote.tun] : [];
  for (const ns of allNamespaces(t)) {
    for (;;) {
      const links = JSON.parse(await run(["ip", "-j", "-n", ns, "link", "show"])) as Array<{
        ifname: string;
        operstate: string;
      }>;
      const down = links.filter((l) => l.ifname !== "lo" && !tuns.includes(l.ifname) && l.operstate !== "UP");
      if (down.length === 0) break;
      if (Date.now() > deadline) {
        throw new Error(`links not up in ${ns} after 10 s: ${down.map((l) => l.ifname).join(", ")}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  // Remote replicas are proven from the router (its own packets skip the delay line, so a lossy
  // WAN cannot fail the lab), and the router from the appliance.
  const wan = t.wan;
  const pings: Array<[string, string]> = [
    [t.client.namespace, t.appliance.vip],
    ...backends(t).map((b): [string, string] => [
      b.site === "wan" && wan ? wan.namespace : t.appliance.namespace,
      b.address,
    ]),
    ...(wan ? [[t.appliance.namespace, wan.lanAddress] as [string, string]] : []),
  ];
  const pingArgv = (ns: string | undefined, addr: string) => [
    ...(ns === undefined ? [] : ["ip", "netns", "exec", ns]),
    "ping",
    "-c1",
    "-W0.2",
    "-q",
    addr,
  ];
  // The management link is proven from the root namespace, where its users are.
  const all: Array<[string | undefined, string]> = [
    ...pings,
    ...(withApi ? [[undefined, t.appliance.mgmt.address] as [undefined, string]] : []),
  ];
  await Promise.all(
    all.map(async ([ns, addr]) => {
      for (;;) {
        const r = await runStatus(pingArgv(ns, addr));
        if (r.code === 0) return;
        if (Date.now() > deadline)
          throw new Error(`lab network: ${addr} unreachable from ${ns ?? "the root namespace"}`);
      }
    }),
  );
}

/** Starts the appliance's proxy (kernel path + replication engine) in the appliance namespace. */
/** What the appliance asks each lab service to prove it is alive (the application, not only its
 * kernel, must answer), when a lab asks for health checks. Off by default: on this shared 2-core
 * machine a healthy service is sometimes not scheduled for 10+ ms, so a tight application-level
 * deadline fails healthy originals over; TCP-level probes (answered by the kernel) do not. */
const HEALTH_CHECKS: Record<LabTopology["service"], { send: string; expect: string }> = {
  echo: { send: "tcp-replicator health check\n", expect: "tcp-replicator health check\n" },
  redis: { send: "PING\r\n", expect: "+PONG\r\n" },
  http: { send: "HEAD / HTTP/1.0\r\n\r\n", expect: "HTTP/1." },
};

/**
 * A probe is one handshake with a deadline (`probeTimeoutMs` before any RTT is measured, 4 × for
 * periodic probes, a silent periodic probe asked once more): a remote replica farther away than
 * the deadline would be removed as dead at once, and on a lossy WAN one lost SYN or SYN-ACK in
 * two tries would remove it. So a WAN lab's default deadline covers the round trip (2 × (delay +
 * largest jitter) + 10 ms) and, with loss, the kernel's SYN retransmissions at 1 and 3 s. It is
 * also the floor of the original's probe deadline: detection of a failed original slows by as
 * much in such a lab (set `failure.probeTimeoutMs` to choose otherwise).
 */
/**
 * Machines under QEMU's software emulation (TCG) on a busy 2-core host answer in 0.3-0.7 ms
 * typically but 16 ms at p99 and up to 60 ms (measured: 200 echo round trips through the VIP),
 * so the namespace lab's millisecond thresholds fail healthy originals over. A VM lab relies on
 * the hypervisor's signal (a stopped machine, seen within one 20 ms poll) for fast failover and
 * keeps the data-path thresholds above the emulation's tail. KVM or Xen guests do not need this.
 */
export const VM_FAILURE_TUNING: Partial<FailureTuning> = {
  stallSuspectMs: 150,
  probeTimeoutMs: 300,
  hangBudgetMs: 2000,
  probeIntervalMs: 1000,
};

export function wanProbeTuning(p: WanParams | undefined): Partial<FailureTuning> {
  if (!p) return {};
  const jitter = p.jitterDistribution === "normal" ? 4 * p.jitterMs : p.jitterMs;
  const rtt = Math.ceil(2 * (p.delayMs + jitter) + 10);
  return { probeTimeoutMs: Math.max(5, rtt, p.lossPct > 0 ? 3100 : 0) };
}

async function startProxy(
  t: LabTopology,
  opts: Pick<LabUpOptions, "autoFailover" | "healthCheck" | "failure" | "api">,
): Promise<Pick<LabState, "proxy" | "api">> {
  const autoFailover = opts.autoFailover ?? true;
  const dir = labDir(t.name);
  const config = join(dir, "proxy.json");
  const statsSocket = join(dir, "proxy.sock");
  const log = join(dir, "proxy.log");
  const mgmt = t.appliance.mgmt;
  const api = opts.api
    ? { url: `http://${mgmt.address}:${mgmt.apiPort}`, token: randomBytes(18).toString("base64url") }
    : undefined;
  await writeFile(
    config,
    JSON.stringify(
      {
        vip: t.appliance.vip,
        port: t.port,
        original: t.original.address,
        snatAddress: t.appliance.backendAddress,
        replicationAddress: t.appliance.replicationAddress,
        replicas: t.replicas.map((r) => ({ id: r.role, address: r.address })),
        statsSocket,
        logLevel: process.env.TCP_REPLICATOR_LAB_LOG_LEVEL ?? "info",
        autoFailover,
        ...(opts.healthCheck
          ? { healthCheck: { ...HEALTH_CHECKS[t.service], timeoutMs: opts.healthCheck.timeoutMs } }
          : {}),
        ...(opts.failure || t.wan || t.vm
          ? {
              failure: {
                ...wanProbeTuning(t.wan?.params),
                ...(t.vm ? VM_FAILURE_TUNING : {}),
                ...opts.failure,
              },
            }
          : {}),
        // The lab's largest file is 64 MiB: hold enough to verify every byte of it even when the
        // kernel path serves the client far faster than the replicas answer the engine.
        limits: { perConnectionBytes: 128 * 2 ** 20, perReplicaBytes: 2 ** 30, globalBytes: 2 * 2 ** 30 },
        // Virtual-machine backends: the appliance forks its replicas from the original machine
        // and keeps their number (src/control/redundancy.ts).
        ...(t.vm ? { machines: vmMachinesRaw(t, "probe") } : {}),
        // `serve`: the same data plane with its control API on the management link, its state
        // in its own embedded Redis in the lab directory (gone with the lab).
        ...(api
          ? {
              api: {
                listen: mgmt.address,
                port: mgmt.apiPort,
                token: api.token,
                runtimeDir: join(dir, "serve"),
                dataDir: join(dir, "serve-data"),
                logLevel: process.env.TCP_REPLICATOR_LAB_LOG_LEVEL ?? "info",
              },
            }
          : {}),
      },
      null,
      2,
    ),
    { mode: 0o600 },
  );
  const pid = await spawnInNamespace(
    t.appliance.namespace,
    [process.execPath, CLI_PATH, api ? "serve" : "proxy", "--config", config],
    log,
  );
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      await queryStats(statsSocket, 1000);
      if (api) {
        const r = await fetch(`${api.url}/v1/status`, { signal: AbortSignal.timeout(1000) });
        if (r.status !== 200) throw new Error(`GET /v1/status: ${r.status}`);
      }
      return { proxy: { pid, statsSocket, config, log }, ...(api ? { api } : {}) };
    } catch {
      if (!isAlive(pid)) {
        const text = await readFile(log, "utf8").catch(() => "");
        throw new Error(`the proxy exited during start: ${text.trim().slice(-2000)}`);
      }
      if (Date.now() > deadline)
        throw new Error(
          api
            ? "the appliance did not answer on its stats socket and its API within 15 s"
            : "the proxy did not answer on its stats socket within 15 s",
        );
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export interface LabUpOptions {
  name: string;
  replicas: number | string;
  service: string;
  /** The appliance promotes a replica by itself when the original fails (default true). */
  autoFailover?: boolean;
  /** Probes also ask the service itself (PING, HEAD /, an echo) to answer within timeoutMs. */
  healthCheck?: { timeoutMs: number };
  /** Detection thresholds for the appliance (ms). */
  failure?: Partial<FailureTuning>;
  /** Run the appliance's proxy (capture, engine) even without replicas. By default a lab without
   * replicas has the kernel path alone (benchmarks compare both). */
  proxy?: boolean;
  /** Run the appliance as `serve`: the same data plane plus its control API (dashboard, REST,
   * events, metrics) on a management link to the root namespace (10.102.SLOT.2:9480, the root
   * namespace's end 10.102.SLOT.1), with a fresh token. Default false here (tests drive the bare
   * data plane); `tcp-replicator lab up` turns it on unless --no-api. */
  api?: boolean;
  /** The last `wan.replicas` replicas are remote: behind a delay line adding `delayMs` (one way,
   * each direction), jitter and loss. Without it (or with 0) the lab is LAN only. */
  wan?: WanOptions;
  /** The original and the replicas are virtual machines (QEMU through libvirt) running the VM
   * image's echo service; the appliance runs `serve` and forks the replicas from the original. */
  vm?: VmOptions;
}

export async function labUp(opts: LabUpOptions): Promise<LabState> {
  const name = validateLabName(opts.name);
  const replicas = validateReplicaCount(opts.replicas);
  const service = validateService(opts.service);
  validateWanOptions(opts.wan, replicas);
  if (opts.vm) {
    if (service !== "echo") throw new LabUsageError("virtual-machine backends run the echo service only");
    if (opts.wan && opts.wan.replicas > 0)
      throw new LabUsageError("virtual-machine backends have no WAN replicas");
    if (replicas < 1) throw new LabUsageError("virtual-machine backends need at least 1 replica");
  }

  const leftovers = (await listNamespaces()).filter((ns) => isLabNamespace(name, ns));
  if (leftovers.length > 0) {
    throw new LabUsageError(
      `lab ${name} has namespaces already (${leftovers.join(", ")}): run 'tcp-replicator lab down --name ${name}' first`,
    );
  }
  await mkdir(labsDir(), { recursive: true, mode: 0o755 });
  try {
    // The lab directory is the name's lock: mkdir is atomic, so two `up` of one name cannot both win.
    await mkdir(labDir(name), { mode: 0o755 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") {
      throw new LabUsageError(
        `lab ${name} exists already: run 'tcp-replicator lab down --name ${name}' first`,
      );
    }
    throw e;
  }
  try {
    const slot = await allocateSlot(name);
    const topology = buildTopology(name, slot, opts.vm ? 0 : replicas, service, opts.wan);
    if (opts.vm) {
      const backendBase = topology.backendSubnet.replace(/\.0\/24$/, "");
      topology.vm = vmSite(name, slot, replicas, backendBase, join(labDir(name), "machines"), opts.vm);
    }
    const state: LabState = {
      version: 1,
      topology,
      services: {},
      faults: [],
      createdAt: new Date().toISOString(),
    };
    await saveState(state);
    const withApi = topology.vm !== undefined || (opts.api === true && (replicas > 0 || opts.proxy === true));
    await buildNetwork(topology, withApi);
    if (topology.vm) await buildVmBridge(topology);
    if (topology.wan) {
      state.delayLine = await startDelayLine(topology);
      await saveState(state);
    }
    await waitNetworkReady(topology, withApi);
    const docroot = join(labDir(name), "www");
    if (service === "http") await writeWwwTree(docroot);
    const started: RunningService[] = await Promise.all(
      backends(topology).map((b) =>
        startService(service, b.namespace, join(labDir(name), b.role), topology.port, docroot),
      ),
    );
    backends(topology).forEach((b, i) => {
      const s = started[i]!;
      state.services[b.role] = { pid: s.pid, dir: s.dir };
    });
    await saveState(state);
    if (topology.vm)
      state.machines = { original: (await provisionVmOriginal(topology, opts.vm?.bootTimeoutMs)).name };
    if (replicas === 0 && !opts.proxy && !topology.vm) {
      await installKernelPath(topology.appliance.namespace, {
        vip: topology.appliance.vip,
        port: topology.port,
        original: topology.original.address,
        snatAddress: topology.appliance.backendAddress,
      });
    } else {
      Object.assign(state, await startProxy(topology, { ...opts, api: withApi }));
      await saveState(state);
      if (topology.vm && state.api)
        await waitReplicas(state.api, replicas, opts.vm?.bootTimeoutMs ?? 120_000);
    }
    return state;
  } catch (e) {
    await labDown(name).catch(() => undefined);
    throw e;
  }
}

export interface LabDownReport {
  name: string;
  namespacesRemoved: string[];
  processesKilled: number;
}

/** Removes everything a lab of this name owns; idempotent; works without a state file. */
export async function labDown(nameArg: string): Promise<LabDownReport> {
  const name = validateLabName(nameArg);
  const state = await readState(name);
  const existing = await listNamespaces();
  const fromState = state ? allNamespaces(state.topology) : [];
  const targets = existing.filter((ns) => isLabNamespace(name, ns) || fromState.includes(ns));
  const pids = targets.flatMap((ns) => pidsInNamespace(ns));
  // Stopped (frozen) processes take SIGKILL too; nothing else is needed to end them.
  signalAll(pids, "SIGKILL");
  await waitUntilDead(pids, 5000);
  // The management link's root end goes with its namespace only when the kernel gets round to
  // destroying that namespace (asynchronously): deleted here, so that the name is free at once
  // for the next lab of this slot.
  // Only when the appliance namespace holds its peer: the name is this lab's then, not another's.
  const mgmt = state?.topology.appliance.mgmt;
  if (mgmt && targets.includes(state.topology.appliance.namespace)) {
    const peer = await runStatus([
      "ip",
      "-n",
      state.topology.appliance.namespace,
      "link",
      "show",
      mgmt.iface,
    ]);
    if (peer.code === 0) await runStatus(["ip", "link", "del", mgmt.hostIface]);
  }
  // Machines after the appliance is gone (it would replace them), before their bridge.
  const vm = state?.topology.vm;
  if (vm) {
    await destroyVmMachines(vm.uri, vm.service, vm.diskDir);
    await removeVmBridge(vm);
  }
  for (const ns of targets) {
    const r = await runStatus(["ip", "netns", "del", ns]);
    if (r.code !== 0 && (await listNamespaces()).includes(ns)) {
      throw new Error(`could not delete namespace ${ns}: ${r.stderr.trim()}`);
    }
  }
  await rm(labDir(name), { recursive: true, force: true });
  await releaseSlots(name);
  return { name, namespacesRemoved: targets, processesKilled: pids.length };
}

export async function labExec(nameArg: string, role: string, argv: string[]): Promise<number> {
  const state = await loadState(nameArg);
  const ns = namespaceForRole(state.topology, role);
  if (argv.length === 0) throw new LabUsageError("lab exec: no command given after --");
  return new Promise((resolve) => {
    const child = spawn("ip", ["netns", "exec", ns, ...argv], { stdio: "inherit" });
    child.on("error", () => resolve(127));
    child.on("close", (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

export function validateFaultMode(mode: string): FaultMode {
  if (!(FAULT_MODES as readonly string[]).includes(mode)) {
    throw new LabUsageError(`invalid mode ${JSON.stringify(mode)}: must be one of ${FAULT_MODES.join(", ")}`);
  }
  return mode as FaultMode;
}

export interface FaultReport {
  target: string;
  mode: FaultMode;
  pids: number[];
  /** When the failure took effect (ms since the epoch, sub-ms precision): signals sent, or the
   * link command finished. Benchmarks measure the failover stall from here. */
  injectedAt: number;
  /** When the injection began (before the link command ran): the failure cannot be older. A test
   * that checks something happened only after the failure compares with this (the link command
   * can return milliseconds after the link went down, and the failover may be faster). */
  startedAt: number;
}

const preciseNow = () => performance.timeOrigin + performance.now();

/** Injects a failure into the original or a replica. */
export async function labKill(nameArg: string, target: string, modeArg: string): Promise<FaultReport> {
  const mode = validateFaultMode(modeArg);
  const state = await loadState(nameArg);
  if (state.topology.vm) return killMachine(state, target, mode);
  const backend = backendForTarget(state.topology, target);
  const service = state.services[backend.role];
  let pids: number[] = [];
  let injectedAt = 0;
  const startedAt = preciseNow();
  switch (mode) {
    case "process":
    case "freeze": {
      pids = service ? processTree(service.pid) : [];
      if (pids.length === 0) throw new Error(`the service on ${target} is not running`);
      injectedAt = preciseNow();
      if (mode === "process") {
        signalAll(pids, "SIGKILL");
        if (!(await waitUntilDead(pids, 5000))) throw new Error(`service on ${target} survived SIGKILL`);
      } else {
        signalAll(pids, "SIGSTOP");
        const deadline = Date.now() + 5000;
        while (pids.some((p) => isAlive(p) && processState(p) !== "T") && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 10));
        }
      }
      break;
    }
    case "link":
      await run(["ip", "-n", backend.namespace, "link", "set", backend.iface, "down"]);
      injectedAt = preciseNow();
      break;
    case "host": {
      pids = pidsInNamespace(backend.namespace);
      injectedAt = preciseNow();
      signalAll(pids, "SIGKILL");
      await waitUntilDead(pids, 5000);
      // Deleting our end of the veth deletes the LAN end too: the host is gone from the network.
      await runStatus(["ip", "-n", backend.namespace, "link", "del", backend.iface]);
      break;
    }
  }
  state.faults.push({ target, mode, at: new Date().toISOString() });
  await saveState(state);
  return { target, mode, pids, injectedAt, startedAt };
}

/**
 * Trouble that is no failure (issue 16's hiccup suite): the appliance must fail nothing over.
 *   pause      the original's service stopped (SIGSTOP) for `ms`, then resumed: a GC pause, a
 *              page-fault storm or a burst of steal time on a healthy server
 *   appliance  the appliance's own process stopped for `ms`: its event loop blocked (the capture
 *              helpers keep capturing meanwhile)
 *   cpu        every CPU of the host busy with other work for `ms`
 *   heavy      a heavy process started on the host for `ms` (memory faulted in, CPU burnt),
 *              as a browser starting next to the lab
 */
export const HICCUP_KINDS = ["pause", "appliance", "cpu", "heavy"] as const;
export type HiccupKind = (typeof HICCUP_KINDS)[number];

export interface HiccupReport {
  kind: HiccupKind;
  /** What was asked, and how long the trouble lasted as measured here. */
  ms: number;
  lastedMs: number;
  startedAt: number;
}

/** One hiccup in a namespace lab; resolves once it is over. */
export async function labHiccup(nameArg: string, kindArg: string, ms: number): Promise<HiccupReport> {
  if (!(HICCUP_KINDS as readonly string[]).includes(kindArg))
    throw new LabUsageError(
      `invalid hiccup ${JSON.stringify(kindArg)}: must be one of ${HICCUP_KINDS.join(", ")}`,
    );
  if (!Number.isFinite(ms) || ms <= 0 || ms > 60_000)
    throw new LabUsageError(`invalid hiccup length ${ms}: 1 to 60000 ms`);
  const kind = kindArg as HiccupKind;
  const state = await loadState(nameArg);
  if (state.topology.vm) throw new LabUsageError("hiccups are for namespace labs (not --vm)");
  const wait = () => new Promise((r) => setTimeout(r, ms));
  const startedAt = preciseNow();
  if (kind === "pause" || kind === "appliance") {
    let pids: number[];
    if (kind === "pause") {
      const backend = backendForTarget(state.topology, "original");
      const service = state.services[backend.role];
      pids = service ? processTree(service.pid) : [];
      if (pids.length === 0) throw new Error("the original's service is not running");
    } else {
      if (!state.proxy) throw new Error("the lab's appliance is not running");
      pids = [state.proxy.pid];
    }
    signalAll(pids, "SIGSTOP");
    try {
      await wait();
    } finally {
      signalAll(pids, "SIGCONT");
    }
  } else {
    // Busy loops (one per CPU), or one process that faults in 512 MiB and burns a CPU.
    const code =
      kind === "cpu"
        ? "for(;;){}"
        : "const b=[];for(let i=0;i<512;i++){b.push(Buffer.alloc(1<<20,i));}for(;;){}";
    const n = kind === "cpu" ? Math.max(1, cpus().length) : 1;
    const children = Array.from({ length: n }, () =>
      spawn(process.execPath, ["-e", code], { stdio: "ignore" }),
    );
    try {
      await wait();
    } finally {
      for (const c of children) c.kill("SIGKILL");
      await Promise.all(
        children.map((c) =>
          c.exitCode !== null || c.signalCode !== null
            ? Promise.resolve()
            : new Promise((r) => c.once("exit", r)),
        ),
      );
    }
  }
  return { kind, ms, lastedMs: preciseNow() - startedAt, startedAt };
}

/** `lab kill` on a virtual-machine lab: TARGET is "original" (the current one) or a machine name. */
async function killMachine(state: LabState, target: string, mode: FaultMode): Promise<FaultReport> {
  const vm = state.topology.vm!;
  let machine = target;
  if (target === "original") {
    if (!state.api) throw new Error("the lab's appliance API is not known");
    const status = (await apiGet(state.api, "/v1/machines")) as {
      machines: Array<{ name: string; role: string }>;
    };
    const m = status.machines.find((x) => x.role === "original");
    if (!m) throw new Error("no machine is the original now");
    machine = m.name;
  }
  const injectedAt = await vmKill(vm, machine, mode);
  state.faults.push({ target: machine, mode, at: new Date().toISOString() });
  await saveState(state);
  return { target: machine, mode, pids: [], injectedAt, startedAt: injectedAt };
}

async function apiGet(api: { url: string }, path: string): Promise<unknown> {
  const r = await fetch(`${api.url}${path}`, { signal: AbortSignal.timeout(5000) });
  if (r.status !== 200) throw new Error(`GET ${path}: ${r.status}`);
  return r.json();
}

/** Waits until the appliance has `n` active replicas (a VM lab's forks booted and joined). */
async function waitReplicas(api: { url: string }, n: number, bootTimeoutMs: number): Promise<void> {
  const deadline = Date.now() + bootTimeoutMs * n + 30_000;
  let last: unknown;
  for (;;) {
    const s = (await apiGet(api, "/v1/status").catch(() => undefined)) as
      { replicas: Array<{ state: string }> } | undefined;
    if (s && s.replicas.filter((r) => r.state === "active").length >= n) return;
    last = await apiGet(api, "/v1/machines").catch((e: Error) => e.message);
    if (Date.now() > deadline)
      throw new Error(
        `the appliance did not bring up ${n} replica machines in time: ${JSON.stringify(last)}`,
      );
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** One TUN lane's counters as the delay line reports them (native/delay-line.c). */
export interface DelayLineLaneStats {
  tun: string;
  delayMs: number;
  jitterMs: number;
  jitterDist: "uniform" | "normal";
  lossPct: number;
  limitPackets: number;
  limitBytes: number;
  reorder: boolean;
  received: number;
  receivedBytes: number;
  sent: number;
  sentBytes: number;
  droppedLoss: number;
  droppedQueue: number;
  writeErrors: number;
  /** Packets released later than their own draw because the previous packet of their flow was. */
  heldForOrder: number;
  /** Packets the kernel dropped at the TUN's ring before the delay line read them. */
  droppedTun: number;
  queuedPackets: number;
  queuedBytes: number;
  maxQueuePackets: number;
  maxQueueBytes: number;
  scheduledDelayMs: { mean: number; min: number; max: number };
  /** Packets whose arrival is the kernel's timestamp, or (fallback) the time they were read. */
  kernelStamped: number;
  readStamped: number;
  /** Release precision: write time minus scheduled release (µs, 1 µs buckets). */
  lateUs: LatencySummary;
  /** How long write() took: the kernel forwarding the released packet. */
  writeUs: LatencySummary;
  /** How long after the kernel's timestamp the packet was read (compensated, shown for insight). */
  readLagUs: LatencySummary;
}

export interface LatencySummary {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

export interface DelayLineStats {
  event: "stats" | "reset" | "exit";
  seq: number;
  uptimeS: number;
  spinUs: number;
  spinBudgetPct: number;
  spinMs: number;
  lanes: DelayLineLaneStats[];
}

async function labWan(nameArg: string): Promise<{ state: LabState; wan: WanRouter; line: DelayLineProcess }> {
  const state = await loadState(nameArg);
  const wan = state.topology.wan;
  if (!wan || !state.delayLine) throw new LabUsageError(`lab ${state.topology.name} has no WAN replicas`);
  return { state, wan, line: state.delayLine };
}

/**
 * The WAN delay line's counters, fresh: asks the process (SIGUSR1) and waits for its report.
 * `toRemote` carries the appliance's (and clients') packets to the remote replicas. With `reset`
 * (SIGUSR2) the counters start again after this report, so the next one covers one phase of a
 * benchmark alone (packets queued at the reset are sent later but were received before it;
 * `droppedTun` is the kernel's count since the TUN exists).
 */
export async function delayLineStats(
  nameArg: string,
  options: { reset?: boolean; timeoutMs?: number } = {},
): Promise<{ toRemote: DelayLineLaneStats; fromRemote: DelayLineLaneStats; report: DelayLineStats }> {
  const timeoutMs = options.timeoutMs ?? 2000;
  const { wan, line } = await labWan(nameArg);
  if (!isAlive(line.pid)) throw new Error(`the delay line (pid ${line.pid}) is not running`);
  const before = await readFile(line.statsFile, "utf8").catch(() => "");
  process.kill(line.pid, options.reset ? "SIGUSR2" : "SIGUSR1");
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // Every report differs from the previous one (its seq and uptime), and arrives by rename.
    const text = await readFile(line.statsFile, "utf8").catch(() => "");
    if (text !== "" && text !== before) {
      const report = JSON.parse(text) as DelayLineStats;
      const lane = (tun: string) => {
        const l = report.lanes.find((x) => x.tun === tun);
        if (!l) throw new Error(`the delay line reported no lane ${tun}`);
        return l;
      };
      return { toRemote: lane(wan.toRemote.tun), fromRemote: lane(wan.fromRemote.tun), report };
    }
    if (Date.now() > deadline) throw new Error(`the delay line did not report within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Changes the WAN's parameters of a running lab: the delay line restarts with them (packets it
 * held are lost, as on a link that flaps; TCP retransmits them). Counters start from zero.
 */
export async function labWanUpdate(nameArg: string, changes: Partial<WanParams>): Promise<WanParams> {
  const { state, wan, line } = await labWan(nameArg);
  const remote = state.topology.replicas.filter((r) => r.site === "wan").length;
  const checked = validateWanOptions(
    { ...wan.params, ...changes, replicas: remote },
    state.topology.replicas.length,
  );
  if (!checked) throw new LabUsageError("no remote replica left to configure");
  signalAll([line.pid], "SIGTERM");
  if (!(await waitUntilDead([line.pid], 2000))) {
    signalAll([line.pid], "SIGKILL");
    await waitUntilDead([line.pid], 2000);
  }
  wan.params = checked.params;
  state.delayLine = undefined;
  await saveState(state);
  state.delayLine = await startDelayLine(state.topology);
  await saveState(state);
  return checked.params;
}
