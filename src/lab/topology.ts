// The lab's shape as pure data: namespace names, interfaces and addresses derived from the lab's
// name, its slot and the replica count. Nothing here touches the system, so it is unit-tested and
// every other lab step (up, down, kill, the proxy) reads the same answers.

export const SERVICES = ["echo", "redis", "http"] as const;
export type ServiceKind = (typeof SERVICES)[number];

export const SERVICE_PORTS: Record<ServiceKind, number> = { echo: 7000, redis: 6379, http: 8080 };

export const MAX_REPLICAS = 5;
/** Labs get non-overlapping /24 pairs 10.100.(2k).0 and 10.100.(2k+1).0, so at most 128 at once. */
export const MAX_SLOTS = 128;
/** The lab's control API port on the appliance's management address. */
export const LAB_API_PORT = 9480;
export const NAMESPACE_PREFIX = "tr-";

const NAME_RE = /^[a-z0-9][a-z0-9-]{0,30}$/;

export class LabUsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LabUsageError";
  }
}

export function validateLabName(name: string): string {
  if (!NAME_RE.test(name)) {
    throw new LabUsageError(
      `invalid lab name ${JSON.stringify(name)}: use 1-31 characters from a-z, 0-9 and '-', starting with a letter or digit`,
    );
  }
  return name;
}

export function validateReplicaCount(value: string | number): number {
  const n = typeof value === "number" ? value : /^\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isInteger(n) || n < 0 || n > MAX_REPLICAS) {
    throw new LabUsageError(
      `invalid replica count ${JSON.stringify(value)}: must be an integer from 0 to ${MAX_REPLICAS}`,
    );
  }
  return n;
}

export function validateService(value: string): ServiceKind {
  if (!(SERVICES as readonly string[]).includes(value)) {
    throw new LabUsageError(
      `invalid service ${JSON.stringify(value)}: must be one of ${SERVICES.join(", ")}`,
    );
  }
  return value as ServiceKind;
}

/** A backend role: the original or one of the replicas. */
export type BackendRole = "original" | `replica${number}`;
export type Role = "client" | "appliance" | "lan" | "wan" | BackendRole;

export interface BackendHost {
  role: BackendRole;
  namespace: string;
  /** The backend's only link, into the lab LAN (or, for a remote replica, the far-side switch). */
  iface: "eth0";
  /** The switch end of the backend's link (inside the lan namespace, on br0, or br1 when remote). */
  lanPort: string;
  address: string;
  /** "wan": the replica sits behind the WAN delay line (`LabTopology.wan`). */
  site: "lan" | "wan";
  /** The backend's default route. */
  gateway: string;
}

export const JITTER_DISTRIBUTIONS = ["uniform", "normal"] as const;
export type JitterDistribution = (typeof JITTER_DISTRIBUTIONS)[number];

/** What the WAN delay line does to every packet, in each direction independently. */
export interface WanParams {
  /** One-way delay, ms: a round trip through the WAN grows by twice this. */
  delayMs: number;
  /** uniform: delay + U(-jitter, +jitter); normal: delay + N(0, jitter²) cut at ±4 jitter. */
  jitterMs: number;
  jitterDistribution: JitterDistribution;
  /** Probability that a packet is dropped, percent. */
  lossPct: number;
  /** What each direction's queue holds at most; beyond it packets are dropped and counted. */
  queueLimitPackets: number;
  queueLimitBytes: number;
}

/** The WAN options of `lab up`: the last `replicas` replicas are remote. */
export interface WanOptions extends Partial<WanParams> {
  replicas: number;
}

export const WAN_DEFAULTS: WanParams = {
  delayMs: 11,
  jitterMs: 0,
  jitterDistribution: "uniform",
  lossPct: 0,
  queueLimitPackets: 100_000,
  queueLimitBytes: 64 * 2 ** 20,
};
export const MAX_WAN_DELAY_MS = 10_000;

/**
 * The router between the lab LAN and the remote replicas' segment. Its main table routes
 * between its two links, but policy rules send every packet arriving on one of them to a TUN
 * lane of the delay line (one lane per direction), which writes it back after the delay; then
 * the main table forwards it. Each packet crosses the delay line once.
 */
