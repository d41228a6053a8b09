// Bulk byte-stream check against an echo service: each connection sends `bytes` of deterministic
// data as fast as the echo comes back, and verifies that what returns is exactly what was sent
// (SHA-256 of both directions). Used to push a large volume through the appliance.
import { connect } from "node:net";
import { createHash } from "node:crypto";
import { contentChunks } from "./www.js";

export interface BlastResult {
  connections: number;
  bytesPerConnection: number;
  totalBytes: number;
  seconds: number;
  mbPerSecond: number;
}

function oneConnection(
  host: string,
  port: number,
  bytes: number,
  seed: string,
  timeoutMs: number,
  bytesPerSecond: number,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const sent = createHash("sha256");
    const received = createHash("sha256");
    let got = 0;
    const sock = connect({ host, port, noDelay: true });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`blast ${seed}: timed out after ${timeoutMs} ms with ${got}/${bytes} bytes echoed`));
    }, timeoutMs);
    sock.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on("data", (d: Buffer) => {
      received.update(d);
      got += d.length;
      if (got > bytes) {
        clearTimeout(timer);
        sock.destroy();
        reject(new Error(`blast ${seed}: more echoed than sent`));
      } else if (got === bytes) {
        clearTimeout(timer);
        sock.end();
        if (sent.digest("hex") !== received.digest("hex")) reject(new Error(`blast ${seed}: echo differs`));
        else resolve();
      }
    });
    sock.on("connect", () => {
      const chunks = contentChunks(seed, bytes);
      const started = Date.now();
      let written = 0;
      const pump = () => {
        for (;;) {
          // Pacing: never ahead of bytesPerSecond since the start (0 = as fast as possible).
          if (bytesPerSecond > 0) {
            const ahead = written - ((Date.now() - started) / 1000) * bytesPerSecond;
            if (ahead > 0) {
              setTimeout(pump, Math.ceil((ahead / bytesPerSecond) * 1000));
              return;
            }
          }
          const next = chunks.next();
          if (next.done) return;
          sent.update(next.value);
          written += next.value.length;
          if (!sock.write(next.value)) {
            sock.once("drain", pump);
            return;
          }
        }
      };
      pump();
    });
  });
}

/** `rateBytesPerSecond` is the total over all connections (0: unpaced). */
export async function blast(
  host: string,
  port: number,
  connections: number,
  bytesPerConnection: number,
  rateBytesPerSecond = 0,
  timeoutMs = 600_000,
): Promise<BlastResult> {
  const start = process.hrtime.bigint();
  const perConnection = rateBytesPerSecond / connections;
  await Promise.all(
    Array.from({ length: connections }, (_, i) =>
      oneConnection(host, port, bytesPerConnection, `blast-${i}`, timeoutMs, perConnection),
    ),
  );
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const total = connections * bytesPerConnection;
  return { connections, bytesPerConnection, totalBytes: total, seconds, mbPerSecond: total / 1e6 / seconds };
}
