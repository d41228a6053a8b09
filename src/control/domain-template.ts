// libvirt domain XML from the templates in vm-images/templates: `{{name}}` placeholders filled
// with XML-escaped values, every placeholder required and every value used, so a template and
// the provisioner cannot silently disagree. Each machine carries what the appliance needs to know
// about it in the domain's <metadata> (service, address, what it was forked from), so the
// hypervisor itself is the record of which machines are ours: nothing to lose on a restart.
import { randomUUID } from "node:crypto";

export class TemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TemplateError";
  }
}

/** Namespace of the appliance's element in a domain's <metadata>. */
export const MACHINE_XMLNS = "urn:tcp-replicator:machine:1";

export type MachineRole = "original" | "replica";

/** What the hypervisor keeps about a machine for us. Its role is not here: roles change at a
 * failover, and the control plane's state (the original's address) is their one truth. */
export interface MachineMetadata {
  /** The service this machine belongs to: machines of other services are never touched. */
  service: string;
  /** Service address (IPv4) the machine is configured with. */
  address: string;
  port: number;
  /** Name of the machine whose disk this one's was copied from, at the fork. */
  forkedFrom: string | undefined;
  created: string;
}

export interface DomainSpec {
  name: string;
  uuid?: string;
  /** libvirt domain type: kvm, qemu (TCG), xen, test. */
  domainType: string;
  memoryMiB: number;
  vcpus: number;
  kernel: string;
  initrd: string;
  /** Kernel command line beyond the template's own (the image's tr.* parameters). */
  cmdline: string;
  disk: string;
  mac: string;
  bridge: string;
  /** File the guest's console is written to. */
  console: string;
  metadata: MachineMetadata;
}

const PLACEHOLDER = /\{\{([A-Za-z][A-Za-z0-9]*)\}\}/g;

export function escapeXml(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The placeholders a template uses. */
export function placeholders(template: string): Set<string> {
  return new Set([...template.matchAll(PLACEHOLDER)].map((m) => m[1]!));
}

export function metadataXml(m: MachineMetadata): string {
  const attrs: Array<[string, string]> = [
    ["service", m.service],
    ["address", m.address],
    ["port", String(m.port)],
    ["created", m.created],
  ];
  if (m.forkedFrom !== undefined) attrs.push(["forkedFrom", m.forkedFrom]);
  return `<tr:machine xmlns:tr="${MACHINE_XMLNS}" ${attrs.map(([k, v]) => `${k}="${escapeXml(v)}"`).join(" ")}/>`;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
const MAC_RE = /^52:54:00(:[0-9a-f]{2}){3}$/;

/** Renders a domain from a template; refuses unknown or unused placeholders and bad values. */
export function renderDomain(template: string, spec: DomainSpec): string {
  if (!NAME_RE.test(spec.name))
    throw new TemplateError(
      `name: expected letters, digits, '.', '_', '-' (got ${JSON.stringify(spec.name)})`,
    );
  if (!MAC_RE.test(spec.mac)) throw new TemplateError(`mac: expected 52:54:00:xx:xx:xx, got ${spec.mac}`);
  for (const k of ["memoryMiB", "vcpus"] as const)
    if (!Number.isInteger(spec[k]) || spec[k] < 1)
      throw new TemplateError(`${k}: expected a positive integer`);
  const values: Record<string, string> = {
    name: escapeXml(spec.name),
    uuid: escapeXml(spec.uuid ?? randomUUID()),
    domainType: escapeXml(spec.domainType),
    memoryMiB: String(spec.memoryMiB),
    vcpus: String(spec.vcpus),
    kernel: escapeXml(spec.kernel),
    initrd: escapeXml(spec.initrd),
    cmdline: escapeXml(spec.cmdline),
    disk: escapeXml(spec.disk),
    mac: spec.mac,
    bridge: escapeXml(spec.bridge),
    console: escapeXml(spec.console),
    metadata: metadataXml(spec.metadata),
  };
  const used = placeholders(template);
  const unknown = [...used].filter((p) => !(p in values));
  if (unknown.length > 0) throw new TemplateError(`template: unknown placeholders ${unknown.join(", ")}`);
  const unused = Object.keys(values).filter((k) => !used.has(k) && k !== "uuid");
  if (unused.length > 0)
    throw new TemplateError(`template: does not use ${unused.join(", ")} (the machine would not be ours)`);
  return template.replace(PLACEHOLDER, (_, k: string) => values[k]!);
}

function attribute(element: string, name: string): string | undefined {
  const m = new RegExp(`\\s${name}=(?:"([^"]*)"|'([^']*)')`).exec(element);
  const raw = m?.[1] ?? m?.[2];
  return raw?.replace(
    /&#(\d+);|&(lt|gt|amp|quot|apos);/g,
    (_, n: string | undefined, e: string | undefined) =>
      n !== undefined
        ? String.fromCharCode(Number(n))
        : { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" }[e!]!,
  );
}

/** The appliance's metadata in a domain's XML as libvirt returns it; undefined if not ours. */
export function parseMachineMetadata(domainXml: string): MachineMetadata | undefined {
  // libvirt keeps the element and its namespace declaration; the prefix may differ.
  const m = new RegExp(`<([A-Za-z_][\\w.-]*):machine\\b[^>]*xmlns:\\1=["']${MACHINE_XMLNS}["'][^>]*>`).exec(
    domainXml,
  );
  if (!m) return undefined;
  const el = m[0];
  const service = attribute(el, "service");
  const address = attribute(el, "address");
  const port = Number(attribute(el, "port"));
  const created = attribute(el, "created");
  if (!service || !address || !Number.isInteger(port) || !created) return undefined;
  return { service, address, port, forkedFrom: attribute(el, "forkedFrom"), created };
}

/** A stable locally administered MAC (QEMU's 52:54:00 prefix) for a machine name. */
export function macFor(name: string): string {
  let h = 2166136261;
  for (const ch of Buffer.from(name)) h = Math.imul(h ^ ch, 16777619) >>> 0;
  const b = [(h >>> 16) & 0xff, (h >>> 8) & 0xff, h & 0xff];
  return `52:54:00:${b.map((x) => x.toString(16).padStart(2, "0")).join(":")}`;
}