export interface WanRouter {
  namespace: string;
  /** Link into the lab LAN (br0), the appliance's next hop toward the remote subnet. */
  lanIface: "lan0";
  lanPort: "p-wan";
  lanAddress: string;
  /** Link into the remote segment (br1 in the lan namespace), the remote replicas' gateway. */
  farIface: "far0";
  farPort: "p-wanfar";
  farBridge: "br1";
  farAddress: string;
  remoteSubnet: string;
  /** Delay-line lanes: packets from the LAN toward the remote replicas, and back. */
  toRemote: { tun: "dl-out"; table: 100 };
  fromRemote: { tun: "dl-in"; table: 101 };
  params: WanParams;
}

/**
 * Backends as virtual machines (QEMU through libvirt) instead of namespaces: the original and its
 * replicas are machines the appliance's control plane provisions (`src/control/provisioner.ts`),
 * on a bridge in the root namespace (where libvirtd attaches their taps) joined to the lab LAN.
 *
 *   appliance ──be0── [lan: br0] ──p-vm── trvpK ── [root: trvK] ── VM original, VM replicas
 */
export interface VmSite {
  /** libvirt URI of the host the machines run on. */
  uri: string;
  /** libvirt domain type: qemu (TCG, no KVM needed) or kvm. */
  domainType: "qemu" | "kvm";
  /** The machines' bridge in the root namespace, and the LAN link's two ends. */
  bridge: string;
  hostPort: string;
  lanPort: "p-vm";
  /** The machines' service name (their metadata), so `down` finds them even after a crash. */
  service: string;
  /** Replicas the appliance keeps (forked from the original). */
  replicas: number;
  /** The VM image directory (npm run vm-image). */
  image: string;
  /** Where the machines' disks and consoles live. */
  diskDir: string;
  /** Addresses of replicas: .20 onwards (the original is .10). */
  replicaAddresses: string;
}

export interface LabTopology {
  name: string;
  slot: number;
  service: ServiceKind;
  port: number;
  clientSubnet: string;
  backendSubnet: string;
  client: { namespace: string; iface: "eth0"; address: string };
  appliance: {
    namespace: string;
    /** Link toward the client subnet; carries the VIP. */
    clientIface: "cli0";
    /** Link into the backend LAN. */
    backendIface: "be0";
    clientAddress: string;
    backendAddress: string;
    /** Source address of the replication engine's shadow conversations (SNAT mode). */
    replicationAddress: string;
    vip: string;
    /** Management link to the root namespace, where the operator's browser and tools run: the
     * control API listens on `address` (only labs that run it create the link). */
    mgmt: { iface: "mgmt0"; hostIface: string; address: string; hostAddress: string; apiPort: number };
  };
  lan: { namespace: string; bridge: "br0"; appliancePort: string };
  original: BackendHost;
  replicas: BackendHost[];
  /** Present when some replicas are remote. */
  wan?: WanRouter;
  /** Present when the backends are virtual machines. */
  vm?: VmSite;
}

function subnetBase(slot: number): { client: string; backend: string } {
  if (!Number.isInteger(slot) || slot < 0 || slot >= MAX_SLOTS) {
    throw new RangeError(`lab slot ${slot} out of range 0..${MAX_SLOTS - 1}`);
  }
  return { client: `10.100.${slot * 2}`, backend: `10.100.${slot * 2 + 1}` };
}

export function namespaceName(lab: string, role: Role): string {
  return `${NAMESPACE_PREFIX}${lab}-${role}`;
}

/** Matches every namespace a lab of this name can own, also ones a crashed run left behind. */
export function isLabNamespace(lab: string, ns: string): boolean {
  const prefix = `${NAMESPACE_PREFIX}${lab}-`;
  if (!ns.startsWith(prefix)) return false;
  return /^(client|appliance|lan|wan|original|replica[1-9][0-9]*)$/.test(ns.slice(prefix.length));
}

function wanNumber(
  value: unknown,
  what: string,
  min: number,
  max: number,
  opts: { integer?: boolean; maxExclusive?: boolean } = {},
): number {
  const n = typeof value === "string" && value.trim() !== "" ? Number(value) : value;
  const ok =
    typeof n === "number" &&
    Number.isFinite(n) &&
    n >= min &&
    (opts.maxExclusive ? n < max : n <= max) &&
    (!opts.integer || Number.isInteger(n));
  if (!ok) {
    const kind = opts.integer ? "an integer" : "a number";
    const upper = opts.maxExclusive ? `below ${max}` : `to ${max}`;
    throw new LabUsageError(`invalid ${what} ${JSON.stringify(value)}: must be ${kind} from ${min} ${upper}`);
  }
  return n;
}

