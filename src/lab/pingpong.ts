// TCP ping-pong against an echo service with microsecond timing: one connection, Nagle off, one
// message in flight at a time, every echoed byte checked against what was sent. This is how the lab
// measures the client's RTT through the appliance (and later what each replica adds).
import { connect, type Socket } from "node:net";
import { summarize, type Summary } from "../sys/stats.js";
import { isIPv4 } from "../proxy/nft.js";

export interface PingOptions {
  host: string;
  port: number;
  count: number;
  size: number;
  intervalMs: number;
  timeoutMs?: number;
}

export interface PingResult {
  host: string;
  port: number;
  count: number;
  size: number;
  /** Round-trip times in microseconds. */
  rttUs: Summary;
  bytesEchoed: number;
}

export class PingOptionError extends Error {}

function intIn(name: string, v: string | number | undefined, lo: number, hi: number): number {
  const n = typeof v === "number" ? v : v !== undefined && /^\d+$/.test(v) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < lo || n > hi) {
    throw new PingOptionError(`--${name} ${JSON.stringify(v)}: must be an integer from ${lo} to ${hi}`);
  }
  return n;
}

export function validatePingOptions(o: {
  host: string | undefined;
  port: string | number | undefined;
  count: string | number | undefined;
  size: string | number | undefined;
  intervalMs: string | number | undefined;
  timeoutMs?: string | number | undefined;
}): PingOptions {
  if (o.host === undefined || !isIPv4(o.host)) {
    throw new PingOptionError(`--host ${JSON.stringify(o.host)}: an IPv4 address is required`);
  }
  return {
    host: o.host,
    port: intIn("port", o.port, 1, 65535),
    count: intIn("count", o.count, 1, 10_000_000),
    size: intIn("size", o.size, 1, 1 << 20),
    intervalMs: intIn("interval-ms", o.intervalMs, 0, 60_000),
    timeoutMs: intIn("timeout-ms", o.timeoutMs ?? 5000, 1, 600_000),
  };
}

function open(host: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port, noDelay: true });
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error(`connect to ${host}:${port} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    s.once("connect", () => {
      clearTimeout(t);
      resolve(s);
    });
    s.once("error", (e) => {
      clearTimeout(t);
      reject(e);
    });
  });
}

export async function pingPong(o: PingOptions): Promise<PingResult> {
  const timeoutMs = o.timeoutMs ?? 5000;
  const socket = await open(o.host, o.port, timeoutMs);
  const samples: number[] = [];
  const payload = Buffer.alloc(o.size);
  let bytes = 0;
  try {
    for (let i = 0; i < o.count; i++) {
      // A different payload each round, so a stale or misplaced echo cannot pass the check.
      for (let j = 0; j < o.size; j++) payload[j] = (i * 31 + j * 7) & 0xff;
      const expected = Buffer.from(payload);
      const rtt = await new Promise<number>((resolve, reject) => {
        let got = 0;
        const received = Buffer.alloc(o.size);
        const timer = setTimeout(
          () => fail(new Error(`no echo within ${timeoutMs} ms at round ${i}`)),
          timeoutMs,
        );
        const onData = (d: Buffer) => {
          if (got + d.length > o.size) return fail(new Error(`echo longer than sent at round ${i}`));
          d.copy(received, got);
          got += d.length;
          if (got === o.size) {
            const dt = Number(process.hrtime.bigint() - start) / 1000;
            cleanup();
            if (!received.equals(expected))
              reject(new Error(`echo differs from what was sent at round ${i}`));
            else resolve(dt);
          }
        };
        const onEnd = () => fail(new Error(`connection closed at round ${i}`));
        const onError = (e: Error) => fail(e);
        function cleanup() {
          clearTimeout(timer);
          socket.off("data", onData);
          socket.off("end", onEnd);
          socket.off("error", onError);
        }
        function fail(e: Error) {
          cleanup();
          reject(e);
        }
        socket.on("data", onData);
        socket.on("end", onEnd);
        socket.on("error", onError);
        const start = process.hrtime.bigint();
        socket.write(expected);
      });
      samples.push(rtt);
      bytes += o.size;
      if (o.intervalMs > 0) await new Promise((r) => setTimeout(r, o.intervalMs));
    }
  } finally {
    socket.destroy();
  }
  return {
    host: o.host,
    port: o.port,
    count: o.count,
    size: o.size,
    rttUs: summarize(samples),
    bytesEchoed: bytes,
  };
}
