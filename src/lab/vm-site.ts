// The lab's virtual-machine backends (`lab up --vm`): a bridge in the root namespace for libvirt's
// taps, joined to the lab LAN; the original machine provisioned by the lab itself; the replicas
// forked from it by the appliance's control plane (`serve` with a "machines" section), which also
// replaces machines after a failover. `down` destroys every machine of the lab's service.
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import { run, runStatus } from "../sys/command.js";
import { HypervisorConnection } from "../control/hypervisor.js";
import { parseMachinesConfig, type MachinesConfig } from "../control/machines-config.js";
import { Provisioner, type Machine } from "../control/provisioner.js";
import { DiskStore } from "../control/disks.js";
import { QEMU_PID_DIR } from "../control/machine-watch.js";
import { LabUsageError, type LabTopology, type VmSite } from "./topology.js";

export const DEFAULT_VM_IMAGE = fileURLToPath(new URL("../../../vm-images/build", import.meta.url));
export const VM_TEMPLATE = fileURLToPath(new URL("../../../vm-images/templates/kvm.xml", import.meta.url));
const LIBVIRT_SOCKET = "/var/run/libvirt/libvirt-sock";

export interface VmOptions {
  uri?: string;
  image?: string;
  domainType?: "qemu" | "kvm";
  bootTimeoutMs?: number;
}

/** The lab's VM site for a slot (addresses in the backend subnet: original .10, replicas .20+). */
export function vmSite(
  name: string,
  slot: number,
  replicas: number,
  backendBase: string,
  diskDir: string,
  o: VmOptions,
): VmSite {
  const image = o.image ?? DEFAULT_VM_IMAGE;
  for (const f of ["vmlinuz", "initrd.img", "root.qcow2"])
    if (!existsSync(join(image, f)))
      throw new LabUsageError(
        `VM image incomplete: ${join(image, f)} is missing (npm run vm-image builds it)`,
      );
  return {
    uri: o.uri ?? "qemu:///system",
    domainType: o.domainType ?? "qemu",
    bridge: `trv${slot}`,
    hostPort: `trvp${slot}`,
    lanPort: "p-vm",
    service: `lab-${name}`.slice(0, 40),
    replicas,
    image,
    diskDir,
    replicaAddresses: `${backendBase}.20-${backendBase}.${20 + Math.max(replicas * 4, 8)}`,
  };
}

/** The "machines" section of the lab's appliance configuration, as JSON. */
export function vmMachinesRaw(t: LabTopology, readiness: "probe" | "console", bootTimeoutMs = 120_000) {
  const vm = t.vm!;
  return {
    service: vm.service,
    hosts: [{ uri: vm.uri, bridge: vm.bridge }],
    template: VM_TEMPLATE,
    domainType: vm.domainType,
    image: vm.image,
    diskDir: vm.diskDir,
    memoryMiB: 128,
    addresses: [t.original.address, vm.replicaAddresses],
    prefixLength: 24,
    gateway: t.appliance.backendAddress,
    replicas: vm.replicas,
    bootTimeoutMs,
    readiness,
  };
}

/** The same, parsed (the lab's own provisioner uses it). */
export function vmMachinesConfig(
  t: LabTopology,
  readiness: "probe" | "console",
  bootTimeoutMs?: number,
): MachinesConfig {
  return parseMachinesConfig(vmMachinesRaw(t, readiness, bootTimeoutMs), t.port);
}

/** The bridge libvirt attaches the machines to, and its link into the lab LAN (created from the
 * lan namespace with its peer sent here, so it vanishes with that namespace). */
export async function buildVmBridge(t: LabTopology): Promise<void> {
  const vm = t.vm!;
  await runStatus(["ip", "link", "del", vm.bridge]);
  await run(["ip", "-batch", "-"], {
    input:
      [
        `link add ${vm.bridge} type bridge`,
        // No STP and no forwarding delay: a new machine's tap forwards at once.
        `link set ${vm.bridge} type bridge stp_state 0 forward_delay 0`,
        `link set ${vm.bridge} up`,
      ].join("\n") + "\n",
  });
  await run([
    "ip",
    "-n",
    t.lan.namespace,
    "link",
    "add",
    vm.lanPort,
    "type",
    "veth",
    "peer",
    "name",
    vm.hostPort,
    "netns",
    String(process.pid),
  ]);
  await run(["ip", "-batch", "-"], {
    input: `link set ${vm.hostPort} master ${vm.bridge}\nlink set ${vm.hostPort} up\n`,
  });
  await run(["ip", "-n", t.lan.namespace, "-batch", "-"], {
    input: `link set ${vm.lanPort} master ${t.lan.bridge}\nlink set ${vm.lanPort} up\n`,
  });
  for (const [ns, dev] of [
    [undefined, vm.hostPort],
    [t.lan.namespace, vm.lanPort],
  ] as const) {
    await runStatus([
      ...(ns ? ["ip", "netns", "exec", ns] : []),
      "ethtool",
      "-K",
      dev,
      "gro",
      "off",
      "gso",
      "off",
      "tso",
      "off",
      "tx",
      "off",
    ]);
  }
}

