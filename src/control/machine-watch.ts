// Watches the states of machines through libvirt. @unraid/libvirt has no lifecycle event API, so
// the watch reads each watched domain's state every `intervalMs` (20 ms by default: one
// lookup + getInfo per machine, sub-millisecond on a local libvirtd), which bounds how late a
// stopped or crashed machine is noticed: one interval plus the call. A poll that is still running
// when the next is due is not doubled.
import type { DomainState } from "./hypervisor.js";

export interface StateSource {
  state(name: string): Promise<DomainState | undefined>;
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
