// Watches the states of machines through libvirt. @unraid/libvirt has no lifecycle event API, so
// the watch reads each watched domain's state every `intervalMs` (20 ms by default: one
// lookup + getInfo per machine, sub-millisecond on a local libvirtd), which bounds how late a
// stopped or crashed machine is noticed: one interval plus the call. A poll that is still running
// when the next is due is not doubled.
import { readFileSync } from "node:fs";
import type { DomainState } from "./hypervisor.js";

export interface StateSource {
  state(name: string): Promise<DomainState | undefined>;
}

/** Where the system libvirtd keeps a running QEMU machine's pid. */
export const QEMU_PID_DIR = "/run/libvirt/qemu";

/** The process's start time (field 22 of /proc/PID/stat): a pid reused later has another. */
function startTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // fields[0] is the state (field 3): a zombie is dead already, only not reaped yet.
    return fields[0] === "Z" || fields[0] === "X" ? undefined : fields[19];
  } catch {
    return undefined;
  }
}

/**
 * libvirt reports a crashed or destroyed QEMU machine as stopped only once its own teardown is
 * done: it polls the dead process every 200 ms before it cleans up (measured here: 240 ms after
 * a SIGKILL, 1.6 s when the init process reaps orphans slowly). On a local qemu:///system host
 * the QEMU process itself is the earliest evidence: once it is gone (or a zombie), the machine
 * is, whatever libvirt says yet. Elsewhere (remote hosts, Xen) libvirt's answer is used as it is.
 */
export function localQemuStates(source: StateSource, pidDir = QEMU_PID_DIR): StateSource {
  const known = new Map<string, { pid: number; start: string; dead: boolean }>();
  return {
    async state(name: string): Promise<DomainState | undefined> {
      const k = known.get(name);
      if (k && !k.dead && startTime(k.pid) !== k.start) k.dead = true;
      const s = await source.state(name);
      // Dead before libvirt noticed: "crashed" until libvirt reports it stopped (no flapping back
      // to "running" in between).
      if (k?.dead && (s === "running" || s === "paused" || s === "blocked")) return "crashed";
      if (s === "running" && !k) {
        try {
          const pid = Number(readFileSync(`${pidDir}/${name}.pid`, "latin1").trim());
          const start = Number.isInteger(pid) && pid > 0 ? startTime(pid) : undefined;
          if (start !== undefined) known.set(name, { pid, start, dead: false });
        } catch {
          // No pid file (not a local QEMU machine): libvirt alone tells.
        }
      } else if (s !== "running" && s !== "paused" && s !== "blocked") known.delete(name);
      return s;
    },
  };
}

export interface StateChange {
  name: string;
  host: string;
  /** undefined: first seen, or the domain was undefined. */
  from: DomainState | undefined;
  to: DomainState | undefined;
  /** performance.now() when the change was read. */
  at: number;
}

export class MachineWatch {
  private readonly watched = new Map<
    string,
    { host: string; source: StateSource; last: DomainState | undefined }
  >();
  private timer: NodeJS.Timeout | undefined;
  private polling = false;
  polls = 0;
  errors = 0;

  constructor(
    private readonly intervalMs: number,
    private readonly onChange: (c: StateChange) => void,
    private readonly onError: (name: string, err: Error) => void = () => undefined,
  ) {}

  /** Watches `name` on `host` from its current state `known` (a change from it is reported). */
  watch(name: string, host: string, source: StateSource, known: DomainState | undefined): void {
    this.watched.set(name, { host, source, last: known });
    this.timer ??= setInterval(() => void this.poll(), this.intervalMs);
  }

  unwatch(name: string): void {
    this.watched.delete(name);
    if (this.watched.size === 0) this.stop();
  }

  names(): string[] {
    return [...this.watched.keys()];
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private async poll(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      this.polls++;
      await Promise.all(
        [...this.watched].map(async ([name, w]) => {
          let state: DomainState | undefined;
          try {
            state = await w.source.state(name);
          } catch (e) {
            this.errors++;
            this.onError(name, e as Error);
            return;
          }
          // Unwatched meanwhile, or watched anew: this answer is stale.
          if (this.watched.get(name) !== w || state === w.last) return;
          const from = w.last;
          w.last = state;
          this.onChange({ name, host: w.host, from, to: state, at: performance.now() });
        }),
      );
    } finally {
      this.polling = false;
    }
  }
}