export async function removeVmBridge(vm: VmSite): Promise<void> {
  await runStatus(["ip", "link", "del", vm.bridge]);
}

/** Makes sure libvirtd answers (CI machines have no systemd to start it). */
export async function ensureLibvirtd(uri: string): Promise<void> {
  if (!uri.startsWith("qemu:///")) return;
  const r = await runStatus([
    "bash",
    fileURLToPath(new URL("../../../scripts/libvirtd.sh", import.meta.url)),
  ]);
  if (r.code !== 0) throw new Error(`libvirtd is not running and could not be started: ${r.stderr.trim()}`);
}

const quiet = pino({ level: process.env.TCP_REPLICATOR_LAB_LOG_LEVEL === "debug" ? "debug" : "warn" });

/** Boots the lab's original machine from the image; ready when its console says so. */
export async function provisionVmOriginal(t: LabTopology, bootTimeoutMs?: number): Promise<Machine> {
  await ensureLibvirtd(t.vm!.uri);
  const p = await Provisioner.open(vmMachinesConfig(t, "console", bootTimeoutMs), quiet);
  try {
    return await p.provision();
  } finally {
    await p.close();
  }
}

/** Destroys every machine of a lab's service and its disk (idempotent; for `down`). */
export async function destroyVmMachines(uri: string, service: string, diskDir: string): Promise<string[]> {
  if (uri.startsWith("qemu:///") && !existsSync(LIBVIRT_SOCKET)) return [];
  let h: HypervisorConnection;
  try {
    h = await HypervisorConnection.open(uri);
  } catch {
    return [];
  }
  const removed: string[] = [];
  try {
    const disks = new DiskStore(diskDir, "");
    for (const d of await h.list()) {
      if (d.machine?.service !== service) continue;
      await h.remove(d.name);
      await disks.remove(d.name);
      removed.push(d.name);
    }
  } finally {
    await h.close();
  }
  return removed;
}

/**
 * A fault on a lab machine. process: its QEMU process is killed (the machine dies at that
 * instant, like a power cut; local hosts only); host: the hypervisor destroys it; freeze: the
 * hypervisor pauses it; link: its network interface (the tap on the bridge) goes down.
 * Returns when the fault was injected (ms since the epoch): right before the action.
 */
export async function vmKill(vm: VmSite, machine: string, mode: string): Promise<number> {
  if (!["process", "host", "freeze", "link"].includes(mode))
    throw new LabUsageError(`mode ${mode}: process, host, freeze or link`);
  const h = await HypervisorConnection.open(vm.uri);
  try {
    const d = (await h.list()).find((x) => x.name === machine && x.machine?.service === vm.service);
    if (!d) throw new LabUsageError(`no machine ${machine} in this lab`);
    const now = () => performance.timeOrigin + performance.now();
    switch (mode) {
      case "process": {
        if (!vm.uri.startsWith("qemu:///"))
          throw new LabUsageError("mode process kills a local QEMU process: qemu:///system only");
        const pid = Number((await readFile(join(QEMU_PID_DIR, `${machine}.pid`), "latin1")).trim());
        const at = now();
        process.kill(pid, "SIGKILL");
        return at;
      }
      case "host": {
        const at = now();
        await h.destroy(machine);
        return at;
      }
      case "freeze": {
        const at = now();
        await h.suspend(machine);
        return at;
      }
      default: {
        const tap = /<interface type='bridge'>[\s\S]*?<target dev='([^']+)'/.exec(await h.xml(machine))?.[1];
        if (!tap) throw new Error(`${machine} has no tap device on the bridge`);
        const at = now();
        await run(["ip", "link", "set", tap, "down"]);
        return at;
      }
    }
  } finally {
    await h.close();
  }
}
