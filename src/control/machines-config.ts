// The `machines` section of the serve configuration (and of `tcp-replicator vm provision`): which
// hypervisor hosts, which template and image, which addresses new machines take, and how many
// replicas the appliance keeps. Validated field by field; nothing is touched on a bad config.
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { ConfigError } from "../proxy/config.js";
import { isIPv4 } from "../proxy/nft.js";
import { parseIPv4, formatIPv4 } from "../wire/ipv4.js";
import { validateUri, HypervisorError } from "./hypervisor.js";
import { placeholders } from "./domain-template.js";

export interface HostConfig {
  uri: string;
  /** Bridge the machines' network interface joins on that host. */
  bridge: string;
}

export interface MachinesConfig {
  /** Machines carry it in their metadata; only machines of this service are ever touched. Also
   * the prefix of their names (web-1, web-2, ...). */
  service: string;
  /** The service port inside the machines (the proxy's port). */
  port: number;
  hosts: HostConfig[];
  /** Path of the domain template; its text is `templateXml`. */
  template: string;
  templateXml: string;
  domainType: string;
  image: { dir: string; kernel: string; initrd: string; root: string };
  diskDir: string;
  memoryMiB: number;
  vcpus: number;
  /** Addresses new machines take, in order (the first free one). */
  addresses: string[];
  prefixLength: number;
  gateway: string | undefined;
  /** Replicas the appliance keeps: it provisions replacements until there are this many. */
  replicas: number;
  bootTimeoutMs: number;
  /** How often machine states are read (a stopped original is a failure signal). */
  watchIntervalMs: number;
  /** When a booted machine counts as ready: its service answers a TCP probe ("probe"), its
   * console says so ("console", the lab image's tr-ready line), or libvirt says running. */
  readiness: "probe" | "console" | "running";
}

const FIELDS = [
  "service",
  "hosts",
  "template",
  "domainType",
  "image",
  "diskDir",
  "memoryMiB",
  "vcpus",
  "addresses",
  "prefixLength",
  "gateway",
  "replicas",
  "bootTimeoutMs",
  "watchIntervalMs",
  "readiness",
];

function fail(msg: string): never {
  throw new ConfigError(`machines.${msg}`);
}

function int(o: Record<string, unknown>, key: string, lo: number, hi: number, dflt: number): number {
  const v = o[key] ?? dflt;
  if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi)
    fail(`${key}: expected an integer from ${lo} to ${hi}, got ${JSON.stringify(o[key])}`);
  return v;
}

function path(o: Record<string, unknown>, key: string, base: string): string {
  const v = o[key];
  if (typeof v !== "string" || v.length === 0) fail(`${key}: expected a path`);
  return resolve(base, v);
}

/** "a.b.c.d-a.b.c.e" ranges and single addresses. */
function addressList(v: unknown): string[] {
  if (!Array.isArray(v) || v.length === 0)
    fail("addresses: expected a non-empty array of IPv4 addresses or ranges");
  const out: string[] = [];
  for (const item of v) {
    if (typeof item !== "string") fail(`addresses: expected strings, got ${JSON.stringify(item)}`);
    const [a, b] = item.split("-");
    if (!a || !isIPv4(a) || (b !== undefined && !isIPv4(b)))
      fail(`addresses: bad entry ${JSON.stringify(item)}`);
    const lo = parseIPv4(a);
    const hi = b === undefined ? lo : parseIPv4(b);
    if (hi < lo || hi - lo > 4096) fail(`addresses: bad range ${item}`);
    for (let x = lo; x <= hi; x++) out.push(formatIPv4(x));
  }
  if (new Set(out).size !== out.length) fail("addresses: listed twice");
  return out;
}

/**
 * Parses the section. Relative paths are relative to `base` (the config file's directory).
 * The template must exist and be a tcp-replicator template; the image files must exist.
 */