/**
 * Checks WAN options against the replica count; undefined when no replica is remote. Accepts
 * numbers or their decimal strings (the command line's flags).
 */
export function validateWanOptions(
  wan: { [K in keyof WanOptions]?: WanOptions[K] | string } | undefined,
  replicas: number,
): { replicas: number; params: WanParams } | undefined {
  if (wan === undefined) return undefined;
  const count = wanNumber(wan.replicas, "WAN replica count", 0, replicas, { integer: true });
  const dist = wan.jitterDistribution ?? WAN_DEFAULTS.jitterDistribution;
  if (!(JITTER_DISTRIBUTIONS as readonly string[]).includes(dist)) {
    throw new LabUsageError(
      `invalid jitter distribution ${JSON.stringify(dist)}: must be one of ${JITTER_DISTRIBUTIONS.join(", ")}`,
    );
  }
  const params: WanParams = {
    delayMs: wanNumber(wan.delayMs ?? WAN_DEFAULTS.delayMs, "WAN delay (ms)", 0, MAX_WAN_DELAY_MS),
    jitterMs: wanNumber(wan.jitterMs ?? WAN_DEFAULTS.jitterMs, "WAN jitter (ms)", 0, MAX_WAN_DELAY_MS),
    jitterDistribution: dist as JitterDistribution,
    // 100 % would cut the remote replicas off; `lab kill` does that on purpose.
    lossPct: wanNumber(wan.lossPct ?? WAN_DEFAULTS.lossPct, "WAN loss (%)", 0, 100, { maxExclusive: true }),
    queueLimitPackets: wanNumber(
      wan.queueLimitPackets ?? WAN_DEFAULTS.queueLimitPackets,
      "WAN queue limit (packets)",
      1,
      10_000_000,
      { integer: true },
    ),
    queueLimitBytes: wanNumber(
      wan.queueLimitBytes ?? WAN_DEFAULTS.queueLimitBytes,
      "WAN queue limit (bytes)",
      1,
      2 ** 34,
      { integer: true },
    ),
  };
  return count === 0 ? undefined : { replicas: count, params };
}

/**
 * The lab's hosts and addresses. With `wan`, the last `wan.replicas` replicas live behind the
 * WAN router in the remote subnet 10.101.(slot).0/24 (their host part as on the LAN); everything
 * else keeps the address it has without WAN.
 */
export function buildTopology(
  name: string,
  slot: number,
  replicas: number,
  service: ServiceKind,
  wan?: WanOptions,
): LabTopology {
  validateLabName(name);
  validateReplicaCount(replicas);
  const base = subnetBase(slot);
  const remote = validateWanOptions(wan, replicas);
  const remoteBase = `10.101.${slot}`;
  const firstRemote = replicas - (remote?.replicas ?? 0);
  const applianceBackend = `${base.backend}.1`;
  const backend = (role: BackendRole, hostPart: number, site: "lan" | "wan" = "lan"): BackendHost => ({
    role,
    namespace: namespaceName(name, role),
    iface: "eth0",
    lanPort: `p-${role}`,
    address: `${site === "wan" ? remoteBase : base.backend}.${hostPart}`,
    site,
    gateway: site === "wan" ? `${remoteBase}.1` : applianceBackend,
  });
  const wanRouter: WanRouter | undefined = remote && {
    namespace: namespaceName(name, "wan"),
    lanIface: "lan0",
    lanPort: "p-wan",
    lanAddress: `${base.backend}.254`,
    farIface: "far0",
    farPort: "p-wanfar",
    farBridge: "br1",
    farAddress: `${remoteBase}.1`,
    remoteSubnet: `${remoteBase}.0/24`,
    toRemote: { tun: "dl-out", table: 100 },
    fromRemote: { tun: "dl-in", table: 101 },
    params: remote.params,
  };
  return {
    name,
    slot,
    service,
    port: SERVICE_PORTS[service],
    clientSubnet: `${base.client}.0/24`,
    backendSubnet: `${base.backend}.0/24`,
    client: { namespace: namespaceName(name, "client"), iface: "eth0", address: `${base.client}.2` },
    appliance: {
      namespace: namespaceName(name, "appliance"),
      clientIface: "cli0",
      backendIface: "be0",
      clientAddress: `${base.client}.1`,
      backendAddress: applianceBackend,
      replicationAddress: `${base.backend}.2`,
      vip: `${base.client}.100`,
      mgmt: {
        iface: "mgmt0",
        hostIface: `trm${slot}`,
        address: `10.102.${slot}.2`,
        hostAddress: `10.102.${slot}.1`,
        apiPort: LAB_API_PORT,
      },
    },
    lan: { namespace: namespaceName(name, "lan"), bridge: "br0", appliancePort: "p-appliance" },
    original: backend("original", 10),
    replicas: Array.from({ length: replicas }, (_, i) =>
      backend(`replica${i + 1}`, 11 + i, i >= firstRemote ? "wan" : "lan"),
    ),
    ...(wanRouter ? { wan: wanRouter } : {}),
  };
}

