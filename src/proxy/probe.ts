// Probing a backend's service port: can a TCP connection be made, and (with a health check) does
// the application answer? The verdict says alive (true), dead (false) or nothing (undefined: the
// probe could not be made here, a local error).
import { connect } from "node:net";

export interface HealthCheck {
  send: string;
  expect: string;
  timeoutMs: number;
}

export interface ProbeRequest {
  address: string;
  port: number;
  /** Deadline for the TCP handshake. */
  timeoutMs: number;
  /** After the handshake, the application's health check within its `timeoutMs`. */
  healthCheck?: HealthCheck | undefined;
}

export interface ProbeAnswer {
  alive: boolean | undefined;
  why: string;
  ms: number;
}

/** Errors that say the target (or the network toward it) is dead; anything else is local. */
const DEAD_ERRORS = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EHOSTDOWN",
  "ETIMEDOUT",
  "EPIPE",
]);

/** A probe under way: cancel() ends it without an answer. */
export interface ProbeHandle {
  cancel(): void;
}

/**
 * Starts a probe; `done` is called exactly once, unless it is cancelled first (then never). Deadlines are checked only after the event loop polled for I/O once more
 * (setImmediate), and each deadline belongs to its phase: a busy loop never turns an answer it has
 * not read yet into "dead", and a handshake deadline queued just as the handshake completed
 * cannot fail the health check that followed.
 */
export function probe(req: ProbeRequest, done: (answer: ProbeAnswer) => void): ProbeHandle {
  const check = req.healthCheck;
  const started = performance.now();
  const sock = connect({ host: req.address, port: req.port });
  let finished = false;
  let connected = false;
  // Connected, a probe ends with a RST: the target's kernel then sends nothing more toward the
  // appliance (no FIN exchange, no TIME_WAIT here), so little can be mistaken for a client's.
  const close = () => (connected ? sock.resetAndDestroy() : sock.destroy());
  let timer: NodeJS.Timeout | undefined;
  let phase = 0;
  const deadline = (ms: number, why: string) => {
    clearTimeout(timer);
    const mine = ++phase;
    timer = setTimeout(() => setImmediate(() => mine === phase && answer(false, why)), ms);
  };
  const answer = (alive: boolean | undefined, why: string) => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    close();
    done({ alive, why, ms: performance.now() - started });
  };
  sock.once("close", () => clearTimeout(timer));
  deadline(req.timeoutMs, "no answer to the handshake");
  sock.once("connect", () => {
    connected = true;
    if (!check) return answer(true, "connected");
    deadline(check.timeoutMs, "no answer to the health check");
    let got = "";
    sock.setEncoding("latin1");
    sock.on("data", (d: string) => {
      got += d;
      if (got.startsWith(check.expect)) answer(true, "health check answered");
      else if (got.length >= check.expect.length) answer(false, "wrong answer to the health check");
    });
    sock.once("end", () => answer(false, "closed during the health check"));
    sock.write(check.send, "latin1");
  });
  sock.once("error", (e: NodeJS.ErrnoException) =>
    answer(DEAD_ERRORS.has(e.code ?? "") ? false : undefined, e.code ?? e.message),
  );
  return {
    cancel: () => {
      finished = true;
      clearTimeout(timer);
      close();
    },
  };
}

/** Answers that decide at once among parallel copies: alive, or the target's kernel refused. */
const DECISIVE = new Set(["ECONNREFUSED", "ECONNRESET"]);

/**
 * `copies` probes in parallel, answered once (the engine's EVIDENCE_PROBE_COPIES): alive as soon
 * as one is, dead as soon as one is refused, otherwise (silence, unreachable, a failed health
 * check) only when every copy has answered so, with the last one's reason; not made (undefined)
 * only if no copy could be made.
 */
export function probeCopies(
  req: ProbeRequest,
  copies: number,
  done: (answer: ProbeAnswer) => void,
): ProbeHandle {
  if (copies <= 1) return probe(req, done);
  const handles: ProbeHandle[] = [];
  let left = copies;
  let finished = false;
  let worst: ProbeAnswer | undefined;
  const finish = (a: ProbeAnswer) => {
    finished = true;
    for (const h of handles) h.cancel();
    done(a);
  };
  for (let i = 0; i < copies && !finished; i++) {
    handles.push(
      probe(req, (a) => {
        if (finished) return;
        left--;
        if (a.alive === true || (a.alive === false && DECISIVE.has(a.why))) return finish(a);
        if (a.alive === false || worst === undefined) worst = a;
        if (left === 0) finish(worst);
      }),
    );
  }
  return { cancel: () => ((finished = true), handles.forEach((h) => h.cancel())) };
}
