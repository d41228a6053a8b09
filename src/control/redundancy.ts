// Keeps the configured number of replicas, with machines provisioned through libvirt:
//
// - the hypervisor's word is a failure signal: the original's machine stopping or crashing
//   promotes a replica at once (ControlPlane.failover), a replica's machine stopping removes it;
// - after any change (a failover, a replica lost, the appliance started) it reconciles: machines
//   of the service that are stopped, or fenced former originals, are destroyed (epilog), and new
//   replicas are forked from the current original until there are `replicas` of them. A fork
//   pauses the original for the disk copy; the data plane holds its failure detection meanwhile.
//
// One reconciliation runs at a time; a failed one is retried with a growing delay. Everything it
// does is logged and published on the event stream ("machine" events).
import type { Logger } from "pino";
import type { ControlPlane } from "./control-plane.js";
import type { DataPlane } from "./data-plane.js";
import type { EventHub } from "./events.js";
import { STOPPED_STATES, type DomainState } from "./hypervisor.js";
import { MachineWatch, localQemuStates, type StateChange } from "./machine-watch.js";
import type { Machine, Phase, Provisioner } from "./provisioner.js";

export interface RedundancyOptions {
  provisioner: Provisioner;
  control: ControlPlane;
  dataPlane: DataPlane;
  hub: EventHub;
  log: Logger;
  /** First retry delay after a failed reconciliation (doubles up to 30 s). */
  retryMs?: number;
}

const RUNNING: ReadonlySet<DomainState> = new Set(["running", "blocked", "paused"]);

export class RedundancyKeeper {
  private readonly watch: MachineWatch;
  private machines: Machine[] = [];
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryMs: number;
  private readonly signalled = new Set<string>();
  private unsubscribe: () => void = () => undefined;
  readonly counters = { provisioned: 0, destroyed: 0, failovers: 0, failures: 0, reconciles: 0 };
  lastError: string | undefined;
  /** The machine being provisioned now, and its phase. */
  current: { machine: string | undefined; phase: Phase } | undefined;

  constructor(private readonly o: RedundancyOptions) {
    this.retryMs = o.retryMs ?? 1000;
    this.watch = new MachineWatch(
      o.provisioner.config.watchIntervalMs,
      (c) => this.onState(c),
      (name, err) => o.log.debug({ machine: name, err: err.message }, "machine state unreadable"),
    );
  }

  get target(): number {
    return this.o.provisioner.config.replicas;
  }

  start(): void {
    this.unsubscribe = this.o.dataPlane.subscribe((e) => {
      if (e.type === "promoted" || e.type === "replica-removed" || e.type === "replica-failure")
        this.schedule();
    });
    this.schedule();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe();
    this.watch.stop();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    await this.running?.catch(() => undefined);
  }

  /** Resolves when no reconciliation is running or queued (tests, `lab up`). */
  async settled(): Promise<void> {
    while (this.running) await this.running.catch(() => undefined);
  }

  status() {
    const original = this.o.control.roles().original.address;
    return {
      target: this.target,
      machines: this.machines.map((m) => ({
        ...m,
        role: m.address === original ? "original" : this.isReplica(m.name) ? "replica" : "none",
      })),
      current: this.current,
      counters: { ...this.counters },
      lastError: this.lastError,
      hostsDown: this.o.provisioner.hostsDown(),
      watch: {
        intervalMs: this.o.provisioner.config.watchIntervalMs,
        polls: this.watch.polls,
        errors: this.watch.errors,
      },
    };
  }

  private isReplica(name: string): boolean {
    return this.o.control.roles().replicas.some((r) => r.id === name);
  }

  private publish(phase: string, detail: Record<string, unknown>): void {
    this.o.hub.publish("machine", { phase, ...detail });
  }

  /** A machine changed state: a stopped original is a failure signal, a stopped replica is gone. */
  private onState(c: StateChange): void {
    const m = this.machines.find((x) => x.name === c.name);
    if (m) m.state = c.to ?? "shutoff";
    this.publish("state", { machine: c.name, host: c.host, from: c.from, to: c.to ?? "undefined" });
    const stopped = c.to === undefined || STOPPED_STATES.has(c.to);
    if (!stopped || !m) return;
    const roles = this.o.control.roles();
    if (m.address === roles.original.address && !this.signalled.has(m.name)) {
      this.signalled.add(m.name);
      this.counters.failovers++;
      const reason = `hypervisor: machine ${m.name} is ${c.to ?? "undefined"}`;
      this.o.log.warn({ machine: m.name, state: c.to }, "the original's machine stopped: failing over");
      this.o.control.failover({ reason }).then(
        (r) => this.o.log.info({ ...r }, "failed over on the hypervisor's signal"),
        (e: Error) => this.o.log.error({ err: e.message }, "failover on the hypervisor's signal refused"),
      );
    } else if (roles.replicas.some((r) => r.id === m.name)) {
      this.o.control.removeReplica(m.name, 0).then(
        () => this.o.log.warn({ machine: m.name, state: c.to }, "replica's machine stopped: removed"),
        (e: Error) => this.o.log.debug({ err: e.message }, "replica removal"),
      );
    }
    this.schedule();
  }

