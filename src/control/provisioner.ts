// Machine lifecycle over the configured hypervisor hosts, in OpenNebula's phases:
//
//   pending   a name, an address and a host are chosen (placement.ts)
//   prolog    the disk: a fresh overlay on the image, or a fork of a running machine's disk
//             (paused for the copy, resumed at once)
//   boot      the domain is defined from the template and started
//   running   the machine is ready (its service answers, or its console says so)
//   epilog    destroy: the domain is stopped and undefined, its disk removed
//
// A failure in any phase rolls back what the phases before it made, so no half-defined domain
// and no orphaned disk is left behind; the error says which phase failed and why.
import { readFile } from "node:fs/promises";
import type { Logger } from "pino";
import { DiskStore } from "./disks.js";
import { macFor, renderDomain, type MachineMetadata } from "./domain-template.js";
import { HypervisorConnection, HypervisorError, type DomainState } from "./hypervisor.js";
import type { MachinesConfig } from "./machines-config.js";
import { placeMachine, type HostView } from "./placement.js";

export type Phase = "pending" | "prolog" | "boot" | "running" | "epilog";

export class ProvisionError extends Error {
  constructor(
    readonly phase: Phase,
    message: string,
  ) {
    super(`${phase}: ${message}`);
    this.name = "ProvisionError";
  }
}

export interface Machine {
  name: string;
  /** The hypervisor host's URI. */
  host: string;
  state: DomainState;
  address: string;
  port: number;
  forkedFrom: string | undefined;
  created: string;
}

/** Asks whether `address`:port answers (the appliance probes from its own network). */
export type ServiceProbe = (address: string, timeoutMs: number) => Promise<boolean>;

export interface ProvisionRequest {
  /** Fork this running machine's disk; without, a fresh disk from the image. */
  from?: Machine | undefined;
  /** The current original's address: placement keeps replicas off its host. */
  originalAddress?: string | undefined;
  /** Addresses a new machine must not take (fenced former originals, the appliance's own). */
  avoid?: readonly string[];
  /** Called before the source is paused for a fork, with the longest pause expected; the
   * returned function is called once it runs again (the data plane holds failure detection). */
  hold?: (ms: number) => () => void;
  /** Phase changes, for logs and the event stream. */
  onPhase?: (phase: Phase, detail: Record<string, unknown>) => void;
}

