// The service and its clients. The service is deterministic per connection, as the appliance
// requires of a replicated service: its reply stream is a function of the request stream alone,
// so the original and every replica produce the same bytes, and a client can check each byte it
// receives. Requests (one per line):
//   GET n\n            n bytes of content drawn from the request's index and n
//   PUT n\n<n bytes>   "OK <fnv32 of the bytes>\n"
//   QUIT\n             "BYE\n", then the service closes
// A client's FIN makes the service answer what it read, then close. A "divergent" service (a
// fault) changes one byte of every GET reply from some request on: a replica that is not a copy.
import { formatIPv4 } from "../wire/ipv4.js";
import type { TcpHost } from "./host.js";
import type { TcpSocket } from "./tcp.js";

/** The content of GET reply `index` of `n` bytes (any request stream computes the same). */
export function content(index: number, n: number): Buffer {
  const b = Buffer.alloc(n);
  let x = (Math.imul(index + 1, 0x9e3779b1) ^ n) >>> 0;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = 0x20 + ((x >>> 0) % 95);
  }
  return b;
}

export function fnv32(b: Uint8Array): number {
  let h = 0x811c9dc5;
  for (const c of b) h = Math.imul(h ^ c, 0x01000193);
  return h >>> 0;
}

export type Request = { op: "GET"; n: number } | { op: "PUT"; data: Buffer } | { op: "QUIT" };

export function encodeRequest(r: Request): Buffer {
  if (r.op === "GET") return Buffer.from(`GET ${r.n}\n`);
  if (r.op === "QUIT") return Buffer.from("QUIT\n");
  return Buffer.concat([Buffer.from(`PUT ${r.data.length}\n`), r.data]);
}

export function replyTo(r: Request, index: number): Buffer {
  if (r.op === "GET") return content(index, r.n);
  if (r.op === "QUIT") return Buffer.from("BYE\n");
  return Buffer.from(`OK ${fnv32(r.data)}\n`);
}

/** Bytes a server read on one connection, for the replication checks. */
export interface ServerConn {
  sock: TcpSocket;
  host: string;
  /** Every byte the service read, in order. */
  read: Buffer[];
  readBytes: number;
  /** The peer's FIN arrived (after `readBytes`). */
  ended: boolean;
  /** Every byte the service wrote, in order (what it produced for the client). */
  wrote: Buffer[];
  wroteBytes: number;
}

export interface ServiceOptions {
  /** Bytes read per read call at most (a slow reader makes zero windows). */
  readChunk: number;
  /** Pause between reads when there is more to read, µs (0: read all at once). */
  readPauseUs: number;
  /** From this request index on, GET replies carry one wrong byte (undefined: a faithful copy). */
  divergeFrom: number | undefined;
}

/** The service on one backend: accepts, parses, answers; records what it read. */
export class Service {
  readonly conns: ServerConn[] = [];
  /** Called with each connection's read bytes as they come (the simulator's checks). */
  onRead: (c: ServerConn, bytes: Buffer) => void = () => undefined;
  onEnd: (c: ServerConn) => void = () => undefined;

  constructor(
    private readonly host: TcpHost,
    port: number,
    private readonly opts: ServiceOptions,
  ) {
    host.listen(port, 256, (sock) => this.accept(sock));
  }

  private accept(sock: TcpSocket): void {
    const c: ServerConn = {
      sock,
      host: this.host.name,
      read: [],
      readBytes: 0,
      ended: false,
      wrote: [],
      wroteBytes: 0,
    };
    this.conns.push(c);
    let buf: Buffer = Buffer.alloc(0);
    let index = 0;
    const out: Buffer[] = [];
    let closing = false;
    let reading = false;
    const flushOut = () => {
      while (out.length > 0) {
        const head = out[0]!;
        const n = sock.write(head);
        if (n > 0) {
          c.wrote.push(head.subarray(0, n));
          c.wroteBytes += n;
        }
        if (n < head.length) {
          out[0] = head.subarray(n);
          return;
        }
        out.shift();
      }
      if (closing) sock.close();
    };
    const parse = () => {
      for (;;) {
        if (closing) return;
        const nl = buf.indexOf(0x0a);
        if (nl < 0) return;
        const line = buf.subarray(0, nl).toString("latin1");
        const [op, arg] = line.split(" ");
        if (op === "GET") {
          const n = Number(arg);
          const reply = content(index, n);
          if (this.opts.divergeFrom !== undefined && index >= this.opts.divergeFrom && n > 0)
            reply[n >> 1] = reply[n >> 1]! ^ 0x01;
          out.push(reply);
          buf = buf.subarray(nl + 1);
        } else if (op === "PUT") {
          const n = Number(arg);
          if (buf.length < nl + 1 + n) return;
          out.push(Buffer.from(`OK ${fnv32(buf.subarray(nl + 1, nl + 1 + n))}\n`));
          buf = buf.subarray(nl + 1 + n);
        } else if (op === "QUIT") {
          out.push(Buffer.from("BYE\n"));
          buf = buf.subarray(nl + 1);
          closing = true;
        } else {
          throw new Error(`${this.host.name}: bad request line ${JSON.stringify(line)}`);
        }
        index++;
      }
    };
    const readSome = () => {
      reading = false;
      if (closing && out.length === 0) return;
      const got = sock.read(this.opts.readChunk);
      if (got.length > 0) {
        c.read.push(got);
        c.readBytes += got.length;
        this.onRead(c, got);
        buf = buf.length ? Buffer.concat([buf, got]) : got;
        parse();
        flushOut();
      }
      if (sock.readableLength > 0 && !closing) {
        reading = true;
        this.host.sched.after(this.opts.readPauseUs, () => this.host.dispatch(readSome));
      } else if (c.ended && !closing) {
        closing = true;
        flushOut();
      }
    };
    sock.events = this.host.wrap({
      readable: () => {
        if (!reading) readSome();
      },
      end: () => {
        c.ended = true;
        this.onEnd(c);
        if (!reading) readSome();
      },
      writable: () => flushOut(),
      error: () => undefined,
    });
    if (sock.readableLength > 0) readSome();
  }
}