  private schedule(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.retryTimer) {
      clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
    }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          await this.reconcile();
          this.retryMs = this.o.retryMs ?? 1000;
          this.lastError = undefined;
        } catch (e) {
          this.counters.failures++;
          this.lastError = (e as Error).message;
          this.o.log.error(
            { err: this.lastError, retryInMs: this.retryMs },
            "redundancy: reconciliation failed",
          );
          this.publish("failed", { error: this.lastError });
          if (!this.stopped) {
            const delay = this.retryMs;
            this.retryMs = Math.min(this.retryMs * 2, 30_000);
            this.retryTimer = setTimeout(() => this.schedule(), delay);
          }
          break;
        }
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = undefined;
    });
  }

  private async refresh(): Promise<void> {
    this.machines = await this.o.provisioner.machines();
    const names = new Set(this.machines.map((m) => m.name));
    for (const n of this.watch.names()) if (!names.has(n)) this.watch.unwatch(n);
    const watched = new Set(this.watch.names());
    for (const m of this.machines) {
      if (watched.has(m.name)) continue;
      const conn = this.o.provisioner.connection(m.host);
      this.watch.watch(m.name, m.host, m.host === "qemu:///system" ? localQemuStates(conn) : conn, m.state);
    }
  }

  private async reconcile(): Promise<void> {
    this.counters.reconciles++;
    const { provisioner, control, dataPlane } = this.o;
    await this.refresh();
    // Epilog: machines that do not serve this appliance and never will again: stopped ones,
    // fenced former originals, and running ones outside the replica set (a replica the data
    // plane found dead and removed; its machine may still run, answering nothing).
    const fenced = dataPlane.fenced();
    for (const m of this.machines) {
      const roles = control.roles();
      if (m.address === roles.original.address) continue;
      const dead = !RUNNING.has(m.state);
      const member = roles.replicas.some((r) => r.id === m.name);
      if (!dead && !fenced.includes(m.address) && member) continue;
      if (member) await control.removeReplica(m.name, 0).catch(() => undefined);
      const why = dead
        ? `it is ${m.state}`
        : fenced.includes(m.address)
          ? "it is a fenced former original"
          : "it is not in the replica set (removed as failed)";
      this.o.log.info({ machine: m.name, why }, "redundancy: destroying a machine");
      await provisioner.destroy(m.name);
      this.counters.destroyed++;
      this.publish("destroyed", { machine: m.name, address: m.address, why });
    }
    await this.refresh();
    // Replicas until the target.
    for (;;) {
      if (this.stopped) return;
      const roles = control.roles();
      const active = roles.replicas.filter((r) => r.state === "active").length;
      if (active >= this.target) return;
      const source = this.machines.find((m) => m.address === roles.original.address);
      if (!source || source.state !== "running")
        throw new Error(
          source
            ? `the original's machine ${source.name} is ${source.state}: no fork source`
            : `the original ${roles.original.address} is not a machine of service ${provisioner.config.service}: no fork source`,
        );
      this.current = { machine: undefined, phase: "pending" };
      let m: Machine;
      try {
        m = await provisioner.provision({
          from: source,
          originalAddress: roles.original.address,
          avoid: [...fenced, ...dataPlane.ownAddresses, ...roles.replicas.map((r) => r.address)],
          hold: (ms) => dataPlane.holdOriginal(ms),
          onPhase: (phase, detail) => {
            this.current = {
              machine: (detail.machine as string | undefined) ?? this.current?.machine,
              phase,
            };
            this.publish(phase, { ...detail, from: source.name });
          },
        });
      } finally {
        this.current = undefined;
      }
      this.counters.provisioned++;
      // The machine is in the view before it joins the replica set: /v1/status must never count
      // a replica that /v1/machines does not list yet (CI f2f0396: the lab's waitReplicas saw 2
      // active replicas while the view, refreshed only after addReplica, still listed one).
      if (!this.machines.some((x) => x.name === m.name)) this.machines = [...this.machines, m];
      await control.addReplica(m.name, m.address);
      this.o.log.info(
        { machine: m.name, address: m.address, forkedFrom: source.name },
        "redundancy: replica added",
      );
      await this.refresh();
    }
  }
}