/** The backends that are namespaces (none when they are virtual machines). */
export function backends(topo: LabTopology): BackendHost[] {
  return topo.vm ? [] : [topo.original, ...topo.replicas];
}

export function allNamespaces(topo: LabTopology): string[] {
  return [
    topo.client.namespace,
    topo.appliance.namespace,
    topo.lan.namespace,
    ...(topo.wan ? [topo.wan.namespace] : []),
    ...backends(topo).map((b) => b.namespace),
  ];
}

/** Resolves a role name given on the command line (client, appliance, lan, wan, original, replicaK). */
export function namespaceForRole(topo: LabTopology, role: string): string {
  if (role === "client") return topo.client.namespace;
  if (role === "appliance") return topo.appliance.namespace;
  if (role === "lan") return topo.lan.namespace;
  if (role === "wan" && topo.wan) return topo.wan.namespace;
  const b = backends(topo).find((h) => h.role === role);
  if (!b) {
    const roles = [
      "client",
      "appliance",
      "lan",
      ...(topo.wan ? ["wan"] : []),
      ...backends(topo).map((h) => h.role),
    ];
    throw new LabUsageError(
      `unknown role ${JSON.stringify(role)} in lab ${topo.name}: one of ${roles.join(", ")}`,
    );
  }
  return b.namespace;
}

export function backendForTarget(topo: LabTopology, target: string): BackendHost {
  const b = backends(topo).find((h) => h.role === target);
  if (!b) {
    throw new LabUsageError(
      `unknown target ${JSON.stringify(target)} in lab ${topo.name}: one of ${backends(topo)
        .map((h) => h.role)
        .join(", ")}`,
    );
  }
  return b;
}

/** The one JSON object `lab up` prints (`wan` and `namespaces.wan` only with remote replicas). */
export function labSummary(topo: LabTopology): {
  name: string;
  service: ServiceKind;
  namespaces: {
    client: string;
    appliance: string;
    lan: string;
    /** Absent when the original is a virtual machine. */
    original?: string;
    replicas: string[];
    wan?: string;
  };
  addresses: {
    vip: string;
    client: string;
    original: string;
    replicas: string[];
    appliance: string;
    replication: string;
  };
  port: number;
  wan?: WanParams & { replicas: string[]; router: string; remoteSubnet: string };
  machines?: { uri: string; service: string; bridge: string; replicas: number };
} {
  const wan = topo.wan;
  return {
    name: topo.name,
    service: topo.service,
    namespaces: {
      client: topo.client.namespace,
      appliance: topo.appliance.namespace,
      lan: topo.lan.namespace,
      ...(topo.vm ? {} : { original: topo.original.namespace }),
      replicas: topo.replicas.map((r) => r.namespace),
      ...(wan ? { wan: wan.namespace } : {}),
    },
    addresses: {
      vip: topo.appliance.vip,
      client: topo.client.address,
      original: topo.original.address,
      replicas: topo.replicas.map((r) => r.address),
      appliance: topo.appliance.backendAddress,
      replication: topo.appliance.replicationAddress,
    },
    port: topo.port,
    ...(topo.vm
      ? {
          machines: {
            uri: topo.vm.uri,
            service: topo.vm.service,
            bridge: topo.vm.bridge,
            replicas: topo.vm.replicas,
          },
        }
      : {}),
    ...(wan
      ? {
          wan: {
            replicas: topo.replicas.filter((r) => r.site === "wan").map((r) => r.role),
            router: wan.lanAddress,
            remoteSubnet: wan.remoteSubnet,
            ...wan.params,
          },
        }
      : {}),
  };
}
