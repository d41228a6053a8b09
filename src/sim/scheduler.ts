// Simulated time: one event queue (a binary heap ordered by time, then by insertion), so events
// at the same instant run in the order they were scheduled and a run is deterministic.

export interface Timer {
  cancelled: boolean;
}

interface Entry extends Timer {
  at: number;
  seq: number;
  fn: () => void;
}

export class Scheduler {
  /** Simulated time, µs. */
  now = 0;
  private heap: Entry[] = [];
  private seq = 0;
  /** Events run so far (a run's size). */
  steps = 0;

  get nowMs(): number {
    return this.now / 1000;
  }

  /** Runs `fn` after `delayUs` (≥ 0). */
  after(delayUs: number, fn: () => void): Timer {
    return this.at(this.now + Math.max(0, delayUs), fn);
  }

  at(atUs: number, fn: () => void): Timer {
    const e: Entry = { at: Math.max(atUs, this.now), seq: this.seq++, fn, cancelled: false };
    this.heap.push(e);
    this.up(this.heap.length - 1);
    return e;
  }

  /** Runs events until none is left before `untilUs` (or `stop` says so after one). */
  run(untilUs: number, stop?: () => boolean): void {
    while (this.heap.length > 0 && this.heap[0]!.at <= untilUs) {
      const e = this.pop();
      if (e.cancelled) continue;
      this.now = e.at;
      this.steps++;
      e.fn();
      if (stop?.()) return;
    }
    if (this.now < untilUs) this.now = untilUs;
  }

  get pending(): number {
    return this.heap.length;
  }

  private less(i: number, j: number): boolean {
    const a = this.heap[i]!;
    const b = this.heap[j]!;
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }

  private up(i: number): void {
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(i, p)) return;
      [this.heap[i], this.heap[p]] = [this.heap[p]!, this.heap[i]!];
      i = p;
    }
  }

  private pop(): Entry {
    const top = this.heap[0]!;
    const last = this.heap.pop()!;
    if (this.heap.length > 0) {
      this.heap[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < this.heap.length && this.less(l, m)) m = l;
        if (r < this.heap.length && this.less(r, m)) m = r;
        if (m === i) break;
        [this.heap[i], this.heap[m]] = [this.heap[m]!, this.heap[i]!];
        i = m;
      }
    }
    return top;
  }
}
