// The lab's shape as pure data: namespace names, interfaces and addresses derived from the lab's
// name, its slot and the replica count. Nothing here touches the system, so it is unit-tested and
// every other lab step (up, down, kill, the proxy) reads the same answers.

export const SERVICES = ["echo", "redis", "http"] as const;
export type ServiceKind = (typeof SERVICES)[number];

export const SERVICE_PORTS: Record<ServiceKind, number> = { echo: 7000, redis: 6379, http: 8080 };

export const MAX_REPLICAS = 5;
/** Labs get non-overlapping /24 pairs 10.100.(2k).0 and 10.100.(2k+1).0, so at most 128 at once. */
export const MAX_SLOTS = 128;
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
export type Role = "client" | "appliance" | "lan" | BackendRole;

export interface BackendHost {
  role: BackendRole;
  namespace: string;
  /** The backend's only link, into the lab LAN. */
  iface: "eth0";
  /** The LAN-side end of the backend's link (inside the lan namespace). */
  lanPort: string;
  address: string;
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
  };
  lan: { namespace: string; bridge: "br0"; appliancePort: string };
  original: BackendHost;
  replicas: BackendHost[];
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
  return /^(client|appliance|lan|original|replica[1-9][0-9]*)$/.test(ns.slice(prefix.length));
}

export function buildTopology(
  name: string,
  slot: number,
  replicas: number,
  service: ServiceKind,
): LabTopology {
  validateLabName(name);
  validateReplicaCount(replicas);
  const base = subnetBase(slot);
  const backend = (role: BackendRole, hostPart: number): BackendHost => ({
    role,
    namespace: namespaceName(name, role),
    iface: "eth0",
    lanPort: `p-${role}`,
    address: `${base.backend}.${hostPart}`,
  });
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
      backendAddress: `${base.backend}.1`,
      replicationAddress: `${base.backend}.2`,
      vip: `${base.client}.100`,
    },
    lan: { namespace: namespaceName(name, "lan"), bridge: "br0", appliancePort: "p-appliance" },
    original: backend("original", 10),
    replicas: Array.from({ length: replicas }, (_, i) => backend(`replica${i + 1}`, 11 + i)),
  };
}

export function backends(topo: LabTopology): BackendHost[] {
  return [topo.original, ...topo.replicas];
}

export function allNamespaces(topo: LabTopology): string[] {
  return [
    topo.client.namespace,
    topo.appliance.namespace,
    topo.lan.namespace,
    ...backends(topo).map((b) => b.namespace),
  ];
}

/** Resolves a role name given on the command line (client, appliance, original, replicaK). */
export function namespaceForRole(topo: LabTopology, role: string): string {
  if (role === "client") return topo.client.namespace;
  if (role === "appliance") return topo.appliance.namespace;
  if (role === "lan") return topo.lan.namespace;
  const b = backends(topo).find((h) => h.role === role);
  if (!b) {
    const roles = ["client", "appliance", "lan", ...backends(topo).map((h) => h.role)];
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

/** The one JSON object `lab up` prints. */
export function labSummary(topo: LabTopology): {
  name: string;
  service: ServiceKind;
  namespaces: { client: string; appliance: string; lan: string; original: string; replicas: string[] };
  addresses: {
    vip: string;
    client: string;
    original: string;
    replicas: string[];
    appliance: string;
    replication: string;
  };
  port: number;
} {
  return {
    name: topo.name,
    service: topo.service,
    namespaces: {
      client: topo.client.namespace,
      appliance: topo.appliance.namespace,
      lan: topo.lan.namespace,
      original: topo.original.namespace,
      replicas: topo.replicas.map((r) => r.namespace),
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
  };
}
