// The hypervisor layer: one libvirt connection (through @unraid/libvirt, N-API) and the domain
// operations the provisioner needs, with libvirt's errors turned into HypervisorErrors that say
// what was asked of which host. URIs: xen:///system (production), qemu:///system (KVM, or QEMU
// TCG on a host without KVM), test:///default (libvirt's in-process test driver, for tests), and
// their remote forms (xen+ssh://host/system, ...).
import { Hypervisor as LibvirtConnection, type Domain } from "@unraid/libvirt";
import { parseMachineMetadata, type MachineMetadata } from "./domain-template.js";

export class HypervisorError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "HypervisorError";
  }
}

/** libvirt's virDomainState, by number. */
export const DOMAIN_STATES = [
  "nostate",
  "running",
  "blocked",
  "paused",
  "shutdown",
  "shutoff",
  "crashed",
  "pmsuspended",
] as const;
export type DomainState = (typeof DOMAIN_STATES)[number];

/** States in which a machine serves nothing and will not by itself again: a failure signal.
 * "paused" is not one (a fork pauses the original on purpose; a frozen guest is the data
 * plane's to judge). */
export const STOPPED_STATES: ReadonlySet<DomainState> = new Set([
  "shutdown",
  "shutoff",
  "crashed",
  "pmsuspended",
]);

const DRIVERS = ["xen", "qemu", "test"] as const;
const URI_RE =
  /^(xen|qemu|test)(\+(ssh|libssh|libssh2|tcp|tls|unix))?:\/\/([A-Za-z0-9.@_:[\]-]*)\/([^\s?#]*)(\?[^\s#]*)?$/;

/** Checks a libvirt URI before anything connects: a typo must not read "socket not found". */
export function validateUri(uri: string): string {
  const m = URI_RE.exec(uri);
  if (!m) {
    throw new HypervisorError(
      `unknown hypervisor URI ${JSON.stringify(uri)}: expected ${DRIVERS.join(", ")} (e.g. xen:///system, qemu:///system, test:///default, xen+ssh://host/system)`,
    );
  }
  if (m[1] !== "test" && !m[4] && !/^(system|session)$/.test(m[5]!)) {
    throw new HypervisorError(`hypervisor URI ${uri}: a local ${m[1]} URI ends in /system or /session`);
  }
  return uri;
}

export interface DomainSummary {
  name: string;
  state: DomainState;
  /** The appliance's metadata; undefined for machines that are not ours. */
  machine: MachineMetadata | undefined;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function notFound(e: unknown): boolean {
  return /not found|no domain with matching/i.test(message(e));
}

export class HypervisorConnection {
  private closed = false;

  private constructor(
    readonly uri: string,
    private readonly conn: LibvirtConnection,
  ) {}

  static async open(uri: string): Promise<HypervisorConnection> {
    validateUri(uri);
    const conn = new LibvirtConnection({ uri });
    try {
      await conn.connectOpen();
    } catch (e) {
      throw new HypervisorError(`cannot connect to ${uri}: ${message(e)}`);
    }
    return new HypervisorConnection(uri, conn);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.conn.connectClose().catch(() => undefined);
  }

  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.closed) throw new HypervisorError(`${this.uri}: ${what}: the connection is closed`);
    try {
      return await fn();
    } catch (e) {
      throw new HypervisorError(`${this.uri}: ${what}: ${message(e)}`);
    }
  }

  private async lookup(name: string): Promise<Domain> {
    return this.call(`domain ${name}`, () => this.conn.domainLookupByName(name));
  }

  /** Every domain on the host (running or only defined), with its state and our metadata. */
  async list(): Promise<DomainSummary[]> {
    const domains = await this.call("list domains", () => this.conn.connectListAllDomains());
    const out: DomainSummary[] = [];
    for (const d of domains) {
      try {
        const [name, info, xml] = await Promise.all([d.getName(), d.getInfo(), d.getXMLDesc()]);
        out.push({ name, state: DOMAIN_STATES[info.state] ?? "nostate", machine: parseMachineMetadata(xml) });
      } catch (e) {
        // Undefined between the listing and the question: it is simply gone.
        if (!notFound(e)) throw new HypervisorError(`${this.uri}: list domains: ${message(e)}`);
      }
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  /** A domain's state; undefined when no domain of that name is defined. */
  async state(name: string): Promise<DomainState | undefined> {
    try {
      const info = await (await this.conn.domainLookupByName(name)).getInfo();
      return DOMAIN_STATES[info.state] ?? "nostate";
    } catch (e) {
      if (notFound(e)) return undefined;
      throw new HypervisorError(`${this.uri}: state of ${name}: ${message(e)}`);
    }
  }

  async xml(name: string): Promise<string> {
    const d = await this.lookup(name);
    return this.call(`XML of ${name}`, () => d.getXMLDesc());
  }

  /** Defines a domain; refuses to redefine an existing one (it would change a machine in use). */
  async define(name: string, xml: string): Promise<void> {
    if ((await this.state(name)) !== undefined)
      throw new HypervisorError(`${this.uri}: a domain named ${name} exists already`);
    await this.call(`define ${name}`, () => this.conn.domainDefineXML(xml));
  }

  async start(name: string): Promise<void> {
    const d = await this.lookup(name);
    await this.call(`start ${name}`, () => d.create());
  }

  /** Asks the guest to shut down (ACPI); `destroy` is the power cord. */
  async shutdown(name: string): Promise<void> {
    const d = await this.lookup(name);
    await this.call(`shut down ${name}`, () => d.shutdown());
  }

  async destroy(name: string): Promise<void> {
    const d = await this.lookup(name);
    await this.call(`destroy ${name}`, () => d.destroy());
  }

  async suspend(name: string): Promise<void> {
    const d = await this.lookup(name);
    await this.call(`pause ${name}`, () => d.suspend());
  }

  async resume(name: string): Promise<void> {
    const d = await this.lookup(name);
    await this.call(`resume ${name}`, () => d.resume());
  }

  async undefine(name: string): Promise<void> {
    const d = await this.lookup(name);
    await this.call(`undefine ${name}`, () => d.undefine());
  }

  /** Stops (if running) and undefines; nothing left of the domain. Idempotent. */
  async remove(name: string): Promise<void> {
    const state = await this.state(name);
    if (state === undefined) return;
    if (state !== "shutoff") {
      try {
        await this.destroy(name);
      } catch (e) {
        // It may have stopped by itself meanwhile; anything else is a real error.
        if ((await this.state(name)) !== "shutoff") throw e;
      }
    }
    try {
      await this.undefine(name);
    } catch (e) {
      if ((await this.state(name)) !== undefined) throw e;
    }
  }
}