/** The longest a fork may keep the source paused before the copy is abandoned. */
export const FORK_PAUSE_LIMIT_MS = 5000;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class Provisioner {
  private readonly conns = new Map<string, HypervisorConnection>();
  private readonly unreachable = new Map<string, string>();
  readonly disks: DiskStore;
  /** provision() and destroy() run one at a time: names and addresses are chosen from what exists. */
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly config: MachinesConfig,
    private readonly log: Logger,
    private readonly probe: ServiceProbe | undefined,
  ) {
    this.disks = new DiskStore(config.diskDir, config.image.root);
  }

  /** Connects to every host; unreachable ones are retried at each placement. At least one must answer. */
  static async open(config: MachinesConfig, log: Logger, probe?: ServiceProbe): Promise<Provisioner> {
    const p = new Provisioner(config, log, probe);
    await p.connectAll();
    if (p.conns.size === 0) {
      const why = [...p.unreachable].map(([u, e]) => `${u}: ${e}`).join("; ");
      throw new HypervisorError(`no hypervisor host answers (${why})`);
    }
    return p;
  }

  private async connectAll(): Promise<void> {
    for (const h of this.config.hosts) {
      if (this.conns.has(h.uri)) continue;
      try {
        this.conns.set(h.uri, await HypervisorConnection.open(h.uri));
        this.unreachable.delete(h.uri);
      } catch (e) {
        this.unreachable.set(h.uri, (e as Error).message);
        this.log.warn({ host: h.uri, err: (e as Error).message }, "hypervisor host unreachable");
      }
    }
  }

  connection(uri: string): HypervisorConnection {
    const c = this.conns.get(uri);
    if (!c) throw new HypervisorError(`host ${uri} is not connected`);
    return c;
  }

  hostsDown(): Array<{ uri: string; error: string }> {
    return [...this.unreachable].map(([uri, error]) => ({ uri, error }));
  }

  async close(): Promise<void> {
    await this.queue.catch(() => undefined);
    for (const c of this.conns.values()) await c.close();
    this.conns.clear();
  }

  /** This service's machines on every reachable host. */
  async machines(): Promise<Machine[]> {
    const out: Machine[] = [];
    for (const [uri, c] of this.conns) {
      let list;
      try {
        list = await c.list();
      } catch (e) {
        // A host that stops answering is skipped (and reported) rather than failing the view.
        this.unreachable.set(uri, (e as Error).message);
        continue;
      }
      for (const d of list) {
        if (d.machine?.service !== this.config.service) continue;
        out.push({ name: d.name, host: uri, state: d.state, ...pick(d.machine) });
      }
    }
    return out;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  provision(req: ProvisionRequest = {}): Promise<Machine> {
    return this.serial(() => this.provisionNow(req));
  }

  destroy(name: string): Promise<void> {
    return this.serial(() => this.destroyNow(name));
  }

  private async provisionNow(req: ProvisionRequest): Promise<Machine> {
    const cfg = this.config;
    const phase = (p: Phase, detail: Record<string, unknown> = {}) => {
      this.log.info({ phase: p, ...detail }, `machine ${p}`);
      req.onPhase?.(p, detail);
    };
    // pending: name, address, host.
    await this.connectAll();
    const existing = await this.machines();
    const name = nextName(cfg.service, existing);
    const taken = new Set([...existing.map((m) => m.address), ...(req.avoid ?? [])]);
    const address = cfg.addresses.find((a) => !taken.has(a));
    if (address === undefined)
      throw new ProvisionError(
        "pending",
        `no free address left in machines.addresses (${cfg.addresses.length})`,
      );
    const views: HostView[] = cfg.hosts.map((h) => ({
      uri: h.uri,
      reachable: this.conns.has(h.uri),
      machines: existing
        .filter((m) => m.host === h.uri && m.state !== "shutoff")
        .map((m) => ({
          service: cfg.service,
          role: m.address === req.originalAddress ? "original" : "replica",
        })),
    }));
    const host = placeMachine(views, cfg.service);
    if (!host) throw new ProvisionError("pending", "no hypervisor host is reachable");
    const hostCfg = cfg.hosts.find((h) => h.uri === host.uri)!;
    const conn = this.connection(host.uri);
    phase("pending", { machine: name, address, host: host.uri, from: req.from?.name });

    // prolog: the disk.
    phase("prolog", { machine: name });
    let disk: string;
    try {
      disk = req.from ? await this.forkDisk(req.from, name, req.hold) : await this.disks.create(name);
    } catch (e) {
      await this.disks.remove(name);
      throw new ProvisionError("prolog", (e as Error).message);
    }

    // boot: define and start.
    phase("boot", { machine: name });
    const metadata: MachineMetadata = {
      service: cfg.service,
      address,
      port: cfg.port,
      forkedFrom: req.from?.name,
      created: new Date().toISOString(),
    };
    const params = [`tr.ip=${address}/${cfg.prefixLength}`, `tr.port=${cfg.port}`, `tr.name=${name}`];
    if (cfg.gateway) params.push(`tr.gw=${cfg.gateway}`);
    let defined = false;
    try {
      const xml = renderDomain(cfg.templateXml, {
        name,
        domainType: cfg.domainType,
        memoryMiB: cfg.memoryMiB,
        vcpus: cfg.vcpus,
        kernel: cfg.image.kernel,
        initrd: cfg.image.initrd,
        cmdline: params.join(" "),
        disk,
        mac: macFor(`${cfg.service}/${name}`),
        bridge: hostCfg.bridge,
        console: this.disks.consolePath(name),
        metadata,
      });
      await conn.define(name, xml);
      defined = true;
      await conn.start(name);
      await this.waitReady(conn, name, address);
    } catch (e) {
      await this.rollback(conn, name, defined);
      throw e instanceof ProvisionError ? e : new ProvisionError("boot", (e as Error).message);
    }
    const m: Machine = { name, host: host.uri, state: "running", ...pick(metadata) };
    phase("running", { machine: name, address });
    return m;
  }

  private async rollback(conn: HypervisorConnection, name: string, defined: boolean): Promise<void> {
    if (defined) {
      try {
        await conn.remove(name);
      } catch (e) {
        this.log.error(
          { machine: name, err: (e as Error).message },
          "rollback: the domain could not be removed",
        );
      }
    }
    await this.disks.remove(name);
  }

  /** The source's disk at one instant: paused (if running), copied, resumed in every case. */
  private async forkDisk(from: Machine, name: string, hold?: (ms: number) => () => void): Promise<string> {
    const conn = this.connection(from.host);
    const state = await conn.state(from.name);
    if (state === undefined) throw new Error(`fork source ${from.name} does not exist`);
    if (state !== "running" && state !== "shutoff")
      throw new Error(`fork source ${from.name} is ${state}: only a running or stopped machine is forked`);
    if (state === "shutoff") return this.disks.fork(from.name, name);
    const release = hold?.(FORK_PAUSE_LIMIT_MS);
    const t0 = performance.now();
    try {
      await conn.suspend(from.name);
      try {
        return await this.disks.fork(from.name, name);
      } finally {
        await conn.resume(from.name);
        this.log.info(
          { source: from.name, machine: name, pausedMs: +(performance.now() - t0).toFixed(1) },
          "fork: source paused for the copy",
        );
      }
    } finally {
      release?.();
    }
  }

  private async waitReady(conn: HypervisorConnection, name: string, address: string): Promise<void> {
    const cfg = this.config;
    const deadline = performance.now() + cfg.bootTimeoutMs;
    const consolePath = this.disks.consolePath(name);
    for (;;) {
      const state = await conn.state(name);
      if (state !== "running" && state !== "blocked")
        throw new ProvisionError("boot", `${name} is ${state ?? "gone"} instead of running`);
      let ready = false;
      if (cfg.readiness === "running") ready = true;
      else if (cfg.readiness === "console") {
        const text = await readFile(consolePath, "latin1").catch(() => "");
        if (text.includes("tr-fatal"))
          throw new ProvisionError("boot", `${name}: ${text.slice(text.indexOf("tr-fatal")).split("\n")[0]}`);
        ready = new RegExp(`tr-ready ${name} `).test(text);
      } else {
        if (!this.probe)
          throw new ProvisionError("boot", "readiness probe requested but no probe is available");
        ready = await this.probe(address, 500);
      }
      if (ready) return;
      if (performance.now() > deadline)
        throw new ProvisionError(
          "boot",
          `${name} was not ready within ${cfg.bootTimeoutMs} ms (readiness: ${cfg.readiness})`,
        );
      await sleep(cfg.readiness === "probe" ? 100 : 50);
    }
  }

  private async destroyNow(name: string): Promise<void> {
    const m = (await this.machines()).find((x) => x.name === name);
    if (!m) throw new ProvisionError("epilog", `no machine ${name} of service ${this.config.service}`);
    this.log.info({ phase: "epilog", machine: name, host: m.host }, "machine epilog");
    await this.connection(m.host).remove(name);
    await this.disks.remove(name);
  }
}

function pick(m: MachineMetadata): Pick<Machine, "address" | "port" | "forkedFrom" | "created"> {
  return { address: m.address, port: m.port, forkedFrom: m.forkedFrom, created: m.created };
}

/** service-N with N one above the highest in use. */
export function nextName(service: string, machines: readonly Machine[]): string {
  let n = 0;
  const re = new RegExp(`^${service.replace(/[.]/g, "\\.")}-(\\d+)$`);
  for (const m of machines) {
    const k = re.exec(m.name);
    if (k) n = Math.max(n, Number(k[1]));
  }
  return `${service}-${n + 1}`;
}
