// Server-Sent Events fan-out. Events are published from the data plane's drain loop (engine
// events) and from the control plane, so publish() must never wait: each event is serialized
// once, written to every client's socket, and when a socket's buffer is full the event waits in
// that client's own bounded queue. A client whose queue overflows is too slow to follow: it is
// disconnected and counted (it may reconnect with Last-Event-ID and catch up from the replay
// ring). Memory is bounded by clients × (queue + socket buffer).

/** What the hub writes to: an HTTP response, or any stream with the same shape. */
export interface EventSink {
  write(chunk: string): boolean;
  once(event: "drain" | "close", listener: () => void): unknown;
  destroy(): unknown;
}

export interface HubEvent {
  id: number;
  type: string;
  data: Record<string, unknown>;
}

export interface EventHubOptions {
  /** Events a client may have waiting beyond its socket buffer before it is dropped. */
  maxQueued?: number;
  /** Clients at once; more are refused. */
  maxClients?: number;
  /** Recent events kept for clients reconnecting with Last-Event-ID. */
  replay?: number;
  /** Comment lines keep idle connections (and proxies in between) open. */
  heartbeatMs?: number;
}

interface Client {
  sink: EventSink;
  queue: string[];
  blocked: boolean;
}

export class TooManyClientsError extends Error {}

export function formatEvent(e: HubEvent): string {
  return `id: ${e.id}\nevent: ${e.type}\ndata: ${JSON.stringify({ type: e.type, ...e.data })}\n\n`;
}

export class EventHub {
  private readonly clients = new Set<Client>();
  private readonly ring: Array<{ id: number; chunk: string }> = [];
  private nextId = 1;
  private readonly heartbeat: NodeJS.Timeout | undefined;
  private readonly maxQueued: number;
  private readonly maxClients: number;
  private readonly replay: number;
  /** Clients disconnected because they could not keep up. */
  dropped = 0;
  published = 0;

  constructor(opts: EventHubOptions = {}) {
    this.maxQueued = opts.maxQueued ?? 1000;
    this.maxClients = opts.maxClients ?? 64;
    this.replay = opts.replay ?? 256;
    const hb = opts.heartbeatMs ?? 15_000;
    if (hb > 0) {
      this.heartbeat = setInterval(() => {
        for (const c of this.clients) this.deliver(c, ": keep-alive\n\n");
      }, hb);
      this.heartbeat.unref();
    }
  }

  get clientCount(): number {
    return this.clients.size;
  }

  /** Sends an event to every client; returns at once whatever the clients do. */
  publish(type: string, data: Record<string, unknown>): HubEvent {
    const e = { id: this.nextId++, type, data };
    const chunk = formatEvent(e);
    this.published++;
    this.ring.push({ id: e.id, chunk });
    if (this.ring.length > this.replay) this.ring.shift();
    for (const c of this.clients) this.deliver(c, chunk);
    return e;
  }

  /**
   * Starts streaming to `sink` (whose headers are sent already): the events after `lastEventId`
   * still in the replay ring first. Returns a function that detaches it.
   */
  attach(sink: EventSink, lastEventId?: number): () => void {
    if (this.clients.size >= this.maxClients)
      throw new TooManyClientsError(`${this.maxClients} event stream clients already`);
    const c: Client = { sink, queue: [], blocked: false };
    this.clients.add(c);
    sink.once("close", () => this.clients.delete(c));
    this.deliver(c, "retry: 2000\n\n");
    if (lastEventId !== undefined)
      for (const r of this.ring) if (r.id > lastEventId) this.deliver(c, r.chunk);
    return () => this.clients.delete(c);
  }

  private deliver(c: Client, chunk: string): void {
    if (!this.clients.has(c)) return;
    if (c.blocked) {
      c.queue.push(chunk);
      if (c.queue.length > this.maxQueued) this.drop(c);
      return;
    }
    if (!c.sink.write(chunk)) this.block(c);
  }

  private block(c: Client): void {
    c.blocked = true;
    c.sink.once("drain", () => {
      c.blocked = false;
      while (c.queue.length > 0 && !c.blocked) {
        if (!c.sink.write(c.queue.shift()!)) this.block(c);
      }
    });
  }

  private drop(c: Client): void {
    this.clients.delete(c);
    c.queue.length = 0;
    this.dropped++;
    c.sink.destroy();
  }

  /** Ends every stream (shutdown). */
  close(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    for (const c of this.clients) c.sink.destroy();
    this.clients.clear();
  }
}