export function parseMachinesConfig(raw: unknown, port: number, base = process.cwd()): MachinesConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new ConfigError("machines: expected an object");
  const o = raw as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!FIELDS.includes(k)) fail(`unknown field ${JSON.stringify(k)}`);
  const service = o.service;
  if (typeof service !== "string" || !/^[A-Za-z][A-Za-z0-9_.-]{0,39}$/.test(service))
    fail("service: expected a name of letters, digits, '.', '_', '-' (40 at most, a letter first)");
  if (!Array.isArray(o.hosts) || o.hosts.length === 0)
    fail("hosts: expected a non-empty array of {uri, bridge}");
  const hosts = o.hosts.map((h: unknown, i): HostConfig => {
    if (typeof h !== "object" || h === null) fail(`hosts[${i}]: expected {uri, bridge}`);
    const r = h as Record<string, unknown>;
    for (const k of Object.keys(r))
      if (k !== "uri" && k !== "bridge") fail(`hosts[${i}]: unknown field ${JSON.stringify(k)}`);
    if (typeof r.uri !== "string") fail(`hosts[${i}].uri: expected a libvirt URI`);
    try {
      validateUri(r.uri);
    } catch (e) {
      if (e instanceof HypervisorError) fail(`hosts[${i}].uri: ${e.message}`);
      throw e;
    }
    if (typeof r.bridge !== "string" || !/^[A-Za-z0-9_.-]{1,15}$/.test(r.bridge))
      fail(`hosts[${i}].bridge: expected an interface name (15 characters at most)`);
    return { uri: r.uri, bridge: r.bridge };
  });
  if (new Set(hosts.map((h) => h.uri)).size !== hosts.length) fail("hosts: a URI is listed twice");
  const template = path(o, "template", base);
  if (!existsSync(template)) fail(`template: ${template} not found`);
  const templateXml = readFileSync(template, "utf8");
  const used = placeholders(templateXml);
  for (const need of ["name", "metadata", "disk", "mac", "bridge"])
    if (!used.has(need))
      fail(`template: ${template} has no {{${need}}}: not a tcp-replicator domain template`);
  const domainType = o.domainType ?? "kvm";
  if (typeof domainType !== "string" || !/^(kvm|qemu|xen|test)$/.test(domainType))
    fail(`domainType: one of kvm, qemu, xen, test (got ${JSON.stringify(domainType)})`);
  const dir = path(o, "image", base);
  const image = {
    dir,
    kernel: join(dir, "vmlinuz"),
    initrd: join(dir, "initrd.img"),
    root: join(dir, "root.qcow2"),
  };
  for (const f of [image.kernel, image.initrd, image.root])
    if (!existsSync(f)) fail(`image: ${f} not found (npm run vm-image -- ${dir} builds it)`);
  const addresses = addressList(o.addresses);
  const gateway = o.gateway;
  if (gateway !== undefined && (typeof gateway !== "string" || !isIPv4(gateway)))
    fail("gateway: expected an IPv4 address");
  const readiness = o.readiness ?? "probe";
  if (readiness !== "probe" && readiness !== "console" && readiness !== "running")
    fail("readiness: one of probe, console, running");
  const replicas = int(o, "replicas", 0, 16, 1);
  if (addresses.length < replicas + 1)
    fail(`addresses: ${addresses.length} addresses cannot hold an original and ${replicas} replicas`);
  return {
    service,
    port,
    hosts,
    template,
    templateXml,
    domainType,
    image,
    diskDir: path(o, "diskDir", base),
    memoryMiB: int(o, "memoryMiB", 32, 1 << 20, 128),
    vcpus: int(o, "vcpus", 1, 256, 1),
    addresses,
    prefixLength: int(o, "prefixLength", 8, 32, 24),
    gateway,
    replicas,
    bootTimeoutMs: int(o, "bootTimeoutMs", 1000, 600_000, 60_000),
    watchIntervalMs: int(o, "watchIntervalMs", 5, 10_000, 20),
    readiness,
  };
}