/** One client connection's script and what came back. */
export interface ClientConn {
  id: string;
  sock: TcpSocket;
  requests: Request[];
  /** Bytes sent, in order (the stream every replica must receive). */
  sent: Buffer[];
  sentBytes: number;
  /** The client closed its side (FIN) after `sentBytes`. */
  finSent: boolean;
  /** The reply stream expected for what was sent. */
  expected: Buffer[];
  expectedBytes: number;
  received: number;
  /** How it ended: the whole expected stream then the server's FIN, a reset, or not yet. */
  outcome: "complete" | "reset" | "refused" | "timeout" | "premature-fin" | undefined;
  startedAt: number;
  endedAt: number | undefined;
}

export interface ClientScript {
  requests: Request[];
  /** How the client ends: QUIT (the server closes), FIN after the last request, or a RST. */
  ending: "quit" | "fin" | "abort";
  /** Requests are sent in groups of this many, the next group once the previous was answered. */
  pipeline: number;
  /** Bytes read per read call (a slow client makes the server's window close). */
  readChunk: number;
  readPauseUs: number;
}

/** Starts a client connection that runs `script` and checks every byte it gets back. */
export function startClient(
  host: TcpHost,
  vip: number,
  port: number,
  script: ClientScript,
  onByte: (c: ClientConn, at: number, bytes: Buffer) => void,
  onDone: (c: ClientConn) => void,
): ClientConn {
  let next = 0; // next request to send
  let answeredUpTo = 0; // expected bytes of the requests sent so far, per group end
  const pendingOut: Buffer[] = [];
  let reading = false;
  const c: ClientConn = {
    id: "",
    sock: undefined as unknown as TcpSocket,
    requests: script.requests,
    sent: [],
    sentBytes: 0,
    finSent: false,
    expected: [],
    expectedBytes: 0,
    received: 0,
    outcome: undefined,
    startedAt: host.sched.nowMs,
    endedAt: undefined,
  };
  const finish = (o: NonNullable<ClientConn["outcome"]>) => {
    if (c.outcome !== undefined) return;
    c.outcome = o;
    c.endedAt = host.sched.nowMs;
    onDone(c);
  };
  const write = () => {
    while (pendingOut.length > 0) {
      const head = pendingOut[0]!;
      const n = c.sock.write(head);
      if (n > 0) {
        c.sent.push(head.subarray(0, n));
        c.sentBytes += n;
      }
      if (n < head.length) {
        pendingOut[0] = head.subarray(n);
        return;
      }
      pendingOut.shift();
    }
    if (next >= script.requests.length && !c.finSent && c.received >= answeredUpTo) {
      if (script.ending === "fin") {
        c.finSent = true;
        c.sock.close();
      } else if (script.ending === "abort") {
        c.sock.abort();
        finish("reset");
      }
    }
  };
  const sendGroup = () => {
    if (c.received < answeredUpTo) return;
    const end = Math.min(script.requests.length, next + script.pipeline);
    for (; next < end; next++) {
      const r = script.requests[next]!;
      pendingOut.push(encodeRequest(r));
      const reply = replyTo(r, next);
      c.expected.push(reply);
      c.expectedBytes += reply.length;
    }
    answeredUpTo = c.expectedBytes;
    write();
  };
  const readSome = () => {
    reading = false;
    const got = c.sock.read(script.readChunk);
    if (got.length > 0) {
      onByte(c, c.received, got);
      c.received += got.length;
      sendGroup();
      write();
    }
    if (c.sock.readableLength > 0) {
      reading = true;
      host.sched.after(script.readPauseUs, readSome);
    } else if (c.sock.finReceived && c.outcome === undefined) {
      const quitDone = script.ending === "quit" && next >= script.requests.length;
      const finDone = script.ending === "fin" && c.finSent;
      finish(c.received === c.expectedBytes && (quitDone || finDone) ? "complete" : "premature-fin");
      if (script.ending === "quit") c.sock.close();
    }
  };
  c.sock = host.connect(vip, port, {
    connected: () => sendGroup(),
    readable: () => {
      if (!reading) readSome();
    },
    end: () => {
      if (!reading) readSome();
    },
    writable: () => write(),
    error: (why) => finish(why === "reset" ? "reset" : why),
  });
  c.id = `${formatIPv4(host.address)}:${c.sock.localPort}`;
  return c;
}
